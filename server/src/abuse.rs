//! Rate limits: per member and per client address, for grabs, sends and transfers
//! (generic cell rate, through `governor`). Over a limit is `429` with `Retry-After`.
//!
//! Each limiter keeps one cell per key it has seen; [`Limits::sweep`] (run every minute)
//! drops the keys that are back to a full burst, so the memory follows the active clients.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hongbao::UserId;

use crate::reply::ApiError;
use crate::settings::Settings;

/// What is being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Grabs (HTTP and WebSocket).
    Grab,
    /// Packet sends.
    Send,
    /// Transfers and what a party does to one.
    Transfer,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Grab => "grabs",
            Action::Send => "sends",
            Action::Transfer => "transfers",
        }
    }
}

struct Pair {
    user: Option<DefaultKeyedRateLimiter<UserId>>,
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Pair {
    fn new(per_user: u32, per_ip: u32) -> Pair {
        Pair { user: limiter(per_user), ip: limiter(per_ip) }
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(per_sec: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_sec).map(|n| RateLimiter::keyed(Quota::per_second(n)))
}

/// Every limiter of the server.
pub struct Limits {
    /// Made once: making a clock measures the processor's counter.
    clock: DefaultClock,
    grab: Pair,
    send: Pair,
    transfer: Pair,
}

impl Limits {
    /// The limiters `settings` asks for.
    pub fn new(settings: &Settings) -> Limits {
        Limits {
            clock: DefaultClock::default(),
            grab: Pair::new(settings.grabs_per_user, settings.grabs_per_ip),
            send: Pair::new(settings.sends_per_user, settings.sends_per_ip),
            transfer: Pair::new(settings.transfers_per_user, settings.transfers_per_ip),
        }
    }

    /// Takes one cell for `user` and one for `ip`, or says when to come back.
    pub fn check(&self, action: Action, user: UserId, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let pair = match action {
            Action::Grab => &self.grab,
            Action::Send => &self.send,
            Action::Transfer => &self.transfer,
        };
        let refused = |not_until: governor::NotUntil<_>| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::rate_limited(action.name(), wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        };
        if let (Some(limiter), Some(ip)) = (&pair.ip, ip) {
            limiter.check_key(&ip).map_err(refused)?;
        }
        if let Some(limiter) = &pair.user {
            limiter.check_key(&user).map_err(refused)?;
        }
        Ok(())
    }

    /// Forgets keys whose cells are full again.
    pub fn sweep(&self) {
        for pair in [&self.grab, &self.send, &self.transfer] {
            if let Some(l) = &pair.user {
                l.retain_recent();
                l.shrink_to_fit();
            }
            if let Some(l) = &pair.ip {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }
}
