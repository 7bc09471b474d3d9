//! A node of a cluster: it serves whichever of the cluster's partitions it can take, each with
//! its own lease, stream and relay, and knows who serves the others.
//!
//! # Spreading the partitions
//!
//! Every node announces itself in the lease bucket (`n.{name}`, holding its address, renewed
//! like a lease), so each knows which nodes are alive, and its fair share: the partitions
//! divided by the nodes, rounded up. A node tries for a free partition every tenth of the
//! lease's TTL while it holds (or is taking) fewer than its share, and only every whole TTL
//! otherwise, so nodes started together share the partitions out, a dead node's partitions go
//! to the nodes below their share first, and a partition nobody's share covers is still taken.
//! A node serving two partitions more than the node serving fewest (one joined late) hands one
//! over gracefully, at most every other TTL: it stops serving it and gives its lease up, and a
//! node below its share takes it.
//!
//! # The directory
//!
//! A lease's value names its holder: the node's name and the address it answers on. Every
//! node watches the lease bucket; a lease (or a node's announcement) counts while a write of
//! it was seen within its TTL, since an entry that runs out leaves no mark in a watch.
//!
//! # Events
//!
//! Each partition's events are published on core NATS (`hongbao.events.{index}`), and any
//! node may subscribe to all of them ([`Fleet::events`]): a member's socket hears of a grab
//! whichever node it is connected to. Core NATS delivers at most once; a subscriber that falls
//! behind is told it lagged.
//!
//! # The cluster's secret
//!
//! Nodes forward requests to each other. A secret, made by the first node and kept in the
//! bucket `hongbao_cluster`, lets a node recognise a request forwarded by another node.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hongbao::{Config, Engine, Event, EventsError, Partition};
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{open_bucket, LeaseSpec};
use crate::node::{Owner, PartitionSpec};
use crate::relay::{InboxSpec, Relay};
use crate::stream_journal::{client, OpenError, StreamSpec};

/// The bucket of the partitions' leases.
pub const LEASES: &str = "hongbao_leases";

/// The bucket of what the nodes share (the secret).
const SHARED: &str = "hongbao_cluster";

/// A node's announcement in the lease bucket: `n.{name}`.
const NODE_PREFIX: &str = "n.";

/// The subjects' prefix of the partitions' events.
const EVENTS: &str = "hongbao.events";

/// Partition `index`'s stream, its journal snapshotted every `snapshot_every_records`.
pub fn stream(index: u32, replicas: usize, snapshot_every_records: Option<u64>) -> StreamSpec {
    let (stream, subject) = (format!("HONGBAO_P{index}"), format!("hongbao.p{index}"));
    StreamSpec { stream, subject, replicas, snapshot_every_records }
}

/// Partition `index`'s key in the lease bucket.
pub fn lease_key(index: u32) -> String {
    format!("p{index}")
}

/// What a node of a cluster needs.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// The NATS cluster's client URLs, comma-separated.
    pub urls: String,
    /// This node's name: one word.
    pub node: String,
    /// How many partitions the cluster has; every node must be given the same count.
    pub partitions: u32,
    /// How long a lease outlives its last renewal.
    pub lease_ttl: Duration,
    /// Replicas of the streams and buckets (3 on a cluster of three).
    pub replicas: usize,
    /// Snapshot each partition every this many records (`None`: never).
    pub snapshot_every_records: Option<u64>,
}

impl FleetSpec {
    fn partition(&self, index: u32, address: &str) -> PartitionSpec {
        PartitionSpec {
            urls: self.urls.clone(),
            node: format!("{} {address}", self.node),
            stream: stream(index, self.replicas, self.snapshot_every_records),
            lease: LeaseSpec {
                bucket: LEASES.into(),
                key: lease_key(index),
                ttl: self.lease_ttl,
                replicas: self.replicas,
            },
        }
    }
}

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the cluster's buckets: {0}")]
    Buckets(String),
}

