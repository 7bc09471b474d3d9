//! The state a journal describes, rebuilt record by record: what recovery loads into a
//! restarting engine and what `hongbao audit` checks. Plain data and one fold, no runtime.
//!
//! Applying a record checks it against the state before it: a claim must take the next
//! position, fit the escrow and go to a member who has not claimed; a packet expires once; a
//! deposit or withdrawal with an id already applied is skipped (records are idempotent by
//! their ids). Anything else is a [`Violation`] naming the record.

use std::collections::{BTreeMap, HashMap};

use crate::clock::Timestamp;
use crate::journal::Record;
use crate::money::{Amount, GroupId, OpId, PacketId, UserId};
use crate::packet::{check_view, ClaimView, NewPacket, PacketState, PacketView};
use crate::split::{self, Split};

/// A record that contradicts the state before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The record's position in the journal, from 0.
    pub seq: u64,
    /// What is wrong.
    pub what: String,
}

/// A deposit or withdrawal as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedOp {
    /// True for a deposit.
    pub deposit: bool,
    /// The wallet.
    pub user: UserId,
    /// The amount.
    pub amount: Amount,
    /// The balance after it.
    pub balance_after: Amount,
}

/// A packet as the journal describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedPacket {
    /// What was sent.
    pub spec: NewPacket,
    /// The draw's seed.
    pub seed: u64,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Claims in order.
    pub claims: Vec<ClaimView>,
    /// The refund, once expired with money left.
    pub refunded: Option<Amount>,
}

impl ReplayedPacket {
    fn total(&self) -> u64 {
        self.spec.split.total().map_or(0, |t| t.as_fen())
    }

    /// Money still in escrow.
    pub fn escrow(&self) -> u64 {
        if self.refunded.is_some() {
            return 0;
        }
        self.total() - self.claims.iter().map(|c| c.amount.as_fen()).sum::<u64>()
    }

    /// The packet's state, its draw replayed up to its last claim.
    ///
    /// # Errors
    ///
    /// A description if a claim is not what the seeded draw gives at its position.
    pub fn state(&self, share_fen_max: u64) -> Result<PacketState, String> {
        PacketState::restore(
            self.spec.clone(),
            share_fen_max,
            self.seed,
            self.sent_at,
            self.expires_at,
            &self.claims,
            self.refunded,
        )
    }
}

/// The state of everything a journal recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replica {
    /// Balances by user.
    pub balances: HashMap<UserId, u64>,
    /// Deposits and withdrawals by id.
    pub ops: HashMap<OpId, AppliedOp>,
    /// Rosters by group.
    pub rosters: HashMap<GroupId, Vec<UserId>>,
    /// Every packet ever sent.
    pub packets: BTreeMap<PacketId, ReplayedPacket>,
    /// Sum of deposits.
    pub deposited: u64,
    /// Sum of withdrawals.
    pub withdrawn: u64,
    /// Records applied.
    pub records: u64,
}

impl Replica {
    fn balance(&mut self, user: UserId) -> &mut u64 {
        self.balances.entry(user).or_insert(0)
    }

