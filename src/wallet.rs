//! Wallet shards: the actors that own users' balances. Users are spread over a fixed number of
//! shards by hashing their id; each shard owns a [`Ledger`] and serializes every change to its
//! users' balances, so no balance is ever touched by two threads. [`Wallets`] is the handle
//! that routes a user to their shard.
//!
//! # Messages
//!
//! | message   | from            | reply                                  | refused when full |
//! |-----------|-----------------|----------------------------------------|-------------------|
//! | `Move`    | engine handle   | a deposit's or withdrawal's new balance, after the record is durable | yes (`Busy`) |
//! | `Balance` | engine handle   | balance, after a journal barrier       | yes (`Busy`)      |
//! | `Escrow`  | engine handle   | the send record, or why not (funds, daily caps), to a settle callback | yes (`Busy`) |
//! | `Debit`   | transfer shards | the transfer record, or why not, to a settle callback | yes (`Busy`) |
//! | `SetCoolingOff` | engine handle | after the setting is durable            | yes (`Busy`)      |
//! | `GetUsage` | engine handle  | cooling-off setting and today's sends, after a barrier | yes (`Busy`) |
//! | `Credit`  | packet actors   | none                                   | never: a won share or refund must land |
//! | `GetTotals`, `Flush` | engine (audit, shutdown) | sums / after a barrier | never (one per shard per call) |
//!
//! Each request is decided by the ledger, recorded, and applied by the ledger (`ledger.rs`).
//! Sends (packets and transfers) are decided here because everything they depend on is the
//! sender's: the balance, what they sent today, their cooling-off.
//!
//! Read-your-writes: a packet actor sends a share's `Credit` before it replies to the grab,
//! and a shard's mailbox is first in, first out, so a `Balance` sent after the grab returned
//! is handled after the credit.

use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::clock::Timestamp;
use crate::error::{SendError, TransferError, WalletError};
use crate::events::{Event, EventHub};
use crate::health::Fuse;
use crate::journal::{reply_after_barrier, Journal};
use crate::ledger::{Credit as CreditMove, DailyCaps, Decision, Ledger, OrgRules, Outgoing, Totals, Usage};
use crate::money::{Amount, OpId, UserId};
use crate::outbox::Outbox;
use crate::partition::Partition;
use crate::placement::bucket;
use crate::record::{CoolingOff, NewTransfer, PacketSent, Record, TransferSent};
use crate::runtime::{self, Refused};
use crate::transfer;

/// The reply to a deposit or withdrawal.
type Reply = oneshot::Sender<Result<Amount, WalletError>>;

/// A deposit (with `balance_fen_max`) or a withdrawal (without).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Move {
    pub op: OpId,
    pub user: UserId,
    pub amount: Amount,
    /// `Some(balance_fen_max)` for a deposit, `None` for a withdrawal.
    pub deposit: Option<u64>,
    /// The engine's time: when the operation is applied.
    pub now: Timestamp,
    /// Told whether the operation id ends up applied (see [`OpOwners`]).
    pub owners: Arc<OpOwners>,
    pub reply: Reply,
}

/// Which user each operation id belongs to, across shards: an id reused for another user is
/// refused even though the two users live on different shards. An id is held from the moment
/// a request claims it; a request that ends refused gives it back (an error changes nothing,
/// ids included), one that ends applied keeps it.
#[derive(Debug, Default)]
pub(crate) struct OpOwners(DashMap<OpId, OpOwner>);

#[derive(Debug)]
struct OpOwner {
    user: UserId,
    /// Requests with this id not yet decided by their shard.
    in_flight: u32,
    applied: bool,
}

impl OpOwners {
    /// Holds `op` for `user`, or refuses it if another user holds it.
    pub(crate) fn claim(&self, op: OpId, user: UserId) -> Result<(), WalletError> {
        let mut owner = self.0.entry(op).or_insert(OpOwner { user, in_flight: 0, applied: false });
        if owner.user != user {
            return Err(WalletError::IdConflict { op });
        }
        owner.in_flight += 1;
        Ok(())
    }

    /// Forgets an applied id past its retention (unless a request holds it right now).
    pub(crate) fn forget(&self, op: OpId) {
        self.0.remove_if(&op, |_, owner| owner.in_flight == 0);
    }