/// When this node last handed a partition over, and how many times in a row.
#[derive(Default)]
struct HandedOver {
    at: Option<Instant>,
    times: u32,
}

/// A partition's owner: its address, and when a write of its lease was last seen.
type Seen = Option<(String, Instant)>;

/// Who serves which partition, as the leases say, and which nodes are alive (their addresses).
#[derive(Clone)]
pub struct Directory {
    owners: Arc<RwLock<Vec<Seen>>>,
    nodes: Arc<RwLock<BTreeMap<String, (String, Instant)>>>,
    ttl: Duration,
}

impl Directory {
    fn new(partitions: u32, ttl: Duration) -> Directory {
        Directory { owners: Arc::new(RwLock::new(vec![None; partitions as usize])), nodes: Arc::default(), ttl }
    }

    /// The nodes whose announcement was seen within the lease's TTL.
    pub fn nodes(&self) -> usize {
        self.nodes.read().values().filter(|(_, seen)| seen.elapsed() < self.ttl).count()
    }

    /// How many partitions the live node serving fewest serves, among those other than the one
    /// at `address` (`None` if there is no other).
    fn fewest_served_by_others(&self, address: &str) -> Option<usize> {
        let owners = self.owners.read();
        let served = |node: &str| {
            owners.iter().flatten().filter(|(held, seen)| held == node && seen.elapsed() < self.ttl).count()
        };
        let nodes = self.nodes.read();
        let others =
            nodes.values().filter(|(node, seen)| seen.elapsed() < self.ttl && !node.is_empty() && node != address);
        others.map(|(node, _)| served(node)).min()
    }

    /// The address of the node serving partition `index`, if a write of its lease was seen
    /// within the lease's TTL.
    pub fn owner(&self, index: u32) -> Option<String> {
        let owners = self.owners.read();
        let (address, seen) = owners.get(index as usize)?.as_ref()?;
        (seen.elapsed() < self.ttl).then(|| address.clone())
    }

    /// Forgets partition `index`'s owner (its address did not answer): until its lease is
    /// written again, it has none.
    pub fn forget(&self, index: u32, address: &str) {
        if let Some(slot) = self.owners.write().get_mut(index as usize) {
            if slot.as_ref().is_some_and(|(held, _)| held == address) {
                *slot = None;
            }
        }
    }

