//! The engine on a journal replicated by a three-node NATS JetStream cluster on loopback:
//! what was acknowledged survives a restart from the stream, a deposed writer cannot append,
//! and the death of one NATS node loses nothing acknowledged. Skipped, saying so, where
//! `nats-server` is not installed (`.ci/run` installs it).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use hongbao::{
    Amount, Config, Engine, Failure, GrabError, Health, OpId, PacketId, StorageFailure, UserId, WalletError,
};
use hongbao_cluster::{StreamJournal, StreamSpec};

fn spec(name: &str) -> StreamSpec {
    StreamSpec { stream: name.to_uppercase(), subject: format!("hb.{name}"), replicas: 3 }
}

/// An engine on the stream's journal, from the records it already holds.
fn engine_on(urls: &str, spec: &StreamSpec) -> Engine {
    let (journal, history) = StreamJournal::open(urls, spec).expect("the stream opens");
    Engine::start(
        Config { arbiters: 2, wallet_shards: 2, ..Config::default() }
            .with_seed(9)
            .with_journal_history(journal, Arc::new(history)),
    )
    .expect("the engine starts from the stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_acknowledged_is_in_the_stream_after_a_restart() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let spec = spec("restart");
    let engine = engine_on(&cluster.urls(), &spec);
    open_packet(&engine, 1, 50, 10_000, 20).await;
    let won = storm(&engine, 1, 50).await;
    assert_eq!(won.len(), 20);
    engine.shutdown().await;
    drop(engine);

    let engine = engine_on(&cluster.urls(), &spec);
    for (user, fen) in &won {
        assert_eq!(engine.balance(*user).await.unwrap().as_fen(), *fen, "{user}");
        let again = engine.grab(PacketId(1), *user).await.unwrap_err();
        assert!(matches!(again, GrabError::AlreadyGrabbed { .. }), "{again:?}");
    }
    assert!(engine.audit().await.unwrap().is_balanced());
    engine.shutdown().await;
}

/// Two engines believe they own the partition: the one that opened it later appends, and the
/// first one's next append is refused by the stream. It stops, saying it was deposed; what it
/// had acknowledged before stands, what it was refused is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owner_cannot_append() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let spec = spec("fencing");
    let first = engine_on(&cluster.urls(), &spec);
    first.deposit(OpId(1), UserId(7), Amount::fen(100)).await.unwrap();

    let second = engine_on(&cluster.urls(), &spec);
    assert_eq!(second.balance(UserId(7)).await.unwrap().as_fen(), 100, "the new owner read the stream");
    second.deposit(OpId(2), UserId(7), Amount::fen(20)).await.unwrap();

    let refused = first.deposit(OpId(3), UserId(7), Amount::fen(5)).await;
    assert!(matches!(refused, Err(WalletError::Unavailable)), "{refused:?}");
    assert_eq!(first.health(), Health::Failed { failure: Failure::Storage(StorageFailure::Deposed) });
    second.shutdown().await;
    drop((first, second));

    let third = engine_on(&cluster.urls(), &spec);
    assert_eq!(third.balance(UserId(7)).await.unwrap().as_fen(), 120, "the deposed owner's deposit is not there");
    assert!(third.audit().await.unwrap().is_balanced());
    third.shutdown().await;
}

/// One NATS node is killed (`SIGKILL`) while grabs are acknowledged: the stream has three
/// replicas, so service goes on and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_dies_and_nothing_acknowledged_is_lost() {
    let _serial = one_at_a_time().await;
    let Some(mut cluster) = cluster() else { return };
    let spec = spec("nodedeath");
    let engine = engine_on(&cluster.urls(), &spec);
    let mut won = HashMap::new();
    for packet in 1..=6u64 {
        open_packet(&engine, packet, 50, 10_000, 25).await;
        let grabs = storm(&engine, packet, 50);
        let round = if packet == 3 {
            // Mid-storm: the grabs are in flight when the node dies.
            let kill = async {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                cluster.kill(0);
            };
            futures::join!(grabs, kill).0
        } else {
            grabs.await
        };
        won.extend(round.into_iter().map(|(user, fen)| ((packet, user), fen)));
    }
    assert_eq!(won.len(), 6 * 25);
    assert_eq!(engine.health(), Health::Serving);
    engine.shutdown().await;
    drop(engine);

    let engine = engine_on(&cluster.urls(), &spec);
    let mut balances: HashMap<UserId, u64> = HashMap::new();
    for ((_, user), fen) in &won {
        *balances.entry(*user).or_default() += fen;
    }
    for (user, fen) in balances {
        assert_eq!(engine.balance(user).await.unwrap().as_fen(), fen, "{user}");
    }
    assert!(engine.audit().await.unwrap().is_balanced());
    engine.shutdown().await;
}

/// Two writers open an empty journal: opening fences, so the later one is the owner and the
/// earlier one is deposed at its first append, which is nowhere in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_later_of_two_owners_of_an_empty_journal_fences_the_earlier() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let spec = spec("empty");
    let first = engine_on(&cluster.urls(), &spec);
    let second = engine_on(&cluster.urls(), &spec);
    let refused = first.deposit(OpId(1), UserId(7), Amount::fen(100)).await;
    assert!(matches!(refused, Err(WalletError::Unavailable)), "{refused:?}");
    assert_eq!(first.health(), Health::Failed { failure: Failure::Storage(StorageFailure::Deposed) });
    second.deposit(OpId(2), UserId(8), Amount::fen(5)).await.unwrap();
    second.shutdown().await;
    drop((first, second));
    let third = engine_on(&cluster.urls(), &spec);
    assert_eq!(third.balance(UserId(7)).await.unwrap().as_fen(), 0, "the deposed writer's deposit is nowhere");
    assert_eq!(third.balance(UserId(8)).await.unwrap().as_fen(), 5);
    third.shutdown().await;
}
