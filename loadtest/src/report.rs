//! What a run measured, and the ways it is written out: the human table, `--json`, `--hgrm`
//! (the HdrHistogram percentile-distribution text that existing plotters read) and `--plot`
//! (an SVG latency-by-percentile chart). Pure functions over the merged figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::pace::Start;
use crate::target::Answer;

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, at 3 significant digits.
pub const LATENCY_US_MAX: u64 = 600_000_000;

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

/// The percentiles every report shows.
pub const PERCENTILES: [(&str, f64); 7] =
    [("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99), ("max", 100.0)];

/// Everything one worker (and, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Figures {
    /// Replies by kind ("won", "sold_out", ..., and errors such as "busy").
    pub replies: BTreeMap<String, u64>,
    /// Times a request was answered `Busy` and sent again.
    pub busy_retries: u64,
    /// Latency from the request's intended start (the storm's release, or its slot on the
    /// open-loop schedule) to its reply: corrected for coordinated omission.
    pub corrected: Histogram<u64>,
    /// Latency from the moment the request was actually sent to its reply.
    pub uncorrected: Histogram<u64>,
    /// Open loop: how late a request started after its slot when its worker was free in time
    /// (the client's own timing error), in microseconds.
    pub pacing: Histogram<u64>,
    /// Open loop: requests whose slot came while their worker was still busy (started behind
    /// schedule; the wait is in the corrected latency).
    pub behind: u64,
    /// Open loop: requests scheduled inside the run that were never started because the run's
    /// time ended first (k6's dropped iterations).
    pub dropped: u64,
    /// The target's own words for each kind of refusal or error: the first message seen.
    pub messages: BTreeMap<String, String>,
}

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            replies: BTreeMap::new(),
            busy_retries: 0,
            corrected: histogram(),
            uncorrected: histogram(),
            pacing: histogram(),
            behind: 0,
            dropped: 0,
            messages: BTreeMap::new(),
        }
    }
}

impl Figures {
    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &Figures) {
        for (kind, n) in &other.replies {
            *self.replies.entry(kind.clone()).or_default() += n;
        }
        self.busy_retries += other.busy_retries;
        self.corrected.add(&other.corrected).expect("same bounds");
        self.uncorrected.add(&other.uncorrected).expect("same bounds");
        self.pacing.add(&other.pacing).expect("same bounds");
        self.behind += other.behind;
        self.dropped += other.dropped;
        for (kind, message) in &other.messages {
            self.messages.entry(kind.clone()).or_insert_with(|| message.clone());
        }
    }

    /// Counts how an open-loop request's start stood against its slot.
    pub fn started(&mut self, start: Start) {
        match start {
            Start::OnTime(late) => {
                self.pacing.saturating_record(late.as_micros() as u64);
            }
            Start::Behind => self.behind += 1,
        }
    }

    /// Keeps the target's message for a kind of refusal, the first one seen.
    pub fn note(&mut self, kind: &str, message: &str) {
        if !self.messages.contains_key(kind) {
            self.messages.insert(kind.to_string(), message.to_string());
        }
    }

    /// Counts one reply of `kind` with its two latencies in microseconds.
    pub fn record(&mut self, kind: &str, corrected_us: u64, uncorrected_us: u64) {
        match self.replies.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.replies.insert(kind.to_string(), 1);
            }
        }
        self.corrected.saturating_record(corrected_us.max(1));
        self.uncorrected.saturating_record(uncorrected_us.max(1));
    }

    /// Counts one answer, keeping the target's message for its kind.
    pub fn record_answer(&mut self, answer: &Answer, corrected_us: u64, uncorrected_us: u64) {
        self.record(answer.kind, corrected_us, uncorrected_us);
        if let Some(message) = &answer.message {
            self.note(answer.kind, message);
        }
    }

    /// All requests answered.
    pub fn requests(&self) -> u64 {
        self.replies.values().sum()
    }

    /// Replies of one kind.
    pub fn count(&self, kind: &str) -> u64 {
        self.replies.get(kind).copied().unwrap_or(0)
    }
}

