//! A node's hold on a partition: wait for the partition's lease, rebuild the partition from its
//! stream, serve it with an engine, and keep renewing the lease; stop serving the moment the
//! lease may have run out.
//!
//! The lease is renewed from the moment it is taken, rebuilding included. The node trusts it
//! until a local deadline: the moment its last successful renewal was *sent*, plus the TTL,
//! less a sixth of it for clocks and delays. A renewal that cannot answer before that deadline
//! counts as lost. When the lease is lost, the journal is halted at once (nothing more is
//! published) and the engine stops; when the journal fails (deposed, or NATS unreachable for
//! too long), the lease is given up so another node can take over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use hongbao::{Config, Engine, Journal};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::lease::{Lease, LeaseError, LeaseSpec};
use crate::stream_journal::{OpenError, StreamJournal, StreamSpec, OPEN_RETRY_FOR};

/// What a node needs to own a partition.
#[derive(Clone, Debug)]
pub struct PartitionSpec {
    /// The NATS cluster's client URLs, comma-separated.
    pub urls: String,
    /// This node's name, written in the lease.
    pub node: String,
    pub stream: StreamSpec,
    pub lease: LeaseSpec,
}

/// Why a node could not take a partition.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("cannot reach NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Journal(#[from] OpenError),
    #[error("the partition's engine did not start: {0}")]
    Engine(String),
    #[error("the lease ran out while the partition was being rebuilt")]
    LostWhileRebuilding,
}

/// A partition this node serves.
pub struct Owner {
    /// The partition's engine, on its stream's journal.
    pub engine: Engine,
    /// How long taking it took once the lease was free: rebuilding from the stream included.
    pub rebuilt_in: Duration,
    /// The stream sequence of the snapshot it was rebuilt from (`None`: from the first record),
    /// and the records read after it.
    pub rebuilt_from: (Option<u64>, u64),
    journal: Arc<StreamJournal>,
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    keeper: tokio::task::JoinHandle<Option<Lease>>,
}

/// The journal the keeper halts when the lease goes, once there is one.
type JournalSlot = Arc<Mutex<Option<Arc<StreamJournal>>>>;

impl Owner {
    /// Waits until this node holds the partition's lease (trying every tenth of its TTL),
    /// rebuilds the partition from its stream and starts its engine on `config`, renewing the
    /// lease all along in a task of the current runtime.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached, the lease's bucket or the stream cannot be read, the engine
    /// refuses what the stream holds, or the lease ran out meanwhile. The lease is given up
    /// then.
    pub async fn take(spec: &PartitionSpec, config: Config) -> Result<Owner, TakeError> {
        let js = jetstream::new(crate::stream_journal::client(&spec.urls).await.map_err(|e| match e {
            OpenError::Connect { urls, reason } => TakeError::Connect { urls, reason },
            other => TakeError::Journal(other),
        })?);
        let (lease, valid_until) = acquire(&js, spec).await?;
        Owner::serve(spec, config, lease, valid_until).await
    }

    /// Takes the partition if its lease is free now (through `js`, a client of the cluster),
    /// as [`Owner::take`] does once it has the lease; `None` if another node holds it.
    ///
    /// # Errors
    ///
    /// As [`Owner::take`].
    pub async fn try_take(
        js: &jetstream::Context,
        spec: &PartitionSpec,
        config: Config,
    ) -> Result<Option<Owner>, TakeError> {
        let sent = Instant::now();
        match Lease::try_acquire(js, &spec.lease, &spec.node).await? {
            Some(lease) => Owner::serve(spec, config, lease, trusted_until(sent, spec.lease.ttl)).await.map(Some),
            None => Ok(None),
        }
    }

    /// Rebuilds the partition whose `lease` this node holds and serves it, renewing the lease
    /// all along.
    async fn serve(
        spec: &PartitionSpec,
        config: Config,
        lease: Lease,
        valid_until: Instant,
    ) -> Result<Owner, TakeError> {
        let slot: JournalSlot = Arc::default();
        let (lost_tx, lost) = watch::channel(false);
        let (stop, stopping) = watch::channel(false);
        let keeper = tokio::spawn(keep(lease, valid_until, Arc::clone(&slot), lost_tx, stopping));
        let started = Instant::now();
        match rebuild(spec, config, &slot).await {
            Ok((engine, rebuilt_from, journal)) if !*lost.borrow() => {
                // The engine stops serving the moment the lease is lost.
                let (watched, mut lost_watch) = (engine.clone(), lost.clone());
                tokio::spawn(async move {
                    if lost_watch.wait_for(|lost| *lost).await.is_ok() {
                        watched.shutdown().await;
                    }
                });
                Ok(Owner { engine, rebuilt_in: started.elapsed(), rebuilt_from, journal, lost, stop, keeper })
            }
            outcome => {
                let error = match outcome {
                    Ok((engine, ..)) => {
                        engine.shutdown().await;
                        TakeError::LostWhileRebuilding
                    }
                    Err(e) => e,
                };
                let _ = stop.send(true);
                if let Ok(Some(lease)) = keeper.await {
                    lease.release().await;
                }
                Err(error)
            }
        }
    }

