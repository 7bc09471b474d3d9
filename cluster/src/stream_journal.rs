//! A partition's journal as a JetStream stream: [`StreamJournal`] implements the engine's
//! [`Journal`] on one subject of a stream replicated on a NATS cluster.
//!
//! # How a record becomes durable
//!
//! The engine appends and moves on; a writer thread of the journal's own takes everything
//! appended so far as one batch, packs its records into messages of up to 256 KiB and
//! publishes them in order, each once the one before is acknowledged (group commit becomes
//! batched publishes: one acknowledgement for many records). A record's completion runs once JetStream has
//! acknowledged its message, which for a stream of three replicas means a quorum of two stored
//! it; completions run in append order, barriers among them.
//!
//! # Fencing
//!
//! The journal has one writer, and the stream enforces it: every publish carries the sequence
//! the writer expects the journal's subject to end at (`Nats-Expected-Last-Subject-Sequence`;
//! the subject is the stream's only one, so its sequences are the stream's). A writer that
//! another has overtaken (a deposed owner) gets "wrong last sequence" and stops with
//! [`StorageFailure::Deposed`]: none of its unacknowledged records is in the stream. The
//! per-subject header is used because its 0 is defined as "no message yet" (the clients'
//! "expect no message"), so an empty journal is fenced by definition, not by a server
//! version's reading of a 0.
//!
//! # Retries
//!
//! Each publish also carries a message id made of the writer's random epoch and the stream
//! position it aims at, so JetStream's deduplication makes a retry safe: after a timeout or a
//! lost connection (a node killed, a leader being elected) the writer publishes again from the
//! first record not acknowledged, and a copy that had landed is acknowledged as the duplicate
//! it is. Only after [`RETRY_FOR`] does it give up, with [`StorageFailure::OutcomeUnknown`].
//!
//! # Snapshots
//!
//! With snapshots on, the writer hands each acknowledged message's records, with the message's
//! mark, to a snapshotter ([`crate::snapshots`]); opening reads the latest snapshot and only the
//! messages after it ([`Recovered`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt;
use hongbao::{Completion, Config, Folded, Journal, LogMark, Record, StorageFailure};
use parking_lot::{Condvar, Mutex};

use crate::snapshots;

/// How long the writer keeps publishing a record again before the outcome is unknown: longer
/// than a JetStream leader election after a node dies.
pub const RETRY_FOR: Duration = Duration::from_secs(20);

/// How long opening a journal keeps trying while the cluster elects its leaders.
pub const OPEN_RETRY_FOR: Duration = Duration::from_secs(60);

/// The most record bytes packed into one message (NATS refuses messages over its
/// `max_payload`, 1 MiB by default).
const MESSAGE_BYTES_MAX: usize = 256 * 1024;

/// Where a partition's journal lives.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// The subject of this journal in it.
    pub subject: String,
    /// Replicas of the stream: 3 on a cluster of three, so any one node may die.
    pub replicas: usize,
    /// Store a snapshot of the partition in the object store every this many records, and
    /// when the journal closes cleanly (`None`: never; a new owner then reads the whole
    /// stream). A task beside the writer keeps a copy of the state to snapshot from, folded
    /// from each acknowledged message: it costs the state's memory once more, the time to
    /// apply each record again, and, per snapshot, the time to encode the whole state (see
    /// [`crate::snapshots`]).
    pub snapshot_every_records: Option<u64>,
}

impl StreamSpec {
    /// How often a partition's journal snapshots by default: a new owner reads at most about
    /// this many records after the latest snapshot.
    pub const SNAPSHOT_EVERY_RECORDS: u64 = 1_000_000;
}

/// What opening a journal found in its stream.
#[derive(Debug)]
pub struct Recovered {
    /// The partition's state: the latest snapshot (if the stream can continue from it) and
    /// every record after it, for the engine to start from.
    pub state: Folded,
    /// The stream sequence of the last message the snapshot it started from covers; `None`:
    /// it started from nothing and read the whole stream.
    pub snapshot: Option<u64>,
    /// The records read from the stream (those after the snapshot).
    pub records_read: u64,
}

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("JetStream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("stream {stream} is corrupt at message {sequence}: {reason}")]
    Corrupt { stream: String, sequence: u64, reason: String },
    #[error("a record of message {sequence} of stream {stream} contradicts the records before it: {reason}")]
    Contradicts { stream: String, sequence: u64, reason: String },
}

