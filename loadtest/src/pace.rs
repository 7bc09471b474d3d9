//! Open-loop pacing: the schedule of request slots, and a timer precise to microseconds.
//!
//! Tokio's timer has a one-millisecond resolution: a request that waits on it for its slot
//! starts up to a millisecond late, and since open-loop latency counts from the slot, that
//! slack would be reported as the target's. Here one pacing thread keeps every waiting slot in
//! a heap, sleeps until the earliest (with the thread's timer slack at one microsecond, so the
//! kernel does not defer the wake-up by its default 50 µs), and wakes the waiting task a few
//! microseconds ahead; the task spins the rest. The spin is at most [`SPIN_MAX`] per request
//! and a quarter of a core in all, and nothing when the client is behind (a slot already past
//! is taken at once). What precision costs is the wake-ups: at moderate rates, where the
//! client's threads sleep between requests, each request wakes one, which a millisecond timer
//! would have batched.
//!
//! How late each request actually started after its slot, when its worker was free in time,
//! is the pacing error; it is reported beside the latencies so a reader can see the client's
//! own share.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How far ahead of its slot a task is woken, at most; it spins the rest. A few wake-up
/// latencies of an idle thread on Linux.
pub const SPIN_MAX: Duration = Duration::from_micros(30);

/// The share of one core that spinning may take in all, at any rate: at high rates each
/// request spins less (and most slots are already due when their worker gets to them).
const SPIN_CORE_SHARE: f64 = 0.25;

/// The open-loop schedule of one stretch of a run: its slot `k` is due at `start + k / rate`.
/// A run is one schedule even when it comes in stretches (a storm's rounds): stretch slot `k`
/// is the run's slot `first + k`, and a run with a duration holds the slots due before it ends,
/// `slots = ceil(duration × rate)` of them. Everything below counts from that one definition.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    /// Requests per second, over every worker.
    pub rate: f64,
    /// The run's index of this stretch's first slot.
    pub first: u64,
    /// The run's slots, when it has a duration.
    pub slots: Option<u64>,
}

impl Schedule {
    /// The instant this stretch's slot `k` is due.
    pub fn slot(&self, k: u64) -> Instant {
        // Arguments bound the rate and the duration, so every slot of a run is representable.
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Whether this stretch's slot `k` is inside the run.
    pub fn contains(&self, k: u64) -> bool {
        self.slots.is_none_or(|n| self.first.saturating_add(k) < n)
    }

    /// This stretch's slots inside the run, of `len` it has.
    pub fn inside(&self, len: u64) -> u64 {
        match self.slots {
            Some(n) => len.min(n.saturating_sub(self.first)),
            None => len,
        }
    }

    /// When the run's time is over: the instant its first slot past the end would be due.
    pub fn end(&self) -> Option<Instant> {
        self.slots.map(|n| self.slot(n.saturating_sub(self.first)))
    }

    /// Whether the run's time is over at `now`.
    pub fn ended(&self, now: Instant) -> bool {
        self.end().is_some_and(|end| now >= end)
    }

    /// The slots inside the run among `k, k + step, k + 2 step, …` below `len`: those a worker
    /// leaves unstarted when the run ends at its slot `k`.
    pub fn remaining(&self, k: u64, step: u64, len: u64) -> u64 {
        let end = self.inside(len);
        if k >= end {
            0
        } else {
            (end - 1 - k) / step + 1
        }
    }
}

/// Where a request stood against its slot when it started.
#[derive(Clone, Copy, Debug)]
pub enum Start {
    /// Its worker was free by the slot: it started this late after it (the client's own
    /// error).
    OnTime(Duration),
    /// Its worker's previous request was still waiting for its reply when the slot came: the
    /// delay is the target's backlog, counted in the corrected latency.
    Behind,
}

/// The release of a stretch of work: every worker first gets ready (allocates, connects), then
/// the clock starts, then they go; so no worker's setup is counted as the target's latency.
pub struct Release {
    ready: tokio::sync::Barrier,
    go: tokio::sync::Barrier,
    start: std::sync::OnceLock<Instant>,
}

impl Release {
    /// A release for `workers` workers and the one that opens it.
    pub fn new(workers: usize) -> Release {
        Release {
            ready: tokio::sync::Barrier::new(workers + 1),
            go: tokio::sync::Barrier::new(workers + 1),
            start: std::sync::OnceLock::new(),
        }
    }