/// Reply kinds that are a normal answer rather than an error.
pub const ANSWERS: &[&str] = &[
    "won",
    "sold_out",
    "already_grabbed",
    "not_eligible",
    "expired",
    "deposited",
    "sent",
    "balance",
    "insufficient_funds",
    "unknown_packet",
    "transfer_sent",
    "accepted",
    "declined",
    "recalled",
    "already_closed",
    "packet_recalled",
    "too_late",
];

/// A finished run, ready to print.
#[derive(Clone, Debug)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub mode: String,
    pub params: Value,
    pub figures: Figures,
    pub elapsed_secs: f64,
    pub audit_balanced: bool,
    pub audit_detail: String,
    pub violations: Vec<String>,
    /// For the idle scenario: (packets, resident bytes before, after).
    pub idle: Option<(u64, u64, u64)>,
    /// For the retire scenario: resident bytes before, at the peak, after retirement.
    pub retire: Option<Retirement>,
    /// With a file journal: its size after the run, in bytes.
    pub journal_bytes: Option<u64>,
    /// For the transfers scenario: what the deadlines did after the requests.
    pub deadlines: Option<Deadlines>,
    /// For the recall scenario: the admin's recalls, apart from the grabs.
    pub recalls: Option<Figures>,
}

/// What the transfers scenario's deadline phase measured: the engine's clock moved past every
/// arrival, then past every acceptance window, each followed by `Engine::run_due`.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// Transfers that arrived at the first move, and the seconds `run_due` took.
    pub arrived: u64,
    pub arrive_secs: f64,
    /// Transfers returned to their senders at the second move, and the seconds it took.
    pub returned: u64,
    pub return_secs: f64,
}

/// What the retire scenario measured.
#[derive(Clone, Copy, Debug)]
pub struct Retirement {
    /// Packets sent, drained and retired.
    pub packets: u64,
    /// Resident bytes before any packet, after the warm-up (the baseline), at the peak, and
    /// after retirement.
    pub cold: u64,
    pub before: u64,
    pub peak: u64,
    pub after: u64,
}

impl Retirement {
    /// The resident set after retirement as a fraction above the baseline.
    pub fn growth(&self) -> f64 {
        self.after as f64 / self.before as f64 - 1.0
    }
}

impl Report {
    /// Whether the run is a pass: audit balanced and no invariant broken.
    pub fn ok(&self) -> bool {
        self.audit_balanced && self.violations.is_empty()
    }

