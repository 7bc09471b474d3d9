//! Wallets: a [`Ledger`] of balances (plain data) and the `WalletShard` actor that owns one.
//!
//! Users are spread over a fixed number of shards by hashing their id; each shard serializes
//! every change to its users' balances, so no balance is ever touched by two threads.
//!
//! # Messages
//!
//! | message   | from            | reply                                  | refused when full |
//! |-----------|-----------------|----------------------------------------|-------------------|
//! | `Deposit` | engine handle   | new balance, after the record is durable | yes (`Busy`)    |
//! | `Withdraw`| engine handle   | new balance, after the record is durable | yes (`Busy`)    |
//! | `Balance` | engine handle   | balance, after a journal barrier       | yes (`Busy`)      |
//! | `Escrow`  | engine handle   | the opened packet, or `InsufficientFunds` | yes (`Busy`)   |
//! | `Credit`  | packet actors   | none                                   | never: a won share or refund must land |
//! | `Totals`, `Flush` | engine (audit, shutdown) | sums / after a barrier  | never (one per shard per call) |
//!
//! # Invariants
//!
//! No balance goes below zero or above `balance_fen_max` by a deposit; an `OpId` is applied
//! once; `sum(balances) = deposited - withdrawn + credited - debited` (checked by
//! `Engine::audit` together with the packets' escrow).
//!
//! Read-your-writes: a packet actor sends a share's `Credit` before it replies to the grab,
//! and a shard's mailbox is first in, first out, so a `Balance` sent after the grab returned
//! is handled after the credit.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::clock::Timestamp;
use crate::engine::{PacketMeta, Shared};
use crate::error::{SendError, WalletError};
use crate::events::{Event, EventHub};
use crate::journal::{Journal, Record};
use crate::money::{Amount, OpId, UserId};
use crate::packet::{NewPacket, PacketView};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Deposit,
    Withdrawal,
}

#[derive(Clone, Copy, Debug)]
struct OpDone {
    kind: OpKind,
    user: UserId,
    amount: Amount,
    balance_after: Amount,
}

/// What applying a deposit or withdrawal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The balance after the operation.
    pub balance: Amount,
    /// False when the operation id had been applied before (a retry: nothing changed now).
    pub fresh: bool,
}

/// Balances of a set of users, with the operations applied to them.
#[derive(Debug, Default)]
pub struct Ledger {
    balances: HashMap<UserId, u64>,
    ops: HashMap<OpId, OpDone>,
    balance_fen_max: u64,
    deposited: u64,
    withdrawn: u64,
}

/// A ledger's sums, for the audit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Sum of balances.
    pub balances: u64,
    /// Sum of deposits applied.
    pub deposited: u64,
    /// Sum of withdrawals applied.
    pub withdrawn: u64,
}

impl Ledger {
    /// An empty ledger whose deposits stop at `balance_fen_max`.
    pub fn new(balance_fen_max: u64) -> Ledger {
        Ledger { balance_fen_max, ..Ledger::default() }
    }

    /// A ledger rebuilt from a journal: the balances of its users, the deposits and
    /// withdrawals applied to them (with the balance each left), and their sums.
    pub fn restore(
        balance_fen_max: u64,
        balances: impl IntoIterator<Item = (UserId, u64)>,
        ops: impl IntoIterator<Item = (OpId, crate::replay::AppliedOp)>,
    ) -> Ledger {
        let mut ledger = Ledger::new(balance_fen_max);
        ledger.balances = balances.into_iter().collect();
        for (op, applied) in ops {
            let kind = if applied.deposit { OpKind::Deposit } else { OpKind::Withdrawal };
            if applied.deposit {
                ledger.deposited += applied.amount.as_fen();
            } else {
                ledger.withdrawn += applied.amount.as_fen();
            }
            ledger.ops.insert(
                op,
                OpDone { kind, user: applied.user, amount: applied.amount, balance_after: applied.balance_after },
            );
        }
        ledger
    }

