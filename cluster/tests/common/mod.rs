//! What the cluster's tests share: one test at a time, a three-node cluster (or a skip), and a
//! packet grabbed by a group at once.

#![allow(dead_code)] // each test file uses its part

use std::collections::HashMap;

use hongbao::{Amount, Engine, GrabError, GroupId, NewPacket, OpId, PacketId, Split, UserId};
use hongbao_cluster::{ClusterError, NatsCluster};

/// One test at a time: each starts a cluster of three servers, and clusters electing leaders
/// at once on two cores would test the machine, not the code.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A three-node cluster, or `None` (saying so) without `nats-server`. A cluster that is
/// installed but does not start fails the test.
pub fn cluster() -> Option<NatsCluster> {
    match NatsCluster::start(3) {
        Ok(cluster) => Some(cluster),
        Err(e @ ClusterError::NotInstalled) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("the NATS cluster did not start: {e}"),
    }
}

pub const SENDER: UserId = UserId(1);

/// The members of every test group.
pub fn members(n: u64) -> Vec<UserId> {
    (100..100 + n).map(UserId).collect()
}

/// Puts the sender and `n` members in a group of the packet's id, funds the sender and sends a
/// lucky packet of `fen` in `shares` shares.
pub async fn open_packet(engine: &Engine, packet: u64, n: u64, fen: u64, shares: u32) {
    let group = GroupId(packet);
    let mut roster = members(n);
    roster.push(SENDER);
    engine.set_members(group, roster).await.unwrap();
    engine.deposit(OpId(packet), SENDER, Amount::fen(fen)).await.unwrap();
    let split = Split::lucky(Amount::fen(fen), shares);
    engine
        .send_packet(NewPacket { id: PacketId(packet), sender: SENDER, group, split, greeting: String::new() })
        .await
        .unwrap();
}

/// The `n` members grab the packet at once; the wins acknowledged.
pub async fn storm(engine: &Engine, packet: u64, n: u64) -> HashMap<UserId, u64> {
    let grabs = members(n).into_iter().map(|user| async move { (user, engine.grab(PacketId(packet), user).await) });
    let mut won = HashMap::new();
    for (user, result) in futures::future::join_all(grabs).await {
        match result {
            Ok(grab) => {
                won.insert(user, grab.amount.as_fen());
            }
            Err(GrabError::SoldOut) => {}
            Err(e) => panic!("{user}: {e}"),
        }
    }
    won
}

/// The latest snapshot stored of the partition whose stream is `stream`, if any.
pub async fn stored_snapshot(urls: &str, stream: &str) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let js = async_nats::jetstream::new(async_nats::connect(urls.split(',').next().unwrap()).await.unwrap());
    let store = js.get_object_store(hongbao_cluster::snapshots::bucket_of(stream)).await.ok()?;
    let mut object = store.get(stream).await.ok()?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.ok()?;
    Some(bytes)
}

/// Waits until a snapshot of the partition whose stream is `stream` is stored: the first
/// store into a bucket a fresh cluster just made can take several seconds.
pub async fn snapshot_stored(urls: &str, stream: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(bytes) = stored_snapshot(urls, stream).await {
            return bytes;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot of {stream} was stored");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
