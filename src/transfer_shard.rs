//! Transfer shards: the actors that own transfers. Transfers are spread over shards by hashing
//! their id; a shard serializes every request and deadline of its transfers, so a transfer is
//! never touched by two threads and no lock is shared with other transfers or with packets.
//! [`Transfers`] is the handle that routes an id to its shard.
//!
//! # Messages
//!
//! | message    | from            | reply                                          | refused when full |
//! |------------|-----------------|------------------------------------------------|-------------------|
//! | `Send`     | engine handle   | the transfer's view or `TransferError`, once its debit is durable | yes (`Busy`) |
//! | `Act`      | engine handle   | recall, accept or decline: the view or `TransferError`, after the journal | yes (`Busy`) |
//! | `Get`      | engine handle   | the view, after a barrier                      | yes (`Busy`)      |
//! | `Opened`, `Abandon` | the sender's wallet shard, via the send's settle callback | none | never: the debit's outcome must land |
//! | `Arrived`  | a remittance from the sender's partition, once durable | none | never: its id and pending place are reserved |
//! | `ArrivalOf` | engine handle (`transfer_arrival`) | the view of the transfer a remittance carried here, or why it is not held | yes (`Busy`) |
//! | `RunDue`   | timer, `Engine::run_due` | after what the passed deadlines did is durable | never (the timer's; one per call) |
//! | `Inspect`, `SettledBefore`, `Retire`, `Flush` | audit, retirement, shutdown | sums / ids / none / after a barrier | never |
//!
//! A send goes through three hands: this shard reserves the id (a retry with the same fields
//! gets the transfer's view, other fields `IdConflict`), the sender's wallet shard decides the
//! debit (funds, daily caps, cooling-off) and records it, and the settle callback tells this
//! shard the transfer exists (`Opened`). The shard publishes its events and answers the caller
//! only then — so whatever the caller or the receiver does on hearing of it meets the
//! transfer, and every later event of the transfer follows its `TransferSent`.
//!
//! In a partition of a cluster, a transfer sent by a member whose wallet is in another partition
//! is debited there and arrives here as a remittance, decided in the order of the remittances
//! (`Outbox::receive`), apart from the shards: [`TransferCtx::reserve_arrival`] takes its id in
//! the set every shard shares (`TransferCtx::ids`) and a pending place, and `Arrived` holds it
//! once that decision is durable. A local send takes its id in the same set, so a local send and
//! an arrival of one id are never both held.
//!
//! Deadlines (arrival, end of acceptance) live in the timer. Every request first applies the
//! deadlines that have passed by the engine's clock, so a request racing a deadline meets the
//! deadline's outcome and hears it (`TooLate`), and a deadline that passed while the engine
//! was down acts when the timer fires right after start.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::clock::{Clock, Timestamp};
use crate::error::ApprovalError;
use crate::error::TransferError;
use crate::events::{Event, EventHub};
use crate::health::Fuse;
use crate::journal::{reply_after_barrier, Journal};
use crate::ledger::Credit;
use crate::money::Amount;
use crate::money::{IdMap, IdSet, TransferId};
use crate::outbox::Outbox;
use crate::placement::bucket;
use crate::record::{ApprovalId, NewTransfer, Record, Remittance, ReturnReason, TransferSent, TransferStatus};
use crate::runtime::{self, Refused};
use crate::timer::{Due, Schedule, Timer};
use crate::transfer::{Action, TransferState, TransferView};
use crate::wallet::{Debit, Wallets};

type Reply = oneshot::Sender<Result<TransferView, TransferError>>;

