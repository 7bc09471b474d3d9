//! The engine on a journal replicated by a three-node NATS JetStream cluster on loopback:
//! what was acknowledged survives a restart from the stream, a deposed writer cannot append,
//! and the death of one NATS node loses nothing acknowledged. Skipped, saying so, where
//! `nats-server` is not installed (`.ci/run` installs it).

mod common;

use std::collections::HashMap;

use common::*;
use hongbao::{
    Amount, Config, Engine, Failure, GrabError, Health, OpId, PacketId, StorageFailure, UserId, WalletError,
};
use hongbao_cluster::{StreamJournal, StreamSpec};

fn spec(name: &str) -> StreamSpec {
    StreamSpec { stream: name.to_uppercase(), subject: format!("hb.{name}"), replicas: 3, snapshot_every_records: None }
}

fn config() -> Config {
    Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_seed(9)
}

/// An engine on the stream's journal, from what it already holds.
fn engine_on(urls: &str, spec: &StreamSpec) -> Engine {
    rebuilt_on(urls, spec).0
}

/// An engine on the stream's journal, and what opening it read.
fn rebuilt_on(urls: &str, spec: &StreamSpec) -> (Engine, Option<u64>, u64) {
    let (journal, recovered) = StreamJournal::open(urls, spec, &config()).expect("the stream opens");
    let (snapshot, read) = (recovered.snapshot, recovered.records_read);
    let engine = Engine::start(config().with_journal_state(journal, recovered.state))
        .expect("the engine starts from the stream");
    (engine, snapshot, read)
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

/// What the engine acknowledged, as balances.
async fn balances_of(engine: &Engine, users: impl IntoIterator<Item = UserId>) -> Vec<(UserId, u64)> {
    let mut balances = Vec::new();
    for user in users {
        balances.push((user, engine.balance(user).await.unwrap().as_fen()));
    }
    balances
}

/// A journal snapshots its state every so many records and when it closes; a new owner starts
/// from the latest snapshot and reads only the records after it, and holds what the engine
/// acknowledged. This holds whether the first owner closed cleanly or was overtaken while
/// serving (as when its node dies): then it starts from a periodic snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_starts_from_the_latest_snapshot_and_the_records_after_it() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let urls = cluster.urls();
    let spec = StreamSpec { snapshot_every_records: Some(40), ..spec("snapshots") };
    let users = || members(50).into_iter().chain([SENDER]);

    let (first, snapshot, read) = rebuilt_on(&urls, &spec);
    assert_eq!((snapshot, read), (None, 0), "a new stream has no snapshot");
    for packet in 1..=3 {
        open_packet(&first, packet, 50, 10_000, 20).await;
        assert_eq!(storm(&first, packet, 50).await.len(), 20);
    }
    // Three packets make about 3 × (roster, deposit, send, 20 claims) records: a periodic
    // snapshot is stored by now, or soon (the snapshotter stores it in the background).
    snapshot_stored(&urls, &spec.stream).await;
    open_packet(&first, 4, 50, 10_000, 5).await;
    assert_eq!(storm(&first, 4, 50).await.len(), 5);
    let acknowledged = balances_of(&first, users()).await;

    // A second owner opens the stream while the first still serves (its node is, say, cut
    // off): it starts from the periodic snapshot, reads what came after, and fences the
    // first.
    let (second, snapshot, read) = rebuilt_on(&urls, &spec);
    let at = snapshot.expect("the second owner starts from the periodic snapshot");
    assert!(read > 0 && read < 40 + 25, "records read after the snapshot at message {at}: {read}");
    assert_eq!(balances_of(&second, users()).await, acknowledged);
    assert!(second.audit().await.unwrap().is_balanced());
    let refused = first.deposit(OpId(99), UserId(7), Amount::fen(100)).await;
    assert!(matches!(refused, Err(WalletError::Unavailable)), "the first owner is fenced: {refused:?}");
    // Closed cleanly without a record of its own: the last snapshot still covers what it read
    // after the periodic one, so the next owner reads nothing.
    second.shutdown().await;
    drop((first, second));

    let (third, snapshot, read) = rebuilt_on(&urls, &spec);
    assert!(snapshot.is_some_and(|next| next > at), "{snapshot:?}");
    assert_eq!(read, 0);
    assert_eq!(balances_of(&third, users()).await, acknowledged);
    assert_eq!(third.balance(UserId(7)).await.unwrap().as_fen(), 0, "the fenced deposit is nowhere");
    third.deposit(OpId(100), UserId(8), Amount::fen(5)).await.unwrap();
    third.shutdown().await;
    drop(third);

    let (fourth, _, read) = rebuilt_on(&urls, &spec);
    assert_eq!(read, 0);
    assert_eq!(fourth.balance(UserId(8)).await.unwrap().as_fen(), 5);
    fourth.shutdown().await;
}

