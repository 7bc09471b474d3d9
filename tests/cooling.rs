//! Cooling-off (rule 16): a send above the sender's threshold is held, nobody can grab it, the
//! sender may cancel it (forbid claiming) and get the whole total back at once; at the end of
//! the window it opens, once, and its expiry counts from then. Races between the end of the
//! window and a cancel or a grab end in one outcome. Deadlines move on a manual clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use hongbao::{Amount, CancelError, CoolingOff, Event, GrabError, GroupId, PacketId, PacketStatus, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;

const WINDOW: u64 = 300;
const DAY: u64 = 86_400;

async fn cooling_engine(seed: u64) -> Setup {
    let setup = start(seed);
    group_with_funds(&setup.engine, GroupId(1), 10, Amount::yuan(1_000)).await;
    let setting = CoolingOff { threshold: Amount::yuan(200), secs: WINDOW };
    setup.engine.set_cooling_off(SENDER, setting).await.unwrap();
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_packet_opens_once_at_the_end_of_the_window() {
    let Setup { engine, clock } = cooling_engine(1).await;
    let mut events = engine.subscribe().unwrap();
    // At the threshold it opens at once.
    let open = engine.send_packet(lucky(1, GroupId(1), Amount::yuan(200), 5)).await.unwrap();
    assert_eq!(open.status, PacketStatus::Open);
    let view = engine.send_packet(lucky(2, GroupId(1), Amount::yuan(201), 5)).await.unwrap();
    let until = view.sent_at.plus_secs(WINDOW);
    assert_eq!(view.status, PacketStatus::CoolingOff { until });
    assert_eq!((view.opens_at, view.expires_at), (until, until.plus_secs(DAY)));
    let member = members(1)[0];
    assert_eq!(engine.grab(PacketId(2), member).await, Err(GrabError::NotOpenYet { opens_at: until }));
    let audit = engine.audit().await.unwrap();
    assert_eq!(audit.pending, Amount::yuan(201));
    assert!(audit.is_balanced(), "{audit:?}");

    clock.advance(Duration::from_secs(WINDOW));
    engine.run_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(2)).await.unwrap().status, PacketStatus::Open);
    assert!(engine.grab(PacketId(2), member).await.is_ok());
    assert_eq!(engine.cancel_packet(PacketId(2), SENDER).await, Err(CancelError::TooLate));
    assert_eq!(engine.cancel_packet(PacketId(1), SENDER).await, Err(CancelError::TooLate));
    // Its expiry counts from its opening: a day after sending it is still open.
    clock.advance(Duration::from_secs(DAY - WINDOW));
    engine.run_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(2)).await.unwrap().status, PacketStatus::Open);
    clock.advance(Duration::from_secs(WINDOW));
    engine.run_due().await.unwrap();
    assert!(matches!(engine.packet(PacketId(2)).await.unwrap().status, PacketStatus::Expired { .. }));

    let mut kinds = Vec::new();
    while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        if event.packet() == Some(PacketId(2)) {
            kinds.push(match event {
                Event::PacketCooling { until: u, sender: SENDER, .. } if u == until => "cooling",
                Event::PacketOpened { group: GroupId(1), expires_at, .. } if expires_at == until.plus_secs(DAY) => {
                    "opened"
                }
                Event::Grabbed { .. } => "grabbed",
                Event::Expired { .. } => "expired",
                other => panic!("{other:?}"),
            });
        }
    }
    assert_eq!(kinds, ["cooling", "opened", "grabbed", "expired"]);
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_alone_cancels_during_the_window_and_gets_the_total_back() {
    let Setup { engine, clock } = cooling_engine(2).await;
    let mut events = engine.subscribe().unwrap();
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(300), 3)).await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(700));
    assert_eq!(engine.cancel_packet(PacketId(1), members(1)[0]).await, Err(CancelError::NotSender));
    assert_eq!(engine.cancel_packet(PacketId(9), SENDER).await, Err(CancelError::UnknownPacket));
    clock.advance(Duration::from_secs(WINDOW - 1));
    assert_eq!(engine.cancel_packet(PacketId(1), SENDER).await, Ok(Amount::yuan(300)));
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(1_000));
    let again = CancelError::AlreadyCancelled { refunded: Amount::yuan(300) };
    assert_eq!(engine.cancel_packet(PacketId(1), SENDER).await, Err(again));
    assert_eq!(engine.cancel_packet(PacketId(1), UserId(9)).await, Err(CancelError::NotSender));
    assert_eq!(engine.grab(PacketId(1), members(1)[0]).await, Err(GrabError::Cancelled));
    let view = engine.packet(PacketId(1)).await.unwrap();
    assert_eq!(view.status, PacketStatus::Cancelled { refunded: Amount::yuan(300) });
    assert!(view.closed_at.is_some());
    // The end of the window, and expiry, do nothing more.
    clock.advance(Duration::from_secs(2 * DAY));
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(1_000));
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.packets_live, audit.packets_closed), (0, 1));
    assert!(audit.is_balanced(), "{audit:?}");
    let first = events.next().await.unwrap().unwrap();
    assert!(matches!(first, Event::PacketCooling { .. }), "{first:?}");
    let cancelled = events.next().await.unwrap().unwrap();
    assert_eq!(
        cancelled,
        Event::PacketCancelled { packet: PacketId(1), group: GroupId(1), sender: SENDER, refunded: Amount::yuan(300) }
    );
    assert_eq!(cancelled.parties(), vec![SENDER]);
    engine.shutdown().await;
}

