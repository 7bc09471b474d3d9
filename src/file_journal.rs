//! The durable journal: a directory of append-only segment files written by one thread with
//! group commit.
//!
//! # Format
//!
//! A segment is named after the position of its first record (`00000000000000000000.hbj`) and
//! starts with the 8-byte magic `HONGBAO1`. Then frames, one per record:
//!
//! ```text
//! len: u32 LE | crc32c(prev ‖ payload): u32 LE | prev: [u8; 32] | payload: len bytes
//! ```
//!
//! `prev` is the BLAKE3 hash of the previous frame (all of its bytes; zeros for the first), so
//! any edit, deletion or reordering breaks the chain. The payload is [`crate::codec`].
//!
//! # Group commit
//!
//! Actors hand records to the writer thread through a bounded channel and go on serving
//! requests. The writer takes everything waiting (up to `batch_bytes_max`), writes it with one
//! `write`, makes it durable with one `fdatasync` (in [`Durability::Sync`]), then runs the
//! batch's completions in order: a storm of a thousand grabs costs a few syncs. When the
//! channel is full an actor waits for room: the disk's pace is the engine's.
//!
//! # Recovery
//!
//! [`read`] checks every frame's checksum and the chain from the first segment to the last. A
//! frame cut short at the very end of the last segment — or one whose checksum fails and that
//! runs to the end of that segment — is a write torn by a crash: it is cut off with a warning,
//! and nothing it held was ever acknowledged. A bad frame anywhere else is corruption:
//! [`read`] refuses, naming the segment and offset.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::codec;
use crate::journal::{Completion, Journal, Record};
use crate::replay::{Replica, Violation};
use crate::snapshot;

const MAGIC: &[u8; 8] = b"HONGBAO1";
const FRAME_HEADER_BYTES: usize = 4 + 4 + 32;
/// The writer thread's name.
const WRITER_THREAD: &str = "hongbao-journal";
/// Largest payload a frame may claim; anything larger is damage, not a record.
const PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// When an acknowledged change is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Why a journal could not be opened or read.
#[derive(Debug, Error)]
pub enum JournalError {
    /// Another engine holds the directory. (A child process forked at the moment an engine
    /// closes its journal shares the lock until it execs, so a restart right after a close
    /// in a process that spawns children may see this briefly.)
    #[error("journal {0} is in use by another process")]
    Locked(PathBuf),
    /// A frame that is not the torn tail is damaged.
    #[error("journal damaged in {segment} at byte {offset} (record {seq}): {what}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad frame.
        offset: u64,
        /// Position of the bad record.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// The operating system refused.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// What reading a journal found.
#[derive(Debug)]
pub struct Recovered {
    /// The state the records describe.
    pub replica: Replica,
    /// Records read.
    pub records: u64,
    /// Segments read.
    pub segments: usize,
    /// Bytes cut off a torn tail (0 if none).
    pub torn_bytes: u64,
    /// The last segment and its valid length, where writing continues.
    tail: Option<(PathBuf, u64)>,
    /// Hash of the last frame.
    last_hash: [u8; 32],
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.hbj")
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "hbj") {
            found.push(path);
        }
    }
    // Zero-padded names sort in record order.
    found.sort();
    Ok(found)
}

/// Reads and checks the journal in `dir` from its newest snapshot on (see [`read_with`]).
///
/// # Errors
///
/// As [`read_with`].
pub fn read(dir: &Path) -> Result<Recovered, JournalError> {
    read_with(dir, true)
}

