//! A node's hold on a partition: wait for the partition's lease, rebuild the partition from its
//! stream, serve it with an engine, and keep renewing the lease; stop serving the moment the
//! lease is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use hongbao::{Config, Engine};
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
}

/// A partition this node serves.
pub struct Owner {
    /// The partition's engine, on its stream's journal.
    pub engine: Engine,
    /// How long taking it took once the lease was free: rebuilding from the stream included.
    pub rebuilt_in: Duration,
    lost: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    keeper: tokio::task::JoinHandle<Option<Lease>>,
}

impl Owner {
    /// Waits until this node holds the partition's lease (trying every tenth of its TTL),
    /// rebuilds the partition from its stream and starts its engine on `config`, then keeps
    /// renewing the lease in a task of the current runtime.
    ///
    /// # Errors
    ///
    /// If NATS cannot be reached, the lease's bucket or the stream cannot be read, or the
    /// engine refuses what the stream holds.
    pub async fn take(spec: &PartitionSpec, config: Config) -> Result<Owner, TakeError> {
        let js = jetstream::new(crate::stream_journal::client(&spec.urls).await.map_err(|e| match e {
            OpenError::Connect { urls, reason } => TakeError::Connect { urls, reason },
            other => TakeError::Journal(other),
        })?);
        // NATS errors are tried again for a while: the cluster may be electing its leaders.
        let mut failing_since: Option<Instant> = None;
        let lease = loop {
            match Lease::try_acquire(&js, &spec.lease, &spec.node).await {
                Ok(Some(lease)) => break lease,
                Ok(None) => failing_since = None,
                Err(e) if failing_since.get_or_insert_with(Instant::now).elapsed() < OPEN_RETRY_FOR => {
                    tracing::debug!("{e}; again");
                }
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(spec.lease.ttl / 10).await;
        };
        let started = Instant::now();
        let stream = spec.stream.clone();
        let urls = spec.urls.clone();
        // Opening reads the whole stream and blocks: off the runtime's threads.
        let (journal, history) = tokio::task::spawn_blocking(move || StreamJournal::open(&urls, &stream))
            .await
            .map_err(|e| TakeError::Engine(e.to_string()))??;
        let engine = Engine::start(config.with_journal_history(journal, Arc::new(history)))
            .map_err(|e| TakeError::Engine(e.to_string()))?;
        let rebuilt_in = started.elapsed();
        let (lost_tx, lost) = watch::channel(false);
        let (stop, stopping) = watch::channel(false);
        let keeper = tokio::spawn(keep(lease, engine.clone(), lost_tx, stopping));
        Ok(Owner { engine, rebuilt_in, lost, stop, keeper })
    }

    /// Turns true when the lease is lost: the engine has stopped serving by then.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops serving gracefully: the engine shuts down (its journal flushed), then the lease
    /// is given up so another node can take the partition at once.
    pub async fn stop(self) {
        self.engine.shutdown().await;
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

/// Renews the lease every third of its TTL; when it is lost (or cannot be renewed before it
/// runs out), the engine stops serving at once and `lost` turns true.
async fn keep(
    mut lease: Lease,
    engine: Engine,
    lost: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Option<Lease> {
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(lease.renew_every()) => {}
            _ = stop.changed() => return Some(lease),
        }
        match lease.renew().await {
            Ok(()) => renewed = Instant::now(),
            Err(LeaseError::Nats { reason, .. }) if renewed.elapsed() < lease.renew_every() * 2 => {
                tracing::warn!("renewing the lease {}: {reason}; again", lease.key());
            }
            Err(e) => {
                tracing::warn!("{e}: this node stops serving the partition");
                engine.shutdown().await;
                let _ = lost.send(true);
                return None;
            }
        }
    }
}