    fn rate(&self, n: u64) -> f64 {
        if self.elapsed_secs > 0.0 {
            n as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }

    /// The rate an open-loop run was asked for, in requests per second.
    fn rate_target(&self) -> Option<f64> {
        self.params["rate"].as_f64().filter(|_| self.mode == "open-loop")
    }

    /// The human table.
    pub fn table(&self) -> String {
        let f = &self.figures;
        let mut out = String::new();
        let _ = writeln!(out, "scenario      {} ({}), target {}", self.scenario, self.mode, self.target);
        if let Some(params) = self.params.as_object() {
            // As wrk does: what was asked, so two reports can be told apart.
            let shown: Vec<String> = params
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            let _ = writeln!(out, "parameters    {}", shown.join(", "));
        }
        let _ = writeln!(out, "requests      {:>12}", f.requests());
        for kind in ANSWERS.iter().filter(|k| f.count(k) > 0) {
            let _ = writeln!(out, "  {kind:<18}{:>10}", f.count(kind));
            if let Some(message) = f.messages.get(*kind) {
                let _ = writeln!(out, "    first: {message}");
            }
        }
        let errors: Vec<_> = f.replies.iter().filter(|(k, _)| !ANSWERS.contains(&k.as_str())).collect();
        let error_total: u64 = errors.iter().map(|(_, n)| **n).sum();
        let _ = writeln!(out, "errors        {error_total:>12}");
        for (kind, n) in errors {
            let _ = writeln!(out, "  {kind:<18}{n:>10}");
            if let Some(message) = f.messages.get(kind) {
                let _ = writeln!(out, "    first: {message}");
            }
        }
        let _ = writeln!(out, "busy, retried {:>12}", f.busy_retries);
        let _ = writeln!(out, "elapsed       {:>12.3} s", self.elapsed_secs);
        let _ = writeln!(out, "throughput    {:>12.0} requests/s", self.rate(f.requests()));
        if self.scenario != "transfers" {
            let _ = writeln!(out, "              {:>12.0} winning grabs/s", self.rate(f.count("won")));
        }
        if let Some(rate) = self.rate_target() {
            let achieved = self.rate(f.requests());
            // Met when the achieved rate is within 5 % of the asked one and at most 1 % of the
            // slots were dropped.
            let scheduled = f.requests().saturating_add(f.dropped);
            let missed = achieved < rate * 0.95 || f.dropped as f64 > scheduled as f64 / 100.0;
            let verdict = if missed { "MISSED" } else { "met" };
            let _ = writeln!(
                out,
                "schedule      target {} requests/s {verdict}: achieved {} ({:.1} %); {} dropped (scheduled, never \
                 started before the run's end); {} started behind schedule (the worker's previous reply came after \
                 the slot)",
                per_sec(rate),
                per_sec(achieved),
                achieved / rate * 100.0,
                f.dropped,
                f.behind
            );
            let p = &f.pacing;
            let figures = if p.is_empty() {
                "n/a".to_string()
            } else {
                format!(
                    "p50 {} ms  p99 {} ms  max {} ms",
                    ms(p.value_at_percentile(50.0)),
                    ms(p.value_at_percentile(99.0)),
                    ms(p.max())
                )
            };
            let _ = writeln!(
                out,
                "pacing error  {figures} (how late a free worker started after its slot; {} starts)",
                p.len()
            );
        }
        let header: Vec<String> = ["mean", "stdev", "min"]
            .iter()
            .chain(PERCENTILES.iter().map(|(l, _)| l))
            .map(|l| format!("{l:>9}"))
            .collect();
        let _ = writeln!(out, "latency ms    {}", header.join(""));
        let mut latency = |name: &str, h: &Histogram<u64>| {
            let mut cells = vec![h.mean() / 1e3, h.stdev() / 1e3, h.min() as f64 / 1e3];
            cells.extend(PERCENTILES.iter().map(|(_, p)| h.value_at_percentile(*p) as f64 / 1e3));
            let cells: Vec<String> = cells.iter().map(|v| format!("{v:>9.3}")).collect();
            let _ = writeln!(out, "  {name:<12}{}", cells.join(""));
        };
        // Corrected counts from the intended start (the release, or the slot); uncorrected from
        // the moment the request left.
        latency("corrected", &f.corrected);
        latency("uncorrected", &f.uncorrected);
        if let Some(r) = self.retire {
            let _ = writeln!(
                out,
                "retired       {} packets sent, drained and retired: resident {:.1} (cold), {:.1} (baseline) → {:.1} (peak) → {:.1} MiB, {:+.1} % of the baseline",
                r.packets,
                r.cold as f64 / MIB,
                r.before as f64 / MIB,
                r.peak as f64 / MIB,
                r.after as f64 / MIB,
                r.growth() * 100.0
            );
        }
        if let Some((packets, before, after)) = self.idle {
            let _ = writeln!(
                out,
                "idle memory   {} open packets, resident {:.1} → {:.1} MiB, {:.0} bytes per packet",
                packets,
                before as f64 / MIB,
                after as f64 / MIB,
                per_packet(packets, before, after)
            );
        }
        if f.count("transfer_sent") > 0 {
            let _ = writeln!(out, "              {:>12.0} transfers sent/s", self.rate(f.count("transfer_sent")));
        }
        if let Some(d) = self.deadlines {
            let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
            let _ = writeln!(
                out,
                "deadlines     {} arrived in {:.3} s ({:.0}/s), {} returned in {:.3} s ({:.0}/s)",
                d.arrived,
                d.arrive_secs,
                per_sec(d.arrived, d.arrive_secs),
                d.returned,
                d.return_secs,
                per_sec(d.returned, d.return_secs)
            );
        }
        if let Some(r) = &self.recalls {
            let h = &r.corrected;
            let _ = writeln!(
                out,
                "admin recalls {} recalled, {} found closed, {} gave up; latency ms p50 {}  p99 {}  max {}",
                r.count("recalled"),
                r.count("already_closed"),
                r.requests() - r.count("recalled") - r.count("already_closed"),
                ms(h.value_at_percentile(50.0)),
                ms(h.value_at_percentile(99.0)),
                ms(h.max())
            );
            for (kind, message) in &r.messages {
                let _ = writeln!(out, "  {kind}: {message}");
            }
        }
        if let Some(bytes) = self.journal_bytes {
            let (what, n) = match self.scenario.as_str() {
                "transfers" => ("transfer", f.count("transfer_sent")),
                _ => ("winning grab", f.count("won")),
            };
            let _ = writeln!(
                out,
                "journal       {bytes} bytes on disk (whole run, setup included), {} per {what}",
                bytes / n.max(1)
            );
        }
        for v in self.violations.iter().take(VIOLATIONS_SHOWN_MAX) {
            let _ = writeln!(out, "INVARIANT BROKEN: {v}");
        }
        if self.violations.len() > VIOLATIONS_SHOWN_MAX {
            let _ = writeln!(out, "INVARIANT BROKEN: … and {} more", self.violations.len() - VIOLATIONS_SHOWN_MAX);
        }
        let verdict = if self.audit_balanced { "balanced" } else { "NOT BALANCED" };
        let _ = writeln!(out, "audit         {verdict}: {}", self.audit_detail);
        out
    }

    /// The JSON document (fields documented in BENCHMARKS.md).
    pub fn json(&self) -> Value {
        let f = &self.figures;
        let latency = |h: &Histogram<u64>| {
            let mut m = serde_json::Map::new();
            for (label, p) in PERCENTILES {
                m.insert(label.replace('.', "_"), json!(h.value_at_percentile(p)));
            }
            m.insert("mean".into(), json!(h.mean()));
            m.insert("stdev".into(), json!(h.stdev()));
            m.insert("min".into(), json!(h.min()));
            m.insert("count".into(), json!(h.len()));
            Value::Object(m)
        };
        json!({
            "scenario": self.scenario,
            "target": self.target,
            "mode": self.mode,
            "params": self.params,
            "requests": f.requests(),
            "replies": f.replies,
            "busy_retries": f.busy_retries,
            "elapsed_secs": self.elapsed_secs,
            "requests_per_sec": self.rate(f.requests()),
            "winning_grabs_per_sec": self.rate(f.count("won")),
            "latency_us": { "corrected": latency(&f.corrected), "uncorrected": latency(&f.uncorrected) },
            "schedule": self.rate_target().map(|rate| json!({
                "target_requests_per_sec": rate,
                "achieved_requests_per_sec": self.rate(f.requests()),
                "dropped": f.dropped,
                "behind": f.behind,
                "pacing_error_us": latency(&f.pacing),
            })),
            "messages": f.messages,
            "idle": self.idle.map(|(packets, before, after)| json!({
                "open_packets": packets,
                "resident_bytes_before": before,
                "resident_bytes_after": after,
                "bytes_per_packet": per_packet(packets, before, after),
            })),
            "retire": self.retire.map(|r| json!({
                "packets": r.packets,
                "resident_bytes_cold": r.cold,
                "resident_bytes_before": r.before,
                "resident_bytes_peak": r.peak,
                "resident_bytes_after": r.after,
                "growth": r.growth(),
            })),
            "journal_bytes": self.journal_bytes,
            "recalls": self.recalls.as_ref().map(|r| json!({
                "replies": r.replies,
                "latency_us": latency(&r.corrected),
                "messages": r.messages,
            })),
            "transfers_sent_per_sec": self.rate(f.count("transfer_sent")),
            "deadlines": self.deadlines.map(|d| json!({
                "arrived": d.arrived,
                "arrive_secs": d.arrive_secs,
                "returned": d.returned,
                "return_secs": d.return_secs,
            })),
            "audit": { "balanced": self.audit_balanced, "detail": self.audit_detail },
            "violations": self.violations.iter().take(VIOLATIONS_SHOWN_MAX).collect::<Vec<_>>(),
            "violations_total": self.violations.len(),
            "ok": self.ok(),
        })
    }
}

/// One line comparing two runs of the same scenario: throughput ratio and p99s.
pub fn comparison(a: &Report, b: &Report) -> String {
    let (ra, rb) = (a.rate(a.figures.requests()), b.rate(b.figures.requests()));
    let ratio = if rb > 0.0 { ra / rb } else { f64::INFINITY };
    format!(
        "comparison    {} vs {}: {ratio:.1}× the requests/s ({ra:.0} vs {rb:.0}); p99 {} ms vs {} ms",
        a.target,
        b.target,
        ms(a.figures.corrected.value_at_percentile(99.0)),
        ms(b.figures.corrected.value_at_percentile(99.0)),
    )
}

/// The JSON document for several targets: every run, and each later run's throughput
/// relative to the first.
pub fn comparison_json(reports: &[Report]) -> Value {
    let first = &reports[0];
    let base = first.rate(first.figures.requests());
    json!({
        "runs": reports.iter().map(Report::json).collect::<Vec<_>>(),
        "throughput_ratio_first_to": reports[1..].iter().map(|r| json!({
            "target": r.target,
            "ratio": base / r.rate(r.figures.requests()).max(f64::MIN_POSITIVE),
        })).collect::<Vec<_>>(),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Broken invariants listed one by one; past this many only their number is given.
const VIOLATIONS_SHOWN_MAX: usize = 20;

fn per_packet(packets: u64, before: u64, after: u64) -> f64 {
    after.saturating_sub(before) as f64 / packets.max(1) as f64
}

/// A rate as people read it: whole requests per second, or two decimals below ten.
fn per_sec(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.2}")
    } else {
        format!("{rate:.0}")
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1_000.0)
}

/// The percentile distribution in HdrHistogram's text layout, values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = h.highest_equivalent(v.value_iterated_to()) as f64 / 1_000.0;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:>12.3} {q:>2.12} {total:>10}");
        }
    }
    let _ = writeln!(out, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1_000.0, h.stdev() / 1_000.0);
    let _ = writeln!(out, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64 / 1_000.0, h.len());
    // As HdrHistogram computes it: the smallest power of two covering 2 × 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let _ = writeln!(out, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets);
    out
}

