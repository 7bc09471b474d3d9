//! Two-person approval (rule 23): a send above the org's `approval_above`, or above the
//! sender's guardian's threshold, is debited at once and waits; another admin (or the
//! guardian) approves it, never the sender; a rejection or the deadline refunds it once. Every
//! refusal changes nothing; an approval racing its deadline has one outcome.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use hongbao::{
    Amount, ApprovalError, ApprovalId, Arrival, EngineError, GrabError, GroupId, Guardian, Limits, ManualClock, NewOrg,
    NewTransfer, OpKind, OpQuery, OrgId, PacketId, PacketStatus, Policy, TransferError, TransferId, TransferStatus,
    UserId,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;

const ORG: OrgId = OrgId(3);
const ADMIN: UserId = UserId(100);
const GROUP: GroupId = GroupId(7);
const DAY: u64 = 86_400;

/// The sender is also an admin: approval must still come from another one.
async fn approving_org(seed: u64) -> Setup {
    let setup = start(seed);
    group_with_funds(&setup.engine, GROUP, 5, Amount::yuan(1_000)).await;
    let org = NewOrg { admins: vec![ADMIN, SENDER], name: "Acme".into() };
    setup.engine.create_org(ORG, org).await.unwrap();
    setup.engine.attach_group(ORG, GROUP, ADMIN).await.unwrap();
    let policy = Policy { approval_above: Some(Amount::yuan(100)), ..Policy::default() };
    setup.engine.set_policy(ORG, ADMIN, policy).await.unwrap();
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_packet_above_the_threshold_waits_for_another_admin() {
    let Setup { engine, clock } = approving_org(1).await;
    // At the threshold it opens at once.
    let at = engine.send_packet(lucky(1, GROUP, Amount::yuan(100), 5)).await.unwrap();
    assert_eq!(at.status, PacketStatus::Open);
    let view = engine.send_packet(lucky(2, GROUP, Amount::yuan(150), 5)).await.unwrap();
    let until = view.sent_at.plus_secs(DAY);
    assert_eq!(view.status, PacketStatus::AwaitingApproval { until });
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(750), "debited at once");
    let member = members(1)[0];
    assert_eq!(engine.grab(PacketId(2), member).await, Err(GrabError::NotOpenYet { opens_at: until }));
    let audit = engine.audit().await.unwrap();
    assert_eq!(audit.pending, Amount::yuan(150));
    assert!(audit.is_balanced(), "{audit:?}");
    let subject = ApprovalId::Packet(PacketId(2));
    assert_eq!(engine.approve(subject, SENDER).await, Err(ApprovalError::OwnSend));
    assert_eq!(engine.approve(subject, member).await, Err(ApprovalError::NotApprover { user: member }));
    assert_eq!(engine.approve(ApprovalId::Packet(PacketId(1)), ADMIN).await, Err(ApprovalError::NotAwaitingApproval));
    assert_eq!(engine.approve(ApprovalId::Packet(PacketId(9)), ADMIN).await, Err(ApprovalError::Unknown));
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(750));

    // Approved an hour later: it opens, and its 24 h count from the approval.
    clock.advance(Duration::from_secs(3_600));
    engine.approve(subject, ADMIN).await.unwrap();
    assert_eq!(engine.approve(subject, ADMIN).await, Err(ApprovalError::AlreadyApproved));
    let opened = engine.packet(PacketId(2)).await.unwrap();
    assert_eq!((opened.status, opened.expires_at), (PacketStatus::Open, view.sent_at.plus_secs(3_600 + DAY)));
    assert!(engine.grab(PacketId(2), member).await.is_ok());
    clock.advance(Duration::from_secs(DAY - 1));
    engine.run_due().await.unwrap();
    assert_eq!(engine.packet(PacketId(2)).await.unwrap().status, PacketStatus::Open);
    let kinds: Vec<OpKind> =
        engine.operations(ORG, OpQuery::default()).await.unwrap().entries.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&OpKind::PacketApproved), "{kinds:?}");
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_or_the_deadline_refunds_once() {
    let Setup { engine, clock } = approving_org(2).await;
    engine.send_packet(lucky(1, GROUP, Amount::yuan(150), 5)).await.unwrap();
    engine.send_packet(lucky(2, GROUP, Amount::yuan(200), 5)).await.unwrap();
    let long = "x".repeat(257);
    let refused = engine.reject(ApprovalId::Packet(PacketId(1)), ADMIN, long).await;
    assert_eq!(refused, Err(ApprovalError::ReasonTooLong { bytes: 257, max: 256 }));
    let refund = engine.reject(ApprovalId::Packet(PacketId(1)), ADMIN, "over budget".into()).await.unwrap();
    assert_eq!(refund, Amount::yuan(150));
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(800));
    let view = engine.packet(PacketId(1)).await.unwrap();
    assert_eq!(view.status, PacketStatus::Rejected { refunded: Amount::yuan(150) });
    assert_eq!(engine.grab(PacketId(1), members(1)[0]).await, Err(GrabError::Rejected));
    assert_eq!(engine.approve(ApprovalId::Packet(PacketId(1)), ADMIN).await, Err(ApprovalError::AlreadyRejected));
    // Nobody approves packet 2: the deadline rejects it, once.
    clock.advance(Duration::from_secs(DAY));
    engine.run_due().await.unwrap();
    assert_eq!(
        engine.packet(PacketId(2)).await.unwrap().status,
        PacketStatus::Rejected { refunded: Amount::yuan(200) }
    );
    assert_eq!(engine.approve(ApprovalId::Packet(PacketId(2)), ADMIN).await, Err(ApprovalError::AlreadyRejected));
    clock.advance(Duration::from_secs(DAY));
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(1_000));
    let log =
        engine.operations(ORG, OpQuery { kind: Some(OpKind::PacketRejected), ..OpQuery::default() }).await.unwrap();
    assert_eq!(log.entries.len(), 2);
    assert_eq!(log.entries[0].reason.as_deref(), Some("over budget"));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardian_approves_transfers_and_packets_above_their_threshold() {
    let Setup { engine, clock } = start(3);
    group_with_funds(&engine, GroupId(1), 3, Amount::yuan(5_000)).await;
    let (elder, child, shop) = (SENDER, UserId(61), UserId(62));
    assert_eq!(
        engine.set_guardian(elder, Guardian { guardian: elder, above: Amount::ZERO }).await,
        Err(EngineError::InvalidGuardian { user: elder })
    );
    engine.set_guardian(elder, Guardian { guardian: child, above: Amount::yuan(500) }).await.unwrap();
    let transfer = |id, yuan, arrival| NewTransfer {
        org: None,
        id: TransferId(id),
        from: elder,
        to: shop,
        amount: Amount::yuan(yuan),
        arrival,
        note: String::new(),
    };
    assert!(matches!(
        engine.transfer(transfer(1, 500, Arrival::Instant)).await.unwrap().status,
        TransferStatus::AwaitingAcceptance { .. }
    ));
    let held = engine.transfer(transfer(2, 600, Arrival::Instant)).await.unwrap();
    let until = held.sent_at.plus_secs(DAY);
    assert_eq!(held.status, TransferStatus::AwaitingApproval { until });
    let subject = ApprovalId::Transfer(TransferId(2));
    assert_eq!(
        engine.accept_transfer(TransferId(2), shop).await,
        Err(TransferError::NotArrived { arrives_at: held.arrives_at })
    );
    assert_eq!(engine.approve(subject, elder).await, Err(ApprovalError::OwnSend));
    assert_eq!(engine.approve(subject, shop).await, Err(ApprovalError::NotApprover { user: shop }));
    clock.advance(Duration::from_secs(60));
    engine.approve(subject, child).await.unwrap();
    let view = engine.transfer_view(TransferId(2)).await.unwrap();
    assert_eq!(view.status, TransferStatus::AwaitingAcceptance { until: held.sent_at.plus_secs(60 + DAY) });
    engine.accept_transfer(TransferId(2), shop).await.unwrap();
    // A delayed one counts its delay from the approval.
    let delayed = engine.transfer(transfer(3, 700, Arrival::Delayed { secs: 7_200 })).await.unwrap();
    clock.advance(Duration::from_secs(3_600));
    engine.approve(ApprovalId::Transfer(TransferId(3)), child).await.unwrap();
    let arrives_at = delayed.sent_at.plus_secs(3_600 + 7_200);
    assert_eq!(engine.transfer_view(TransferId(3)).await.unwrap().status, TransferStatus::InTransit { arrives_at });
    // The sender may take one back while it waits; the guardian may reject one.
    engine.transfer(transfer(4, 501, Arrival::Instant)).await.unwrap();
    engine.recall_transfer(TransferId(4), elder).await.unwrap();
    engine.transfer(transfer(5, 502, Arrival::Instant)).await.unwrap();
    let refund = engine.reject(ApprovalId::Transfer(TransferId(5)), child, "scam".into()).await.unwrap();
    assert_eq!(refund, Amount::yuan(502));
    assert_eq!(engine.transfer_view(TransferId(5)).await.unwrap().status, TransferStatus::Rejected);
    // A packet of the elder waits for the guardian too.
    let packet = engine.send_packet(lucky(1, GroupId(1), Amount::yuan(600), 10)).await.unwrap();
    assert!(matches!(packet.status, PacketStatus::AwaitingApproval { .. }));
    engine.approve(ApprovalId::Packet(PacketId(1)), child).await.unwrap();
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Open);
    assert_eq!(engine.remove_guardian(elder, elder).await, Err(EngineError::NotGuardian { user: elder }));
    let other = Guardian { guardian: shop, above: Amount::yuan(1_000_000) };
    assert_eq!(engine.set_guardian(elder, other).await, Err(EngineError::GuardianAlreadySet { guardian: child }));
    engine.remove_guardian(elder, child).await.unwrap();
    assert!(matches!(
        engine.transfer(transfer(6, 900, Arrival::Instant)).await.unwrap().status,
        TransferStatus::AwaitingAcceptance { .. }
    ));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