    /// Turns true when the lease is lost: the journal is halted and the engine stopping by then.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops serving gracefully: the engine shuts down and its journal closes (flushed, and
    /// its last snapshot stored), then the lease is given up so another node can take the
    /// partition at once, reading nothing but that snapshot.
    pub async fn stop(self) {
        self.engine.shutdown().await;
        let journal = Arc::clone(&self.journal);
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
        let _ = self.stop.send(true);
        if let Ok(Some(lease)) = self.keeper.await {
            lease.release().await;
        }
    }

    /// Stops renewing without a word, as a killed node would: the lease runs out on its own.
    /// (For tests of failover within one process.)
    pub fn abandon(self) {
        self.keeper.abort();
        // The engine is left running, unreachable: a killed process would not flush either.
        std::mem::forget(self.engine);
    }
}

/// Waits for the lease; NATS errors are tried again for a while (the cluster may be electing
/// its leaders). Returns it with the local deadline it is trusted until.
async fn acquire(js: &jetstream::Context, spec: &PartitionSpec) -> Result<(Lease, Instant), TakeError> {
    let mut failing_since: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        match Lease::try_acquire(js, &spec.lease, &spec.node).await {
            Ok(Some(lease)) => return Ok((lease, trusted_until(sent, spec.lease.ttl))),
            Ok(None) => failing_since = None,
            Err(e) if failing_since.get_or_insert_with(Instant::now).elapsed() < OPEN_RETRY_FOR => {
                tracing::debug!("{e}; again");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(spec.lease.ttl / 10).await;
    }
}

/// Opens the partition's journal (reading its latest snapshot and the stream after it, and
/// fencing it) and starts the engine on it; the journal goes into `slot` as soon as it is
/// open.
async fn rebuild(
    spec: &PartitionSpec,
    config: Config,
    slot: &JournalSlot,
) -> Result<(Engine, (Option<u64>, u64), Arc<StreamJournal>), TakeError> {
    let (stream, urls, opening) = (spec.stream.clone(), spec.urls.clone(), config.clone());
    // Opening reads the latest snapshot and the stream after it, and blocks: off the
    // runtime's threads.
    let (journal, recovered) = tokio::task::spawn_blocking(move || StreamJournal::open(&urls, &stream, &opening))
        .await
        .map_err(|e| TakeError::Engine(e.to_string()))??;
    *slot.lock() = Some(Arc::clone(&journal));
    let from = (recovered.snapshot, recovered.records_read);
    let started = Engine::start(config.with_journal_state(journal.clone(), recovered.state));
    started.map(|engine| (engine, from, journal.clone())).map_err(|e| {
        journal.close();
        TakeError::Engine(e.to_string())
    })
}

/// How long a lease whose renewal was sent at `sent` is trusted here.
fn trusted_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 6
}

/// Renews the lease every third of its TTL. When it is lost, or cannot be renewed before the
/// local deadline, the journal is halted and `lost` turns true; when the journal has failed,
/// the lease is given up.
async fn keep(
    mut lease: Lease,
    mut valid_until: Instant,
    journal: JournalSlot,
    lost: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<Lease> {
    let ttl = lease.ttl();
    loop {
        tokio::select! {
            () = tokio::time::sleep(lease.renew_every()) => {}
            _ = stop.changed() => return Some(lease),
        }
        let failed = journal.lock().as_ref().and_then(|j| j.failure());
        if let Some(failure) = failed {
            tracing::warn!("the journal failed ({failure:?}): this node gives the lease {} up", lease.key());
            let _ = lost.send(true);
            lease.release().await;
            return None;
        }
        let sent = Instant::now();
        let left = valid_until.saturating_duration_since(sent);
        match tokio::time::timeout(left, lease.renew()).await {
            Ok(Ok(())) => valid_until = trusted_until(sent, ttl),
            Ok(Err(e @ LeaseError::Lost { .. })) => return give_up(&journal, &lost, &e.to_string()),
            Ok(Err(e)) if Instant::now() < valid_until => tracing::warn!("renewing: {e}; again"),
            Ok(Err(e)) => return give_up(&journal, &lost, &e.to_string()),
            Err(_) => return give_up(&journal, &lost, "no renewal answered before the lease could run out"),
        }
    }
}

/// The lease is gone: the journal publishes nothing more, and the engine is told to stop.
fn give_up(journal: &JournalSlot, lost: &watch::Sender<bool>, why: &str) -> Option<Lease> {
    tracing::warn!("{why}: this node stops serving the partition");
    if let Some(journal) = journal.lock().as_ref() {
        journal.halt();
    }
    let _ = lost.send(true);
    None
}
