//! Memory is bounded by retention: a closed packet answers repeat grabs and queries for
//! `closed_retention_secs`, an operation id is remembered for `op_retention_secs`, then both
//! are dropped — from memory, from later snapshots, and after a restart alike.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hongbao::{
    audit_journal, Amount, Config, Durability, Engine, EngineError, GrabError, GroupId, Limits, ManualClock, OpId,
    PacketId, UserId, WalletError,
};

const DAY: u64 = 86_400;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-retention-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, clock: &ManualClock, limits: Limits) -> Config {
    Config { arbiters: 2, wallet_shards: 2, ..Config::default() }
        .with_clock(Arc::new(clock.clone()))
        .with_limits(limits)
        .with_seed(8)
        .with_journal_dir(dir, Durability::Sync)
}

/// Closed packets are kept for their retention and then dropped, also from what a restart
/// reads; open packets are never retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_packets_are_kept_for_their_retention_then_dropped() {
    let dir = scratch("packets");
    let clock = ManualClock::default();
    let engine = Engine::start(config(&dir, &clock, Limits::default())).unwrap();
    let group = GroupId(1);
    group_with_funds(&engine, group, 3, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 1)).await.unwrap(); // sells out now
    let won = engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    engine.send_packet(lucky(2, group, Amount::yuan(1), 2)).await.unwrap(); // expires in a day

    clock.advance(Duration::from_secs(29 * DAY));
    engine.run_due().await.unwrap();
    engine.retire_due().await.unwrap();
    let again = Err(GrabError::AlreadyGrabbed { amount: won.amount, position: 1 });
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await, again);

    clock.advance(Duration::from_secs(2 * DAY));
    // The engine's own hourly sweep may retire it first: either way it is gone when this returns.
    engine.retire_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(1)).await, Err(EngineError::UnknownPacket));
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await, Err(GrabError::UnknownPacket));
    assert!(engine.packet(PacketId(2)).await.is_ok(), "packet 2 closed on day 29");
    assert_balanced(&engine).await;
    engine.shutdown().await; // a snapshot without packet 1
    drop(engine);

    let engine = Engine::start(config(&dir, &clock, Limits::default())).unwrap();
    assert_eq!(engine.packet(PacketId(1)).await, Err(EngineError::UnknownPacket));
    // Packet 2 closed when its expiry ran, on day 29: it goes 30 days later.
    clock.advance(Duration::from_secs(27 * DAY));
    engine.retire_due().await.unwrap();
    assert!(engine.packet(PacketId(2)).await.is_ok());
    clock.advance(Duration::from_secs(2 * DAY));
    engine.retire_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(2)).await, Err(EngineError::UnknownPacket));
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced() && audit.packets_closed == 0, "{audit:?}");
    engine.shutdown().await;
    drop(engine);
    let journal = audit_journal(&dir, 20_000).unwrap();
    assert!(journal.is_ok() && journal.packets_expired + journal.packets_sold_out == 0, "{journal:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An operation id is remembered for its retention — a retry is applied once, another user is
/// refused the id — and then forgotten, across a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_ids_are_remembered_for_their_window_then_free() {
    let dir = scratch("ops");
    let clock = ManualClock::default();
    let engine = Engine::start(config(&dir, &clock, Limits::default())).unwrap();
    let (a, b) = (UserId(1), UserId(2));
    engine.deposit(OpId(7), a, Amount::fen(5)).await.unwrap();
    clock.advance(Duration::from_secs(6 * DAY));
    engine.retire_due().await.unwrap();
    assert_eq!(engine.deposit(OpId(7), a, Amount::fen(5)).await, Ok(Amount::fen(5)), "a retry, applied once");
    assert_eq!(engine.deposit(OpId(7), b, Amount::fen(5)).await, Err(WalletError::IdConflict { op: OpId(7) }));
    engine.shutdown().await;
    drop(engine);

    let engine = Engine::start(config(&dir, &clock, Limits::default())).unwrap();
    assert_eq!(engine.deposit(OpId(7), b, Amount::fen(5)).await, Err(WalletError::IdConflict { op: OpId(7) }));
    clock.advance(Duration::from_secs(2 * DAY));
    engine.retire_due().await.unwrap();
    assert_eq!(engine.deposit(OpId(7), b, Amount::fen(5)).await, Ok(Amount::fen(5)));
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced() && audit.deposits == Amount::fen(10), "{audit:?}");
    engine.shutdown().await;
    drop(engine);
    let engine = Engine::start(config(&dir, &clock, Limits::default())).unwrap();
    assert_eq!(engine.balance(a).await.unwrap(), Amount::fen(5));
    assert_eq!(engine.balance(b).await.unwrap(), Amount::fen(5));
    engine.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A call retires everything due and says how much (here the engine's own sweep is a year
/// away, so the call does all of it).
#[tokio::test]
async fn a_retirement_reports_what_it_dropped() {
    let limits = Limits { retire_interval_secs: 365 * DAY, ..Limits::default() };
    let setup = start_with(limits, 10);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 3, Amount::yuan(3)).await;
    for p in 1..=3 {
        engine.send_packet(lucky(p, group, Amount::yuan(1), 1)).await.unwrap();
        engine.grab(PacketId(p), UserId(FIRST_MEMBER)).await.unwrap();
    }
    setup.clock.advance(Duration::from_secs(31 * DAY));
    // Three packets and the id of the deposit that funded them.
    let retired = engine.retire_due().await.unwrap();
    assert_eq!((retired.packets, retired.ops), (3, 1), "{retired:?}");
    assert_eq!(engine.retire_due().await.unwrap(), hongbao::Retired::default());
    engine.shutdown().await;
}

/// The engine sweeps by itself every `retire_interval_secs` of its clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_retires_by_itself() {
    let limits = Limits { closed_retention_secs: 10, retire_interval_secs: 60, ..Limits::default() };
    let setup = start_with(limits, 9);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 1, Amount::yuan(1)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(1), 1)).await.unwrap();
    engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    setup.clock.advance(Duration::from_secs(61));
    // No retire_due: the timer's sweep alone must drop it. The timeout only bounds a broken run.
    tokio::time::timeout(Duration::from_secs(30), async {
        while engine.packet(PacketId(1)).await != Err(EngineError::UnknownPacket) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sweep retires the packet");
    assert_balanced(engine).await;
    engine.shutdown().await;
}