/// An SVG chart of latency (ms) by percentile, the percentile axis log-scaled as
/// HdrHistogram plots are: x = log10(1 / (1 - p)), so 90%, 99%, 99.9% … are evenly spaced.
pub fn plot_svg(path: &std::path::Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    const NINES_MAX: f64 = 5.0; // up to 99.999%
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        h.iter_quantiles(10)
            .map(|v| {
                let q = v.quantile_iterated_to().min(1.0 - 1e-5);
                ((1.0 / (1.0 - q)).log10().min(NINES_MAX), h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3)
            })
            .collect()
    };
    let all: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, h)| points(h)).collect();
    // Latency on a log axis: a target a hundred times slower than another stays readable on
    // the same chart.
    let y_max = all.iter().flatten().map(|p| p.1).fold(0.001, f64::max) * 1.5;
    let y_min = all.iter().flatten().map(|p| p.1).fold(y_max, f64::min).max(0.001) / 1.5;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..NINES_MAX, (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| {
            let nines = x.round() as i32;
            match nines {
                0 => "0%".into(),
                n => format!("{}%", 100.0 - 100.0 / 10f64.powi(n)),
            }
        })
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, ((name, _), pts)) in series.iter().zip(all).enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap(); // 10 µs .. 100 ms, uniform
        }
        h
    }

    #[test]
    fn hgrm_lines_match_the_histogram() {
        let h = sample();
        let text = hgrm(&h);
        let mut last_count = 0;
        let mut rows = 0;
        for line in text.lines().skip(2).filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (value_ms, q, count): (f64, f64, u64) =
                (cols[0].parse().unwrap(), cols[1].parse().unwrap(), cols[2].parse().unwrap());
            // Each row says: `count` values are at most `value`, and that is at least the
            // row's percentile of all values. Counts only grow.
            let value_us = (value_ms * 1_000.0).round() as u64;
            assert_eq!(h.count_between(0, value_us), count, "{line}");
            assert!(count as f64 >= q * h.len() as f64, "{line}");
            assert!(h.value_at_quantile(q) <= value_us, "{line}");
            assert!(count >= last_count);
            if cols.len() == 4 {
                let inv: f64 = cols[3].parse().unwrap();
                assert!((inv - 1.0 / (1.0 - q)).abs() / inv < 0.01, "{line}");
            }
            last_count = count;
            rows += 1;
        }
        assert!(rows > 20);
        assert_eq!(last_count, h.len(), "the last row counts every value");
        assert!(text.contains(&format!("Total count    = {:>12}", h.len())));
        let max_line = text.lines().find(|l| l.starts_with("#[Max")).unwrap();
        assert!(max_line.contains(&format!("{:.3}", h.max() as f64 / 1_000.0)), "{max_line}");
    }

    #[test]
    fn json_figures_come_from_the_histograms() {
        let mut figures = Figures::default();
        for v in 1..=1_000u64 {
            figures.record(if v % 10 == 0 { "won" } else { "sold_out" }, v * 100, v);
        }
        figures.record("busy", 5, 5);
        let report = Report {
            scenario: "storm".into(),
            target: "embedded".into(),
            mode: "burst".into(),
            params: json!({"groups": 1}),
            figures: figures.clone(),
            elapsed_secs: 2.0,
            audit_balanced: true,
            audit_detail: "ok".into(),
            violations: vec![],
            idle: None,
            retire: None,
            journal_bytes: None,
            deadlines: None,
            recalls: None,
        };
        let j = report.json();
        assert_eq!(j["requests"], 1_001);
        assert_eq!(j["replies"]["won"], 100);
        assert_eq!(j["replies"]["sold_out"], 900);
        assert_eq!(j["replies"]["busy"], 1);
        assert_eq!(j["requests_per_sec"], 500.5);
        assert_eq!(j["winning_grabs_per_sec"], 50.0);
        let c = &j["latency_us"]["corrected"];
        for (label, p) in PERCENTILES {
            assert_eq!(c[label.replace('.', "_")], figures.corrected.value_at_percentile(p), "{label}");
        }
        assert_eq!(j["latency_us"]["uncorrected"]["max"], figures.uncorrected.max());
        assert_eq!(c["count"], 1_001);
        assert_eq!(j["ok"], true);
        let table = report.table();
        assert!(table.contains("errors                   1"), "{table}");
    }

    #[test]
    fn merging_adds_counts_and_histograms() {
        let (mut a, mut b) = (Figures::default(), Figures::default());
        a.record("won", 10, 10);
        b.record("won", 20, 20);
        b.record("sold_out", 30, 30);
        b.busy_retries = 4;
        a.merge(&b);
        assert_eq!((a.count("won"), a.count("sold_out"), a.busy_retries, a.corrected.len()), (2, 1, 4, 3));
    }

    #[test]
    fn plot_writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("hongbao-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.svg");
        let h = sample();
        plot_svg(&path, "test", &[("corrected", &h)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("99.9%") && svg.contains("polyline"), "{}", &svg[..200]);
        // Latency on a log axis: its labels go by decades over the sample's 10 µs .. 100 ms.
        let labels: Vec<&str> = svg.split("</text>").filter_map(|t| t.rsplit('>').next()).map(str::trim).collect();
        assert!(svg.contains("log scale"), "the axis says it is logarithmic");
        for decade in ["0.01", "0.1", "1.0", "10.0", "100.0"] {
            assert!(labels.contains(&decade), "{decade} missing from {labels:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
