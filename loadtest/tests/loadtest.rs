//! The load tool end to end: a small storm run as a user would run it, its files read back,
//! and (where `redis-server` is installed) the same storm against the Redis + Lua baseline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).output().expect("loadtest runs")
}

/// Runs one test at a time: the timing tests measure latency and duration on a machine of two
/// cores, which other runs of the load tool in parallel would distort.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hongbao-loadtest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs the load tool with `args` and `--json` into `dir`, asserts it passed, and returns what
/// it printed and its report.
fn run_json(dir: &Path, args: &[&str]) -> (String, String, serde_json::Value) {
    let json = dir.join("report.json");
    let out = loadtest(&[args, &["--json", json.to_str().unwrap()]].concat());
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
    (stdout, stderr, read_json(&json))
}

#[test]
fn small_storm_passes_and_writes_its_files() {
    let _serial = one_at_a_time();
    let dir = scratch("storm");
    let (json, hgrm, plot) = (dir.join("r.json"), dir.join("r.hgrm"), dir.join("r.svg"));
    let out = loadtest(&[
        "--groups",
        "4",
        "--members",
        "300",
        "--shares",
        "50",
        "--rounds",
        "3",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("audit         balanced"), "{stdout}");

    let j = read_json(&json);
    // Warm-up rounds are left out: 3 measured rounds × 4 groups × 300 members.
    assert_eq!(j["requests"], 3 * 4 * 300);
    assert_eq!(j["replies"]["won"], 3 * 4 * 50);
    assert_eq!(j["replies"]["sold_out"], 3 * 4 * 250);
    assert_eq!(j["audit"]["balanced"], true);
    assert_eq!(j["ok"], true);
    assert_eq!(j["latency_us"]["corrected"]["count"], 3 * 4 * 300);
    let p50 = j["latency_us"]["corrected"]["p50"].as_u64().unwrap();
    let max = j["latency_us"]["corrected"]["max"].as_u64().unwrap();
    assert!(p50 <= max && max > 0);

    let text = std::fs::read_to_string(&hgrm).unwrap();
    let total = format!("Total count    = {:>12}", 3 * 4 * 300);
    assert!(text.contains(&total), "{text}");
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hot_open_loop_and_idle_run() {
    let _serial = one_at_a_time();
    let out = loadtest(&["--scenario", "hot", "--members", "500", "--rounds", "2", "--warmup", "0", "--rate", "20000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("open-loop") && stdout.contains("  uncorrected ") && stdout.contains("pacing error"),
        "{stdout}"
    );
    let out = loadtest(&["--scenario", "idle", "--packets", "2000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("idle memory   2000 open packets"), "{stdout}");
    let out = loadtest(&["--scenario", "mixed", "--groups", "3", "--members", "50", "--duration-secs", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn bad_arguments_and_unreachable_redis_are_clear_errors() {
    let _serial = one_at_a_time();
    let out = loadtest(&["--rate", "-5"]);
    assert_eq!(out.status.code(), Some(2));
    let out = loadtest(&["--target", "memcached://x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--target"));
    // Nothing listens on port 1.
    let out = loadtest(&["--target", "redis://127.0.0.1:1", "--groups", "1", "--members", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Redis at redis://127.0.0.1:1"), "{stderr}");
}

/// A throwaway `redis-server` on a free loopback port, stopped on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number of keys in the Redis server on `port` (DBSIZE, spoken in RESP).
fn dbsize(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").unwrap();
    let mut reply = [0u8; 64];
    let n = conn.read(&mut reply).unwrap();
    let text = std::str::from_utf8(&reply[..n]).unwrap();
    text.trim().trim_start_matches(':').parse().unwrap()
}

#[test]
fn same_storm_against_redis_side_by_side() {
    let _serial = one_at_a_time();
    let Some(redis) = RedisServer::start() else {
        eprintln!("skipped: no redis-server on PATH (.ci/run installs it)");
        return;
    };
    let dir = scratch("redis");
    let json = dir.join("cmp.json");
    let target = format!("embedded,redis://127.0.0.1:{}", redis.port);
    let out = loadtest(&[
        "--target",
        &target,
        "--groups",
        "3",
        "--members",
        "200",
        "--shares",
        "20",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("comparison    embedded"), "{stdout}");
    let j = read_json(&json);
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        // The same storm, the same answers: 2 rounds × 3 packets × 20 winners each.
        assert_eq!(run["requests"], 2 * 3 * 200, "{run}");
        assert_eq!(run["replies"]["won"], 2 * 3 * 20, "{run}");
        assert_eq!(run["audit"]["balanced"], true, "{run}");
    }
    assert!(runs[1]["target"].as_str().unwrap().starts_with("redis+lua"));
    assert!(j["throughput_ratio_first_to"][0]["ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(dbsize(redis.port), 0, "the run deleted its keys (--redis-keep keeps them)");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every transfer settles once, by a request or by its deadline; the deadlines are timed; a
/// Redis target is refused.
#[test]
fn transfers_scenario_settles_every_transfer_and_times_the_deadlines() {
    let _serial = one_at_a_time();
    let dir = scratch("transfers");
    let (stdout, _, j) = run_json(&dir, &["--scenario", "transfers", "--transfers", "2000", "--members", "50"]);
    assert!(stdout.contains("transfers sent/s") && stdout.contains("deadlines "), "{stdout}");
    assert_eq!(j["replies"]["transfer_sent"], 2_000, "{j}");
    assert_eq!(j["ok"], true, "{j}");
    let moved: u64 = ["accepted", "declined", "recalled"].iter().map(|k| j["replies"][k].as_u64().unwrap_or(0)).sum();
    let returned = j["deadlines"]["returned"].as_u64().unwrap();
    // Every transfer settles once: by a request, or by its deadline.
    assert_eq!(moved + returned, 2_000, "{j}");
    assert!(j["deadlines"]["arrived"].as_u64().unwrap() <= returned, "{j}");
    let refused = loadtest(&["--scenario", "transfers", "--target", "redis://127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn fairness_scenario_reports_both_rules_by_position() {
    let _serial = one_at_a_time();
    let dir = scratch("fairness");
    let json = dir.join("r.json");
    let out =
        loadtest(&["--scenario", "fairness", "--packets", "20000", "--shares", "10", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let j = read_json(&json);
    assert_eq!(j["shuffled_fair"], true, "{j}");
    for rule in ["double_mean", "shuffled"] {
        let positions = j[rule].as_array().unwrap();
        assert_eq!(positions.len(), 10, "{j}");
        let best: f64 = positions.iter().map(|p| p["best_luck"].as_f64().unwrap()).sum();
        assert!((best - 1.0).abs() < 1e-9, "{rule}: best-luck chances sum to {best}");
        // Every position's mean share is the total over the shares (10 yuan), give or take.
        assert!(positions.iter().all(|p| (p["mean_fen"].as_f64().unwrap() - 1_000.0).abs() < 40.0), "{j}");
    }
    // The double mean favours the last grabber over a middle one.
    let dm = j["double_mean"].as_array().unwrap();
    assert!(dm[9]["best_luck"].as_f64().unwrap() > dm[4]["best_luck"].as_f64().unwrap() + 0.02, "{j}");
}

/// The retire scenario runs end to end and reports its memory figures (the growth bound itself
/// is judged on a release build: see BENCHMARKS.md); it refuses a Redis target.
#[test]
fn retire_scenario_reports_its_memory() {
    let _serial = one_at_a_time();
    let dir = scratch("retire");
    let json = dir.join("r.json");
    let _ = loadtest(&["--scenario", "retire", "--packets", "20000", "--json", json.to_str().unwrap()]);
    let j = read_json(&json);
    assert_eq!(j["retire"]["packets"], 20_000, "{j}");
    assert_eq!(j["audit"]["balanced"], true, "{j}");
    let (before, after) =
        (j["retire"]["resident_bytes_before"].as_u64().unwrap(), j["retire"]["resident_bytes_after"].as_u64().unwrap());
    assert!(before > 0 && after > 0 && j["retire"]["resident_bytes_peak"].as_u64().unwrap() >= after, "{j}");
    let out = loadtest(&["--scenario", "retire", "--target", "redis://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A `hongbao serve` on an ephemeral loopback port, with its signing key in `dir`.
fn start_server(dir: &Path) -> (hongbao_server::Running, PathBuf) {
    start_server_with(dir, hongbao::Config::default())
}

/// The same, on an engine of `config`.
fn start_server_with(dir: &Path, config: hongbao::Config) -> (hongbao_server::Running, PathBuf) {
    let (private, public) = hongbao_server::auth::keygen();
    let key = dir.join("host.key");
    std::fs::write(&key, private).unwrap();
    let settings =
        hongbao_server::Settings { listen: "127.0.0.1:0".parse().unwrap(), workers: 1, ..Default::default() }
            .without_rate_limits();
    let engine = hongbao::Engine::start(config).unwrap();
    (hongbao_server::start(settings, engine, public.as_bytes()).unwrap(), key)
}

#[test]
fn the_same_storm_through_the_server_over_http_and_websocket() {
    let _serial = one_at_a_time();
    let dir = scratch("server");
    let (server, key) = start_server(&dir);
    let (http, ws, relay) =
        (format!("http://{}", server.addr), format!("ws://{}", server.addr), format!("relay://{}", server.addr));
    let json = dir.join("out.json");
    let targets = format!("embedded,{http},{ws},{relay}");
    let out = loadtest(&[
        "--groups",
        "3",
        "--members",
        "40",
        "--shares",
        "10",
        "--rounds",
        "3",
        "--warmup",
        "1",
        "--target",
        &targets,
        "--key",
        key.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for surface in ["http://", "ws://", "relay://"] {
        assert!(text.contains(&format!("hongbao serve {surface}")), "{text}");
    }
    assert!(!text.contains("INVARIANT BROKEN"), "{text}");
    let report = read_json(&json);
    let runs = report["runs"].as_array().expect("a comparison of four runs");
    assert_eq!(runs.len(), 4, "{report}");
    for run in runs {
        assert_eq!(run["ok"], true, "{run}");
        // Every grabbing member asked once a round: 3 groups x 40 members x 3 rounds.
        assert_eq!(run["requests"].as_u64(), Some(360), "{run}");
    }

    // Without the key, or with another key, the run is refused before it starts.
    let out = loadtest(&["--target", &http]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let (other, _) = hongbao_server::auth::keygen();
    std::fs::write(dir.join("other.key"), other).unwrap();
    let out = loadtest(&["--target", &http, "--key", dir.join("other.key").to_str().unwrap(), "--rounds", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refuses this key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(server.shutdown()).unwrap();
}

/// Arguments that cannot work are refused before any work: exit 2, a message naming the flag,
/// in well under a second (the run they describe would exhaust the machine, panic, or measure
/// nothing).
#[test]
fn impossible_arguments_are_refused_at_once() {
    let _serial = one_at_a_time();
    let cases: &[(&[&str], &str)] = &[
        (&["--threads", "0"], "--threads"),
        (&["--rounds", "0"], "--rounds"),
        (&["--scenario", "mixed", "--duration-secs", "0"], "--duration-secs"),
        (&["--durability", "buffered"], "--journal"),
        (&["--members", "18446744073709551615"], "--members"),
        (&["--members", "100000000", "--rounds", "1"], "--members"),
        (&["--groups", "100000", "--members", "1000000"], "MiB"),
        (&["--yuan", "100000"], "per-share cap"),
        (&["--shares", "1", "--yuan", "300"], "per-share cap"),
        (&["--scenario", "idle", "--packets", "5000000"], "open_packets_max"),
        (&["--json", "/nonexistent/dir/out.json"], "--json"),
        (&["--yuan", "18446744073709551615"], "--yuan"),
        (&["--shares", "20000", "--yuan", "1000"], "shares_per_packet_max"),
        (&["--background-packets", "5000000"], "open_packets_max"),
        (&["--scenario", "mixed", "--rate", "1e-300"], "--rate"),
        (&["--rate", "1e300"], "--rate"),
        (&["--scenario", "mixed", "--duration-secs", "18446744073709551615"], "--duration-secs"),
        (&["--rate", "1"], "--duration-secs"),
        (&["--duration-secs", "5"], "--duration-secs"),
        (&["--scenario", "idle", "--rate", "100"], "--rate"),
        (&["--connections", "100000000"], "MiB"),
        (&["--timeout-secs", "0"], "--timeout-secs"),
    ];
    for (args, names) in cases {
        let started = Instant::now();
        let out = loadtest(args);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?} names {names}: {stderr}");
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?}");
    }
    let version = loadtest(&["-V"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("loadtest {}", env!("CARGO_PKG_VERSION")));
}

/// A target that cannot be reached is found before the first one runs, not after it.
#[test]
fn every_target_is_reached_before_any_runs() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    let out = loadtest(&[
        "--groups",
        "2",
        "--members",
        "10",
        "--shares",
        "5",
        "--rounds",
        "1",
        "--target",
        "embedded,redis://127.0.0.1:1",
    ]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis://127.0.0.1:1"), "{stderr}");
    assert!(!stdout.contains("scenario"), "the embedded half did not run first: {stdout}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Open loop measures the target, not the client's timer: at a low rate, on an idle engine,
/// latency counted from each request's slot is close to latency counted from its sending
/// (tokio's millisecond timer alone used to add a millisecond to every corrected figure).
#[test]
fn open_loop_at_a_low_rate_measures_the_target_not_the_timer() {
    let _serial = one_at_a_time();
    let dir = scratch("low-rate");
    let args = ["--scenario", "hot", "--members", "1000", "--rounds", "1", "--warmup", "0", "--rate", "1000"];
    let (_, _, j) = run_json(&dir, &args);
    let (corrected, uncorrected) = (&j["latency_us"]["corrected"], &j["latency_us"]["uncorrected"]);
    let (c50, u50) = (corrected["p50"].as_u64().unwrap(), uncorrected["p50"].as_u64().unwrap());
    assert!(c50 <= 2 * u50 + 100, "corrected p50 {c50} µs against uncorrected {u50} µs: {j}");
    let schedule = &j["schedule"];
    assert_eq!(schedule["target_requests_per_sec"], 1000.0, "{j}");
    assert_eq!(schedule["dropped"], 0, "{j}");
    // Every request was either on time (its pacing error measured) or behind its slot.
    let on_time = schedule["pacing_error_us"]["count"].as_u64().unwrap();
    assert_eq!(on_time + schedule["behind"].as_u64().unwrap(), 1000, "{j}");
    assert!(schedule["pacing_error_us"]["p50"].as_u64().unwrap() < 100, "{j}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rate the target cannot reach: the run still ends at its duration, says how many requests
/// it could not start, and prints the achieved rate beside the asked one.
#[test]
fn open_loop_stops_on_time_and_counts_what_it_dropped() {
    let _serial = one_at_a_time();
    let dir = scratch("dropped");
    for (scenario, secs) in [("mixed", 2.0), ("storm", 1.0)] {
        let json = dir.join(format!("{scenario}.json"));
        let started = Instant::now();
        let out = loadtest(&[
            "--scenario",
            scenario,
            "--groups",
            "4",
            "--members",
            "500",
            // More than any machine grabs in the duration: the run must stop on time.
            "--rounds",
            "100000",
            "--warmup",
            "0",
            "--rate",
            "1e9",
            "--duration-secs",
            &secs.to_string(),
            "--json",
            json.to_str().unwrap(),
        ]);
        let wall = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{scenario}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let j = read_json(&json);
        let elapsed = j["elapsed_secs"].as_f64().unwrap();
        assert!((elapsed - secs).abs() <= secs * 0.1, "{scenario}: ran {elapsed} s of {secs}: {j}");
        assert!(wall < Duration::from_secs_f64(secs + 5.0), "{scenario}: the process took {wall:?}");
        let dropped = j["schedule"]["dropped"].as_u64().unwrap();
        assert!(dropped > 0, "{scenario}: {j}");
        if scenario == "storm" {
            // Every slot of a round after the first was past at its release: that is the
            // target's backlog (the worker was busy with the rounds before), not the client's
            // pacing error, which stays as small as a free worker's start.
            assert!(j["schedule"]["pacing_error_us"]["p99"].as_u64().unwrap() < 5_000, "{j}");
        }
        assert!(stdout.contains("target 1000000000 requests/s MISSED: achieved"), "{stdout}");
        assert!(stdout.contains(&format!("{dropped} dropped")), "{stdout}");
        assert_eq!(j["ok"], true, "{scenario}: {j}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A refusal the load tool could not foresee (the server's own limits) is reported in the
/// target's words, not only as a kind; the targets that ran before it still have their report
/// written.
#[test]
fn a_refusal_carries_the_targets_reason() {
    let _serial = one_at_a_time();
    let dir = scratch("refusal");
    let limits = hongbao::Limits { shares_per_packet_max: 5, ..hongbao::Limits::default() };
    let (server, key) = start_server_with(&dir, hongbao::Config::default().with_limits(limits));
    let targets = format!("embedded,http://{}", server.addr);
    let json = dir.join("r.json");
    let out = loadtest(&[
        "--groups",
        "1",
        "--members",
        "20",
        "--shares",
        "10",
        "--rounds",
        "1",
        "--target",
        &targets,
        "--key",
        key.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("send_refused") && stderr.contains("limit of 5"), "{stderr}");
    // The embedded half ran before the server refused: what it measured is written.
    let j = read_json(&json);
    assert_eq!((j["target"].as_str(), j["ok"].as_bool()), (Some("embedded (in-memory journal)"), Some(true)), "{j}");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(server.shutdown()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The report says what was asked (as wrk does) and the figures people compare (k6's mean,
/// stdev, min and p95 beside the percentiles); a run whose stderr is not a terminal prints a
/// progress line every few seconds instead of staying silent.
#[test]
fn the_report_echoes_its_parameters_and_progress_is_shown_without_a_terminal() {
    let _serial = one_at_a_time();
    let dir = scratch("echo");
    let args = [
        "--scenario",
        "mixed",
        "--groups",
        "3",
        "--members",
        "50",
        "--duration-secs",
        "3",
        "--progress-every-secs",
        "1",
    ];
    let (stdout, stderr, j) = run_json(&dir, &args);
    let echo = stdout.lines().find(|l| l.starts_with("parameters")).unwrap_or_else(|| panic!("{stdout}"));
    for part in ["connections 64", "duration_secs 3", "journal in memory", "targets embedded", "threads ", "arbiters "]
    {
        assert!(echo.contains(part), "{part} missing: {echo}");
    }
    let header = stdout.lines().find(|l| l.starts_with("latency ms")).unwrap_or_else(|| panic!("{stdout}"));
    let columns: Vec<&str> = header.split_whitespace().skip(2).collect();
    assert_eq!(columns, ["mean", "stdev", "min", "p50", "p90", "p95", "p99", "p99.9", "p99.99", "max"], "{header}");
    assert!(stdout.contains("  corrected ") && stdout.contains("  uncorrected "), "{stdout}");

    for field in ["mean", "stdev", "min", "p95"] {
        assert!(j["latency_us"]["corrected"][field].is_number(), "{field}: {j}");
    }
    // stderr is a pipe here: a line a second, each with a whole rate.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("loadtest: mixed on embedded")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        let rate = line.rsplit(", ").next().unwrap().trim_end_matches(" requests/s");
        assert!(rate.parse::<u64>().is_ok(), "{line}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Org packets recalled by their admin while members grab them: every packet is recalled once
/// (its remainder refunded, or found sold out), and the checks on refunds, claims and the
/// senders' balances hold.
#[test]
fn recall_scenario_races_the_admin_against_the_grabs() {
    let _serial = one_at_a_time();
    let dir = scratch("recall");
    let args = [
        "--scenario",
        "recall",
        "--groups",
        "10",
        "--members",
        "200",
        "--shares",
        "50",
        "--rounds",
        "5",
        "--warmup",
        "1",
    ];
    let (_, _, j) = run_json(&dir, &args);
    assert_eq!(j["ok"], true, "{j}");
    let count = |kind: &str| j["replies"][kind].as_u64().unwrap_or(0);
    // The grabs, apart from the recalls.
    assert_eq!(j["requests"], 5 * 10 * 200, "{j}");
    assert_eq!(
        count("won") + count("sold_out") + count("packet_recalled") + count("already_grabbed"),
        5 * 10 * 200,
        "{j}"
    );
    // One recall per measured packet: 5 rounds × 10 groups, some before the packet sold out
    // (so the refund checks ran), some after.
    let recall = |kind: &str| j["recalls"]["replies"][kind].as_u64().unwrap_or(0);
    assert_eq!(recall("recalled") + recall("already_closed"), 50, "{j}");
    assert!(recall("recalled") > 0 && count("packet_recalled") > 0, "{j}");
    let refused = loadtest(&["--scenario", "recall", "--target", "redis://127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The run is one schedule, started once every worker is ready: a rate the engine meets makes
/// exactly the slots of the duration, whatever the rounds (a storm's rounds continue one
/// schedule), the run lasts its duration even when the last slot comes sooner, and many idle
/// workers add no latency of their own.
#[test]
fn a_met_rate_makes_exactly_the_slots_of_its_duration() {
    let _serial = one_at_a_time();
    let dir = scratch("slots");
    let run = |args: &[&str]| run_json(&dir, args).2;
    // 100 slots a second for 2 s, over rounds of 30 grabs.
    let j = run(&["--scenario", "hot", "--members", "30", "--warmup", "1", "--rate", "100", "--duration-secs", "2"]);
    assert_eq!((j["requests"].as_u64(), j["schedule"]["dropped"].as_u64()), (Some(200), Some(0)), "{j}");
    assert!((j["elapsed_secs"].as_f64().unwrap() - 2.0).abs() < 0.2, "{j}");
    // Two a second for 3 s: the sixth slot is at 2.5 s, the run lasts 3.
    let j = run(&["--scenario", "mixed", "--groups", "2", "--members", "20", "--rate", "2", "--duration-secs", "3"]);
    assert_eq!(j["requests"], 6, "{j}");
    assert!((j["elapsed_secs"].as_f64().unwrap() - 3.0).abs() < 0.3, "{j}");
    assert!((j["schedule"]["achieved_requests_per_sec"].as_f64().unwrap() - 2.0).abs() < 0.2, "{j}");
    // 512 workers, each with a slot every quarter second: none is behind its slot, and the
    // corrected latency is the engine's.
    let j = run(&[
        "--scenario",
        "mixed",
        "--groups",
        "4",
        "--members",
        "50",
        "--rate",
        "2000",
        "--duration-secs",
        "1",
        "--connections",
        "512",
    ]);
    assert_eq!(j["schedule"]["behind"], 0, "{j}");
    let (c50, u50) = (
        j["latency_us"]["corrected"]["p50"].as_u64().unwrap(),
        j["latency_us"]["uncorrected"]["p50"].as_u64().unwrap(),
    );
    assert!(c50 <= 2 * u50 + 100, "corrected p50 {c50} µs against uncorrected {u50} µs: {j}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The storm on a journal replicated by a three-node NATS JetStream cluster on loopback
/// (skipped, saying so, without `nats-server`).
#[test]
fn a_storm_on_a_journal_replicated_by_nats() {
    let _serial = one_at_a_time();
    let cluster = match hongbao_cluster::NatsCluster::start(3) {
        Ok(cluster) => cluster,
        Err(e @ hongbao_cluster::ClusterError::NotInstalled) => return eprintln!("skipped: {e}"),
        Err(e) => panic!("the NATS cluster did not start: {e}"),
    };
    let urls = cluster.urls();
    let out = loadtest(&[
        "--groups",
        "3",
        "--members",
        "100",
        "--shares",
        "20",
        "--rounds",
        "2",
        "--warmup",
        "1",
        "--journal-nats",
        &urls,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("target embedded (NATS stream journal, R3)"), "{stdout}");
    assert!(stdout.contains("audit         balanced"), "{stdout}");
    let refused = loadtest(&["--journal-nats", "redis://127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(2));
}
