//! `loadtest`: grab storms against hongbao or the Redis + Lua baseline. See `--help`.
//!
//! Exit status: 0 when the run's audit balanced and every invariant held, 1 otherwise (also
//! for a target that cannot be reached), 2 for bad arguments.

mod args;
mod fairness;
mod pace;
mod progress;
mod recall;
mod report;
mod retire;
mod scenario;
mod server;
mod target;
mod transfers;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hongbao::{Config, Durability, Engine, FileJournalConfig, Limits};
use hongbao_cluster::{StreamJournal, StreamSpec};

use crate::args::{Args, DurabilityArg, Scenario};
use crate::report::Report;
use crate::server::ServerTarget;
use crate::target::{RedisTarget, Target};

// A storm allocates a reply channel and a few small boxes per grab, freed on another thread
// than the one that allocated them; glibc's allocator spends a tenth of the run on that, and
// mimalloc a fraction of it. (Redis, the baseline, ships with jemalloc for the same reason.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("loadtest: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads()).enable_all().build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_all(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the scenario against each target in turn, prints each report and, for several
/// targets, how they compare; writes the files. Returns whether every run passed.
async fn run_all(args: &Args) -> Result<bool, String> {
    if args.scenario == Scenario::Fairness {
        return fairness::run(args);
    }
    // Every target must answer before any is loaded: a typo in the second must not cost the
    // first one's run.
    for target in args.target.iter().filter(|t| *t != "embedded") {
        preflight(args, target).await?;
    }
    let mut reports = Vec::new();
    let mut failed = None;
    for (i, target) in args.target.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match run(args, target).await {
            Ok(report) => {
                print!("{}", report.table());
                reports.push(report);
            }
            Err(e) => {
                // What was measured is still written.
                failed = Some(format!("{target}: {e}"));
                break;
            }
        }
    }
    if reports.is_empty() {
        return Err(failed.unwrap_or_else(|| "no target ran".into()));
    }
    write_outputs(args, &reports)?;
    match failed {
        Some(e) => Err(e),
        None => Ok(reports.iter().all(Report::ok)),
    }
}

/// Connects to `target` once and lets go: it is reachable, and (a server) trusts the key.
async fn preflight(args: &Args, target: &str) -> Result<(), String> {
    if target.starts_with("redis://") {
        RedisTarget::connect(target, 1, limits(args).share_fen_max, true, args.timeout()).await.map(drop)
    } else {
        ServerTarget::connect(target, args.key.as_deref(), 1, args.timeout()).await.map(drop)
    }
}

