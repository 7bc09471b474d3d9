//! The engine end to end, in process, with the in-memory journal:
//!
//! - `grab/uncontended`: one grab round trip (route, mailbox, claim, credit, reply) with no
//!   other request in flight;
//! - `storm/1000_members`: 1 000 members grabbing one 1 000-share packet at the same instant,
//!   timed from the release until every reply is in (throughput in grabs).
//!
//! Packets are sent before the clock starts; only grabs are timed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hongbao::{Amount, Config, Engine, GroupId, Limits, NewPacket, OpId, PacketId, Split, UserId};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const SENDER: UserId = UserId(0);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// An engine whose group 1 has `members` members (users 1..=members) and a funded sender.
async fn engine_with_group(members: u64, fund_fen: u64) -> Engine {
    let limits = Limits { members_per_group_max: members as usize + 1, ..Limits::default() };
    let engine = Engine::start(Config::default().with_limits(limits).with_seed(1)).expect("engine starts");
    engine.set_members(GroupId(1), (0..=members).map(UserId)).await.expect("roster");
    engine.deposit(OpId(1), SENDER, Amount::fen(fund_fen)).await.expect("deposit");
    engine
}

async fn send(engine: &Engine, id: u64, split: Split) {
    let spec = NewPacket { id: PacketId(id), sender: SENDER, group: GroupId(1), split, greeting: String::new() };
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
    group.bench_function("1000_members", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let engine = engine_with_group(MEMBERS, iters * MEMBERS * 10).await;
                let mut took = Duration::ZERO;
                for p in 0..iters {
                    send(&engine, p, Split::lucky(Amount::fen(MEMBERS * 10), MEMBERS as u32)).await;
                    let (go, ready) = watch::channel(false);
                    let ready = Arc::new(ready);
                    let tasks: Vec<_> = (1..=MEMBERS)
                        .map(|u| {
                            let (engine, mut ready) = (engine.clone(), (*ready).clone());
                            tokio::spawn(async move {
                                let _ = ready.wait_for(|go| *go).await;
                                engine.grab(PacketId(p), UserId(u)).await
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
                }
                engine.shutdown().await;
                took
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Small samples: the whole bench suite finishes a run in well under two minutes here.
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = grab, storm
}
criterion_main!(benches);
