//! Ownership of a partition: a lease in a JetStream key-value bucket.
//!
//! The lease is the bucket's entry for the partition, holding its owner's name. Taking it is
//! `create`, which only succeeds when nobody holds it; keeping it is `update` with the revision
//! the owner last wrote, every third of the TTL. The bucket's `max_age` is the TTL, so the entry
//! of an owner that stopped renewing (killed, cut off, paused) expires and another node's
//! `create` succeeds. An owner whose `update` finds another revision has lost the lease and
//! must stop serving at once.
//!
//! A lease alone cannot stop an owner that does not know yet it lost it (paused past the TTL):
//! the stream's expected last sequence does ([`crate::stream_journal`]). The lease decides who
//! should write; the stream makes sure only one can.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

/// Where a partition's lease lives.
#[derive(Clone, Debug)]
pub struct LeaseSpec {
    /// The key-value bucket of the cluster's leases (created if missing).
    pub bucket: String,
    /// The partition's key in it.
    pub key: String,
    /// How long a lease outlives its last renewal.
    pub ttl: Duration,
    /// Replicas of the bucket.
    pub replicas: usize,
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds it now.
    #[error("the lease {key} is held by another node")]
    Lost { key: String },
    /// NATS did not answer as expected; whether the lease is still held is not known.
    #[error("lease {key}: {reason}")]
    Nats { key: String, reason: String },
}

/// A lease held by this node.
pub struct Lease {
    store: kv::Store,
    spec: LeaseSpec,
    node: String,
    revision: u64,
}

impl Lease {
    /// Takes the lease for `node` if nobody holds it; `None` if somebody does.
    ///
    /// # Errors
    ///
    /// If the bucket cannot be reached or made.
    pub async fn try_acquire(
        js: &jetstream::Context,
        spec: &LeaseSpec,
        node: &str,
    ) -> Result<Option<Lease>, LeaseError> {
        let err = |reason: String| LeaseError::Nats { key: spec.key.clone(), reason };
        let store = open_bucket(js, &spec.bucket, Some(spec.ttl), spec.replicas).await.map_err(err)?;
        match store.create(&spec.key, Bytes::from(node.to_string())).await {
            Ok(revision) => Ok(Some(Lease { store, spec: spec.clone(), node: node.to_string(), revision })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Renews the lease for another TTL.
    ///
    /// # Errors
    ///
    /// `Lost` if another node took it (this node must stop serving the partition at once);
    /// `Nats` if the renewal got no clear answer (it may still be held: try again before the
    /// TTL runs out).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        match self.store.update(&self.spec.key, Bytes::from(self.node.clone()), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // A renewal of ours may have landed without its answer: the entry is still this
                // node's then, at a later revision.
                match self.store.entry(&self.spec.key).await {
                    Ok(Some(entry)) if entry.value == self.node.as_bytes() && entry.revision > self.revision => {
                        self.revision = entry.revision;
                        Ok(())
                    }
                    _ => Err(LeaseError::Lost { key: self.spec.key.clone() }),
                }
            }
            Err(e) => Err(LeaseError::Nats { key: self.spec.key.clone(), reason: e.to_string() }),
        }
    }

    /// How long the lease outlives its last renewal.
    pub fn ttl(&self) -> Duration {
        self.spec.ttl
    }

    /// How often to renew: a third of the TTL, so two renewals may fail before it runs out.
    pub fn renew_every(&self) -> Duration {
        self.spec.ttl / 3
    }

    /// Gives the lease up (a graceful stop), so another node need not wait for the TTL.
    pub async fn release(self) {
        let _ = self.store.delete_expect_revision(&self.spec.key, Some(self.revision)).await;
    }

    /// The partition's key.
    pub fn key(&self) -> &str {
        &self.spec.key
    }
}

/// Opens the key-value bucket `name` (making it if missing), whose entries expire `max_age`
/// after they were last written (never when `None`), replicated `replicas` times.
///
/// The bucket's stream is made as the client's `create_key_value` makes it but without its
/// account query, which Debian's nats-server 2.9 answers in a form the client no longer reads.
/// The duplicate window may not exceed the entries' age.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Option<Duration>,
    replicas: usize,
) -> Result<kv::Store, String> {
    let mut bucket = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Some(age) = max_age {
        (bucket.max_age, bucket.duplicate_window) = (age, age);
    }
    js.get_or_create_stream(bucket).await.map_err(|e| format!("creating the bucket {name}: {e}"))?;
    js.get_key_value(name).await.map_err(|e| format!("opening the bucket {name}: {e}"))
}