/// A journal on a JetStream stream. See the module documentation.
pub struct StreamJournal {
    shared: Arc<Shared>,
    /// Whether the writer keeps a copy of the state (snapshots are on).
    shadowing: bool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    queue: Mutex<Vec<Entry>>,
    wake: tokio::sync::Notify,
    failure: Mutex<Option<StorageFailure>>,
    closing: AtomicBool,
    /// Records appended, and records acknowledged (under `settled`, for `flush`).
    appended: AtomicU64,
    acknowledged: Mutex<u64>,
    settled: Condvar,
}

enum Entry {
    /// A record, encoded, and itself when the writer keeps a copy of the state.
    Record(Bytes, Option<Record>, Completion),
    Barrier(Completion),
}

impl StreamJournal {
    /// Connects to the cluster at `urls`, creates the stream if it is missing, rebuilds the
    /// partition's state (`config`'s) from its latest snapshot and the records after it (or
    /// from every record), and starts the writer, which appends after them. Start the engine
    /// on the journal and `Recovered::state` ([`Config::with_journal_state`]). Blocks the
    /// calling thread meanwhile, as `Engine::start` does.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached, the stream cannot be made or read, or it holds a message
    /// that is not a record or a record that contradicts those before it.
    pub fn open(urls: &str, spec: &StreamSpec, config: &Config) -> Result<(Arc<StreamJournal>, Recovered), OpenError> {
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (urls, spec, config) = (urls.to_string(), spec.clone(), config.clone());
        let shadowing = spec.snapshot_every_records.is_some();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            failure: Mutex::new(None),
            closing: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            acknowledged: Mutex::new(0),
            settled: Condvar::new(),
        });
        let writer_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("journal-{}", spec.subject))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = opened_tx.send(Err(OpenError::Connect { urls, reason: e.to_string() }));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match connect(&urls, &spec, &config).await {
                        Ok((writer, recovered)) => {
                            let _ = opened_tx.send(Ok(recovered));
                            writer.run(&writer_shared).await;
                        }
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| OpenError::Connect { urls: String::new(), reason: e.to_string() })?;
        let recovered = opened_rx
            .recv()
            .map_err(|_| OpenError::Connect { urls: String::new(), reason: "the writer thread stopped".into() })??;
        let journal = StreamJournal { shared, shadowing, writer: Mutex::new(Some(thread)) };
        Ok((Arc::new(journal), recovered))
    }

    /// Every record of a journal's stream, read without writing anything (the stream must
    /// exist): what `hongbao audit --cluster` replays. Blocks the calling thread.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached, the stream is missing or cannot be read, or it holds a
    /// message that is not a record.
    pub fn read(urls: &str, spec: &StreamSpec) -> Result<Vec<Record>, OpenError> {
        StreamJournal::read_after(urls, spec, 0).map(|(records, _)| records)
    }

    /// The records of a journal's stream after its message `after` (0: all of them), read
    /// without writing anything, and the sequence of the stream's last message then: where a
    /// later read goes on from. Blocks the calling thread.
    ///
    /// # Errors
    ///
    /// As [`StreamJournal::read`].
    pub fn read_after(urls: &str, spec: &StreamSpec, after: u64) -> Result<(Vec<Record>, u64), OpenError> {
        on_own_runtime(urls, {
            let (urls, spec) = (urls.to_string(), spec.clone());
            async move {
                let js = jetstream::new(client(&urls).await?);
                // A NATS server down, or a leader being elected, answers nothing for a while:
                // read again, from the same place, until it does.
                let deadline = Instant::now() + OPEN_RETRY_FOR;
                loop {
                    match read_once(&js, &spec, after).await {
                        Err((e, true)) if Instant::now() < deadline => {
                            tracing::debug!("{e}; reading again");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        outcome => return outcome.map_err(|(e, _)| e),
                    }
                }
            }
        })
    }

    /// Deletes a journal's stream (a load test's, when it ends), and its snapshot. Blocks the
    /// calling thread.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached or refuses.
    pub fn delete_stream(urls: &str, spec: &StreamSpec) -> Result<(), OpenError> {
        on_own_runtime(urls, {
            let (urls, spec) = (urls.to_string(), spec.clone());
            async move {
                let js = jetstream::new(client(&urls).await?);
                snapshots::delete(&js, &spec.stream).await;
                js.delete_stream(&spec.stream)
                    .await
                    .map(drop)
                    .map_err(|e| OpenError::Stream { stream: spec.stream.clone(), reason: format!("deleting it: {e}") })
            }
        })
    }

    /// Stops the journal at once, as when this node's lease ran out: nothing more is
    /// published, and what was appended and not yet acknowledged has an unknown outcome.
    pub fn halt(&self) {
        self.shared.fail(StorageFailure::OutcomeUnknown);
    }

    fn push(&self, entry: Entry) {
        let mut queue = self.shared.queue.lock();
        // Checked under the queue's lock, which the writer holds when it fails: an entry is
        // either queued before the failure (and dropped with the queue) or refused here.
        if self.shared.closing.load(Ordering::Acquire) || self.shared.failure.lock().is_some() {
            // A stopped journal drops completions: see `Journal::failure`.
            return;
        }
        if matches!(entry, Entry::Record(..)) {
            self.shared.appended.fetch_add(1, Ordering::AcqRel);
        }
        queue.push(entry);
        drop(queue);
        self.shared.wake.notify_one();
    }
}

