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

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::money::{Amount, GroupId, OpId, PacketId, UserId};
use crate::split::Split;

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Money entered a wallet from outside.
    Deposit {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
    },
    /// Money left a wallet to the outside.
    Withdrawal {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
    },
    /// A group's roster was replaced.
    Roster {
        /// The group.
        group: GroupId,
        /// Its members, sorted.
        members: Vec<UserId>,
    },
    /// A packet was sent: its total left the sender's wallet for escrow.
    PacketSent {
        /// The packet.
        packet: PacketId,
        /// Who paid.
        sender: UserId,
        /// Whose members may grab.
        group: GroupId,
        /// How it divides.
        split: Split,
        /// Seed of the lucky draw's random stream.
        seed: u64,
        /// The greeting shown with it.
        greeting: String,
        /// When it was sent.
        sent_at: Timestamp,
        /// When its remainder is refunded.
        expires_at: Timestamp,
    },
    /// A member won a share; it moved from escrow to the member's wallet.
    Claim {
        /// The packet.
        packet: PacketId,
        /// The winner.
        user: UserId,
        /// The share.
        amount: Amount,
        /// 1 for the first share taken.
        position: u32,
        /// When.
        at: Timestamp,
    },
    /// The packet's last share was taken.
    SoldOut {
        /// The packet.
        packet: PacketId,
    },
    /// The packet expired; its remainder went back to the sender.
    Expired {
        /// The packet.
        packet: PacketId,
        /// The refund (zero is not recorded: a sold-out packet has nothing to refund).
        refund: Amount,
        /// When.
        at: Timestamp,
    },
}

/// What runs once a record (or a barrier) is durable.
pub type Completion = Box<dyn FnOnce() + Send>;

/// Where state changes are made durable. See the module documentation for the contract.
pub trait Journal: Send + Sync + 'static {
    /// Appends `record`; runs `then` once it and every earlier record are durable.
    fn append(&self, record: Record, then: Completion);

    /// Runs `then` once every record appended so far is durable.
    fn barrier(&self, then: Completion);

    /// Waits until every record appended so far is durable (used by a graceful shutdown).
    fn flush(&self);

    /// Whether the journal has stopped after a storage error: nothing more can be made
    /// durable, so the engine refuses every request.
    fn failed(&self) -> bool {
        false
    }
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
