//! The engine at its edges: a clock that steps back, limits at their extremes, a panic inside
//! an actor, refused operations and their ids, sold-out packets and the open-packet bound,
//! a directory reopened right after its engine was dropped, a journal configuration that
//! cannot be served.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hongbao::journal::Completion;
use hongbao::{
    Amount, Clock, Config, Durability, Engine, EngineError, Event, Failure, FileJournalConfig, GrabError, GroupId,
    Health, Journal, JournalError, Limits, ManualClock, MemoryJournal, OpId, PacketId, Record, SendError, StartError,
    UserId, WalletError,
};

const DAY: Duration = Duration::from_secs(86_400);

/// The timer lets a deadline go when it fires; if the clock steps back before the packet
/// handles it, the packet is not due and the deadline goes back to the timer. Deterministic:
/// one arbiter thread hosts the timer and both packets, and the first packet's refund is held
/// while the clock steps back, so the second handles its expiry on the earlier clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_back_loses_no_deadline() {
    let (journal, entered_rx) = GatedJournal::new(|r| matches!(r, Record::Expired { .. }), true);
    let clock = ManualClock::default();
    let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }
        .with_clock(Arc::new(clock.clone()))
        .with_journal(journal.clone())
        .with_seed(71);
    let engine = Engine::start(config).unwrap();
    let group = GroupId(1);
    group_with_funds(&engine, group, 2, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 2)).await.unwrap();
    engine.send_packet(lucky(2, group, Amount::yuan(1), 2)).await.unwrap();
    let mut events = engine.subscribe().unwrap();

    clock.advance(DAY);
    // Packet 1 is inside its refund: the timer has fired for both.
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap()).await.unwrap();
    clock.set(hongbao::Timestamp(clock.now().as_millis() - 3_600_000));
    journal.release();
    assert!(matches!(events.recv().await, Ok(Event::Expired { packet: PacketId(1), .. })));
    // A query queues behind packet 2's expiry: when it answers, packet 2 has found itself not
    // due on the earlier clock.
    assert_eq!(engine.packet(PacketId(2)).await.unwrap().status, hongbao::PacketStatus::Open);

    // Once the clock passes its deadline again, the timer alone (no run_due, which would
    // scan every packet) must refund it.
    clock.advance(Duration::from_secs(2 * 3_600));
    let refunded = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::Expired { packet, .. } = events.recv().await.unwrap() {
                return packet;
            }
        }
    })
    .await
    .expect("packet 2 is refunded by the timer");
    assert_eq!(refunded, PacketId(2));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

/// Every share count the limits allow is served, even with caps large enough to overflow a
/// product of the two.
#[tokio::test]
async fn limits_at_their_extremes_are_served_or_refused_at_start() {
    let limits = Limits {
        shares_per_packet_max: u32::MAX,
        share_fen_max: 1 << 39,
        packet_total_fen_max: 1 << 39,
        balance_fen_max: 1 << 39,
        daily_sent_fen_max: 1 << 39,
        ..Limits::default()
    };
    let setup = start_with(limits, 3);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 3, Amount::fen(1 << 39)).await;
    engine.send_packet(lucky(1, group, Amount::fen(1 << 38), 3)).await.unwrap();
    for u in members(3) {
        engine.grab(PacketId(1), u).await.unwrap();
    }
    let refused = lucky(2, group, Amount::fen(2), 3);
    assert!(matches!(engine.send_packet(refused).await, Err(SendError::InvalidSplit { .. })));
    assert_balanced(engine).await;
    engine.shutdown().await;

    for limits in [
        Limits { event_buffer_len: usize::MAX, ..Limits::default() },
        Limits { packet_mailbox_capacity: usize::MAX, ..Limits::default() },
        Limits { greeting_bytes_max: 64 << 20, ..Limits::default() },
    ] {
        let config = Config::default().with_limits(limits);
        assert!(matches!(Engine::start(config), Err(StartError::InvalidLimits(_))));
    }
}

/// Panics inside `append` once armed: a bug inside an actor's handler.
struct PanickingJournal {
    inner: MemoryJournal,
    armed: AtomicBool,
}

impl Journal for PanickingJournal {
    fn append(&self, record: Record, then: Completion) {
        if matches!(record, Record::Claim { .. }) && self.armed.load(Ordering::Acquire) {
            panic!("a bug while recording a claim");
        }
        self.inner.append(record, then);
    }

    fn barrier(&self, then: Completion) {
        self.inner.barrier(then);
    }

    fn flush(&self) {}
}