/// An approval racing its deadline: approved (and open) or rejected (and refunded), never
/// both, and the approver hears which.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_racing_its_deadline_has_one_outcome() {
    let seeds: u64 = std::env::var("HONGBAO_RACE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut outcomes = [0usize; 2];
    for seed in 0..seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let Setup { engine, clock } = approving_org(seed).await;
        let engine = Arc::new(engine);
        let total = Amount::fen(rng.random_range(10_001..=30_000));
        let view = engine.send_packet(lucky(1, GROUP, total, 5)).await.unwrap();
        let PacketStatus::AwaitingApproval { until } = view.status else { panic!("seed {seed}: {view:?}") };
        let barrier = Arc::new(Barrier::new(2));
        let (e, b) = (Arc::clone(&engine), Arc::clone(&barrier));
        let approve = tokio::spawn(async move {
            b.wait().await;
            e.approve(ApprovalId::Packet(PacketId(1)), ADMIN).await
        });
        barrier.wait().await;
        clock.set(until);
        engine.run_due().await.unwrap();
        let approved = approve.await.unwrap();
        engine.run_due().await.unwrap();
        let status = engine.packet(PacketId(1)).await.unwrap().status;
        let sender = engine.balance(SENDER).await.unwrap();
        match approved {
            Ok(()) => {
                outcomes[0] += 1;
                // Approved at the send's instant, it expires a day later: at the deadline the
                // clock was set to, so it may have expired already (nobody grabbed it).
                match status {
                    PacketStatus::Open => assert_eq!(sender.as_fen(), 100_000 - total.as_fen(), "seed {seed}"),
                    PacketStatus::Expired { refunded } => {
                        assert_eq!((refunded, sender), (total, Amount::yuan(1_000)), "seed {seed}")
                    }
                    other => panic!("seed {seed}: approved, then {other:?}"),
                }
            }
            Err(ApprovalError::AlreadyRejected) => {
                outcomes[1] += 1;
                assert_eq!(status, PacketStatus::Rejected { refunded: total }, "seed {seed}");
                assert_eq!(sender, Amount::yuan(1_000), "seed {seed}");
            }
            Err(e) => panic!("seed {seed}: {e:?}"),
        }
        assert_balanced(&engine).await;
        engine.shutdown().await;
    }
    if std::env::var_os("HONGBAO_RACE_TRACE").is_some() {
        println!("approved {} rejected {}", outcomes[0], outcomes[1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_a_restart_and_a_deadline_passed_while_down_rejects_once() {
    let dir = scratch_dir("approvals");
    let clock = ManualClock::default();
    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    group_with_funds(&engine, GROUP, 5, Amount::yuan(1_000)).await;
    engine.create_org(ORG, NewOrg { admins: vec![ADMIN], name: "Acme".into() }).await.unwrap();
    engine.attach_group(ORG, GROUP, ADMIN).await.unwrap();
    let policy = Policy { approval_above: Some(Amount::yuan(100)), ..Policy::default() };
    engine.set_policy(ORG, ADMIN, policy).await.unwrap();
    engine.set_guardian(SENDER, Guardian { guardian: UserId(61), above: Amount::yuan(300) }).await.unwrap();
    engine.send_packet(lucky(1, GROUP, Amount::yuan(150), 5)).await.unwrap();
    engine.send_packet(lucky(2, GROUP, Amount::yuan(160), 5)).await.unwrap();
    let transfer = NewTransfer {
        org: None,
        id: TransferId(1),
        from: SENDER,
        to: UserId(62),
        amount: Amount::yuan(400),
        arrival: Arrival::Instant,
        note: String::new(),
    };
    engine.transfer(transfer).await.unwrap();
    engine.approve(ApprovalId::Packet(PacketId(1)), ADMIN).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Open);
    assert!(matches!(engine.packet(PacketId(2)).await.unwrap().status, PacketStatus::AwaitingApproval { .. }));
    assert!(matches!(
        engine.transfer_view(TransferId(1)).await.unwrap().status,
        TransferStatus::AwaitingApproval { .. }
    ));
    assert_eq!(engine.usage(SENDER).await.unwrap().sent_today, Amount::yuan(710));
    engine.shutdown().await;
    drop(engine);

    clock.advance(Duration::from_secs(DAY));
    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    engine.run_due().await.unwrap();
    assert_eq!(
        engine.packet(PacketId(2)).await.unwrap().status,
        PacketStatus::Rejected { refunded: Amount::yuan(160) }
    );
    assert_eq!(engine.transfer_view(TransferId(1)).await.unwrap().status, TransferStatus::Rejected);
    // Packet 1, approved and never grabbed, expired a day after its approval.
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Expired { refunded: Amount::yuan(150) });
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(1_000));
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.pending, audit.transfers_pending), (Amount::ZERO, 0));
    assert!(audit.is_balanced(), "{audit:?}");
    engine.shutdown().await;
    drop(engine);
    let journal = hongbao::audit_journal(&dir, 20_000).unwrap();
    assert!(journal.is_ok(), "{journal:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Found by review: a guardian the sender chose stood in for the org's second admin, and
/// refusals after a waiting packet closed otherwise named the wrong outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_org_approves_its_packets_whatever_guardian_the_sender_chose() {
    let Setup { engine, .. } = approving_org(5).await;
    let friend = members(2)[1];
    engine.set_guardian(SENDER, Guardian { guardian: friend, above: Amount::ZERO }).await.unwrap();
    engine.send_packet(lucky(1, GROUP, Amount::yuan(900), 10)).await.unwrap();
    let subject = ApprovalId::Packet(PacketId(1));
    assert_eq!(engine.approve(subject, friend).await, Err(ApprovalError::NotApprover { user: friend }));
    // Recalled by an admin while it waited: never approved, never rejected.
    let recall = Policy {
        approval_above: Some(Amount::yuan(100)),
        recall: hongbao::RecallPolicy::Whitelist(vec![SENDER]),
        ..Policy::default()
    };
    engine.set_policy(ORG, ADMIN, recall).await.unwrap();
    engine.admin_recall(PacketId(1), ADMIN, String::new()).await.unwrap();
    assert_eq!(engine.approve(subject, ADMIN).await, Err(ApprovalError::Closed));
    assert_eq!(engine.approve(subject, friend).await, Err(ApprovalError::NotApprover { user: friend }));
    // A packet that never waited says so, open or closed.
    engine.remove_guardian(SENDER, friend).await.unwrap();
    engine.send_packet(lucky(2, GROUP, Amount::yuan(10), 1)).await.unwrap();
    engine.grab(PacketId(2), members(1)[0]).await.unwrap();
    assert_eq!(engine.approve(ApprovalId::Packet(PacketId(2)), ADMIN).await, Err(ApprovalError::NotAwaitingApproval));
    assert_balanced(&engine).await;
    engine.shutdown().await;
}