/// What every transfer shard shares.
pub(crate) struct TransferCtx {
    pub clock: Arc<dyn Clock>,
    pub journal: Arc<dyn Journal>,
    pub events: Arc<EventHub>,
    pub wallets: Arc<Wallets>,
    pub timer: Addr<Timer>,
    pub fuse: Arc<Fuse>,
    /// Transfers sending or pending, across shards; bounded by `pending_max`.
    pub pending: AtomicUsize,
    pub pending_max: usize,
    /// Every transfer id the shards hold or are opening, and those arriving from other
    /// partitions: an arrival is decided in the order of its remittances, apart from the
    /// shards, and must see every id they hold.
    pub ids: parking_lot::Mutex<IdSet<TransferId>>,
    /// Orgs, for who may approve an org's transfer.
    pub orgs: Arc<crate::org::Orgs>,
    /// The bounds a new transfer is checked against, and its windows.
    pub limits: crate::limits::Limits,
    /// Where money for a wallet in another partition leaves.
    pub outbox: Arc<Outbox>,
}

impl TransferCtx {
    /// Has the sender's wallet shard debit a new transfer (checked against the limits), now,
    /// and `settle` it: held here, or (`remit`) remitted to the partition of its id. A full
    /// mailbox settles it with the refusal.
    pub(crate) fn debit(
        &self,
        spec: NewTransfer,
        org: Option<crate::ledger::OrgRules>,
        remit: Option<Arc<Outbox>>,
        settle: crate::wallet::TransferSettle,
    ) {
        let (now, from) = (self.clock.now(), spec.from);
        let (day, accept_secs) = (now.day(self.limits.day_utc_offset_secs), self.limits.transfer_accept_secs);
        let debit = Debit { spec, now, day, accept_secs, org, remit, settle };
        if let Err((refused, debit)) = self.wallets.try_tell(from, debit) {
            // The message came back with its settle inside it: the refusal goes through it.
            (debit.settle)(Err(TransferError::from(refused)));
        }
    }

    /// Takes one pending place, unless `pending_max` are taken.
    fn take_pending(&self) -> bool {
        let max = self.pending_max;
        self.pending.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Takes the id and a pending place for a transfer arriving from its sender's partition,
    /// or says why it cannot be held here (its amount then goes back).
    pub(crate) fn reserve_arrival(&self, id: TransferId) -> Result<(), ReturnReason> {
        if !self.ids.lock().insert(id) {
            return Err(ReturnReason::IdTaken);
        }
        if !self.take_pending() {
            self.ids.lock().remove(&id);
            return Err(ReturnReason::TooManyPendingTransfers);
        }
        Ok(())
    }

    /// Appends `record`, which may credit `credit`, through the outbox (see
    /// `Outbox::append_crediting`): a wallet here is credited once it is durable, before
    /// `then`; a wallet elsewhere gets a remittance, which `then` hears of.
    fn append_crediting(
        &self,
        record: (Record, bool),
        credit: Option<Credit>,
        then: impl FnOnce(Option<Remittance>) + std::marker::Send + 'static,
    ) {
        let wallets = Arc::clone(&self.wallets);
        let land = move |credit| wallets.credit(credit);
        self.outbox.append_crediting(&*self.journal, record, credit, land, then);
    }
}

/// A transfer to send.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Send {
    pub spec: NewTransfer,
    /// The rules of the org it names, or why it may not name it (used for a new transfer).
    pub org: Result<Option<crate::ledger::OrgRules>, TransferError>,
    pub reply: Reply,
}

/// A recall, accept or decline.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Act {
    pub id: TransferId,
    pub action: Action,
    pub by: crate::money::UserId,
    pub reply: Reply,
}

/// The sender's guardian approves (`reject: None`) or rejects a transfer.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Decide {
    pub id: TransferId,
    pub by: crate::money::UserId,
    pub reject: Option<String>,
    pub reply: oneshot::Sender<Result<Amount, ApprovalError>>,
}

/// A read of a transfer.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Get {
    pub id: TransferId,
    pub reply: Reply,
}

/// The debit is durable: the transfer exists; its events go out, then the sender hears. Never
/// refused.
#[derive(Message)]
#[rtype(result = "()")]
struct Opened(TransferSent, Reply);

/// A transfer arrived from its sender's partition, durably (its id and pending place were
/// reserved): it is held here from now on. Never refused.
#[derive(Message)]
#[rtype(result = "()")]
struct Arrived(TransferSent);

