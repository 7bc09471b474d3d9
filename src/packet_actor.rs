//! The packet actor: one per live packet, serializing every grab, query and the expiry of
//! that packet.
//!
//! It owns a [`PacketState`]. For each grab it decides (no lock: the actor is the only one
//! touching its state), applies the claim record to its state, and appends it; once the
//! record is durable it passes the credit to the winner's wallet shard and replies — in that
//! order, which is what makes the credit visible to a `balance` issued after the grab
//! returned. It does not wait for the journal before taking the next grab: replies queue
//! behind the journal's commits.
//!
//! # Messages
//!
//! | message   | reply                                              | refused when full |
//! |-----------|----------------------------------------------------|-------------------|
//! | `Grab`    | `Grabbed` or `GrabError`, after the journal        | yes (`Busy`)      |
//! | `Query`   | the packet's view, after a journal barrier         | yes (`Busy`)      |
//! | `RunDue`  | after what its passed deadline did (opening, expiry) is durable | never (the timer's) |
//! | `Cancel`  | the refund or `CancelError`, after the journal     | yes (`Busy`)      |
//! | `AdminRecall` | the refund or `RecallError`, after the journal | yes (`Busy`)      |
//! | `Decide`  | an approval or rejection: the refund (zero when approved) or `ApprovalError` | yes (`Busy`) |
//! | `Inspect`, `Flush` | escrow and invariants / after a barrier   | never (audit, shutdown) |
//!
//! # Lifecycle
//!
//! The routes (`routes.rs`) start the actor when a dormant packet is first touched. When its
//! last share is taken, at expiry (refunding what is left, once), or when its sender cancels it
//! during its cooling-off (refunding the total), it hands its final view
//! to [`PacketCtx::on_close`] (the routes replace its entry with the closed view, which keeps
//! answering repeat grabs and queries), and stops.
//! Messages still in its mailbox then are dropped; their callers see the closed route and are
//! answered from it.

use std::sync::Arc;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::error::{ApprovalError, CancelError, GrabError, RecallError};
use crate::events::{Event, EventHub};
use crate::health::Fuse;
use crate::journal::{reply_after_barrier, Journal};
use crate::ledger::Credit;
use crate::money::{Amount, IdSet, PacketId, UserId};
use crate::org::Orgs;
use crate::outbox::Outbox;
use crate::packet::{Expiry, Opening, PacketState, PacketStatus, PacketView};
use crate::record::{Record, Remittance};
use crate::roster::{self, Rosters};
use crate::timer::{Due, Schedule, Timer};
use crate::wallet::Wallets;

/// A share won.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Grabbed {
    /// The packet.
    pub packet: PacketId,
    /// The winner.
    pub user: UserId,
    /// The share, already in the winner's wallet (or, with `remitted`, on its way there).
    pub amount: Amount,
    /// 1 for the first share taken.
    pub position: u32,
    /// Shares left after this one.
    pub shares_left: u32,
    /// Escrow left after this one.
    pub remaining: Amount,
    /// When the winner's wallet is in another partition: the remittance carrying the share
    /// there. Await it in that partition ([`crate::Engine::await_remittance`]) before reading
    /// the winner's balance, to see the share.
    pub remitted: Option<Remittance>,
}

/// What every packet actor shares: the narrow set of engine parts it uses.
pub(crate) struct PacketCtx {
    pub clock: Arc<dyn Clock>,
    pub journal: Arc<dyn Journal>,
    pub events: Arc<EventHub>,
    pub wallets: Arc<Wallets>,
    pub rosters: Arc<Rosters>,
    /// Orgs, for the checks of an admin recall.
    pub orgs: Arc<Orgs>,
    /// Where shares won by members whose wallets are in another partition leave.
    pub outbox: Arc<Outbox>,
    /// Where a deadline goes back when the clock stepped back under it.
    pub timer: Addr<Timer>,
    /// Blown if a handler panics.
    pub fuse: Arc<Fuse>,
    pub mailbox_capacity: usize,
    /// Told as the packet closes: its open slot is free, then its final view.
    pub on_close: Box<dyn Fn(Closing) + Send + Sync>,
}