/// A transfer sent under an org (`NewTransfer::org`) follows the org's rules: only its
/// members send one, above the threshold another admin approves it, the org's cap counts it,
/// and the org's log holds its every move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_transfer_follows_the_orgs_rules() {
    let Setup { engine, .. } = approving_org(6).await;
    let receiver = members(1)[0];
    let transfer = |id, yuan, from, org| NewTransfer {
        org: Some(org),
        id: TransferId(id),
        from,
        to: receiver,
        amount: Amount::yuan(yuan),
        arrival: Arrival::Instant,
        note: String::new(),
    };
    assert_eq!(engine.transfer(transfer(1, 10, SENDER, OrgId(9))).await, Err(TransferError::UnknownOrg));
    let stranger = UserId(999);
    engine.deposit(hongbao::OpId(999), stranger, Amount::yuan(10)).await.unwrap();
    assert_eq!(engine.transfer(transfer(1, 1, stranger, ORG)).await, Err(TransferError::NotOrgMember { org: ORG }));
    // Above the threshold: another admin approves.
    let sent = engine.transfer(transfer(2, 150, SENDER, ORG)).await.unwrap();
    assert!(matches!(sent.status, TransferStatus::AwaitingApproval { .. }));
    let subject = ApprovalId::Transfer(TransferId(2));
    assert_eq!(engine.approve(subject, SENDER).await, Err(ApprovalError::OwnSend));
    engine.approve(subject, ADMIN).await.unwrap();
    engine.accept_transfer(TransferId(2), receiver).await.unwrap();
    // The org's cap counts transfers too.
    let capped =
        Policy { daily_sent_fen_max: Some(20_000), approval_above: Some(Amount::yuan(100)), ..Policy::default() };
    engine.set_policy(ORG, ADMIN, capped).await.unwrap();
    let over = TransferError::OrgDailyLimit { org: ORG, used: Amount::yuan(150), max: Amount::yuan(200) };
    assert_eq!(engine.transfer(transfer(3, 51, SENDER, ORG)).await, Err(over));
    // A retry is answered from the transfer, even after the sender left the org's groups.
    engine.remove_members(GROUP, [SENDER]).await.unwrap();
    assert_eq!(engine.transfer(transfer(2, 150, SENDER, ORG)).await.unwrap().id, TransferId(2));
    let log = engine.operations(ORG, OpQuery::default()).await.unwrap().entries;
    let moves: Vec<(OpKind, Option<TransferId>)> =
        log.iter().filter(|e| e.transfer.is_some()).map(|e| (e.kind, e.transfer)).collect();
    let two = Some(TransferId(2));
    assert_eq!(moves, [(OpKind::TransferSent, two), (OpKind::TransferApproved, two), (OpKind::TransferAccepted, two)]);
    assert_balanced(&engine).await;
    engine.shutdown().await;
}