/// What became of a transfer remitted here (`sent`), once its remittance is applied: its view,
/// or why it was not taken in.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ArrivalOf {
    pub sent: TransferSent,
    pub reply: Reply,
}

/// The debit was refused: the id is free again. Never refused.
#[derive(Message)]
#[rtype(result = "()")]
struct Abandon(TransferId);

/// Act on passed deadlines: of one transfer (the timer's), or of every transfer of the shard.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RunDue {
    pub id: Option<TransferId>,
    pub reply: Option<oneshot::Sender<()>>,
}

/// What a shard holds, for the audit.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Held {
    /// Money of transfers not yet settled, in fen.
    pub pending_fen: u128,
    pub pending: usize,
    pub settled: usize,
}

/// The shard's sums, for the audit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Inspect(pub oneshot::Sender<Held>);

/// Up to `max` transfers settled before `cutoff`, due to be retired.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SettledBefore {
    pub cutoff: Timestamp,
    pub max: usize,
    pub reply: oneshot::Sender<Vec<TransferId>>,
}

/// A retirement record: the shard drops the settled transfers it lists.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Retire(pub Arc<Record>);

/// Answers once everything the shard did before is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush(pub oneshot::Sender<()>);

enum Slot {
    /// Its debit is being decided.
    Opening,
    Known(Box<TransferState>),
}

/// The actor owning one shard of transfers.
pub(crate) struct TransferShard {
    ctx: Arc<TransferCtx>,
    transfers: IdMap<TransferId, Slot>,
}

impl TransferShard {
    /// A shard owning `transfers` (loaded from the journal; the engine schedules their
    /// deadlines once the timer knows where to send them).
    pub(crate) fn new(ctx: Arc<TransferCtx>, transfers: Vec<TransferState>) -> TransferShard {
        let transfers = transfers.into_iter().map(|t| (t.id(), Slot::Known(Box::new(t)))).collect();
        TransferShard { ctx, transfers }
    }

    fn known(&self, id: TransferId) -> Result<&TransferState, TransferError> {
        match self.transfers.get(&id) {
            Some(Slot::Known(t)) => Ok(t),
            _ => Err(TransferError::UnknownTransfer),
        }
    }

