//! `hongbao audit` as an operator runs it: a clean journal passes, a damaged one fails naming
//! the segment and byte of the first bad record, in text and in JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hongbao::{
    Amount, Arrival, Config, CoolingOff, Durability, Engine, FileJournalConfig, GroupId, NewPacket, NewTransfer, OpId,
    PacketId, Split, TransferId, UserId,
};

fn audit(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hongbao")).arg("audit").args(args).arg(dir).output().expect("hongbao runs")
}

/// A journal of six records (a roster, a deposit, a packet and three grabs), with no snapshot, so that every
/// record stays in the one segment.
async fn write_journal(dir: &Path) -> PathBuf {
    let mut journal = FileJournalConfig::new(dir, Durability::Sync);
    journal.snapshot_every_records = None;
    let config = Config { journal_dir: Some(journal), ..Config::default() }.with_seed(3);
    let engine = Engine::start(config).unwrap();
    engine.set_members(GroupId(1), (1..=4).map(UserId)).await.unwrap();
    engine.deposit(OpId(1), UserId(1), Amount::yuan(10)).await.unwrap();
    let split = Split::lucky(Amount::yuan(5), 5);
    let spec = NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(1), split, greeting: "hi".into() };
    engine.send_packet(spec).await.unwrap();
    for u in 2..=4 {
        engine.grab(PacketId(1), UserId(u)).await.unwrap();
    }
    engine.shutdown().await;
    dir.join("00000000000000000000.hbj")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_a_clean_journal_and_names_the_first_bad_record() {
    let dir = std::env::temp_dir().join(format!("hongbao-cli-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let segment = write_journal(&dir).await;

    let clean = audit(&[], &dir);
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{text}");
    assert!(text.contains("records      6 in 1 segments") && text.contains("verdict      ok"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&audit(&["--json"], &dir).stdout).unwrap();
    assert_eq!((json["ok"].as_bool(), json["packets"]["open"].as_u64()), (Some(true), Some(1)), "{json}");
    assert_eq!(json["totals_fen"]["deposits"], 1_000);

    // Flip a bit inside the payload of the last record (a frame: 40 header bytes, then the
    // payload; the last record is a 37-byte claim).
    let mut bytes = std::fs::read(&segment).unwrap();
    let victim = bytes.len() - 37 - 40;
    bytes[victim + 45] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    // The last record runs to the end of the file: a torn final write, cut and reported.
    let torn = audit(&[], &dir);
    assert!(String::from_utf8_lossy(&torn.stdout).contains("torn tail"), "{}", String::from_utf8_lossy(&torn.stdout));

    // A damaged record with a valid one after it is corruption.
    bytes[victim + 45] ^= 0x40;
    let victim = victim - 37 - 40;
    bytes[victim + 45] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let out = audit(&[], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("at byte {victim}")) && text.contains("checksum"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&audit(&["--json"], &dir).stdout).unwrap();
    assert_eq!(json["first_bad_record"]["offset"], victim as u64, "{json}");
    assert_eq!(json["first_bad_record"]["record"], 4, "{json}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Transfers and packets held by a cooling-off are audited too: each transfer settled once,
/// the money they hold counted as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_counts_transfers_and_what_they_hold() {
    let dir = std::env::temp_dir().join(format!("hongbao-cli-audit-transfers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = Config::default().with_seed(3).with_journal_dir(&dir, Durability::Sync);
    let engine = Engine::start(config).unwrap();
    engine.set_members(GroupId(1), (1..=4).map(UserId)).await.unwrap();
    engine.deposit(OpId(1), UserId(1), Amount::yuan(100)).await.unwrap();
    let transfer = |id, arrival| NewTransfer {
        org: None,
        id: TransferId(id),
        from: UserId(1),
        to: UserId(2),
        amount: Amount::yuan(10),
        arrival,
        note: String::new(),
    };
    engine.transfer(transfer(1, Arrival::Instant)).await.unwrap();
    engine.accept_transfer(TransferId(1), UserId(2)).await.unwrap();
    engine.transfer(transfer(2, Arrival::Delayed { secs: 7_200 })).await.unwrap();
    engine.set_cooling_off(UserId(1), CoolingOff { threshold: Amount::yuan(1), secs: 600 }).await.unwrap();
    let split = Split::Fixed { each: Amount::yuan(1), shares: 3 };
    let spec = NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(1), split, greeting: String::new() };
    engine.send_packet(spec).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    let out = audit(&[], &dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("transfers    1 pending, 1 settled"), "{text}");
    assert!(text.contains("1 cooling off") && text.contains("pending 13.00"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&audit(&["--json"], &dir).stdout).unwrap();
    assert_eq!(json["transfers"], serde_json::json!({ "pending": 1, "settled": 1 }), "{json}");
    assert_eq!(json["totals_fen"]["pending"], 1_300, "{json}");
    assert_eq!(json["packets"]["cooling_off"], 1, "{json}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `hongbao log` prints an org's operation log from the journal, filtered, as text or JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_prints_an_orgs_operations() {
    let dir = std::env::temp_dir().join(format!("hongbao-cli-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = Engine::start(Config::default().with_seed(3).with_journal_dir(&dir, Durability::Sync)).unwrap();
    engine.set_members(GroupId(1), (1..=4).map(UserId)).await.unwrap();
    engine.deposit(OpId(1), UserId(1), Amount::yuan(100)).await.unwrap();
    let org = hongbao::OrgId(3);
    engine.create_org(org, hongbao::NewOrg { admins: vec![UserId(100)], name: "Acme".into() }).await.unwrap();
    engine.attach_group(org, GroupId(1), UserId(100)).await.unwrap();
    let whitelist = hongbao::RecallPolicy::Whitelist(vec![UserId(1)]);
    engine.set_policy(org, UserId(100), hongbao::Policy { recall: whitelist, ..Default::default() }).await.unwrap();
    let split = Split::Fixed { each: Amount::yuan(1), shares: 3 };
    let spec = NewPacket { id: PacketId(1), sender: UserId(1), group: GroupId(1), split, greeting: String::new() };
    engine.send_packet(spec).await.unwrap();
    engine.grab(PacketId(1), UserId(2)).await.unwrap();
    engine.admin_recall(PacketId(1), UserId(100), "wrong group".into()).await.unwrap();
    engine.shutdown().await;
    drop(engine);

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hongbao")).arg("log").arg(&dir).args(args).output().expect("hongbao runs")
    };
    let out = run(&["--org", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("6 entries; checksums and hash chain verified"), "{text}");
    assert!(text.contains("packet_recalled") && text.contains("wrong group"), "{text}");
    let claims = run(&["--org", "3", "--kind", "claimed", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&claims.stdout).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!((entries[0]["actor"].as_u64(), entries[0]["amount"].as_str()), (Some(2), Some("1.00")), "{json}");
    let bad = run(&["--org", "3", "--kind", "nothing"]);
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Inspecting never creates: `open` and `audit` of a mistyped path, an empty directory, a
/// foreign one or a file fail and say why, and leave nothing behind.
#[test]
fn open_and_audit_refuse_what_is_not_a_journal() {
    let base = std::env::temp_dir().join(format!("hongbao-cli-wrong-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (missing, empty, foreign, file) = (base.join("typo"), base.join("empty"), base.join("foreign"), base.join("f"));
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "not a journal").unwrap();
    std::fs::write(&file, "a file").unwrap();
    let run = |args: &[&str], dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hongbao")).args(args).arg(dir).output().expect("hongbao runs")
    };
    for (dir, says) in [
        (&missing, "No such file"),
        (&empty, "no hongbao journal"),
        (&foreign, "no hongbao journal"),
        (&file, "not a directory"),
    ] {
        for args in [&["open"][..], &["audit"][..], &["audit", "--json"][..]] {
            let out = run(args, dir);
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{args:?} {}: {text}", dir.display());
            assert!(text.contains(says), "{args:?} {}: {text}", dir.display());
        }
    }
    assert!(!missing.exists(), "open created the mistyped directory");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "open wrote into the empty directory");
    std::fs::remove_dir_all(&base).unwrap();
}
