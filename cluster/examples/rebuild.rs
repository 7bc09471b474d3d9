//! How long a new owner takes to rebuild a partition from its stream, on a three-node NATS
//! cluster on loopback: from every record, and from its latest snapshot and the records after
//! it. The partition is filled with grab storms (packets of 1 000 shares, all grabbed), then
//! its owner stops without a word (its journal halted, as when its node dies: no last
//! snapshot), and a new owner opens the stream and starts the engine, three times.
//!
//! ```sh
//! cargo run --release -p hongbao-cluster --example rebuild -- [RECORDS] [SNAPSHOT_EVERY]
//! ```
//!
//! Defaults: 4 000 000 records, a snapshot every 1 000 000 (the server's default).

use std::time::{Duration, Instant};

use hongbao::{Amount, Config, Engine, GroupId, Limits, NewPacket, OpId, PacketId, Split, UserId};
use hongbao_cluster::{NatsCluster, StreamJournal, StreamSpec};

const MEMBERS: u64 = 1_000;
const SENDER: UserId = UserId(1);

fn config() -> Config {
    let limits = Limits { daily_sent_fen_max: u64::MAX, daily_packets_max: u32::MAX, ..Limits::default() };
    Config { arbiters: 1, wallet_shards: 2, ..Config::default() }.with_limits(limits).with_seed(1)
}

/// Opens the stream as a new owner would and starts the engine on it: how long that took, the
/// snapshot it started from and the records it read; then stops without a word.
fn rebuild(urls: &str, spec: &StreamSpec) -> (Duration, Option<u64>, u64) {
    let started = Instant::now();
    let (journal, recovered) = StreamJournal::open(urls, spec, &config()).expect("the stream opens");
    let (snapshot, read) = (recovered.snapshot, recovered.records_read);
    let engine = Engine::start(config().with_journal_state(journal.clone(), recovered.state)).expect("it starts");
    let took = started.elapsed();
    journal.halt();
    drop(engine);
    (took, snapshot, read)
}

/// Fills the partition with at least `records` records of grab storms.
async fn fill(engine: &Engine, records: u64) {
    let members: Vec<UserId> = (100..100 + MEMBERS).map(UserId).collect();
    let group = GroupId(1);
    engine.set_members(group, members.iter().copied().chain([SENDER]).collect::<Vec<_>>()).await.unwrap();
    let packets = records.div_ceil(MEMBERS + 1);
    engine.deposit(OpId(1), SENDER, Amount::yuan(10 * packets)).await.unwrap();
    for id in 1..=packets {
        let split = Split::lucky(Amount::yuan(10), MEMBERS as u32);
        let packet = NewPacket { id: PacketId(id), sender: SENDER, group, split, greeting: String::new() };
        engine.send_packet(packet).await.unwrap();
        let grabs = members.iter().map(|&user| engine.grab(PacketId(id), user));
        let won = futures::future::join_all(grabs).await.into_iter().filter(Result::is_ok).count();
        assert_eq!(won as u64, MEMBERS);
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let records = args.next().unwrap_or(4_000_000);
    let every = args.next().unwrap_or(StreamSpec::SNAPSHOT_EVERY_RECORDS);
    let cluster = NatsCluster::start(3).expect("a NATS cluster (nats-server installed)");
    let urls = cluster.urls();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for (name, snapshots) in [("every record", None), ("latest snapshot", Some(every))] {
        let tag = if snapshots.is_some() { "SNAP" } else { "WHOLE" };
        let spec = StreamSpec {
            stream: format!("REBUILD_{tag}"),
            subject: format!("rebuild.{}", tag.to_lowercase()),
            replicas: 3,
            snapshot_every_records: snapshots,
        };
        let (journal, recovered) = StreamJournal::open(&urls, &spec, &config()).expect("the stream opens");
        let engine = Engine::start(config().with_journal_state(journal.clone(), recovered.state)).unwrap();
        let filling = Instant::now();
        runtime.block_on(fill(&engine, records));
        let filled = filling.elapsed();
        // A snapshot due at the end is stored in the background: give it the time it takes.
        std::thread::sleep(Duration::from_secs(2));
        journal.halt();
        drop(engine);
        let mut runs: Vec<_> = (0..3).map(|_| rebuild(&urls, &spec)).collect();
        runs.sort_by_key(|run| run.0);
        let (median, snapshot, read) = runs[1];
        let all: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.0.as_secs_f64())).collect();
        println!(
            "rebuilt from {name}: median {:.2} s (runs {}), from snapshot {snapshot:?}, {read} records read; filled \
             with {records} records in {:.1} s",
            median.as_secs_f64(),
            all.join(", "),
            filled.as_secs_f64()
        );
        StreamJournal::delete_stream(&urls, &spec).expect("the stream is deleted");
    }
}