    fn send(&mut self, m: Send, me: Addr<TransferShard>) {
        let (spec, reply, org) = (m.spec, m.reply, m.org);
        let id = spec.id;
        match self.transfers.get(&id) {
            Some(Slot::Opening) => {
                let _ = reply.send(Err(TransferError::Busy));
                return;
            }
            Some(Slot::Known(t)) if *t.spec() == spec => {
                return reply_after_barrier(&*self.ctx.journal, reply, Ok(t.view(self.ctx.clock.now())));
            }
            Some(Slot::Known(_)) => {
                let _ = reply.send(Err(TransferError::IdConflict { transfer: id }));
                return;
            }
            None => {}
        }
        // A new transfer: checked against the limits only now, so that a retry is answered from
        // the transfer it retries even if the limits changed since (a restart).
        let org = match crate::transfer::validate(&spec, &self.ctx.limits).and(org) {
            Ok(org) => org,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let max = self.ctx.pending_max;
        if !self.ctx.take_pending() {
            let _ = reply.send(Err(TransferError::TooManyPending { max }));
            return;
        }
        // An id unknown to this shard may be arriving from another partition: that transfer
        // is here in a moment.
        if !self.ctx.ids.lock().insert(id) {
            self.ctx.pending.fetch_sub(1, Ordering::AcqRel);
            let _ = reply.send(Err(TransferError::Busy));
            return;
        }
        // The id is held from here until exactly one `Opened` or `Abandon` of this attempt
        // comes back, whatever happens to the debit: another send of the same id meanwhile is
        // answered `Busy`, and only this attempt's answer frees the id (and its pending place).
        self.transfers.insert(id, Slot::Opening);
        self.ctx.debit(spec, org, None, settle_send(me, id, reply));
    }

    /// Records and applies what the passed deadlines of `id` do at `now` (arrival, return).
    /// Its next deadline goes to the timer when the timer let the last one go (`fired`) or a
    /// deadline moved it on; otherwise the timer holds it already (and a flood of requests
    /// sends the timer nothing).
    fn run_due(&mut self, id: TransferId, now: Timestamp, fired: bool) {
        let Some(Slot::Known(t)) = self.transfers.get_mut(&id) else { return };
        let mut moved = false;
        while let Some(record) = t.decide_due(now) {
            moved = true;
            let credit = t.apply(&record).expect("decided against this state");
            let view = t.view(now);
            if credit.is_some() {
                self.ctx.pending.fetch_sub(1, Ordering::AcqRel);
            }
            let ctx = Arc::clone(&self.ctx);
            self.ctx.append_crediting((record, false), credit, move |_| ctx.events.publish(|| due_event(&view)));
        }
        // The timer holds the next deadline (or this one again, if the clock stepped back
        // under it) until its action is recorded.
        if let Some(at) = t.next_deadline().filter(|_| fired || moved) {
            self.ctx.timer.do_send(Schedule { at, due: Due::Transfer(id) });
        }
    }

    fn act(&mut self, m: Act) {
        let now = self.ctx.clock.now();
        self.run_due(m.id, now, false);
        let decided = self.known(m.id).and_then(|t| t.decide(m.action, m.by, now));
        // Only an accepted transfer credits its receiver, who may be in another partition.
        let receiver = match (m.action, &decided) {
            (Action::Accept, Ok(_)) => self.known(m.id).ok().map(|t| t.spec().to),
            _ => None,
        };
        if receiver.is_some_and(|to| !self.ctx.outbox.reserve(to)) {
            // Too much waits for the receiver's partition: the relay is behind.
            let _ = m.reply.send(Err(TransferError::Busy));
            return;
        }
        let record = match decided {
            Ok(record) => record,
            // The state may hold records not yet durable (a deadline just applied): the
            // refusal waits for them, as an answer from them would.
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        let Some(Slot::Known(t)) = self.transfers.get_mut(&m.id) else { unreachable!("decided on a known transfer") };
        let credit = t.apply(&record).expect("decided against this state").expect("a settlement credits");
        self.ctx.pending.fetch_sub(1, Ordering::AcqRel);
        let view = t.view(now);
        let (ctx, reply) = (Arc::clone(&self.ctx), m.reply);
        // Credit before reply: a balance read after the answer sees the money (a receiver
        // whose wallet is in another partition awaits the remittance the answer names).
        // Room was taken for an accept's credit of a receiver (`receiver`).
        self.ctx.append_crediting((record, receiver.is_some()), Some(credit), move |remitted| {
            ctx.events.publish(|| due_event(&view));
            let _ = reply.send(Ok(TransferView { remitted, ..view }));
        });
    }
}

/// The event of a transfer's move, from its view just after it.
fn due_event(view: &TransferView) -> Event {
    let (transfer, from, to, amount) = (view.id, view.from, view.to, view.amount);
    match view.status {
        TransferStatus::AwaitingAcceptance { until } => {
            Event::TransferArrived { transfer, from, to, amount, accept_until: until }
        }
        // Its approval never came: rejected at the deadline.
        TransferStatus::Rejected => Event::Rejected {
            subject: ApprovalId::Transfer(transfer),
            sender: from,
            by: None,
            reason: String::new(),
            refunded: amount,
        },
        status => {
            let outcome = match status {
                TransferStatus::Accepted => crate::record::TransferOutcome::Accepted,
                TransferStatus::Declined => crate::record::TransferOutcome::Declined,
                TransferStatus::Recalled => crate::record::TransferOutcome::Recalled,
                TransferStatus::Returned => crate::record::TransferOutcome::Returned,
                TransferStatus::Rejected => crate::record::TransferOutcome::Rejected,
                other => unreachable!("a move ends awaiting or settled, not {other:?}"),
            };
            Event::TransferSettled { transfer, from, to, amount, outcome }
        }
    }
}

/// What happens once the sender's shard decided a transfer: with the durable record, the shard
/// learns the transfer exists (and answers); with a refusal, the id is given back and the
/// caller hears why. Runs in the journal's completion, so it completes even if the caller
/// stopped waiting.
fn settle_send(me: Addr<TransferShard>, id: TransferId, reply: Reply) -> crate::wallet::TransferSettle {
    Box::new(move |result| match result {
        Ok(sent) => me.do_send(Opened(sent, reply)),
        Err(e) => {
            // Queued before the answer: a retry the caller sends on hearing it finds the id free.
            me.do_send(Abandon(id));
            let _ = reply.send(Err(e));
        }
    })
}

impl Actor for TransferShard {
    type Context = Context<Self>;
}

impl Handler<Send> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Send, actx: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || self.send(m, actx.address()));
    }
}

