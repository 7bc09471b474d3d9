//! With the `serde` feature every public value type, event and error round-trips through
//! JSON, amounts travel as decimal strings and enums as a `kind` tag plus their fields.
#![cfg(feature = "serde")]

use hongbao::{
    Amount, ClaimView, EngineError, Event, EventsError, GrabError, GroupId, InvalidSplit, NewPacket, OpId, PacketId,
    PacketStatus, PacketView, SendError, Split, Timestamp, UserId, WalletError,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) -> serde_json::Value {
    let json = serde_json::to_value(value).unwrap();
    let back: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&back, value, "{json}");
    json
}

fn claim(user: u64, fen: u64, position: u32) -> ClaimView {
    ClaimView { user: UserId(user), amount: Amount::fen(fen), position, at: Timestamp(1_767_225_600_000) }
}

#[test]
fn amounts_are_decimal_strings_and_ids_are_numbers() {
    assert_eq!(round_trip(&Amount::fen(1234)), serde_json::json!("12.34"));
    assert_eq!(round_trip(&Amount::ZERO), serde_json::json!("0.00"));
    assert_eq!(round_trip(&UserId(7)), serde_json::json!(7));
    round_trip(&(GroupId(1), PacketId(u64::MAX), OpId(0)));
    // Bad amounts are refused with the parser's reason, never read as floats.
    for bad in ["\"12.345\"", "\"-1\"", "12.34", "\"1e3\""] {
        assert!(serde_json::from_str::<Amount>(bad).is_err(), "{bad}");
    }
}