    fn saw(&self, entry: &kv::Entry) {
        if let Some(node) = entry.key.strip_prefix(NODE_PREFIX) {
            let mut nodes = self.nodes.write();
            match entry.operation {
                kv::Operation::Put => {
                    let address = String::from_utf8_lossy(&entry.value).into_owned();
                    nodes.insert(node.to_owned(), (address, Instant::now()))
                }
                kv::Operation::Delete | kv::Operation::Purge => nodes.remove(node),
            };
            return;
        }
        let Some(index) = entry.key.strip_prefix('p').and_then(|i| i.parse::<usize>().ok()) else { return };
        let holder = match entry.operation {
            kv::Operation::Put => {
                std::str::from_utf8(&entry.value).ok().and_then(|v| v.rsplit_once(' ')).map(|(_, a)| a.to_owned())
            }
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        if let Some(slot) = self.owners.write().get_mut(index) {
            *slot = holder.map(|address| (address, Instant::now()));
        }
    }
}

/// A node of a cluster, serving the partitions it holds.
pub struct Fleet {
    spec: FleetSpec,
    js: jetstream::Context,
    serving_tx: Arc<watch::Sender<BTreeMap<u32, Engine>>>,
    serving: watch::Receiver<BTreeMap<u32, Engine>>,
    directory: Directory,
    secret: String,
    client: async_nats::Client,
    /// Stops the watch of the leases and the announcement.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Stops the partitions' holds.
    release: watch::Sender<bool>,
    holds: Vec<JoinHandle<()>>,
    /// The partitions this node serves or is taking.
    claimed: Arc<AtomicU32>,
    /// When this node last handed a partition over.
    handed_over: Arc<parking_lot::Mutex<HandedOver>>,
    /// Where the other nodes reach this one, once it holds partitions (announced).
    address: Arc<parking_lot::Mutex<String>>,
    /// The connection the partitions' events are published on.
    events: async_nats::Client,
}

impl Fleet {
    /// Joins the cluster: reads (or makes) the cluster's secret and starts watching the
    /// leases, in a task of the current runtime. It serves nothing until [`Fleet::hold`].
    ///
    /// # Errors
    ///
    /// If the spec is invalid, NATS cannot be reached, or the buckets cannot be opened.
    pub async fn join(spec: FleetSpec) -> Result<Fleet, FleetError> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if spec.node.is_empty() || !spec.node.chars().all(word) {
            return Err(FleetError::Invalid(format!(
                "a node's name is letters, digits, '-' and '_', not {:?}",
                spec.node
            )));
        }
        if Partition::new(0, spec.partitions).is_err() {
            return Err(FleetError::Invalid(format!(
                "{} partitions: 1 to {}",
                spec.partitions,
                hongbao::PARTITIONS_MAX
            )));
        }
        let client = client_of(&spec.urls).await?;
        let js = jetstream::new(client.clone());
        // A cluster just started may still be electing its leaders: tried again for a while.
        let deadline = Instant::now() + crate::stream_journal::OPEN_RETRY_FOR;
        let (secret, leases) = loop {
            let opened = async {
                let secret = shared_secret(&js, spec.replicas, spec.partitions).await?;
                let leases = open_bucket(&js, LEASES, Some(spec.lease_ttl), spec.replicas).await;
                Ok::<_, FleetError>((secret, leases.map_err(FleetError::Buckets)?))
            };
            match opened.await {
                Ok(opened) => break opened,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{e}; again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let directory = Directory::new(spec.partitions, spec.lease_ttl);
        let (stop, stopping) = watch::channel(false);
        let (serving_tx, serving) = watch::channel(BTreeMap::new());
        let serving_tx = Arc::new(serving_tx);
        let address: Arc<parking_lot::Mutex<String>> = Arc::default();
        let key = format!("{NODE_PREFIX}{}", spec.node);
        let announce = announce(leases.clone(), key, Arc::clone(&address), spec.lease_ttl, stopping.clone());
        // Events go out on a connection of their own: a storm's events must not queue ahead of
        // the leases' renewals.
        let events = client_of(&spec.urls).await?;
        let tasks = vec![tokio::spawn(watch_leases(leases, directory.clone(), stopping)), tokio::spawn(announce)];
        Ok(Fleet {
            spec,
            js,
            serving_tx,
            serving,
            directory,
            secret,
            client,
            stop,
            tasks,
            claimed: Arc::default(),
            handed_over: Arc::default(),
            address,
            events,
            release: watch::channel(false).0,
            holds: Vec::new(),
        })
    }

    /// Starts trying for every partition, in tasks of the current runtime: each one taken is
    /// served on `config` with its partition set, and its lease names `address` (where the
    /// other nodes reach this one, `http://HOST:PORT`) for the requests they forward.
    ///
    /// # Errors
    ///
    /// If `address` is not an `http://` URL.
    pub fn hold(&mut self, address: &str, config: &Config) -> Result<(), FleetError> {
        if !address.starts_with("http://") || address.contains(char::is_whitespace) {
            return Err(FleetError::Invalid(format!("a node's address is http://HOST:PORT, not {address:?}")));
        }
        address.clone_into(&mut self.address.lock());
        for index in 0..self.spec.partitions {
            let partition = Partition::new(index, self.spec.partitions).expect("checked at join");
            let hold = Hold {
                js: self.js.clone(),
                client: self.events.clone(),
                address: address.to_owned(),
                spec: self.spec.partition(index, address),
                config: config.clone().with_partition(partition),
                inbox: InboxSpec::new(self.spec.replicas),
                serving: Arc::clone(&self.serving_tx),
                stop: self.release.subscribe(),
                directory: self.directory.clone(),
                claimed: Arc::clone(&self.claimed),
                handed_over: Arc::clone(&self.handed_over),
                partitions: self.spec.partitions,
            };
            self.holds.push(tokio::spawn(hold.run()));
        }
        Ok(())
    }

    /// The partitions this node serves now, by index, and word of every change.
    pub fn serving(&self) -> watch::Receiver<BTreeMap<u32, Engine>> {
        self.serving.clone()
    }

    /// Who serves which partition.
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// The cluster's secret: a request carrying it was forwarded by a node of the cluster.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Every partition's events, whichever node serves it, in the order each partition
    /// published them. A subscriber that falls behind gets `Lagged` (what it missed is lost).
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached.
    pub async fn events(&self) -> Result<ClusterEvents, FleetError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        let servers = self.spec.urls.split(',').map(|url| url.trim().parse::<async_nats::ServerAddr>());
        let servers = servers.collect::<Result<Vec<_>, _>>().map_err(|e| FleetError::Invalid(e.to_string()))?;
        let connect_err =
            |e: &dyn std::fmt::Display| FleetError::Connect { urls: self.spec.urls.clone(), reason: e.to_string() };
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let counted = Arc::clone(&counted);
                async move {
                    if let async_nats::Event::SlowConsumer(_) = event {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| connect_err(&e))?;
        let subscriber = client.subscribe(format!("{EVENTS}.*")).await.map_err(|e| connect_err(&e))?;
        Ok(ClusterEvents { subscriber, dropped, _client: client })
    }

    /// Stops serving: every partition this node serves is stopped (its engine flushed, its
    /// lease given up so another node takes it at once), and none is taken again. The node
    /// still knows who serves what (to forward the requests it drains meanwhile).
    pub async fn release(&mut self) {
        let _ = self.release.send(true);
        for hold in self.holds.drain(..) {
            let _ = hold.await;
        }
        let _ = self.events.flush().await;
    }

    /// Releases every partition ([`Fleet::release`]) and leaves the cluster.
    pub async fn stop(mut self) {
        self.release().await;
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.client.flush().await;
    }
}

/// Every partition's events ([`Fleet::events`]).
pub struct ClusterEvents {
    subscriber: async_nats::Subscriber,
    dropped: Arc<AtomicU64>,
    _client: async_nats::Client,
}

impl Stream for ClusterEvents {
    type Item = Result<Event, EventsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                // How many were dropped is not known: at least one per slow-consumer report.
                return Poll::Ready(Some(Err(EventsError::Lagged { skipped: dropped })));
            }
            match futures::ready!(self.subscriber.poll_next_unpin(cx)) {
                None => return Poll::Ready(None),
                Some(message) => match serde_json::from_slice::<Result<Event, EventsError>>(&message.payload) {
                    Ok(item) => return Poll::Ready(Some(item)),
                    Err(e) => tracing::warn!("an event on {} does not read: {e}", message.subject),
                },
            }
        }
    }
}

