//! `hongbao`: operator commands for a hongbao journal.
//!
//! `hongbao audit DIR` verifies every checksum and the whole hash chain of the journal in
//! DIR, replays it, checks conservation and every packet (shares within bounds and summing to
//! the total, nobody paid twice, refunds exactly once) and re-derives each lucky packet's
//! shares from its recorded seed. Exit status 0 when all holds, 1 naming the first problem.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hongbao::file_journal::{self, JournalError};
use hongbao::{Amount, Limits, PacketStatus};
use serde_json::json;

#[derive(Parser)]
#[command(version, about = "Operator commands for a hongbao journal")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a journal as an engine starting on it would (recovery, a torn tail cut off), report
    /// how long that took, and close it cleanly (which writes a snapshot)
    Open {
        /// The journal directory
        dir: PathBuf,
    },
    /// Verify a journal directory: checksums, hash chain, replay, conservation, every packet
    Audit {
        /// The journal directory
        dir: PathBuf,
        /// Print the result as one JSON document
        #[arg(long)]
        json: bool,
        /// The per-share cap the engine ran with, in fen (re-deriving lucky shares needs it)
        #[arg(long, default_value_t = Limits::default().share_fen_max)]
        share_fen_max: u64,
    },
}

fn main() -> ExitCode {
    let (dir, json, share_fen_max) = match Cli::parse().command {
        Command::Audit { dir, json, share_fen_max } => (dir, json, share_fen_max),
        Command::Open { dir } => return open(&dir),
    };
    let (ok, report) = audit(&dir, share_fen_max);
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("a JSON value serializes"));
    } else {
        print_human(&report);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn open(dir: &std::path::Path) -> ExitCode {
    let started = std::time::Instant::now();
    let config = hongbao::Config::default().with_journal_dir(dir, hongbao::Durability::Sync);
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
            "audit        {}: wallets {} + escrow {} = deposits {} - withdrawals {}; {} packets live, {} closed",
            if a.is_balanced() { "balanced" } else { "NOT BALANCED" },
            a.wallets,
            a.escrow,
            a.deposits,
            a.withdrawals,
            a.packets_live,
            a.packets_closed
        ),
        Err(e) => println!("audit        failed: {e}"),
    }
    println!("closed       in {:.3} s", closing.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn audit(dir: &std::path::Path, share_fen_max: u64) -> (bool, serde_json::Value) {
    // The whole history when it is all there; otherwise from the snapshot that replaced the
    // deleted segments (whose records are then checked as far as they remain).
    let whole = dir.join("00000000000000000000.hbj").exists();
    let recovered = match file_journal::read_with(dir, !whole) {
        Ok(r) => r,
        Err(JournalError::Corrupt { segment, offset, seq, what }) => {
            let first_bad = json!({ "segment": segment, "offset": offset, "record": seq, "what": what });
            return (false, json!({ "ok": false, "dir": dir, "first_bad_record": first_bad }));
        }
        Err(e) => return (false, json!({ "ok": false, "dir": dir, "error": e.to_string() })),
    };
    let r = &recovered.replica;
    let problems = r.check(share_fen_max);
    let (mut open, mut sold_out, mut expired) = (0, 0, 0);
    for id in r.packets.keys() {
        match r.view(*id, share_fen_max).map(|v| v.status) {
            Some(PacketStatus::Open) => open += 1,
            Some(PacketStatus::SoldOut) => sold_out += 1,
            Some(PacketStatus::Expired { .. }) => expired += 1,
            None => {}
        }
    }
    let (wallets, escrow) = r.held();
    let report = json!({
        "ok": problems.is_empty(),
        "dir": dir,
        "records": recovered.records,
        "segments": recovered.segments,
        "torn_tail_bytes": recovered.torn_bytes,
        "packets": { "open": open, "sold_out": sold_out, "expired": expired },
        "totals_fen": { "wallets": wallets, "escrow": escrow, "deposits": r.deposited, "withdrawals": r.withdrawn },
        "problems": problems,
    });
    (problems.is_empty(), report)
}

fn print_human(report: &serde_json::Value) {
    let fen = |v: &serde_json::Value| Amount::fen(v.as_u64().unwrap_or(0)).to_string();
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
    println!("packets      {} open, {} sold out, {} expired", p["open"], p["sold_out"], p["expired"]);
    let t = &report["totals_fen"];
    println!(
        "money        wallets {} + escrow {} = deposits {} - withdrawals {}",
        fen(&t["wallets"]),
        fen(&t["escrow"]),
        fen(&t["deposits"]),
        fen(&t["withdrawals"])
    );
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        println!("verdict      ok: checksums, hash chain, conservation, every packet and every lucky share hold");
    } else {
        for problem in problems {
            println!("PROBLEM      {}", problem.as_str().unwrap_or("?"));
        }
        println!("verdict      FAILED");
    }
}