/// A snapshot that is damaged, or that ends at a message the stream does not hold (its stream
/// was deleted and made again), is passed over: the new owner reads the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_does_not_fit_the_stream_is_passed_over() {
    let _serial = one_at_a_time().await;
    let Some(cluster) = cluster() else { return };
    let urls = cluster.urls();
    let spec = StreamSpec { snapshot_every_records: Some(5), ..spec("stale") };
    let engine = engine_on(&urls, &spec);
    open_packet(&engine, 1, 30, 10_000, 10).await;
    let won = storm(&engine, 1, 30).await;
    snapshot_stored(&urls, &spec.stream).await;
    engine.shutdown().await;
    drop(engine);
    let good = stored_snapshot(&urls, &spec.stream).await.expect("a snapshot was stored");

    let js = async_nats::jetstream::new(async_nats::connect(urls.split(',').next().unwrap()).await.unwrap());
    let store = js.get_object_store(hongbao_cluster::snapshots::bucket_of(&spec.stream)).await.unwrap();
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    store.put(spec.stream.as_str(), &mut damaged.as_slice()).await.unwrap();
    let (engine, snapshot, read) = rebuilt_on(&urls, &spec);
    assert_eq!(snapshot, None, "a damaged snapshot is passed over");
    assert!(read >= 13, "the whole stream is read: {read}");
    for (user, fen) in &won {
        assert_eq!(engine.balance(*user).await.unwrap().as_fen(), *fen);
    }
    engine.shutdown().await;
    drop(engine);

    // The stream is made again, emptier than the snapshot says; then as long, with other
    // messages.
    js.delete_stream(&spec.stream).await.unwrap();
    store.put(spec.stream.as_str(), &mut good.as_slice()).await.unwrap();
    let (engine, snapshot, read) = rebuilt_on(&urls, &spec);
    assert_eq!((snapshot, read), (None, 0));
    assert_eq!(engine.balance(SENDER).await.unwrap().as_fen(), 0);
    for packet in 1..=3 {
        open_packet(&engine, packet, 30, 10_000, 10).await;
    }
    // One message per deposit, each awaited: the stream passes the old snapshot's end.
    for op in 1000..1100 {
        engine.deposit(OpId(op), UserId(op), Amount::fen(1)).await.unwrap();
    }
    engine.shutdown().await;
    drop(engine);
    let (_, old_mark) = hongbao::Folded::restore(&config(), &good).unwrap();
    let last = js.get_stream(&spec.stream).await.unwrap().info().await.unwrap().state.last_sequence;
    assert!(last > old_mark.position + 50, "the new stream ends at {last}, the old snapshot at {old_mark:?}");
    store.put(spec.stream.as_str(), &mut good.as_slice()).await.unwrap();
    let (engine, snapshot, _) = rebuilt_on(&urls, &spec);
    assert_eq!(snapshot, None, "the message the old snapshot ends at is another one now");
    assert_eq!(engine.balance(SENDER).await.unwrap().as_fen(), 0, "sent in full, three times");
    assert_eq!(engine.balance(UserId(1000)).await.unwrap().as_fen(), 1);
    assert_eq!(engine.audit().await.unwrap().escrow, Amount::fen(30_000));
    engine.shutdown().await;
}
