//! The retire scenario: memory returns to its baseline once packets have been sent, drained
//! and retired. The engine runs on a manual clock, so the 30-day retention passes in an
//! instant; the measure is this process's resident set, after asking the allocator to return
//! what it freed.
//!
//! The baseline is an engine that has served and retired a warm-up cycle of traffic: its
//! threads size their allocator caches and tables on first use, a fixed cost any running
//! engine has paid. The question is whether a million more retired packets leave anything
//! behind. The cold figure (before any packet) is reported beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hongbao::{Amount, Config, Engine, GroupId, Limits, ManualClock, NewPacket, OpId, PacketId, Split, UserId};
use serde_json::json;

use crate::args::Args;
use crate::report::{Figures, Report, Retirement};
use crate::target::resident_bytes;

/// The growth of the resident set over its baseline that still passes.
const GROWTH_MAX: f64 = 0.25;

/// Packets of the warm-up cycle.
const WARMUP_PACKETS: u64 = 10_000;

const SENDER: UserId = UserId(1);
const GRABBER: UserId = UserId(2);
const GROUP: GroupId = GroupId(1);

/// mimalloc's option `purge_delay` (milliseconds before freed pages go back to the OS).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes the allocator return pages as soon as they are free, on every thread: the engine's
/// threads free what retirement drops into their own heaps, which a collect on this thread
/// would not reach.
fn purge_at_once() {
    // SAFETY: setting an option takes no pointer and may be done at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Returns freed memory to the operating system, so the resident set shows what is held.
fn trim() -> Result<u64, String> {
    // SAFETY: mi_collect takes no pointer and may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
    resident_bytes()
}

pub async fn run(args: &Args) -> Result<Report, String> {
    purge_at_once();
    let clock = ManualClock::default();
    // The engine's own sweep is kept out of the way: the scenario retires by itself.
    // The scenario's one sender sends every packet: the daily caps are set where they do not
    // refuse.
    let limits = Limits {
        retire_interval_secs: 365 * 86_400,
        daily_sent_fen_max: u64::MAX,
        daily_packets_max: u32::MAX,
        ..Limits::default()
    };
    let mut config = Config::default().with_limits(limits.clone()).with_clock(Arc::new(clock.clone()));
    config.arbiters = args.arbiters();
    let engine = Engine::start(config).map_err(|e| e.to_string())?;
    engine.set_members(GROUP, [SENDER, GRABBER]).await.map_err(|e| e.to_string())?;
    let funds = Amount::fen(WARMUP_PACKETS + args.packets);
    engine.deposit(OpId(0), SENDER, funds).await.map_err(|e| e.to_string())?;
    let cold = trim()?;
    let (warmed, _) = cycle(&engine, &clock, &limits, 0, WARMUP_PACKETS, args.connections).await?;
    let before = trim()?;
    let start = Instant::now();
    let (retired, peak) = cycle(&engine, &clock, &limits, WARMUP_PACKETS, args.packets, args.connections).await?;
    let elapsed = start.elapsed();
    let after = trim()?;
    let audit = engine.audit().await.map_err(|e| e.to_string())?;
    engine.shutdown().await;
    let retirement = Retirement { packets: args.packets, cold, before, peak, after };
    let mut violations = Vec::new();
    if retired != args.packets || warmed != WARMUP_PACKETS {
        violations.push(format!("{retired} of {} packets were retired", args.packets));
    }
    if retirement.growth() > GROWTH_MAX {
        violations.push(format!(
            "resident set {:.1} % above its baseline after retirement (the bound is {:.0} %)",
            retirement.growth() * 100.0,
            GROWTH_MAX * 100.0
        ));
    }
    let detail = format!(
        "wallets {} + escrow {} = deposits {} - withdrawals {}",
        audit.wallets, audit.escrow, audit.deposits, audit.withdrawals
    );
    Ok(Report {
        scenario: "retire".into(),
        target: "embedded (in-memory journal, manual clock)".into(),
        mode: "closed-loop".into(),
        params: json!({ "packets": args.packets, "warmup_packets": WARMUP_PACKETS, "connections": args.connections }),
        figures: Figures::default(),
        elapsed_secs: elapsed.as_secs_f64(),
        audit_balanced: audit.is_balanced(),
        audit_detail: detail,
        violations,
        idle: None,
        retire: Some(retirement),
        journal_bytes: None,
        deadlines: None,
        recalls: None,
    })
}

/// Sends packets `first..first + count` (one share of 1 fen each), has each grabbed at once
/// (so it closes), then moves the clock past the retention and retires until nothing is
/// left. Returns how many packets were retired and the resident set at the peak.
async fn cycle(
    engine: &Engine,
    clock: &ManualClock,
    limits: &Limits,
    first: u64,
    count: u64,
    connections: usize,
) -> Result<(u64, u64), String> {
    let workers = connections.max(1) as u64;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut p = first + w;
                while p < first + count {
                    let split = Split::Fixed { each: Amount::fen(1), shares: 1 };
                    let spec =
                        NewPacket { id: PacketId(p), sender: SENDER, group: GROUP, split, greeting: String::new() };
                    engine.send_packet(spec).await.map_err(|e| format!("send {p}: {e}"))?;
                    engine.grab(PacketId(p), GRABBER).await.map_err(|e| format!("grab {p}: {e}"))?;
                    p += workers;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let peak = resident_bytes()?;
    clock.advance(Duration::from_secs(limits.closed_retention_secs + 1));
    let mut retired = 0;
    loop {
        let r = engine.retire_due().await.map_err(|e| e.to_string())?;
        if r.packets == 0 {
            return Ok((retired, peak));
        }
        retired += r.packets as u64;
    }
}