/// One partition, as this node tries for it and serves it.
struct Hold {
    js: jetstream::Context,
    client: async_nats::Client,
    spec: PartitionSpec,
    config: Config,
    inbox: InboxSpec,
    serving: Arc<watch::Sender<BTreeMap<u32, Engine>>>,
    stop: watch::Receiver<bool>,
    directory: Directory,
    claimed: Arc<AtomicU32>,
    handed_over: Arc<parking_lot::Mutex<HandedOver>>,
    partitions: u32,
    address: String,
}

impl Hold {
    fn index(&self) -> u32 {
        self.config.partition.index()
    }

    /// Tries for the partition until it is taken, serves it until its lease is lost, and
    /// again; until the node stops.
    async fn run(mut self) {
        let ttl = self.spec.lease.ttl;
        let jitter = std::collections::hash_map::RandomState::new();
        let mut tries = 0u64;
        loop {
            tries += 1;
            let patience = ttl / 10 + ttl / 100 * (jitter.hash_one(tries) % 10) as u32;
            tokio::select! {
                () = tokio::time::sleep(patience) => {}
                _ = self.stop.changed() => return,
            }
            let share = self.share();
            let claimed = self.claimed.fetch_add(1, Ordering::SeqCst);
            if claimed >= share && !tries.is_multiple_of(10) {
                // Above its share: it tries only every tenth time, about once a TTL.
                self.claimed.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let owner = match Owner::try_take(&self.js, &self.spec, self.config.clone()).await {
                Ok(Some(owner)) => owner,
                outcome => {
                    if let Err(e) = outcome {
                        tracing::warn!("partition {}: {e}", self.index());
                    }
                    self.claimed.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
            };
            let stopping = self.serve(owner).await;
            self.claimed.fetch_sub(1, Ordering::SeqCst);
            if stopping {
                return;
            }
        }
    }

    /// This node's share: the partitions divided by the nodes alive (itself at least), rounded
    /// up.
    fn share(&self) -> u32 {
        self.partitions.div_ceil(u32::try_from(self.directory.nodes().max(1)).unwrap_or(u32::MAX))
    }

    /// Whether this partition should be handed over now: the node serves two partitions more
    /// than the live node serving fewest, and has rested since its last hand-over (decided for
    /// one partition at a time). The rest doubles with each hand-over while the spread stays
    /// (a node that announces itself and never manages to serve must not make the others hand
    /// partitions back and forth), from two TTLs up to 64, and starts again once it is even.
    fn hand_over(&self) -> bool {
        let mut last = self.handed_over.lock();
        // What it serves, not what it is trying for too (a try counts in `claimed` a moment).
        let served = self.serving.borrow().len();
        let fewest = self.directory.fewest_served_by_others(&self.address);
        let uneven = fewest.is_some_and(|fewest| served >= fewest + 2);
        if !uneven {
            *last = HandedOver::default();
            return false;
        }
        let ttl = self.spec.lease.ttl;
        let rest = ttl * 2u32.saturating_pow(last.times.min(5) + 1);
        if last.at.is_some_and(|at| at.elapsed() < rest) {
            return false;
        }
        *last = HandedOver { at: Some(Instant::now()), times: last.times + 1 };
        true
    }

    /// Serves a partition taken; true when the node stops, false when the lease was lost or
    /// the partition handed over.
    async fn serve(&mut self, owner: Owner) -> bool {
        let index = self.index();
        let relay = match Relay::start(&self.spec.urls, &self.inbox, owner.engine.clone()).await {
            Ok(relay) => relay,
            Err(e) => {
                tracing::warn!("partition {index}: its relay did not start ({e}); giving it up");
                owner.stop().await;
                // Not at once again: the rebuild it would take reads the stream after the latest snapshot.
                tokio::time::sleep(self.spec.lease.ttl).await;
                return false;
            }
        };
        let events = tokio::spawn(publish_events(self.client.clone(), index, owner.engine.clone()));
        let (snapshot, records) = owner.rebuilt_from;
        tracing::info!(partition = index, rebuilt_in = ?owner.rebuilt_in, ?snapshot, records, "serving");
        self.serving.send_modify(|serving| {
            serving.insert(index, owner.engine.clone());
        });
        let mut lost = owner.lost();
        let ttl = self.spec.lease.ttl;
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + ttl, ttl / 2 + ttl / 20 * (index % 10));
        let stopping = loop {
            tokio::select! {
                _ = lost.wait_for(|lost| *lost) => {
                    tracing::warn!(partition = index, "lease lost: no longer serving");
                    break false;
                }
                _ = self.stop.changed() => break true,
                _ = check.tick() => if self.hand_over() {
                    tracing::info!(partition = index, "this node serves more than its share: handing the partition over");
                    break false;
                },
            }
        };
        self.serving.send_modify(|serving| {
            serving.remove(&index);
        });
        relay.stop().await;
        owner.stop().await;
        events.abort();
        stopping
    }
}

/// A client of the cluster at `urls`.
async fn client_of(urls: &str) -> Result<async_nats::Client, FleetError> {
    client(urls).await.map_err(|e| match e {
        OpenError::Connect { urls, reason } => FleetError::Connect { urls, reason },
        other => FleetError::Buckets(other.to_string()),
    })
}

/// Publishes partition `index`'s events until its engine stops.
async fn publish_events(client: async_nats::Client, index: u32, engine: Engine) {
    let mut events = match engine.subscribe() {
        Ok(events) => events,
        Err(e) => {
            tracing::warn!("partition {index}: its events cannot be published: {e}");
            return;
        }
    };
    let subject = format!("{EVENTS}.{index}");
    while let Some(item) = events.next().await {
        if matches!(item, Err(EventsError::Closed)) {
            return;
        }
        let Ok(payload) = serde_json::to_vec(&item) else { continue };
        if let Err(e) = client.publish(subject.clone(), Bytes::from(payload)).await {
            tracing::warn!("partition {index}: an event was not published: {e}");
        }
    }
}

/// Keeps `directory` up to date with the lease bucket's writes, watching again when the watch
/// breaks.
async fn watch_leases(leases: kv::Store, directory: Directory, mut stop: watch::Receiver<bool>) {
    loop {
        match leases.watch_with_history(">").await {
            Ok(mut watch) => loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(entry)) => directory.saw(&entry),
                        Some(Err(e)) => {
                            tracing::warn!("watching the leases: {e}; again");
                            break;
                        }
                        None => break,
                    },
                    _ = stop.changed() => return,
                }
            },
            Err(e) => tracing::warn!("watching the leases: {e}; again"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Announces this node (`key`, with its `address` once it has one) in the lease bucket every
/// third of the TTL, until it stops; then withdraws it.
async fn announce(
    leases: kv::Store,
    key: String,
    address: Arc<parking_lot::Mutex<String>>,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let value = Bytes::from(address.lock().clone());
        if let Err(e) = leases.put(&key, value).await {
            tracing::warn!("announcing {key}: {e}");
        }
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            _ = stop.changed() => {
                let _ = leases.delete(&key).await;
                return;
            }
        }
    }
}

