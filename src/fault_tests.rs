//! Storage faults injected under the file journal (a full disk, a failing sync, a cut back that
//! fails), checked after a restart: nothing acknowledged is lost, nothing answered "nothing
//! changed" is found, and only "outcome unknown" may go either way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::journal::segment::{FaultPlan, Faults};
use crate::{
    Amount, Config, Durability, Engine, Failure, FileJournalConfig, Health, OpId, StorageFailure, UserId, WalletError,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-faults-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path, faults: Option<Faults>) -> Config {
    let mut journal = FileJournalConfig::new(dir, Durability::Sync);
    journal.faults = faults;
    Config { arbiters: 1, wallet_shards: 2, journal_dir: Some(journal), ..Config::default() }
}

/// Deposits of 1 fen each (op i to user i) sent at once, and how each was answered.
async fn deposit_storm(engine: &Engine, ops: std::ops::Range<u64>) -> BTreeMap<u64, Result<Amount, WalletError>> {
    let calls: Vec<_> = ops
        .map(|op| {
            let engine = engine.clone();
            tokio::spawn(async move { (op, engine.deposit(OpId(op), UserId(op), Amount::fen(1)).await) })
        })
        .collect();
    let mut answers = BTreeMap::new();
    for call in calls {
        let (op, answer) = call.await.unwrap();
        answers.insert(op, answer);
    }
    answers
}

/// After a restart without faults: every acknowledged deposit is there, every one refused
/// with `Unavailable` is not (its id is free for another user), and the money balances.
async fn check_after_restart(dir: &Path, answers: &BTreeMap<u64, Result<Amount, WalletError>>) -> (usize, usize) {
    let engine = Engine::start(config(dir, None)).unwrap();
    let deposits = engine.audit().await.unwrap().deposits;
    let (mut acknowledged, mut refused) = (0, 0);
    for (&op, answer) in answers {
        match answer {
            Ok(_) => {
                acknowledged += 1;
                assert_eq!(engine.deposit(OpId(op), UserId(op), Amount::fen(1)).await, Ok(Amount::fen(1)), "op {op}");
            }
            Err(WalletError::Unavailable) => {
                refused += 1;
                // Free: it was never applied, so another user may take it now.
                let other = UserId(1_000_000 + op);
                assert_eq!(engine.deposit(OpId(op), other, Amount::fen(2)).await, Ok(Amount::fen(2)), "op {op}");
            }
            Err(WalletError::OutcomeUnknown) => {}
            Err(e) => panic!("op {op}: {e}"),
        }
    }
    // The acknowledged retries changed nothing: only the re-used ids added money.
    let after = engine.audit().await.unwrap();
    assert!(after.is_balanced(), "{after:?}");
    assert_eq!(after.deposits.as_fen(), deposits.as_fen() + 2 * refused as u64);
    engine.shutdown().await;
    (acknowledged, refused)
}

/// A full disk in the middle of a batch: the frames that fit are written, then the write
/// fails. They are cut back, so their callers' "nothing changed" is true after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_cuts_the_failed_batch_back() {
    let dir = scratch("full");
    let faults: Faults = Arc::default();
    let engine = Engine::start(config(&dir, Some(Arc::clone(&faults)))).unwrap();
    let before = deposit_storm(&engine, 0..50).await;
    assert!(before.values().all(Result::is_ok));
    // Room for about thirty more deposit frames (65 bytes each): ten one by one, then a storm
    // whose first batch is larger than the room left, so that whole frames land before the
    // write fails.
    faults.lock().space_left_bytes = Some(2_000);
    let mut during = BTreeMap::new();
    for op in 50..60 {
        during.extend(deposit_storm(&engine, op..op + 1).await);
    }
    assert!(during.values().all(Result::is_ok));
    during.extend(deposit_storm(&engine, 60..400).await);
    assert_eq!(engine.health(), Health::Failed { failure: Failure::Storage(StorageFailure::CutBack) });
    assert!(during.values().any(|a| a == &Err(WalletError::Unavailable)), "{during:?}");
    assert!(!during.values().any(|a| a == &Err(WalletError::OutcomeUnknown)), "a cut back proves every outcome");
    assert_eq!(engine.deposit(OpId(999), UserId(1), Amount::fen(1)).await, Err(WalletError::Unavailable));
    drop(engine);
    let mut answers = before;
    answers.extend(during);
    let (acknowledged, refused) = check_after_restart(&dir, &answers).await;
    assert!(acknowledged >= 60 && refused > 0, "{acknowledged} acknowledged, {refused} refused");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sync that fails is final, and what it was making durable is unknown: those callers hear
/// `OutcomeUnknown`, later ones `Unavailable`, and a restart finds every acknowledged change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_leaves_the_outcome_unknown() {
    let dir = scratch("sync");
    let faults: Faults = Arc::default();
    let engine = Engine::start(config(&dir, Some(Arc::clone(&faults)))).unwrap();
    let mut answers = deposit_storm(&engine, 0..20).await;
    faults.lock().fail_sync = true;
    let during = deposit_storm(&engine, 20..100).await;
    assert_eq!(engine.health(), Health::Failed { failure: Failure::Storage(StorageFailure::OutcomeUnknown) });
    assert!(during.values().any(|a| a == &Err(WalletError::OutcomeUnknown)), "{during:?}");
    assert!(during.values().all(|a| a.is_err()), "nothing is acknowledged after a failed sync");
    answers.extend(during);
    drop(engine);
    check_after_restart(&dir, &answers).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failed write whose cut back fails too cannot prove anything: `OutcomeUnknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cut_back_leaves_the_outcome_unknown() {
    let dir = scratch("cut");
    let faults: Faults = Arc::default();
    let engine = Engine::start(config(&dir, Some(Arc::clone(&faults)))).unwrap();
    let mut answers = deposit_storm(&engine, 0..20).await;
    *faults.lock() = FaultPlan { space_left_bytes: Some(500), fail_cut: true, ..FaultPlan::default() };
    let during = deposit_storm(&engine, 20..200).await;
    assert_eq!(engine.health(), Health::Failed { failure: Failure::Storage(StorageFailure::OutcomeUnknown) });
    assert!(during.values().any(|a| a == &Err(WalletError::OutcomeUnknown)), "{during:?}");
    answers.extend(during);
    drop(engine);
    check_after_restart(&dir, &answers).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