#[test]
fn packets_and_grabs_round_trip() {
    let spec = NewPacket {
        id: PacketId(42),
        sender: UserId(1),
        group: GroupId(7),
        split: Split::lucky(Amount::yuan(100), 3),
        greeting: "恭喜发财".into(),
    };
    let json = round_trip(&spec);
    let lucky = serde_json::json!({ "kind": "lucky", "total": "100.00", "shares": 3, "draw": "double_mean" });
    assert_eq!(json["split"], lucky);
    // A client that names no draw rule gets the double mean.
    let unnamed = serde_json::json!({ "kind": "lucky", "total": "100.00", "shares": 3 });
    assert_eq!(serde_json::from_value::<Split>(unnamed).unwrap(), Split::lucky(Amount::yuan(100), 3));
    let shuffled = round_trip(&Split::shuffled(Amount::yuan(1), 3));
    assert_eq!(shuffled["draw"], "shuffled");
    round_trip(&Split::Fixed { each: Amount::fen(88), shares: 2 });
    round_trip(&Split::Exclusive { to: UserId(3), amount: Amount::fen(9) });
    let view = PacketView {
        id: spec.id,
        sender: spec.sender,
        group: spec.group,
        split: spec.split.clone(),
        greeting: spec.greeting.clone(),
        total: Amount::yuan(100),
        shares: 3,
        status: PacketStatus::Expired { refunded: Amount::fen(5) },
        remaining: Amount::ZERO,
        shares_left: 1,
        claims: vec![claim(2, 9_000, 1), claim(3, 995, 2)],
        best_luck: Some(claim(2, 9_000, 1)),
        sent_at: Timestamp(1),
        opens_at: Timestamp(1),
        approval: Some(hongbao::Approval {
            approver: hongbao::Approver::OrgAdmins(hongbao::OrgId(3)),
            until: Timestamp(9),
        }),
        opened_at: None,
        expires_at: Timestamp(2),
        closed_at: Some(Timestamp(2)),
        seed: 99,
    };
    assert_eq!(round_trip(&view)["status"], serde_json::json!({ "kind": "expired", "refunded": "0.05" }));
    round_trip(&PacketStatus::Open);
    round_trip(&PacketStatus::SoldOut);
    let cooling = round_trip(&PacketStatus::CoolingOff { until: Timestamp(7) });
    assert_eq!(cooling, serde_json::json!({ "kind": "cooling_off", "until": 7 }));
    round_trip(&PacketStatus::Cancelled { refunded: Amount::fen(5) });
    let rent = hongbao::NewTransfer {
        org: None,
        id: hongbao::TransferId(9),
        from: UserId(1),
        to: UserId(2),
        amount: Amount::yuan(300),
        arrival: hongbao::Arrival::Delayed { secs: 7_200 },
        note: "房租".into(),
    };
    let json = round_trip(&rent);
    assert_eq!(json["arrival"], serde_json::json!({ "kind": "delayed", "secs": 7_200 }));
    assert_eq!(json["amount"], serde_json::json!("300.00"));
    let late = hongbao::TransferError::TooLate { status: hongbao::TransferStatus::Returned };
    assert_eq!(round_trip(&late), serde_json::json!({ "kind": "too_late", "status": { "kind": "returned" } }));
    round_trip(&hongbao::TransferStatus::AwaitingAcceptance { until: Timestamp(3) });
    round_trip(&hongbao::CancelError::AlreadyCancelled { refunded: Amount::fen(5) });
    round_trip(&hongbao::CoolingOff { threshold: Amount::yuan(200), secs: 300 });
    let policy = hongbao::Policy {
        recall: hongbao::RecallPolicy::Whitelist(vec![UserId(7), UserId(8)]),
        approval_above: Some(Amount::yuan(1_000)),
        daily_sent_fen_max: None,
    };
    let json = round_trip(&policy);
    assert_eq!(json["recall"], serde_json::json!({ "kind": "whitelist", "senders": [7, 8] }));
    assert_eq!(round_trip(&hongbao::Policy::default())["recall"], serde_json::json!({ "kind": "off" }));
    round_trip(&hongbao::NewOrg { admins: vec![UserId(100)], name: "Acme".into() });
    round_trip(&hongbao::RecallError::NotWhitelisted { sender: UserId(7) });
    round_trip(&hongbao::OrgError::GroupTaken { group: GroupId(7), org: hongbao::OrgId(3) });
    round_trip(&PacketStatus::Recalled { refunded: Amount::fen(5) });
    let subject = round_trip(&hongbao::ApprovalId::Packet(PacketId(43)));
    assert_eq!(subject, serde_json::json!({ "kind": "packet", "id": 43 }));
    round_trip(&hongbao::Guardian { guardian: UserId(61), above: Amount::yuan(500) });
    round_trip(&hongbao::ApprovalError::NotApprover { user: UserId(7) });
    round_trip(&PacketStatus::AwaitingApproval { until: Timestamp(9) });
    round_trip(&hongbao::TransferStatus::Rejected);
    let grabbed = hongbao::Grabbed {
        packet: PacketId(1),
        user: UserId(2),
        amount: Amount::fen(3),
        position: 1,
        shares_left: 0,
        remaining: Amount::ZERO,
        remitted: Some(hongbao::Remittance {
            from: 1,
            to: 2,
            seq: 3,
            user: UserId(2),
            amount: Amount::fen(3),
            packet: None,
            transfer: None,
            returned: None,
        }),
    };
    round_trip(&grabbed);
    round_trip(&hongbao::RemittanceError::Gap { from: 1, to: 2, seq: 5, expected: 4 });
    // A remittance that carries a packet to open where its id places it: the whole send, its
    // sender and total as its user and amount; one that carries none says nothing of it.
    let spec = hongbao::NewPacket {
        id: hongbao::PacketId(9),
        sender: UserId(2),
        group: hongbao::GroupId(1),
        split: hongbao::Split::lucky(Amount::fen(300), 3),
        greeting: "远方".into(),
    };
    let (sent_at, opens_at, expires_at) = (Timestamp(1), Timestamp(1), Timestamp(86_400_001));
    let sent = hongbao::PacketSent {
        spec,
        seed: 7,
        sent_at,
        expires_at,
        share_fen_max: 20_000,
        opens_at,
        day: 0,
        approval: None,
    };
    let carrying = hongbao::Remittance {
        from: 0,
        to: 1,
        seq: 4,
        user: UserId(2),
        amount: Amount::fen(300),
        packet: Some(Box::new(sent)),
        transfer: None,
        returned: None,
    };
    let json = round_trip(&carrying);
    assert_eq!(
        (json["packet"]["spec"]["greeting"].as_str(), json["amount"].as_str()),
        (Some("远方"), Some("3.00")),
        "{json}"
    );
    assert!(round_trip(&hongbao::Remittance { packet: None, ..carrying.clone() }).get("packet").is_none());
    // One that carries a transfer to be held where its id places it.
    let transfer = hongbao::TransferSent {
        spec: hongbao::NewTransfer {
            id: hongbao::TransferId(5),
            from: UserId(2),
            to: UserId(3),
            amount: Amount::fen(300),
            arrival: hongbao::Arrival::Delayed { secs: 7_200 },
            note: "房租".into(),
            org: None,
        },
        sent_at,
        day: 0,
        cooling_until: sent_at,
        arrives_at: Timestamp(7_200_001),
        accept_until: Timestamp(93_600_001),
        approval: None,
    };
    let json = round_trip(&hongbao::Remittance { packet: None, transfer: Some(Box::new(transfer)), ..carrying });
    assert_eq!(json["transfer"]["spec"]["note"].as_str(), Some("房租"), "{json}");
    assert!(json.get("packet").is_none(), "{json}");
}