/// Reads and checks every record in `dir`, applying each to a [`Replica`] — from the newest
/// snapshot on when `from_snapshot` (records it covers are still checksummed and chained but
/// not applied), or from the first record otherwise. A torn tail is reported in
/// [`Recovered::torn_bytes`] (and cut by [`FileJournal::open`], not here).
///
/// # Errors
///
/// [`JournalError::Corrupt`] naming the segment, offset and record of the first damaged frame,
/// of the first record that contradicts the ones before it, or of a gap in the history.
pub fn read_with(dir: &Path, from_snapshot: bool) -> Result<Recovered, JournalError> {
    let snapshot = if from_snapshot { snapshot::latest(dir).map_err(io(dir))? } else { None };
    let (mut replica, start_seq, snapshot_hash) = match snapshot {
        Some(s) => (s.replica, s.seq, Some(s.last_hash)),
        None => (Replica::default(), 0, None),
    };
    let mut files: Vec<(u64, PathBuf)> = segments(dir)?
        .into_iter()
        .map(|p| (p.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX), p))
        .collect();
    // Segments wholly before the starting point are not read.
    while files.len() > 1 && files[1].0 <= start_seq {
        files.remove(0);
    }
    let mut seq = files.first().map_or(start_seq, |f| f.0);
    if seq > start_seq {
        let (first, path) = &files[0];
        return Err(JournalError::Corrupt {
            segment: path.clone(),
            offset: 0,
            seq: start_seq,
            what: format!("records {start_seq}..{first} are missing (no segment or snapshot holds them)"),
        });
    }
    // The first frame after compacted history has no predecessor to check against.
    let mut prev: Option<[u8; 32]> = (seq == 0).then_some([0u8; 32]);
    let mut last_hash = snapshot_hash.unwrap_or([0u8; 32]);
    let mut torn_bytes = 0;
    let mut tail = None;
    let files: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    for (i, path) in files.iter().enumerate() {
        let last_segment = i + 1 == files.len();
        let mut bytes = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io(path))?;
        let corrupt = |offset: usize, seq: u64, what: String| JournalError::Corrupt {
            segment: path.clone(),
            offset: offset as u64,
            seq,
            what,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if last_segment && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                // Created but the magic never fully written: a torn start.
                torn_bytes = bytes.len() as u64;
                tail = Some((path.clone(), 0));
                continue;
            }
            return Err(corrupt(0, seq, "not a hongbao journal segment".into()));
        }
        let mut at = MAGIC.len();
        while at < bytes.len() {
            let rest = &bytes[at..];
            // Damage that only a crash mid-write can leave: allowed at the end of the last
            // segment (cut off by `open`), corruption anywhere else.
            let torn = |what: &str| if last_segment { Ok(()) } else { Err(corrupt(at, seq, what.to_string())) };
            if rest.len() < FRAME_HEADER_BYTES {
                torn("frame header cut short")?;
                break;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let frame_len = FRAME_HEADER_BYTES + len;
            if len > PAYLOAD_BYTES_MAX || rest.len() < frame_len {
                torn("frame cut short")?;
                break;
            }
            let frame = &rest[..frame_len];
            let (prev_in_frame, payload) = (&frame[8..40], &frame[40..]);
            if crc32c::crc32c_append(crc32c::crc32c(prev_in_frame), payload) != crc {
                // A torn final write leaves garbage up to the end of the file.
                if last_segment && at + frame_len == bytes.len() {
                    break;
                }
                return Err(corrupt(at, seq, "checksum mismatch".into()));
            }
            let expected = if seq == start_seq { snapshot_hash.or(prev) } else { prev };
            if expected.is_some_and(|p| p != prev_in_frame) {
                return Err(corrupt(
                    at,
                    seq,
                    "hash chain broken: this record does not follow the one before it".into(),
                ));
            }
            let record = codec::decode(payload).map_err(|e| corrupt(at, seq, e.to_string()))?;
            let hash = *blake3::hash(frame).as_bytes();
            if seq >= start_seq {
                replica.apply(seq, &record).map_err(|Violation { seq, what }| corrupt(at, seq, what))?;
                last_hash = hash;
            }
            prev = Some(hash);
            seq += 1;
            at += frame_len;
        }
        if last_segment {
            torn_bytes = (bytes.len() - at) as u64;
            tail = Some((path.clone(), at as u64));
        }
    }
    if seq < start_seq {
        return Err(JournalError::Corrupt {
            segment: files.last().cloned().unwrap_or_else(|| dir.to_path_buf()),
            offset: 0,
            seq,
            what: format!("the snapshot covers {start_seq} records but the segments hold {seq}"),
        });
    }
    Ok(Recovered { replica, records: seq, segments: files.len(), torn_bytes, tail, last_hash })
}