    /// Applies the record at position `seq`.
    ///
    /// # Errors
    ///
    /// A [`Violation`] if the record contradicts the state; the state is then unchanged.
    pub fn apply(&mut self, seq: u64, record: &Record) -> Result<(), Violation> {
        let fail = |what: String| Err(Violation { seq, what });
        match record {
            Record::Deposit { op, user, amount } | Record::Withdrawal { op, user, amount } => {
                let deposit = matches!(record, Record::Deposit { .. });
                if let Some(done) = self.ops.get(op) {
                    if (done.deposit, done.user, done.amount) != (deposit, *user, *amount) {
                        return fail(format!("operation {op} applied twice with different fields"));
                    }
                    // Idempotent: applied once, counted as read.
                    self.records += 1;
                    return Ok(());
                }
                let balance = *self.balance(*user);
                let after = if deposit {
                    balance + amount.as_fen()
                } else if balance >= amount.as_fen() {
                    balance - amount.as_fen()
                } else {
                    return fail(format!("withdrawal {op} of {amount} from a balance of {}", Amount::fen(balance)));
                };
                *self.balance(*user) = after;
                if deposit {
                    self.deposited += amount.as_fen();
                } else {
                    self.withdrawn += amount.as_fen();
                }
                let applied = AppliedOp { deposit, user: *user, amount: *amount, balance_after: Amount::fen(after) };
                self.ops.insert(*op, applied);
            }
            Record::Roster { group, members } => {
                self.rosters.insert(*group, members.clone());
            }
            Record::PacketSent { packet, sender, group, split, seed, greeting, sent_at, expires_at } => {
                if self.packets.contains_key(packet) {
                    return fail(format!("packet {packet} sent twice"));
                }
                let total = split.total().map_or(0, |t| t.as_fen());
                let balance = *self.balance(*sender);
                if balance < total {
                    return fail(format!("packet {packet} escrows {total} fen from a balance of {balance}"));
                }
                *self.balance(*sender) = balance - total;
                let spec = NewPacket {
                    id: *packet,
                    sender: *sender,
                    group: *group,
                    split: split.clone(),
                    greeting: greeting.clone(),
                };
                let p = ReplayedPacket {
                    spec,
                    seed: *seed,
                    sent_at: *sent_at,
                    expires_at: *expires_at,
                    claims: Vec::new(),
                    refunded: None,
                };
                self.packets.insert(*packet, p);
            }
            Record::Claim { packet, user, amount, position, at } => {
                let Some(p) = self.packets.get_mut(packet) else {
                    return fail(format!("claim on unknown packet {packet}"));
                };
                if p.refunded.is_some() {
                    return fail(format!("claim on packet {packet} after its refund"));
                }
                if *position as usize != p.claims.len() + 1 || *position > p.spec.split.shares() {
                    return fail(format!(
                        "claim at position {position} of packet {packet} with {} claims",
                        p.claims.len()
                    ));
                }
                if p.claims.iter().any(|c| c.user == *user) {
                    return fail(format!("{user} paid twice by packet {packet}"));
                }
                if amount.is_zero() || amount.as_fen() > p.escrow() {
                    return fail(format!("claim of {amount} on packet {packet} with {} fen in escrow", p.escrow()));
                }
                p.claims.push(ClaimView { user: *user, amount: *amount, position: *position, at: *at });
                *self.balance(*user) += amount.as_fen();
            }
            Record::SoldOut { packet } => {
                let Some(p) = self.packets.get(packet) else {
                    return fail(format!("sold out on unknown packet {packet}"));
                };
                if p.claims.len() != p.spec.split.shares() as usize || p.escrow() != 0 {
                    return fail(format!("packet {packet} recorded sold out with shares left"));
                }
            }
            Record::Expired { packet, refund, .. } => {
                let Some(p) = self.packets.get_mut(packet) else {
                    return fail(format!("expiry of unknown packet {packet}"));
                };
                if p.refunded.is_some() {
                    return fail(format!("packet {packet} refunded twice"));
                }
                if p.escrow() != refund.as_fen() {
                    return fail(format!("packet {packet} refunds {refund} of {} fen in escrow", p.escrow()));
                }
                p.refunded = Some(*refund);
                let sender = p.spec.sender;
                *self.balance(sender) += refund.as_fen();
            }
        }
        self.records += 1;
        Ok(())
    }

    /// Sum of balances and of escrow.
    pub fn held(&self) -> (u64, u64) {
        (self.balances.values().sum(), self.packets.values().map(ReplayedPacket::escrow).sum())
    }