/// A panic inside a packet actor stops the engine loudly: the grab in flight hears its outcome
/// is unknown, the health says so, every later request is refused `Unavailable` — nobody hears
/// `ShuttingDown` from an engine that is running, and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_actor_fails_the_engine_loudly() {
    let journal = Arc::new(PanickingJournal { inner: MemoryJournal::new(), armed: AtomicBool::new(false) });
    let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }.with_journal(journal.clone());
    let engine = Engine::start(config).unwrap();
    let group = GroupId(1);
    group_with_funds(&engine, group, 3, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 3)).await.unwrap();
    engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    assert_eq!(engine.health(), Health::Serving);
    journal.armed.store(true, Ordering::Release);
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER + 1)).await, Err(GrabError::OutcomeUnknown));
    assert_eq!(engine.health(), Health::Failed { failure: Failure::Internal });
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER + 2)).await, Err(GrabError::Unavailable));
    assert_eq!(engine.balance(SENDER).await, Err(EngineError::Unavailable));
    assert_eq!(engine.deposit(OpId(9), SENDER, Amount::fen(1)).await, Err(WalletError::Unavailable));
    engine.shutdown().await;
}

/// An operation that is refused changes nothing — its id included: the id stays free for any
/// user, and a restart agrees.
#[tokio::test]
async fn a_refused_operation_leaves_its_id_free() {
    let setup = start(4);
    let engine = &setup.engine;
    let (a, b) = (UserId(1), UserId(2));
    assert_eq!(engine.deposit(OpId(1), a, Amount::ZERO).await, Err(WalletError::ZeroAmount));
    assert_eq!(
        engine.withdraw(OpId(2), a, Amount::fen(5)).await,
        Err(WalletError::InsufficientFunds { balance: Amount::ZERO, needed: Amount::fen(5) })
    );
    // Both ids are free for another user.
    assert_eq!(engine.deposit(OpId(1), b, Amount::fen(7)).await, Ok(Amount::fen(7)));
    assert_eq!(engine.withdraw(OpId(2), b, Amount::fen(7)).await, Ok(Amount::ZERO));
    // An applied id stays taken.
    assert_eq!(engine.deposit(OpId(1), a, Amount::fen(7)).await, Err(WalletError::IdConflict { op: OpId(1) }));
    assert_eq!(engine.deposit(OpId(1), b, Amount::fen(7)).await, Ok(Amount::fen(7)));
    engine.shutdown().await;
}

/// A sold-out packet closes at once: it stops counting against `open_packets_max`.
#[tokio::test]
async fn a_sold_out_packet_frees_its_open_slot_at_once() {
    let setup = start_with(Limits { open_packets_max: 1, ..Limits::default() }, 6);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 2, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 2)).await.unwrap();
    assert_eq!(
        engine.send_packet(lucky(2, group, Amount::yuan(1), 2)).await,
        Err(SendError::TooManyOpenPackets { max: 1 })
    );
    for u in members(2) {
        engine.grab(PacketId(1), u).await.unwrap();
    }
    engine.send_packet(lucky(2, group, Amount::yuan(1), 2)).await.unwrap();
    // The closed packet still answers repeat grabs and queries.
    assert!(matches!(engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await, Err(GrabError::AlreadyGrabbed { .. })));
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().claims.len(), 2);
    engine.shutdown().await;
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-failures-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Dropping the last handle without a shutdown releases the directory before the drop
/// returns: a new engine opens it at once, never `Locked`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_engine_releases_its_directory_at_once() {
    let dir = scratch("reopen");
    let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }.with_journal_dir(&dir, Durability::Sync);
    let opened = AtomicUsize::new(0);
    for round in 0..50 {
        let engine = Engine::start(config.clone()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        engine.deposit(OpId(round), UserId(1), Amount::fen(1)).await.unwrap();
        drop(engine);
        opened.fetch_add(1, Ordering::Relaxed);
    }
    let engine = Engine::start(config).unwrap();
    assert_eq!(engine.balance(UserId(1)).await.unwrap(), Amount::fen(50));
    engine.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A journal configuration the writer cannot serve is refused at start, by name.
#[test]
fn an_unservable_journal_configuration_is_refused() {
    let dir = scratch("config");
    let mut journal = FileJournalConfig::new(&dir, Durability::Buffered { interval_ms: 0 });
    assert!(matches!(journal.validate(), Err(JournalError::InvalidConfig(_))));
    let config = Config { journal_dir: Some(journal.clone()), ..Config::default() };
    assert!(matches!(Engine::start(config), Err(StartError::Journal(JournalError::InvalidConfig(_)))));
    journal.durability = Durability::Sync;
    journal.queue_len_max = 0;
    assert!(journal.validate().is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