    /// A worker: ready; waits for the start, and returns it.
    pub async fn wait(&self) -> Instant {
        self.ready.wait().await;
        self.go.wait().await;
        *self.start.get().expect("set between the two barriers")
    }

    /// The opener: waits for every worker to be ready, starts the clock and lets them go.
    pub async fn open(&self) -> Instant {
        self.all_ready().await;
        self.go().await
    }

    /// The opener, in two steps: waits for every worker to be ready…
    pub async fn all_ready(&self) {
        self.ready.wait().await;
    }

    /// …then starts the clock and lets them go.
    pub async fn go(&self) -> Instant {
        let start = *self.start.get_or_init(Instant::now);
        self.go.wait().await;
        start
    }
}

/// The pacing thread and the slots waiting on it. Dropping the last handle stops the thread.
#[derive(Clone)]
pub struct Pacer {
    shared: Arc<Shared>,
    _running: Arc<Running>,
}

/// Stops the pacing thread when the last [`Pacer`] handle goes.
struct Running {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.thread.unpark();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shared {
    waiting: Mutex<BinaryHeap<Reverse<Waiting>>>,
    thread: std::thread::Thread,
    stop: AtomicBool,
    /// Orders slots of the same instant, so the heap's entries are all distinct.
    next_seq: AtomicU64,
    /// How far ahead of its slot a task is woken.
    spin: Duration,
}

struct Waiting {
    wake_at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.wake_at, self.seq) == (other.wake_at, other.seq)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.wake_at, self.seq).cmp(&(other.wake_at, other.seq))
    }
}

impl Pacer {
    /// Starts the pacing thread for a schedule of `rate` requests per second.
    pub fn start(rate: f64) -> Pacer {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Shared>>();
        let thread: std::thread::JoinHandle<()> = std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || {
                let shared = rx.recv().expect("the shared state is sent right after the spawn");
                drop(rx);
                fine_timer_slack();
                run(&shared);
            })
            .expect("a thread can be spawned");
        let shared = Arc::new(Shared {
            waiting: Mutex::new(BinaryHeap::new()),
            thread: thread.thread().clone(),
            stop: AtomicBool::new(false),
            next_seq: AtomicU64::new(0),
            spin: SPIN_MAX.min(Duration::from_secs_f64(SPIN_CORE_SHARE / rate)),
        });
        tx.send(Arc::clone(&shared)).expect("the pacing thread waits for its state");
        let running = Running { shared: Arc::clone(&shared), thread: Some(thread) };
        Pacer { shared, _running: Arc::new(running) }
    }

    /// Waits until `slot` (at once if it is past) and tells how the start stood against it:
    /// behind if the worker's previous reply came only after the slot.
    pub async fn until(&self, slot: Instant, previous_reply: Option<Instant>) -> Start {
        if previous_reply.is_some_and(|reply| reply > slot) {
            return Start::Behind;
        }
        if Instant::now() < slot {
            Sleep { shared: &self.shared, slot }.await;
        }
        Start::OnTime(Instant::now().saturating_duration_since(slot))
    }
}

/// The pacing thread: wakes every slot that is (nearly) due, then sleeps until the next.
fn run(shared: &Shared) {
    let mut due = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let next = {
            let mut waiting = shared.waiting.lock();
            let now = Instant::now();
            while waiting.peek().is_some_and(|Reverse(w)| w.wake_at <= now) {
                due.push(waiting.pop().expect("peeked").0.waker);
            }
            waiting.peek().map(|Reverse(w)| w.wake_at)
        };
        for waker in due.drain(..) {
            waker.wake();
        }
        match next {
            None => std::thread::park(),
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
        }
    }
}

/// Asks the kernel to wake this thread when its timeouts end, not up to 50 µs later.
fn fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only this thread's slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// A task waiting for its slot: woken by the pacing thread a little ahead, then spinning.
struct Sleep<'a> {
    shared: &'a Shared,
    slot: Instant,
}

