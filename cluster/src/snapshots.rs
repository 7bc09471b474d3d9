//! A partition's snapshots in JetStream's object store, so that a new owner reads the latest
//! snapshot and only the records after it instead of its whole stream.
//!
//! Each partition's latest snapshot is one object, named after its stream, of a bucket of its
//! own ([`bucket_of`]). It is the library's snapshot format ([`Folded::snapshot`], sealed with a hash) and
//! ends at a [`LogMark`]: the stream sequence of the last message it covers, and a hash of that
//! message's id and payload. An owner trusts a snapshot only if the stream still holds that very
//! message there (a stream deleted and made again reaches the same sequences with other
//! messages); otherwise it reads the whole stream, as it does when there is no snapshot.
//!
//! A journal's snapshotter ([`Feed`]), a task beside its writer, keeps a copy of the state
//! folded from the messages JetStream acknowledged to the writer (off the writer's thread), and
//! marks each snapshot with the last of them: the id and payload the writer published, not what
//! the stream holds later. It stores a snapshot every so many records, one at a time in the
//! background, and a last one when the journal closes cleanly (a node handing a partition over
//! closes its journal before it gives the lease up); a writer that fails or is halted stores
//! none. A snapshot therefore describes a prefix of the stream it
//! was written from: a deposed owner's late snapshot is older, never wrong, and one written
//! after its stream was deleted and made again names a message the new stream does not hold,
//! so it is passed over. The stream keeps every message (the cluster audit checks every
//! partition's whole chain). A snapshot whose state the later records contradict is passed
//! over too, so a bad snapshot costs a whole read, never the partition.

use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use futures::StreamExt;
use hongbao::{Config, Folded, LogMark, Record};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// The object store bucket of the snapshots of the partition whose stream is `stream`: one
/// bucket per partition, so that clearing what an interrupted store left behind in it never
/// touches another partition's store in progress.
pub fn bucket_of(stream: &str) -> String {
    format!("hongbao_snapshots_{stream}")
}

/// Where a partition's snapshots are stored.
#[derive(Clone)]
pub(crate) struct Target {
    pub js: jetstream::Context,
    /// The partition's stream's name: the object's, and its bucket's ([`bucket_of`]).
    pub name: String,
    /// Replicas of the bucket, if it is made.
    pub replicas: usize,
}

impl Target {
    /// The bucket, made if it is missing.
    async fn bucket(&self) -> Result<object_store::ObjectStore, String> {
        let name = bucket_of(&self.name);
        if let Ok(store) = self.js.get_object_store(&name).await {
            return Ok(store);
        }
        let config = object_store::Config { bucket: name.clone(), num_replicas: self.replicas, ..Default::default() };
        self.js.create_object_store(config).await.map_err(|e| format!("the snapshot bucket {name}: {e}"))
    }

    /// Stores `bytes` as the partition's latest snapshot, then clears the chunks no snapshot
    /// points at any more: those of a store interrupted before it was complete (a halted
    /// journal, a close that ran out of time), or of a deposed owner's store that lost the
    /// race. (The object store clears only the chunks of the snapshot it replaces.)
    async fn put(&self, mut bytes: &[u8]) -> Result<(), String> {
        let name = &self.name;
        let failed = |e: &dyn std::fmt::Display| format!("storing the snapshot of {name}: {e}");
        let stored = self.bucket().await?.put(name.as_str(), &mut bytes).await.map_err(|e| failed(&e))?;
        let bucket = bucket_of(name);
        let chunks = self.js.get_stream(format!("OBJ_{bucket}")).await.map_err(|e| failed(&e))?;
        let mut subjects = chunks.info_with_subjects(format!("$O.{bucket}.C.>")).await.map_err(|e| failed(&e))?;
        let current = format!("$O.{bucket}.C.{}", stored.nuid);
        let mut orphans = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(|e| failed(&e))?;
            if subject != current {
                orphans.push(subject);
            }
        }
        for subject in orphans {
            if let Err(e) = chunks.purge().filter(subject.as_str()).await {
                tracing::warn!(stream = name, "chunks of an interrupted snapshot at {subject} stay: {e}");
            }
        }
        Ok(())
    }

    /// Stores a snapshot of `records` records ending at `mark`: the records, if it was
    /// stored. A store that fails is tried again for [`STORE_RETRY_FOR`] (a bucket just made,
    /// or a server just dead, answers nothing while its leader is elected).
    async fn store(self, bytes: Vec<u8>, mark: LogMark, records: u64) -> Option<u64> {
        let (name, at, deadline) = (&self.name, mark.position, tokio::time::Instant::now() + STORE_RETRY_FOR);
        loop {
            match self.put(&bytes).await {
                Ok(()) => {
                    tracing::debug!(stream = name, "snapshot stored at message {at}");
                    return Some(records);
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(stream = name, "no snapshot at message {at} yet: {e}; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::warn!(stream = name, "no snapshot at message {at}: {e}");
                    return None;
                }
            }
        }
    }
}

