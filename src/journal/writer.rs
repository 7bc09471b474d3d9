//! The file journal's writer: one thread that frames, writes and syncs records with group
//! commit, and [`FileJournal`], the [`Journal`] that hands it records.
//!
//! Actors hand records to the writer thread through a bounded channel and go on serving
//! requests. The writer takes everything waiting (up to `batch_bytes_max`), writes it with one
//! `write`, makes it durable with one `fdatasync` (in [`Durability::Sync`]), then runs the
//! batch's completions in order: a storm of a thousand grabs costs a few syncs. When the
//! channel is full an actor waits for room: the disk's pace is the engine's.
//!
//! The writer keeps its own copy of the state (any [`Fold`]), applies each record it writes,
//! and snapshots that copy every `snapshot_every_records` records and at a clean shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, io, JournalError, Kind, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
use super::reader::{self, Recovered};
use super::segment::{Faults, Segment};
use super::{snapshot, Completion, Fold, Journal, Restore, StorageFailure};
use crate::record::{self, Record};

/// The writer thread's name.
const WRITER_THREAD: &str = "hongbao-journal";

/// When an acknowledged change is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged means fsynced (`fdatasync` after each batch). The default.
    Sync,
    /// Acknowledged means written to the operating system; synced every `interval_ms`. A
    /// power loss (not a process crash) can lose up to that much acknowledged history.
    Buffered {
        /// Milliseconds between syncs.
        interval_ms: u64,
    },
}

/// Where and how the file journal writes.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileJournalConfig {
    /// The journal's directory (created if missing).
    pub dir: PathBuf,
    /// When acknowledged means durable.
    pub durability: Durability,
    /// A segment is closed and a new one started past this size (default 64 MiB).
    pub segment_bytes_max: u64,
    /// Most bytes written in one batch (default 1 MiB).
    pub batch_bytes_max: usize,
    /// Records waiting for the writer before appenders wait for room (default 65 536).
    pub queue_len_max: usize,
    /// Write a snapshot every this many records, and at a clean shutdown (default 1 000 000;
    /// `None`: never). The writer keeps a replica of the state to snapshot from, which costs
    /// about as much memory as the engine's own state.
    pub snapshot_every_records: Option<u64>,
    /// Keep the segments a snapshot covers (as an archive) instead of deleting them (default
    /// false).
    pub keep_segments: bool,
    /// Refuse to start on a directory that holds no journal, instead of creating one (default
    /// false). For operators opening an existing journal: a mistyped path is an error, not a
    /// new empty journal.
    pub must_exist: bool,
    /// Told of every batch the writer commits (default none): a server's metrics.
    pub observer: Option<BatchObserver>,
    /// Faults injected into the segment I/O (tests and the simulator only).
    pub(crate) faults: Option<Faults>,
}

/// One batch the file journal's writer committed: what group commit gathered, and what its
/// sync cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchWritten {
    /// Records in the batch.
    pub records: usize,
    /// Bytes written.
    pub bytes: usize,
    /// The write and its `fdatasync`, when the batch was synced (every batch under
    /// `Durability::Sync`).
    pub sync: Option<Duration>,
}

/// Called on the writer's thread after each batch: keep it short (a few counter updates), as
/// the next batch waits for it.
#[derive(Clone)]
pub struct BatchObserver(pub Arc<dyn Fn(BatchWritten) + Send + Sync>);

impl std::fmt::Debug for BatchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchObserver")
    }
}

impl FileJournalConfig {
    /// Checks that every bound can be served.
    ///
    /// # Errors
    ///
    /// [`JournalError::InvalidConfig`] naming the first bound that cannot.
    pub fn validate(&self) -> Result<(), JournalError> {
        let fail = |why: &str| Err(JournalError::InvalidConfig(why.into()));
        if let Durability::Buffered { interval_ms: 0 } = self.durability {
            // Zero would make the writer wake without pause: a core spent on nothing.
            return fail("Buffered interval_ms must be at least 1");
        }
        if self.batch_bytes_max == 0 || self.queue_len_max == 0 || self.queue_len_max > crate::limits::QUEUE_LEN_MAX {
            return fail("batch_bytes_max must be at least 1 and queue_len_max between 1 and 2^24");
        }
        if self.segment_bytes_max < SEGMENT_HEADER_BYTES as u64 + 1 {
            return fail("segment_bytes_max must leave room for a record after the segment header");
        }
        if self.snapshot_every_records == Some(0) {
            return fail("snapshot_every_records must be at least 1 (None: no snapshots)");
        }
        Ok(())
    }

