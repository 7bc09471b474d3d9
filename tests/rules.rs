//! The rules of money at the API: eligibility, idempotency, and every refusal leaving
//! balances and packets unchanged.

mod common;

use common::*;
use hongbao::{
    Amount, EngineError, GrabError, GroupId, InvalidSplit, Limits, NewPacket, OpId, PacketId, PacketStatus, SendError,
    Split, UserId, WalletError,
};

/// Every balance the scenario touches, and the audit totals.
async fn snapshot(setup: &Setup, users: &[UserId]) -> (Vec<Amount>, Amount, Amount) {
    let mut balances = Vec::new();
    for u in users {
        balances.push(setup.engine.balance(*u).await.unwrap());
    }
    let audit = setup.engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{audit:?}");
    (balances, audit.escrow, audit.deposits)
}

#[tokio::test]
async fn only_members_grab_and_exclusive_pays_only_its_recipient() {
    let setup = start(31);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 3, Amount::yuan(10)).await;
    let outsider = UserId(9_999);
    engine.send_packet(lucky(1, group, Amount::yuan(1), 3)).await.unwrap();
    assert_eq!(engine.grab(PacketId(1), outsider).await, Err(GrabError::NotEligible));
    assert_eq!(engine.balance(outsider).await.unwrap(), Amount::ZERO);
    assert!(engine.packet(PacketId(1)).await.unwrap().claims.is_empty());

    let to = UserId(FIRST_MEMBER + 1);
    let exclusive = NewPacket {
        id: PacketId(2),
        sender: SENDER,
        group,
        split: Split::Exclusive { to, amount: Amount::yuan(2) },
        greeting: "给你".into(),
    };
    engine.send_packet(exclusive).await.unwrap();
    assert_eq!(engine.grab(PacketId(2), UserId(FIRST_MEMBER)).await, Err(GrabError::NotEligible));
    assert_eq!(engine.grab(PacketId(2), outsider).await, Err(GrabError::NotEligible));
    assert_eq!(engine.grab(PacketId(2), to).await.unwrap().amount, Amount::yuan(2));
    assert_eq!(engine.balance(to).await.unwrap(), Amount::yuan(2));
    let view = engine.packet(PacketId(2)).await.unwrap();
    assert_eq!(view.status, PacketStatus::SoldOut);
    assert_eq!(view.best_luck.unwrap().user, to);

    // Leaving the group ends eligibility, but a repeat grab still returns the first result.
    let won = engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await.unwrap();
    engine.set_members(group, [SENDER]).await.unwrap();
    assert_eq!(engine.grab(PacketId(1), UserId(FIRST_MEMBER + 2)).await, Err(GrabError::NotEligible));
    assert_eq!(
        engine.grab(PacketId(1), UserId(FIRST_MEMBER)).await,
        Err(GrabError::AlreadyGrabbed { amount: won.amount, position: 1 })
    );
    // Personal packets are irrevocable: the sender cannot take the remainder back.
    let before = engine.balance(SENDER).await.unwrap();
    assert_eq!(engine.recall(PacketId(1)).await, Err(EngineError::Irrevocable { packet: PacketId(1) }));
    assert_eq!(engine.recall(PacketId(77)).await, Err(EngineError::UnknownPacket));
    assert_eq!(engine.balance(SENDER).await.unwrap(), before);
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Open);
    assert_balanced(engine).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn refused_sends_change_nothing() {
    let limits = Limits { open_packets_max: 2, ..Limits::default() };
    let setup = start_with(limits.clone(), 32);
    let engine = &setup.engine;
    let group = GroupId(1);
    group_with_funds(engine, group, 3, Amount::yuan(10)).await;
    let watched = [SENDER, UserId(FIRST_MEMBER)];
    let before = snapshot(&setup, &watched).await;
    let cap = Amount::fen(limits.share_fen_max);
    let with_split = |id, split| NewPacket { id: PacketId(id), sender: SENDER, group, split, greeting: String::new() };

    let cases: Vec<(NewPacket, SendError)> = vec![
        (
            lucky(1, group, Amount::yuan(11), 10),
            SendError::InsufficientFunds { balance: Amount::yuan(10), needed: Amount::yuan(11) },
        ),
        (
            lucky(2, group, Amount::fen(9), 10),
            SendError::InvalidSplit { reason: InvalidSplit::ShareBelowOneFen { total: Amount::fen(9), shares: 10 } },
        ),
        (lucky(3, group, Amount::yuan(1), 0), SendError::InvalidSplit { reason: InvalidSplit::ZeroShares }),
        (
            lucky(4, group, Amount::yuan(1_000), 10_001),
            SendError::InvalidSplit { reason: InvalidSplit::TooManyShares { shares: 10_001, max: 10_000 } },
        ),
        (
            lucky(5, group, Amount::yuan(201), 1),
            SendError::InvalidSplit { reason: InvalidSplit::ShareAboveCap { cap } },
        ),
        (
            with_split(6, Split::Fixed { each: Amount::yuan(200), shares: 1_001 }),
            SendError::InvalidSplit {
                reason: InvalidSplit::TotalAboveCap { cap: Amount::fen(limits.packet_total_fen_max) },
            },
        ),
        (
            with_split(7, Split::Fixed { each: Amount::ZERO, shares: 3 }),
            SendError::InvalidSplit { reason: InvalidSplit::Zero },
        ),
        (
            NewPacket { sender: UserId(9_999), ..lucky(8, group, Amount::yuan(1), 1) },
            SendError::NotMember { user: UserId(9_999) },
        ),
        (lucky(9, GroupId(404), Amount::yuan(1), 1), SendError::NotMember { user: SENDER }),
        (
            with_split(10, Split::Exclusive { to: UserId(9_999), amount: Amount::yuan(1) }),
            SendError::NotMember { user: UserId(9_999) },
        ),
        (
            NewPacket { greeting: "福".repeat(100), ..lucky(11, group, Amount::yuan(1), 1) },
            SendError::GreetingTooLong { bytes: 300, max: 256 },
        ),
    ];
    for (spec, expected) in cases {
        let id = spec.id;
        assert_eq!(engine.send_packet(spec).await, Err(expected), "packet {id:?}");
        assert_eq!(engine.packet(id).await, Err(EngineError::UnknownPacket));
    }
    assert_eq!(snapshot(&setup, &watched).await, before);

    // Same id, different fields: IdConflict; same fields: the same packet, debited once.
    let first = engine.send_packet(lucky(20, group, Amount::yuan(1), 2)).await.unwrap();
    let again = engine.send_packet(lucky(20, group, Amount::yuan(1), 2)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(
        engine.send_packet(lucky(20, group, Amount::yuan(2), 2)).await,
        Err(SendError::IdConflict { packet: PacketId(20) })
    );
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(9));

    // The open-packet bound.
    engine.send_packet(lucky(21, group, Amount::yuan(1), 2)).await.unwrap();
    assert_eq!(
        engine.send_packet(lucky(22, group, Amount::yuan(1), 2)).await,
        Err(SendError::TooManyOpenPackets { max: 2 })
    );
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(8));
    assert_balanced(engine).await;
    engine.shutdown().await;
}