impl Shared {
    /// Records the journal's failure (the first one stands) and drops what is queued.
    fn fail(&self, failure: StorageFailure) {
        let mut queue = self.queue.lock();
        self.failure.lock().get_or_insert(failure);
        queue.clear();
        drop(queue);
        self.settled.notify_all();
        self.wake.notify_one();
    }

    fn failed(&self) -> bool {
        self.failure.lock().is_some()
    }
}

impl Journal for StreamJournal {
    fn append(&self, record: Record, then: Completion) {
        let bytes = Bytes::from(record.to_bytes());
        self.push(Entry::Record(bytes, self.shadowing.then_some(record), then));
    }

    fn barrier(&self, then: Completion) {
        self.push(Entry::Barrier(then));
    }

    fn flush(&self) {
        let target = self.shared.appended.load(Ordering::Acquire);
        let mut acknowledged = self.shared.acknowledged.lock();
        while *acknowledged < target && !self.shared.failed() {
            self.shared.settled.wait_for(&mut acknowledged, Duration::from_millis(100));
        }
    }

    fn failure(&self) -> Option<StorageFailure> {
        *self.shared.failure.lock()
    }

    fn close(&self) {
        self.flush();
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(thread) = self.writer.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StreamJournal {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// The writer's side: the stream and where it ends (in messages, each holding a batch's
/// records).
struct Writer {
    js: jetstream::Context,
    stream: String,
    subject: String,
    /// The stream's last sequence, as this writer made it.
    last: u64,
    /// This writer's epoch, in every message id, so no other writer's message is taken for a
    /// copy of one of ours.
    epoch: u64,
    /// The snapshotter it feeds each acknowledged message (when snapshots are on), and the
    /// mark of the last one.
    feed: Option<snapshots::Feed>,
    mark: LogMark,
}

/// Runs `work` on a runtime of its own, on a thread of its own, and waits for it: callable
/// from anywhere, an async context included.
fn on_own_runtime<T: Send + 'static>(
    urls: &str,
    work: impl std::future::Future<Output = Result<T, OpenError>> + Send + 'static,
) -> Result<T, OpenError> {
    let failed = |reason: String| OpenError::Connect { urls: urls.to_string(), reason };
    let on_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        runtime.map_err(|e| e.to_string()).map(|runtime| runtime.block_on(work))
    });
    on_thread.join().map_err(|_| failed("the thread panicked".into()))?.map_err(failed)?
}

/// A client of the cluster at `urls` (comma-separated); it reconnects to another node when the
/// one it speaks to dies.
pub(crate) async fn client(urls: &str) -> Result<async_nats::Client, OpenError> {
    let connect_err = |reason: String| OpenError::Connect { urls: urls.to_string(), reason };
    let servers = urls
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_err(e.to_string()))?;
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| connect_err(e.to_string()))
}

