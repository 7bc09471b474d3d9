//! Wallet balances as plain data, and the rules of money that touch them: deposits and
//! withdrawals once per operation id, a send's debit into escrow, a share's or a refund's
//! credit. No runtime: a wallet shard owns one ledger for its users, replay owns one for all.
//!
//! Each rule is split the same way (decide → record → apply): `decide_*` checks a request
//! against the state and the limits and returns the [`Record`] to write, changing nothing;
//! [`Ledger::apply`] applies a record (live after deciding it, or on replay) and refuses one
//! that contradicts the state. Credits are not decided here: a packet's record implies them
//! (see `PacketState::apply`), and [`Ledger::credit`] applies them.
//!
//! A ledger also holds what each user sent on their latest day (for the daily caps) and their
//! cooling-off setting: both are folded from the records that carry them (sends record their
//! day), never kept beside the journal, so a restart decides every later send the same way.
//!
//! # Invariants
//!
//! No balance below zero; an `OpId` applied once;
//! `sum(balances) = deposited - withdrawn - debited + credited`, where the debited and
//! credited money is the escrow and pending transfers that `Engine::audit` adds back.

use std::collections::HashMap;

use crate::clock::Timestamp;
use crate::error::{SendError, TransferError, WalletError};
use crate::money::{Amount, IdMap, OpId, OrgId, UserId};
use crate::record::{Approval, Approver, CoolingOff, Guardian, Record};

/// Money a record moves from escrow into a wallet: a won share, or a refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credit {
    /// The wallet.
    pub user: UserId,
    /// How much.
    pub amount: Amount,
}

/// A deposit or withdrawal as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpDone {
    /// True for a deposit.
    pub deposit: bool,
    /// The wallet.
    pub user: UserId,
    /// The amount.
    pub amount: Amount,
    /// The balance it left.
    pub balance_after: Amount,
    /// When it was applied; the id is remembered for `op_retention_secs` from then.
    pub at: Timestamp,
}

/// What deciding a deposit or withdrawal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A new operation: write and apply this record.
    Fresh(Record),
    /// The id was applied before with the same fields: nothing to do, the first answer again.
    Repeat(Amount),
}

/// What a user sent on one day, for the daily caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DayUse {
    /// The day (see `Timestamp::day`).
    pub day: u64,
    /// Fen sent that day: packets and transfers.
    pub sent_fen: u64,
    /// Packets sent that day.
    pub packets: u32,
}

/// What a user may send today, as the daily caps and the cooling-off see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Usage {
    /// Today, by the engine's clock and `day_utc_offset_secs` (days since the epoch).
    pub day: u64,
    /// Sent today, packets and transfers together (against `daily_sent_fen_max`).
    pub sent_today: Amount,
    /// Packets sent today (against `daily_packets_max`).
    pub packets_today: u32,
    /// The user's cooling-off (`secs: 0` when none is set).
    pub cooling_off: CoolingOff,
}

/// A send about to leave a wallet: a packet's total or a transfer's amount.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outgoing {
    pub user: UserId,
    pub amount: Amount,
    /// A packet (counted against `daily_packets_max` too) rather than a transfer.
    pub packet: bool,
    /// The sender's day now.
    pub day: u64,
}

impl Outgoing {
    /// The send a remittance carries (a packet or a transfer, as its sender sent it), if it
    /// carries one.
    pub(crate) fn carried(r: &crate::record::Remittance) -> Option<Outgoing> {
        match (&r.packet, &r.transfer) {
            (Some(sent), _) => Some(Outgoing { user: r.user, amount: r.amount, packet: true, day: sent.day }),
            (None, Some(sent)) => Some(Outgoing { user: r.user, amount: r.amount, packet: false, day: sent.day }),
            (None, None) => None,
        }
    }
}

/// The daily caps a send is decided under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DailyCaps {
    pub sent_fen_max: u64,
    pub packets_max: u32,
}