#[tokio::test]
async fn wallet_refusals_change_nothing_and_retries_apply_once() {
    let limits = Limits { balance_fen_max: 100_000_000, ..Limits::default() };
    let setup = start_with(limits, 33);
    let engine = &setup.engine;
    let (alice, bob) = (UserId(1), UserId(2));
    assert_eq!(engine.deposit(OpId(1), alice, Amount::yuan(500)).await, Ok(Amount::yuan(500)));
    assert_eq!(engine.deposit(OpId(1), alice, Amount::yuan(500)).await, Ok(Amount::yuan(500)), "retry");
    assert_eq!(engine.withdraw(OpId(2), alice, Amount::fen(100)).await, Ok(Amount::fen(49_900)));
    assert_eq!(engine.withdraw(OpId(2), alice, Amount::fen(100)).await, Ok(Amount::fen(49_900)), "retry");
    let before = snapshot(&setup, &[alice, bob]).await;

    assert_eq!(engine.deposit(OpId(3), alice, Amount::ZERO).await, Err(WalletError::ZeroAmount));
    assert_eq!(engine.withdraw(OpId(4), alice, Amount::ZERO).await, Err(WalletError::ZeroAmount));
    assert_eq!(
        engine.withdraw(OpId(5), alice, Amount::yuan(500)).await,
        Err(WalletError::InsufficientFunds { balance: Amount::fen(49_900), needed: Amount::yuan(500) })
    );
    assert_eq!(
        engine.deposit(OpId(6), alice, Amount::yuan(1_000_000)).await,
        Err(WalletError::BalanceLimit { max: Amount::fen(100_000_000) })
    );
    assert_eq!(engine.deposit(OpId(1), alice, Amount::yuan(7)).await, Err(WalletError::IdConflict { op: OpId(1) }));
    assert_eq!(engine.withdraw(OpId(1), alice, Amount::yuan(500)).await, Err(WalletError::IdConflict { op: OpId(1) }));
    assert_eq!(engine.deposit(OpId(1), bob, Amount::yuan(500)).await, Err(WalletError::IdConflict { op: OpId(1) }));
    assert_eq!(snapshot(&setup, &[alice, bob]).await, before);

    let audit = engine.audit().await.unwrap();
    assert_eq!(
        (audit.deposits, audit.withdrawals, audit.wallets),
        (Amount::yuan(500), Amount::fen(100), Amount::fen(49_900))
    );
    engine.shutdown().await;
}

#[tokio::test]
async fn other_refusals() {
    let limits = Limits { members_per_group_max: 5, subscribers_max: 1, groups_max: 2, ..Limits::default() };
    let setup = start_with(limits, 34);
    let engine = &setup.engine;
    assert_eq!(engine.grab(PacketId(1), UserId(1)).await, Err(GrabError::UnknownPacket));
    assert_eq!(engine.packet(PacketId(1)).await, Err(EngineError::UnknownPacket));
    assert_eq!(
        engine.set_members(GroupId(1), (0..6).map(UserId)).await,
        Err(EngineError::TooManyMembers { members: 6, max: 5 })
    );
    // Duplicates do not count twice.
    engine.set_members(GroupId(1), [1, 1, 2, 2, 3, 3, 4, 4, 5, 5].map(UserId)).await.unwrap();
    engine.set_members(GroupId(2), [UserId(1)]).await.unwrap();
    assert_eq!(engine.set_members(GroupId(3), [UserId(1)]).await, Err(EngineError::TooManyGroups { max: 2 }));
    let first = engine.subscribe().unwrap();
    assert_eq!(engine.subscribe().err(), Some(EngineError::TooManySubscribers { max: 1 }));
    drop(first);
    assert!(engine.subscribe().is_ok(), "a dropped subscription frees its place");
    engine.shutdown().await;
}

#[test]
fn contradictory_limits_do_not_start() {
    let limits = Limits { share_fen_max: 0, ..Limits::default() };
    let config = hongbao::Config::default().with_limits(limits);
    assert!(matches!(hongbao::Engine::start(config), Err(hongbao::StartError::InvalidLimits(_))));
    let config = hongbao::Config { arbiters: 0, ..hongbao::Config::default() };
    assert!(matches!(hongbao::Engine::start(config), Err(hongbao::StartError::InvalidConfig(_))));
}