async fn connect(urls: &str, spec: &StreamSpec, config: &Config) -> Result<(Writer, Recovered), OpenError> {
    let mut js = jetstream::new(client(urls).await?);
    // The cluster elects its JetStream leaders a moment after it starts, or after a node dies:
    // the stream is opened and read again until that is over.
    let deadline = Instant::now() + OPEN_RETRY_FOR;
    loop {
        match open_stream(&js, spec, config).await {
            Ok((last, recovered)) => {
                let epoch = u64::from(std::process::id()) << 32 ^ u64::from(rand_u32());
                let (stream, subject) = (spec.stream.clone(), spec.subject.clone());
                // Replaced by the fence's, below, before anything is fed.
                let mark = LogMark { position: last, hash: [0; 32] };
                let mut writer = Writer { js, stream, subject, last, epoch, feed: None, mark };
                // The fence: a message of no records right after what was read. Once it is in,
                // a writer still appending from before is refused; if one got in first, its
                // records are read again with the stream.
                match writer.fence().await {
                    Ok(()) => {
                        if let Some(every) = spec.snapshot_every_records {
                            let (js, name, replicas) = (writer.js.clone(), spec.stream.clone(), spec.replicas);
                            let target = snapshots::Target { js, name, replicas };
                            let plan = snapshots::Plan { target, every: every.max(1) };
                            // The records the latest snapshot holds (0 when none was read).
                            let covered = recovered.state.records() - recovered.records_read;
                            let state = recovered.state.clone();
                            writer.feed = Some(snapshots::Feed::start(state, covered, writer.mark, plan));
                        }
                        return Ok((writer, recovered));
                    }
                    Err(reason) if Instant::now() < deadline => tracing::debug!("fencing: {reason}; reading again"),
                    Err(reason) => return Err(OpenError::Stream { stream: spec.stream.clone(), reason }),
                }
                js = writer.js;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e @ (OpenError::Corrupt { .. } | OpenError::Contradicts { .. })) => return Err(e),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::debug!("{e}; again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Creates the stream if it is missing and rebuilds the partition from it: where it ends, and
/// the state (from the latest snapshot the stream can continue, and the records after it).
async fn open_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
    config: &Config,
) -> Result<(u64, Recovered), OpenError> {
    let stream_err = |reason: String| OpenError::Stream { stream: spec.stream.clone(), reason };
    let wanted = stream::Config {
        name: spec.stream.clone(),
        subjects: vec![spec.subject.clone()],
        num_replicas: spec.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let mut stream =
        js.get_or_create_stream(wanted).await.map_err(|e| stream_err(format!("creating or finding it: {e}")))?;
    let info = stream.info().await.map_err(|e| stream_err(format!("its state: {e}")))?;
    // Sequences are counted on the stream, fences on the subject: they agree only when the
    // subject is the stream's only one.
    if info.config.subjects != [spec.subject.clone()] {
        return Err(OpenError::Corrupt {
            stream: spec.stream.clone(),
            sequence: 0,
            reason: format!("it holds subjects {:?}, not only {}", info.config.subjects, spec.subject),
        });
    }
    let last = info.state.last_sequence;
    if let Some((state, mark)) = snapshots::latest(js, &stream, &spec.stream, last, config).await {
        match fold(&stream, spec, state, mark.position + 1, last).await {
            // A snapshot the stream's later records contradict is no start: read it all.
            Err(OpenError::Contradicts { sequence, reason, .. }) => {
                tracing::warn!(stream = spec.stream, "the latest snapshot is passed over: record {sequence} contradicts it ({reason}); reading the whole stream");
            }
            folded => {
                return folded.map(|(state, records_read)| {
                    (last, Recovered { state, snapshot: Some(mark.position), records_read })
                })
            }
        }
    }
    let (state, records_read) = fold(&stream, spec, Folded::empty(config), 1, last).await?;
    Ok((last, Recovered { state, snapshot: None, records_read }))
}

/// `state` with the records of messages `from..=last` applied, and how many there were.
async fn fold(
    stream: &stream::Stream,
    spec: &StreamSpec,
    mut state: Folded,
    from: u64,
    last: u64,
) -> Result<(Folded, u64), OpenError> {
    let mut read = 0;
    read_history(stream, spec, from, last, &mut |sequence, record| {
        read += 1;
        state.apply(&record).map_err(|reason| OpenError::Contradicts { stream: spec.stream.clone(), sequence, reason })
    })
    .await?;
    Ok((state, read))
}

fn corrupt(spec: &StreamSpec, sequence: u64, reason: String) -> OpenError {
    OpenError::Corrupt { stream: spec.stream.clone(), sequence, reason }
}

/// Every record of the stream up to `last`, in order, through an ordered consumer.
/// One read of a whole journal; an error says whether reading again may succeed (a missing
/// stream or a corrupt record will not).
async fn read_once(
    js: &jetstream::Context,
    spec: &StreamSpec,
    after: u64,
) -> Result<(Vec<Record>, u64), (OpenError, bool)> {
    let stream_err = |reason: String| OpenError::Stream { stream: spec.stream.clone(), reason };
    let mut stream = js.get_stream(&spec.stream).await.map_err(|e| {
        let missing = matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND);
        (stream_err(e.to_string()), !missing)
    })?;
    let last = stream.info().await.map_err(|e| (stream_err(format!("its state: {e}")), true))?.state.last_sequence;
    let mut history = Vec::new();
    let mut each = |_, record| {
        history.push(record);
        Ok(())
    };
    read_history(&stream, spec, after + 1, last, &mut each).await.map_err(|e| {
        let again = !matches!(e, OpenError::Corrupt { .. });
        (e, again)
    })?;
    Ok((history, last.max(after)))
}

/// Calls `each` with every record of the stream's messages `from..=last`, in order, and the
/// sequence of its message, through an ordered consumer; stops at the first error.
async fn read_history(
    stream: &stream::Stream,
    spec: &StreamSpec,
    from: u64,
    last: u64,
    each: &mut (dyn FnMut(u64, Record) -> Result<(), OpenError> + Send),
) -> Result<(), OpenError> {
    let stream_err = |reason: String| OpenError::Stream { stream: spec.stream.clone(), reason };
    if last < from {
        return Ok(());
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: spec.subject.clone(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from },
            ..Default::default()
        })
        .await
        .map_err(|e| stream_err(format!("a reader of its records: {e}")))?;
    let mut messages = consumer.messages().await.map_err(|e| stream_err(format!("reading it: {e}")))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| stream_err(format!("reading it: {e}")))?;
        let sequence = message.info().map_err(|e| stream_err(e.to_string()))?.stream_sequence;
        let records = unpack(&message.payload).map_err(|reason| corrupt(spec, sequence, reason))?;
        records.into_iter().try_for_each(|record| each(sequence, record))?;
        if sequence >= last {
            break;
        }
    }
    Ok(())
}

