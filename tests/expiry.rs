//! Expiry with the manual clock: the remainder goes back to the sender exactly once, later
//! grabs get `Expired`, and grabs racing the expiry either win (and are not refunded) or get
//! `Expired`, never both. No test sleeps: the clock jumps and the engine is asked to settle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hongbao::{Amount, Event, GrabError, GroupId, PacketId, PacketStatus, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remainder_is_refunded_exactly_once() {
    let Setup { engine, clock } = start(21);
    let group = GroupId(1);
    group_with_funds(&engine, group, 100, Amount::yuan(100)).await;
    engine.send_packet(lucky(1, group, Amount::yuan(100), 100)).await.unwrap();
    let mut won = 0;
    for u in members(30) {
        won += engine.grab(PacketId(1), u).await.unwrap().amount.as_fen();
    }
    // One millisecond before the deadline nothing happens.
    clock.advance(DAY - Duration::from_millis(1));
    engine.run_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Open);
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::ZERO);

    clock.advance(Duration::from_millis(1));
    engine.run_due().await.unwrap();
    let refund = Amount::fen(10_000 - won);
    assert_eq!(engine.balance(SENDER).await.unwrap(), refund);
    let view = engine.packet(PacketId(1)).await.unwrap();
    assert_eq!(view.status, PacketStatus::Expired { refunded: refund });
    assert_eq!(view.claims.len(), 30);
    assert_eq!(view.remaining, Amount::ZERO);

    // Later grabs: new members get Expired, winners get their first result.
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER + 50)).await, Err(GrabError::Expired));
    let first = view.claims[0];
    assert_eq!(
        engine.grab(PacketId(1), first.user).await,
        Err(GrabError::AlreadyGrabbed { amount: first.amount, position: 1 })
    );
    // Expiring again, and a day later, refunds nothing more.
    engine.run_due().await.unwrap();
    clock.advance(DAY);
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), refund);
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_fires_by_itself_when_the_clock_moves() {
    let Setup { engine, clock } = start(22);
    let group = GroupId(1);
    group_with_funds(&engine, group, 10, Amount::yuan(10)).await;
    let mut events = engine.subscribe().unwrap();
    engine.send_packet(lucky(9, group, Amount::yuan(10), 10)).await.unwrap();
    clock.advance(DAY);
    // No run_due: the timer must notice the clock by itself. The timeout only bounds a
    // broken run; the expected path waits for no wall-clock time.
    let expired = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::Expired { packet, refunded, sender, .. } = events.recv().await.unwrap() {
                return (packet, refunded, sender);
            }
        }
    })
    .await
    .expect("the timer expired the packet");
    assert_eq!(expired, (PacketId(9), Amount::yuan(10), SENDER));
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(10));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grabs_racing_expiry_win_or_get_expired_never_both() {
    for seed in 0..10u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let Setup { engine, clock } = start(seed);
        let group = GroupId(2);
        group_with_funds(&engine, group, 300, Amount::yuan(300)).await;
        engine.send_packet(lucky(7, group, Amount::yuan(300), 300)).await.unwrap();
        let members = members(300);
        let advance_after = rng.random_range(0..300usize);
        let barrier = Arc::new(Barrier::new(members.len() + 1));
        let grabs: Vec<_> = members
            .iter()
            .map(|&u| {
                let (engine, barrier) = (engine.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    (u, engine.grab(PacketId(7), u).await)
                })
            })
            .collect();
        barrier.wait().await;
        for _ in 0..advance_after {
            tokio::task::yield_now().await;
        }
        clock.advance(DAY);
        engine.run_due().await.unwrap();
        let mut won = 0u64;
        for g in grabs {
            let (user, reply) = g.await.unwrap();
            match reply {
                Ok(grabbed) => {
                    won += grabbed.amount.as_fen();
                    assert_eq!(engine.balance(user).await.unwrap(), grabbed.amount, "seed {seed}");
                }
                Err(GrabError::Expired) => assert_eq!(engine.balance(user).await.unwrap(), Amount::ZERO, "seed {seed}"),
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
        }
        let view = engine.packet(PacketId(7)).await.unwrap();
        let refunded = match view.status {
            PacketStatus::Expired { refunded } => refunded.as_fen(),
            PacketStatus::SoldOut => 0,
            other => panic!("seed {seed}: {other:?} after expiry"),
        };
        assert_eq!(won + refunded, 30_000, "seed {seed}: winners plus refund is the total");
        assert_eq!(engine.balance(SENDER).await.unwrap().as_fen(), refunded, "seed {seed}");
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grab_after_the_deadline_never_wins_even_before_the_timer_runs() {
    let Setup { engine, clock } = start(23);
    let group = GroupId(1);
    group_with_funds(&engine, group, 10, Amount::yuan(10)).await;
    engine.send_packet(lucky(3, group, Amount::yuan(10), 10)).await.unwrap();
    clock.advance(DAY);
    // Whether the timer got there first or the packet notices on this grab, the answer is
    // the same and the refund happens once.
    assert_eq!(engine.grab(PacketId(3), UserId(FIRST_MEMBER)).await, Err(GrabError::Expired));
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(10));
    assert_eq!(engine.balance(UserId(FIRST_MEMBER)).await.unwrap(), Amount::ZERO);
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_packet_refunds_nothing_at_expiry() {
    let Setup { engine, clock } = start(24);
    let group = GroupId(1);
    group_with_funds(&engine, group, 10, Amount::yuan(1)).await;
    engine.send_packet(lucky(4, group, Amount::yuan(1), 2)).await.unwrap();
    for u in members(2) {
        engine.grab(PacketId(4), u).await.unwrap();
    }
    clock.advance(DAY);
    engine.run_due().await.unwrap();
    let view = engine.packet(PacketId(4)).await.unwrap();
    assert_eq!(view.status, PacketStatus::SoldOut);
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::ZERO);
    assert_eq!(engine.grab(PacketId(4), UserId(FIRST_MEMBER + 5)).await, Err(GrabError::SoldOut));
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!((audit.packets_live, audit.packets_closed), (0, 1));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_packets_expire_in_one_sweep() {
    let Setup { engine, clock } = start(25);
    let group = GroupId(1);
    group_with_funds(&engine, group, 10, Amount::yuan(5_000)).await;
    for id in 0..5_000 {
        engine.send_packet(lucky(100 + id, group, Amount::yuan(1), 3)).await.unwrap();
    }
    engine.grab(PacketId(100), UserId(FIRST_MEMBER)).await.unwrap();
    clock.advance(DAY);
    // The timer may have closed some of them already; the call still waits for all.
    assert!(engine.run_due().await.unwrap() <= 5_000);
    let won = engine.balance(UserId(FIRST_MEMBER)).await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap().as_fen(), 500_000 - won.as_fen());
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!(audit.packets_closed, 5_000);
    engine.shutdown().await;
}