impl PacketCtx {
    /// Appends `record`, which credits `credit`, through the outbox (see
    /// `Outbox::append_crediting`): the wallet here is credited once it is durable, before
    /// `then`; a wallet elsewhere gets a remittance, which `then` hears of. `reserved`: a
    /// share, whose room in the outbox the grab took; a refund took none.
    fn append_crediting(
        &self,
        record: (Record, bool),
        credit: Credit,
        then: impl FnOnce(Option<Remittance>) + Send + 'static,
    ) {
        let wallets = Arc::clone(&self.wallets);
        let land = move |credit| wallets.credit(credit);
        self.outbox.append_crediting(&*self.journal, record, Some(credit), land, then);
    }
}

/// What a packet tells the routes as it closes.
pub(crate) enum Closing {
    /// It no longer counts as open.
    Slot,
    /// Its final view replaces its route.
    View(Box<PacketView>),
}

/// A grab request.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Grab {
    pub user: UserId,
    pub reply: oneshot::Sender<Result<Grabbed, GrabError>>,
}

/// A read of the packet's view.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Query(pub oneshot::Sender<PacketView>);

/// Act on passed deadlines now (from the timer, or `Engine::run_due`): open at the end of the
/// cooling-off, expire at expiry. The reply comes once what it did is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RunDue(pub Option<oneshot::Sender<()>>);

/// The sender cancels the packet during its cooling-off.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Cancel {
    pub by: UserId,
    pub reply: oneshot::Sender<Result<Amount, CancelError>>,
}

/// An org admin takes back the packet's unclaimed remainder.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AdminRecall {
    pub by: UserId,
    pub reason: String,
    pub reply: oneshot::Sender<Result<Amount, RecallError>>,
}

/// The approver approves (`reject: None`) or rejects the packet.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Decide {
    pub by: UserId,
    pub reject: Option<String>,
    pub reply: oneshot::Sender<Result<Amount, ApprovalError>>,
}

/// Status, money held and the invariant check, for the audit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Inspect(pub oneshot::Sender<(PacketStatus, Amount, Result<(), String>)>);

/// Stops the actor of a packet that closed (sent to itself once its route holds the closed
/// view).
#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for PacketActor {
    type Result = ();

    fn handle(&mut self, _: Stop, actx: &mut Context<Self>) {
        actx.stop();
    }
}

/// Answers once everything the packet did before is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush(pub oneshot::Sender<()>);

pub(crate) struct PacketActor {
    ctx: Arc<PacketCtx>,
    state: PacketState,
    /// The group's roster as of a roster epoch; re-read only when the epoch moves.
    roster: (u64, Option<Arc<IdSet<UserId>>>),
}

impl PacketActor {
    /// Starts the actor of `state` on `arbiter` and returns its address at once. The mailbox
    /// is created here with its real capacity, so grabs can be queued (and bounded) before
    /// the actor's first turn. Callable from any thread.
    pub(crate) fn spawn(ctx: Arc<PacketCtx>, arbiter: &ArbiterHandle, state: PacketState) -> Addr<PacketActor> {
        let (tx, rx) = actix::dev::channel::channel(ctx.mailbox_capacity);
        // If the arbiter has stopped (shutdown), the receiver is dropped with the closure and
        // every send to the address fails as closed.
        arbiter.spawn_fn(move || {
            let roster = (u64::MAX, None); // no epoch yet: read on the first grab
            Context::with_receiver(rx).run(PacketActor { ctx, state, roster });
        });
        Addr::new(tx)
    }

    /// Whether `user` may grab, by the group's current roster (cached until it changes).
    fn is_eligible(&mut self, user: UserId) -> bool {
        let spec = &self.state.sent().spec;
        let epoch = self.ctx.rosters.epoch();
        if epoch != self.roster.0 && !matches!(spec.split, crate::Split::Exclusive { .. }) {
            self.roster = (epoch, self.ctx.rosters.get(spec.group));
        }
        roster::eligible(&spec.split, self.roster.1.as_deref(), user)
    }

    /// Opens the packet if its cooling-off has ended: recorded before anything else that
    /// follows, so every later record (a claim) is durable only after the opening is.
    fn open_if_due(&mut self, now: crate::clock::Timestamp) {
        let Opening::Open(record) = self.state.decide_open(now) else { return };
        self.state.apply(&record).expect("decided against this state");
        let view = self.state.view();
        let ctx = Arc::clone(&self.ctx);
        self.ctx.journal.append(
            record,
            Box::new(move || {
                ctx.events.publish(|| Event::opened(&view));
            }),
        );
        // Its expiry is its next deadline now (the timer let the opening's go when it fired).
        let at = self.state.sent().expires_at;
        self.ctx.timer.do_send(Schedule { at, due: Due::Packet(self.state.id()) });
    }

