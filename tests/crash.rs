//! `kill -9` in the middle of a storm on a `Durability::Sync` journal.
//!
//! The parent re-runs this test binary as a child (selected by `HONGBAO_CRASH_CHILD_DIR`) that
//! runs packets and grab storms (in an org's group, every fifth raced by an admin recall),
//! transfers (accepted, declined, recalled, left in transit) and packets held by a cooling-off
//! (some cancelled), and prints every operation the moment it is
//! acknowledged. The parent kills it with SIGKILL at a random moment, restarts the engine on
//! the directory and checks that every acknowledged operation is there, nobody was paid twice
//! and money is conserved; then it runs every packet and transfer to completion and checks
//! again.
//!
//! 20 iterations by default; `HONGBAO_CRASH_ITERATIONS=N` runs N. The seed of the kill times
//! is printed on failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hongbao::{
    Amount, Arrival, CancelError, Config, CoolingOff, Durability, Engine, GrabError, GroupId, NewOrg, NewPacket,
    NewTransfer, OpId, OpKind, OpQuery, OrgId, PacketId, PacketStatus, Policy, RecallPolicy, Split, TransferError,
    TransferId, TransferStatus, UserId,
};
use hongbao::{ApprovalError, ApprovalId, Guardian};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MEMBERS: u64 = 200;
const SHARES: u32 = 50;
const SENDER: UserId = UserId(1);
/// Sends packets above their cooling-off threshold: every one of them is held.
const CAREFUL: UserId = UserId(2);
/// Ids of the careful sender's packets, after the storm packets' ids.
const HELD_IDS: u64 = 1 << 40;
/// Sends transfers that wait for their guardian's approval, and the guardian; their ids.
const GUARDED: UserId = UserId(3);
const GUARDIAN: UserId = UserId(4);
const GUARDED_IDS: u64 = 1 << 41;
/// The org group 1 belongs to, and its admin, who may recall the sender's packets.
const ORG: OrgId = OrgId(3);
const ADMIN: UserId = UserId(100);
const CHILD_ENV: &str = "HONGBAO_CRASH_CHILD_DIR";

fn member(i: u64) -> UserId {
    UserId(1_000 + i)
}

fn config(dir: &Path) -> Config {
    Config { arbiters: 2, wallet_shards: 3, ..Config::default() }.with_seed(3).with_journal_dir(dir, Durability::Sync)
}

/// The child: storms on the journal, printing acknowledgements as they arrive.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let engine = Engine::start(config(Path::new(&dir))).unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let ack = |line: String| {
            let mut out = out.lock().unwrap();
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        };
        let mut roster: Vec<UserId> = (0..MEMBERS).map(member).collect();
        roster.extend([SENDER, CAREFUL]);
        engine.set_members(GroupId(1), roster).await.unwrap();
        let careful = CoolingOff { threshold: Amount::yuan(1), secs: 3_600 };
        engine.set_cooling_off(CAREFUL, careful).await.unwrap();
        engine.set_guardian(GUARDED, Guardian { guardian: GUARDIAN, above: Amount::yuan(1) }).await.unwrap();
        engine.create_org(ORG, NewOrg { admins: vec![ADMIN], name: String::new() }).await.unwrap();
        engine.attach_group(ORG, GroupId(1), ADMIN).await.unwrap();
        let recall = Policy { recall: RecallPolicy::Whitelist(vec![SENDER]), ..Policy::default() };
        engine.set_policy(ORG, ADMIN, recall).await.unwrap();
        // Packet ids continue after whatever earlier runs on this directory sent.
        for p in 0u64.. {
            let deposits =
                [(OpId(1_000_000 + p), SENDER), (OpId(2_000_000 + p), CAREFUL), (OpId(3_000_000 + p), GUARDED)];
            for (op, user) in deposits {
                if engine.deposit(op, user, Amount::fen(1_100)).await.is_ok() {
                    ack(format!("deposit {} {} {}", op.0, 1_100, user.0));
                }
            }
            transfer_and_hold(&engine, p, &ack).await;
            let spec = NewPacket {
                id: PacketId(p),
                sender: SENDER,
                group: GroupId(1),
                split: Split::lucky(Amount::yuan(10), SHARES),
                greeting: String::new(),
            };
            if engine.send_packet(spec).await.is_err() {
                continue;
            }
            ack(format!("sent {p}"));
            // Every fifth packet: an admin recall races the storm.
            let recall = (p % 5 == 4).then(|| {
                let engine = engine.clone();
                tokio::spawn(async move { engine.admin_recall(PacketId(p), ADMIN, String::new()).await })
            });
            let grabs: Vec<_> = (0..MEMBERS)
                .map(|i| {
                    let engine = engine.clone();
                    tokio::spawn(async move { (member(i), engine.grab(PacketId(p), member(i)).await) })
                })
                .collect();
            for g in grabs {
                if let (user, Ok(won)) = g.await.unwrap() {
                    ack(format!("grab {p} {} {}", user.0, won.amount.as_fen()));
                }
            }
            if let Some(Ok(refund)) = match recall {
                Some(task) => Some(task.await.unwrap()),
                None => None,
            } {
                ack(format!("recall {p} {}", refund.as_fen()));
            }
        }
    });
}