    /// A journal in `dir` with `durability` and default bounds.
    pub fn new(dir: impl Into<PathBuf>, durability: Durability) -> FileJournalConfig {
        FileJournalConfig {
            dir: dir.into(),
            durability,
            segment_bytes_max: 64 << 20,
            batch_bytes_max: 1 << 20,
            queue_len_max: 65_536,
            snapshot_every_records: Some(1_000_000),
            keep_segments: false,
            must_exist: false,
            observer: None,
            faults: None,
        }
    }
}

/// The journal's failure, set once by the writer before it drops the completions in flight.
#[derive(Debug, Default)]
struct FailureCell(AtomicU8);

impl FailureCell {
    const NONE: u8 = 0;
    const CUT_BACK: u8 = 1;
    const UNKNOWN: u8 = 2;
    const DEPOSED: u8 = 3;

    fn get(&self) -> Option<StorageFailure> {
        match self.0.load(Ordering::Acquire) {
            FailureCell::NONE => None,
            FailureCell::CUT_BACK => Some(StorageFailure::CutBack),
            FailureCell::DEPOSED => Some(StorageFailure::Deposed),
            _ => Some(StorageFailure::OutcomeUnknown),
        }
    }

    fn set(&self, failure: StorageFailure) {
        let code = match failure {
            StorageFailure::CutBack => FailureCell::CUT_BACK,
            StorageFailure::OutcomeUnknown => FailureCell::UNKNOWN,
            StorageFailure::Deposed => FailureCell::DEPOSED,
        };
        self.0.store(code, Ordering::Release);
    }
}

enum Entry {
    Record(Record, Completion),
    Barrier(Completion),
    Flush(SyncSender<()>),
    /// Make everything before durable, then stop (releasing the directory).
    Close,
}

/// The durable [`Journal`].
pub(crate) struct FileJournal {
    tx: SyncSender<Entry>,
    failure: Arc<FailureCell>,
    /// The writer thread, which holds the directory's lock while it runs.
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal").field("failure", &self.failure.get()).finish_non_exhaustive()
    }
}

impl FileJournal {
    /// Opens (creating if needed) the journal in `config.dir`: locks the directory, reads and
    /// checks every record into `empty`, cuts a torn tail, and starts the writer where the
    /// history ends.
    ///
    /// # Errors
    ///
    /// [`JournalError::Locked`] if another process has the directory open,
    /// [`JournalError::Corrupt`] for damage other than a torn tail, [`JournalError::Io`].
    pub(crate) fn open<S: Restore>(
        config: &FileJournalConfig,
        empty: S,
    ) -> Result<(FileJournal, Recovered<S>), JournalError> {
        config.validate()?;
        let dir = &config.dir;
        if config.must_exist {
            format::check_existing(dir)?;
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = format::lock_path(dir);
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked(dir.clone()));
        }
        let recovered = reader::read(dir, true, empty, &mut |_| {})?;
        if let Some(tail) = recovered.tail.as_ref().filter(|_| recovered.torn_bytes > 0) {
            tracing::warn!(
                segment = %tail.path.display(),
                offset = tail.len,
                bytes = recovered.torn_bytes,
                "cut a torn record at the end of the journal (it was never acknowledged)"
            );
            // Cut here, whichever segment writing continues in: a segment left with its torn
            // tail would read as damaged once another follows it.
            cut_torn_tail(&tail.path, tail.len)?;
        }
        let (path, len) = match &recovered.tail {
            Some(tail) if tail.version == FORMAT_VERSION || tail.len == 0 => (tail.path.clone(), tail.len),
            // No segment (a new directory, or one holding only a snapshot), or one of an older
            // format: new records go to a new segment, named after the first record it will
            // hold. (A segment already named so holds no record and is rewritten.)
            _ => (format::path(dir, Kind::Segment, recovered.records), 0),
        };
        let (file, segment_len) = open_tail(dir, &path, len)?;
        let (tx, rx) = mpsc::sync_channel(config.queue_len_max);
        let failure = Arc::new(FailureCell::default());
        let shadow = config.snapshot_every_records.map(|_| Box::new(recovered.state.clone()) as Box<dyn Fold>);
        let writer = Writer {
            _lock: lock,
            shadow,
            last_snapshot_seq: recovered.records,
            dir: dir.clone(),
            file: Segment::new(file, config.faults.clone(), segment_len),
            path,
            committed_len: Some(segment_len),
            segment_len,
            next_seq: recovered.records,
            prev: recovered.last_hash,
            config: config.clone(),
            failure: Arc::clone(&failure),
            last_sync: Instant::now(),
        };
        let writer_failure = Arc::clone(&failure);
        let handle = std::thread::Builder::new()
            .name(WRITER_THREAD.into())
            .spawn(move || {
                // A panic here (a bug in a completion, say) must not leave a journal that
                // silently drops every record while the engine reports itself serving.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run(rx))).is_err() {
                    tracing::error!("the journal's writer panicked; no further change is acknowledged");
                    writer_failure.set(StorageFailure::OutcomeUnknown);
                }
            })
            .map_err(io(dir))?;
        Ok((FileJournal { tx, failure, writer: parking_lot::Mutex::new(Some(handle)) }, recovered))
    }

    fn send(&self, entry: Entry) {
        // A full queue means the disk is behind: wait for room rather than grow.
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(entry)) => {
                let _ = self.tx.send(entry);
            }
            // The writer stopped after an I/O error (or a close): the completion is dropped, and
            // its caller hears that the engine is unavailable.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Journal for FileJournal {
    fn append(&self, record: Record, then: Completion) {
        self.send(Entry::Record(record, then));
    }

    fn barrier(&self, then: Completion) {
        self.send(Entry::Barrier(then));
    }

    fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Entry::Flush(tx));
        let _ = rx.recv();
    }

    fn failure(&self) -> Option<StorageFailure> {
        self.failure.get()
    }

    fn close(&self) {
        let Some(writer) = self.writer.lock().take() else { return };
        // A completion run by the writer can hold the last reference to the engine: waiting
        // for the writer from its own thread would never end. It then stops (and unlocks the
        // directory) as soon as it is done with the batch in hand.
        if writer.thread().id() == std::thread::current().id() {
            let _ = self.tx.try_send(Entry::Close);
            return;
        }
        self.send(Entry::Close);
        let _ = writer.join();
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        self.close();
    }
}