impl Handler<Act> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Act, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || self.act(m));
    }
}

impl Handler<Decide> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Decide, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || self.decide(m));
    }
}

impl TransferShard {
    /// Approves or rejects a transfer for the sender's guardian, after a passed deadline has
    /// acted: an approval sends it on its way (its delay and acceptance count from now), a
    /// rejection refunds the sender.
    fn decide(&mut self, m: Decide) {
        let now = self.ctx.clock.now();
        self.run_due(m.id, now, false);
        let orgs = Arc::clone(&self.ctx.orgs);
        let decided = match self.known(m.id) {
            Ok(t) => t.decide_approval(m.by, m.reject.as_deref(), now, |org, user| orgs.is_admin(org, user)),
            Err(_) => Err(ApprovalError::Unknown),
        };
        let record = match decided {
            Ok(record) => record,
            Err(e) => return reply_after_barrier(&*self.ctx.journal, m.reply, Err(e)),
        };
        let Some(Slot::Known(t)) = self.transfers.get_mut(&m.id) else { unreachable!("decided on a known transfer") };
        let credit = t.apply(&record).expect("decided against this state");
        if credit.is_some() {
            self.ctx.pending.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(at) = t.next_deadline() {
            self.ctx.timer.do_send(Schedule { at, due: Due::Transfer(m.id) });
        }
        let (view, ctx, reply, by) = (t.view(now), Arc::clone(&self.ctx), m.reply, m.by);
        self.ctx.append_crediting((record.clone(), false), credit, move |_| {
            let subject = ApprovalId::Transfer(view.id);
            match (credit, record) {
                (Some(credit), Record::Rejected { reason, .. }) => {
                    let (sender, refunded) = (view.from, credit.amount);
                    ctx.events.publish(|| Event::Rejected { subject, sender, by: Some(by), reason, refunded });
                    let _ = reply.send(Ok(refunded));
                }
                _ => {
                    ctx.events.publish(|| Event::Approved { subject, sender: view.from, by });
                    if matches!(view.status, TransferStatus::AwaitingAcceptance { .. }) {
                        ctx.events.publish(|| due_event(&view));
                    }
                    let _ = reply.send(Ok(Amount::ZERO));
                }
            }
        });
    }
}

impl Handler<Get> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Get, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || {
            let now = self.ctx.clock.now();
            // A deadline that has passed acts first, so the view never shows a transfer in
            // transit (or awaiting) after its time; the answer waits until that is durable.
            self.run_due(m.id, now, false);
            let view = self.known(m.id).map(|t| t.view(now));
            reply_after_barrier(&*self.ctx.journal, m.reply, view);
        });
    }
}

