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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, io, JournalError, Kind, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
use super::reader::{self, Recovered};
use super::{snapshot, Completion, Fold, Journal, Restore};
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
}

impl FileJournalConfig {
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
        }
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
    failed: Arc<AtomicBool>,
    /// The writer thread, which holds the directory's lock while it runs.
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal").field("failed", &self.failed.load(Ordering::Relaxed)).finish_non_exhaustive()
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
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = format::lock_path(dir);
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked(dir.clone()));
        }
        let recovered = reader::read(dir, true, empty)?;
        let (path, len) = match &recovered.tail {
            Some(tail) if tail.version == FORMAT_VERSION || tail.len == 0 => (tail.path.clone(), tail.len),
            // No segment (a new directory, or one holding only a snapshot), or one of an older
            // format: new records go to a new segment, named after the first record it will
            // hold. (A segment already named so holds no record and is rewritten.)
            _ => (format::path(dir, Kind::Segment, recovered.records), 0),
        };
        if recovered.torn_bytes > 0 {
            tracing::warn!(
                segment = %path.display(),
                offset = len,
                bytes = recovered.torn_bytes,
                "cut a torn record at the end of the journal (it was never acknowledged)"
            );
        }
        let (file, segment_len) = open_tail(dir, &path, len)?;
        let (tx, rx) = mpsc::sync_channel(config.queue_len_max);
        let failed = Arc::new(AtomicBool::new(false));
        let shadow = config.snapshot_every_records.map(|_| Box::new(recovered.state.clone()) as Box<dyn Fold>);
        let writer = Writer {
            _lock: lock,
            shadow,
            last_snapshot_seq: recovered.records,
            dir: dir.clone(),
            file,
            path,
            segment_len,
            next_seq: recovered.records,
            prev: recovered.last_hash,
            config: config.clone(),
            failed: Arc::clone(&failed),
            last_sync: Instant::now(),
        };
        let handle =
            std::thread::Builder::new().name(WRITER_THREAD.into()).spawn(move || writer.run(rx)).map_err(io(dir))?;
        Ok((FileJournal { tx, failed, writer: parking_lot::Mutex::new(Some(handle)) }, recovered))
    }

    fn send(&self, entry: Entry) {
        // A full queue means the disk is behind: wait for room rather than grow.
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(entry)) => {
                let _ = self.tx.send(entry);
            }
            // The writer stopped after an I/O error: the completion is dropped, and its caller
            // hears that the engine is unavailable.
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

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
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
    file: File,
    path: PathBuf,
    segment_len: u64,
    next_seq: u64,
    prev: [u8; 32],
    config: FileJournalConfig,
    failed: Arc<AtomicBool>,
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
    fn collect(&mut self, first: Entry, rx: &Receiver<Entry>, batch: &mut Batch) -> std::io::Result<()> {
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
    fn commit(&mut self, batch: &mut Batch, unsynced: bool) -> std::io::Result<bool> {
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
        self.write(&mut batch.bytes, must_sync)?;
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
    fn frame(&mut self, payload: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
        let frame_len = (format::FRAME_HEADER_BYTES + payload.len()) as u64;
        if self.segment_len + buf.len() as u64 + frame_len > self.config.segment_bytes_max
            && self.segment_len > SEGMENT_HEADER_BYTES as u64
        {
            self.write(buf, true)?;
            self.roll()?;
        }
        self.prev = format::put_frame(&self.prev, payload, buf);
        self.next_seq += 1;
        Ok(())
    }

    fn write(&mut self, buf: &mut Vec<u8>, sync: bool) -> std::io::Result<()> {
        if !buf.is_empty() {
            self.file.write_all(buf)?;
            self.segment_len += buf.len() as u64;
            buf.clear();
        }
        if sync {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Writes a snapshot of everything written so far, starts a new segment at that point,
    /// and deletes what the snapshot makes redundant (older snapshots; covered segments unless
    /// `keep_segments`).
    fn snapshot(&mut self) -> std::io::Result<()> {
        let Some(shadow) = &self.shadow else { return Ok(()) };
        self.file.sync_data()?;
        snapshot::write(&self.dir, self.next_seq, &self.prev, shadow.as_ref())?;
        self.last_snapshot_seq = self.next_seq;
        if self.segment_len > SEGMENT_HEADER_BYTES as u64 {
            self.roll()?;
        }
        for entry in fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let path = entry.path();
            let covered = match format::parse(&path) {
                Some((Kind::Snapshot, seq)) => seq < self.next_seq,
                Some((Kind::Segment, seq)) => seq < self.next_seq && !self.config.keep_segments,
                None => false,
            };
            if covered {
                fs::remove_file(&path)?;
            }
        }
        File::open(&self.dir)?.sync_all()
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        self.path = format::path(&self.dir, Kind::Segment, self.next_seq);
        self.file = OpenOptions::new().create_new(true).write(true).open(&self.path)?;
        self.file.write_all(&format::segment_header())?;
        self.file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.segment_len = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// Stops on an I/O error: nothing more is acknowledged. Pending completions are dropped,
    /// so their callers hear that the engine is unavailable rather than a false "done".
    fn fail(self, e: std::io::Error, rx: &Receiver<Entry>) {
        tracing::error!(segment = %self.path.display(), error = %e, "journal write failed; no further change is acknowledged");
        self.failed.store(true, Ordering::Release);
        while rx.try_recv().is_ok() {}
    }
}