impl Writer {
    async fn run(mut self, shared: &Shared) {
        loop {
            if shared.failed() {
                return;
            }
            let batch = std::mem::take(&mut *shared.queue.lock());
            if batch.is_empty() {
                if shared.closing.load(Ordering::Acquire) {
                    // Closed cleanly: the next owner starts from everything written.
                    if let Some(feed) = self.feed.take() {
                        feed.close().await;
                    }
                    return;
                }
                shared.wake.notified().await;
                continue;
            }
            if let Err(failure) = self.commit(batch, shared).await {
                shared.fail(failure);
                return;
            }
        }
    }

    /// Packs a batch's records into messages and publishes them one after the other, each once
    /// the one before is acknowledged, running the completions in order as the
    /// acknowledgements come; a message not acknowledged is published again until
    /// [`RETRY_FOR`] has passed. (Publishing the next message before the last one is
    /// acknowledged would let it land behind another writer's message when the last one is
    /// refused: a chain of expected sequences only fences the message whose predecessor is
    /// known.)
    async fn commit(&mut self, batch: Vec<Entry>, shared: &Shared) -> Result<(), StorageFailure> {
        let (ready, messages) = pack(batch);
        // Barriers with no record before them in the batch: everything earlier is durable.
        ready.into_iter().for_each(|then| then());
        for message in messages {
            if shared.failed() {
                // Halted: nothing more is published.
                return Err(StorageFailure::OutcomeUnknown);
            }
            let first = self.publish(message.payload.clone(), self.last).await;
            if let Err(failure) = self.settle(first, message.payload).await {
                // The failure is known before the message's completions are dropped: a caller
                // whose reply is lost then asks the journal what became of it, and must be told.
                shared.fail(failure);
                return Err(failure);
            }
            message.completions.into_iter().for_each(|then| then());
            if let Some(feed) = &self.feed {
                if !feed.landed(message.folded, self.mark).await {
                    self.feed = None;
                }
            }
            *shared.acknowledged.lock() += message.records;
            shared.settled.notify_all();
        }
        Ok(())
    }