/// Why a send cannot leave a wallet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendRefusal {
    InsufficientFunds { balance: Amount, needed: Amount },
    DailyLimit { used: Amount, max: Amount },
    DailyPacketLimit { used: u32, max: u32 },
    OrgDailyLimit { org: OrgId, used: Amount, max: Amount },
}

/// The rules of the org whose group a packet is sent in: its own daily cap on a member's
/// sends (on top of the engine's) and its approval threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OrgRules {
    pub org: OrgId,
    pub sent_fen_max: Option<u64>,
    pub approval_above: Option<Amount>,
}

/// What deciding a send found: when it opens (the end of a cooling-off, or now), and whether
/// it waits for a second person first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decided {
    pub opens_at: Timestamp,
    pub approval: Option<Approval>,
}

impl From<SendRefusal> for SendError {
    fn from(r: SendRefusal) -> SendError {
        match r {
            SendRefusal::InsufficientFunds { balance, needed } => SendError::InsufficientFunds { balance, needed },
            SendRefusal::DailyLimit { used, max } => SendError::DailyLimit { used, max },
            SendRefusal::DailyPacketLimit { used, max } => SendError::DailyPacketLimit { used, max },
            SendRefusal::OrgDailyLimit { org, used, max } => SendError::OrgDailyLimit { org, used, max },
        }
    }
}

impl From<SendRefusal> for TransferError {
    fn from(r: SendRefusal) -> TransferError {
        match r {
            SendRefusal::InsufficientFunds { balance, needed } => TransferError::InsufficientFunds { balance, needed },
            SendRefusal::DailyLimit { used, max } => TransferError::DailyLimit { used, max },
            SendRefusal::DailyPacketLimit { .. } => unreachable!("a transfer is not counted as a packet"),
            SendRefusal::OrgDailyLimit { org, used, max } => TransferError::OrgDailyLimit { org, used, max },
        }
    }
}

/// Balances of a set of users, with the operations applied to them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ledger {
    balances: IdMap<UserId, u64>,
    ops: HashMap<OpId, OpDone>,
    deposited: u64,
    withdrawn: u64,
    /// Each user's latest day with a send.
    days: IdMap<UserId, DayUse>,
    /// Cooling-off settings (users without one have none).
    cooling: IdMap<UserId, CoolingOff>,
    /// Guardians (users without one have none).
    guardians: IdMap<UserId, Guardian>,
}

/// A ledger's sums, for the audit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Sum of balances.
    pub balances: u64,
    /// Sum of deposits applied.
    pub deposited: u64,
    /// Sum of withdrawals applied.
    pub withdrawn: u64,
}

impl Ledger {
    /// A user's balance (zero for a user never seen).
    pub(crate) fn balance(&self, user: UserId) -> Amount {
        Amount::fen(self.balances.get(&user).copied().unwrap_or(0))
    }

    fn repeat(&self, op: OpId, deposit: bool, user: UserId, amount: Amount) -> Option<Result<Decision, WalletError>> {
        let done = self.ops.get(&op)?;
        Some(if (done.deposit, done.user, done.amount) == (deposit, user, amount) {
            Ok(Decision::Repeat(done.balance_after))
        } else {
            Err(WalletError::IdConflict { op })
        })
    }

    /// Decides a deposit of `amount` to `user` under `op`; changes nothing.
    ///
    /// # Errors
    ///
    /// `IdConflict` if `op` was used with other fields, `ZeroAmount`, `BalanceLimit` past
    /// `balance_fen_max`.
    pub(crate) fn decide_deposit(
        &self,
        op: OpId,
        user: UserId,
        amount: Amount,
        balance_fen_max: u64,
        now: Timestamp,
    ) -> Result<Decision, WalletError> {
        if let Some(decided) = self.repeat(op, true, user, amount) {
            return decided;
        }
        if amount.is_zero() {
            return Err(WalletError::ZeroAmount);
        }
        let after = self.balance(user).as_fen().checked_add(amount.as_fen()).filter(|&b| b <= balance_fen_max);
        after.ok_or(WalletError::BalanceLimit { max: Amount::fen(balance_fen_max) })?;
        Ok(Decision::Fresh(Record::Deposit { op, user, amount, at: now }))
    }

