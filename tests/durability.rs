//! The file journal: restarts recover every acknowledged change, refunds due while the engine
//! was down happen once, a torn last write is cut off, corruption anywhere else refuses to
//! start and `hongbao audit` names it, and a directory is used by one engine at a time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hongbao::{
    audit_journal, split, Amount, Config, Durability, Engine, FileJournalConfig, GrabError, GroupId, JournalError,
    Limits, ManualClock, OpId, PacketId, PacketStatus, StartError, UserId,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-durability-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_with(
    dir: &Path,
    clock: &ManualClock,
    snapshot_every_records: Option<u64>,
    keep_segments: bool,
) -> Result<Engine, StartError> {
    let mut config =
        Config { arbiters: 2, wallet_shards: 3, ..Config::default() }.with_clock(Arc::new(clock.clone())).with_seed(5);
    let mut journal = FileJournalConfig::new(dir, Durability::Sync);
    journal.snapshot_every_records = snapshot_every_records;
    journal.keep_segments = keep_segments;
    config.journal_dir = Some(journal);
    // A child process forked (by any test of this process) while an engine here closes its
    // journal shares the lock until it execs (microseconds to milliseconds), so a restart may
    // briefly find the directory locked. Only that is retried.
    for _ in 0..200 {
        match Engine::start(config.clone()) {
            Err(StartError::Journal(JournalError::Locked(_))) => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
    Engine::start(config)
}

/// Without the retry: for the test of the lock itself.
fn start_once(dir: &Path, clock: &ManualClock) -> Result<Engine, StartError> {
    let config = Config { arbiters: 2, wallet_shards: 3, ..Config::default() }
        .with_clock(Arc::new(clock.clone()))
        .with_journal_dir(dir, Durability::Sync);
    Engine::start(config)
}

/// The default journal: snapshots at shutdown and every million records, covered segments
/// deleted.
fn start_on(dir: &Path, clock: &ManualClock) -> Result<Engine, StartError> {
    start_with(dir, clock, Some(1_000_000), false)
}

/// No snapshots: every record stays in the segments (for the tests that damage them).
fn start_unsnapshotted(dir: &Path, clock: &ManualClock) -> Result<Engine, StartError> {
    start_with(dir, clock, None, false)
}

async fn stop(engine: Engine) {
    engine.shutdown().await;
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_recovers_every_acknowledged_change() {
    let dir = scratch("restart");
    let clock = ManualClock::default();
    let engine = start_on(&dir, &clock).unwrap();
    group_with_funds(&engine, GroupId(1), 20, Amount::yuan(50)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(10), 10)).await.unwrap();
    let mut won = Vec::new();
    for u in members(4) {
        won.push(engine.grab(PacketId(1), u).await.unwrap());
    }
    engine.withdraw(OpId(9), UserId(FIRST_MEMBER), Amount::fen(1)).await.unwrap();
    let view_before = engine.packet(PacketId(1)).await.unwrap();
    let balance_before = engine.balance(UserId(FIRST_MEMBER)).await.unwrap();
    stop(engine).await;

    let engine = start_on(&dir, &clock).unwrap();
    assert_eq!(engine.packet(PacketId(1)).await.unwrap(), view_before);
    assert_eq!(engine.balance(UserId(FIRST_MEMBER)).await.unwrap(), balance_before);
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(40));
    // Retries of acknowledged operations are recognised, not applied again.
    assert_eq!(engine.withdraw(OpId(9), UserId(FIRST_MEMBER), Amount::fen(1)).await, Ok(balance_before));
    assert_eq!(
        engine.grab(PacketId(1), won[0].user).await,
        Err(GrabError::AlreadyGrabbed { amount: won[0].amount, position: 1 })
    );
    // The draw continues where it stopped: the remaining shares are the seeded ones.
    let derived = split::lucky_shares(1_000, 10, engine.limits().share_fen_max, view_before.seed);
    for (i, u) in members(10).into_iter().enumerate().skip(4) {
        assert_eq!(engine.grab(PacketId(1), u).await.unwrap().amount.as_fen(), derived[i]);
    }
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::SoldOut);
    assert_balanced(&engine).await;
    stop(engine).await;

    // And once more, after the packet sold out.
    let engine = start_on(&dir, &clock).unwrap();
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().claims.len(), 10);
    assert_balanced(&engine).await;
    stop(engine).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_due_while_down_happens_once() {
    let dir = scratch("downtime");
    let clock = ManualClock::default();
    let engine = start_on(&dir, &clock).unwrap();
    group_with_funds(&engine, GroupId(1), 5, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(10), 5)).await.unwrap();
    let won = engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    stop(engine).await;

    clock.advance(Duration::from_secs(86_400));
    let engine = start_on(&dir, &clock).unwrap();
    engine.run_due().await.unwrap();
    let refund = Amount::fen(1_000 - won.amount.as_fen());
    assert_eq!(engine.balance(SENDER).await.unwrap(), refund);
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Expired { refunded: refund });
    stop(engine).await;

    for _ in 0..2 {
        let engine = start_on(&dir, &clock).unwrap();
        engine.run_due().await.unwrap();
        assert_eq!(engine.balance(SENDER).await.unwrap(), refund, "refunded exactly once");
        assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER + 1)).await, Err(GrabError::Expired));
        assert_balanced(&engine).await;
        stop(engine).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engine_per_directory() {
    let dir = scratch("lock");
    let clock = ManualClock::default();
    let engine = start_on(&dir, &clock).unwrap();
    assert!(matches!(start_once(&dir, &clock), Err(StartError::Journal(JournalError::Locked(_)))));
    stop(engine).await;
    let again = start_on(&dir, &clock).unwrap();
    stop(again).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The segment files of a journal, and the byte offsets of every frame in the last one.
fn frames(dir: &Path) -> (PathBuf, Vec<u64>, u64) {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hbj"))
        .collect();
    segs.sort();
    let last = segs.pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let mut at = 8u64;
    let mut starts = Vec::new();
    while (at as usize) < bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap()) as u64;
        at += 40 + len;
    }
    (last, starts, bytes.len() as u64)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "LOCK" {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_off_at_every_offset() {
    let dir = scratch("torn");
    let clock = ManualClock::default();
    let engine = start_unsnapshotted(&dir, &clock).unwrap();
    group_with_funds(&engine, GroupId(1), 5, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(10), 5)).await.unwrap();
    engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    // The last record: a deposit whose loss is visible.
    engine.deposit(OpId(77), UserId(5), Amount::fen(333)).await.unwrap();
    stop(engine).await;

    let (segment, starts, len) = frames(&dir);
    let last_start = *starts.last().unwrap();
    let copy = scratch("torn-copy");
    for cut in last_start..len {
        copy_dir(&dir, &copy);
        let f = std::fs::OpenOptions::new().write(true).open(copy.join(segment.file_name().unwrap())).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let engine = start_unsnapshotted(&copy, &clock).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(
            engine.balance(UserId(5)).await.unwrap(),
            Amount::ZERO,
            "cut at {cut}: only the torn record is lost"
        );
        assert_eq!(engine.packet(PacketId(1)).await.unwrap().claims.len(), 1, "cut at {cut}");
        assert_balanced(&engine).await;
        // Writing continues cleanly after the cut.
        engine.deposit(OpId(78), UserId(5), Amount::fen(1)).await.unwrap();
        stop(engine).await;
        let engine = start_unsnapshotted(&copy, &clock).unwrap();
        assert_eq!(engine.balance(UserId(5)).await.unwrap(), Amount::fen(1), "cut at {cut}");
        stop(engine).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&copy).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_refuses_to_start_and_audit_names_the_record() {
    let dir = scratch("corrupt");
    let clock = ManualClock::default();
    let engine = start_unsnapshotted(&dir, &clock).unwrap();
    group_with_funds(&engine, GroupId(1), 5, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(10), 5)).await.unwrap();
    for u in members(3) {
        engine.grab(PacketId(1), u).await.unwrap();
    }
    stop(engine).await;

    let clean = audit_journal(&dir, Limits::default().share_fen_max).unwrap();
    assert!(clean.is_ok(), "{clean:?}");

    let (segment, starts, _) = frames(&dir);
    let victim = starts[starts.len() / 2];
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[victim as usize + 45] ^= 0x40; // inside the payload of a record in the middle
    std::fs::write(&segment, &bytes).unwrap();

    match start_unsnapshotted(&dir, &clock) {
        Err(StartError::Journal(JournalError::Corrupt { segment: s, offset, .. })) => {
            assert_eq!((s, offset), (segment.clone(), victim));
        }
        other => panic!("expected a refusal naming the damage, got {other:?}"),
    }
    match audit_journal(&dir, Limits::default().share_fen_max) {
        Err(JournalError::Corrupt { segment: s, offset, what, .. }) => {
            assert_eq!((s, offset), (segment, victim));
            assert!(what.contains("checksum"), "{what}");
        }
        other => panic!("expected the audit to name the damage, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Activity that writes a few hundred records: deposits, rosters, sends, grabs, an expiry.
async fn activity(engine: &Engine, clock: &ManualClock) {
    group_with_funds(engine, GroupId(1), 30, Amount::yuan(100)).await;
    for p in 0..6 {
        engine.send_packet(lucky(p, GroupId(1), Amount::yuan(5), 10)).await.unwrap();
        for u in members(12) {
            let _ = engine.grab(PacketId(p), u).await;
        }
    }
    engine.send_packet(lucky(50, GroupId(1), Amount::yuan(5), 10)).await.unwrap();
    engine.grab(PacketId(50), UserId(FIRST_MEMBER)).await.unwrap();
    clock.advance(Duration::from_secs(86_400));
    engine.run_due().await.unwrap();
    engine.withdraw(OpId(5), UserId(FIRST_MEMBER), Amount::fen(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_segments_are_deleted_and_the_chain_continues() {
    let dir = scratch("compact");
    let clock = ManualClock::default();
    let engine = start_on(&dir, &clock).unwrap();
    activity(&engine, &clock).await;
    let audit_before = engine.audit().await.unwrap();
    stop(engine).await;
    // A clean shutdown snapshots; the covered segments are gone.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".hbs")).count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.ends_with(".hbj")).count(), 1, "{names:?}");

    let engine = start_on(&dir, &clock).unwrap();
    assert_eq!(engine.audit().await.unwrap(), audit_before);
    // New records chain onto the snapshot: they read back, and `hongbao audit` agrees.
    engine.deposit(OpId(6), UserId(3), Amount::fen(7)).await.unwrap();
    stop(engine).await;
    let engine = start_on(&dir, &clock).unwrap();
    assert_eq!(engine.balance(UserId(3)).await.unwrap(), Amount::fen(7));
    stop(engine).await;
    let audit = audit_journal(&dir, Limits::default().share_fen_max).unwrap();
    assert!(audit.is_ok() && !audit.whole_history, "{audit:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