/// Cuts a segment to its valid length, durably.
fn cut_torn_tail(path: &Path, len: u64) -> Result<(), JournalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io(path))?;
    file.set_len(len).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Opens the segment where writing continues, cut to its valid length (a new segment gets
/// its magic), synced with its directory. Returns the file, positioned at its end, and its
/// length.
fn open_tail(dir: &Path, path: &Path, len: u64) -> Result<(File, u64), JournalError> {
    let mut file = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io(path))?;
    file.set_len(len).map_err(io(path))?;
    let mut segment_len = len;
    if len == 0 {
        file.write_all(&format::segment_header()).map_err(io(path))?;
        segment_len = SEGMENT_HEADER_BYTES as u64;
    }
    file.sync_all().map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    file.seek(std::io::SeekFrom::End(0)).map_err(io(path))?;
    Ok((file, segment_len))
}

struct Writer {
    // Held while the writer runs: the directory's lock.
    _lock: File,
    /// The state after every record written, to snapshot from (when snapshots are on).
    shadow: Option<Box<dyn Fold>>,
    last_snapshot_seq: u64,
    dir: PathBuf,
    file: Segment,
    path: PathBuf,
    segment_len: u64,
    next_seq: u64,
    prev: [u8; 32],
    config: FileJournalConfig,
    failure: Arc<FailureCell>,
    /// The segment's length after the last batch whose completions ran (synced, in `Sync`):
    /// what a failed write is cut back to. `None` while records of the batch in hand were
    /// already made durable in an earlier segment (nothing can then be proven cut).
    committed_len: Option<u64>,
    last_sync: Instant,
}

