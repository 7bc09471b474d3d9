//! The edges of recovery: damage that only looks like a torn tail, a tail of zeros, a
//! directory holding a snapshot and no segment, a configuration changed between runs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use hongbao::{
    audit_journal, Amount, Config, Durability, Engine, FileJournalConfig, GroupId, JournalError, Limits, ManualClock,
    OpId, PacketId, StartError, UserId,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-edges-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, clock: &ManualClock, limits: Limits) -> Config {
    let mut journal = FileJournalConfig::new(dir, Durability::Sync);
    journal.snapshot_every_records = None;
    let config = Config { arbiters: 2, wallet_shards: 3, ..Config::default() };
    let mut config = config.with_clock(Arc::new(clock.clone())).with_seed(5).with_limits(limits);
    config.journal_dir = Some(journal);
    config
}

fn start(dir: &Path, clock: &ManualClock) -> Result<Engine, StartError> {
    Engine::start(config(dir, clock, Limits::default()))
}

async fn stop(engine: Engine) {
    engine.shutdown().await;
    drop(engine);
}

/// A journal of a few records, the last three deposits of 1, 2 and 3 fen to user 5; returns
/// its segment and the offset of every frame in it.
async fn journal_of_deposits(dir: &Path, clock: &ManualClock) -> (PathBuf, Vec<usize>) {
    let engine = start(dir, clock).unwrap();
    group_with_funds(&engine, GroupId(1), 3, Amount::yuan(10)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(1), 3)).await.unwrap();
    for fen in 1..=3 {
        engine.deposit(OpId(100 + fen), UserId(5), Amount::fen(fen)).await.unwrap();
    }
    stop(engine).await;
    let segment = dir.join("00000000000000000000.hbj");
    let bytes = std::fs::read(&segment).unwrap();
    let mut starts = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        starts.push(at);
        at += 40 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    (segment, starts)
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// Damage in the last segment that is followed by valid records is not a torn tail: cutting it
/// would delete acknowledged history. The start refuses and the audit fails, naming the spot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_followed_by_valid_records_is_corruption_not_a_torn_tail() {
    let clock = ManualClock::default();
    for (name, len_field) in [("too-long", 0x00FF_FFFFu32), ("past-the-end", 1_000)] {
        let dir = scratch(name);
        let (segment, starts) = journal_of_deposits(&dir, &clock).await;
        // The length of the second-to-last record (a deposit) claims more than it holds.
        let victim = starts[starts.len() - 2];
        rewrite(&segment, |b| b[victim..victim + 4].copy_from_slice(&len_field.to_le_bytes()));
        match start(&dir, &clock) {
            Err(StartError::Journal(JournalError::Corrupt { offset, what, .. })) => {
                assert_eq!(offset, victim as u64, "{name}");
                assert!(what.contains("valid record"), "{name}: {what}");
            }
            Err(e) => panic!("{name}: {e}"),
            Ok(_) => panic!("{name}: started and cut acknowledged history"),
        }
        assert!(matches!(audit_journal(&dir, 20_000), Err(JournalError::Corrupt { .. })), "{name}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Zeros after the last record, as a power loss can leave them, are a torn tail: cut, with
/// every acknowledged record kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_of_zeros_is_a_torn_tail() {
    let clock = ManualClock::default();
    for zeros in [1, 39, 40, 41, 4_096, 100_000] {
        let dir = scratch(&format!("zeros-{zeros}"));
        let (segment, _) = journal_of_deposits(&dir, &clock).await;
        rewrite(&segment, |b| b.extend(std::iter::repeat_n(0u8, zeros)));
        let audit = audit_journal(&dir, 20_000).unwrap();
        assert_eq!(audit.torn_tail_bytes, zeros as u64);
        let engine = start(&dir, &clock).unwrap_or_else(|e| panic!("{zeros} zeros: {e}"));
        assert_eq!(engine.balance(UserId(5)).await.unwrap(), Amount::fen(6), "{zeros} zeros");
        engine.deposit(OpId(200), UserId(5), Amount::fen(1)).await.unwrap();
        stop(engine).await;
        let engine = start(&dir, &clock).unwrap();
        assert_eq!(engine.balance(UserId(5)).await.unwrap(), Amount::fen(7), "{zeros} zeros");
        stop(engine).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A directory whose segments are gone but whose snapshot remains (an operator copied only the
/// snapshot) starts, and the history written after it survives a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_without_segments_continues_and_survives_a_crash() {
    let clock = ManualClock::default();
    let dir = scratch("snapshot-only");
    let mut with_snapshots = config(&dir, &clock, Limits::default());
    with_snapshots.journal_dir.as_mut().unwrap().snapshot_every_records = Some(1_000_000);
    let engine = Engine::start(with_snapshots.clone()).unwrap();
    engine.deposit(OpId(1), UserId(5), Amount::fen(10)).await.unwrap();
    stop(engine).await; // a clean shutdown writes the snapshot
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "hbj") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let engine = Engine::start(with_snapshots.clone()).unwrap();
    engine.deposit(OpId(2), UserId(5), Amount::fen(20)).await.unwrap();
    // A crash: the handle goes without a shutdown, so no new snapshot covers the deposit.
    drop(engine);
    let engine = Engine::start(with_snapshots).unwrap();
    assert_eq!(engine.balance(UserId(5)).await.unwrap(), Amount::fen(30));
    stop(engine).await;
    assert!(audit_journal(&dir, 20_000).unwrap().is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A packet's shares depend on the per-share cap it was sent under; the journal records it, so
/// the engine restarts with a lower or a higher cap and replays every packet as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_share_cap_replays_every_packet_as_sent() {
    let clock = ManualClock::default();
    let dir = scratch("cap");
    let engine = start(&dir, &clock).unwrap();
    group_with_funds(&engine, GroupId(1), 10, Amount::yuan(2_000)).await;
    // 10 shares of up to 200 yuan: with any lower cap this split could not be drawn.
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(1_900), 10)).await.unwrap();
    let won = engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    stop(engine).await;
    for (i, cap) in [2_000, 20_000, 2_000_000].into_iter().enumerate() {
        let limits = Limits { share_fen_max: cap, ..Limits::default() };
        let engine = Engine::start(config(&dir, &clock, limits)).unwrap_or_else(|e| panic!("cap {cap}: {e}"));
        let view = engine.packet(PacketId(1)).await.unwrap();
        assert_eq!(view.claims[0].amount, won.amount, "cap {cap}");
        let next = engine.grab(PacketId(1), UserId(FIRST_MEMBER + 1 + i as u64)).await.unwrap();
        assert!(next.amount <= Amount::yuan(200), "cap {cap}: the packet keeps its own cap");
        assert_balanced(&engine).await;
        stop(engine).await;
        // The audit replays with any cap too: the packet's own is in its record.
        let audit = audit_journal(&dir, cap).unwrap();
        assert!(audit.is_ok(), "cap {cap}: {audit:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The segment header carries the format version: a version this build does not know is
/// refused by name; an older one is read, and new records go to a segment of the current
/// version, leaving the old one as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_format_version_is_checked_and_older_segments_are_left_as_written() {
    let clock = ManualClock::default();
    let dir = scratch("version");
    let (segment, _) = journal_of_deposits(&dir, &clock).await;
    assert_eq!(&std::fs::read(&segment).unwrap()[..8], b"HONGBAO3");

    rewrite(&segment, |b| b[7] = b'9');
    match start(&dir, &clock) {
        Err(StartError::Journal(JournalError::UnsupportedVersion { version: 9, segment: s })) => assert_eq!(s, segment),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started on a format it does not know"),
    }
    let refusal = audit_journal(&dir, 20_000).unwrap_err().to_string();
    assert!(refusal.contains("format version 9") && refusal.contains("versions 1 to 3"), "{refusal}");

    rewrite(&segment, |b| b[7] = b'1');
    let old = std::fs::read(&segment).unwrap();
    let engine = start(&dir, &clock).unwrap();
    engine.deposit(OpId(300), UserId(5), Amount::fen(4)).await.unwrap();
    stop(engine).await;
    assert_eq!(std::fs::read(&segment).unwrap(), old, "the version-1 segment is not written to");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hbj"))
        .collect();
    segments.sort();
    assert_eq!(segments.len(), 2);
    assert_eq!(&std::fs::read(&segments[1]).unwrap()[..8], b"HONGBAO3");
    let engine = start(&dir, &clock).unwrap();
    assert_eq!(engine.balance(UserId(5)).await.unwrap(), Amount::fen(10));
    stop(engine).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A journal of another kind (a replicated log) hands the engine its earlier records as a
/// `History`: the engine replays them as it recovers a file journal, and goes on from there;
/// records that contradict each other refuse the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_starts_from_the_history_of_another_journal() {
    let recording = Arc::new(hongbao::MemoryJournal::recording());
    let first = Engine::start(Config::default().with_seed(3).with_journal(recording.clone())).unwrap();
    let group = GroupId(1);
    group_with_funds(&first, group, 5, Amount::fen(1_000)).await;
    first.send_packet(lucky(7, group, Amount::fen(500), 3)).await.unwrap();
    let won = first.grab(PacketId(7), members(5)[0]).await.unwrap().amount;
    let before = first.balance(members(5)[0]).await.unwrap();
    stop(first).await;

    let records = recording.records();
    // Every record round-trips through its bytes, as another journal stores them.
    let decoded: Vec<_> = records.iter().map(|r| hongbao::Record::from_bytes(&r.to_bytes()).unwrap()).collect();
    assert_eq!(decoded, records);
    let next = Arc::new(hongbao::MemoryJournal::recording());
    let config = Config::default().with_seed(3).with_journal_history(next.clone(), Arc::new(decoded));
    let second = Engine::start(config).unwrap();
    assert_eq!(second.balance(members(5)[0]).await.unwrap(), before);
    // The grab is remembered: a second one answers with the first share, and writes nothing.
    let again = second.grab(PacketId(7), members(5)[0]).await.unwrap_err();
    assert!(matches!(again, hongbao::GrabError::AlreadyGrabbed { amount, .. } if amount == won), "{again:?}");
    second.grab(PacketId(7), members(5)[1]).await.unwrap();
    assert_balanced(&second).await;
    assert!(!next.records().is_empty(), "the new records go to the new journal");
    stop(second).await;

    // A history whose claim names a packet it never sent refuses the start.
    let orphan = records.iter().filter(|r| !matches!(r, hongbao::Record::PacketSent(_))).cloned().collect::<Vec<_>>();
    let refused = Engine::start(
        Config::default().with_journal_history(Arc::new(hongbao::MemoryJournal::new()), Arc::new(orphan)),
    );
    assert!(matches!(refused, Err(StartError::Recovery(_))), "{:?}", refused.err());
}
