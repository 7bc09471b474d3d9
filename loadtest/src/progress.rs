//! What a run shows while it runs, on stderr: a bar when stderr is a terminal, otherwise a
//! line every `--progress-every-secs` (so a long run under CI or `| tee` is not silent). Only measured
//! requests are counted; the rate is that of the last interval, as a whole number.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::Args;

/// How often a terminal bar is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(200);

/// Counts finished measured requests; empty when nothing is shown, so the measured path then
/// touches no shared counter.
#[derive(Clone, Default)]
pub struct Counter(Option<Arc<AtomicU64>>);

impl Counter {
    pub fn add(&self, n: u64) {
        if let Some(c) = &self.0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The display of one run; [`Shown::finish`] stops it.
#[must_use = "finish() stops the display"]
pub struct Shown {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Shown {
    /// Stops the display and clears the bar.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}

/// Starts showing the progress of `what` (scenario and target) towards `total` measured
/// requests (none when the run is bounded by time rather than by count).
pub fn show(args: &Args, what: String, total: Option<u64>) -> (Counter, Shown) {
    let stop = Arc::new(AtomicBool::new(false));
    if args.no_progress {
        return (Counter(None), Shown { stop, task: None });
    }
    let done = Arc::new(AtomicU64::new(0));
    let (watch, stopped) = (Arc::clone(&done), Arc::clone(&stop));
    let task = if std::io::stderr().is_terminal() {
        tokio::spawn(draw_bar(what, total, watch, stopped))
    } else {
        let every = Duration::from_secs(args.progress_every_secs);
        tokio::spawn(print_lines(what, total, every, watch, stopped))
    };
    (Counter(Some(done)), Shown { stop, task: Some(task) })
}

async fn draw_bar(what: String, total: Option<u64>, done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let template = match total {
        Some(_) => "{prefix} [{bar:40}] {pos}/{len} measured requests, {msg}, eta {eta}",
        None => "{prefix} {pos} measured requests, {msg} ({elapsed})",
    };
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template(template).expect("static template").progress_chars("=> "));
    bar.set_prefix(what);
    let mut rate = Rate::default();
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(REDRAW_EVERY).await;
        let n = done.load(Ordering::Relaxed);
        bar.set_position(n);
        bar.set_message(format!("{:.0} requests/s", rate.update(n)));
    }
    bar.finish_and_clear();
}

async fn print_lines(what: String, total: Option<u64>, every: Duration, done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut rate = Rate::default();
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Acquire) {
        // Wake often enough to stop promptly, print only every `every`.
        tokio::time::sleep(REDRAW_EVERY).await;
        if Instant::now() < next {
            continue;
        }
        next += every;
        let n = done.load(Ordering::Relaxed);
        let per_sec = rate.update(n);
        match total {
            Some(total) => eprintln!(
                "loadtest: {what}: {n} of {total} measured requests ({:.0} %), {per_sec:.0} requests/s",
                n as f64 * 100.0 / total.max(1) as f64
            ),
            None => eprintln!("loadtest: {what}: {n} measured requests, {per_sec:.0} requests/s"),
        }
    }
}

/// The rate over the interval since the last update (the first: since the display began).
struct Rate {
    last: (Instant, u64),
}

impl Default for Rate {
    fn default() -> Rate {
        Rate { last: (Instant::now(), 0) }
    }
}

impl Rate {
    fn update(&mut self, n: u64) -> f64 {
        let now = Instant::now();
        let (at, was) = self.last;
        self.last = (now, n);
        let secs = now.duration_since(at).as_secs_f64();
        if secs > 0.0 {
            n.saturating_sub(was) as f64 / secs
        } else {
            0.0
        }
    }
}