/// What one turn of the writer collected.
#[derive(Default)]
struct Batch {
    /// Framed records, not yet written.
    bytes: Vec<u8>,
    /// Completions of the batch's records and barriers, in order.
    done: Vec<Completion>,
    /// Callers of `flush` waiting for the batch (and a snapshot) to be durable.
    flushes: Vec<SyncSender<()>>,
    /// The journal is closing: stop after this batch.
    closing: bool,
    /// Records in it (barriers and flushes aside).
    records: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut batch = Batch { bytes: Vec::with_capacity(self.config.batch_bytes_max + 4096), ..Batch::default() };
        let mut unsynced = false;
        loop {
            let first = match self.config.durability {
                Durability::Sync => match rx.recv() {
                    Ok(entry) => entry,
                    Err(_) => break,
                },
                // Buffered: also sync when idle, so the loss window holds with no traffic.
                Durability::Buffered { interval_ms } => match rx.recv_timeout(Duration::from_millis(interval_ms)) {
                    Ok(entry) => entry,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if unsynced {
                            if let Err(e) = self.write(&mut batch.bytes, true) {
                                return self.fail(e, &rx);
                            }
                            unsynced = false;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            if let Err(e) = self.collect(first, &rx, &mut batch) {
                return self.fail(e, &rx);
            }
            unsynced |= !batch.bytes.is_empty();
            match self.commit(&mut batch, unsynced) {
                Ok(synced) => unsynced &= !synced,
                Err(e) => return self.fail(e, &rx),
            }
            if batch.closing {
                return;
            }
        }
        let _ = self.file.sync_data();
    }

    /// Takes `first` and whatever else is waiting, up to `batch_bytes_max`, into `batch`.
    fn collect(&mut self, first: Entry, rx: &Receiver<Entry>, batch: &mut Batch) -> Result<(), Fault> {
        let mut payload = Vec::with_capacity(256);
        let mut next = Some(first);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Record(record, then) => {
                    payload.clear();
                    record::encode(&record, &mut payload);
                    self.shadow_apply(&record);
                    self.frame(&payload, &mut batch.bytes)?;
                    batch.done.push(then);
                    batch.records += 1;
                }
                Entry::Barrier(then) => batch.done.push(then),
                Entry::Flush(tx) => batch.flushes.push(tx),
                Entry::Close => {
                    batch.closing = true;
                    return Ok(());
                }
            }
            if batch.bytes.len() < self.config.batch_bytes_max {
                next = rx.try_recv().ok();
            }
        }
        Ok(())
    }

    /// Writes the batch (syncing it when the durability asks), runs its completions, and
    /// snapshots when one is due or asked for. Returns whether it synced.
    fn commit(&mut self, batch: &mut Batch, unsynced: bool) -> Result<bool, Fault> {
        // A batch of barriers alone adds nothing to sync.
        let must_sync = unsynced
            && match self.config.durability {
                Durability::Sync => true,
                Durability::Buffered { interval_ms } => {
                    !batch.flushes.is_empty()
                        || batch.closing
                        || self.last_sync.elapsed() >= Duration::from_millis(interval_ms)
                }
            };
        let (records, bytes) = (std::mem::take(&mut batch.records), batch.bytes.len());
        let started = Instant::now();
        self.write(&mut batch.bytes, must_sync)?;
        if let Some(observer) = &self.config.observer {
            (observer.0)(BatchWritten { records, bytes, sync: must_sync.then(|| started.elapsed()) });
        }
        self.committed_len = Some(self.segment_len);
        for then in batch.done.drain(..) {
            then();
        }
        let due =
            self.config.snapshot_every_records.is_some_and(|every| self.next_seq - self.last_snapshot_seq >= every);
        if (due || !batch.flushes.is_empty()) && self.next_seq > self.last_snapshot_seq {
            self.snapshot()?;
        }
        for tx in batch.flushes.drain(..) {
            let _ = tx.send(());
        }
        Ok(must_sync)
    }

    /// Applies a record to the writer's copy of the state.
    fn shadow_apply(&mut self, record: &Record) {
        let Some(shadow) = &mut self.shadow else { return };
        // The engine made this change from the same state: a refusal here is a bug, reported,
        // and snapshots stop rather than lie.
        if let Err(what) = shadow.apply(self.next_seq, record) {
            tracing::error!(record = self.next_seq, %what, "the journal's copy of the state diverged; snapshots stop");
            self.shadow = None;
        }
    }

    /// Appends one frame for `payload` to `buf`, rolling to a new segment first if the frame
    /// would take the current one past its size bound.
    fn frame(&mut self, payload: &[u8], buf: &mut Vec<u8>) -> Result<(), Fault> {
        if payload.len() > format::PAYLOAD_BYTES_MAX {
            // The limits keep every record within the bound; one past it is a bug. Framing it
            // would acknowledge what a restart cannot read, so the journal stops instead.
            let error =
                std::io::Error::other(format!("a record of {} bytes exceeds the format's bound", payload.len()));
            return Err(Fault::from(error));
        }
        let frame_len = (format::FRAME_HEADER_BYTES + payload.len()) as u64;
        if self.segment_len + buf.len() as u64 + frame_len > self.config.segment_bytes_max
            && self.segment_len > SEGMENT_HEADER_BYTES as u64
        {
            self.write(buf, true)?;
            // The batch's records so far are durable but not yet acknowledged.
            self.roll(false)?;
        }
        self.prev = format::put_frame(&self.prev, payload, buf);
        self.next_seq += 1;
        Ok(())
    }