/// One transfer from the sender to a member, moved according to `p` (accepted, declined,
/// recalled or left in transit), and one packet held by the careful sender's cooling-off
/// (cancelled every other time).
async fn transfer_and_hold(engine: &Engine, p: u64, ack: &impl Fn(String)) {
    let arrival = if p.is_multiple_of(2) { Arrival::Instant } else { Arrival::Delayed { secs: 7_200 } };
    let spec = NewTransfer {
        org: None,
        id: TransferId(p),
        from: SENDER,
        to: member(p % MEMBERS),
        amount: Amount::yuan(1),
        arrival,
        note: String::new(),
    };
    if engine.transfer(spec).await.is_ok() {
        ack(format!("transfer {p}"));
        let (id, to) = (TransferId(p), member(p % MEMBERS));
        let moved = match p % 4 {
            0 => engine.accept_transfer(id, to).await.map(|_| "accepted"),
            2 => engine.decline_transfer(id, to).await.map(|_| "declined"),
            1 => engine.recall_transfer(id, SENDER).await.map(|_| "recalled"),
            _ => Err(TransferError::Busy),
        };
        if let Ok(how) = moved {
            ack(format!("{how} {p}"));
        }
    }
    // A transfer waiting for its guardian: approved, rejected, or left waiting.
    let guarded = NewTransfer {
        org: None,
        id: TransferId(GUARDED_IDS + p),
        from: GUARDED,
        to: member(p % MEMBERS),
        amount: Amount::yuan(2),
        arrival: Arrival::Instant,
        note: String::new(),
    };
    if engine.transfer(guarded).await.is_ok() {
        ack(format!("transfer {}", GUARDED_IDS + p));
        let subject = ApprovalId::Transfer(TransferId(GUARDED_IDS + p));
        let decided = match p % 3 {
            0 => engine.approve(subject, GUARDIAN).await.map(|_| "approved"),
            1 => engine.reject(subject, GUARDIAN, String::new()).await.map(|_| "rejected"),
            _ => Err(ApprovalError::Busy),
        };
        if let Ok(how) = decided {
            ack(format!("{how} {}", GUARDED_IDS + p));
        }
    }
    let held = NewPacket {
        id: PacketId(HELD_IDS + p),
        sender: CAREFUL,
        group: GroupId(1),
        split: Split::Fixed { each: Amount::fen(550), shares: 2 },
        greeting: String::new(),
    };
    if engine.send_packet(held).await.is_ok() {
        ack(format!("held {p}"));
        if p.is_multiple_of(2) && engine.cancel_packet(PacketId(HELD_IDS + p), CAREFUL).await.is_ok() {
            ack(format!("cancelled {p}"));
        }
    }
}

#[derive(Default)]
struct Acks {
    /// Operation id → (fen, user).
    deposits: HashMap<u64, (u64, u64)>,
    sent: Vec<u64>,
    grabs: Vec<(u64, u64, u64)>,
    /// Transfer id → how it moved, if the move was acknowledged.
    transfers: HashMap<u64, Option<TransferStatus>>,
    /// Held packet → whether its cancellation was acknowledged.
    held: HashMap<u64, bool>,
    /// Packets an admin recall took back, with the refund.
    recalls: HashMap<u64, u64>,
    /// Transfers whose guardian's approval was acknowledged.
    approved: Vec<u64>,
}

fn parse(lines: &[String]) -> Acks {
    let mut acks = Acks::default();
    for line in lines {
        let f: Vec<u64> = line.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
        match line.split(' ').next() {
            Some("deposit") => {
                acks.deposits.insert(f[0], (f[1], f[2]));
            }
            Some("transfer") => {
                acks.transfers.insert(f[0], None);
            }
            Some(how @ ("accepted" | "declined" | "recalled" | "rejected")) => {
                let status = match how {
                    "accepted" => TransferStatus::Accepted,
                    "declined" => TransferStatus::Declined,
                    "rejected" => TransferStatus::Rejected,
                    _ => TransferStatus::Recalled,
                };
                acks.transfers.insert(f[0], Some(status));
            }
            Some("approved") => {
                acks.approved.push(f[0]);
            }
            Some("recall") => {
                acks.recalls.insert(f[0], f[1]);
            }
            Some("held") => {
                acks.held.insert(f[0], false);
            }
            Some("cancelled") => {
                acks.held.insert(f[0], true);
            }
            Some("sent") => acks.sent.push(f[0]),
            Some("grab") => acks.grabs.push((f[0], f[1], f[2])),
            _ => panic!("unexpected line {line:?}"),
        }
    }
    acks
}

