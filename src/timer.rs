//! The timer actor: every pending deadline, in one sorted set, driven by the engine's clock.
//!
//! Deadlines are `(when, what)` pairs in a `BTreeSet` (as mini-redis keeps key expiries), so
//! millions of pending deadlines cost one set entry each and one armed sleep in all — never a
//! timer future per packet. A deadline is a packet's (the end of its cooling-off, its expiry)
//! or a transfer's (its arrival, the end of its acceptance). When the clock reaches the
//! earliest deadline the timer tells its owner, at most `EXPIRIES_PER_TURN_MAX` per turn of
//! the actor so that a million deadlines at the same instant do not stall the arbiter or
//! flood a mailbox at once.
//!
//! # Messages
//!
//! | message    | from          | reply |
//! |------------|---------------|-------|
//! | `Schedule` | routes, packets, transfer shards | none; never refused (one per open packet or pending transfer, each bounded) |
//! | `Cancel`   | routes        | none; never refused (one per packet that closes early) |
//! | `Attach`   | engine start  | none: the callback that acts on a due deadline |
//!
//! The timer knows nothing of packets and transfers beyond their ids: what a deadline does is
//! the callback the engine attaches (it tells the packet's actor or the transfer's shard).
//!
//! The owner re-checks its own deadline against the clock on every request and when told, so a
//! late timer never lets a grab win money that is due back, and an early one changes nothing
//! (the owner schedules its deadline again: a deadline leaves the timer for good only when its
//! action is recorded).

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::prelude::*;

use crate::clock::{Clock, Timestamp};
use crate::health::Fuse;
use crate::money::{PacketId, TransferId};

/// Whose deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Due {
    /// A packet's: the end of its cooling-off, or its expiry.
    Packet(PacketId),
    /// A transfer's: its arrival, or the end of its acceptance.
    Transfer(TransferId),
}

/// How many due packets the timer tells to expire before yielding to other work.
const EXPIRIES_PER_TURN_MAX: usize = 4_096;

/// Adds a deadline.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Schedule {
    pub at: Timestamp,
    pub due: Due,
}

/// Removes a deadline whose packet closed before it (sold out): the set holds only the
/// deadlines of open packets.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Cancel {
    pub at: Timestamp,
    pub due: Due,
}

/// What the timer calls for each due deadline.
pub(crate) type OnDue = Box<dyn Fn(Due) + Send>;

/// Connects the timer to the engine once the engine exists.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Attach(pub OnDue);

/// Starts the periodic sweep: `on_sweep` runs at `first`, then every `every_secs` by the clock.
/// (`first` is fixed by the sender: the clock may move before the timer reads this.)
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AttachSweep {
    pub on_sweep: Box<dyn Fn() + Send>,
    pub first: Timestamp,
    pub every_secs: u64,
}

/// Fires due deadlines (sent by the timer to itself).
#[derive(Message)]
#[rtype(result = "()")]
struct Fire;

/// The sorted deadlines, as plain data.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    set: BTreeSet<(Timestamp, Due)>,
}

impl Deadlines {
    pub(crate) fn insert(&mut self, at: Timestamp, due: Due) {
        self.set.insert((at, due));
    }

    pub(crate) fn remove(&mut self, at: Timestamp, due: Due) {
        self.set.remove(&(at, due));
    }

    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.set.first().map(|&(at, _)| at)
    }

    /// Removes and returns up to `max` deadlines due at `now`, earliest first.
    pub(crate) fn take_due(&mut self, now: Timestamp, max: usize) -> Vec<Due> {
        let mut due = Vec::new();
        while due.len() < max {
            match self.set.first() {
                Some(&(at, what)) if at <= now => {
                    self.set.pop_first();
                    due.push(what);
                }
                _ => break,
            }
        }
        due
    }
}

/// A periodic task: what it runs, how often, and when next.
struct Sweep {
    run: Box<dyn Fn() + Send>,
    every_secs: u64,
    next: Timestamp,
}

pub(crate) struct Timer {
    clock: Arc<dyn Clock>,
    /// Blown if firing panics: a dead timer thread would strand every deadline.
    fuse: Arc<Fuse>,
    on_due: Option<OnDue>,
    sweep: Option<Sweep>,
    deadlines: Deadlines,
    armed: Option<(Timestamp, SpawnHandle)>,
}

