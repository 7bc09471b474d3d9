//! Three partitions on a NATS JetStream cluster, each with its own stream, lease and relay:
//! shares won in one partition by members whose wallets are in another travel through the
//! inbox stream and land once; the owner of a partition dies mid-storm, a standby takes it
//! over, and every acknowledged grab is there, nobody is paid twice, and the cluster conserves
//! money. Skipped, saying so, without `nats-server`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use hongbao::{
    Amount, ClusterAudit, Config, Engine, GrabError, Grabbed, GroupId, NewPacket, OpId, PacketId, Partition, Split,
    UserId,
};
use hongbao_cluster::{InboxSpec, LeaseSpec, NatsCluster, Owner, PartitionSpec, Relay, StreamSpec};

const PARTITIONS: u32 = 3;
const TTL: Duration = Duration::from_secs(2);
const MEMBERS: u64 = 90;
const GROUP: GroupId = GroupId(7);
const DEPOSIT_FEN: u64 = 100_000;
const PACKET_FEN: u64 = 3_000;

fn partition(i: u32) -> Partition {
    Partition::new(i, PARTITIONS).unwrap()
}

fn spec(cluster: &NatsCluster, i: u32, node: &str) -> PartitionSpec {
    PartitionSpec {
        urls: cluster.urls(),
        node: node.into(),
        stream: StreamSpec {
            stream: format!("PARTS_{i}"),
            subject: format!("parts.p{i}"),
            replicas: 3,
            snapshot_every_records: Some(25),
        },
        lease: LeaseSpec { bucket: "part_leases".into(), key: format!("p{i}"), ttl: TTL, replicas: 3 },
    }
}

fn config(i: u32) -> Config {
    Config { arbiters: 1, wallet_shards: 1, ..Config::default() }.with_seed(9).with_partition(partition(i))
}

struct Node {
    owner: Owner,
    relay: Relay,
}

async fn take(cluster: &NatsCluster, i: u32, node: &str) -> Node {
    let owner = Owner::take(&spec(cluster, i, node), config(i)).await.unwrap();
    let relay = Relay::start(&cluster.urls(), &InboxSpec::new(3), owner.engine.clone()).await.unwrap();
    Node { owner, relay }
}

fn users() -> impl Iterator<Item = UserId> {
    (1..=MEMBERS).map(UserId)
}

fn packet_in(i: u32, from: u64) -> PacketId {
    (from..).map(PacketId).find(|&p| partition(0).of_packet(p) == i).unwrap()
}

fn sender_in(i: u32) -> UserId {
    users().find(|&u| partition(0).of_user(u) == i).unwrap()
}

/// Every member grabs `packet` at once through its partition's engine; the wins.
async fn storm(engine: &Engine, packet: PacketId) -> Vec<Grabbed> {
    let results = join_all(users().map(|u| engine.grab(packet, u))).await;
    results
        .into_iter()
        .filter_map(|r| match r {
            Ok(g) => Some(g),
            Err(GrabError::SoldOut) => None,
            Err(e) => panic!("{e}"),
        })
        .collect()
}

/// Waits until every share won elsewhere has landed in its wallet's partition.
async fn landed(engines: &[Engine], won: &[Grabbed]) {
    for r in won.iter().filter_map(|g| g.remitted.clone()) {
        let arrival = engines[r.to as usize].await_remittance(&r);
        tokio::time::timeout(Duration::from_secs(60), arrival).await.expect("a remittance arrives").unwrap();
    }
}

async fn cluster_audit(engines: &[Engine]) -> ClusterAudit {
    let mut audits = Vec::new();
    for e in engines {
        audits.push((e.partition().index(), e.audit().await.unwrap()));
    }
    ClusterAudit::of(&audits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_cross_partitions_once_and_survive_the_death_of_an_owner() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let mut nodes = Vec::new();
    for i in 0..PARTITIONS {
        nodes.push(take(&cluster, i, "a").await);
    }
    let engines = |nodes: &[Node]| nodes.iter().map(|n| n.owner.engine.clone()).collect::<Vec<_>>();
    let all = engines(&nodes);
    for e in &all {
        e.set_members(GROUP, users().collect::<Vec<_>>()).await.unwrap();
    }
    for u in users() {
        all[partition(0).of_user(u) as usize].deposit(OpId(u.0), u, Amount::fen(DEPOSIT_FEN)).await.unwrap();
    }
    let send = |i: u32, round: u64| {
        let id = packet_in(i, 1_000 * round + 100 * u64::from(i));
        let split = Split::lucky(Amount::fen(PACKET_FEN), 60);
        (id, NewPacket { id, sender: sender_in(i), group: GROUP, split, greeting: String::new() })
    };
    let mut won = Vec::new();
    let mut sent: HashMap<UserId, u64> = HashMap::new();
    for round in 1..=2 {
        for i in 0..PARTITIONS {
            let (id, packet) = send(i, round);
            all[i as usize].send_packet(packet).await.unwrap();
            *sent.entry(sender_in(i)).or_default() += PACKET_FEN;
            won.extend(storm(&all[i as usize], id).await);
        }
    }
    landed(&all, &won).await;
    let first = cluster_audit(&all).await;
    assert!(first.is_balanced(), "{first:?}");
    assert_eq!(first.in_flight, Amount::ZERO);
    assert!(won.iter().filter(|g| g.remitted.is_some()).count() > 200, "shares crossed partitions");

    // Partition 0's owner dies mid-storm. Its relay is gone first, so none of the shares its
    // last storm won for wallets elsewhere has left: the standby that takes the partition
    // over must carry them all, once.
    let (id, packet) = send(0, 3);
    all[0].send_packet(packet).await.unwrap();
    *sent.entry(sender_in(0)).or_default() += PACKET_FEN;
    let node = nodes.remove(0);
    node.relay.abandon();
    let dying = storm(&all[0], id).await;
    assert!(dying.iter().any(|g| g.remitted.is_some()));
    node.owner.abandon();
    let standby = take(&cluster, 0, "b").await;
    nodes.insert(0, standby);
    let all = engines(&nodes);
    // Every grab acknowledged before the death is in the new owner's packet.
    let view = all[0].packet(id).await.unwrap();
    for g in &dying {
        assert!(view.claims.iter().any(|c| c.user == g.user && c.amount == g.amount), "{g:?} is lost");
    }
    won.extend(dying);
    // The storm goes on in the other partitions and in the new owner's.
    for i in 0..PARTITIONS {
        let (id, packet) = send(i, 4);
        all[i as usize].send_packet(packet).await.unwrap();
        *sent.entry(sender_in(i)).or_default() += PACKET_FEN;
        won.extend(storm(&all[i as usize], id).await);
    }
    landed(&all, &won).await;

    // Nobody is paid twice: every balance is its deposit, plus its shares, less its sends.
    let mut expected: HashMap<UserId, u64> = users().map(|u| (u, DEPOSIT_FEN)).collect();
    won.iter().for_each(|g| *expected.get_mut(&g.user).unwrap() += g.amount.as_fen());
    for (u, fen) in &sent {
        *expected.get_mut(u).unwrap() -= fen;
    }
    for u in users() {
        let balance = all[partition(0).of_user(u) as usize].balance(u).await.unwrap().as_fen();
        assert_eq!(balance, expected[&u], "user {u}");
    }
    let last = cluster_audit(&all).await;
    assert!(last.is_balanced(), "{last:?}");
    assert_eq!((last.in_flight, last.in_flight_count), (Amount::ZERO, 0));
    for node in nodes {
        node.relay.stop().await;
        node.owner.stop().await;
    }
}
