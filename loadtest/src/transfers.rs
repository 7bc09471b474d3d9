//! The transfers scenario: `--transfers` transfers among `--members` users, spread over the
//! workers, each instant or delayed two hours; the receiver accepts or declines an instant one,
//! the sender recalls a delayed one, or it is left to lapse. The requests are timed as in every
//! scenario (throughput, latency per request); then the engine's manual clock moves past every
//! arrival and every acceptance window, and each `run_due` — the deadline actions, journaled
//! and credited — is timed too. The run passes when the audit balances and no transfer is left
//! pending.
//!
//! The engine runs on a manual clock: the day of acceptance passes in an instant, and the
//! requests never race a deadline they did not ask for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hongbao::{Amount, Arrival, Engine, ManualClock, NewTransfer, OpId, TransferId, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::args::Args;
use crate::pace::Release;
use crate::report::{Deadlines, Figures, Report};
use crate::target::transfer_kind;

/// What each user starts with: enough that no transfer is refused for funds.
const FUNDS_FEN: u64 = 1_000_000_000;

/// The largest transfer of the scenario, in fen.
const AMOUNT_FEN_MAX: u64 = 10_000;

pub async fn run(args: &Args) -> Result<Report, String> {
    let clock = ManualClock::default();
    let config = crate::embedded_config(args, crate::limits(args))?.with_clock(Arc::new(clock.clone()));
    let engine = Engine::start(config).map_err(|e| e.to_string())?;
    let users = args.members;
    for u in 1..=users {
        engine.deposit(OpId(u), UserId(u), Amount::fen(FUNDS_FEN)).await.map_err(|e| e.to_string())?;
    }
    let workers = args.connections.max(1);
    let release = Arc::new(Release::new(workers));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (engine, release, seed, total) = (engine.clone(), Arc::clone(&release), args.seed, args.transfers);
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9E37_79B9));
                let (mut figures, mut left) = (Figures::default(), Left::default());
                release.wait().await;
                for id in (w as u64..total).step_by(workers) {
                    one_transfer(&engine, &mut rng, (&mut figures, &mut left), id, users).await;
                }
                (figures, left)
            })
        })
        .collect();
    let start = release.open().await;
    let (mut figures, mut left) = (Figures::default(), Left::default());
    for t in tasks {
        let (f, l) = t.await.map_err(|e| format!("worker failed: {e}"))?;
        figures.merge(&f);
        (left.in_transit, left.to_lapse) = (left.in_transit + l.in_transit, left.to_lapse + l.to_lapse);
    }
    let elapsed = start.elapsed();

    // The deadlines: every delayed transfer left alone arrives, then every one nobody accepted
    // returns.
    let pending_before = engine.audit().await.map_err(|e| e.to_string())?.transfers_pending as u64;
    let delay = Duration::from_secs(2 * 3_600);
    clock.advance(delay);
    let arriving = Instant::now();
    engine.run_due().await.map_err(|e| e.to_string())?;
    let arrive_secs = arriving.elapsed().as_secs_f64();
    clock.advance(Duration::from_secs(engine.limits().transfer_accept_secs));
    let returning = Instant::now();
    engine.run_due().await.map_err(|e| e.to_string())?;
    let return_secs = returning.elapsed().as_secs_f64();

    let audit = engine.audit().await.map_err(|e| e.to_string())?;
    let mut violations = Vec::new();
    if pending_before != left.in_transit + left.to_lapse {
        violations.push(format!("{pending_before} transfers pending, {} left alone", left.in_transit + left.to_lapse));
    }
    if audit.transfers_pending != 0 || !audit.pending.is_zero() {
        violations.push(format!("{} transfers still pending after every deadline", audit.transfers_pending));
    }
    let sent = figures.count("transfer_sent");
    if audit.transfers_settled as u64 != sent {
        violations.push(format!("{sent} transfers sent, {} settled", audit.transfers_settled));
    }
    let mut detail = format!(
        "wallets {} + escrow {} + pending {} = deposits {} - withdrawals {}",
        audit.wallets, audit.escrow, audit.pending, audit.deposits, audit.withdrawals
    );
    audit.violations.iter().for_each(|v| detail.push_str(&format!("; {v}")));
    engine.shutdown().await;
    Ok(Report {
        scenario: "transfers".into(),
        target: "embedded (in-memory journal)".into(),
        mode: "closed-loop".into(),
        params: json!({
            "transfers": args.transfers, "users": users, "connections": workers, "seed": args.seed,
            "mix": "instant 50% (accept 60%, decline 15%, left to lapse 25%), delayed 2 h 50% (recall 40%, left 60%)",
        }),
        figures,
        elapsed_secs: elapsed.as_secs_f64(),
        audit_balanced: audit.is_balanced(),
        audit_detail: detail,
        violations,
        idle: None,
        retire: None,
        journal_bytes: None,
        deadlines: Some(Deadlines {
            arrived: left.in_transit,
            arrive_secs,
            returned: left.in_transit + left.to_lapse,
            return_secs,
        }),
        recalls: None,
    })
}

/// Transfers a worker left alone for the deadlines.
#[derive(Clone, Copy, Debug, Default)]
struct Left {
    /// Delayed: they arrive at the first move of the clock, and return at the second.
    in_transit: u64,
    /// Instant: they return at the second move.
    to_lapse: u64,
}

/// Sends transfer `id` between two random users and moves it as the mix says, recording each
/// request's latency under its reply kind.
async fn one_transfer(
    engine: &Engine,
    rng: &mut ChaCha8Rng,
    (figures, left): (&mut Figures, &mut Left),
    id: u64,
    users: u64,
) {
    let from = UserId(rng.random_range(1..=users));
    let to = UserId((from.0 + rng.random_range(1..users) - 1) % users + 1);
    let delayed = rng.random_bool(0.5);
    let arrival = if delayed { Arrival::Delayed { secs: 2 * 3_600 } } else { Arrival::Instant };
    let amount = Amount::fen(rng.random_range(1..=AMOUNT_FEN_MAX));
    let spec = NewTransfer { org: None, id: TransferId(id), from, to, amount, arrival, note: String::new() };
    let timed = Instant::now();
    let answer = transfer_kind(engine.transfer(spec).await.map(|_| "transfer_sent"));
    let us = timed.elapsed().as_micros() as u64;
    figures.record_answer(&answer, us, us);
    if answer != "transfer_sent" {
        return;
    }
    let roll = rng.random_range(0..100);
    let (id, timed) = (TransferId(id), Instant::now());
    let answer = match (delayed, roll) {
        (false, 0..=59) => transfer_kind(engine.accept_transfer(id, to).await.map(|_| "accepted")),
        (false, 60..=74) => transfer_kind(engine.decline_transfer(id, to).await.map(|_| "declined")),
        (true, 0..=39) => transfer_kind(engine.recall_transfer(id, from).await.map(|_| "recalled")),
        // Left alone for the deadlines.
        (true, _) => return left.in_transit += 1,
        (false, _) => return left.to_lapse += 1,
    };
    let us = timed.elapsed().as_micros() as u64;
    figures.record_answer(&answer, us, us);
}
