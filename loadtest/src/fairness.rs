//! The fairness scenario: how each lucky draw rule treats each grab position, over `--packets`
//! packets of `--yuan` yuan in `--shares` shares (default cap). For every position: the mean
//! share, its spread (standard deviation) and the chance of being the best luck (the largest
//! share, the earlier grab on a tie, as the engine names it). The shares are the engine's own
//! (`split::shares_of`, the function every packet draws with), each packet seeded from
//! `--seed` as the engine seeds it; no engine runs, so the figures are exact for the seeds.

use std::fmt::Write;

use hongbao::{packet_seed, split, Draw, Limits, PacketId};
use serde_json::json;

use crate::args::Args;

/// What one rule gives each position.
struct Position {
    mean_fen: f64,
    sd_fen: f64,
    best_luck: f64,
}

fn positions(args: &Args, draw: Draw) -> Result<Vec<Position>, String> {
    let (total, shares, cap) = (args.yuan * 100, args.shares, Limits::default().share_fen_max);
    split::check_servable(&hongbao::Split::lucky(hongbao::Amount::fen(total), shares), cap)
        .map_err(|e| format!("--yuan {} in --shares {shares}: {e}", args.yuan))?;
    let k = shares as usize;
    let (mut sum, mut sum_sq, mut best) = (vec![0f64; k], vec![0f64; k], vec![0u64; k]);
    for p in 0..args.packets {
        let got = split::shares_of(total, shares, cap, packet_seed(args.seed, PacketId(p)), draw);
        let mut best_at = 0;
        for (i, &s) in got.iter().enumerate() {
            let s = s as f64;
            sum[i] += s;
            sum_sq[i] += s * s;
            // A strict `>` keeps the earlier grab on a tie, as the engine does.
            if got[i] > got[best_at] {
                best_at = i;
            }
        }
        best[best_at] += 1;
    }
    let n = args.packets as f64;
    Ok((0..k)
        .map(|i| {
            let mean = sum[i] / n;
            Position {
                mean_fen: mean,
                sd_fen: (sum_sq[i] / n - mean * mean).max(0.0).sqrt(),
                best_luck: best[i] as f64 / n,
            }
        })
        .collect())
}

/// Prints the table of both rules (and writes it as JSON with `--json`). Returns whether the
/// shuffled rule's best-luck chances are within a tolerance of each other, as they should be.
pub fn run(args: &Args) -> Result<bool, String> {
    if args.packets == 0 || args.shares == 0 {
        return Err("--scenario fairness needs --packets and --shares of at least 1".into());
    }
    let rules = [("double_mean", Draw::DoubleMean), ("shuffled", Draw::Shuffled)];
    let tables =
        rules.iter().map(|&(name, draw)| Ok((name, positions(args, draw)?))).collect::<Result<Vec<_>, String>>()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario      fairness: {} packets of {} yuan in {} shares, seed {}",
        args.packets, args.yuan, args.shares, args.seed
    );
    let _ = writeln!(out, "{:>8}  {:>28}  {:>28}", "", "double mean", "shuffled");
    let _ = writeln!(
        out,
        "{:>8}  {:>9} {:>8} {:>9}  {:>9} {:>8} {:>9}",
        "position", "mean", "sd", "best luck", "mean", "sd", "best luck"
    );
    let k = args.shares as usize;
    // Every position up to 20 shares; beyond, the first five, the middle and the last five.
    let shown: Vec<usize> =
        if k <= 20 { (0..k).collect() } else { [0, 1, 2, 3, 4, k / 2, k - 5, k - 4, k - 3, k - 2, k - 1].into() };
    for i in shown {
        let (a, b) = (&tables[0].1[i], &tables[1].1[i]);
        let _ = writeln!(
            out,
            "{:>8}  {:>9.2} {:>8.2} {:>8.2}%  {:>9.2} {:>8.2} {:>8.2}%",
            i + 1,
            a.mean_fen / 100.0,
            a.sd_fen / 100.0,
            a.best_luck * 100.0,
            b.mean_fen / 100.0,
            b.sd_fen / 100.0,
            b.best_luck * 100.0
        );
    }
    let _ = writeln!(out, "(mean and sd in yuan; best luck: the chance that this position gets the largest share)");
    // Fair: no position's best-luck chance strays from 1/k by more than five standard errors
    // (a tie favours the earlier position; with shares of whole fen among hundreds of fen a
    // tie for the largest is rare enough to stay inside that). The double mean fails this.
    let expected = 1.0 / k as f64;
    let se = (expected * (1.0 - expected) / args.packets as f64).sqrt();
    let worst = tables[1].1.iter().map(|p| (p.best_luck - expected).abs()).fold(0.0, f64::max);
    let fair = worst <= 5.0 * se;
    let _ = writeln!(
        out,
        "verdict       shuffled: every position's best-luck chance within {:.2} points of {:.2}% ({})",
        worst * 100.0,
        expected * 100.0,
        if fair { "fair" } else { "NOT FAIR" }
    );
    print!("{out}");
    if let Some(path) = &args.json {
        let rule = |table: &[Position]| {
            table
                .iter()
                .enumerate()
                .map(|(i, p)| json!({ "position": i + 1, "mean_fen": p.mean_fen, "sd_fen": p.sd_fen, "best_luck": p.best_luck }))
                .collect::<Vec<_>>()
        };
        let doc = json!({
            "scenario": "fairness",
            "params": { "packets": args.packets, "yuan": args.yuan, "shares": args.shares, "seed": args.seed },
            "double_mean": rule(&tables[0].1),
            "shuffled": rule(&tables[1].1),
            "shuffled_fair": fair,
            "ok": fair,
        });
        let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(fair)
}