    /// Closes the packet: its slot is free, its final view replaces its route, and the actor
    /// stops. Messages still queued are answered from the closed route.
    fn close(&mut self, actx: &mut Context<Self>, free_slot: bool) {
        if free_slot {
            (self.ctx.on_close)(Closing::Slot);
        }
        (self.ctx.on_close)(Closing::View(Box::new(self.state.view())));
        actx.stop();
    }

    /// Acts on passed deadlines: opens the packet at the end of its cooling-off, and expires
    /// it if it is due (refunding what is left, once), closing it.
    fn expire(&mut self, actx: &mut Context<Self>, reply: Option<oneshot::Sender<()>>) {
        let now = self.ctx.clock.now();
        self.open_if_due(now);
        if let Some(rejected) = self.state.decide_approval_deadline(now) {
            // Nobody approved it in time: the whole total goes back, once, and it closes.
            self.record_rejection(rejected, None, actx);
            return self.ctx.journal.barrier(Box::new(move || {
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }));
        }
        let expiry = self.state.decide_expiry(now);
        let answer = move || {
            if let Some(reply) = reply {
                let _ = reply.send(());
            }
        };
        if let Expiry::Refund(refund) = expiry {
            let (packet, spec) = (self.state.id(), &self.state.sent().spec);
            let (sender, group) = (spec.sender, spec.group);
            let record = Record::Expired { packet, refund, at: now };
            let credit = self.state.apply(&record).expect("decided against this state").expect("a refund credits");
            let ctx = Arc::clone(&self.ctx);
            // The credit leaves for the wallet before anyone hears of the refund.
            self.ctx.append_crediting((record, false), credit, move |_| {
                ctx.events.publish(|| Event::Expired { packet, group, sender, refunded: refund });
                answer();
            });
        } else {
            self.ctx.journal.barrier(Box::new(answer));
        }
        if expiry == Expiry::NotDue {
            // The timer let the deadline go when it fired, but the clock has stepped back since
            // (or this was an early request): the deadline goes back to the timer, which holds
            // every deadline until its action is recorded.
            if let Some(at) = self.state.next_deadline() {
                self.ctx.timer.do_send(Schedule { at, due: Due::Packet(self.state.id()) });
            }
        }
        if matches!(expiry, Expiry::Refund(_) | Expiry::NothingLeft) {
            // A sold-out packet gave its slot back when it sold out (it is live only until its
            // closed view is in place).
            self.close(actx, expiry != Expiry::NothingLeft);
        }
    }

    /// Cancels the packet for its sender if it is still cooling off: the whole total goes
    /// back, once; then the packet closes.
    fn cancel(&mut self, m: Cancel, actx: &mut Context<Self>) {
        let now = self.ctx.clock.now();
        // A cancel at or after the end of the cooling-off meets the packet opened.
        self.open_if_due(now);
        let record = match self.state.decide_cancel(m.by, now) {
            Ok(record) => record,
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        let (packet, group) = (self.state.id(), self.state.sent().spec.group);
        let event = move |sender, refunded| Event::PacketCancelled { packet, group, sender, refunded };
        self.refund_and_close(record, event, Some(m.reply), actx);
    }

    /// Applies a decided record that gives the packet's escrow back to its sender (a
    /// cancellation, an admin recall, a rejection) and appends it; once it is durable, the
    /// sender is credited, `event` of the sender and the refund is published and `reply`
    /// hears the refund. The packet closes at once.
    fn refund_and_close<E: std::marker::Send + 'static>(
        &mut self,
        record: Record,
        event: impl FnOnce(UserId, Amount) -> Event + std::marker::Send + 'static,
        reply: Option<oneshot::Sender<Result<Amount, E>>>,
        actx: &mut Context<Self>,
    ) {
        let credit = self.state.apply(&record).expect("decided against this state").expect("a refund credits");
        let ctx = Arc::clone(&self.ctx);
        // The credit leaves for the wallet before anyone hears of the refund.
        self.ctx.append_crediting((record, false), credit, move |_| {
            ctx.events.publish(|| event(credit.user, credit.amount));
            if let Some(reply) = reply {
                let _ = reply.send(Ok(credit.amount));
            }
        });
        self.close(actx, true);
    }

