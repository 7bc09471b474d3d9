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
//! | `Escrow`  | engine handle   | the send record, or `InsufficientFunds`, to a settle callback | yes (`Busy`) |
//! | `Credit`  | packet actors   | none                                   | never: a won share or refund must land |
//! | `GetTotals`, `Flush` | engine (audit, shutdown) | sums / after a barrier | never (one per shard per call) |
//!
//! Each request is decided by the ledger, recorded, and applied by the ledger (`ledger.rs`).
//!
//! Read-your-writes: a packet actor sends a share's `Credit` before it replies to the grab,
//! and a shard's mailbox is first in, first out, so a `Balance` sent after the grab returned
//! is handled after the credit.

use std::sync::Arc;

use actix::prelude::*;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::clock::Timestamp;
use crate::error::{SendError, WalletError};
use crate::events::{Event, EventHub};
use crate::health::Fuse;
use crate::journal::{reply_after_barrier, Journal};
use crate::ledger::{Credit as CreditMove, Decision, Ledger, Totals};
use crate::money::{Amount, OpId, UserId};
use crate::placement::bucket;
use crate::record::{PacketSent, Record};
use crate::runtime::{self, Refused};

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
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Escrow {
    pub sent: PacketSent,
    pub settle: Settle,
}

/// A won share or a refund, from a packet actor. Never refused, never answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Credit(pub CreditMove);

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
    journal: Arc<dyn Journal>,
    events: Arc<EventHub>,
    fuse: Arc<Fuse>,
}

impl WalletShard {
    pub(crate) fn new(
        ledger: Ledger,
        journal: Arc<dyn Journal>,
        events: Arc<EventHub>,
        fuse: Arc<Fuse>,
    ) -> WalletShard {
        WalletShard { ledger, journal, events, fuse }
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
        let Escrow { sent, settle } = m;
        let total = sent.spec.split.total().expect("validated before escrow");
        if let Err(e) = self.ledger.decide_debit(sent.spec.sender, total) {
            settle(Err(e));
            return;
        }
        let record = Record::PacketSent(sent.clone());
        self.ledger.apply(&record).expect("decided against this ledger");
        // The packet opens only once its escrow is durable, so a grab can never reach a
        // packet whose money could vanish.
        self.journal.append(record, Box::new(move || settle(Ok(sent))));
    }
}

impl Handler<Credit> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Credit, _: &mut Context<Self>) {
        let fuse = Arc::clone(&self.fuse);
        fuse.guard("wallet shard", || self.ledger.credit(m.0));
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
    shards: Box<[Addr<WalletShard>]>,
    owners: Arc<OpOwners>,
}

impl Wallets {
    /// The handle to `shards`, whose ledgers already applied the operations in `ops`.
    pub(crate) fn new(shards: Box<[Addr<WalletShard>]>, ops: impl IntoIterator<Item = (OpId, UserId)>) -> Wallets {
        let owners = ops.into_iter().map(|(op, user)| (op, OpOwner { user, in_flight: 0, applied: true })).collect();
        Wallets { shards, owners: Arc::new(OpOwners(owners)) }
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
        runtime::tell(self.shard(user), msg)
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
