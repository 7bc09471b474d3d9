//! The operator commands on a journal directory: `audit`, `open`, `log`.

use std::io::IsTerminal;
use std::process::ExitCode;

use hongbao::{audit_journal_with_progress, Amount, Audit, JournalError, OpQuery, OrgId};
use serde_json::json;

/// `hongbao audit DIR`: verify, print, and exit 0 when all holds.
pub fn run_audit(dir: &std::path::Path, json: bool, share_fen_max: u64) -> ExitCode {
    let (ok, report) = audit(dir, share_fen_max);
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value serializes"));
    } else {
        print_human(&report);
    }
    exit(ok)
}

/// Reads the records of `stream` after its message `after` into `folded`; returns the last
/// message read.
fn read_into(
    urls: &str,
    stream: &hongbao_cluster::StreamSpec,
    folded: &mut hongbao::Folded,
    after: u64,
) -> Result<u64, String> {
    let (records, last) = hongbao_cluster::StreamJournal::read_after(urls, stream, after).map_err(|e| e.to_string())?;
    for record in &records {
        folded.apply(record).map_err(|e| format!("record {}: {e}", folded.records() + 1))?;
    }
    Ok(last)
}

/// `hongbao audit --cluster`: every partition's stream read from the cluster (nothing
/// written), replayed through the engine's rules, conservation and every packet checked in
/// each; then conservation over the whole cluster, with the remittances between partitions
/// still in flight counted. `streams` are the partitions' streams, by index.
///
/// The streams are read one after another while the cluster may run: a partition read early
/// may have sent fewer remittances than a partition read later has applied from it. Those are
/// read further ([`hongbao::ClusterAudit::behind`]) until the cut is consistent, so a busy
/// cluster raises no false alarm.
pub fn run_cluster_audit(
    urls: &str,
    streams: &[hongbao_cluster::StreamSpec],
    json: bool,
    share_fen_max: u64,
) -> ExitCode {
    let count = streams.len() as u32;
    // Each partition's records folded so far and the last message read, or why not.
    let mut folds: Vec<Result<(hongbao::Folded, u64), String>> = (0u32..)
        .zip(streams)
        .map(|(index, stream)| {
            let partition = hongbao::Partition::new(index, count).expect("the command checks the partition count");
            let mut config = hongbao::Config::default().with_partition(partition);
            config.limits.share_fen_max = share_fen_max;
            let mut folded = hongbao::Folded::empty(&config);
            read_into(urls, stream, &mut folded, 0).map(|last| (folded, last))
        })
        .collect();
    let audits_of = |folds: &[Result<(hongbao::Folded, u64), String>]| -> Vec<(u32, hongbao::Audit)> {
        (0u32..).zip(folds).filter_map(|(i, f)| Some((i, f.as_ref().ok()?.0.audit().ok()?.audit))).collect()
    };
    let mut read_again = Vec::new();
    for _ in 0..hongbao_server::cluster::AUDIT_CATCH_UP_ROUNDS {
        let behind = hongbao::ClusterAudit::behind(&audits_of(&folds));
        if behind.is_empty() {
            break;
        }
        for index in behind {
            let fold = &mut folds[index as usize];
            if let Ok((folded, last)) = fold {
                match read_into(urls, &streams[index as usize], folded, *last) {
                    Ok(now) => *last = now,
                    Err(e) => *fold = Err(e),
                }
            }
            read_again.push(index);
        }
    }
    let mut parts = Vec::new();
    let mut audits = Vec::new();
    for ((index, stream), fold) in (0u32..).zip(streams).zip(&folds) {
        let report = fold.as_ref().map_err(String::clone).and_then(|(folded, _)| folded.audit());
        parts.push(match report {
            Ok(r) => {
                let a = &r.audit;
                audits.push((index, a.clone()));
                json!({
                    "partition": index,
                    "stream": stream.stream,
                    "ok": a.is_balanced(),
                    "records": r.records,
                    "packets": { "open": r.packets_open, "closed": r.packets_closed },
                    "transfers": { "pending": r.transfers_pending },
                    "totals_fen": totals_fen(a),
                    "problems": problems(a),
                })
            }
            Err(e) => json!({ "partition": index, "stream": stream.stream, "ok": false, "error": e }),
        });
    }
    let all_read = audits.len() == streams.len();
    let whole = hongbao::ClusterAudit::of(&audits);
    let ok = all_read && whole.is_balanced();
    let doc = json!({
        "ok": ok,
        "cluster": urls,
        "partitions": parts,
        "totals_fen": {
            "wallets": whole.wallets.as_fen(),
            "escrow": whole.escrow.as_fen(),
            "pending": whole.pending.as_fen(),
            "in_flight": whole.in_flight.as_fen(),
            "deposits": whole.deposits.as_fen(),
            "withdrawals": whole.withdrawals.as_fen(),
        },
        "in_flight_remittances": whole.in_flight_count,
        "read_again": read_again,
        "problems": whole.violations,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).expect("a JSON value serializes"));
        return exit(ok);
    }
    for part in &parts {
        match part.get("error") {
            Some(e) => println!("FAILED       partition {}: {}", part["partition"], e.as_str().unwrap_or("?")),
            None => {
                println!(
                    "partition    {} ({} on {urls}): {} records",
                    part["partition"], part["stream"], part["records"]
                );
                println!("packets      {} open, {} closed", part["packets"]["open"], part["packets"]["closed"]);
                print_money(&part["totals_fen"]);
            }
        }
    }
    if count > 1 {
        let t = &doc["totals_fen"];
        let fen = |v: &serde_json::Value| Amount::fen(v.as_u64().unwrap_or(0)).to_string();
        println!(
            "cluster      wallets {} + escrow {} + pending {} + in flight {} ({} remittances) = deposits {} - withdrawals {}",
            fen(&t["wallets"]),
            fen(&t["escrow"]),
            fen(&t["pending"]),
            fen(&t["in_flight"]),
            whole.in_flight_count,
            fen(&t["deposits"]),
            fen(&t["withdrawals"])
        );
    }
    match whole.violations.is_empty() && all_read {
        true => println!("verdict      ok: replay, conservation, every packet and every lucky share hold"),
        false => whole.violations.iter().for_each(|p| println!("PROBLEM      {p}")),
    }
    exit(ok)
}