    /// Records how a request that claimed `op` ended; an id that no request applied is given
    /// back once no request holds it.
    pub(crate) fn settle(&self, op: OpId, applied: bool) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.0.entry(op) {
            let owner = e.get_mut();
            owner.in_flight -= 1;
            owner.applied |= applied;
            if owner.in_flight == 0 && !owner.applied {
                e.remove();
            }
        }
    }
}

/// A balance read.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Balance {
    pub user: UserId,
    pub reply: oneshot::Sender<Amount>,
}

/// What the shard does with a send once it is decided: with the durable send record, or with
/// the refusal. The shard knows nothing of routes; the engine's callback opens the packet.
pub(crate) type Settle = Box<dyn FnOnce(Result<PacketSent, SendError>) + Send>;

/// Debits a packet's total from its sender and, once that is durable, settles the send.
/// `sent` opens at once; the shard moves its opening (and expiry) if the sender's cooling-off
/// holds it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Escrow {
    pub sent: PacketSent,
    pub expiry_secs: u64,
    /// The rules of the org whose group the packet is sent in, if any.
    pub org: Option<OrgRules>,
    /// For a packet whose id places it in another partition: the outbox that numbers the
    /// remittance carrying it there (its room reserved).
    pub remit: Option<Arc<Outbox>>,
    pub settle: Settle,
}

/// What happens to a transfer once its sender's shard decided it.
pub(crate) type TransferSettle = Box<dyn FnOnce(Result<TransferSent, TransferError>) + Send>;

/// Debits a transfer from its sender and, once that is durable, settles it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Debit {
    pub spec: NewTransfer,
    pub now: Timestamp,
    pub day: u64,
    pub accept_secs: u64,
    /// The rules of the org it is sent under, if any.
    pub org: Option<OrgRules>,
    /// For a transfer whose id places it in another partition: the outbox that numbers the
    /// remittance carrying it there (its room reserved).
    pub remit: Option<Arc<Outbox>>,
    pub settle: TransferSettle,
}

/// Sets a user's cooling-off; the reply comes once it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetCoolingOff {
    pub user: UserId,
    pub setting: CoolingOff,
    pub now: Timestamp,
    pub reply: oneshot::Sender<()>,
}

/// Sets a user's guardian (when they have none), or removes it (by the guardian); the reply
/// comes once it is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetGuardian {
    pub user: UserId,
    pub guardian: Option<crate::record::Guardian>,
    /// For a removal: who asks (it must be the guardian).
    pub by: Option<UserId>,
    pub now: Timestamp,
    pub reply: oneshot::Sender<Result<(), crate::error::EngineError>>,
}

/// A user's cooling-off setting and what they sent on `day`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct GetUsage {
    pub user: UserId,
    pub day: u64,
    pub reply: oneshot::Sender<Usage>,
}

/// A won share or a refund, from a packet actor. Never refused, never answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Credit(pub CreditMove);

/// A send of this wallet's that went back from another partition, durably: its amount is
/// credited and no longer counts against the day's caps. Never refused, never answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Returned(pub Outgoing);

/// The ids of operations applied before `cutoff` (at most `max`), due to be retired.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct OpsBefore {
    pub cutoff: Timestamp,
    pub max: usize,
    pub reply: oneshot::Sender<Vec<OpId>>,
}

/// A retirement record to apply: the shard forgets the operation ids it lists. Never refused
/// (one per shard per sweep), never answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Retire(pub Arc<Record>);

/// The shard's sums, for the audit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct GetTotals(pub oneshot::Sender<Totals>);

/// Answers once everything the shard did before is durable (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush(pub oneshot::Sender<()>);

/// The actor owning one shard of wallets.
pub(crate) struct WalletShard {
    ledger: Ledger,
    caps: DailyCaps,
    /// How long a send waits for its approver.
    approval_secs: u64,
    journal: Arc<dyn Journal>,
    events: Arc<EventHub>,
    fuse: Arc<Fuse>,
}

impl WalletShard {
    pub(crate) fn new(
        ledger: Ledger,
        (caps, approval_secs): (DailyCaps, u64),
        journal: Arc<dyn Journal>,
        events: Arc<EventHub>,
        fuse: Arc<Fuse>,
    ) -> WalletShard {
        WalletShard { ledger, caps, approval_secs, journal, events, fuse }
    }