impl Timer {
    pub(crate) fn new(clock: Arc<dyn Clock>, fuse: Arc<Fuse>) -> Timer {
        Timer { clock, fuse, on_due: None, sweep: None, deadlines: Deadlines::default(), armed: None }
    }

    /// Keeps exactly one sleep armed, for the earliest deadline.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let sweep = self.sweep.as_ref().map(|s| s.next);
        let next = match (self.deadlines.next(), sweep) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.armed.map(|(at, _)| at) == next {
            return;
        }
        if let Some((_, handle)) = self.armed.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let sleep =
                self.clock.sleep_until(at).into_actor(self).map(|(), timer: &mut Timer, ctx: &mut Context<Timer>| {
                    timer.armed = None;
                    timer.fire(ctx);
                });
            self.armed = Some((at, ctx.spawn(sleep)));
        }
    }

    fn fire(&mut self, ctx: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("timer", || self.fire_due(ctx));
    }

    fn fire_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.clock.now();
        if let Some(sweep) = &mut self.sweep {
            if sweep.next <= now {
                (sweep.run)();
                sweep.next = now.plus_secs(sweep.every_secs);
            }
        }
        let due = self.deadlines.take_due(now, EXPIRIES_PER_TURN_MAX);
        if let Some(on_due) = &self.on_due {
            due.iter().copied().for_each(on_due);
        }
        if due.len() == EXPIRIES_PER_TURN_MAX {
            // More may be due: continue after the messages already queued on this arbiter.
            ctx.notify(Fire);
        } else {
            self.arm(ctx);
        }
    }
}

impl Actor for Timer {
    type Context = Context<Self>;
}

impl Handler<Attach> for Timer {
    type Result = ();

    fn handle(&mut self, m: Attach, _: &mut Context<Self>) {
        self.on_due = Some(m.0);
    }
}

impl Handler<AttachSweep> for Timer {
    type Result = ();

    fn handle(&mut self, m: AttachSweep, ctx: &mut Context<Self>) {
        self.sweep = Some(Sweep { run: m.on_sweep, every_secs: m.every_secs, next: m.first });
        self.arm(ctx);
    }
}

impl Handler<Schedule> for Timer {
    type Result = ();

    fn handle(&mut self, m: Schedule, ctx: &mut Context<Self>) {
        self.deadlines.insert(m.at, m.due);
        self.arm(ctx);
    }
}

impl Handler<Cancel> for Timer {
    type Result = ();

    fn handle(&mut self, m: Cancel, ctx: &mut Context<Self>) {
        self.deadlines.remove(m.at, m.due);
        self.arm(ctx);
    }
}

impl Handler<Fire> for Timer {
    type Result = ();

    fn handle(&mut self, _: Fire, ctx: &mut Context<Self>) {
        self.fire(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_due_deadlines_in_order_up_to_a_bound() {
        let mut d = Deadlines::default();
        for (at, id) in [(30, 3), (10, 1), (20, 2), (10, 4), (40, 5)] {
            d.insert(Timestamp(at), Due::Packet(PacketId(id)));
        }
        d.insert(Timestamp(20), Due::Transfer(TransferId(1)));
        let p = |id| Due::Packet(PacketId(id));
        assert_eq!(d.next(), Some(Timestamp(10)));
        assert_eq!(d.take_due(Timestamp(5), 10), vec![]);
        assert_eq!(d.take_due(Timestamp(30), 2), vec![p(1), p(4)]);
        assert_eq!(d.take_due(Timestamp(30), 10), vec![p(2), Due::Transfer(TransferId(1)), p(3)]);
        assert_eq!(d.next(), Some(Timestamp(40)));
    }

    #[test]
    fn holds_a_million_deadlines() {
        let mut d = Deadlines::default();
        for id in 0..1_000_000u64 {
            d.insert(Timestamp(1_000 + id % 977), Due::Packet(PacketId(id)));
        }
        let mut taken = 0;
        loop {
            let due = d.take_due(Timestamp(u64::MAX), EXPIRIES_PER_TURN_MAX);
            if due.is_empty() {
                break;
            }
            taken += due.len();
        }
        assert_eq!(taken, 1_000_000);
    }
}
