//! Time: every deadline in hongbao comes from the [`Clock`] the engine is given.
//!
//! Production uses [`SystemClock`]. Tests use [`ManualClock`], which moves only when told and
//! wakes the engine's timer when it does, so a test moves 24 hours forward in microseconds of
//! real time and never sleeps waiting for a deadline.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// Milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(transparent))]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This instant plus `secs` seconds (saturating).
    pub fn plus_secs(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1_000)))
    }

    /// The day this instant falls on, counted from the Unix epoch, where days start at
    /// midnight `utc_offset_secs` east of UTC (28 800 for China Standard Time).
    pub fn day(self, utc_offset_secs: i32) -> u64 {
        let local = i128::from(self.0) + i128::from(utc_offset_secs) * 1_000;
        // Before the epoch in local time only with a negative offset on the first day: day 0.
        u64::try_from(local.div_euclid(86_400_000)).unwrap_or(0)
    }

    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1_000, self.0 % 1_000)
    }
}

/// A future that completes when a clock reaches a deadline.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A source of time for deadlines.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// A future that completes at or after `deadline` by this clock. It may also complete
    /// early (the timer re-checks `now()` and waits again), so a clock that cannot wake
    /// exactly may wake periodically instead.
    fn sleep_until(&self, deadline: Timestamp) -> Sleep;
}

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// The longest a system-clock sleep lasts before the timer looks at the clock again, so that
/// a wall-clock step (NTP, a suspended VM) delays an expiry by at most this much.
const SYSTEM_SLEEP_MS_MAX: u64 = 1_000;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Timestamp(since.as_millis() as u64)
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        let wait_ms = deadline.0.saturating_sub(self.now().0).min(SYSTEM_SLEEP_MS_MAX);
        Box::pin(tokio::time::sleep(Duration::from_millis(wait_ms)))
    }
}

/// A clock that moves only when told. Cloning shares the same time.
///
/// # Examples
///
/// ```
/// use hongbao::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
/// let clock = ManualClock::new(Timestamp(1_000));
/// clock.advance(Duration::from_secs(86_400));
/// assert_eq!(clock.now(), Timestamp(1_000 + 86_400_000));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<watch::Sender<u64>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { now: Arc::new(watch::Sender::new(start.0)) }
    }

    /// Moves the clock forward by `by` and wakes every sleeper whose deadline passed.
    pub fn advance(&self, by: Duration) {
        let by_ms = by.as_millis() as u64;
        self.now.send_modify(|now| *now = now.saturating_add(by_ms));
    }

    /// Sets the clock to `to` (which may be earlier: tests of clock steps use it).
    pub fn set(&self, to: Timestamp) {
        self.now.send_replace(to.0);
    }
}

impl Default for ManualClock {
    /// A clock standing at 2026-01-01T00:00:00Z.
    fn default() -> ManualClock {
        ManualClock::new(Timestamp(1_767_225_600_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(*self.now.borrow())
    }

    fn sleep_until(&self, deadline: Timestamp) -> Sleep {
        let mut changes = self.now.subscribe();
        Box::pin(async move {
            // wait_for checks the current value first, then every change.
            let _ = changes.wait_for(|now| *now >= deadline.0).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_on_advance_past_deadline() {
        let clock = ManualClock::new(Timestamp(0));
        let sleep = clock.sleep_until(Timestamp(10_000));
        let waiter = tokio::spawn(sleep);
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(5));
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn manual_sleep_past_deadline_is_ready() {
        let clock = ManualClock::new(Timestamp(50));
        clock.sleep_until(Timestamp(10)).await;
    }

    #[test]
    fn plus_secs_saturates() {
        assert_eq!(Timestamp(1).plus_secs(2), Timestamp(2_001));
        assert_eq!(Timestamp(u64::MAX).plus_secs(1), Timestamp(u64::MAX));
    }
}