/// The cluster's secret: made by the first node to look for it; and a check that this node
/// counts the partitions as the first one did (placement depends on the count).
async fn shared_secret(js: &jetstream::Context, replicas: usize, partitions: u32) -> Result<String, FleetError> {
    let store = open_bucket(js, SHARED, None, replicas).await.map_err(FleetError::Buckets)?;
    let count = Bytes::from(partitions.to_string());
    match store.create("partitions", count.clone()).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let held = store.get("partitions").await.map_err(|e| FleetError::Buckets(e.to_string()))?;
            if held.as_ref() != Some(&count) {
                let held = held.map(|h| String::from_utf8_lossy(&h).into_owned()).unwrap_or_default();
                return Err(FleetError::Invalid(format!(
                    "this cluster has {held} partitions, not {partitions}: every node must say the same"
                )));
            }
        }
        Err(e) => return Err(FleetError::Buckets(e.to_string())),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| FleetError::Buckets(format!("no randomness for a secret: {e}")))?;
    let fresh: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match store.create("secret", Bytes::from(fresh.clone())).await {
        Ok(_) => Ok(fresh),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            match store.get("secret").await.map_err(|e| FleetError::Buckets(e.to_string()))? {
                Some(secret) => String::from_utf8(secret.to_vec()).map_err(|e| FleetError::Buckets(e.to_string())),
                None => Err(FleetError::Buckets("the cluster's secret vanished".into())),
            }
        }
        Err(e) => Err(FleetError::Buckets(e.to_string())),
    }
}