    /// Decides a withdrawal of `amount` from `user` under `op`; changes nothing.
    ///
    /// # Errors
    ///
    /// `IdConflict` if `op` was used with other fields, `ZeroAmount`, `InsufficientFunds`.
    pub(crate) fn decide_withdrawal(
        &self,
        op: OpId,
        user: UserId,
        amount: Amount,
        now: Timestamp,
    ) -> Result<Decision, WalletError> {
        if let Some(decided) = self.repeat(op, false, user, amount) {
            return decided;
        }
        if amount.is_zero() {
            return Err(WalletError::ZeroAmount);
        }
        let balance = self.balance(user);
        if balance < amount {
            return Err(WalletError::InsufficientFunds { balance, needed: amount });
        }
        Ok(Decision::Fresh(Record::Withdrawal { op, user, amount, at: now }))
    }

    /// What `user` has sent on `day`. If their latest send is on a later day (the clock
    /// stepped back since), that day's use counts: a step back never frees an allowance.
    pub(crate) fn day_use(&self, user: UserId, day: u64) -> DayUse {
        match self.days.get(&user) {
            Some(used) if used.day >= day => *used,
            _ => DayUse { day, ..DayUse::default() },
        }
    }

    /// `user`'s cooling-off setting (none: `secs` zero).
    pub(crate) fn cooling_off(&self, user: UserId) -> CoolingOff {
        self.cooling.get(&user).copied().unwrap_or_default()
    }

    /// `user`'s guardian, if they have one.
    pub(crate) fn guardian(&self, user: UserId) -> Option<Guardian> {
        self.guardians.get(&user).copied()
    }

    /// Decides whether a send can leave its sender's wallet now: the balance covers it and
    /// it stays within the daily caps, the engine's and (for a packet in an org's group) the
    /// org's. Returns how it goes on (changes nothing):
    /// - above the org's approval threshold (a packet in its group), or else above the sender's
    ///   guardian's threshold, it waits for that approver until `now + approval_secs` (rule
    ///   23), opening when approved (no cooling-off then: a second person confirmed it);
    /// - otherwise it opens now, or at the end of the sender's cooling-off if that holds it.
    ///
    /// # Errors
    ///
    /// `DailyPacketLimit`, `DailyLimit` (naming what was used), `OrgDailyLimit` (naming the
    /// org), `InsufficientFunds`.
    pub(crate) fn decide_send(
        &self,
        out: Outgoing,
        caps: DailyCaps,
        org: Option<OrgRules>,
        now: Timestamp,
        approval_secs: u64,
    ) -> Result<Decided, SendRefusal> {
        let used = self.day_use(out.user, out.day);
        if let Some(OrgRules { org, sent_fen_max: Some(max), .. }) = org {
            if used.sent_fen.saturating_add(out.amount.as_fen()) > max {
                let (used, max) = (Amount::fen(used.sent_fen), Amount::fen(max));
                return Err(SendRefusal::OrgDailyLimit { org, used, max });
            }
        }
        if out.packet && used.packets >= caps.packets_max {
            return Err(SendRefusal::DailyPacketLimit { used: used.packets, max: caps.packets_max });
        }
        if used.sent_fen.saturating_add(out.amount.as_fen()) > caps.sent_fen_max {
            let (used, max) = (Amount::fen(used.sent_fen), Amount::fen(caps.sent_fen_max));
            return Err(SendRefusal::DailyLimit { used, max });
        }
        let balance = self.balance(out.user);
        if balance < out.amount {
            return Err(SendRefusal::InsufficientFunds { balance, needed: out.amount });
        }
        let guardian = self.guardian(out.user).filter(|g| out.amount > g.above).map(|g| Approver::Guardian(g.guardian));
        let org = org.filter(|o| o.approval_above.is_some_and(|t| out.amount > t)).map(|o| Approver::OrgAdmins(o.org));
        // The org's rule first: a guardian is the sender's own choice and must not stand in
        // for the org's second admin.
        let approval = org.or(guardian).map(|approver| Approval { approver, until: now.plus_secs(approval_secs) });
        let opens_at = match approval {
            Some(_) => now,
            None => self.cooling_off(out.user).opens_at(out.amount, now),
        };
        Ok(Decided { opens_at, approval })
    }