pub fn log(dir: &std::path::Path, org: OrgId, query: &OpQuery, json: bool) -> ExitCode {
    let page = match hongbao::operation_log(dir, org, query) {
        Ok(page) => page,
        Err(JournalError::Corrupt { segment, offset, seq, what }) => {
            println!("FAILED: the chain breaks at record {seq} in {} at byte {offset}: {what}", segment.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let doc = json!({ "org": org, "entries": page.entries, "chain": "verified" });
        println!("{}", serde_json::to_string_pretty(&doc).expect("a JSON value serializes"));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:>6}  {:>13}  {:>8}  {:<17}  {:>6}  {:>20}  {:>10}  reason",
        "seq", "at (ms)", "actor", "kind", "group", "packet / transfer", "amount"
    );
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for e in &page.entries {
        println!(
            "{:>6}  {:>13}  {:>8}  {:<17}  {:>6}  {:>20}  {:>10}  {}",
            e.seq,
            e.at.as_millis(),
            e.actor.to_string(),
            e.kind.name(),
            or_dash(e.group.map(|g| g.to_string())),
            or_dash(e.packet.map(|p| p.to_string()).or(e.transfer.map(|t| t.to_string()))),
            or_dash(e.amount.map(|a| a.to_string())),
            e.reason.as_deref().unwrap_or("")
        );
    }
    println!("{} entries; checksums and hash chain verified", page.entries.len());
    ExitCode::SUCCESS
}

pub fn open(dir: &std::path::Path) -> ExitCode {
    let started = std::time::Instant::now();
    let mut config = hongbao::Config::default().with_journal_dir(dir, hongbao::Durability::Sync);
    // Inspecting a journal never creates one: a mistyped path is an error.
    if let Some(journal) = config.journal_dir.as_mut() {
        journal.must_exist = true;
    }
    let engine = match hongbao::Engine::start(config) {
        Ok(e) => e,
        Err(e) => {
            println!("FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opened = started.elapsed();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let audit = runtime.block_on(engine.audit());
    let closing = std::time::Instant::now();
    runtime.block_on(engine.shutdown());
    drop(engine);
    println!("opened       in {:.3} s (recovery)", opened.as_secs_f64());
    match audit {
        Ok(a) => println!(
            "audit        {}: wallets {} + escrow {} + pending {} = deposits {} - withdrawals {}; {} packets live, {} \
             closed; {} transfers pending, {} settled",
            if a.is_balanced() { "balanced" } else { "NOT BALANCED" },
            a.wallets,
            a.escrow,
            a.pending,
            a.deposits,
            a.withdrawals,
            a.packets_live,
            a.packets_closed,
            a.transfers_pending,
            a.transfers_settled
        ),
        Err(e) => println!("audit        failed: {e}"),
    }
    println!("closed       in {:.3} s", closing.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn audit(dir: &std::path::Path, share_fen_max: u64) -> (bool, serde_json::Value) {
    // A long audit shows its progress on a terminal (never in a pipe or a log).
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} segments, {msg} records")
                .expect("a valid template"),
        );
        bar
    });
    let mut progress = |p: hongbao::Progress| {
        if let Some(bar) = &bar {
            bar.set_length(p.segments_total as u64);
            bar.set_position(p.segments_read as u64);
            bar.set_message(p.records.to_string());
        }
    };
    let report = audit_journal_with_progress(dir, share_fen_max, &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = match report {
        Ok(report) => report,
        Err(JournalError::Corrupt { segment, offset, seq, what }) => {
            let first_bad = json!({ "segment": segment, "offset": offset, "record": seq, "what": what });
            return (false, json!({ "ok": false, "dir": dir, "first_bad_record": first_bad }));
        }
        Err(e) => return (false, json!({ "ok": false, "dir": dir, "error": e.to_string() })),
    };
    let a = &report.audit;
    let json = json!({
        "ok": report.is_ok(),
        "dir": dir,
        "records": report.records,
        "segments": report.segments,
        "torn_tail_bytes": report.torn_tail_bytes,
        "whole_history": report.whole_history,
        "packets": {
            "open": report.packets_open,
            "cooling_off": report.packets_cooling_off,
            "sold_out": report.packets_sold_out,
            "expired": report.packets_expired,
            "cancelled": report.packets_cancelled,
        },
        "transfers": { "pending": report.transfers_pending, "settled": report.transfers_settled },
        "totals_fen": totals_fen(a),
        "problems": problems(a),
    });
    (report.is_ok(), json)
}

/// What broke: the audit's violations, and conservation if it fails.
fn problems(a: &Audit) -> Vec<String> {
    let mut problems = a.violations.clone();
    if !a.is_conserved() {
        problems.push(format!(
            "not conserved: wallets {} + escrow {} + pending {} + remitted {} != deposits {} - withdrawals {} + received {}",
            a.wallets, a.escrow, a.pending, a.remitted, a.deposits, a.withdrawals, a.received
        ));
    }
    problems
}

/// The two sides of the conservation equation, in fen.
fn totals_fen(a: &Audit) -> serde_json::Value {
    json!({
        "wallets": a.wallets.as_fen(),
        "escrow": a.escrow.as_fen(),
        "pending": a.pending.as_fen(),
        "deposits": a.deposits.as_fen(),
        "withdrawals": a.withdrawals.as_fen(),
        "remitted": a.remitted.as_fen(),
        "received": a.received.as_fen(),
    })
}

/// The money line of a report's `totals_fen`.
fn print_money(t: &serde_json::Value) {
    let fen = |v: &serde_json::Value| Amount::fen(v.as_u64().unwrap_or(0)).to_string();
    println!(
        "money        wallets {} + escrow {} + pending {} = deposits {} - withdrawals {}",
        fen(&t["wallets"]),
        fen(&t["escrow"]),
        fen(&t["pending"]),
        fen(&t["deposits"]),
        fen(&t["withdrawals"])
    );
    let (out, back) = (t["remitted"].as_u64().unwrap_or(0), t["received"].as_u64().unwrap_or(0));
    if out > 0 || back > 0 {
        println!("remittances  sent {} to other partitions, received {}", Amount::fen(out), Amount::fen(back));
    }
}

/// Exit 0 when the audit passed.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_human(report: &serde_json::Value) {
    if let Some(bad) = report.get("first_bad_record") {
        println!(
            "FAILED: first bad record is record {} in {} at byte {}: {}",
            bad["record"],
            bad["segment"].as_str().unwrap_or("?"),
            bad["offset"],
            bad["what"].as_str().unwrap_or("?")
        );
        return;
    }
    if let Some(e) = report.get("error") {
        println!("FAILED: {}", e.as_str().unwrap_or("?"));
        return;
    }
    println!("journal      {}", report["dir"].as_str().unwrap_or("?"));
    println!("records      {} in {} segments", report["records"], report["segments"]);
    if report["torn_tail_bytes"].as_u64().unwrap_or(0) > 0 {
        println!("torn tail    {} bytes (a write cut by a crash; never acknowledged)", report["torn_tail_bytes"]);
    }
    let p = &report["packets"];
    println!(
        "packets      {} open, {} cooling off, {} sold out, {} expired, {} cancelled",
        p["open"], p["cooling_off"], p["sold_out"], p["expired"], p["cancelled"]
    );
    let tr = &report["transfers"];
    println!("transfers    {} pending, {} settled", tr["pending"], tr["settled"]);
    print_money(&report["totals_fen"]);
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        println!(
            "verdict      ok: checksums, hash chain, conservation, every packet, every lucky share and every \
             transfer (each settled once) hold"
        );
    } else {
        for problem in problems {
            println!("PROBLEM      {}", problem.as_str().unwrap_or("?"));
        }
        println!("verdict      FAILED");
    }
}