    /// Every check of the state as a whole: conservation, each packet's invariants, and each
    /// lucky packet's claims against the shares its seed derives. Empty when all hold.
    pub fn check(&self, share_fen_max: u64) -> Vec<String> {
        let mut problems = Vec::new();
        let (wallets, escrow) = self.held();
        if u128::from(wallets) + u128::from(escrow) + u128::from(self.withdrawn) != u128::from(self.deposited) {
            problems.push(format!(
                "not conserved: wallets {} + escrow {} != deposits {} - withdrawals {}",
                Amount::fen(wallets),
                Amount::fen(escrow),
                Amount::fen(self.deposited),
                Amount::fen(self.withdrawn)
            ));
        }
        for p in self.packets.values() {
            match p.state(share_fen_max) {
                Ok(state) => {
                    if let Err(e) = check_view(&state.view()) {
                        problems.push(e);
                    }
                }
                Err(e) => problems.push(e),
            }
            if let Split::Lucky { total, shares } = p.spec.split {
                let derived = split::lucky_shares(total.as_fen(), shares, share_fen_max, p.seed);
                if let Some(c) = p.claims.iter().find(|c| derived[c.position as usize - 1] != c.amount.as_fen()) {
                    problems
                        .push(format!("packet {}: claim {} is not the share its seed derives", p.spec.id, c.position));
                }
            }
        }
        problems
    }

    /// The view of a packet.
    pub fn view(&self, packet: PacketId, share_fen_max: u64) -> Option<PacketView> {
        self.packets.get(&packet).and_then(|p| p.state(share_fen_max).ok()).map(|s| s.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(id: u64, total: u64, shares: u32) -> Record {
        Record::PacketSent {
            packet: PacketId(id),
            sender: UserId(1),
            group: GroupId(1),
            split: Split::Lucky { total: Amount::fen(total), shares },
            seed: 9,
            greeting: String::new(),
            sent_at: Timestamp(0),
            expires_at: Timestamp(10),
        }
    }

    #[test]
    fn a_history_replays_and_conserves() {
        let cap = 20_000;
        let shares = split::lucky_shares(1_000, 3, cap, 9);
        let mut r = Replica::default();
        let history = [
            Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000) },
            Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000) }, // a retry: once
            sent(7, 1_000, 3),
            Record::Claim {
                packet: PacketId(7),
                user: UserId(2),
                amount: Amount::fen(shares[0]),
                position: 1,
                at: Timestamp(1),
            },
            Record::Expired { packet: PacketId(7), refund: Amount::fen(1_000 - shares[0]), at: Timestamp(10) },
            Record::Withdrawal { op: OpId(2), user: UserId(2), amount: Amount::fen(shares[0]) },
        ];
        for (seq, rec) in history.iter().enumerate() {
            r.apply(seq as u64, rec).unwrap();
        }
        assert_eq!(r.records, 6);
        assert_eq!(r.balances[&UserId(1)], 5_000 - shares[0]);
        assert_eq!(r.check(cap), Vec::<String>::new());
    }

    #[test]
    fn contradictions_are_named() {
        let mut r = Replica::default();
        r.apply(0, &Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000) }).unwrap();
        r.apply(1, &sent(7, 1_000, 3)).unwrap();
        let claim = |user, position, fen| Record::Claim {
            packet: PacketId(7),
            user: UserId(user),
            amount: Amount::fen(fen),
            position,
            at: Timestamp(1),
        };
        r.apply(2, &claim(2, 1, 10)).unwrap();
        assert!(r.apply(3, &claim(2, 2, 10)).unwrap_err().what.contains("paid twice"));
        assert!(r.apply(3, &claim(3, 5, 10)).unwrap_err().what.contains("position"));
        assert!(r.apply(3, &claim(3, 2, 5_000)).unwrap_err().what.contains("escrow"));
        assert_eq!(r.apply(3, &sent(7, 1, 1)).unwrap_err().seq, 3);
        r.apply(3, &Record::Expired { packet: PacketId(7), refund: Amount::fen(990), at: Timestamp(10) }).unwrap();
        assert!(r.apply(4, &Record::Expired { packet: PacketId(7), refund: Amount::ZERO, at: Timestamp(10) }).is_err());
        // The claim of 10 fen at position 1 is not what seed 9 draws.
        assert!(r.check(20_000).iter().any(|p| p.contains("seed")));
    }
}