    /// Records and applies a decided deposit or withdrawal and replies once it is durable; a
    /// repeat is answered after a barrier, a refusal at once (nothing changed).
    fn settle(&mut self, decision: Result<Decision, WalletError>, reply: Reply) {
        match decision {
            Ok(Decision::Fresh(record)) => {
                let balance = self.ledger.apply(&record).expect("decided against this ledger");
                let event = match record {
                    Record::Deposit { op, user, amount, .. } => Event::Deposited { op, user, amount, balance },
                    Record::Withdrawal { op, user, amount, .. } => Event::Withdrawn { op, user, amount, balance },
                    _ => unreachable!("a wallet decides deposits and withdrawals only"),
                };
                let events = Arc::clone(&self.events);
                self.journal.append(
                    record,
                    Box::new(move || {
                        // Published before the reply, so events follow cause: by the time a
                        // caller hears back, its operation's event is out.
                        events.publish(|| event);
                        let _ = reply.send(Ok(balance));
                    }),
                );
            }
            Ok(Decision::Repeat(balance)) => reply_after_barrier(&*self.journal, reply, Ok(balance)),
            // Nothing changed, so nothing needs to be durable before saying so.
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

impl Actor for WalletShard {
    type Context = Context<Self>;
}

impl Handler<Move> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Move, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || {
            let decision = match m.deposit {
                Some(balance_fen_max) => self.ledger.decide_deposit(m.op, m.user, m.amount, balance_fen_max, m.now),
                None => self.ledger.decide_withdrawal(m.op, m.user, m.amount, m.now),
            };
            // The id stays taken if it is applied now, was applied before, or is applied with
            // other fields; a refusal gives it back.
            let applied = matches!(decision, Ok(_) | Err(WalletError::IdConflict { .. }));
            m.owners.settle(m.op, applied);
            self.settle(decision, m.reply);
        });
    }
}

impl Handler<Balance> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Balance, _: &mut Context<Self>) {
        // A debit not yet durable shows as already gone, which is safe; every credit in a
        // balance came from a durable record, and the barrier covers deposits in flight.
        reply_after_barrier(&*self.journal, m.reply, self.ledger.balance(m.user));
    }
}

impl Handler<Escrow> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Escrow, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || self.escrow(m));
    }
}

impl WalletShard {
    fn escrow(&mut self, m: Escrow) {
        let Escrow { mut sent, expiry_secs, org, remit, settle } = m;
        let total = sent.spec.split.total().expect("validated before escrow");
        let out = Outgoing { user: sent.spec.sender, amount: total, packet: true, day: sent.day };
        match self.ledger.decide_send(out, self.caps, org, sent.sent_at, self.approval_secs) {
            Ok(decided) => {
                // Its expiry counts from its opening (rule 16); for one waiting for approval,
                // from the approval (the packet shifts it then).
                sent.opens_at = decided.opens_at;
                sent.expires_at = decided.opens_at.plus_secs(expiry_secs);
                sent.approval = decided.approval;
            }
            Err(refusal) => return settle(Err(SendError::from(refusal))),
        }
        let Some(outbox) = remit else {
            let record = Record::PacketSent(sent.clone());
            self.ledger.apply(&record).expect("decided against this ledger");
            // The packet opens only once its escrow is durable, so a grab can never reach a
            // packet whose money could vanish.
            return self.journal.append(record, Box::new(move || settle(Ok(sent))));
        };
        // Its total leaves as a remittance that opens it in its own partition.
        let record = Record::PacketRemitted(sent.clone());
        self.ledger.apply(&record).expect("decided against this ledger");
        outbox.append_remitting(&*self.journal, record, move |_| settle(Ok(sent)));
    }
}

