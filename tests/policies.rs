//! Daily caps and deadlines across restarts (rules 15, 18, 19): what a user sent today, their
//! cooling-off, and every transfer's and packet's deadline are folded from the journal, so a
//! restart decides every later request as the engine before it would have, and a deadline
//! that passed while the engine was down acts once, right after start.

mod common;

use std::time::Duration;

use common::*;
use hongbao::{
    audit_journal, Amount, Arrival, CoolingOff, GrabError, GroupId, Limits, ManualClock, NewTransfer, OpId, PacketId,
    PacketStatus, SendError, Timestamp, TransferError, TransferId, TransferStatus, UserId,
};

const BOB: UserId = UserId(2);

fn to_bob(id: u64, yuan: u64, arrival: Arrival) -> NewTransfer {
    NewTransfer {
        org: None,
        id: TransferId(id),
        from: SENDER,
        to: BOB,
        amount: Amount::yuan(yuan),
        arrival,
        note: String::new(),
    }
}

fn capped() -> Limits {
    Limits { daily_sent_fen_max: 100_000, daily_packets_max: 2, ..Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_caps_follow_the_day_boundary_and_survive_a_restart() {
    let dir = scratch_dir("daily-caps");
    // 2026-01-01 08:00 in UTC+8, the default day offset: the day ends at 16:00 UTC.
    let clock = ManualClock::new(Timestamp(1_767_225_600_000));
    let engine = start_on_journal(&dir, &clock, capped(), None);
    group_with_funds(&engine, GroupId(1), 5, Amount::yuan(5_000)).await;
    engine.send_packet(lucky(1, GroupId(1), Amount::yuan(400), 4)).await.unwrap();
    engine.transfer(to_bob(1, 500, Arrival::Instant)).await.unwrap();
    let over = TransferError::DailyLimit { used: Amount::yuan(900), max: Amount::yuan(1_000) };
    assert_eq!(engine.transfer(to_bob(2, 101, Arrival::Instant)).await, Err(over.clone()));
    engine.send_packet(lucky(2, GroupId(1), Amount::yuan(50), 1)).await.unwrap();
    let packets = SendError::DailyPacketLimit { used: 2, max: 2 };
    assert_eq!(engine.send_packet(lucky(3, GroupId(1), Amount::yuan(1), 1)).await, Err(packets.clone()));
    // A refund gives no allowance back.
    engine.decline_transfer(TransferId(1), BOB).await.unwrap();
    let usage = engine.usage(SENDER).await.unwrap();
    assert_eq!((usage.sent_today, usage.packets_today), (Amount::yuan(950), 2));
    let balance = engine.balance(SENDER).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    // The same decisions after a restart: the caps are derived from the journal.
    let engine = start_on_journal(&dir, &clock, capped(), None);
    assert_eq!(engine.usage(SENDER).await.unwrap(), usage);
    assert_eq!(engine.send_packet(lucky(3, GroupId(1), Amount::yuan(1), 1)).await, Err(packets.clone()));
    let over = TransferError::DailyLimit { used: Amount::yuan(950), max: Amount::yuan(1_000) };
    assert_eq!(engine.transfer(to_bob(2, 51, Arrival::Instant)).await, Err(over.clone()));
    assert_eq!(engine.balance(SENDER).await.unwrap(), balance);
    // One millisecond before local midnight: still today.
    clock.set(Timestamp(1_767_225_600_000 + 16 * 3_600_000 - 1));
    assert_eq!(engine.transfer(to_bob(2, 51, Arrival::Instant)).await, Err(over.clone()));
    clock.advance(Duration::from_millis(1));
    assert_eq!(engine.usage(SENDER).await.unwrap().sent_today, Amount::ZERO);
    engine.transfer(to_bob(2, 51, Arrival::Instant)).await.unwrap();
    engine.send_packet(lucky(3, GroupId(1), Amount::yuan(1), 1)).await.unwrap();
    // A clock that steps back into yesterday frees nothing: today's use counts.
    clock.set(Timestamp(1_767_225_600_000));
    let used = engine.usage(SENDER).await.unwrap();
    assert_eq!((used.sent_today, used.packets_today), (Amount::yuan(52), 1));
    assert_balanced(&engine).await;
    engine.shutdown().await;
    drop(engine);
    assert!(audit_journal(&dir, 20_000).unwrap().is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_that_passed_while_down_act_once_after_start() {
    let dir = scratch_dir("deadlines-restart");
    let clock = ManualClock::default();
    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    group_with_funds(&engine, GroupId(1), 5, Amount::yuan(5_000)).await;
    engine.set_cooling_off(SENDER, CoolingOff { threshold: Amount::yuan(1_000), secs: 600 }).await.unwrap();
    let delayed = engine.transfer(to_bob(1, 300, Arrival::Delayed { secs: 7_200 })).await.unwrap();
    engine.transfer(to_bob(2, 200, Arrival::Instant)).await.unwrap();
    engine.transfer(to_bob(3, 100, Arrival::Instant)).await.unwrap();
    engine.accept_transfer(TransferId(3), BOB).await.unwrap();
    let held = engine.send_packet(lucky(1, GroupId(1), Amount::yuan(1_001), 10)).await.unwrap();
    assert!(matches!(held.status, PacketStatus::CoolingOff { .. }));
    let before = engine.audit().await.unwrap();
    assert_eq!(before.pending, Amount::yuan(300 + 200 + 1_001));
    engine.shutdown().await;
    drop(engine);

    // Down past the end of the cooling-off and past transfer 1's arrival (not its return).
    clock.set(delayed.arrives_at.plus_secs(60));
    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    engine.run_due().await.unwrap();
    assert_eq!(engine.audit().await.unwrap().transfers_pending, 2);
    let arrived = engine.transfer_view(TransferId(1)).await.unwrap();
    assert_eq!(arrived.status, TransferStatus::AwaitingAcceptance { until: delayed.accept_until });
    assert_eq!(
        engine.recall_transfer(TransferId(1), SENDER).await,
        Err(TransferError::TooLate { status: arrived.status })
    );
    assert_eq!(engine.packet(PacketId(1)).await.unwrap().status, PacketStatus::Open);
    assert!(engine.grab(PacketId(1), members(1)[0]).await.is_ok());
    // The cooling-off setting survived: a large send is still held.
    let again = engine.send_packet(lucky(2, GroupId(1), Amount::yuan(1_001), 10)).await.unwrap();
    assert!(matches!(again.status, PacketStatus::CoolingOff { .. }));
    assert_eq!(engine.cancel_packet(PacketId(2), SENDER).await, Ok(Amount::yuan(1_001)));
    engine.shutdown().await;
    drop(engine);

    // Down past every acceptance: both unaccepted transfers return, once.
    clock.set(delayed.accept_until.plus_secs(1));
    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    engine.run_due().await.unwrap();
    for id in [1, 2] {
        assert_eq!(engine.transfer_view(TransferId(id)).await.unwrap().status, TransferStatus::Returned);
    }
    assert_eq!(engine.transfer_view(TransferId(3)).await.unwrap().status, TransferStatus::Accepted);
    assert_eq!(engine.balance(BOB).await.unwrap(), Amount::yuan(100));
    let sender = engine.balance(SENDER).await.unwrap();
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.pending, audit.transfers_pending, audit.transfers_settled), (Amount::ZERO, 0, 3));
    assert!(audit.is_balanced(), "{audit:?}");
    engine.shutdown().await;
    drop(engine);

    let engine = start_on_journal(&dir, &clock, Limits::default(), Some(7));
    engine.run_due().await.unwrap();
    assert_eq!(engine.balance(SENDER).await.unwrap(), sender);
    assert_eq!(engine.grab(PacketId(2), members(1)[0]).await, Err(GrabError::Cancelled));
    engine.shutdown().await;
    drop(engine);
    let journal = audit_journal(&dir, 20_000).unwrap();
    assert!(journal.is_ok(), "{journal:?}");
    assert_eq!((journal.transfers_pending, journal.transfers_settled), (0, 3));
    assert_eq!(journal.packets_cancelled, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_transfers_are_retired_after_their_retention_and_pending_ones_never() {
    // The engine's own sweep is kept out of the way: the test retires by itself.
    let Setup { engine, clock } = start_with(Limits { retire_interval_secs: 365 * 86_400, ..Limits::default() }, 9);
    engine.deposit(OpId(1), SENDER, Amount::yuan(10)).await.unwrap();
    engine.transfer(to_bob(1, 1, Arrival::Instant)).await.unwrap();
    engine.transfer(to_bob(2, 1, Arrival::Delayed { secs: 86_400 })).await.unwrap();
    engine.accept_transfer(TransferId(1), BOB).await.unwrap();
    let retention = engine.limits().settled_transfer_retention_secs;
    clock.advance(Duration::from_secs(retention - 1));
    // Transfer 2 returns now (its day in transit and its day awaiting are long over).
    engine.run_due().await.unwrap();
    assert_eq!(engine.retire_due().await.unwrap().transfers, 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(engine.retire_due().await.unwrap().transfers, 1);
    assert_eq!(engine.transfer_view(TransferId(1)).await, Err(TransferError::UnknownTransfer));
    assert_eq!(engine.transfer_view(TransferId(2)).await.unwrap().status, TransferStatus::Returned);
    clock.advance(Duration::from_secs(retention));
    assert_eq!(engine.retire_due().await.unwrap().transfers, 1);
    // A retired id may be used again.
    engine.transfer(to_bob(1, 2, Arrival::Instant)).await.unwrap();
    let audit = engine.audit().await.unwrap();
    assert_eq!((audit.transfers_pending, audit.transfers_settled), (1, 0));
    assert!(audit.is_balanced(), "{audit:?}");
    engine.shutdown().await;
}

/// A retry of a send that succeeded is answered with the send, even when what was checked the
/// first time has changed since: the sender left the group, the limits are lower after a
/// restart. Nothing is debited twice, and the retry is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_acknowledged_send_is_answered_with_it() {
    let dir = scratch_dir("retry-after-change");
    let clock = ManualClock::default();
    let engine = start_on_journal(&dir, &clock, Limits::default(), None);
    group_with_funds(&engine, GroupId(1), 3, Amount::yuan(1_000)).await;
    let packet = lucky(1, GroupId(1), Amount::yuan(1), 2);
    let sent = engine.send_packet(packet.clone()).await.unwrap();
    engine.remove_members(GroupId(1), [SENDER]).await.unwrap();
    assert_eq!(engine.send_packet(packet.clone()).await.unwrap(), sent);
    // Other fields under the same id are a conflict, whatever else is wrong with them.
    let other = lucky(1, GroupId(1), Amount::yuan(2), 2);
    assert_eq!(engine.send_packet(other).await, Err(SendError::IdConflict { packet: PacketId(1) }));
    let transfer = to_bob(1, 400, Arrival::Instant);
    let first = engine.transfer(transfer.clone()).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    let lower = Limits { transfer_fen_max: 10_000, greeting_bytes_max: 1, ..Limits::default() };
    let engine = start_on_journal(&dir, &clock, lower, None);
    assert_eq!(engine.transfer(transfer.clone()).await.unwrap(), first);
    let conflict = NewTransfer { org: None, amount: Amount::yuan(401), ..transfer };
    assert_eq!(engine.transfer(conflict).await, Err(TransferError::IdConflict { transfer: TransferId(1) }));
    assert_eq!(engine.send_packet(packet).await.unwrap(), sent);
    assert_eq!(engine.balance(SENDER).await.unwrap(), Amount::yuan(1_000 - 1 - 400));
    assert_balanced(&engine).await;
    engine.shutdown().await;
    drop(engine);
    std::fs::remove_dir_all(&dir).unwrap();
}
