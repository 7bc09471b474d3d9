//! hongbao past one machine, on a NATS JetStream cluster.
//!
//! # Layout
//!
//! - [`stream_journal`]: a partition's journal as a JetStream stream, replicated, with one
//!   writer enforced by the stream (opening fences it; a deposed owner's appends fail), group
//!   commit as batched publishes, and retries made safe by deduplication.
//! - [`lease`]: a partition's ownership as a lease in a JetStream key-value bucket
//!   (revision-checked renewals, a TTL).
//! - [`node`]: a node's hold on a partition: wait for the lease, rebuild from the stream, serve,
//!   renew, and stop serving the moment the lease is lost.
//! - [`fleet`]: a node of a cluster: it takes whichever partitions it can (each with its lease,
//!   stream and relay), knows who serves the others, and carries every partition's events.
//! - [`relay`]: remittances between partitions through an inbox stream: each partition's
//!   outbox published in order, each inbox read into its engine, applied once there.
//! - [`snapshots`]: each partition's latest snapshot in JetStream's object store, so a new
//!   owner reads it and the records after it instead of its whole stream.
//! - [`nats`]: a JetStream cluster of `nats-server` processes on loopback, for the tests and
//!   the demo.
//!
//! The library (`hongbao`) knows nothing of NATS: it takes any [`hongbao::Journal`], and what
//! the journal already holds as a [`hongbao::Folded`] state to start from.

pub mod fleet;
pub mod lease;
pub mod nats;
pub mod node;
pub mod relay;
pub mod snapshots;
pub mod stream_journal;

pub use fleet::{ClusterEvents, Directory, Fleet, FleetError, FleetSpec};
pub use lease::{Lease, LeaseError, LeaseSpec};
pub use nats::{ClusterError, NatsCluster};
pub use node::{Owner, PartitionSpec, TakeError};
pub use relay::{InboxSpec, Relay};
pub use stream_journal::{OpenError, Recovered, StreamJournal, StreamSpec, RETRY_FOR};