impl TransferShard {
    /// Holds a transfer whose send (or arrival) is durable, with its deadline, and publishes
    /// its events. Returns its view as sent.
    fn hold(&mut self, sent: TransferSent) -> TransferView {
        let sent_approval = sent.approval;
        let state = TransferState::open(sent);
        let view = state.view(state.sent().sent_at);
        if let Some(at) = state.next_deadline() {
            self.ctx.timer.do_send(Schedule { at, due: Due::Transfer(state.id()) });
        }
        self.transfers.insert(state.id(), Slot::Known(Box::new(state)));
        // The record is durable (this came from its completion) and the state is in place:
        // the events, then the answer.
        self.ctx.events.publish(|| Event::TransferSent {
            transfer: view.id,
            from: view.from,
            to: view.to,
            amount: view.amount,
            arrival: view.arrival,
            note: view.note.clone(),
            status: view.status,
        });
        if matches!(view.status, TransferStatus::AwaitingAcceptance { .. }) {
            // An instant transfer arrives with its send: the receiver hears at once.
            self.ctx.events.publish(|| due_event(&view));
        }
        if let (TransferStatus::AwaitingApproval { until }, Some(approval)) = (view.status, sent_approval) {
            // The guardian hears there is something to approve.
            self.ctx.events.publish(|| Event::AwaitingApproval {
                subject: ApprovalId::Transfer(view.id),
                sender: view.from,
                approver: approval.approver,
                amount: view.amount,
                until,
            });
        }
        view
    }
}

impl Handler<Opened> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Opened, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || {
            let Opened(sent, reply) = m;
            let view = self.hold(sent);
            let _ = reply.send(Ok(view));
        });
    }
}

impl Handler<Arrived> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Arrived, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || drop(self.hold(m.0)));
    }
}

impl Handler<ArrivalOf> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: ArrivalOf, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || {
            let now = self.ctx.clock.now();
            let id = m.sent.spec.id;
            self.run_due(id, now, false);
            let answer = match self.transfers.get(&id) {
                Some(Slot::Known(t)) if *t.sent() == m.sent => Ok(t.view(now)),
                // A transfer that went back for want of room leaves its id free.
                None => Err(TransferError::TooManyPending { max: self.ctx.pending_max }),
                Some(_) => Err(TransferError::IdConflict { transfer: id }),
            };
            reply_after_barrier(&*self.ctx.journal, m.reply, answer);
        });
    }
}

impl Handler<Abandon> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Abandon, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || {
            // The `Opening` is this attempt's: an id is opened by one attempt at a time, and
            // each attempt sends one `Opened` or one `Abandon`.
            let removed = self.transfers.remove(&m.0);
            assert!(matches!(removed, Some(Slot::Opening)), "an abandoned transfer was opening");
            self.ctx.ids.lock().remove(&m.0);
            let before = self.ctx.pending.fetch_sub(1, Ordering::AcqRel);
            assert!(before > 0, "the pending count covers every opening transfer");
        });
    }
}

impl Handler<RunDue> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: RunDue, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.ctx.fuse);
        fuse.guard("transfer shard", || {
            let now = self.ctx.clock.now();
            // One id: the timer's, which let its deadline go.
            let fired = m.id.is_some();
            let ids: Vec<TransferId> = match m.id {
                Some(id) => vec![id],
                None => self
                    .transfers
                    .iter()
                    .filter(|(_, slot)| matches!(slot, Slot::Known(t) if t.next_deadline().is_some_and(|at| at <= now)))
                    .map(|(&id, _)| id)
                    .collect(),
            };
            ids.into_iter().for_each(|id| self.run_due(id, now, fired));
            if let Some(reply) = m.reply {
                reply_after_barrier(&*self.ctx.journal, reply, ());
            }
        });
    }
}

impl Handler<Inspect> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Inspect, _: &mut Context<Self>) {
        let mut held = Held::default();
        for slot in self.transfers.values() {
            if let Slot::Known(t) = slot {
                if t.settled().is_some() {
                    held.settled += 1;
                } else {
                    held.pending += 1;
                    held.pending_fen += u128::from(t.pending().as_fen());
                }
            }
        }
        let _ = m.0.send(held);
    }
}

impl Handler<SettledBefore> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: SettledBefore, _: &mut Context<Self>) {
        let due = |slot: &Slot| matches!(slot, Slot::Known(t) if t.settled().is_some_and(|(_, at)| at < m.cutoff));
        let ids = self.transfers.iter().filter(|(_, s)| due(s)).map(|(&id, _)| id).take(m.max).collect();
        let _ = m.reply.send(ids);
    }
}

