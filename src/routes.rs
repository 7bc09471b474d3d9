//! The routing table: where each packet id leads, and the count of open packets. Only this
//! module writes them, through the transitions of [`Route`]:
//!
//! ```text
//!  reserve ──▶ Opening ──open──▶ Dormant ──wake──▶ Live ──close──▶ Closed
//!                 │                  └──────────────────close──────────▲ (loaded closed)
//!                 └──abandon──▶ (gone: the send was refused)
//! ```
//!
//! A sent packet is *dormant* — an entry holding its send record and the claims it had before
//! a restart, no actor, no mailbox — until the first grab or its expiry wakes it (under the
//! entry's lock, so exactly once). Packets nobody opens therefore cost a few hundred bytes
//! each, not an actor apiece. A grab costs one lookup here; then the request goes to the
//! packet's bounded mailbox.
//!
//! # Limits
//!
//! At most `open_packets_max` packets opening or open; a reservation past it is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::clock::Timestamp;
use crate::money::PacketId;
use crate::packet::{ClaimView, PacketState, PacketView};
use crate::packet_actor::{Closing, PacketActor, PacketCtx, RunDue};
use crate::placement::bucket;
use crate::record::PacketSent;
use crate::timer::{Cancel, Due, Schedule, Timer};

/// What the engine keeps of a dormant packet: its send, and its opening and the claims made
/// before a restart (none for a packet sent in this run).
#[derive(Debug)]
pub(crate) struct PacketMeta {
    pub sent: PacketSent,
    pub opened_at: Option<Timestamp>,
    pub claims: Vec<ClaimView>,
}

impl PacketMeta {
    /// The packet's state, its draw replayed up to its last claim.
    pub(crate) fn state(&self) -> PacketState {
        PacketState::restore(self.sent.clone(), self.opened_at, &self.claims)
            .expect("claims were checked against the draw when the journal was read")
    }

    /// Its next deadline as of this send: the end of its approval window or of its
    /// cooling-off if it has not opened, else its expiry (shifted by a late approval).
    fn deadline(&self) -> Timestamp {
        let sent = &self.sent;
        match (self.opened_at, sent.approval) {
            (None, Some(approval)) => approval.until,
            (None, None) if sent.opens_at > sent.sent_at => sent.opens_at,
            (Some(at), Some(_)) => crate::packet::expiry_after_approval(sent, at),
            _ => sent.expires_at,
        }
    }
}

/// A packet actor's address, with its send.
#[derive(Debug)]
pub(crate) struct LivePacket {
    pub addr: Addr<PacketActor>,
    pub meta: Arc<PacketMeta>,
}

/// Where a packet id leads.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// A send is in progress: the escrow is being debited.
    Opening,
    /// Open, and nobody has touched it yet: no actor, no mailbox.
    Dormant(Arc<PacketMeta>),
    /// The packet's actor is running.
    Live(Arc<LivePacket>),
    /// Closed; the final view answers repeat grabs and queries.
    Closed(Arc<PacketView>),
}

impl Route {
    /// The packet's send if it is open (dormant or live).
    pub(crate) fn open_meta(&self) -> Option<&Arc<PacketMeta>> {
        match self {
            Route::Dormant(meta) => Some(meta),
            Route::Live(live) => Some(&live.meta),
            Route::Opening | Route::Closed(_) => None,
        }
    }
}

/// What reserving an id found.
pub(crate) enum Reservation {
    /// The id is reserved for this send.
    Reserved,
    /// The id is taken.
    Taken(Route),
    /// `open_packets_max` packets are open.
    Full,
}

/// The routing table and what waking a packet needs.
pub(crate) struct Routes {
    table: DashMap<PacketId, Route>,
    /// Packets opening or open; bounded by `open_packets_max`.
    open: AtomicUsize,
    open_max: usize,
    arbiters: Box<[ArbiterHandle]>,
    timer: Addr<Timer>,
    ctx: Arc<PacketCtx>,
}

impl Routes {
    /// Packets opening or open now.
    pub(crate) fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// An empty table. `make_ctx` builds the packet actors' context around the callback that
    /// closes a packet's route (which needs the table, hence the cycle through a weak handle).
    pub(crate) fn new(
        open_max: usize,
        arbiters: Box<[ArbiterHandle]>,
        timer: Addr<Timer>,
        make_ctx: impl FnOnce(Box<dyn Fn(Closing) + Send + Sync>) -> PacketCtx,
    ) -> Arc<Routes> {
        Arc::new_cyclic(|routes: &Weak<Routes>| {
            let routes = Weak::clone(routes);
            let on_close = Box::new(move |closing: Closing| {
                if let Some(routes) = routes.upgrade() {
                    match closing {
                        Closing::Slot => drop(routes.open.fetch_sub(1, Ordering::AcqRel)),
                        Closing::View(view) => routes.close(*view),
                    }
                }
            });
            let ctx = Arc::new(make_ctx(on_close));
            Routes { table: DashMap::new(), open: AtomicUsize::new(0), open_max, arbiters, timer, ctx }
        })
    }

    /// Where `packet` leads now.
    pub(crate) fn get(&self, packet: PacketId) -> Option<Route> {
        self.table.get(&packet).map(|r| r.value().clone())
    }

    /// Reserves `packet` for a send, unless it is taken or too many packets are open.
    pub(crate) fn reserve(&self, packet: PacketId) -> Reservation {
        match self.table.entry(packet) {
            Entry::Occupied(e) => Reservation::Taken(e.get().clone()),
            Entry::Vacant(e) => {
                let max = self.open_max;
                if self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err()
                {
                    return Reservation::Full;
                }
                e.insert(Route::Opening);
                Reservation::Reserved
            }
        }
    }