    /// Debits a send and counts it against its day; `what` names it in an error.
    fn debit_send(&mut self, out: Outgoing, what: impl FnOnce() -> String) -> Result<Amount, String> {
        let balance = self.balance(out.user);
        let after = balance.checked_sub(out.amount).ok_or_else(|| format!("{} from a balance of {balance}", what()))?;
        self.balances.insert(out.user, after.as_fen());
        let used = self.days.entry(out.user).or_default();
        if out.day > used.day {
            *used = DayUse { day: out.day, ..DayUse::default() };
        }
        used.sent_fen = used.sent_fen.saturating_add(out.amount.as_fen());
        used.packets = used.packets.saturating_add(u32::from(out.packet));
        Ok(after)
    }

    /// Applies a record's effect on wallets: a deposit or withdrawal (once per id: a record
    /// met again with the same fields is skipped), a send's debit into escrow, or the
    /// retirement of operation ids (those this ledger holds). Returns the balance of the wallet
    /// it touched; other records touch no wallet and return zero.
    ///
    /// # Errors
    ///
    /// A description of the contradiction (an id reused with other fields, a withdrawal or a
    /// debit the balance cannot cover); nothing changes then.
    pub(crate) fn apply(&mut self, record: &Record) -> Result<Amount, String> {
        let (deposit, op, user, amount, at) = match *record {
            Record::Deposit { op, user, amount, at } => (true, op, user, amount, at),
            Record::Withdrawal { op, user, amount, at } => (false, op, user, amount, at),
            Record::Retired { ref ops, .. } => {
                ops.iter().for_each(|op| {
                    self.ops.remove(op);
                });
                if self.ops.len() * 4 < self.ops.capacity() {
                    self.ops.shrink_to_fit();
                }
                return Ok(Amount::ZERO);
            }
            Record::PacketSent(ref sent) | Record::PacketRemitted(ref sent) => {
                let (user, id) = (sent.spec.sender, sent.spec.id);
                let total = sent.spec.split.total().ok_or(format!("packet {id}: total overflows"))?;
                let out = Outgoing { user, amount: total, packet: true, day: sent.day };
                return self.debit_send(out, || format!("packet {id} escrows {total}"));
            }
            Record::TransferSent(ref sent) | Record::TransferRemitted(ref sent) => {
                let (spec, day) = (&sent.spec, sent.day);
                let out = Outgoing { user: spec.from, amount: spec.amount, packet: false, day };
                return self.debit_send(out, || format!("transfer {} sends {}", spec.id, spec.amount));
            }
            Record::GuardianSet { user, guardian, .. } => {
                match guardian {
                    Some(g) => self.guardians.insert(user, g),
                    None => self.guardians.remove(&user),
                };
                return Ok(self.balance(user));
            }
            Record::CoolingOffSet { user, setting, .. } => {
                if setting.secs == 0 {
                    self.cooling.remove(&user);
                } else {
                    self.cooling.insert(user, setting);
                }
                return Ok(self.balance(user));
            }
            _ => return Ok(Amount::ZERO),
        };
        match self.repeat(op, deposit, user, amount) {
            Some(Ok(Decision::Repeat(balance))) => return Ok(balance),
            Some(_) => return Err(format!("operation {op} applied twice with different fields")),
            None => {}
        }
        let balance = self.balance(user);
        let after = if deposit { balance.checked_add(amount) } else { balance.checked_sub(amount) };
        let after = after.ok_or(format!("operation {op}: {amount} does not fit a balance of {balance}"))?;
        let sum = if deposit { &mut self.deposited } else { &mut self.withdrawn };
        *sum = sum.checked_add(amount.as_fen()).ok_or(format!("operation {op}: the sum of operations overflows"))?;
        self.balances.insert(user, after.as_fen());
        self.ops.insert(op, OpDone { deposit, user, amount, balance_after: after, at });
        Ok(after)
    }