/// The comparison, and the files the flags ask for.
fn write_outputs(args: &Args, reports: &[Report]) -> Result<(), String> {
    if let [first, rest @ ..] = reports {
        for other in rest {
            println!("\n{}", report::comparison(first, other));
        }
    }
    if let Some(path) = &args.json {
        let doc = match reports {
            [one] => one.json(),
            many => report::comparison_json(many),
        };
        let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        // The distribution of the first target; with several, one file each after it.
        for (i, r) in reports.iter().enumerate() {
            let path = if i == 0 { path.clone() } else { path.with_extension(format!("{i}.hgrm")) };
            std::fs::write(&path, report::hgrm(&r.figures.corrected))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    if let Some(path) = &args.plot {
        let title = format!("hongbao loadtest: {}", reports[0].scenario);
        let mut series = Vec::new();
        for r in reports {
            series.push((r.target.clone(), &r.figures.corrected));
            if r.mode == "open-loop" {
                series.push((format!("{} (uncorrected)", r.target), &r.figures.uncorrected));
            }
        }
        let series: Vec<(&str, _)> = series.iter().map(|(n, h)| (n.as_str(), *h)).collect();
        report::plot_svg(path, &title, &series)?;
    }
    Ok(())
}

async fn run(args: &Args, target: &str) -> Result<Report, String> {
    let report = match args.scenario {
        Scenario::Retire => return retire::run(args).await,
        Scenario::Transfers => transfers::run(args).await,
        _ => run_on(args, target).await,
    };
    let mut report = report?;
    let embedded = report.target.starts_with("embedded");
    if let (Some(dir), true) = (&args.journal, embedded) {
        report.target = format!("embedded ({:?} file journal)", args.durability).to_lowercase();
        report.journal_bytes = Some(dir_bytes(dir)?);
    }
    if let (Some(urls), true) = (&args.journal_nats, embedded) {
        report.target = format!("embedded (NATS stream journal, R{})", args.nats_replicas);
        for spec in STREAMS.lock().drain(..) {
            StreamJournal::delete_stream(urls, &spec).map_err(|e| e.to_string())?;
        }
    }
    if let Some(params) = report.params.as_object_mut() {
        for (key, value) in common_params(args, embedded) {
            params.entry(key).or_insert(value);
        }
    }
    Ok(report)
}

/// What every report echoes beside its scenario's own parameters: how the client and the
/// embedded engine ran.
fn common_params(args: &Args, embedded: bool) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let mut m = serde_json::Map::new();
    m.insert("targets".into(), json!(args.target.join(",")));
    m.insert("connections".into(), json!(args.connections));
    m.insert("threads".into(), json!(args.threads()));
    m.insert("rate".into(), json!(args.rate));
    m.insert("duration_secs".into(), json!(args.duration().map(|d| d.as_secs())));
    m.insert("seed".into(), json!(args.seed));
    if embedded {
        m.insert("arbiters".into(), json!(args.arbiters()));
        let journal = match (&args.journal, &args.journal_nats) {
            (Some(dir), _) => format!("{} ({:?})", dir.display(), args.durability).to_lowercase(),
            (None, Some(urls)) => format!("NATS stream R{} at {urls}", args.nats_replicas),
            (None, None) => "in memory".into(),
        };
        m.insert("journal".into(), json!(journal));
    }
    m
}

/// The limits of every load: the defaults, with room for the groups asked for.
pub fn limits(args: &Args) -> Limits {
    let defaults = Limits::default();
    Limits {
        packet_mailbox_capacity: args.mailbox_capacity,
        // Room for the sender beside --members members.
        members_per_group_max: defaults.members_per_group_max.max(args.members as usize + 1),
        // A load's few senders send far more in a run than any person in a day: the daily caps
        // are still checked on every send, only set where they do not refuse.
        daily_sent_fen_max: u64::MAX,
        daily_packets_max: u32::MAX,
        ..defaults
    }
}

/// The embedded engine's configuration: threads, shards and the journal the flags ask for (a
/// NATS stream is opened here, and remembered to be deleted when the run ends).
pub fn embedded_config(args: &Args, limits: Limits) -> Result<Config, String> {
    let mut config = Config::default().with_limits(limits).with_seed(args.seed);
    config.arbiters = args.arbiters();
    config.wallet_shards = args.wallet_shards.unwrap_or(config.arbiters * 2);
    if let Some(urls) = &args.journal_nats {
        let tag = format!("{:08x}", rand::random::<u32>());
        let spec = StreamSpec {
            stream: format!("HB_LOADTEST_{tag}"),
            subject: format!("hongbao.loadtest.{tag}"),
            replicas: args.nats_replicas,
            snapshot_every_records: Some(args.snapshot_every()),
        };
        let (journal, recovered) = StreamJournal::open(urls, &spec, &config).map_err(|e| e.to_string())?;
        STREAMS.lock().push(spec);
        return Ok(config.with_journal_state(journal, recovered.state));
    }
    if let Some(dir) = &args.journal {
        let durability = match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered { interval_ms: args.sync_interval_ms },
        };
        let mut journal = FileJournalConfig::new(dir, durability);
        journal.snapshot_every_records = Some(args.snapshot_every());
        journal.keep_segments = args.keep_segments;
        config.journal_dir = Some(journal);
    }
    Ok(config)
}

/// The NATS streams this run made, deleted when it ends.
static STREAMS: parking_lot::Mutex<Vec<StreamSpec>> = parking_lot::Mutex::new(Vec::new());

/// Runs a scenario that loads a target through [`Target`].
async fn run_on(args: &Args, target: &str) -> Result<Report, String> {
    let limits = limits(args);
    let target = if target == "embedded" {
        Target::Embedded(Engine::start(embedded_config(args, limits)?).map_err(|e| e.to_string())?)
    } else if ["http://", "ws://", "relay://"].iter().any(|scheme| target.starts_with(scheme)) {
        Target::Server(Box::new(
            ServerTarget::connect(target, args.key.as_deref(), args.connections, args.timeout()).await?,
        ))
    } else {
        let pipelining = !args.redis_no_pipelining;
        let (shares, timeout) = (limits.share_fen_max, args.timeout());
        Target::Redis(Box::new(RedisTarget::connect(target, args.connections, shares, pipelining, timeout).await?))
    };
    let target = Arc::new(target);
    let report = match args.scenario {
        Scenario::Storm | Scenario::Hot | Scenario::Recall => scenario::storm(Arc::clone(&target), args).await,
        Scenario::Mixed => scenario::mixed(Arc::clone(&target), args).await,
        Scenario::Idle => scenario::idle(Arc::clone(&target), args).await,
        Scenario::Retire | Scenario::Transfers | Scenario::Fairness => {
            unreachable!("these run on an engine of their own, or on none")
        }
    };
    target.shutdown(args.redis_keep).await?;
    drop(target);
    report
}

/// Bytes in the journal's segment files.
fn dir_bytes(dir: &std::path::Path) -> Result<u64, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    Ok(entries.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
}
