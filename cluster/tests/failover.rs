//! Ownership of a partition moving between nodes: the owner holds a lease; a standby waits;
//! when the owner stops renewing (as a killed node does) its lease runs out, the standby takes
//! it, rebuilds the partition from the stream and serves every acknowledged grab, send and
//! deposit; when an owner finds its lease taken it stops serving. Skipped, saying so, without
//! `nats-server`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hongbao::{Amount, Config, Engine, OpId, UserId};
use hongbao_cluster::{LeaseSpec, NatsCluster, Owner, PartitionSpec, StreamSpec};

/// The lease's TTL in these tests: short, so a failover takes a few seconds.
const TTL: Duration = Duration::from_secs(2);

fn spec(cluster: &NatsCluster, partition: &str, node: &str) -> PartitionSpec {
    PartitionSpec {
        urls: cluster.urls(),
        node: node.into(),
        stream: StreamSpec {
            stream: format!("P_{partition}"),
            subject: format!("hb.p.{partition}"),
            replicas: 3,
            snapshot_every_records: Some(25),
        },
        lease: LeaseSpec { bucket: "leases".into(), key: partition.into(), ttl: TTL, replicas: 3 },
    }
}

fn config() -> Config {
    Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_seed(4)
}

/// A packet of 20 shares in a group of 40, grabbed by everyone at once; the wins.
async fn round(engine: &Engine, packet: u64) -> HashMap<UserId, u64> {
    open_packet(engine, packet, 40, 2_000, 20).await;
    storm(engine, packet, 40).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_dead_owners_partition_with_everything_acknowledged() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let owner = Owner::take(&spec(&cluster, "p0", "a"), config()).await.unwrap();
    let mut won: HashMap<UserId, u64> = HashMap::new();
    for packet in 1..=3 {
        for (user, fen) in round(&owner.engine, packet).await {
            *won.entry(user).or_default() += fen;
        }
    }
    // The owner snapshots every 25 records: one is stored by now, or soon.
    snapshot_stored(&cluster.urls(), "P_p0").await;
    // The standby waits for the lease while the owner renews it.
    let standby_spec = spec(&cluster, "p0", "b");
    let standby = tokio::spawn(async move { Owner::take(&standby_spec, config()).await });
    tokio::time::sleep(TTL * 2).await;
    assert!(!standby.is_finished(), "the standby took a lease that was being renewed");

    // The owner dies without a word.
    let died = Instant::now();
    owner.abandon();
    let next = standby.await.unwrap().unwrap();
    let failover = died.elapsed();
    assert!(failover < TTL * 5, "took {failover:?}");
    let (snapshot, read) = next.rebuilt_from;
    eprintln!(
        "failover in {failover:?} (lease TTL {TTL:?}; rebuilt in {:?}, {read} records after {snapshot:?})",
        next.rebuilt_in
    );
    // The owner snapshotted every 25 records while it served (3 rounds of 23 records): the
    // standby read only the records after the latest snapshot.
    assert!(snapshot.is_some() && read < 3 * 23, "rebuilt from {snapshot:?} and {read} records");

    for (user, fen) in &won {
        assert_eq!(next.engine.balance(*user).await.unwrap().as_fen(), *fen, "{user}");
    }
    assert!(next.engine.audit().await.unwrap().is_balanced());
    let more = round(&next.engine, 4).await;
    assert_eq!(more.len(), 20);
    next.stop().await;
}

/// An owner whose lease another node took (its entry ran out during a long pause) cannot append
/// any more, since the new owner fenced the stream when it took over, and stops serving once
/// its renewal finds the lease gone; the new owner keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_lost_its_lease_stops_serving() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let first = Owner::take(&spec(&cluster, "p1", "a"), config()).await.unwrap();
    first.engine.deposit(OpId(1), UserId(5), Amount::fen(10)).await.unwrap();
    let mut lost = first.lost();
    // Another node takes the lease as if the first one's had run out (its entry deleted by an
    // operator): the first one's next renewal finds another revision.
    let js = async_nats::jetstream::new(async_nats::connect(cluster.url(1)).await.unwrap());
    js.get_key_value("leases").await.unwrap().delete("p1").await.unwrap();
    let second = Owner::take(&spec(&cluster, "p1", "b"), config()).await.unwrap();
    // Before the first one notices: taking over fenced the stream, so its append is refused
    // and the new owner's view and service are untouched.
    assert!(first.engine.deposit(OpId(2), UserId(5), Amount::fen(1)).await.is_err(), "the old owner appended");
    second.engine.deposit(OpId(3), UserId(5), Amount::fen(2)).await.unwrap();
    assert_eq!(second.engine.balance(UserId(5)).await.unwrap().as_fen(), 12);
    tokio::time::timeout(TTL * 2, lost.wait_for(|lost| *lost)).await.expect("the first owner noticed").unwrap();
    assert!(!*second.lost().borrow(), "the new owner keeps the lease");
    second.stop().await;
    first.stop().await;
}

/// A graceful stop stores a last snapshot and gives the lease up: the standby takes the
/// partition without waiting for the TTL, and reads nothing but that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_partition_over_at_once() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let ttl = Duration::from_secs(30);
    let mut first_spec = spec(&cluster, "p2", "a");
    first_spec.lease.ttl = ttl;
    first_spec.stream.snapshot_every_records = Some(10);
    let owner = Owner::take(&first_spec, config()).await.unwrap();
    let won = round(&owner.engine, 1).await;
    // A periodic snapshot is stored first, so the bucket is ready for the last one (a fresh
    // cluster's first store can take several seconds).
    snapshot_stored(&cluster.urls(), "P_p2").await;
    let mut standby_spec = spec(&cluster, "p2", "b");
    standby_spec.lease.ttl = ttl;
    let standby = tokio::spawn(async move { Owner::take(&standby_spec, config()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    owner.stop().await;
    let next = standby.await.unwrap().unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(10), "took {:?} with a lease of {ttl:?}", stopped.elapsed());
    assert!(matches!(next.rebuilt_from, (Some(_), 0)), "rebuilt from {:?}", next.rebuilt_from);
    for (user, fen) in won {
        assert_eq!(next.engine.balance(user).await.unwrap().as_fen(), fen);
    }
    next.stop().await;
}