    /// Writes `buf` (and syncs when `sync`). A failed write may have left whole frames on disk
    /// before the error: the segment is cut back to its committed length, so that a restart
    /// finds no record whose caller heard of a failure. A failed sync is final and its
    /// outcome unknown.
    fn write(&mut self, buf: &mut Vec<u8>, sync: bool) -> Result<(), Fault> {
        if !buf.is_empty() {
            if let Err(error) = self.file.write_all(buf) {
                let failure = match self.cut_back() {
                    Ok(()) => StorageFailure::CutBack,
                    Err(e) => {
                        tracing::error!(segment = %self.path.display(), error = %e, "could not cut the failed write back");
                        StorageFailure::OutcomeUnknown
                    }
                };
                return Err(Fault { error, failure });
            }
            self.segment_len += buf.len() as u64;
            buf.clear();
        }
        if sync {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Cuts the segment back to the end of the last batch whose completions ran.
    fn cut_back(&mut self) -> std::io::Result<()> {
        let len = self.committed_len.ok_or_else(|| {
            std::io::Error::other("records of this batch were already made durable in an earlier segment")
        })?;
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.file.file.seek(std::io::SeekFrom::End(0))?;
        self.segment_len = len;
        Ok(())
    }

    /// Writes a snapshot of everything written so far, starts a new segment at that point,
    /// and deletes what the snapshot makes redundant (older snapshots; covered segments unless
    /// `keep_segments`).
    fn snapshot(&mut self) -> Result<(), Fault> {
        let Some(shadow) = &self.shadow else { return Ok(()) };
        self.file.sync_data()?;
        // Every completion ran before a snapshot: a failure from here on leaves nothing in
        // flight on the disk.
        let cut = |error| Fault { error, failure: StorageFailure::CutBack };
        snapshot::write(&self.dir, self.next_seq, &self.prev, shadow.as_ref()).map_err(cut)?;
        self.last_snapshot_seq = self.next_seq;
        if self.segment_len > SEGMENT_HEADER_BYTES as u64 {
            self.roll(true).map_err(cut)?;
        }
        for entry in fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let path = entry.path();
            let covered = match format::parse(&path) {
                Some((Kind::Snapshot, seq)) => seq < self.next_seq,
                Some((Kind::Segment, seq)) => seq < self.next_seq && !self.config.keep_segments,
                None => false,
            };
            if covered {
                fs::remove_file(&path).map_err(cut)?;
            }
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(cut)
    }

    /// Starts a new segment at the next record. `committed` says whether every record
    /// written so far has had its completion run (else a later failure cannot be cut back).
    fn roll(&mut self, committed: bool) -> std::io::Result<()> {
        self.file.sync_all()?;
        self.path = format::path(&self.dir, Kind::Segment, self.next_seq);
        let file = OpenOptions::new().create_new(true).write(true).open(&self.path)?;
        self.file = Segment::new(file, self.file.faults.take(), 0);
        self.file.write_all(&format::segment_header())?;
        self.file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.segment_len = SEGMENT_HEADER_BYTES as u64;
        self.committed_len = committed.then_some(self.segment_len);
        Ok(())
    }

    /// Stops on an I/O error: nothing more is acknowledged. The failure is published first,
    /// then pending completions are dropped, so their callers learn what the failure means for
    /// them (nothing changed, or outcome unknown) rather than a false "done".
    fn fail(self, fault: Fault, rx: &Receiver<Entry>) {
        let Fault { error, failure } = fault;
        tracing::error!(segment = %self.path.display(), %error, ?failure, "journal write failed; no further change is acknowledged");
        self.failure.set(failure);
        while rx.try_recv().is_ok() {}
    }
}

/// A writer's I/O error, with what it means for the records in flight.
struct Fault {
    error: std::io::Error,
    failure: StorageFailure,
}

impl From<std::io::Error> for Fault {
    /// Unless a path proves otherwise, a failed operation leaves the records in flight unknown.
    fn from(error: std::io::Error) -> Fault {
        Fault { error, failure: StorageFailure::OutcomeUnknown }
    }
}