async fn verify(engine: &Engine, acks: &Acks, ctx: &str) {
    // Every acknowledged grab is a claim of that member for that amount.
    for &(p, user, fen) in &acks.grabs {
        let view = engine.packet(PacketId(p)).await.unwrap_or_else(|e| panic!("{ctx}: packet {p}: {e}"));
        assert!(
            view.claims.iter().any(|c| c.user == UserId(user) && c.amount.as_fen() == fen),
            "{ctx}: acknowledged grab of {fen} fen by {user} on packet {p} is missing"
        );
    }
    for &p in &acks.sent {
        engine.packet(PacketId(p)).await.unwrap_or_else(|e| panic!("{ctx}: acknowledged packet {p} missing: {e}"));
    }
    for (&t, moved) in &acks.transfers {
        let view = engine.transfer_view(TransferId(t)).await;
        let view = view.unwrap_or_else(|e| panic!("{ctx}: acknowledged transfer {t} missing: {e}"));
        if let Some(status) = moved {
            assert_eq!(view.status, *status, "{ctx}: transfer {t}");
        }
    }
    for &t in &acks.approved {
        let status = engine.transfer_view(TransferId(t)).await.map(|v| v.status);
        let waiting = matches!(status, Ok(TransferStatus::AwaitingApproval { .. }) | Ok(TransferStatus::Rejected));
        assert!(status.is_ok() && !waiting, "{ctx}: approved transfer {t} is {status:?}");
    }
    for (&p, &refund) in &acks.recalls {
        let view = engine.packet(PacketId(p)).await;
        let status = view.unwrap_or_else(|e| panic!("{ctx}: recalled packet {p} missing: {e}")).status;
        assert_eq!(status, PacketStatus::Recalled { refunded: Amount::fen(refund) }, "{ctx}: packet {p}");
    }
    // The org's log has each recall once, as the journal does.
    let recalls = OpQuery { kind: Some(OpKind::PacketRecalled), ..OpQuery::default() };
    let logged = engine.operations(ORG, recalls).await.unwrap().entries;
    let mut logged: Vec<u64> = logged.iter().map(|e| e.packet.expect("a recall names its packet").0).collect();
    logged.sort_unstable();
    assert!(logged.windows(2).all(|w| w[0] < w[1]), "{ctx}: a recall logged twice: {logged:?}");
    assert!(acks.recalls.keys().all(|p| logged.contains(p)), "{ctx}: an acknowledged recall is not in the log");
    for (&p, &cancelled) in &acks.held {
        let view = engine.packet(PacketId(HELD_IDS + p)).await;
        let status = view.unwrap_or_else(|e| panic!("{ctx}: acknowledged held packet {p} missing: {e}")).status;
        if cancelled {
            assert_eq!(status, PacketStatus::Cancelled { refunded: Amount::fen(1_100) }, "{ctx}: held packet {p}");
        } else {
            let held = matches!(status, PacketStatus::CoolingOff { .. } | PacketStatus::Cancelled { .. });
            assert!(held, "{ctx}: held packet {p} is {status:?}");
        }
    }
    // Every acknowledged deposit is applied: retrying it is recognised as a repeat.
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{ctx}: {audit:?}");
    let acked: u64 = acks.deposits.values().map(|(fen, _)| fen).sum();
    assert!(audit.deposits.as_fen() >= acked, "{ctx}: {} fen deposited, {acked} acknowledged", audit.deposits.as_fen());
}

/// Every acknowledged deposit is in the recovered journal: retried with its id and fields, each
/// is recognised as applied (a deposit missing from the journal would be applied now and move
/// the deposits total).
async fn acknowledged_deposits_recovered(engine: &Engine, acks: &Acks, ctx: &str) {
    let before = engine.audit().await.unwrap().deposits;
    for (&op, &(fen, user)) in &acks.deposits {
        let retried = engine.deposit(OpId(op), UserId(user), Amount::fen(fen)).await;
        assert!(retried.is_ok(), "{ctx}: acknowledged deposit {op}: {retried:?}");
    }
    assert_eq!(engine.audit().await.unwrap().deposits, before, "{ctx}: an acknowledged deposit was missing");
}