    /// A user's balance (zero for a user never seen).
    pub fn balance(&self, user: UserId) -> Amount {
        Amount::fen(self.balances.get(&user).copied().unwrap_or(0))
    }

    fn repeat(&self, op: OpId, kind: OpKind, user: UserId, amount: Amount) -> Option<Result<Applied, WalletError>> {
        let done = self.ops.get(&op)?;
        Some(if done.kind == kind && done.user == user && done.amount == amount {
            Ok(Applied { balance: done.balance_after, fresh: false })
        } else {
            Err(WalletError::IdConflict { op })
        })
    }

    /// Adds `amount` to `user` once per `op`.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `BalanceLimit`, or `IdConflict` if `op` was used with other fields.
    pub fn deposit(&mut self, op: OpId, user: UserId, amount: Amount) -> Result<Applied, WalletError> {
        if let Some(result) = self.repeat(op, OpKind::Deposit, user, amount) {
            return result;
        }
        if amount.is_zero() {
            return Err(WalletError::ZeroAmount);
        }
        let balance = self.balance(user).as_fen();
        let after = balance.checked_add(amount.as_fen()).filter(|&b| b <= self.balance_fen_max);
        let after = after.ok_or(WalletError::BalanceLimit { max: Amount::fen(self.balance_fen_max) })?;
        self.balances.insert(user, after);
        self.deposited += amount.as_fen();
        let balance_after = Amount::fen(after);
        self.ops.insert(op, OpDone { kind: OpKind::Deposit, user, amount, balance_after });
        Ok(Applied { balance: balance_after, fresh: true })
    }

    /// Takes `amount` from `user` once per `op`.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `InsufficientFunds`, or `IdConflict` if `op` was used with other fields.
    pub fn withdraw(&mut self, op: OpId, user: UserId, amount: Amount) -> Result<Applied, WalletError> {
        if let Some(result) = self.repeat(op, OpKind::Withdrawal, user, amount) {
            return result;
        }
        if amount.is_zero() {
            return Err(WalletError::ZeroAmount);
        }
        let balance = self.balance(user);
        let after = balance.checked_sub(amount).ok_or(WalletError::InsufficientFunds { balance, needed: amount })?;
        self.balances.insert(user, after.as_fen());
        self.withdrawn += amount.as_fen();
        self.ops.insert(op, OpDone { kind: OpKind::Withdrawal, user, amount, balance_after: after });
        Ok(Applied { balance: after, fresh: true })
    }

    /// Moves `amount` out of `user`'s wallet into a packet's escrow.
    ///
    /// # Errors
    ///
    /// `InsufficientFunds` with the balance; nothing changes.
    pub fn debit(&mut self, user: UserId, amount: Amount) -> Result<Amount, SendError> {
        let balance = self.balance(user);
        let after = balance.checked_sub(amount).ok_or(SendError::InsufficientFunds { balance, needed: amount })?;
        self.balances.insert(user, after.as_fen());
        Ok(after)
    }

    /// Adds a won share or a refund from escrow.
    ///
    /// # Panics
    ///
    /// If the balance would overflow `u64`: escrow only holds money that was deposited, and
    /// deposits stop far below that, so this is a bug, never an input error.
    pub fn credit(&mut self, user: UserId, amount: Amount) {
        let balance = self.balances.entry(user).or_insert(0);
        *balance = balance.checked_add(amount.as_fen()).expect("credits come from escrowed deposits");
    }

    /// The ledger's sums.
    pub fn totals(&self) -> Totals {
        Totals { balances: self.balances.values().sum(), deposited: self.deposited, withdrawn: self.withdrawn }
    }
}

/// A deposit request.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Deposit {
    pub op: OpId,
    pub user: UserId,
    pub amount: Amount,
    pub reply: oneshot::Sender<Result<Amount, WalletError>>,
}