/// The mark of the message at `position` whose id is `id` and whose payload is `payload`.
pub(crate) fn mark_of(position: u64, id: &str, payload: &[u8]) -> LogMark {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(id.len() as u64).to_le_bytes());
    hasher.update(id.as_bytes());
    hasher.update(payload);
    LogMark { position, hash: *hasher.finalize().as_bytes() }
}

/// The mark of the message the stream holds at `sequence`.
async fn mark_at(stream: &stream::Stream, sequence: u64) -> Result<LogMark, String> {
    let message = stream.get_raw_message(sequence).await.map_err(|e| format!("message {sequence}: {e}"))?;
    let id = crate::stream_journal::message_id(&message.headers);
    Ok(mark_of(sequence, &id, &message.payload))
}

/// The longest a new owner spends reading the latest snapshot before it reads the whole
/// stream instead.
const READ_FOR: Duration = Duration::from_secs(30);

/// The latest snapshot of the partition whose stream is `stream` (`name`), if there is one
/// that this stream can continue from; read with `config`'s partition and settings. A
/// snapshot that cannot be read or does not fit the stream is passed over with a warning.
pub(crate) async fn latest(
    js: &jetstream::Context,
    stream: &stream::Stream,
    name: &str,
    last: u64,
    config: &Config,
) -> Option<(Folded, LogMark)> {
    let passed_over = |why: String| -> Option<(Folded, LogMark)> {
        tracing::warn!(stream = name, "the latest snapshot is passed over: {why}; reading the whole stream");
        None
    };
    let Ok(store) = js.get_object_store(bucket_of(name)).await else { return None };
    let object = match store.get(name).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return None,
        Err(e) => return passed_over(format!("it cannot be read: {e}")),
    };
    // In a task of its own, within a bound: a read whose chunks a newer snapshot replaced
    // meanwhile would wait for them for ever, and the client panics on some errors.
    let mut read = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let mut object = object;
        object.read_to_end(&mut bytes).await.map(|_| bytes)
    });
    let bytes = match tokio::time::timeout(READ_FOR, &mut read).await {
        Ok(Ok(Ok(bytes))) => bytes,
        Ok(Ok(Err(e))) => return passed_over(format!("it cannot be read: {e}")),
        Ok(Err(e)) => return passed_over(format!("reading it failed: {e}")),
        Err(_) => {
            read.abort();
            return passed_over(format!("it was not read within {READ_FOR:?}"));
        }
    };
    let (state, mark) = match Folded::restore(config, &bytes) {
        Ok(restored) => restored,
        Err(e) => return passed_over(e.to_string()),
    };
    if mark.position > last {
        return passed_over(format!("it ends at message {} of a stream of {last}", mark.position));
    }
    match mark_at(stream, mark.position).await {
        Ok(there) if there == mark => Some((state, mark)),
        Ok(_) => passed_over(format!("message {} is not the one it ends at", mark.position)),
        Err(e) => passed_over(e),
    }
}

/// Deletes the snapshots of the partition whose stream is `name`, if any.
pub(crate) async fn delete(js: &jetstream::Context, name: &str) {
    let _ = js.delete_object_store(bucket_of(name)).await;
}

/// What a journal's writer tells its snapshotter.
enum Fed {
    /// A message was acknowledged: its records, and its mark.
    Landed(Vec<Record>, LogMark),
    /// The journal closes cleanly: store a last snapshot of everything, then stop.
    Close,
}