    /// Forgets a send that was refused, so the id can be sent again.
    pub(crate) fn abandon(&self, packet: PacketId) {
        if self.table.remove_if(&packet, |_, r| matches!(r, Route::Opening)).is_some() {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Opens a reserved packet whose escrow is durable (or one loaded from the journal, with
    /// `counted` false): dormant until someone touches it, its deadline scheduled.
    pub(crate) fn open(&self, meta: PacketMeta, counted: bool) {
        let (id, at) = (meta.sent.spec.id, meta.deadline());
        if !counted {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        // Scheduled before the route exists, so that a packet that sells out at once cancels a
        // deadline the timer already has. Not refused: one per open packet, bounded by
        // `open_packets_max`.
        self.timer.do_send(Schedule { at, due: Due::Packet(id) });
        self.table.insert(id, Route::Dormant(Arc::new(meta)));
    }

    /// Loads the packets a journal recorded: closed ones (sold out, expired, cancelled) as their final
    /// view, open ones dormant with their claims and their deadlines scheduled (a deadline that
    /// passed while the engine was down fires at once).
    /// A closed packet whose record did not say when it closed (format version 1) counts as
    /// closed at `now`, so it is kept a whole retention.
    pub(crate) fn load(&self, packets: impl Iterator<Item = PacketState>, now: Timestamp) {
        for p in packets {
            if p.status().is_closed() {
                let mut view = p.view();
                if view.closed_at.is_none_or(|at| at == Timestamp(0)) {
                    view.closed_at = Some(now);
                }
                self.table.insert(p.id(), Route::Closed(Arc::new(view)));
            } else {
                let meta = PacketMeta { sent: p.sent().clone(), opened_at: p.opened_at(), claims: p.claims().to_vec() };
                self.open(meta, false);
            }
        }
    }

    /// Replaces a live packet's route with its final view, and takes its deadlines out of the
    /// timer (a packet that sold out or was cancelled no longer needs them; after an expiry
    /// they are gone already).
    fn close(&self, view: PacketView) {
        let id = view.id;
        for at in [view.opens_at, view.expires_at] {
            self.timer.do_send(Cancel { at, due: Due::Packet(id) });
        }
        self.table.insert(id, Route::Closed(Arc::new(view)));
    }

    /// The packet's route, with its actor started if it was dormant. The entry's lock makes
    /// sure only one actor is ever started for a packet.
    pub(crate) fn wake(&self, packet: PacketId) -> Option<Route> {
        let route = self.get(packet)?;
        if !matches!(route, Route::Dormant(_)) {
            return Some(route);
        }
        let mut entry = self.table.get_mut(&packet)?;
        if let Route::Dormant(meta) = entry.value() {
            let meta = Arc::clone(meta);
            let arbiter = &self.arbiters[bucket(packet.0, self.arbiters.len())];
            let addr = PacketActor::spawn(Arc::clone(&self.ctx), arbiter, meta.state());
            *entry.value_mut() = Route::Live(Arc::new(LivePacket { addr, meta }));
        }
        Some(entry.value().clone())
    }

    /// Tells an open packet (waking it if dormant) to act on its passed deadlines (open,
    /// expire); `reply` hears once what it did is durable. Returns whether the packet was
    /// open. The message is not refused: one per due packet per caller.
    pub(crate) fn run_due(&self, packet: PacketId, reply: Option<tokio::sync::oneshot::Sender<()>>) -> bool {
        match self.wake(packet) {
            Some(Route::Live(live)) => {
                live.addr.do_send(RunDue(reply));
                true
            }
            _ => false,
        }
    }

    /// Up to `max` closed packets that closed before `cutoff`, due to be retired.
    pub(crate) fn closed_before(&self, cutoff: Timestamp, max: usize) -> Vec<PacketId> {
        let due = |r: &Route| matches!(r, Route::Closed(v) if v.closed_at.is_some_and(|at| at < cutoff));
        self.table.iter().filter(|r| due(r.value())).map(|r| *r.key()).take(max).collect()
    }

    /// Drops retired packets: their ids are unknown from now on.
    pub(crate) fn retire(&self, packets: &[PacketId]) {
        for id in packets {
            self.table.remove_if(id, |_, r| matches!(r, Route::Closed(_)));
        }
        // A table keeps its capacity as entries leave: give it back once it is mostly empty,
        // so memory follows the packets retained, not the most ever held.
        if self.table.len() * 4 < self.table.capacity() {
            self.table.shrink_to_fit();
        }
    }

    /// Every route, for the audit.
    pub(crate) fn all(&self) -> Vec<Route> {
        self.table.iter().map(|r| r.value().clone()).collect()
    }

    /// The open packets with a deadline at or before `now` (a live packet may have met one of
    /// them already; telling it again does nothing).
    pub(crate) fn due(&self, now: Timestamp) -> Vec<PacketId> {
        let due = |r: &Route| r.open_meta().is_some_and(|m| m.deadline() <= now || m.sent.expires_at <= now);
        self.table.iter().filter(|r| due(r.value())).map(|r| *r.key()).collect()
    }

    /// The addresses of every live packet actor.
    pub(crate) fn live(&self) -> Vec<Addr<PacketActor>> {
        let live = |r: &Route| if let Route::Live(l) = r { Some(l.addr.clone()) } else { None };
        self.table.iter().filter_map(|r| live(r.value())).collect()
    }
}