impl Handler<Debit> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Debit, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || {
            let Debit { spec, now, day, accept_secs, org, remit, settle } = m;
            let out = Outgoing { user: spec.from, amount: spec.amount, packet: false, day };
            let decided = match self.ledger.decide_send(out, self.caps, org, now, self.approval_secs) {
                Ok(decided) => decided,
                Err(refusal) => return settle(Err(TransferError::from(refusal))),
            };
            let (cooling_until, approval) = (decided.opens_at, decided.approval);
            let (arrives_at, accept_until) = transfer::deadlines(spec.arrival, cooling_until, accept_secs);
            let sent = TransferSent { spec, sent_at: now, day, cooling_until, arrives_at, accept_until, approval };
            let Some(outbox) = remit else {
                let record = Record::TransferSent(sent.clone());
                self.ledger.apply(&record).expect("decided against this ledger");
                // The transfer exists only once its debit is durable.
                return self.journal.append(record, Box::new(move || settle(Ok(sent))));
            };
            // Its amount leaves as a remittance that holds it in its own partition.
            let record = Record::TransferRemitted(sent.clone());
            self.ledger.apply(&record).expect("decided against this ledger");
            outbox.append_remitting(&*self.journal, record, move |_| settle(Ok(sent)));
        });
    }
}

impl Handler<SetCoolingOff> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: SetCoolingOff, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || {
            let record = Record::CoolingOffSet { user: m.user, setting: m.setting, at: m.now };
            self.ledger.apply(&record).expect("a setting never contradicts a ledger");
            let reply = m.reply;
            self.journal.append(
                record,
                Box::new(move || {
                    let _ = reply.send(());
                }),
            );
        });
    }
}

impl Handler<SetGuardian> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: SetGuardian, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || {
            // A guardian protects the user from being talked into dropping the protection: it
            // is set once, and only the guardian removes it.
            let current = self.ledger.guardian(m.user);
            let refusal = match (current, m.guardian, m.by) {
                (Some(g), Some(new), _) if g != new => {
                    Some(crate::error::EngineError::GuardianAlreadySet { guardian: g.guardian })
                }
                (Some(g), None, by) if by != Some(g.guardian) => {
                    Some(crate::error::EngineError::NotGuardian { user: by.unwrap_or(m.user) })
                }
                _ => None,
            };
            if let Some(e) = refusal {
                let _ = m.reply.send(Err(e));
                return;
            }
            let record = Record::GuardianSet { user: m.user, guardian: m.guardian, at: m.now };
            self.ledger.apply(&record).expect("a guardian never contradicts a ledger");
            let reply = m.reply;
            self.journal.append(
                record,
                Box::new(move || {
                    let _ = reply.send(Ok(()));
                }),
            );
        });
    }
}

impl Handler<GetUsage> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: GetUsage, _: &mut Context<Self>) {
        let used = self.ledger.day_use(m.user, m.day);
        let usage = Usage {
            // A later day if the clock stepped back since: its use is what counts.
            day: used.day,
            sent_today: Amount::fen(used.sent_fen),
            packets_today: used.packets,
            cooling_off: self.ledger.cooling_off(m.user),
        };
        reply_after_barrier(&*self.journal, m.reply, usage);
    }
}

impl Handler<Credit> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Credit, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || self.ledger.credit(m.0));
    }
}

impl Handler<Returned> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Returned, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || self.ledger.returned(m.0).expect("a send's amount came from this wallet"));
    }
}

impl Handler<OpsBefore> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: OpsBefore, _: &mut Context<Self>) {
        let _ = m.reply.send(self.ledger.ops_before(m.cutoff, m.max));
    }
}

impl Handler<Retire> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Retire, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || {
            self.ledger.apply(&m.0).expect("a retirement never contradicts a ledger");
        });
    }
}

impl Handler<GetTotals> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: GetTotals, _: &mut Context<Self>) {
        let _ = m.0.send(self.ledger.totals());
    }
}

impl Handler<Flush> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        reply_after_barrier(&*self.journal, m.0, ());
    }
}

/// The handle to every wallet shard.
pub(crate) struct Wallets {
    /// The partition whose wallets these are: a request for another's is refused.
    partition: Partition,
    shards: Box<[Addr<WalletShard>]>,
    owners: Arc<OpOwners>,
}

impl Wallets {
    /// The handle to `shards`, whose ledgers already applied the operations in `ops`.
    pub(crate) fn new(
        partition: Partition,
        shards: Box<[Addr<WalletShard>]>,
        ops: impl IntoIterator<Item = (OpId, UserId)>,
    ) -> Wallets {
        let owners = ops.into_iter().map(|(op, user)| (op, OpOwner { user, in_flight: 0, applied: true })).collect();
        Wallets { partition, shards, owners: Arc::new(OpOwners(owners)) }
    }