impl Future for Sleep<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let wake_at = self.slot.checked_sub(self.shared.spin).unwrap_or(self.slot);
        if Instant::now() >= wake_at {
            while Instant::now() < self.slot {
                std::hint::spin_loop();
            }
            return Poll::Ready(());
        }
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let earliest = {
            let mut waiting = self.shared.waiting.lock();
            waiting.push(Reverse(Waiting { wake_at, seq, waker: cx.waker().clone() }));
            waiting.peek().is_some_and(|Reverse(w)| w.seq == seq)
        };
        if earliest {
            // The thread may be asleep until a later slot.
            self.shared.thread.unpark();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_what_a_duration_leaves() {
        let start = Instant::now();
        // 10 ms at 1 000 requests/s: the run's slots are 0..10.
        let s = Schedule { start, rate: 1_000.0, first: 0, slots: Some(10) };
        assert_eq!(s.slot(5), start + Duration::from_millis(5));
        assert!(s.contains(9) && !s.contains(10));
        assert_eq!(s.end(), Some(start + Duration::from_millis(10)));
        // A worker of stride 3 at slot 4 leaves 4 and 7 unstarted; 4 alone if the stretch
        // has only 5 slots.
        assert_eq!(s.remaining(4, 3, u64::MAX), 2);
        assert_eq!(s.remaining(4, 3, 5), 1);
        assert_eq!(s.remaining(10, 3, u64::MAX), 0);
        // A later stretch of the same run: its slot k is the run's 6 + k.
        let later = Schedule { first: 6, ..s };
        assert!(later.contains(3) && !later.contains(4));
        assert_eq!((later.inside(100), later.inside(2)), (4, 2));
        assert_eq!(later.end(), Some(start + Duration::from_millis(4)));
        // `remaining` and `contains` agree on every slot, whatever the rate.
        for rate in [8.3, 1_000.0, 7.0 / 3.0] {
            let n = (30.0_f64 * rate).ceil() as u64;
            let s = Schedule { start, rate, first: 0, slots: Some(n) };
            let inside = (0..n + 10).filter(|k| s.contains(*k)).count() as u64;
            assert_eq!(s.remaining(0, 1, u64::MAX), inside, "rate {rate}");
        }
        let open = Schedule { slots: None, ..s };
        assert_eq!(open.remaining(4, 3, 100), 32);
        assert!(!open.ended(start + Duration::from_secs(3600)));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
    }

    #[test]
    fn a_worker_still_waiting_for_a_reply_is_behind_and_a_free_one_waits_for_its_slot() {
        let pacer = Pacer::start(1_000.0);
        runtime().block_on(async {
            let now = Instant::now();
            let slot = now - Duration::from_millis(1);
            assert!(matches!(pacer.until(slot, Some(now)).await, Start::Behind));
            // Free before a past slot: on time, late by what the client took.
            let Start::OnTime(late) = pacer.until(slot, Some(slot - Duration::from_millis(1))).await else {
                panic!("the worker was free")
            };
            assert!(late >= Duration::from_millis(1));
            let slot = Instant::now() + Duration::from_millis(3);
            assert!(matches!(pacer.until(slot, None).await, Start::OnTime(_)));
            assert!(Instant::now() >= slot, "started before its slot");
        });
    }

    /// Slots registered in reverse order (each earlier than the one the thread sleeps
    /// towards), many at once: every waiter is woken, none before its slot.
    #[test]
    fn many_waiters_in_any_order_all_wake_at_their_slots() {
        let pacer = Pacer::start(10_000.0);
        runtime().block_on(async {
            let base = Instant::now() + Duration::from_millis(20);
            let waiters: Vec<_> = (0..500u64)
                .rev()
                .map(|i| {
                    let pacer = pacer.clone();
                    let slot = base + Duration::from_micros(i * 37);
                    tokio::spawn(async move {
                        pacer.until(slot, None).await;
                        Instant::now() >= slot
                    })
                })
                .collect();
            for w in waiters {
                assert!(w.await.unwrap(), "a waiter started before its slot");
            }
        });
    }

    #[test]
    fn the_thread_stops_when_the_last_handle_goes() {
        let pacer = Pacer::start(1.0);
        let (a, b) = (pacer.clone(), pacer);
        let shared = Arc::clone(&a.shared);
        drop(a);
        assert!(!shared.stop.load(Ordering::Acquire), "a handle is left");
        drop(b);
        // Dropping the last handle joined the thread: it saw the stop.
        assert!(shared.stop.load(Ordering::Acquire));
        assert_eq!(Arc::strong_count(&shared), 1, "the thread let go of its state");
    }
}
