//! The journal: every state change is a [`Record`], and nothing a caller is told happens before
//! the journal has accepted the records it depends on.
//!
//! # Contract
//!
//! - [`Journal::append`] gives a record its place in one total order and returns at once; the
//!   completion runs once the record — and every record appended before it — is durable (for
//!   the in-memory journal: immediately, on the caller's thread).
//! - [`Journal::barrier`] runs its completion once everything appended before it is durable.
//!   Actors send replies that merely *read* state (`AlreadyGrabbed`, a balance) through it, so
//!   no caller ever sees a state the journal could still lose.
//! - Completions run in the order they were given. They must be short: they send a reply,
//!   publish an event, or pass a credit on to a wallet.
//!
//! The actors append and move on: a packet actor keeps serving grabs while its records are in
//! flight, which is what lets a durable journal commit a storm of grabs in a few batches.
//!
//! Records are idempotent by the ids they carry (`OpId`, `PacketId`, `(PacketId, UserId)`), so
//! a replay that meets a record twice applies it once.
//!
//! # The file journal
//!
//! [`format`] is the on-disk format and the one place file names are made, `reader` checks
//! and replays a directory, `writer` is the group-commit thread behind the file journal, and
//! `snapshot` writes and finds snapshots. The journal does not know the domain: it folds
//! records into any `Fold` (the engine's is `replay::Replica`).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

pub(crate) mod format;
pub(crate) mod reader;
pub(crate) mod segment;
pub(crate) mod snapshot;
pub(crate) mod writer;

pub use crate::record::Record;
pub use format::JournalError;
pub use reader::Progress;
pub(crate) use writer::FileJournal;
pub use writer::{BatchObserver, BatchWritten, Durability, FileJournalConfig};

/// What runs once a record (or a barrier) is durable. A journal that fails drops the
/// completions it could not run; see [`Journal::failure`] for what their callers may assume.
pub type Completion = Box<dyn FnOnce() + Send>;

/// How a journal failed, as far as the records in flight at that moment are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum StorageFailure {
    /// A write failed and the journal cut its files back to the last durable record: no record
    /// whose completion was dropped will be found by a restart.
    CutBack,
    /// A write, a sync or the cut back failed: records whose completion was dropped may or may
    /// not be durable. (An `fsync` that failed is never retried: the kernel may have dropped
    /// the pages it could not write.)
    OutcomeUnknown,
    /// A replicated journal refused this writer's appends because another writer appended
    /// first (this engine lost its ownership): the log proved that no record whose completion
    /// was dropped is in it.
    Deposed,
}

impl StorageFailure {
    /// Whether the records whose completion was dropped are known not to be durable.
    pub fn proved_nothing_lost(self) -> bool {
        matches!(self, StorageFailure::CutBack | StorageFailure::Deposed)
    }
}

/// Where state changes are made durable. See the module documentation for the contract.
pub trait Journal: Send + Sync + 'static {
    /// Appends `record`; runs `then` once it and every earlier record are durable.
    fn append(&self, record: Record, then: Completion);

    /// Runs `then` once every record appended so far is durable.
    fn barrier(&self, then: Completion);

    /// Waits until every record appended so far is durable (used by a graceful shutdown).
    fn flush(&self);

    /// Whether the journal has stopped after a storage error, and what became of the records
    /// in flight then. Nothing more can be made durable, so the engine refuses every request.
    fn failure(&self) -> Option<StorageFailure> {
        None
    }

    /// Makes everything appended so far durable, stops accepting records (later appends and
    /// barriers are dropped), and releases what the journal holds — the file journal's
    /// directory lock — before returning. The engine calls it when its last handle goes, so a
    /// new engine can open the same directory at once.
    fn close(&self) {}
}

/// The records a journal of another kind (a replicated log) already holds, for the engine to
/// replay, in order, before it starts; the file journal reads its own directory instead.
pub trait History: Send + Sync + 'static {
    /// Calls `each` with every record, in the journal's order, and stops at the first error.
    ///
    /// # Errors
    ///
    /// The first error of `each`, or a description of why the records could not be read.
    fn replay(&self, each: &mut dyn FnMut(&Record) -> Result<(), String>) -> Result<(), String>;
}

impl History for Vec<Record> {
    fn replay(&self, each: &mut dyn FnMut(&Record) -> Result<(), String>) -> Result<(), String> {
        self.iter().try_for_each(each)
    }
}

/// Sends `value` on `reply` once everything appended so far is durable: how an actor answers
/// a request that read state or changed nothing.
pub(crate) fn reply_after_barrier<T: Send + 'static>(
    journal: &dyn Journal,
    reply: tokio::sync::oneshot::Sender<T>,
    value: T,
) {
    journal.barrier(Box::new(move || {
        // The caller may have stopped waiting; nothing is lost by not telling it.
        let _ = reply.send(value);
    }));
}

/// State that a journal's records fold into, as the file journal sees it: it applies each
/// record written to its own copy and writes snapshots of it, without knowing what it is.
pub(crate) trait Fold: Send + 'static {
    /// Applies the record at position `seq`.
    ///
    /// # Errors
    ///
    /// A description if the record contradicts the state; the state is then unchanged.
    fn apply(&mut self, seq: u64, record: &Record) -> Result<(), String>;

    /// Appends the state's snapshot encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A [`Fold`] that a journal can also rebuild from a snapshot.
pub(crate) trait Restore: Fold + Clone {
    /// The state a snapshot of format `version` encoded, read with the settings of `self` (an
    /// empty state: the reader starts from it when there is no snapshot).
    ///
    /// # Errors
    ///
    /// If the bytes are not a state this version can read.
    fn decode(&self, version: u8, bytes: &[u8]) -> Result<Self, crate::record::DecodeError>;
}

/// A journal that keeps records in memory: for tests, benchmarks and the load tool.
///
/// Records are "durable" as soon as they are appended, so completions run at once. By default
/// it only counts records (the grab path then touches no lock shared between packets);
/// [`MemoryJournal::recording`] also keeps every record for inspection.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    appended: AtomicU64,
    records: Option<Mutex<Vec<Record>>>,
}

impl MemoryJournal {
    /// A journal that counts records.
    pub fn new() -> MemoryJournal {
        MemoryJournal::default()
    }

    /// A journal that keeps every record.
    pub fn recording() -> MemoryJournal {
        MemoryJournal { appended: AtomicU64::new(0), records: Some(Mutex::new(Vec::new())) }
    }

    /// How many records were appended.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// A copy of the records kept so far (empty unless made with [`MemoryJournal::recording`]).
    pub fn records(&self) -> Vec<Record> {
        self.records.as_ref().map(|r| r.lock().clone()).unwrap_or_default()
    }
}

impl Journal for MemoryJournal {
    fn append(&self, record: Record, then: Completion) {
        self.appended.fetch_add(1, Ordering::Relaxed);
        if let Some(records) = &self.records {
            records.lock().push(record);
        }
        then();
    }

    fn barrier(&self, then: Completion) {
        then();
    }

    fn flush(&self) {}
}
