//! Grab storms: many members grabbing at the same instant from many tasks on a multi-thread
//! runtime. Exactly `shares` winners, shares summing to the total, every winner paid exactly
//! their share, and money conserved.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use hongbao::{split, Amount, Engine, GrabError, Grabbed, GroupId, PacketId, PacketStatus, UserId};
use tokio::sync::Barrier;

/// Every member grabs every packet at once; returns each member's replies.
async fn storm(
    engine: &Engine,
    packets: &[PacketId],
    members: &[UserId],
) -> Vec<(UserId, PacketId, Result<Grabbed, GrabError>)> {
    let barrier = Arc::new(Barrier::new(members.len()));
    let tasks: Vec<_> = members
        .iter()
        .map(|&user| {
            let (engine, barrier, packets) = (engine.clone(), Arc::clone(&barrier), packets.to_vec());
            tokio::spawn(async move {
                barrier.wait().await;
                let grabs = packets.iter().map(|&p| {
                    let engine = engine.clone();
                    async move { (user, p, engine.grab(p, user).await) }
                });
                futures::future::join_all(grabs).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.extend(t.await.unwrap());
    }
    replies
}

/// Checks one packet after its storm: winners, sold-out replies, sums, balances, and that the
/// shares are exactly those its recorded seed derives.
async fn check_packet(
    engine: &Engine,
    packet: PacketId,
    replies: &[(UserId, PacketId, Result<Grabbed, GrabError>)],
    members: usize,
) {
    let mine: Vec<_> = replies.iter().filter(|r| r.1 == packet).collect();
    assert_eq!(mine.len(), members);
    let view = engine.packet(packet).await.unwrap();
    let winners: Vec<&Grabbed> = mine.iter().filter_map(|r| r.2.as_ref().ok()).collect();
    let sold_out = mine.iter().filter(|r| r.2 == Err(GrabError::SoldOut)).count();
    let expected_winners = (view.shares as usize).min(members);
    assert_eq!(winners.len(), expected_winners, "packet {packet:?}: winners");
    assert_eq!(sold_out, members - expected_winners, "packet {packet:?}: every other reply is SoldOut");
    let sum: u64 = winners.iter().map(|g| g.amount.as_fen()).sum();
    if expected_winners == view.shares as usize {
        assert_eq!(sum, view.total.as_fen(), "shares sum to the total");
        assert_eq!(view.status, PacketStatus::SoldOut);
        assert!(view.best_luck.is_some());
    }
    // The claims are in grab order and are exactly the seeded draw.
    let derived = split::lucky_shares(view.total.as_fen(), view.shares, engine.limits().share_fen_max, view.seed);
    for (i, claim) in view.claims.iter().enumerate() {
        assert_eq!(claim.position as usize, i + 1);
        assert_eq!(claim.amount.as_fen(), derived[i], "claim {} of {packet:?} is not the seeded share", i + 1);
    }
    let by_position: HashMap<u32, &Grabbed> = winners.iter().map(|g| (g.position, *g)).collect();
    for claim in &view.claims {
        assert_eq!(by_position[&claim.position].user, claim.user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_members_hundred_shares() {
    let Setup { engine, .. } = start(11);
    let group = GroupId(7);
    group_with_funds(&engine, group, 1_000, Amount::yuan(100)).await;
    engine.send_packet(lucky(42, group, Amount::yuan(100), 100)).await.unwrap();
    let members = members(1_000);
    let replies = storm(&engine, &[PacketId(42)], &members).await;
    check_packet(&engine, PacketId(42), &replies, 1_000).await;
    // Each winner's balance is their share; everyone else has nothing.
    for (user, _, reply) in &replies {
        let expected = reply.as_ref().map_or(Amount::ZERO, |g| g.amount);
        assert_eq!(engine.balance(*user).await.unwrap(), expected, "{user:?}");
    }
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::ZERO);
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_members_thousand_shares() {
    let Setup { engine, .. } = start(12);
    let group = GroupId(8);
    group_with_funds(&engine, group, 1_000, Amount::yuan(1_000)).await;
    engine.send_packet(lucky(43, group, Amount::yuan(1_000), 1_000)).await.unwrap();
    let replies = storm(&engine, &[PacketId(43)], &members(1_000)).await;
    check_packet(&engine, PacketId(43), &replies, 1_000).await;
    assert!(replies.iter().all(|r| r.2.is_ok()), "every member wins when shares == members");
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_packets_thousand_members_at_once() {
    let Setup { engine, .. } = start(13);
    let group = GroupId(9);
    group_with_funds(&engine, group, 1_000, Amount::yuan(200 * 100)).await;
    let packets: Vec<PacketId> = (0..200).map(|i| PacketId(1_000 + i)).collect();
    for p in &packets {
        engine.send_packet(lucky(p.0, group, Amount::yuan(100), 100)).await.unwrap();
    }
    let members = members(1_000);
    let replies = storm(&engine, &packets, &members).await;
    assert_eq!(replies.len(), 200_000);
    for &p in &packets {
        check_packet(&engine, p, &replies, 1_000).await;
    }
    // Balances equal the sum of each member's shares across packets.
    let mut won: HashMap<UserId, u64> = HashMap::new();
    for (user, _, reply) in &replies {
        *won.entry(*user).or_default() += reply.as_ref().map_or(0, |g| g.amount.as_fen());
    }
    for user in &members {
        assert_eq!(engine.balance(*user).await.unwrap().as_fen(), won[user]);
    }
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!(audit.escrow, Amount::ZERO);
    // A sold-out packet closes at once: no actor, no open slot until its deadline.
    assert_eq!((audit.packets_live, audit.packets_closed), (0, 200));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_member_grabbing_concurrently_gets_one_share() {
    for seed in 0..20 {
        let Setup { engine, .. } = start(seed);
        let group = GroupId(3);
        group_with_funds(&engine, group, 10, Amount::yuan(10)).await;
        engine.send_packet(lucky(5, group, Amount::yuan(10), 5)).await.unwrap();
        let user = UserId(FIRST_MEMBER);
        let barrier = Arc::new(Barrier::new(8));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (engine, barrier) = (engine.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    engine.grab(PacketId(5), user).await
                })
            })
            .collect();
        let mut replies = Vec::new();
        for t in tasks {
            replies.push(t.await.unwrap());
        }
        let won: Vec<&Grabbed> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "seed {seed}: one share per member: {replies:?}");
        let amount = won[0].amount;
        for r in &replies {
            match r {
                Ok(g) => assert_eq!(g.amount, amount),
                Err(GrabError::AlreadyGrabbed { amount: a, position: 1 }) => assert_eq!(*a, amount, "seed {seed}"),
                other => panic!("seed {seed}: unexpected reply {other:?}"),
            }
        }
        assert_eq!(engine.balance(user).await.unwrap(), amount, "seed {seed}");
        assert_eq!(engine.packet(PacketId(5)).await.unwrap().claims.len(), 1);
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
}