/// A withdrawal request.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Withdraw {
    pub op: OpId,
    pub user: UserId,
    pub amount: Amount,
    pub reply: oneshot::Sender<Result<Amount, WalletError>>,
}

/// A balance read.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Balance {
    pub user: UserId,
    pub reply: oneshot::Sender<Amount>,
}

/// Debits a packet's total from its sender and, once that is durable, opens the packet.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Escrow {
    pub shared: Arc<Shared>,
    pub spec: NewPacket,
    pub seed: u64,
    pub reply: oneshot::Sender<Result<PacketView, SendError>>,
}

/// A won share or a refund, from a packet actor. Never refused, never answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Credit {
    pub user: UserId,
    pub amount: Amount,
}

/// The shard's sums, for the audit.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct GetTotals {
    pub reply: oneshot::Sender<Totals>,
}

/// Answers once everything the shard did before is durable (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush {
    pub reply: oneshot::Sender<()>,
}

/// The actor owning one shard of wallets.
pub(crate) struct WalletShard {
    ledger: Ledger,
    journal: Arc<dyn Journal>,
    events: Arc<EventHub>,
}

impl WalletShard {
    pub(crate) fn new(ledger: Ledger, journal: Arc<dyn Journal>, events: Arc<EventHub>) -> WalletShard {
        WalletShard { ledger, journal, events }
    }

    /// Replies `result` once the record of a fresh operation (or, for a retry, everything
    /// before it) is durable.
    fn answer(
        &self,
        result: Result<Applied, WalletError>,
        record: Record,
        event: Event,
        reply: oneshot::Sender<Result<Amount, WalletError>>,
    ) {
        match result {
            Ok(Applied { balance, fresh: true }) => {
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
            Ok(Applied { balance, fresh: false }) => self.journal.barrier(Box::new(move || {
                let _ = reply.send(Ok(balance));
            })),
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

impl Handler<Deposit> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Deposit, _: &mut Context<Self>) {
        let result = self.ledger.deposit(m.op, m.user, m.amount);
        let balance = result.as_ref().map_or(Amount::ZERO, |a| a.balance);
        let record = Record::Deposit { op: m.op, user: m.user, amount: m.amount };
        let event = Event::Deposited { op: m.op, user: m.user, amount: m.amount, balance };
        self.answer(result, record, event, m.reply);
    }
}

impl Handler<Withdraw> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Withdraw, _: &mut Context<Self>) {
        let result = self.ledger.withdraw(m.op, m.user, m.amount);
        let balance = result.as_ref().map_or(Amount::ZERO, |a| a.balance);
        let record = Record::Withdrawal { op: m.op, user: m.user, amount: m.amount };
        let event = Event::Withdrawn { op: m.op, user: m.user, amount: m.amount, balance };
        self.answer(result, record, event, m.reply);
    }
}

impl Handler<Balance> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Balance, _: &mut Context<Self>) {
        let balance = self.ledger.balance(m.user);
        // A debit not yet durable shows as already gone, which is safe; every credit in a
        // balance came from a durable record, and the barrier covers deposits in flight.
        self.journal.barrier(Box::new(move || {
            let _ = m.reply.send(balance);
        }));
    }
}

impl Handler<Escrow> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Escrow, _: &mut Context<Self>) {
        let Escrow { shared, spec, seed, reply } = m;
        let total = spec.split.total().expect("validated before escrow");
        if let Err(e) = self.ledger.debit(spec.sender, total) {
            shared.abandon_opening(spec.id);
            let _ = reply.send(Err(e));
            return;
        }
        let sent_at: Timestamp = shared.clock.now();
        let expires_at = sent_at.plus_secs(shared.limits.expiry_secs);
        let record = Record::PacketSent {
            packet: spec.id,
            sender: spec.sender,
            group: spec.group,
            split: spec.split.clone(),
            seed,
            greeting: spec.greeting.clone(),
            sent_at,
            expires_at,
        };
        // The packet opens only once its escrow is durable, so a grab can never reach a
        // packet whose money could vanish.
        self.journal.append(
            record,
            Box::new(move || {
                let meta = PacketMeta { spec, seed, sent_at, expires_at, claims: Vec::new(), refunded: None };
                let _ = reply.send(Ok(shared.open_packet(meta)));
            }),
        );
    }
}