    /// Which shard holds `user`'s wallet, of `shards`.
    pub(crate) fn place(user: UserId, shards: usize) -> usize {
        bucket(user.0, shards)
    }

    /// The shard that holds `user`'s wallet.
    pub(crate) fn shard(&self, user: UserId) -> &Addr<WalletShard> {
        &self.shards[Wallets::place(user, self.shards.len())]
    }

    /// How many shards there are.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// Passes a credit on to the winner's shard. Never refused: see [`Credit`].
    pub(crate) fn credit(&self, credit: CreditMove) {
        self.shard(credit.user).do_send(Credit(credit));
    }

    /// Passes a send that went back on to its sender's shard. Never refused: see [`Returned`].
    pub(crate) fn returned(&self, out: Outgoing) {
        self.shard(out.user).do_send(Returned(out));
    }

    /// Sends a deposit (`deposit` is `Some(balance_fen_max)`) or a withdrawal to the user's
    /// shard, holding its id for the user until the shard has decided it.
    ///
    /// # Errors
    ///
    /// `IdConflict` if another user holds the id; `Busy` or `ShuttingDown` if the shard does
    /// not take the request (the id is then given back).
    pub(crate) fn send_move(
        &self,
        (op, user, amount): (OpId, UserId, Amount),
        deposit: Option<u64>,
        now: Timestamp,
        reply: Reply,
    ) -> Result<(), WalletError> {
        if !self.partition.holds_user(user) {
            return Err(WalletError::Elsewhere { partition: self.partition.of_user(user) });
        }
        self.owners.claim(op, user)?;
        let owners = Arc::clone(&self.owners);
        self.tell(user, Move { op, user, amount, deposit, now, owners, reply }).map_err(|refused| {
            self.owners.settle(op, false);
            WalletError::from(refused)
        })
    }

    /// Sends `msg` to `user`'s shard unless its mailbox is full.
    pub(crate) fn tell<M>(&self, user: UserId, msg: M) -> Result<(), Refused>
    where
        WalletShard: Handler<M>,
        M: Message<Result = ()> + Send + 'static,
    {
        if !self.partition.holds_user(user) {
            return Err(Refused::Elsewhere(self.partition.of_user(user)));
        }
        runtime::tell(self.shard(user), msg)
    }

    /// [`Wallets::tell`], handing the message back when it is refused.
    pub(crate) fn try_tell<M>(&self, user: UserId, msg: M) -> Result<(), (Refused, M)>
    where
        WalletShard: Handler<M>,
        M: Message<Result = ()> + Send + 'static,
    {
        if !self.partition.holds_user(user) {
            return Err((Refused::Elsewhere(self.partition.of_user(user)), msg));
        }
        runtime::try_tell(self.shard(user), msg)
    }

    /// Waits until every shard has applied everything sent to it before and that is durable.
    pub(crate) async fn flush(&self) {
        runtime::ask_all(self.shards.iter(), Flush).await;
    }

    /// Up to `max` operation ids applied before `cutoff`, across every shard.
    pub(crate) async fn ops_before(&self, cutoff: Timestamp, max: usize) -> Vec<OpId> {
        let found = runtime::ask_all(self.shards.iter(), |reply| OpsBefore { cutoff, max, reply }).await;
        found.into_iter().flatten().flatten().take(max).collect()
    }

    /// Applies a retirement: every shard forgets the operation ids it lists, and so do the
    /// owners of ids. Never refused.
    pub(crate) fn retire(&self, record: &Arc<Record>) {
        if let Record::Retired { ops, .. } = &**record {
            ops.iter().for_each(|op| self.owners.forget(*op));
        }
        self.shards.iter().for_each(|shard| shard.do_send(Retire(Arc::clone(record))));
    }

    /// The sums of every shard, or `None` if a shard has stopped.
    pub(crate) async fn totals(&self) -> Option<Vec<Totals>> {
        runtime::ask_all(self.shards.iter(), GetTotals).await.into_iter().collect()
    }
}