enum Entry {
    Record(Record, Completion),
    Barrier(Completion),
    Flush(SyncSender<()>),
}

/// The durable [`Journal`].
pub struct FileJournal {
    tx: SyncSender<Entry>,
    failed: std::sync::Arc<AtomicBool>,
    // Held for the journal's lifetime: the directory's lock.
    _lock: File,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal").field("failed", &self.failed.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl FileJournal {
    /// Opens (creating if needed) the journal in `config.dir`: locks the directory, reads and
    /// checks every record, cuts a torn tail, and starts the writer where the history ends.
    ///
    /// # Errors
    ///
    /// [`JournalError::Locked`] if another process has the directory open,
    /// [`JournalError::Corrupt`] for damage other than a torn tail, [`JournalError::Io`].
    pub fn open(config: &FileJournalConfig) -> Result<(FileJournal, Recovered), JournalError> {
        let dir = &config.dir;
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("LOCK");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked(dir.clone()));
        }
        let recovered = read(dir)?;
        let (path, len) = match &recovered.tail {
            Some((path, len)) => (path.clone(), *len),
            None => (dir.join(segment_name(0)), 0),
        };
        if recovered.torn_bytes > 0 {
            eprintln!(
                "hongbao: journal {}: cut a torn record of {} bytes at byte {len} (never acknowledged)",
                path.display(),
                recovered.torn_bytes
            );
        }
        let mut file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        file.set_len(len).map_err(io(&path))?;
        let mut segment_len = len;
        if len == 0 {
            file.write_all(MAGIC).map_err(io(&path))?;
            segment_len = MAGIC.len() as u64;
        }
        file.sync_all().map_err(io(&path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).map_err(io(&path))?;

        let (tx, rx) = mpsc::sync_channel(config.queue_len_max);
        let failed = std::sync::Arc::new(AtomicBool::new(false));
        let shadow = config.snapshot_every_records.map(|_| recovered.replica.clone());
        let writer = Writer {
            shadow,
            last_snapshot_seq: recovered.records,
            dir: dir.clone(),
            file,
            path,
            segment_len,
            next_seq: recovered.records,
            prev: recovered.last_hash,
            config: config.clone(),
            failed: std::sync::Arc::clone(&failed),
            last_sync: Instant::now(),
        };
        let handle =
            std::thread::Builder::new().name(WRITER_THREAD.into()).spawn(move || writer.run(rx)).map_err(io(dir))?;
        // The writer ends by itself once the journal (its sender) is dropped.
        drop(handle);
        Ok((FileJournal { tx, failed, _lock: lock }, recovered))
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
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        // A completion run by the writer can hold the last reference to the engine, and so to
        // this journal: waiting for the writer from its own thread would never end. It then
        // finishes (syncs) by itself once the channel closes.
        if std::thread::current().name() != Some(WRITER_THREAD) {
            self.flush();
        }
    }
}

