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

/// The open-loop schedule: slot `k` is `start + k / rate`; a run with a deadline schedules no
/// slot at or after it.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    /// Requests per second, over every worker.
    pub rate: f64,
    pub deadline: Option<Instant>,
}

impl Schedule {
    /// The instant request `k` is meant to start.
    pub fn slot(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Whether slot `k` falls inside the run.
    pub fn contains(&self, k: u64) -> bool {
        self.deadline.is_none_or(|d| self.slot(k) < d)
    }

    /// Whether the run's time is over.
    pub fn ended(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Slots inside the run among `k, k + step, k + 2 step, …` below `end`: those a worker
    /// leaves unstarted when the run ends at its slot `k`.
    pub fn remaining(&self, k: u64, step: u64, end: u64) -> u64 {
        let end = match self.deadline {
            // The slots before the deadline are 0..ceil(rate × seconds).
            Some(d) => end.min((d.duration_since(self.start).as_secs_f64() * self.rate).ceil() as u64),
            None => end,
        };
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
    /// Its worker was free before the slot and waited: started this late after it (the
    /// client's own error).
    OnTime(Duration),
    /// Its worker was still busy with earlier requests when the slot came: the delay is the
    /// target's backlog, counted in the corrected latency.
    Behind,
}

/// The pacing thread and the slots waiting on it. Dropping the last handle stops the thread.
#[derive(Clone)]
pub struct Pacer {
    shared: Arc<Shared>,
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
        let thread = std::thread::Builder::new()
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
        Pacer { shared }
    }

    /// Waits until `slot` (at once if it is past) and tells how the start stood against it.
    pub async fn until(&self, slot: Instant) -> Start {
        if Instant::now() >= slot {
            return Start::Behind;
        }
        Sleep { shared: &self.shared, slot }.await;
        Start::OnTime(Instant::now().saturating_duration_since(slot))
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        // The thread holds one reference; the last handle stops it.
        if Arc::strong_count(&self.shared) == 2 {
            self.shared.stop.store(true, Ordering::Release);
            self.shared.thread.unpark();
        }
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
    fn slots_and_what_a_deadline_leaves() {
        let start = Instant::now();
        let s = Schedule { start, rate: 1_000.0, deadline: Some(start + Duration::from_millis(10)) };
        assert_eq!(s.slot(5), start + Duration::from_millis(5));
        assert!(s.contains(9) && !s.contains(10));
        // Slots 0..10 are inside; a worker of stride 3 at slot 4 leaves 4 and 7 unstarted.
        assert_eq!(s.remaining(4, 3, u64::MAX), 2);
        assert_eq!(s.remaining(4, 3, 5), 1);
        assert_eq!(s.remaining(10, 3, u64::MAX), 0);
        let open = Schedule { deadline: None, ..s };
        assert_eq!(open.remaining(4, 3, 100), 32);
        assert!(!open.ended(start + Duration::from_secs(3600)));
    }

    #[test]
    fn a_slot_in_the_past_is_taken_at_once_and_a_future_one_on_time() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pacer = Pacer::start(1_000.0);
        runtime.block_on(async {
            assert!(matches!(pacer.until(Instant::now() - Duration::from_millis(1)).await, Start::Behind));
            let slot = Instant::now() + Duration::from_millis(3);
            let Start::OnTime(late) = pacer.until(slot).await else { panic!("the slot was ahead") };
            // Never early; how late is the machine's business, reported rather than asserted.
            assert!(Instant::now() >= slot, "woke {late:?} after the slot, yet before it");
        });
    }
}