impl Handler<Credit> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Credit, _: &mut Context<Self>) {
        self.ledger.credit(m.user, m.amount);
    }
}

impl Handler<GetTotals> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: GetTotals, _: &mut Context<Self>) {
        let _ = m.reply.send(self.ledger.totals());
    }
}

impl Handler<Flush> for WalletShard {
    type Result = ();

    fn handle(&mut self, m: Flush, _: &mut Context<Self>) {
        self.journal.barrier(Box::new(move || {
            let _ = m.reply.send(());
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits_and_withdrawals_apply_once_per_op() {
        let mut l = Ledger::new(1_000);
        assert_eq!(
            l.deposit(OpId(1), UserId(1), Amount::fen(500)),
            Ok(Applied { balance: Amount::fen(500), fresh: true })
        );
        assert_eq!(
            l.deposit(OpId(1), UserId(1), Amount::fen(500)),
            Ok(Applied { balance: Amount::fen(500), fresh: false })
        );
        assert_eq!(l.balance(UserId(1)), Amount::fen(500));
        assert_eq!(l.deposit(OpId(1), UserId(1), Amount::fen(501)), Err(WalletError::IdConflict { op: OpId(1) }));
        assert_eq!(l.withdraw(OpId(1), UserId(1), Amount::fen(500)), Err(WalletError::IdConflict { op: OpId(1) }));
        assert_eq!(
            l.withdraw(OpId(2), UserId(1), Amount::fen(200)),
            Ok(Applied { balance: Amount::fen(300), fresh: true })
        );
        assert_eq!(
            l.withdraw(OpId(2), UserId(1), Amount::fen(200)),
            Ok(Applied { balance: Amount::fen(300), fresh: false })
        );
        assert_eq!(l.totals(), Totals { balances: 300, deposited: 500, withdrawn: 200 });
    }

    #[test]
    fn refusals_change_nothing() {
        let mut l = Ledger::new(1_000);
        l.deposit(OpId(1), UserId(1), Amount::fen(900)).unwrap();
        assert_eq!(
            l.deposit(OpId(2), UserId(1), Amount::fen(101)),
            Err(WalletError::BalanceLimit { max: Amount::fen(1_000) })
        );
        assert_eq!(l.deposit(OpId(3), UserId(1), Amount::ZERO), Err(WalletError::ZeroAmount));
        assert_eq!(
            l.withdraw(OpId(4), UserId(1), Amount::fen(901)),
            Err(WalletError::InsufficientFunds { balance: Amount::fen(900), needed: Amount::fen(901) })
        );
        assert_eq!(
            l.debit(UserId(1), Amount::fen(901)),
            Err(SendError::InsufficientFunds { balance: Amount::fen(900), needed: Amount::fen(901) })
        );
        assert_eq!(l.totals(), Totals { balances: 900, deposited: 900, withdrawn: 0 });
        // A refused op id stays free: the retry can succeed once funds are there.
        assert!(l.deposit(OpId(2), UserId(1), Amount::fen(100)).is_ok());
    }

    #[test]
    fn debit_and_credit_move_escrow() {
        let mut l = Ledger::new(1_000);
        l.deposit(OpId(1), UserId(1), Amount::fen(900)).unwrap();
        assert_eq!(l.debit(UserId(1), Amount::fen(400)), Ok(Amount::fen(500)));
        l.credit(UserId(2), Amount::fen(150));
        assert_eq!(l.balance(UserId(2)), Amount::fen(150));
        assert_eq!(l.totals().balances, 650);
    }
}