struct Writer {
    /// The state after every record written, to snapshot from (when snapshots are on).
    shadow: Option<Replica>,
    last_snapshot_seq: u64,
    dir: PathBuf,
    file: File,
    path: PathBuf,
    segment_len: u64,
    next_seq: u64,
    prev: [u8; 32],
    config: FileJournalConfig,
    failed: std::sync::Arc<AtomicBool>,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut buf = Vec::with_capacity(self.config.batch_bytes_max + 4096);
        let mut payload = Vec::with_capacity(256);
        let mut done: Vec<Completion> = Vec::new();
        let mut flushes: Vec<SyncSender<()>> = Vec::new();
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
                            if let Err(e) = self.write(&mut buf, true) {
                                return self.fail(e, &rx);
                            }
                            unsynced = false;
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut next = Some(first);
            while let Some(entry) = next.take() {
                match entry {
                    Entry::Record(record, then) => {
                        payload.clear();
                        codec::encode(&record, &mut payload);
                        if let Some(shadow) = &mut self.shadow {
                            // The engine made this change from the same state: a refusal here
                            // is a bug, reported, and snapshots stop rather than lie.
                            if let Err(v) = shadow.apply(self.next_seq, &record) {
                                eprintln!(
                                    "hongbao: journal replica diverged at record {}: {}; snapshots stop",
                                    v.seq, v.what
                                );
                                self.shadow = None;
                            }
                        }
                        if let Err(e) = self.frame(&payload, &mut buf) {
                            return self.fail(e, &rx);
                        }
                        done.push(then);
                    }
                    Entry::Barrier(then) => done.push(then),
                    Entry::Flush(tx) => flushes.push(tx),
                }
                if buf.len() < self.config.batch_bytes_max {
                    next = rx.try_recv().ok();
                }
            }
            unsynced |= !buf.is_empty();
            // A batch of barriers alone adds nothing to sync.
            let must_sync = unsynced
                && match self.config.durability {
                    Durability::Sync => true,
                    Durability::Buffered { interval_ms } => {
                        !flushes.is_empty() || self.last_sync.elapsed() >= Duration::from_millis(interval_ms)
                    }
                };
            if let Err(e) = self.write(&mut buf, must_sync) {
                return self.fail(e, &rx);
            }
            unsynced &= !must_sync;
            for then in done.drain(..) {
                then();
            }
            let due =
                self.config.snapshot_every_records.is_some_and(|every| self.next_seq - self.last_snapshot_seq >= every);
            if (due || !flushes.is_empty()) && self.next_seq > self.last_snapshot_seq {
                if let Err(e) = self.snapshot() {
                    return self.fail(e, &rx);
                }
            }
            for tx in flushes.drain(..) {
                let _ = tx.send(());
            }
        }
        let _ = self.file.sync_data();
    }

    /// Appends one frame for `payload` to `buf`, rolling to a new segment first if the frame
    /// would take the current one past its size bound.
    fn frame(&mut self, payload: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
        let frame_len = (FRAME_HEADER_BYTES + payload.len()) as u64;
        if self.segment_len + buf.len() as u64 + frame_len > self.config.segment_bytes_max
            && self.segment_len > MAGIC.len() as u64
        {
            self.write(buf, true)?;
            self.roll()?;
        }
        let start = buf.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&self.prev), payload);
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&self.prev);
        buf.extend_from_slice(payload);
        self.prev = *blake3::hash(&buf[start..]).as_bytes();
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
        snapshot::write(&self.dir, self.next_seq, &self.prev, shadow)?;
        self.last_snapshot_seq = self.next_seq;
        if self.segment_len > MAGIC.len() as u64 {
            self.roll()?;
        }
        for entry in fs::read_dir(&self.dir)?.filter_map(Result::ok) {
            let path = entry.path();
            let first = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok());
            let old = first.is_some_and(|f| f < self.next_seq);
            let kind = path.extension().and_then(|e| e.to_str());
            if old && (kind == Some("hbs") || (kind == Some("hbj") && !self.config.keep_segments)) {
                fs::remove_file(&path)?;
            }
        }
        File::open(&self.dir)?.sync_all()
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        self.path = self.dir.join(segment_name(self.next_seq));
        self.file = OpenOptions::new().create_new(true).write(true).open(&self.path)?;
        self.file.write_all(MAGIC)?;
        self.file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.segment_len = MAGIC.len() as u64;
        Ok(())
    }

    /// Stops on an I/O error: nothing more is acknowledged. Pending completions are dropped,
    /// so their callers hear that the engine is unavailable rather than a false "done".
    fn fail(self, e: std::io::Error, rx: &Receiver<Entry>) {
        eprintln!("hongbao: journal {}: write failed, no further change is acknowledged: {e}", self.path.display());
        self.failed.store(true, Ordering::Release);
        while rx.try_recv().is_ok() {}
    }
}