    /// Adds a won share or a refund from escrow.
    ///
    /// # Panics
    ///
    /// If the balance would overflow `u64`: escrow only holds money that was deposited, and
    /// deposits stop far below that, so this is a bug, never an input error.
    pub(crate) fn credit(&mut self, credit: Credit) {
        self.try_credit(credit).expect("credits come from escrowed deposits");
    }

    /// A send that went back to its sender (its partition could not take it in): its amount
    /// is theirs again, and it no longer counts against their daily caps if that day is
    /// still theirs.
    ///
    /// # Errors
    ///
    /// As [`Ledger::try_credit`]; nothing changes then.
    pub(crate) fn returned(&mut self, out: Outgoing) -> Result<(), String> {
        self.try_credit(Credit { user: out.user, amount: out.amount })?;
        if let Some(used) = self.days.get_mut(&out.user).filter(|used| used.day == out.day) {
            used.sent_fen = used.sent_fen.saturating_sub(out.amount.as_fen());
            used.packets = used.packets.saturating_sub(u32::from(out.packet));
        }
        Ok(())
    }

    /// [`Ledger::credit`] for replay, where a journal could claim anything.
    ///
    /// # Errors
    ///
    /// If the balance would overflow; nothing changes then.
    pub(crate) fn try_credit(&mut self, credit: Credit) -> Result<(), String> {
        let balance = self.balances.entry(credit.user).or_insert(0);
        *balance = balance
            .checked_add(credit.amount.as_fen())
            .ok_or(format!("a credit of {} overflows the balance of {}", credit.amount, credit.user))?;
        Ok(())
    }

    /// The ledger's sums.
    pub(crate) fn totals(&self) -> Totals {
        Totals { balances: self.balances.values().sum(), deposited: self.deposited, withdrawn: self.withdrawn }
    }