    /// Appends a decided claim (already applied) and, once durable, credits, publishes (the
    /// grab, and for the last share the sell-out) and replies: the caller hears of the grab
    /// only after every event it caused is published.
    fn record_claim(
        &self,
        record: Record,
        grabbed: Grabbed,
        reply: oneshot::Sender<Result<Grabbed, GrabError>>,
        me: Addr<PacketActor>,
    ) {
        let ctx = Arc::clone(&self.ctx);
        let group = self.state.sent().spec.group;
        let sold_out = self.state.best_luck().filter(|_| self.state.status() == PacketStatus::SoldOut);
        // The final view, for the route once the last claim is durable.
        let closed = sold_out.map(|_| Box::new(self.state.view()));
        if sold_out.is_some() {
            // Its slot is free before anyone hears of the last grab (an in-memory journal
            // answers inside `append`).
            (self.ctx.on_close)(Closing::Slot);
        }
        // One record per grab, also for the last share: a packet sells out by its last claim
        // (replay derives it), so the grab's answer never depends on a second record that a
        // failure could cut off after the first was made durable.
        let credit = Credit { user: grabbed.user, amount: grabbed.amount };
        // Credit before reply: the wallet's mailbox is FIFO, so a balance read sent after the
        // reply is handled after the credit. A wallet in another partition gets the share as a
        // remittance, which the reply names.
        self.ctx.append_crediting((record, true), credit, move |remitted: Option<Remittance>| {
            let grabbed = Grabbed { remitted, ..grabbed };
            ctx.events.publish(|| Event::Grabbed {
                packet: grabbed.packet,
                group,
                user: grabbed.user,
                amount: grabbed.amount,
                position: grabbed.position,
                shares_left: grabbed.shares_left,
            });
            if let Some(best) = sold_out {
                let packet = grabbed.packet;
                ctx.events.publish(|| Event::SoldOut { packet, group, best_luck: best.user, best_amount: best.amount });
            }
            if let Some(view) = closed {
                // Nothing is left to grab or refund: the closed view replaces the route once
                // the last claim is durable (so a retirement can only follow it), before the
                // last grabber hears back; then the actor stops, after answering what was
                // queued behind the last grab.
                (ctx.on_close)(Closing::View(view));
                me.do_send(Stop);
            }
            let _ = reply.send(Ok(grabbed));
        });
    }
}

impl Actor for PacketActor {
    type Context = Context<Self>;
}

impl Handler<Grab> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Grab, actx: &mut Context<Self>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.fuse.guard("packet", || self.grab(m, actx));
    }
}

impl PacketActor {
    fn grab(&mut self, m: Grab, actx: &mut Context<Self>) {
        let now = self.ctx.clock.now();
        // A grab at or after the end of the cooling-off meets the packet opened.
        self.open_if_due(now);
        if self.state.is_due(now) || self.state.decide_approval_deadline(now).is_some() {
            // The timer has not fired yet, but the deadline has passed: expire first, so a
            // grab can never win money that is due back to the sender.
            self.expire(actx, None);
        }
        let eligible = self.is_eligible(m.user);
        let record = match self.state.decide_grab(m.user, eligible, now) {
            Ok(record) => record,
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        if !self.ctx.outbox.reserve(m.user) {
            // Too much waits for the grabber's partition: the relay is behind. Nothing was
            // applied; the grab may be tried again.
            let _ = m.reply.send(Err(GrabError::Busy));
            return;
        }
        let credit = self.state.apply(&record).expect("decided against this state").expect("a claim credits");
        let grabbed = Grabbed {
            packet: self.state.id(),
            user: credit.user,
            amount: credit.amount,
            position: self.state.claims().len() as u32,
            shares_left: self.state.shares_left(),
            remaining: self.state.escrow(),
            remitted: None,
        };
        self.record_claim(record, grabbed, m.reply, actx.address());
    }
}

impl Handler<Query> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Query, _: &mut Context<Self>) {
        reply_after_barrier(&*self.ctx.journal, m.0, self.state.view());
    }
}