impl Handler<Retire> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Retire, _: &mut Context<Self>) {
        if let Record::Retired { transfers, .. } = &*m.0 {
            for id in transfers {
                if matches!(self.transfers.get(id), Some(Slot::Known(t)) if t.settled().is_some()) {
                    self.transfers.remove(id);
                    self.ctx.ids.lock().remove(id);
                }
            }
            if self.transfers.len() * 4 < self.transfers.capacity() {
                self.transfers.shrink_to_fit();
            }
        }
    }
}

impl Handler<Flush> for TransferShard {
    type Result = ();

    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        reply_after_barrier(&*self.ctx.journal, m.0, ());
    }
}

/// The handle to every transfer shard.
pub(crate) struct Transfers {
    /// The partition whose transfers these are: a request for another's is refused.
    partition: crate::partition::Partition,
    shards: Box<[Addr<TransferShard>]>,
}

impl Transfers {
    pub(crate) fn new(partition: crate::partition::Partition, shards: Box<[Addr<TransferShard>]>) -> Transfers {
        Transfers { partition, shards }
    }

    /// Which shard holds transfer `id`, of `shards`.
    pub(crate) fn place(id: TransferId, shards: usize) -> usize {
        bucket(id.0, shards)
    }

    fn shard(&self, id: TransferId) -> &Addr<TransferShard> {
        &self.shards[Transfers::place(id, self.shards.len())]
    }

    /// Sends `msg` to the shard of `id` unless its mailbox is full.
    pub(crate) fn tell<M>(&self, id: TransferId, msg: M) -> Result<(), Refused>
    where
        TransferShard: Handler<M>,
        M: Message<Result = ()> + std::marker::Send + 'static,
    {
        if !self.partition.holds_transfer(id) {
            return Err(Refused::Elsewhere(self.partition.of_transfer(id)));
        }
        runtime::tell(self.shard(id), msg)
    }

    /// Holds a transfer that arrived from its sender's partition, durably (its id and pending
    /// place reserved by [`TransferCtx::reserve_arrival`]). Never refused.
    pub(crate) fn arrived(&self, sent: TransferSent) {
        self.shard(sent.spec.id).do_send(Arrived(sent));
    }

    /// Tells the shard of `id` that one of its deadlines is due. Never refused: one per
    /// deadline, bounded by the pending transfers.
    pub(crate) fn due(&self, id: TransferId) {
        self.shard(id).do_send(RunDue { id: Some(id), reply: None });
    }

    /// Acts on every passed deadline of every shard; returns once what they did is durable.
    pub(crate) async fn run_due(&self) {
        runtime::ask_all(self.shards.iter(), |reply| RunDue { id: None, reply: Some(reply) }).await;
    }

    /// What every shard holds, or `None` if a shard has stopped.
    pub(crate) async fn held(&self) -> Option<Held> {
        let all = runtime::ask_all(self.shards.iter(), Inspect).await;
        all.into_iter().try_fold(Held::default(), |sum, h| {
            let h = h?;
            Some(Held {
                pending_fen: sum.pending_fen + h.pending_fen,
                pending: sum.pending + h.pending,
                settled: sum.settled + h.settled,
            })
        })
    }

    /// Up to `max` transfers settled before `cutoff`, across every shard.
    pub(crate) async fn settled_before(&self, cutoff: Timestamp, max: usize) -> Vec<TransferId> {
        let found = runtime::ask_all(self.shards.iter(), |reply| SettledBefore { cutoff, max, reply }).await;
        found.into_iter().flatten().flatten().take(max).collect()
    }

    /// Applies a retirement to every shard. Never refused.
    pub(crate) fn retire(&self, record: &Arc<Record>) {
        self.shards.iter().for_each(|shard| shard.do_send(Retire(Arc::clone(record))));
    }

    /// Waits until every shard has answered everything sent to it before.
    pub(crate) async fn flush(&self) {
        runtime::ask_all(self.shards.iter(), Flush).await;
    }
}