    /// Every balance, in no order.
    pub(crate) fn balances(&self) -> impl Iterator<Item = (UserId, u64)> + '_ {
        self.balances.iter().map(|(&u, &fen)| (u, fen))
    }

    /// Every deposit and withdrawal applied, in no order.
    pub(crate) fn ops(&self) -> impl Iterator<Item = (OpId, OpDone)> + '_ {
        self.ops.iter().map(|(&op, &done)| (op, done))
    }

    /// Every user's latest day with a send, in no order.
    pub(crate) fn days(&self) -> impl Iterator<Item = (UserId, DayUse)> + '_ {
        self.days.iter().map(|(&u, &d)| (u, d))
    }

    /// Every cooling-off setting, in no order.
    pub(crate) fn cooling_offs(&self) -> impl Iterator<Item = (UserId, CoolingOff)> + '_ {
        self.cooling.iter().map(|(&u, &c)| (u, c))
    }

    /// Every guardian, in no order.
    pub(crate) fn guardians(&self) -> impl Iterator<Item = (UserId, Guardian)> + '_ {
        self.guardians.iter().map(|(&u, &g)| (u, g))
    }

    /// A ledger of these balances and remembered operations, with these sums (operations may
    /// have been retired since they were counted).
    pub(crate) fn from_parts(
        balances: impl IntoIterator<Item = (UserId, u64)>,
        ops: impl IntoIterator<Item = (OpId, OpDone)>,
        deposited: u64,
        withdrawn: u64,
    ) -> Ledger {
        let (balances, ops) = (balances.into_iter().collect(), ops.into_iter().collect());
        Ledger { balances, ops, deposited, withdrawn, ..Ledger::default() }
    }

    /// This ledger with these days of use and cooling-off settings (from a snapshot).
    pub(crate) fn with_policies(
        mut self,
        days: impl IntoIterator<Item = (UserId, DayUse)>,
        cooling: impl IntoIterator<Item = (UserId, CoolingOff)>,
    ) -> Ledger {
        self.days = days.into_iter().collect();
        self.cooling = cooling.into_iter().collect();
        self
    }

    /// This ledger with these guardians (from a snapshot).
    pub(crate) fn with_guardians(mut self, guardians: impl IntoIterator<Item = (UserId, Guardian)>) -> Ledger {
        self.guardians = guardians.into_iter().collect();
        self
    }

    /// Splits the ledger into `parts` by `part(user)`: one for each wallet shard. The sums go
    /// to the first part (the audit only ever adds them up).
    pub(crate) fn split(self, parts: usize, part: impl Fn(UserId) -> usize) -> Vec<Ledger> {
        let mut ledgers: Vec<Ledger> = (0..parts).map(|_| Ledger::default()).collect();
        for (user, fen) in self.balances {
            ledgers[part(user)].balances.insert(user, fen);
        }
        for (op, done) in self.ops {
            ledgers[part(done.user)].ops.insert(op, done);
        }
        for (user, used) in self.days {
            ledgers[part(user)].days.insert(user, used);
        }
        for (user, setting) in self.cooling {
            ledgers[part(user)].cooling.insert(user, setting);
        }
        for (user, guardian) in self.guardians {
            ledgers[part(user)].guardians.insert(user, guardian);
        }
        ledgers[0].deposited = self.deposited;
        ledgers[0].withdrawn = self.withdrawn;
        ledgers
    }

    /// The ids of up to `max` operations applied before `cutoff`, due to be forgotten.
    pub(crate) fn ops_before(&self, cutoff: Timestamp, max: usize) -> Vec<OpId> {
        self.ops.iter().filter(|(_, d)| d.at < cutoff).map(|(&op, _)| op).take(max).collect()
    }

    /// Gives operations of records that did not carry their time (format version 1) the time
    /// `now`: they are remembered for a whole retention from the start that loaded them.
    pub(crate) fn stamp_unknown_times(&mut self, now: Timestamp) {
        self.ops.values_mut().filter(|d| d.at == Timestamp(0)).for_each(|d| d.at = now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1_000;
    const CAPS: DailyCaps = DailyCaps { sent_fen_max: 500, packets_max: 2 };

    /// Decides and applies, as a wallet shard does.
    fn deposit(l: &mut Ledger, op: u64, user: u64, fen: u64) -> Result<Amount, WalletError> {
        match l.decide_deposit(OpId(op), UserId(user), Amount::fen(fen), MAX, Timestamp(1))? {
            Decision::Fresh(record) => Ok(l.apply(&record).unwrap()),
            Decision::Repeat(balance) => Ok(balance),
        }
    }

    fn withdraw(l: &mut Ledger, op: u64, user: u64, fen: u64) -> Result<Amount, WalletError> {
        match l.decide_withdrawal(OpId(op), UserId(user), Amount::fen(fen), Timestamp(1))? {
            Decision::Fresh(record) => Ok(l.apply(&record).unwrap()),
            Decision::Repeat(balance) => Ok(balance),
        }
    }

    #[test]
    fn deposits_and_withdrawals_apply_once_per_op() {
        let mut l = Ledger::default();
        assert_eq!(deposit(&mut l, 1, 1, 500), Ok(Amount::fen(500)));
        let repeat = l.decide_deposit(OpId(1), UserId(1), Amount::fen(500), MAX, Timestamp(2));
        assert_eq!(repeat, Ok(Decision::Repeat(Amount::fen(500))));
        assert_eq!(deposit(&mut l, 1, 1, 500), Ok(Amount::fen(500)));
        assert_eq!(l.balance(UserId(1)), Amount::fen(500));
        assert_eq!(deposit(&mut l, 1, 1, 501), Err(WalletError::IdConflict { op: OpId(1) }));
        assert_eq!(withdraw(&mut l, 1, 1, 500), Err(WalletError::IdConflict { op: OpId(1) }));
        assert_eq!(withdraw(&mut l, 2, 1, 200), Ok(Amount::fen(300)));
        assert_eq!(withdraw(&mut l, 2, 1, 200), Ok(Amount::fen(300)));
        assert_eq!(l.totals(), Totals { balances: 300, deposited: 500, withdrawn: 200 });
    }

    #[test]
    fn refusals_change_nothing() {
        let mut l = Ledger::default();
        deposit(&mut l, 1, 1, 900).unwrap();
        let before = l.clone();
        assert_eq!(deposit(&mut l, 2, 1, 101), Err(WalletError::BalanceLimit { max: Amount::fen(1_000) }));
        assert_eq!(deposit(&mut l, 3, 1, 0), Err(WalletError::ZeroAmount));
        assert_eq!(
            withdraw(&mut l, 4, 1, 901),
            Err(WalletError::InsufficientFunds { balance: Amount::fen(900), needed: Amount::fen(901) })
        );
        let out = Outgoing { user: UserId(1), amount: Amount::fen(901), packet: true, day: 0 };
        assert_eq!(
            l.decide_send(out, DailyCaps { sent_fen_max: 10_000, ..CAPS }, None, Timestamp(1), 60).map(|d| d.opens_at),
            Err(SendRefusal::InsufficientFunds { balance: Amount::fen(900), needed: Amount::fen(901) })
        );
        assert_eq!(l, before);
        // A refused op id stays free: the retry can succeed once funds are there.
        assert!(deposit(&mut l, 2, 1, 100).is_ok());
    }

    #[test]
    fn apply_refuses_contradictions_and_changes_nothing() {
        let mut l = Ledger::default();
        let at = Timestamp(1);
        l.apply(&Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5), at }).unwrap();
        let before = l.clone();
        let overdraw = Record::Withdrawal { op: OpId(2), user: UserId(1), amount: Amount::fen(6), at };
        assert!(l.apply(&overdraw).unwrap_err().contains("does not fit"));
        let conflict = Record::Withdrawal { op: OpId(1), user: UserId(1), amount: Amount::fen(5), at };
        assert!(l.apply(&conflict).unwrap_err().contains("different fields"));
        assert_eq!(l, before);
    }

    #[test]
    fn retired_ids_are_forgotten_and_the_sums_stay() {
        let mut l = Ledger::default();
        deposit(&mut l, 1, 1, 500).unwrap();
        assert_eq!(l.ops_before(Timestamp(1), 10), vec![]);
        assert_eq!(l.ops_before(Timestamp(2), 10), vec![OpId(1)]);
        l.apply(&Record::Retired { packets: vec![], ops: vec![OpId(1), OpId(9)], transfers: vec![] }).unwrap();
        assert_eq!(l.totals(), Totals { balances: 500, deposited: 500, withdrawn: 0 });
        // The id is free again: the same fields are a new deposit now.
        assert_eq!(deposit(&mut l, 1, 1, 500), Ok(Amount::fen(1_000)));
    }

    #[test]
    fn credits_and_splitting_keep_the_sums() {
        let mut l = Ledger::default();
        deposit(&mut l, 1, 1, 900).unwrap();
        l.credit(Credit { user: UserId(2), amount: Amount::fen(150) });
        assert_eq!(l.balance(UserId(2)), Amount::fen(150));
        let parts = l.clone().split(3, |u| u.0 as usize % 3);
        let sum = parts.iter().map(Ledger::totals).fold(Totals::default(), |a, t| Totals {
            balances: a.balances + t.balances,
            deposited: a.deposited + t.deposited,
            withdrawn: a.withdrawn + t.withdrawn,
        });
        assert_eq!(sum, l.totals());
    }

    fn packet_sent(user: u64, fen: u64, day: u64) -> Record {
        use crate::record::{NewPacket, PacketSent};
        use crate::split::Split;
        let spec = NewPacket {
            id: crate::money::PacketId(fen),
            sender: UserId(user),
            group: crate::money::GroupId(1),
            split: Split::Fixed { each: Amount::fen(fen), shares: 1 },
            greeting: String::new(),
        };
        let at = Timestamp(day * 86_400_000);
        Record::PacketSent(PacketSent {
            spec,
            seed: 0,
            sent_at: at,
            expires_at: at,
            share_fen_max: 20_000,
            opens_at: at,
            day,
            approval: None,
        })
    }

    #[test]
    fn daily_caps_count_each_day_and_a_step_back_frees_nothing() {
        let mut l = Ledger::default();
        deposit(&mut l, 1, 1, 1_000).unwrap();
        let out = |fen, day| Outgoing { user: UserId(1), amount: Amount::fen(fen), packet: true, day };
        assert_eq!(l.decide_send(out(300, 5), CAPS, None, Timestamp(0), 60).map(|d| d.opens_at), Ok(Timestamp(0)));
        l.apply(&packet_sent(1, 300, 5)).unwrap();
        let over = SendRefusal::DailyLimit { used: Amount::fen(300), max: Amount::fen(500) };
        assert_eq!(l.decide_send(out(201, 5), CAPS, None, Timestamp(0), 60).map(|d| d.opens_at), Err(over));
        l.apply(&packet_sent(1, 200, 5)).unwrap();
        let packets = SendRefusal::DailyPacketLimit { used: 2, max: 2 };
        assert_eq!(l.decide_send(out(1, 5), CAPS, None, Timestamp(0), 60).map(|d| d.opens_at), Err(packets));
        // A transfer is not a packet: only the amount cap applies.
        let transfer = Outgoing { packet: false, ..out(1, 5) };
        assert!(matches!(
            l.decide_send(transfer, CAPS, None, Timestamp(0), 60).map(|d| d.opens_at),
            Err(SendRefusal::DailyLimit { .. })
        ));
        // The next day starts afresh; an earlier day (the clock stepped back) counts the later.
        assert!(l.decide_send(out(100, 6), CAPS, None, Timestamp(0), 60).map(|d| d.opens_at).is_ok());
        assert_eq!(l.decide_send(out(1, 4), CAPS, None, Timestamp(0), 60).map(|d| d.opens_at), Err(packets));
        assert_eq!(l.day_use(UserId(1), 5), DayUse { day: 5, sent_fen: 500, packets: 2 });
        assert_eq!(l.balance(UserId(1)), Amount::fen(500));
    }

    #[test]
    fn cooling_off_holds_sends_above_its_threshold() {
        let mut l = Ledger::default();
        deposit(&mut l, 1, 1, 1_000).unwrap();
        let setting = CoolingOff { threshold: Amount::fen(100), secs: 60 };
        l.apply(&Record::CoolingOffSet { user: UserId(1), setting, at: Timestamp(0) }).unwrap();
        let out = |fen| Outgoing { user: UserId(1), amount: Amount::fen(fen), packet: false, day: 0 };
        let caps = DailyCaps { sent_fen_max: 10_000, packets_max: 10 };
        assert_eq!(l.decide_send(out(100), caps, None, Timestamp(7), 60).map(|d| d.opens_at), Ok(Timestamp(7)));
        assert_eq!(l.decide_send(out(101), caps, None, Timestamp(7), 60).map(|d| d.opens_at), Ok(Timestamp(60_007)));
        let off = CoolingOff { threshold: Amount::ZERO, secs: 0 };
        l.apply(&Record::CoolingOffSet { user: UserId(1), setting: off, at: Timestamp(1) }).unwrap();
        assert_eq!(l.decide_send(out(101), caps, None, Timestamp(7), 60).map(|d| d.opens_at), Ok(Timestamp(7)));
        assert_eq!(l.cooling_offs().count(), 0);
    }
}
