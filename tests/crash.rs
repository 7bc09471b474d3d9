//! `kill -9` in the middle of a storm on a `Durability::Sync` journal.
//!
//! The parent re-runs this test binary as a child (selected by `HONGBAO_CRASH_CHILD_DIR`) that
//! runs packets and grab storms and prints every operation the moment it is acknowledged. The
//! parent kills it with SIGKILL at a random moment, restarts the engine on the directory and
//! checks that every acknowledged operation is there, nobody was paid twice and money is
//! conserved; then it runs every packet to completion and checks again.
//!
//! 20 iterations by default; `HONGBAO_CRASH_ITERATIONS=N` runs N. The seed of the kill times
//! is printed on failure.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hongbao::{Amount, Config, Durability, Engine, GrabError, GroupId, NewPacket, OpId, PacketId, Split, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MEMBERS: u64 = 200;
const SHARES: u32 = 50;
const SENDER: UserId = UserId(1);
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
        roster.push(SENDER);
        engine.set_members(GroupId(1), roster).await.unwrap();
        // Packet ids continue after whatever earlier runs on this directory sent.
        for p in 0u64.. {
            let op = OpId(1_000_000 + p);
            if engine.deposit(op, SENDER, Amount::yuan(10)).await.is_ok() {
                ack(format!("deposit {} {}", op.0, 1_000));
            }
            let spec = NewPacket {
                id: PacketId(p),
                sender: SENDER,
                group: GroupId(1),
                split: Split::Lucky { total: Amount::yuan(10), shares: SHARES },
                greeting: String::new(),
            };
            if engine.send_packet(spec).await.is_err() {
                continue;
            }
            ack(format!("sent {p}"));
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
        }
    });
}

#[derive(Default)]
struct Acks {
    deposits: HashMap<u64, u64>,
    sent: Vec<u64>,
    grabs: Vec<(u64, u64, u64)>,
}

fn parse(lines: &[String]) -> Acks {
    let mut acks = Acks::default();
    for line in lines {
        let f: Vec<u64> = line.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
        match line.split(' ').next() {
            Some("deposit") => {
                acks.deposits.insert(f[0], f[1]);
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
    // Every acknowledged deposit is applied: retrying it is recognised as a repeat.
    let audit = engine.audit().await.unwrap();
    assert!(audit.is_balanced(), "{ctx}: {audit:?}");
    let acked: u64 = acks.deposits.values().sum();
    assert!(audit.deposits.as_fen() >= acked, "{ctx}: {} fen deposited, {acked} acknowledged", audit.deposits.as_fen());
}

/// Every acknowledged deposit is in the recovered journal: retried with its id and fields, each
/// is recognised as applied (a deposit missing from the journal would be applied now and move
/// the deposits total).
async fn acknowledged_deposits_recovered(engine: &Engine, acks: &Acks, ctx: &str) {
    let before = engine.audit().await.unwrap().deposits;
    for (&op, &fen) in &acks.deposits {
        let retried = engine.deposit(OpId(op), SENDER, Amount::fen(fen)).await;
        assert!(retried.is_ok(), "{ctx}: acknowledged deposit {op}: {retried:?}");
    }
    assert_eq!(engine.audit().await.unwrap().deposits, before, "{ctx}: an acknowledged deposit was missing");
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
                .filter(|l| l.starts_with("deposit") || l.starts_with("sent") || l.starts_with("grab"))
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
                        Ok(_) | Err(GrabError::AlreadyGrabbed { .. }) | Err(GrabError::SoldOut) => {}
                        other => panic!("{ctx}: packet {p}: {other:?}"),
                    }
                }
                let view = engine.packet(PacketId(p)).await.unwrap();
                assert_eq!(view.claims.len(), SHARES as usize, "{ctx}: packet {p} sells out");
            }
            verify(&engine, &acks, &ctx).await;
            engine.shutdown().await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
