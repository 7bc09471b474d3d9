//! Metrics (Prometheus, at `/metrics`) and logs (`tracing`, text or JSON lines).
//!
//! | metric | what |
//! |---|---|
//! | `hongbao_requests_total{route, reply}` | requests by route pattern (`unmatched` for paths no route serves) and reply (`ok` or the error kind) |
//! | `hongbao_busy_replies_total` | requests refused with `busy` (overload), HTTP and WebSocket |
//! | `hongbao_grab_seconds` | grab latency in the server (engine call to result), histogram |
//! | `hongbao_journal_batch_records` | records per group-commit batch, histogram |
//! | `hongbao_journal_sync_seconds` | a batch's write and `fdatasync`, histogram |
//! | `hongbao_open_packets` | packets open now |
//! | `hongbao_pending_transfers` | transfers not yet settled |
//! | `hongbao_ws_clients` | WebSocket clients connected |

use std::sync::OnceLock;
use std::time::Duration;

use hongbao::{BatchObserver, BatchWritten, Engine};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// The process's recorder, installed by the first server (tests start several).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full("hongbao_journal_batch_records".into()), &BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder (an embedding program's) may be installed already; then the
        // server's metrics go there and `/metrics` shows what this handle has.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The text `/metrics` serves: the gauges of `engines` (the partitions served here) read now,
/// then everything recorded.
pub fn render(engines: &[Engine]) -> String {
    let (open, pending) = engines
        .iter()
        .map(Engine::gauges)
        .fold((0, 0), |(open, pending), g| (open + g.open_packets, pending + g.pending_transfers));
    metrics::gauge!("hongbao_open_packets").set(open as f64);
    metrics::gauge!("hongbao_pending_transfers").set(pending as f64);
    metrics::gauge!("hongbao_partitions_served").set(engines.len() as f64);
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// A reply sent on `route`: `ok` or an error kind.
pub fn reply_kind(route: &str, kind: &str) {
    metrics::counter!("hongbao_requests_total", "route" => route.to_owned(), "reply" => kind.to_owned()).increment(1);
    if kind == "busy" {
        metrics::counter!("hongbao_busy_replies_total").increment(1);
    }
}

/// A grab took `took`.
pub fn grab_latency(took: Duration) {
    metrics::histogram!("hongbao_grab_seconds").record(took.as_secs_f64());
}

/// A WebSocket client came (`1`) or went (`-1`).
pub fn ws_connected(delta: i8) {
    metrics::gauge!("hongbao_ws_clients").increment(f64::from(delta));
}

/// What the file journal's writer reports after each batch, recorded.
pub fn journal_observer() -> BatchObserver {
    BatchObserver(std::sync::Arc::new(|batch: BatchWritten| {
        if batch.records > 0 {
            metrics::histogram!("hongbao_journal_batch_records").record(batch.records as f64);
        }
        if let Some(sync) = batch.sync {
            metrics::histogram!("hongbao_journal_sync_seconds").record(sync.as_secs_f64());
        }
    }))
}

/// Logs to stderr: text, or JSON lines with `json`; `filter` as `RUST_LOG` takes it.
pub fn init_logs(json: bool, filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
