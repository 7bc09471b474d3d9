//! Transfers (rules 13, 14, 15, 17, 20): every status path and every refusal through the public
//! API, each refusal leaving balances as they were; the events of each move; and the races
//! between a deadline and a request, or between two requests, over many seeds on a
//! multi-thread runtime. Deadlines move on a manual clock; no test sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{FutureExt, StreamExt};
use hongbao::journal::Completion;
use hongbao::{
    Amount, Arrival, Config, CoolingOff, Engine, Event, Journal, Limits, MemoryJournal, NewTransfer, OpId, Record,
    StorageFailure, TransferError, TransferId, TransferOutcome, TransferStatus, UserId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;

const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);

fn rent(id: u64, amount: Amount, arrival: Arrival) -> NewTransfer {
    NewTransfer { org: None, id: TransferId(id), from: ALICE, to: BOB, amount, arrival, note: "房租".into() }
}

/// Alice's and Bob's balances.
async fn balances(engine: &Engine) -> (Amount, Amount) {
    (engine.balance(ALICE).await.unwrap(), engine.balance(BOB).await.unwrap())
}

async fn funded(seed: u64, limits: Limits) -> Setup {
    let setup = start_with(limits, seed);
    setup.engine.deposit(OpId(1), ALICE, Amount::yuan(1_000)).await.unwrap();
    setup
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instant_transfer_is_accepted_or_declined_once() {
    let Setup { engine, .. } = funded(1, Limits::default()).await;
    let view = engine.transfer(rent(9, Amount::yuan(300), Arrival::Instant)).await.unwrap();
    assert_eq!(view.status, TransferStatus::AwaitingAcceptance { until: view.sent_at.plus_secs(DAY) });
    assert_eq!((view.arrives_at, view.cooling_until), (view.sent_at, view.sent_at));
    assert_eq!(balances(&engine).await, (Amount::yuan(700), Amount::ZERO));
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.pending, audit.transfers_pending), (Amount::yuan(300), 1));
    assert!(audit.is_balanced(), "{audit:?}");

    let accepted = engine.accept_transfer(TransferId(9), BOB).await.unwrap();
    assert_eq!(accepted.status, TransferStatus::Accepted);
    assert!(accepted.settled_at.is_some());
    assert_eq!(balances(&engine).await, (Amount::yuan(700), Amount::yuan(300)));
    let accepted_again = TransferError::AlreadySettled { status: TransferStatus::Accepted };
    assert_eq!(engine.accept_transfer(TransferId(9), BOB).await, Err(accepted_again));
    let late = TransferError::TooLate { status: TransferStatus::Accepted };
    assert_eq!(engine.decline_transfer(TransferId(9), BOB).await, Err(late.clone()));
    assert_eq!(engine.recall_transfer(TransferId(9), ALICE).await, Err(late));

    engine.transfer(rent(10, Amount::yuan(100), Arrival::Instant)).await.unwrap();
    let declined = engine.decline_transfer(TransferId(10), BOB).await.unwrap();
    assert_eq!(declined.status, TransferStatus::Declined);
    assert_eq!(balances(&engine).await, (Amount::yuan(700), Amount::yuan(300)));
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.pending, audit.transfers_pending, audit.transfers_settled), (Amount::ZERO, 0, 2));
    assert!(audit.is_balanced(), "{audit:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_transfer_is_recalled_or_arrives_and_then_returns_unaccepted() {
    let Setup { engine, clock } = funded(2, Limits::default()).await;
    let two_hours = Arrival::Delayed { secs: 2 * HOUR };
    let view = engine.transfer(rent(1, Amount::yuan(100), two_hours)).await.unwrap();
    let arrives_at = view.sent_at.plus_secs(2 * HOUR);
    assert_eq!(view.status, TransferStatus::InTransit { arrives_at });
    assert_eq!(view.accept_until, arrives_at.plus_secs(DAY));
    assert_eq!(engine.accept_transfer(TransferId(1), BOB).await, Err(TransferError::NotArrived { arrives_at }));
    assert_eq!(engine.recall_transfer(TransferId(1), BOB).await, Err(TransferError::NotSender));
    let recalled = engine.recall_transfer(TransferId(1), ALICE).await.unwrap();
    assert_eq!(recalled.status, TransferStatus::Recalled);
    assert_eq!(balances(&engine).await, (Amount::yuan(1_000), Amount::ZERO));
    let again = TransferError::AlreadySettled { status: TransferStatus::Recalled };
    assert_eq!(engine.recall_transfer(TransferId(1), ALICE).await, Err(again));

    let day = Arrival::Delayed { secs: DAY };
    let sent = engine.transfer(rent(2, Amount::yuan(100), day)).await.unwrap();
    // One millisecond before arrival nothing moves; at arrival the sender can no longer recall.
    clock.advance(secs(DAY) - Duration::from_millis(1));
    engine.run_due().await.unwrap();
    assert!(matches!(engine.transfer_view(TransferId(2)).await.unwrap().status, TransferStatus::InTransit { .. }));
    clock.advance(Duration::from_millis(1));
    engine.run_due().await.unwrap();
    let awaiting = TransferStatus::AwaitingAcceptance { until: sent.accept_until };
    assert_eq!(engine.transfer_view(TransferId(2)).await.unwrap().status, awaiting);
    assert_eq!(engine.recall_transfer(TransferId(2), ALICE).await, Err(TransferError::TooLate { status: awaiting }));
    assert_eq!(engine.accept_transfer(TransferId(2), ALICE).await, Err(TransferError::NotReceiver));
    // Nobody accepts within a day: it returns, once.
    clock.advance(secs(DAY));
    engine.run_due().await.unwrap();
    let view = engine.transfer_view(TransferId(2)).await.unwrap();
    assert_eq!(view.status, TransferStatus::Returned);
    let returned = TransferError::TooLate { status: TransferStatus::Returned };
    assert_eq!(engine.accept_transfer(TransferId(2), BOB).await, Err(returned));
    clock.advance(secs(DAY));
    engine.run_due().await.unwrap();
    assert_eq!(balances(&engine).await, (Amount::yuan(1_000), Amount::ZERO));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_moves_transfers_by_itself() {
    let Setup { engine, clock } = funded(3, Limits::default()).await;
    let mut events = engine.subscribe().unwrap();
    engine.transfer(rent(1, Amount::yuan(5), Arrival::Delayed { secs: 2 * HOUR })).await.unwrap();
    clock.advance(secs(2 * HOUR + DAY));
    // No `run_due`: the timer arrives the transfer and then returns it.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap().unwrap().unwrap();
        seen.push(event);
    }
    assert!(matches!(seen[0], Event::TransferSent { status: TransferStatus::InTransit { .. }, .. }), "{seen:?}");
    assert!(matches!(seen[1], Event::TransferArrived { to: BOB, .. }), "{seen:?}");
    let settled = &seen[2];
    assert!(matches!(settled, Event::TransferSettled { outcome: TransferOutcome::Returned, .. }), "{seen:?}");
    assert_eq!(settled.parties(), vec![ALICE, BOB]);
    assert_eq!(settled.transfer(), Some(TransferId(1)));
    engine.run_due().await.unwrap();
    assert_eq!(balances(&engine).await, (Amount::yuan(1_000), Amount::ZERO));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooling_off_holds_a_transfer_and_the_delay_counts_from_its_end() {
    let Setup { engine, clock } = funded(4, Limits::default()).await;
    let setting = CoolingOff { threshold: Amount::yuan(200), secs: 300 };
    engine.set_cooling_off(ALICE, setting).await.unwrap();
    assert_eq!(engine.usage(ALICE).await.unwrap().cooling_off, setting);
    // At the threshold: not held.
    let view = engine.transfer(rent(1, Amount::yuan(200), Arrival::Instant)).await.unwrap();
    assert!(matches!(view.status, TransferStatus::AwaitingAcceptance { .. }));
    // Above it: held, then in transit, then arrived.
    let view = engine.transfer(rent(2, Amount::yuan(201), Arrival::Delayed { secs: 2 * HOUR })).await.unwrap();
    let until = view.sent_at.plus_secs(300);
    assert_eq!(view.status, TransferStatus::CoolingOff { until });
    assert_eq!(view.arrives_at, until.plus_secs(2 * HOUR));
    clock.advance(secs(300));
    engine.run_due().await.unwrap();
    let status = engine.transfer_view(TransferId(2)).await.unwrap().status;
    assert_eq!(status, TransferStatus::InTransit { arrives_at: until.plus_secs(2 * HOUR) });
    // An instant transfer above it is held too, and recallable while held.
    let view = engine.transfer(rent(3, Amount::yuan(300), Arrival::Instant)).await.unwrap();
    assert!(matches!(view.status, TransferStatus::CoolingOff { .. }));
    engine.recall_transfer(TransferId(3), ALICE).await.unwrap();
    engine.set_cooling_off(ALICE, CoolingOff { threshold: Amount::ZERO, secs: 0 }).await.unwrap();
    let view = engine.transfer(rent(4, Amount::yuan(201), Arrival::Instant)).await.unwrap();
    assert!(matches!(view.status, TransferStatus::AwaitingAcceptance { .. }));
    let too_long = CoolingOff { threshold: Amount::ZERO, secs: DAY + 1 };
    assert!(matches!(
        engine.set_cooling_off(ALICE, too_long).await,
        Err(hongbao::EngineError::CoolingOffTooLong { secs: 86_401, max_secs: 86_400 })
    ));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_what_refused_and_change_nothing() {
    let limits = Limits { pending_transfers_max: 2, ..Limits::default() };
    let Setup { engine, .. } = funded(5, limits).await;
    let sent = engine.transfer(rent(1, Amount::yuan(10), Arrival::Instant)).await.unwrap();
    let before = (balances(&engine).await, engine.audit().await.unwrap());
    let note = "x".repeat(257);
    let cases: Vec<(NewTransfer, TransferError)> = vec![
        (rent(2, Amount::ZERO, Arrival::Instant), TransferError::ZeroAmount),
        (rent(2, Amount::fen(5_000_001), Arrival::Instant), TransferError::OverLimit { max: Amount::yuan(50_000) }),
        (NewTransfer { org: None, to: ALICE, ..rent(2, Amount::yuan(1), Arrival::Instant) }, TransferError::ToSelf),
        (
            rent(2, Amount::yuan(1), Arrival::Delayed { secs: 0 }),
            TransferError::InvalidDelay { secs: 0, max_secs: DAY },
        ),
        (
            rent(2, Amount::yuan(1), Arrival::Delayed { secs: DAY + 1 }),
            TransferError::InvalidDelay { secs: DAY + 1, max_secs: DAY },
        ),
        (
            NewTransfer { org: None, note, ..rent(2, Amount::yuan(1), Arrival::Instant) },
            TransferError::NoteTooLong { bytes: 257, max: 256 },
        ),
        (
            rent(2, Amount::yuan(991), Arrival::Instant),
            TransferError::InsufficientFunds { balance: Amount::yuan(990), needed: Amount::yuan(991) },
        ),
        (rent(1, Amount::yuan(11), Arrival::Instant), TransferError::IdConflict { transfer: TransferId(1) }),
    ];
    for (spec, refusal) in cases {
        assert_eq!(engine.transfer(spec.clone()).await, Err(refusal), "{spec:?}");
    }
    assert_eq!(engine.transfer_view(TransferId(77)).await, Err(TransferError::UnknownTransfer));
    assert_eq!(engine.accept_transfer(TransferId(77), BOB).await, Err(TransferError::UnknownTransfer));
    // A retry with the same fields is the same transfer, debited once.
    assert_eq!(engine.transfer(rent(1, Amount::yuan(10), Arrival::Instant)).await.unwrap(), sent);
    assert_eq!((balances(&engine).await, engine.audit().await.unwrap()), before);
    // At most `pending_transfers_max` pending; settling one frees its place.
    engine.transfer(rent(2, Amount::yuan(1), Arrival::Instant)).await.unwrap();
    let full = TransferError::TooManyPending { max: 2 };
    assert_eq!(engine.transfer(rent(3, Amount::yuan(1), Arrival::Instant)).await, Err(full));
    engine.decline_transfer(TransferId(2), BOB).await.unwrap();
    engine.transfer(rent(3, Amount::yuan(1), Arrival::Instant)).await.unwrap();
    assert_balanced(&engine).await;
    engine.shutdown().await;
    let stopped = engine.transfer(rent(4, Amount::yuan(1), Arrival::Instant)).await;
    assert_eq!(stopped, Err(TransferError::ShuttingDown));
}

/// Races between two requests, and between a request and a deadline, end in one outcome that
/// every caller hears; the money moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_resolve_to_one_outcome_that_every_caller_hears() {
    let seeds: u64 = std::env::var("HONGBAO_RACE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let Setup { engine, clock } = funded(seed, Limits::default()).await;
        let engine = Arc::new(engine);
        let amount = Amount::fen(rng.random_range(1..=10_000));
        let case = rng.random_range(0..3);
        let arrival = if case == 0 { Arrival::Delayed { secs: 2 * HOUR } } else { Arrival::Instant };
        let sent = engine.transfer(rent(1, amount, arrival)).await.unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
        let first = tokio::spawn(async move {
            b.wait().await;
            match case {
                0 => e.recall_transfer(TransferId(1), ALICE).await,
                _ => e.accept_transfer(TransferId(1), BOB).await,
            }
        });
        let (e, b, c) = (Arc::clone(&engine), Arc::clone(&barrier), clock.clone());
        let second = tokio::spawn(async move {
            b.wait().await;
            match case {
                // The arrival deadline, or the end of acceptance, passes as the request runs.
                0 => {
                    c.set(sent.arrives_at);
                    e.run_due().await.unwrap();
                    None
                }
                1 => {
                    c.set(sent.accept_until);
                    e.run_due().await.unwrap();
                    None
                }
                _ => Some(e.decline_transfer(TransferId(1), BOB).await),
            }
        });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        engine.run_due().await.unwrap();
        let status = engine.transfer_view(TransferId(1)).await.unwrap().status;
        // Whoever lost heard the winner's outcome.
        let heard = |r: &Result<hongbao::TransferView, TransferError>| match r {
            Ok(view) => view.status,
            Err(TransferError::TooLate { status }) => *status,
            Err(e) => panic!("seed {seed}: {e:?}"),
        };
        let winners = [Some(&first), second.as_ref()].into_iter().flatten().filter(|r| r.is_ok()).count();
        assert!(winners <= 1, "seed {seed}: two winners");
        assert_eq!(heard(&first), status, "seed {seed}");
        if let Some(second) = &second {
            assert_eq!(heard(second), status, "seed {seed}");
        }
        let (alice, bob) = balances(&engine).await;
        let to_bob = if status == TransferStatus::Accepted { amount } else { Amount::ZERO };
        match status {
            TransferStatus::Accepted
            | TransferStatus::Declined
            | TransferStatus::Recalled
            | TransferStatus::Returned => {}
            // The recall lost to the arrival: the transfer waits for Bob.
            TransferStatus::AwaitingAcceptance { .. } => assert_eq!(case, 0, "seed {seed}"),
            other => panic!("seed {seed}: {other:?}"),
        }
        let pending = if matches!(status, TransferStatus::AwaitingAcceptance { .. }) { amount } else { Amount::ZERO };
        assert_eq!(bob, to_bob, "seed {seed}");
        assert_eq!(alice.as_fen() + pending.as_fen() + bob.as_fen(), 100_000, "seed {seed}");
        if std::env::var_os("HONGBAO_RACE_TRACE").is_some() {
            println!("seed {seed} case {case}: {status:?}");
        }
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tell_both_parties_of_every_move() {
    let Setup { engine, .. } = funded(6, Limits::default()).await;
    let mut events = engine.subscribe().unwrap();
    engine.transfer(rent(1, Amount::yuan(3), Arrival::Instant)).await.unwrap();
    engine.accept_transfer(TransferId(1), BOB).await.unwrap();
    engine.transfer(rent(2, Amount::yuan(3), Arrival::Delayed { secs: HOUR })).await.unwrap();
    engine.recall_transfer(TransferId(2), ALICE).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap().unwrap().unwrap());
    }
    let kinds: Vec<(Option<TransferId>, &str)> = seen
        .iter()
        .map(|e| {
            let kind = match e {
                Event::TransferSent { .. } => "sent",
                Event::TransferArrived { .. } => "arrived",
                Event::TransferSettled { outcome: TransferOutcome::Accepted, .. } => "accepted",
                Event::TransferSettled { outcome: TransferOutcome::Recalled, .. } => "recalled",
                other => panic!("{other:?}"),
            };
            (e.transfer(), kind)
        })
        .collect();
    let (one, two) = (Some(TransferId(1)), Some(TransferId(2)));
    assert_eq!(kinds, vec![(one, "sent"), (one, "arrived"), (one, "accepted"), (two, "sent"), (two, "recalled")]);
    assert!(seen.iter().all(|e| e.parties() == vec![ALICE, BOB] && e.group().is_none()), "{seen:?}");
    engine.shutdown().await;
}

/// A full mailbox answers `Busy` at once and the refused transfer never exists; the queued ones
/// complete. Deterministic: one arbiter hosts the wallet and transfer shards, and the first
/// transfer's record is held inside its append, so nothing on that arbiter runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_answers_busy_and_changes_nothing() {
    let (journal, entered) = GatedJournal::new(|r| matches!(r, Record::TransferSent(_)), false);
    let limits = Limits { wallet_mailbox_capacity: 4, ..Limits::default() };
    let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }
        .with_limits(limits)
        .with_journal(journal.clone())
        .with_seed(3);
    let engine = Engine::start(config).unwrap();
    engine.deposit(OpId(1), ALICE, Amount::yuan(100)).await.unwrap();
    journal.arm();
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.transfer(rent(1, Amount::yuan(1), Arrival::Instant)).await }
    });
    entered.recv_timeout(Duration::from_secs(30)).expect("the first transfer's record is held");
    let (mut queued, mut busy) = (Vec::new(), Vec::new());
    for id in 2..64 {
        // One poll: the request is either queued (pending) or refused at once.
        match engine.transfer(rent(id, Amount::yuan(1), Arrival::Instant)).now_or_never() {
            None => queued.push(id),
            Some(Err(TransferError::Busy)) => busy.push(id),
            Some(other) => panic!("transfer {id}: {other:?}"),
        }
    }
    assert!(!busy.is_empty() && !queued.is_empty(), "queued {queued:?}, busy {busy:?}");
    journal.release();
    first.await.unwrap().unwrap();
    engine.run_due().await.unwrap();
    for id in &queued {
        assert!(engine.transfer_view(TransferId(*id)).await.is_ok(), "queued transfer {id} completes");
    }
    for id in &busy {
        assert_eq!(engine.transfer_view(TransferId(*id)).await, Err(TransferError::UnknownTransfer));
    }
    let sent = 1 + queued.len() as u64;
    assert_eq!(engine.balance(ALICE).await.unwrap(), Amount::yuan(100 - sent));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