/// How a journal's writer feeds its snapshotter: a task beside it that keeps the partition's
/// state, folded from the acknowledged messages off the writer's thread, and stores a snapshot
/// every so many records and when the journal closes.
pub(crate) struct Feed {
    tx: mpsc::Sender<Fed>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a snapshotter stores, and how often.
pub(crate) struct Plan {
    pub target: Target,
    pub every: u64,
}

/// Messages acknowledged and not yet folded, at most: past that, the writer waits for the
/// snapshotter (a snapshot being encoded), rather than queue without bound.
const FED_MAX: usize = 256;

/// How long a snapshot that cannot be stored is tried again.
const STORE_RETRY_FOR: Duration = Duration::from_secs(30);

/// The longest a closing journal waits for its last snapshot to be stored.
const CLOSE_FOR: Duration = Duration::from_secs(10);

impl Feed {
    /// Starts the snapshotter of a journal whose stream holds `state` up to `mark`, on the
    /// current runtime (the writer's); `covered` of its records are in the latest snapshot
    /// stored (0: none is).
    pub(crate) fn start(state: Folded, covered: u64, mark: LogMark, plan: Plan) -> Feed {
        let (tx, rx) = mpsc::channel(FED_MAX);
        Feed { tx, task: tokio::spawn(snapshotter(state, covered, mark, plan, rx)) }
    }

    /// Hands over an acknowledged message's records (waiting while the snapshotter is
    /// `FED_MAX` messages behind). False when the snapshotter stopped (its state diverged).
    pub(crate) async fn landed(&self, records: Vec<Record>, mark: LogMark) -> bool {
        self.tx.send(Fed::Landed(records, mark)).await.is_ok()
    }

    /// The journal closed cleanly: a last snapshot of everything, stored within [`CLOSE_FOR`].
    pub(crate) async fn close(self) {
        let closed = async {
            if self.tx.send(Fed::Close).await.is_ok() {
                let _ = self.task.await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_FOR, closed).await;
    }
}

/// The snapshotter: folds what it is fed and stores snapshots, one at a time, in the
/// background; stops without a snapshot when the writer stops without closing (failed, halted
/// or deposed: what it was fed is still a true prefix, but nothing more is owed).
///
/// A periodic snapshot is encoded from a copy of the state, in the background, so folding goes
/// on meanwhile (and the writer does not wait for an encoding); a failed store is tried again
/// one interval later, not at once (each try encodes the whole state).
async fn snapshotter(mut state: Folded, covered: u64, mut mark: LogMark, plan: Plan, mut rx: mpsc::Receiver<Fed>) {
    // The bucket is made now, so that no snapshot waits for it.
    let target = plan.target.clone();
    tokio::spawn(async move { target.bucket().await.map_err(|e| tracing::warn!("{e}")) });
    let (mut attempted, mut stored) = (covered, covered);
    let mut storing: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    while let Some(fed) = rx.recv().await {
        let closing = matches!(fed, Fed::Close);
        if let Fed::Landed(records, at) = fed {
            // Folding takes the time of the records, copying and encoding that of the state:
            // off the runtime's thread.
            let folded = tokio::task::spawn_blocking(move || {
                let diverged = records.iter().find_map(|record| state.apply(record).err());
                (state, diverged)
            });
            let Ok((folded, diverged)) = folded.await else { return };
            if let Some(e) = diverged {
                return tracing::error!(
                    stream = plan.target.name,
                    "the journal's copy of the state diverged ({e}); snapshots stop"
                );
            }
            (state, mark) = (folded, at);
        }
        if let Some(done) = storing.take_if(|task| closing || task.is_finished()) {
            if let Ok(Some(records)) = done.await {
                stored = stored.max(records);
            }
        }
        let records = state.records();
        if closing {
            if records > stored {
                if let Ok(bytes) = tokio::task::spawn_blocking(move || state.snapshot(&mark)).await {
                    plan.target.store(bytes, mark, records).await;
                }
            }
            return;
        }
        if storing.is_none() && records - attempted >= plan.every {
            attempted = records;
            let copied = tokio::task::spawn_blocking(move || {
                let copy = state.clone();
                (state, copy)
            });
            let Ok((kept, copy)) = copied.await else { return };
            state = kept;
            let target = plan.target.clone();
            storing = Some(tokio::spawn(async move {
                let bytes = tokio::task::spawn_blocking(move || copy.snapshot(&mark)).await.ok()?;
                target.store(bytes, mark, records).await
            }));
        }
    }
}
