//! The engine end to end, in process, with the in-memory journal:
//!
//! - `grab/uncontended`: one grab round trip (route, mailbox, claim, credit, reply) with no
//!   other request in flight;
//! - `storm/1000_members`: 1 000 members grabbing one 1 000-share packet at the same instant,
//!   timed from the release until every reply is in (throughput in grabs);
//! - `storm/1000_members_4_partitions`: the same storm in partition 0 of 4, where about three
//!   quarters of the members' wallets are elsewhere: their shares leave as remittances
//!   (numbered under the outbox's lock) instead of being credited. The outbox is emptied
//!   between storms, as a relay would.
//!
//! Packets are sent before the clock starts; only grabs are timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hongbao::{Amount, Config, Engine, GroupId, Limits, NewPacket, OpId, PacketId, Partition, Split, UserId};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const SENDER: UserId = UserId(0);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// An engine whose group 1 has `members` members (users 1..=members) and a funded sender.
async fn engine_with_group(members: u64, fund_fen: u64) -> Engine {
    engine_in(Partition::whole(), members, fund_fen).await
}

/// [`engine_with_group`] serving `partition`, whose sender is [`sender`]`(partition)`.
async fn engine_in(partition: Partition, members: u64, fund_fen: u64) -> Engine {
    let limits = Limits { members_per_group_max: members as usize + 1, ..Limits::default() };
    let config = Config::default().with_limits(limits).with_seed(1).with_partition(partition);
    let engine = Engine::start(config).expect("engine starts");
    let mut roster: Vec<UserId> = (1..=members).map(UserId).collect();
    roster.push(sender(partition));
    engine.set_members(GroupId(1), roster).await.expect("roster");
    engine.deposit(OpId(1), sender(partition), Amount::fen(fund_fen)).await.expect("deposit");
    engine
}

/// A sender whose wallet `partition` holds: [`SENDER`] in a whole engine.
fn sender(partition: Partition) -> UserId {
    (SENDER.0..).map(UserId).find(|&u| partition.holds_user(u)).expect("a user in every partition")
}

/// The `n`-th packet id `partition` holds (`n` itself in a whole engine).
fn packet_id(partition: Partition, n: u64) -> PacketId {
    (0..).map(PacketId).filter(|&p| partition.holds_packet(p)).nth(n as usize).expect("packets in every partition")
}

async fn send(engine: &Engine, id: u64, split: Split) {
    let partition = engine.partition();
    let (id, sender) = (packet_id(partition, id), sender(partition));
    let spec = NewPacket { id, sender, group: GroupId(1), split, greeting: String::new() };
    engine.send_packet(spec).await.expect("send");
}

fn grab(c: &mut Criterion) {
    const SHARES: u64 = 10_000;
    let rt = runtime();
    let mut group = c.benchmark_group("grab");
    group.throughput(Throughput::Elements(1));
    group.bench_function("uncontended", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let engine = engine_with_group(SHARES, iters.div_ceil(SHARES) * SHARES).await;
                for p in 0..iters.div_ceil(SHARES) {
                    send(&engine, p, Split::Fixed { each: Amount::fen(1), shares: SHARES as u32 }).await;
                }
                let start = Instant::now();
                for i in 0..iters {
                    let won = engine.grab(PacketId(i / SHARES), UserId(1 + i % SHARES)).await;
                    assert!(won.is_ok(), "{won:?}");
                }
                let took = start.elapsed();
                engine.shutdown().await;
                took
            })
        })
    });
    group.finish();
}

fn storm(c: &mut Criterion) {
    const MEMBERS: u64 = 1_000;
    let rt = runtime();
    let mut group = c.benchmark_group("storm");
    group.throughput(Throughput::Elements(MEMBERS));
    let cases = [("1000_members", Partition::whole()), ("1000_members_4_partitions", Partition::new(0, 4).unwrap())];
    for (name, partition) in cases {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let engine = engine_in(partition, MEMBERS, iters * MEMBERS * 10).await;
                    let mut took = Duration::ZERO;
                    for p in 0..iters {
                        send(&engine, p, Split::lucky(Amount::fen(MEMBERS * 10), MEMBERS as u32)).await;
                        let id = packet_id(partition, p);
                        let (go, ready) = watch::channel(false);
                        let ready = Arc::new(ready);
                        let tasks: Vec<_> = (1..=MEMBERS)
                            .map(|u| {
                                let (engine, mut ready) = (engine.clone(), (*ready).clone());
                                tokio::spawn(async move {
                                    let _ = ready.wait_for(|go| *go).await;
                                    engine.grab(id, UserId(u)).await
                                })
                            })
                            .collect();
                        tokio::task::yield_now().await;
                        let start = Instant::now();
                        go.send_replace(true);
                        for t in tasks {
                            assert!(t.await.expect("task").is_ok());
                        }
                        took += start.elapsed();
                        // What a relay does between storms: the remittances leave the outbox.
                        (1..partition.count()).for_each(|to| engine.acknowledge(to, u64::MAX));
                    }
                    engine.shutdown().await;
                    took
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Small samples: the whole bench suite finishes a run in well under two minutes here.
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = grab, storm
}
criterion_main!(benches);