/// Moves every transfer the child sent (acknowledged or not: ids run from 0) to a settlement,
/// and cancels every held packet: nothing may stay pending, and nothing settles twice.
async fn settle_everything(engine: &Engine, acks: &Acks, ctx: &str) {
    let last = acks.transfers.keys().chain(acks.held.keys()).filter(|&&t| t < GUARDED_IDS).max().map_or(0, |&m| m + 1);
    for t in (0..=last).chain((0..=last).map(|p| GUARDED_IDS + p)) {
        let (id, to) = (TransferId(t), member(t % MEMBERS));
        if t >= GUARDED_IDS {
            // The guardian's: accept what arrived, reject what waits.
            let to = member((t - GUARDED_IDS) % MEMBERS);
            match engine.transfer_view(id).await.map(|v| v.status) {
                Ok(TransferStatus::AwaitingApproval { .. }) => {
                    engine.reject(ApprovalId::Transfer(id), GUARDIAN, String::new()).await.unwrap();
                }
                Ok(TransferStatus::AwaitingAcceptance { .. }) => drop(engine.accept_transfer(id, to).await.unwrap()),
                Ok(_) | Err(TransferError::UnknownTransfer) => {}
                Err(e) => panic!("{ctx}: guarded transfer {t}: {e}"),
            }
            continue;
        }
        match engine.transfer_view(id).await {
            Err(TransferError::UnknownTransfer) => continue,
            Ok(view) => match view.status {
                TransferStatus::AwaitingAcceptance { .. } => drop(engine.accept_transfer(id, to).await.unwrap()),
                TransferStatus::InTransit { .. } | TransferStatus::CoolingOff { .. } => {
                    drop(engine.recall_transfer(id, SENDER).await.unwrap())
                }
                _ => {}
            },
            Err(e) => panic!("{ctx}: transfer {t}: {e}"),
        }
        match engine.cancel_packet(PacketId(HELD_IDS + t), CAREFUL).await {
            Ok(_) | Err(CancelError::UnknownPacket | CancelError::AlreadyCancelled { .. }) => {}
            Err(e) => panic!("{ctx}: held packet {t}: {e}"),
        }
    }
}

#[test]
fn acknowledged_operations_survive_kill_9() {
    let iterations: u64 = std::env::var("HONGBAO_CRASH_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("HONGBAO_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0xC4A5);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    for iteration in 0..iterations {
        let ctx = format!("seed {seed} iteration {iteration}");
        let dir: PathBuf = std::env::temp_dir().join(format!("hongbao-crash-{}-{iteration}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| {
                    [
                        "deposit",
                        "sent",
                        "grab",
                        "recall",
                        "transfer",
                        "accepted",
                        "declined",
                        "recalled",
                        "rejected",
                        "approved",
                        "held",
                        "cancelled",
                    ]
                    .iter()
                    .any(|kind| l.split(' ').next() == Some(kind))
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(50..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acks = parse(&reader.join().unwrap());

        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let engine = Engine::start(config(&dir)).unwrap_or_else(|e| panic!("{ctx}: restart refused: {e}"));
            acknowledged_deposits_recovered(&engine, &acks, &ctx).await;
            verify(&engine, &acks, &ctx).await;
            // Finish every packet: each member grabs each packet once more.
            let mut sent: Vec<u64> = acks.sent.clone();
            sent.extend(acks.grabs.iter().map(|g| g.0));
            sent.sort_unstable();
            sent.dedup();
            for &p in &sent {
                let grabs = (0..MEMBERS).map(|i| {
                    let engine = engine.clone();
                    async move { engine.grab(PacketId(p), member(i)).await }
                });
                for reply in futures::future::join_all(grabs).await {
                    match reply {
                        Ok(_) | Err(GrabError::AlreadyGrabbed { .. } | GrabError::SoldOut | GrabError::Recalled) => {}
                        other => panic!("{ctx}: packet {p}: {other:?}"),
                    }
                }
                let view = engine.packet(PacketId(p)).await.unwrap();
                if !matches!(view.status, PacketStatus::Recalled { .. }) {
                    assert_eq!(view.claims.len(), SHARES as usize, "{ctx}: packet {p} sells out");
                }
            }
            settle_everything(&engine, &acks, &ctx).await;
            verify(&engine, &acks, &ctx).await;
            let audit = engine.audit().await.unwrap();
            assert_eq!((audit.pending, audit.transfers_pending), (Amount::ZERO, 0), "{ctx}: {audit:?}");
            engine.shutdown().await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