#[test]
fn every_event_round_trips() {
    let (packet, group, user) = (PacketId(1), GroupId(2), UserId(3));
    let events = [
        Event::PacketSent {
            packet,
            sender: user,
            group,
            split: Split::Fixed { each: Amount::fen(1), shares: 2 },
            greeting: "hi".into(),
            total: Amount::fen(2),
            shares: 2,
            expires_at: Timestamp(5),
        },
        Event::Grabbed { packet, group, user, amount: Amount::fen(1), position: 1, shares_left: 1 },
        Event::SoldOut { packet, group, best_luck: user, best_amount: Amount::fen(1) },
        Event::Expired { packet, group, sender: user, refunded: Amount::fen(1) },
        Event::Deposited { op: OpId(1), user, amount: Amount::fen(1), balance: Amount::fen(1) },
        Event::Withdrawn { op: OpId(2), user, amount: Amount::fen(1), balance: Amount::ZERO },
    ];
    for event in &events {
        let json = round_trip(event);
        assert!(json["kind"].is_string(), "{json}");
    }
    assert_eq!(round_trip(&events[1])["kind"], "grabbed");
}

#[test]
fn every_error_round_trips_as_a_kind_and_fields() {
    let json = round_trip(&GrabError::AlreadyGrabbed { amount: Amount::yuan(1), position: 3 });
    assert_eq!(json, serde_json::json!({ "kind": "already_grabbed", "amount": "1.00", "position": 3 }));
    for e in [GrabError::SoldOut, GrabError::Expired, GrabError::NotEligible, GrabError::UnknownPacket, GrabError::Busy]
    {
        round_trip(&e);
    }
    let reason = InvalidSplit::TooManyShares { shares: 9, max: 8 };
    let json = round_trip(&SendError::InvalidSplit { reason });
    assert_eq!(json["reason"]["kind"], "too_many_shares");
    round_trip(&SendError::InsufficientFunds { balance: Amount::fen(1), needed: Amount::fen(2) });
    round_trip(&SendError::GreetingTooLong { bytes: 300, max: 256 });
    round_trip(&WalletError::IdConflict { op: OpId(4) });
    round_trip(&WalletError::BalanceLimit { max: Amount::yuan(1) });
    round_trip(&EngineError::TooManyMembers { members: 5, max: 4 });
    round_trip(&EngineError::Irrevocable { packet: PacketId(1) });
    assert_eq!(round_trip(&EventsError::Lagged { skipped: 3 }), serde_json::json!({ "kind": "lagged", "skipped": 3 }));
}

#[tokio::test]
async fn an_audit_round_trips() {
    let engine = hongbao::Engine::start(hongbao::Config::default()).unwrap();
    engine.deposit(OpId(1), UserId(1), Amount::yuan(3)).await.unwrap();
    let audit = engine.audit().await.unwrap();
    assert_eq!(round_trip(&audit)["deposits"], "3.00");
    engine.shutdown().await;
}
