//! Remittances between partitions over NATS: a share won, or a transfer accepted, in one
//! partition by a member whose wallet is in another travels through an inbox stream,
//! replicated like the journals.
//!
//! # The way out
//!
//! The owner of partition P publishes what its engine's outbox holds for partition Q
//! ([`hongbao::Engine::outbox`]) to the subject `{prefix}.Q.from.P` of the inbox stream, in
//! order, each message once the one before is acknowledged, with a message id naming P, Q and
//! the numbers it carries (JetStream drops a copy a retry landed twice). Once a message is
//! acknowledged, the remittances in it leave P's outbox. A new owner of P learns where to go
//! on from the last message on that subject: the numbers up to its last one are in the inbox.
//!
//! # The way in
//!
//! The owner of Q reads `{prefix}.Q.from.*` in stream order and hands each message's
//! remittances to its engine ([`hongbao::Engine::receive`]), which applies each number once
//! (a repeat changes nothing; so a message published twice, by a retry or by an old and a new
//! owner of P, credits once). Messages applied are purged from the inbox, all but the last one
//! of each sender, which is where that sender goes on from.
//!
//! Nothing here decides anything about money: the numbers are the sending journal's, the
//! exactly-once rule is the receiving engine's.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, message::PublishMessage, stream};
use futures::StreamExt;
use hongbao::{Engine, Record, Remittance, RemittanceError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stream_journal::{client, pack_records, unpack, OpenError, OPEN_RETRY_FOR};

/// The most remittances one message carries (a credit is about 37 bytes; a packet more).
const BATCH_MAX: usize = 2_000;

/// How long the way out rests when no outbox has anything: the delay a share won elsewhere
/// may wait before it leaves.
const IDLE: Duration = Duration::from_millis(2);

/// Messages applied between two purges of the inbox.
const PURGE_EVERY: u64 = 256;

/// Where remittances travel.
#[derive(Clone, Debug)]
pub struct InboxSpec {
    /// The JetStream stream (created if missing).
    pub stream: String,
    /// Its subjects' prefix: a message to Q from P goes to `{prefix}.Q.from.P`.
    pub prefix: String,
    /// Replicas of the stream: 3 on a cluster of three.
    pub replicas: usize,
}

impl InboxSpec {
    /// The inbox of a cluster's partitions, replicated `replicas` times.
    pub fn new(replicas: usize) -> InboxSpec {
        InboxSpec { stream: "HONGBAO_INBOX".into(), prefix: "hongbao.in".into(), replicas }
    }

    fn subject(&self, to: u32, from: u32) -> String {
        format!("{}.{to}.from.{from}", self.prefix)
    }
}

/// The relay of one partition: its way out to every other partition, and its way in.
pub struct Relay {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying `engine`'s remittances (the engine serves one partition of a cluster),
    /// in tasks of the current runtime. Where the way out goes on from, per receiver, is read
    /// from the inbox first.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached or the inbox stream cannot be created or read within
    /// [`OPEN_RETRY_FOR`].
    pub async fn start(urls: &str, spec: &InboxSpec, engine: Engine) -> Result<Relay, OpenError> {
        let js = jetstream::new(client(urls).await?);
        let stream = open_inbox(&js, spec).await?;
        let partition = engine.partition();
        let me = partition.index();
        for to in (0..partition.count()).filter(|&to| to != me) {
            if let Some(last) = last_published(&stream, &spec.subject(to, me), spec).await? {
                engine.acknowledge(to, last);
            }
        }
        let (stop, stopping) = watch::channel(false);
        let way_out = tokio::spawn(way_out(js, spec.clone(), engine.clone(), stopping.clone()));
        let way_in = tokio::spawn(way_in(stream, spec.clone(), engine, stopping));
        Ok(Relay { stop, tasks: vec![way_out, way_in] })
    }

    /// Stops at once without a word, as a killed node would (for tests of failover within
    /// one process): what was in flight is left for the next owner.
    pub fn abandon(self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }

    /// Stops relaying: what is in flight finishes or is left for the next owner.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Creates the inbox stream if it is missing, trying again while the cluster elects leaders.
async fn open_inbox(js: &jetstream::Context, spec: &InboxSpec) -> Result<stream::Stream, OpenError> {
    let config = stream::Config {
        name: spec.stream.clone(),
        subjects: vec![format!("{}.>", spec.prefix)],
        num_replicas: spec.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let deadline = Instant::now() + OPEN_RETRY_FOR;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(OpenError::Stream { stream: spec.stream.clone(), reason: e.to_string() })
            }
            Err(e) => {
                tracing::debug!("inbox {}: {e}; again", spec.stream);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The last number published on `subject`, if anything was.
async fn last_published(stream: &stream::Stream, subject: &str, spec: &InboxSpec) -> Result<Option<u64>, OpenError> {
    let deadline = Instant::now() + OPEN_RETRY_FOR;
    loop {
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => {
                let remittances = remittances(&message.payload).map_err(|reason| OpenError::Corrupt {
                    stream: spec.stream.clone(),
                    sequence: message.sequence,
                    reason,
                })?;
                return Ok(remittances.last().map(|r| r.seq));
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) if Instant::now() >= deadline => {
                return Err(OpenError::Stream { stream: spec.stream.clone(), reason: e.to_string() })
            }
            Err(e) => {
                tracing::debug!("reading {subject}: {e}; again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The remittances a message carries.
fn remittances(payload: &[u8]) -> Result<Vec<Remittance>, String> {
    unpack(payload)?
        .into_iter()
        .map(|record| match record {
            Record::Received(r) => Ok(r),
            other => Err(format!("not a remittance: {other:?}")),
        })
        .collect()
}

/// Publishes each outbox's remittances, in order, until stopped.
async fn way_out(js: jetstream::Context, spec: InboxSpec, engine: Engine, mut stop: watch::Receiver<bool>) {
    let partition = engine.partition();
    let me = partition.index();
    let peers: Vec<u32> = (0..partition.count()).filter(|&to| to != me).collect();
    while !*stop.borrow() {
        let (mut carried, mut failed) = (false, false);
        for &to in &peers {
            let batch = engine.outbox(to, BATCH_MAX);
            let Some(first) = batch.first().map(|r| r.seq) else { continue };
            let (payload, count) = pack_records(batch.into_iter().map(Record::Received));
            // Numbers follow each other in an outbox: the message ends at the count-th.
            let last = first + count as u64 - 1;
            let id = format!("{me}-{to}-{first}-{last}");
            let message = PublishMessage::build().payload(payload).message_id(id);
            // Not acknowledged: the batch stays in the outbox and goes again next round, after
            // the other receivers had their turn (a copy that landed twice is dropped by its
            // id, and one that slipped past the window is a repeat the receiver skips).
            let ack = match js.send_publish(spec.subject(to, me), message).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match ack {
                Ok(()) => {
                    engine.acknowledge(to, last);
                    carried = true;
                }
                Err(e) => {
                    tracing::warn!("remittances {me}→{to} up to {last}: {e}; again");
                    failed = true;
                }
            }
        }
        let rest = if failed { Duration::from_millis(100) } else { IDLE };
        if (failed || !carried) && sleep_or_stop(rest, &mut stop).await {
            return;
        }
    }
}

/// Sleeps for `pause`; true if told to stop meanwhile.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(pause) => false,
        _ = stop.wait_for(|stop| *stop) => true,
    };
    stopped || *stop.borrow()
}

/// Reads this partition's inbox into its engine, in stream order, until stopped.
async fn way_in(stream: stream::Stream, spec: InboxSpec, engine: Engine, mut stop: watch::Receiver<bool>) {
    let me = engine.partition().index();
    let filter = format!("{}.{me}.from.*", spec.prefix);
    let mut applied = 0u64;
    'connect: loop {
        let consumer = OrderedConfig { filter_subject: filter.clone(), ..Default::default() };
        let opened = match stream.create_consumer(consumer).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match opened {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!("reading {filter}: {e}; again");
                if sleep_or_stop(Duration::from_millis(250), &mut stop).await {
                    return;
                }
                continue 'connect;
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!("reading {filter}: {e}");
                    continue;
                }
                None => continue 'connect,
            };
            // Without its sequence a message is applied but never a purge's bound (a purge below
            // 0 would empty the subject, later messages included).
            let sequence = message.info().map(|i| i.stream_sequence).ok();
            let batch = match remittances(&message.payload) {
                Ok(batch) => batch,
                Err(reason) => {
                    // Nothing else writes these subjects: a message that is not a batch of
                    // remittances is a fault to look at, not money to guess.
                    tracing::error!("inbox {} message {sequence:?}: {reason}; skipped", spec.stream);
                    continue;
                }
            };
            loop {
                match engine.receive(&batch).await {
                    Ok(()) => break,
                    Err(RemittanceError::ShuttingDown | RemittanceError::Unavailable) => return,
                    // Stuck rather than wrong: a gap would mean a message is missing, and
                    // skipping it would lose money; it is logged until someone looks.
                    Err(e) => {
                        tracing::error!("inbox {} message {sequence:?}: {e}; again", spec.stream);
                        if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
                            return;
                        }
                    }
                }
            }
            applied += 1;
            if let Some(sequence) = sequence.filter(|_| applied.is_multiple_of(PURGE_EVERY)) {
                // Everything before this message on its subject is applied; it stays, as the
                // place its sender goes on from.
                let subject = message.subject.to_string();
                if let Err(e) = stream.purge().filter(subject.as_str()).sequence(sequence).await {
                    tracing::warn!("purging {subject} below {sequence}: {e}");
                }
            }
        }
    }
}
