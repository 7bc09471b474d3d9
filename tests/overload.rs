//! Overload: a full packet mailbox answers `Busy` at once, never queues without bound, and
//! never drops an accepted grab. Deterministic: a journal that holds the packet actor inside
//! its first claim lets the test fill the mailbox while nothing drains it.

mod common;

use std::sync::Arc;
use std::task::Poll;

use common::*;
use hongbao::{Amount, Config, Engine, GrabError, GroupId, Limits, ManualClock, PacketId, Record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mailbox_answers_busy_and_every_accepted_grab_is_paid() {
    const CAPACITY: usize = 8;
    const BURST: u64 = 200;
    let (journal, entered_rx) = GatedJournal::new(|r| matches!(r, Record::Claim { .. }), false);
    let limits = Limits { packet_mailbox_capacity: CAPACITY, ..Limits::default() };
    let config = Config { arbiters: 1, wallet_shards: 1, ..Config::default() }
        .with_limits(limits)
        .with_clock(Arc::new(ManualClock::default()))
        .with_journal(journal.clone())
        .with_seed(41);
    let engine = Engine::start(config).unwrap();
    let group = GroupId(1);
    group_with_funds(&engine, group, BURST + 1, Amount::yuan(100)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(100), 1_000)).await.unwrap();

    // The first grab holds the actor inside its claim.
    journal.arm();
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.grab(PacketId(1), common::members(1)[0]).await }
    });
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap()).await.unwrap();

    // Now nothing drains the mailbox: each grab is either queued (pending) or refused at once.
    let mut queued = Vec::new();
    let mut busy = Vec::new();
    for user in common::members(BURST + 1).into_iter().skip(1) {
        let mut grab = Box::pin({
            let engine = engine.clone();
            async move { (user, engine.grab(PacketId(1), user).await) }
        });
        match futures::poll!(grab.as_mut()) {
            Poll::Ready((user, Err(GrabError::Busy))) => busy.push(user),
            Poll::Ready(other) => panic!("unexpected reply while the actor is held: {other:?}"),
            Poll::Pending => queued.push(grab),
        }
    }
    // actix admits one message past the capacity per sender; the bound holds either way.
    assert!(queued.len() <= CAPACITY + 1, "{} queued with capacity {CAPACITY}", queued.len());
    assert_eq!(queued.len() + busy.len(), BURST as usize);
    assert!(!busy.is_empty());

    journal.release();
    let first = first.await.unwrap().unwrap();
    assert_eq!(engine.balance(first.user).await.unwrap(), first.amount);
    for grab in queued {
        let (user, reply) = grab.await;
        let won = reply.expect("an accepted grab is answered");
        assert_eq!(engine.balance(user).await.unwrap(), won.amount);
    }
    for user in busy {
        assert_eq!(engine.balance(user).await.unwrap(), Amount::ZERO, "a refused grab took nothing");
    }
    assert_balanced(&engine).await;
    engine.shutdown().await;
}
