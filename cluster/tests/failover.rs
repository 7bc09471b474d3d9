//! Ownership of a partition moving between nodes: the owner holds a lease; a standby waits;
//! when the owner stops renewing (as a killed node does) its lease runs out, the standby takes
//! it, rebuilds the partition from the stream and serves every acknowledged grab, send and
//! deposit; when an owner finds its lease taken it stops serving. Skipped, saying so, without
//! `nats-server`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hongbao::{Amount, Config, Engine, GrabError, GroupId, NewPacket, OpId, PacketId, Split, UserId};
use hongbao_cluster::{LeaseSpec, NatsCluster, Owner, PartitionSpec, StreamSpec};

/// One test at a time: each starts a cluster of three servers on a machine of two cores.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The lease's TTL in these tests: short, so a failover takes a few seconds.
const TTL: Duration = Duration::from_secs(2);

fn spec(cluster: &NatsCluster, partition: &str, node: &str) -> PartitionSpec {
    PartitionSpec {
        urls: cluster.urls(),
        node: node.into(),
        stream: StreamSpec { stream: format!("P_{partition}"), subject: format!("hb.p.{partition}"), replicas: 3 },
        lease: LeaseSpec { bucket: "leases".into(), key: partition.into(), ttl: TTL, replicas: 3 },
    }
}

fn config() -> Config {
    Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_seed(4)
}

const SENDER: UserId = UserId(1);

fn members() -> Vec<UserId> {
    (100..140).map(UserId).collect()
}

/// A packet of 20 shares in a group of 40, grabbed by everyone at once; the wins.
async fn round(engine: &Engine, packet: u64) -> HashMap<UserId, u64> {
    let group = GroupId(packet);
    let mut roster = members();
    roster.push(SENDER);
    engine.set_members(group, roster).await.unwrap();
    engine.deposit(OpId(packet), SENDER, Amount::fen(2_000)).await.unwrap();
    let split = Split::lucky(Amount::fen(2_000), 20);
    engine
        .send_packet(NewPacket { id: PacketId(packet), sender: SENDER, group, split, greeting: String::new() })
        .await
        .unwrap();
    let grabs = members().into_iter().map(|u| async move { (u, engine.grab(PacketId(packet), u).await) });
    let mut won = HashMap::new();
    for (user, result) in futures::future::join_all(grabs).await {
        match result {
            Ok(g) => {
                won.insert(user, g.amount.as_fen());
            }
            Err(GrabError::SoldOut) => {}
            Err(e) => panic!("{user}: {e}"),
        }
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_dead_owners_partition_with_everything_acknowledged() {
    let _serial = one_at_a_time().await;
    let cluster = match NatsCluster::start(3) {
        Ok(cluster) => cluster,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    let owner = Owner::take(&spec(&cluster, "p0", "a"), config()).await.unwrap();
    let mut won: HashMap<UserId, u64> = HashMap::new();
    for packet in 1..=3 {
        for (user, fen) in round(&owner.engine, packet).await {
            *won.entry(user).or_default() += fen;
        }
    }
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
    eprintln!("failover in {failover:?} (lease TTL {TTL:?}; rebuilt in {:?})", next.rebuilt_in);

    for (user, fen) in &won {
        assert_eq!(next.engine.balance(*user).await.unwrap().as_fen(), *fen, "{user}");
    }
    assert!(next.engine.audit().await.unwrap().is_balanced());
    let more = round(&next.engine, 4).await;
    assert_eq!(more.len(), 20);
    next.stop().await;
}

/// An owner that finds its lease taken (it stopped renewing past the TTL: a long pause) stops
/// serving at once; the stream would refuse its appends anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_lost_its_lease_stops_serving() {
    let _serial = one_at_a_time().await;
    let cluster = match NatsCluster::start(3) {
        Ok(cluster) => cluster,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    let first = Owner::take(&spec(&cluster, "p1", "a"), config()).await.unwrap();
    first.engine.deposit(OpId(1), UserId(5), Amount::fen(10)).await.unwrap();
    let mut lost = first.lost();
    // Another node takes the lease as if the first one's had run out (its entry deleted by an
    // operator): the first one's next renewal finds another revision.
    let js = async_nats::jetstream::new(async_nats::connect(cluster.url(1)).await.unwrap());
    js.get_key_value("leases").await.unwrap().delete("p1").await.unwrap();
    let second = Owner::take(&spec(&cluster, "p1", "b"), config()).await.unwrap();
    tokio::time::timeout(TTL * 2, lost.wait_for(|lost| *lost)).await.expect("the first owner noticed").unwrap();
    assert!(first.engine.deposit(OpId(2), UserId(5), Amount::fen(1)).await.is_err(), "it stopped serving");
    assert_eq!(second.engine.balance(UserId(5)).await.unwrap().as_fen(), 10);
    second.stop().await;
    first.stop().await;
}