/// A journal that reports a failure once told to: the engine stops answering.
struct FailedJournal {
    inner: MemoryJournal,
    failed: std::sync::atomic::AtomicBool,
}

impl Journal for FailedJournal {
    fn append(&self, record: Record, then: Completion) {
        self.inner.append(record, then);
    }

    fn barrier(&self, then: Completion) {
        self.inner.barrier(then);
    }

    fn flush(&self) {}

    fn failure(&self) -> Option<StorageFailure> {
        self.failed.load(std::sync::atomic::Ordering::Acquire).then_some(StorageFailure::CutBack)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_engine_answers_unavailable() {
    let journal = Arc::new(FailedJournal { inner: MemoryJournal::new(), failed: false.into() });
    let engine = Engine::start(Config::default().with_journal(journal.clone())).unwrap();
    engine.deposit(OpId(1), ALICE, Amount::yuan(100)).await.unwrap();
    engine.transfer(rent(1, Amount::yuan(1), Arrival::Instant)).await.unwrap();
    journal.failed.store(true, std::sync::atomic::Ordering::Release);
    let unavailable = Err(TransferError::Unavailable);
    assert_eq!(engine.transfer(rent(2, Amount::yuan(1), Arrival::Instant)).await, unavailable);
    assert_eq!(engine.accept_transfer(TransferId(1), BOB).await, unavailable);
    assert_eq!(engine.transfer_view(TransferId(1)).await, unavailable);
    assert_eq!(engine.cancel_packet(hongbao::PacketId(1), ALICE).await, Err(hongbao::CancelError::Unavailable));
}

/// Sends of the same ids from different senders, all at once, into wallet mailboxes that are
/// mostly full: whatever is refused `Busy` changes nothing, each id is debited once, for the
/// one send that heard `Ok`, and the pending count stays exact (every transfer can still be
/// settled, and new ones sent, afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_id_sends_under_overload_debit_once() {
    const USERS: u64 = 8;
    const IDS: u64 = 4;
    let seeds: u64 = std::env::var("HONGBAO_RACE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    for seed in 0..seeds {
        let limits = Limits { wallet_mailbox_capacity: 1, pending_transfers_max: IDS as usize, ..Limits::default() };
        let config = Config { arbiters: 2, wallet_shards: 2, ..Config::default() }.with_limits(limits).with_seed(seed);
        let engine = Engine::start(config).unwrap();
        for u in 1..=USERS {
            engine.deposit(OpId(u), UserId(u), Amount::yuan(10)).await.unwrap();
        }
        let tasks: Vec<_> = (0..600u64)
            .map(|k| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let from = UserId((k + seed) % USERS + 1);
                    if k % 3 == 0 {
                        // Balance reads keep the wallet mailboxes full.
                        let _ = engine.balance(from).await;
                        return None;
                    }
                    let to = UserId(from.0 % USERS + 1);
                    let spec = NewTransfer {
                        org: None,
                        id: TransferId(k % IDS),
                        from,
                        to,
                        amount: Amount::fen(1),
                        arrival: Arrival::Instant,
                        note: String::new(),
                    };
                    Some((spec.clone(), engine.transfer(spec).await))
                })
            })
            .collect();
        let mut heard: std::collections::HashMap<u64, UserId> = std::collections::HashMap::new();
        for t in tasks {
            match t.await.unwrap() {
                Some((spec, Ok(view))) => {
                    assert_eq!(view.from, spec.from, "seed {seed}");
                    let first = *heard.entry(spec.id.0).or_insert(spec.from);
                    assert_eq!(first, spec.from, "seed {seed}: transfer {} sent by two senders", spec.id);
                }
                Some((_, Err(TransferError::Busy | TransferError::IdConflict { .. }))) | None => {}
                Some((spec, Err(e))) => panic!("seed {seed}: {spec:?}: {e:?}"),
            }
        }
        let audit = engine.audit().await.unwrap();
        assert!(audit.is_balanced(), "seed {seed}: {audit:?}");
        assert_eq!(audit.transfers_pending, heard.len(), "seed {seed}");
        for (&id, &from) in &heard {
            let view = engine.transfer_view(TransferId(id)).await.unwrap();
            assert_eq!(view.from, from, "seed {seed}");
            engine.accept_transfer(TransferId(id), view.to).await.unwrap();
        }
        let audit = engine.audit().await.unwrap();
        assert_eq!((audit.transfers_pending, audit.transfers_settled), (0, heard.len()), "seed {seed}");
        // The pending count is exact: the limit still admits new transfers.
        let fresh = rent(1_000, Amount::fen(1), Arrival::Instant);
        assert!(
            engine.transfer(NewTransfer { org: None, from: UserId(1), to: UserId(2), ..fresh }).await.is_ok(),
            "seed {seed}"
        );
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
}

/// A receiver who accepts the moment the arrival event reaches them finds the transfer: its
/// events go out only once it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_acting_on_the_event_finds_the_transfer() {
    let Setup { engine, .. } = funded(7, Limits::default()).await;
    let mut events = engine.subscribe().unwrap();
    for id in 0..50 {
        let sender = engine.clone();
        let sent = tokio::spawn(async move { sender.transfer(rent(id, Amount::fen(1), Arrival::Instant)).await });
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), events.next()).await.unwrap().unwrap().unwrap();
            if let Event::TransferArrived { transfer, to, .. } = event {
                assert_eq!(transfer, TransferId(id));
                engine.accept_transfer(transfer, to).await.unwrap();
                break;
            }
        }
        sent.await.unwrap().unwrap();
    }
    assert_eq!(engine.balance(BOB).await.unwrap(), Amount::fen(50));
    engine.shutdown().await;
}