    /// What a refused retry proves. Another writer's message is where this one's should be;
    /// `Deposed` (none of this writer's unacknowledged messages is in the stream) is claimed
    /// only once the stream after the last acknowledged message is read and none of them is
    /// there. If one is, or the stream cannot be read, the outcome is unknown.
    async fn deposed(&self) -> StorageFailure {
        let ours = format!("{:x}-", self.epoch);
        let Ok(stream) = self.js.get_stream(&self.stream).await else { return StorageFailure::OutcomeUnknown };
        let mut sequence = self.last + 1;
        loop {
            match stream.get_raw_message(sequence).await {
                Ok(message) => {
                    if message_id(&message.headers).starts_with(&ours) {
                        return StorageFailure::OutcomeUnknown;
                    }
                    sequence += 1;
                }
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    return StorageFailure::Deposed
                }
                Err(_) => return StorageFailure::OutcomeUnknown,
            }
        }
    }

    /// Appends an empty message right after the last one read: it fences off any writer that
    /// appended from an earlier view of the stream.
    async fn fence(&mut self) -> Result<(), String> {
        let fence = Bytes::from_static(&[MESSAGE_FORMAT]);
        let ack = self.publish(fence.clone(), self.last).await;
        match ack.map_err(|kind| format!("{kind:?}"))?.await {
            Ok(ack) if ack.sequence == self.last + 1 => {
                self.landed(&fence);
                Ok(())
            }
            Ok(ack) => Err(format!("the fence landed at {}, not {}", ack.sequence, self.last + 1)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sends one publish aimed at the position after `after`.
    async fn publish(
        &self,
        bytes: Bytes,
        after: u64,
    ) -> Result<jetstream::context::PublishAckFuture, PublishErrorKind> {
        let message =
            PublishMessage::build().payload(bytes).expected_last_subject_sequence(after).message_id(self.id(after + 1));
        self.js.send_publish(self.subject.clone(), message).await.map_err(|e| e.kind())
    }

    /// The id of this writer's message at `position`.
    fn id(&self, position: u64) -> String {
        format!("{:x}-{position}", self.epoch)
    }

    /// This writer's message `payload` was acknowledged right after the last one: the stream
    /// ends there now, and a snapshot from here on ends at it (marked with what this writer
    /// knows it published, never with what the stream holds later).
    fn landed(&mut self, payload: &[u8]) {
        self.last += 1;
        self.mark = snapshots::mark_of(self.last, &self.id(self.last), payload);
    }

    /// Waits for the record aimed at `self.last + 1` to be acknowledged there, publishing it
    /// again while the cluster cannot answer.
    async fn settle(
        &mut self,
        first: Result<jetstream::context::PublishAckFuture, PublishErrorKind>,
        bytes: Bytes,
    ) -> Result<(), StorageFailure> {
        let deadline = Instant::now() + RETRY_FOR;
        let (mut attempt, mut retried) = (first, false);
        loop {
            let outcome = match attempt {
                Ok(ack) => ack.await.map_err(|e| e.kind()),
                Err(kind) => Err(kind),
            };
            match outcome {
                Ok(ack) if ack.sequence == self.last + 1 => {
                    self.landed(&bytes);
                    return Ok(());
                }
                // Acknowledged somewhere else: the stream is not what this writer believes.
                Ok(_) => return Err(StorageFailure::OutcomeUnknown),
                // Published again right behind its predecessor, now acknowledged: another writer
                // appended at this position. This one is deposed, and the log proves that none
                // of its unacknowledged records is in it.
                Err(PublishErrorKind::WrongLastSequence) if retried => return Err(self.deposed().await),
                // A first publish may have been refused only because a predecessor had not
                // landed yet: published again below.
                Err(PublishErrorKind::WrongLastSequence) => {}
                Err(kind) if Instant::now() < deadline => {
                    tracing::debug!("publish at {} failed ({kind:?}); again", self.last + 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return Err(StorageFailure::OutcomeUnknown),
            }
            retried = true;
            attempt = self.publish(bytes.clone(), self.last).await;
        }
    }
}

/// A stored message's id (`Nats-Msg-Id`), or nothing. (Looked up by the client's own name
/// for it: the header's name spelt as a string is another key.)
pub(crate) fn message_id(headers: &async_nats::HeaderMap) -> String {
    headers.get(async_nats::header::NATS_MESSAGE_ID).map(|v| v.as_str().to_string()).unwrap_or_default()
}

/// Records packed into one JetStream message, and the completions that run once it is
/// acknowledged (theirs, and the barriers among them).
struct Message {
    payload: Bytes,
    records: u64,
    /// Its records, for the writer's copy of the state (when it keeps one).
    folded: Vec<Record>,
    completions: Vec<Completion>,
}

/// The format of a message: this byte, then each record as its length (u32, little endian)
/// and its bytes.
const MESSAGE_FORMAT: u8 = 1;

/// Packs a batch into messages of at most [`MESSAGE_BYTES_MAX`] (a record larger than that
/// travels alone); returns the barriers that come before any record, and the messages.
fn pack(batch: Vec<Entry>) -> (Vec<Completion>, Vec<Message>) {
    let (mut ready, mut messages) = (Vec::new(), Vec::<Message>::new());
    let mut payload = vec![MESSAGE_FORMAT];
    let mut current: Option<Message> = None;
    for entry in batch {
        match entry {
            Entry::Barrier(then) => match current.as_mut().or(messages.last_mut()) {
                Some(message) => message.completions.push(then),
                None => ready.push(then),
            },
            Entry::Record(bytes, record, then) => {
                if payload.len() > 1 && payload.len() + 4 + bytes.len() > MESSAGE_BYTES_MAX {
                    let mut done = current.take().expect("a message holds the payload's records");
                    done.payload = Bytes::from(std::mem::replace(&mut payload, vec![MESSAGE_FORMAT]));
                    messages.push(done);
                }
                payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                payload.extend_from_slice(&bytes);
                let message = current.get_or_insert_with(|| Message {
                    payload: Bytes::new(),
                    records: 0,
                    folded: Vec::new(),
                    completions: Vec::new(),
                });
                message.records += 1;
                message.folded.extend(record);
                message.completions.push(then);
            }
        }
    }
    if let Some(mut last) = current {
        last.payload = Bytes::from(payload);
        messages.push(last);
    }
    (ready, messages)
}

/// The first of `records` as one message of this format, as many as fit
/// [`MESSAGE_BYTES_MAX`] (at least one), and how many it holds: for the remittances of the
/// inbox, which are records too (a packet carried with its greeting is much larger than a
/// credit).
pub(crate) fn pack_records(records: impl IntoIterator<Item = Record>) -> (Bytes, usize) {
    let (mut payload, mut count) = (vec![MESSAGE_FORMAT], 0);
    for bytes in records.into_iter().map(|r| r.to_bytes()) {
        if count > 0 && payload.len() + 4 + bytes.len() > MESSAGE_BYTES_MAX {
            break;
        }
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&bytes);
        count += 1;
    }
    (Bytes::from(payload), count)
}

/// The records a message holds.
pub(crate) fn unpack(payload: &[u8]) -> Result<Vec<Record>, String> {
    let Some((&MESSAGE_FORMAT, mut rest)) = payload.split_first() else {
        return Err(format!("not a message of format {MESSAGE_FORMAT}"));
    };
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or("a record's length is cut")?;
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        let (bytes, tail) = tail.split_at_checked(len).ok_or("a record is cut")?;
        records.push(Record::from_bytes(bytes).map_err(|e| e.to_string())?);
        rest = tail;
    }
    Ok(records)
}

/// A random 32-bit number from the standard library's hasher seed (no extra crate for it).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use hongbao::PacketId;
    use std::sync::atomic::AtomicUsize;

    /// A record appended: its bytes and itself.
    fn entry(i: u64, then: Completion) -> Entry {
        let record = Record::SoldOut { packet: PacketId(i) };
        Entry::Record(Bytes::from(record.to_bytes()), Some(record), then)
    }

    /// Completions log their name, so their order can be checked.
    fn completion(log: &Arc<Mutex<Vec<String>>>, name: String) -> Completion {
        let log = Arc::clone(log);
        Box::new(move || log.lock().push(name))
    }

    /// A writer refused at its next position reads the stream after its last acknowledged
    /// message: a message of its own there (one whose acknowledgement was lost) leaves the
    /// outcome unknown; only other writers' messages prove it deposed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_writer_is_deposed_only_when_none_of_its_messages_landed() {
        let cluster = match crate::nats::NatsCluster::start(3) {
            Ok(cluster) => cluster,
            Err(e @ crate::nats::ClusterError::NotInstalled) => return eprintln!("skipped: {e}"),
            Err(e) => panic!("the NATS cluster did not start: {e}"),
        };
        let spec = StreamSpec {
            stream: "DEPOSED".into(),
            subject: "hb.deposed".into(),
            replicas: 3,
            snapshot_every_records: None,
        };
        let js = jetstream::new(client(&cluster.urls()).await.unwrap());
        // The cluster elects its leaders a moment after it starts.
        let deadline = Instant::now() + OPEN_RETRY_FOR;
        let last = loop {
            match open_stream(&js, &spec, &Config::default()).await {
                Ok((last, _)) => break last,
                Err(e) if Instant::now() < deadline => tracing::debug!("{e}; again"),
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let writer = |epoch| Writer {
            js: js.clone(),
            stream: spec.stream.clone(),
            subject: spec.subject.clone(),
            last,
            epoch,
            feed: None,
            mark: LogMark { position: last, hash: [0; 32] },
        };
        let (ours, theirs) = (writer(0xabc), writer(0xdef));
        let payload = Bytes::from_static(&[MESSAGE_FORMAT]);
        theirs.publish(payload.clone(), last).await.unwrap().await.unwrap();
        assert_eq!(ours.deposed().await, StorageFailure::Deposed);
        // Ours lands behind theirs, as a retry's copy would, and its acknowledgement is lost.
        ours.publish(payload, last + 1).await.unwrap().await.unwrap();
        assert_eq!(ours.deposed().await, StorageFailure::OutcomeUnknown);
    }

    #[test]
    fn a_batch_packs_into_messages_in_order_with_its_barriers() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut batch = vec![Entry::Barrier(completion(&log, "b0".into()))];
        for i in 0..3 {
            batch.push(entry(i, completion(&log, format!("r{i}"))));
        }
        batch.push(Entry::Barrier(completion(&log, "b1".into())));
        let (ready, messages) = pack(batch);
        assert_eq!((ready.len(), messages.len(), messages[0].records), (1, 1, 3));
        ready.into_iter().for_each(|then| then());
        for m in messages {
            let records = unpack(&m.payload).unwrap();
            assert_eq!(records, (0..3).map(|i| Record::SoldOut { packet: PacketId(i) }).collect::<Vec<_>>());
            m.completions.into_iter().for_each(|then| then());
        }
        assert_eq!(*log.lock(), ["b0", "r0", "r1", "r2", "b1"]);
    }

    #[test]
    fn messages_stay_under_their_size_and_a_cut_one_is_refused() {
        let count = Arc::new(AtomicUsize::new(0));
        let n = 40_000u64;
        let batch = (0..n)
            .map(|i| {
                let count = Arc::clone(&count);
                entry(
                    i,
                    Box::new(move || {
                        count.fetch_add(1, Ordering::Relaxed);
                    }),
                )
            })
            .collect();
        let (_, messages) = pack(batch);
        assert!(messages.len() > 1, "{} records fit one message", n);
        let mut all = Vec::new();
        for m in &messages {
            assert!(m.payload.len() <= MESSAGE_BYTES_MAX, "{}", m.payload.len());
            let records = unpack(&m.payload).unwrap();
            assert_eq!(records.len() as u64, m.records);
            assert_eq!(records, m.folded);
            all.extend(records);
        }
        assert_eq!(all.len() as u64, n);
        assert_eq!(all[12_345], Record::SoldOut { packet: PacketId(12_345) });
        let whole = &messages[0].payload;
        assert!(unpack(&whole[..whole.len() - 1]).is_err());
        assert!(unpack(&[9, 0, 0]).is_err(), "another format");
    }
}