/// The end of the window races a cancel and a grab: either the cancel wins (the grab gets
/// `Cancelled`) or the packet opens (the cancel gets `TooLate`, the grab may win); never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_end_of_the_window_races_a_cancel_and_a_grab_to_one_outcome() {
    let seeds: u64 = std::env::var("HONGBAO_RACE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut outcomes = [0usize; 2];
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let Setup { engine, clock } = cooling_engine(seed).await;
        let engine = Arc::new(engine);
        let total = Amount::fen(rng.random_range(20_001..=50_000));
        let view = engine.send_packet(lucky(1, GroupId(1), total, 3)).await.unwrap();
        let barrier = Arc::new(Barrier::new(3));
        let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
        let cancel = tokio::spawn(async move {
            b.wait().await;
            e.cancel_packet(PacketId(1), SENDER).await
        });
        let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
        let grab = tokio::spawn(async move {
            b.wait().await;
            tokio::task::yield_now().await;
            e.grab(PacketId(1), members(1)[0]).await
        });
        barrier.wait().await;
        clock.set(view.opens_at);
        engine.run_due().await.unwrap();
        let (cancel, grab) = (cancel.await.unwrap(), grab.await.unwrap());
        engine.run_due().await.unwrap();
        let status = engine.packet(PacketId(1)).await.unwrap().status;
        let sender = engine.balance(SENDER).await.unwrap();
        match cancel {
            Ok(refund) => {
                outcomes[0] += 1;
                assert_eq!(refund, total, "seed {seed}");
                assert_eq!(status, PacketStatus::Cancelled { refunded: total }, "seed {seed}");
                assert!(
                    matches!(grab, Err(GrabError::Cancelled | GrabError::NotOpenYet { .. })),
                    "seed {seed}: {grab:?}"
                );
                assert_eq!(sender, Amount::yuan(1_000), "seed {seed}");
            }
            Err(CancelError::TooLate) => {
                outcomes[1] += 1;
                assert_eq!(status, PacketStatus::Open, "seed {seed}");
                assert!(matches!(grab, Ok(_) | Err(GrabError::NotOpenYet { .. })), "seed {seed}: {grab:?}");
                assert_eq!(sender.as_fen(), 100_000 - total.as_fen(), "seed {seed}");
            }
            Err(e) => panic!("seed {seed}: {e:?}"),
        }
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
    if std::env::var_os("HONGBAO_RACE_TRACE").is_some() {
        println!("cancelled {} opened {}", outcomes[0], outcomes[1]);
    }
}
