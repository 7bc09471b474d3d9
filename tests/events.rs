//! Events: what subscribers hear, in the order it happened for each packet, and the end of
//! the stream at shutdown.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use hongbao::{Amount, Event, EventsError, GrabError, GroupId, OpId, PacketId, Split, Subscription, UserId};

fn drain(events: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = events.try_recv().unwrap() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_packet_tells_its_story_in_order() {
    let Setup { engine, clock } = start(61);
    let group = GroupId(1);
    engine.set_members(group, [SENDER, UserId(FIRST_MEMBER), UserId(FIRST_MEMBER + 1)]).await.unwrap();
    let mut events = engine.subscribe().unwrap();
    engine.deposit(OpId(1), SENDER, Amount::yuan(3)).await.unwrap();
    engine.send_packet(lucky(1, group, Amount::yuan(1), 2)).await.unwrap();
    engine.send_packet(lucky(2, group, Amount::yuan(2), 2)).await.unwrap();
    let a = engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    let b = engine.grab(PacketId(1), UserId(FIRST_MEMBER + 1)).await.unwrap();
    let c = engine.grab(PacketId(2), UserId(FIRST_MEMBER)).await.unwrap();
    clock.advance(Duration::from_secs(86_400));
    engine.run_due().await.unwrap();
    let best = if b.amount > a.amount { b.clone() } else { a.clone() };
    let got = drain(&mut events);
    let expected = [
        Event::Deposited { op: OpId(1), user: SENDER, amount: Amount::yuan(3), balance: Amount::yuan(3) },
        Event::PacketSent {
            packet: PacketId(1),
            sender: SENDER,
            group,
            split: Split::lucky(Amount::yuan(1), 2),
            greeting: lucky(1, group, Amount::yuan(1), 2).greeting,
            total: Amount::yuan(1),
            shares: 2,
            expires_at: got
                .iter()
                .find_map(|e| match e {
                    Event::PacketSent { packet: PacketId(1), expires_at, .. } => Some(*expires_at),
                    _ => None,
                })
                .unwrap(),
        },
    ];
    assert_eq!(got[..2], expected);
    let rest: Vec<&Event> = got[2..].iter().collect();
    assert!(matches!(rest[0], Event::PacketSent { packet: PacketId(2), .. }));
    assert_eq!(
        *rest[1],
        Event::Grabbed { packet: PacketId(1), group, user: a.user, amount: a.amount, position: 1, shares_left: 1 }
    );
    assert_eq!(
        *rest[2],
        Event::Grabbed { packet: PacketId(1), group, user: b.user, amount: b.amount, position: 2, shares_left: 0 }
    );
    assert_eq!(*rest[3], Event::SoldOut { packet: PacketId(1), group, best_luck: best.user, best_amount: best.amount });
    assert_eq!(
        *rest[4],
        Event::Grabbed { packet: PacketId(2), group, user: c.user, amount: c.amount, position: 1, shares_left: 1 }
    );
    assert_eq!(
        *rest[5],
        Event::Expired { packet: PacketId(2), group, sender: SENDER, refunded: Amount::fen(200 - c.amount.as_fen()) }
    );
    assert_eq!(rest.len(), 6, "{got:?}");
    // Every event about a packet names its group, so a chat server can fan it out directly.
    assert!(got.iter().all(|e| e.packet().is_none() || e.group() == Some(group)), "{got:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_storm_each_packets_events_stay_in_order() {
    let Setup { engine, .. } = start(62);
    let group = GroupId(1);
    group_with_funds(&engine, group, 200, Amount::yuan(100)).await;
    let mut events = engine.subscribe().unwrap();
    let packets: Vec<u64> = (1..=10).collect();
    for &p in &packets {
        engine.send_packet(lucky(p, group, Amount::yuan(10), 50)).await.unwrap();
    }
    let tasks: Vec<_> = members(200)
        .into_iter()
        .map(|u| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for p in 1..=10 {
                    match engine.grab(PacketId(p), u).await {
                        Ok(_) | Err(GrabError::SoldOut) => {}
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut next_position: HashMap<PacketId, u32> = HashMap::new();
    let mut sold_out = 0;
    for event in drain(&mut events) {
        match event {
            Event::PacketSent { packet, .. } => assert!(next_position.insert(packet, 1).is_none()),
            Event::Grabbed { packet, position, shares_left, .. } => {
                let next = next_position.get_mut(&packet).expect("sent before grabbed");
                assert_eq!(position, *next, "{packet:?}");
                assert_eq!(shares_left, 50 - position);
                *next += 1;
            }
            Event::SoldOut { packet, .. } => {
                assert_eq!(next_position[&packet], 51, "sold out after the last grab");
                sold_out += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sold_out, 10);
    engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_what_was_queued_then_refuses() {
    let Setup { engine, .. } = start(63);
    let group = GroupId(1);
    group_with_funds(&engine, group, 100, Amount::yuan(1)).await;
    let mut events = engine.subscribe().unwrap();
    engine.send_packet(lucky(1, group, Amount::yuan(1), 100)).await.unwrap();
    let grabs: Vec<_> = members(100)
        .into_iter()
        .map(|u| {
            tokio::spawn({
                let engine = engine.clone();
                async move { engine.grab(PacketId(1), u).await }
            })
        })
        .collect();
    engine.shutdown().await;
    for g in grabs {
        match g.await.unwrap() {
            Ok(_) | Err(GrabError::ShuttingDown) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await, Err(GrabError::ShuttingDown));
    assert_eq!(engine.balance(SENDER).await, Err(hongbao::EngineError::ShuttingDown));
    // The subscription reads what was published, then ends.
    loop {
        match events.recv().await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e, EventsError::Closed);
                break;
            }
        }
    }
    engine.shutdown().await; // a second call does nothing
}

/// A subscription is a `Stream`: a chat server can `next().await` it, or mix it with `recv`,
/// and it ends once the engine has shut down and every event was read.
#[tokio::test]
async fn a_subscription_is_a_stream_that_ends_at_shutdown() {
    use futures::StreamExt;
    fn shareable<T: Send + Sync>(_: &T) {}

    let Setup { engine, .. } = start(64);
    let group = GroupId(1);
    group_with_funds(&engine, group, 3, Amount::yuan(1)).await;
    let mut events = engine.subscribe().unwrap();
    shareable(&events);
    engine.send_packet(lucky(1, group, Amount::yuan(1), 2)).await.unwrap();
    engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    assert!(matches!(events.next().await, Some(Ok(Event::PacketSent { packet: PacketId(1), .. }))));
    assert!(matches!(events.next().await, Some(Ok(Event::Grabbed { position: 1, .. }))));
    // A receive the stream started while nothing was published, then abandoned, loses nothing:
    // the next read, by `recv` or by the stream, gets the event it was waiting for.
    assert!(futures::poll!(events.next()).is_pending());
    engine.grab(PacketId(1), UserId(FIRST_MEMBER + 1)).await.unwrap();
    assert!(matches!(events.recv().await, Ok(Event::Grabbed { position: 2, .. })));
    assert!(matches!(events.next().await, Some(Ok(Event::SoldOut { packet: PacketId(1), .. }))));
    // A `recv` cancelled while it waits on a receive the stream started keeps the subscription.
    assert!(futures::poll!(events.next()).is_pending());
    assert!(futures::poll!(std::pin::pin!(events.recv())).is_pending());
    engine.deposit(OpId(9), SENDER, Amount::fen(1)).await.unwrap();
    assert!(matches!(events.recv().await, Ok(Event::Deposited { op: OpId(9), .. })));
    assert!(futures::poll!(events.next()).is_pending());
    engine.shutdown().await;
    assert!(events.next().await.is_none(), "the stream ends after shutdown");
    assert_eq!(events.recv().await, Err(EventsError::Closed));
}