impl Handler<RunDue> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: RunDue, actx: &mut Context<Self>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.fuse.guard("packet", || self.expire(actx, m.0));
    }
}

impl Handler<Cancel> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Cancel, actx: &mut Context<Self>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.fuse.guard("packet", || self.cancel(m, actx));
    }
}

impl Handler<AdminRecall> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: AdminRecall, actx: &mut Context<Self>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.fuse.guard("packet", || self.admin_recall(m, actx));
    }
}

impl PacketActor {
    /// Takes back what is left in escrow for an admin of the packet's org, once: checked here,
    /// in the packet's own actor, so it serializes with the grabs (a grab either won its share
    /// before, and keeps it, or meets the packet recalled). Then the packet closes.
    fn admin_recall(&mut self, m: AdminRecall, actx: &mut Context<Self>) {
        let now = self.ctx.clock.now();
        // A due expiry refunds first: a recall never takes what expiry returns anyway.
        self.open_if_due(now);
        if self.state.is_due(now) {
            self.expire(actx, None);
            return reply_after_barrier(&*self.ctx.journal, m.reply, Err(RecallError::AlreadyClosed));
        }
        let (group, sender) = (self.state.sent().spec.group, self.state.sent().spec.sender);
        let decided = self
            .ctx
            .orgs
            .check_recall(group, sender, m.by)
            .and_then(|org| self.state.decide_recall(org, m.by, &m.reason, now));
        let record = match decided {
            Ok(record) => record,
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        let (packet, by, reason) = (self.state.id(), m.by, m.reason);
        let event = move |sender, refunded| Event::PacketRecalled { packet, group, sender, by, refunded, reason };
        self.refund_and_close(record, event, Some(m.reply), actx);
    }
}

impl Handler<Decide> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Decide, actx: &mut Context<Self>) {
        let ctx = Arc::clone(&self.ctx);
        ctx.fuse.guard("packet", || self.decide(m, actx));
    }
}

impl PacketActor {
    /// Approves or rejects the packet for its approver (rule 23), after a passed deadline has
    /// acted: an approval opens it (the group hears `PacketOpened`), a rejection refunds the
    /// total and closes it.
    fn decide(&mut self, m: Decide, actx: &mut Context<Self>) {
        let now = self.ctx.clock.now();
        if self.state.decide_approval_deadline(now).is_some() {
            self.expire(actx, None);
        }
        let orgs = Arc::clone(&self.ctx.orgs);
        let decided = self.state.decide_approval(m.by, m.reject.as_deref(), now, |org, user| orgs.is_admin(org, user));
        let record = match decided {
            Ok(record) => record,
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        if let Record::Rejected { .. } = record {
            return self.record_rejection(record, Some(m.reply), actx);
        }
        self.state.apply(&record).expect("decided against this state");
        let view = self.state.view();
        let (ctx, reply, by) = (Arc::clone(&self.ctx), m.reply, m.by);
        self.ctx.journal.append(
            record,
            Box::new(move || {
                let subject = crate::record::ApprovalId::Packet(view.id);
                ctx.events.publish(|| Event::Approved { subject, sender: view.sender, by });
                ctx.events.publish(|| Event::opened(&view));
                let _ = reply.send(Ok(Amount::ZERO));
            }),
        );
        let at = self.state.view().expires_at;
        self.ctx.timer.do_send(Schedule { at, due: Due::Packet(self.state.id()) });
    }

    /// Applies and appends a decided rejection: the total back to the sender, once, then the
    /// packet closes.
    fn record_rejection(
        &mut self,
        record: Record,
        reply: Option<oneshot::Sender<Result<Amount, ApprovalError>>>,
        actx: &mut Context<Self>,
    ) {
        let Record::Rejected { subject, by, reason, .. } = record.clone() else { unreachable!("a rejection") };
        let event = move |sender, refunded| Event::Rejected { subject, sender, by, reason, refunded };
        self.refund_and_close(record, event, reply, actx);
    }
}

impl Handler<Inspect> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Inspect, _: &mut Context<Self>) {
        let _ = m.0.send((self.state.status(), self.state.escrow(), self.state.check()));
    }
}

impl Handler<Flush> for PacketActor {
    type Result = ();

    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        reply_after_barrier(&*self.ctx.journal, m.0, ());
    }
}
