//! The state a journal describes, rebuilt record by record: what recovery loads into a
//! starting engine, what the journal writer snapshots, and what `hongbao audit` checks.
//!
//! [`Replica::apply`] holds no rule of its own: it hands each record to the owners the live
//! engine hands it to — the ledger (`Ledger::apply`, `Ledger::credit`), the packet
//! (`PacketState::apply`), the rosters (`roster::apply`) — so replay and the running engine
//! cannot disagree. A record that contradicts the state before it is refused, naming itself.
//!
//! The snapshot encoding of a replica is here too (the body of `HBSNAP06`; versions 1 to 5 are
//! read): sums, balances, operations, rosters, each packet as its send record, its claims, its
//! refund, when it closed and when it opened; then each user's latest day of sends, the
//! cooling-off settings, each transfer as its send record, its arrival and its settlement, the
//! operation log; then (version 4) whether the journal named its partition, and the partition's
//! remittances: its flows out and in, and those not yet acknowledged (version 5: as records,
//! and the packets sent from here to open elsewhere; version 6, the same layout: packets and
//! transfers, and whether each came back).

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::journal::{Fold, Restore};
use crate::ledger::{Credit, DayUse, Ledger, OpDone, Outgoing};
use crate::money::{Amount, GroupId, OpId, PacketId, TransferId, UserId};
use crate::oplog::OpLog;
use crate::org::OrgBook;
use crate::outbox::{Remittances, SendId};
use crate::packet::{ClaimView, PacketState, PacketStatus};
use crate::partition::Partition;
use crate::record::{
    self, put_u64s, ApprovalId, CoolingOff, DecodeError, Guardian, PacketSent, Reader, Record, TransferOutcome,
};
use crate::roster::{self, RosterBook};
use crate::split;
use crate::transfer::TransferState;

/// The state of everything a journal recorded.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    /// Every wallet, and the deposits and withdrawals applied to them.
    pub ledger: Ledger,
    /// Rosters by group.
    pub rosters: RosterBook,
    /// Every packet sent and not retired, by id.
    pub packets: BTreeMap<PacketId, PacketState>,
    /// Every transfer sent and not retired, by id.
    pub transfers: BTreeMap<TransferId, TransferState>,
    /// Every org.
    pub orgs: OrgBook,
    /// Every org's operation log.
    pub oplog: OpLog,
    /// The per-share cap of packets whose record does not carry theirs (format version 1).
    pub share_fen_max: u64,
    /// What this partition sent to and received from the others.
    pub remittances: Remittances,
    /// Whether the journal named its partition (its first record).
    pub partition_named: bool,
    /// Records applied.
    pub records: u64,
}

impl Replica {
    /// An empty replica, replaying packets of format version 1 with `share_fen_max`.
    pub(crate) fn new(share_fen_max: u64) -> Replica {
        Replica {
            ledger: Ledger::default(),
            rosters: RosterBook::new(),
            packets: BTreeMap::new(),
            transfers: BTreeMap::new(),
            orgs: OrgBook::default(),
            oplog: OpLog::new(crate::limits::Limits::default().op_log_retention_secs),
            share_fen_max,
            remittances: Remittances::new(Partition::whole()),
            partition_named: false,
            records: 0,
        }
    }

    /// This replica of `partition`'s journal: credits of wallets elsewhere are remitted.
    pub(crate) fn with_partition(mut self, partition: Partition) -> Replica {
        self.remittances = Remittances::new(partition);
        self
    }

    /// Why this replica cannot be its partition's state: records of an unpartitioned journal
    /// replayed as one partition of several.
    pub(crate) fn partition_mismatch(&self) -> Option<String> {
        let partition = self.remittances.partition;
        (!partition.is_whole() && self.records > 0 && !self.partition_named).then(|| {
            format!(
                "the journal does not name its partition: it was written by an unpartitioned engine and cannot be \
                 partition {} of {}",
                partition.index(),
                partition.count()
            )
        })
    }

    /// Lands a credit: in its wallet if this partition holds it, else as a remittance.
    fn credit(&mut self, credit: Credit) -> Result<(), String> {
        if self.remittances.partition.holds_user(credit.user) {
            self.ledger.try_credit(credit)
        } else {
            self.remittances.replayed(credit);
            Ok(())
        }
    }

    /// This replica keeping operation log entries `secs` seconds (the engine's setting, so a
    /// restart rebuilds the log the engine kept).
    pub(crate) fn with_log_retention(mut self, secs: u64) -> Replica {
        self.oplog = OpLog::new(secs);
        self
    }

    /// Applies one record.
    ///
    /// # Errors
    ///
    /// A description if the record contradicts the state; the state is then unchanged.
    pub(crate) fn apply_record(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::PacketSent(sent) => {
                let sent = sent.clone().with_legacy_cap(self.share_fen_max);
                self.openable(&sent)?;
                self.ledger.apply(record)?;
                self.packets.insert(sent.spec.id, PacketState::open(sent));
            }
            Record::Claim { packet, .. }
            | Record::SoldOut { packet }
            | Record::Expired { packet, .. }
            | Record::PacketOpened { packet, .. }
            | Record::PacketCancelled { packet, .. }
            | Record::PacketRecalled { packet, .. }
            | Record::Approved { subject: ApprovalId::Packet(packet), .. }
            | Record::Rejected { subject: ApprovalId::Packet(packet), .. } => {
                let state = self.packets.get_mut(packet).ok_or_else(|| format!("record of unknown packet {packet}"))?;
                if let Some(credit) = state.apply(record)? {
                    self.credit(credit)?;
                }
            }
            Record::TransferSent(sent) => {
                let id = sent.spec.id;
                if self.transfers.contains_key(&id) {
                    return Err(format!("transfer {id} sent twice"));
                }
                self.ledger.apply(record)?;
                self.transfers.insert(id, TransferState::open(sent.clone()));
            }
            Record::TransferArrived { transfer, .. }
            | Record::TransferSettled { transfer, .. }
            | Record::Approved { subject: ApprovalId::Transfer(transfer), .. }
            | Record::Rejected { subject: ApprovalId::Transfer(transfer), .. } => {
                let state =
                    self.transfers.get_mut(transfer).ok_or_else(|| format!("record of unknown transfer {transfer}"))?;
                if let Some(credit) = state.apply(record)? {
                    self.credit(credit)?;
                }
            }
            Record::Partitioned { index, count } => {
                let (mine, records) = (self.remittances.partition, self.records);
                if (mine.index(), mine.count()) != (*index, *count) {
                    return Err(format!(
                        "the journal is partition {index} of {count}; the engine serves partition {} of {}",
                        mine.index(),
                        mine.count()
                    ));
                }
                if records > 0 {
                    return Err("the partition is named after other records".into());
                }
                self.partition_named = true;
            }
            Record::PacketRemitted(_) | Record::TransferRemitted(_) => {
                // Checked first (sent once, placed elsewhere), then debited (which checks the
                // amount): a refused record changes nothing.
                let id = SendId::remitted(record).expect("a remitted send");
                let partition = self.remittances.partition;
                if self.remittances.awaits(id) || id.placed(partition) == partition.index() {
                    return Err(format!("{id:?} remitted twice, or to its own partition"));
                }
                self.ledger.apply(record)?;
                self.remittances.replayed_send(record)?;
            }
            Record::Received(remittance) => {
                // Checked first, and each kind's own check before its change: a refused
                // remittance changes nothing.
                if self.remittances.receivable(remittance).map_err(|e| e.to_string())? {
                    match (&remittance.packet, &remittance.transfer) {
                        // A send from here that went back: its sender's again, and a retry of
                        // it a new send.
                        _ if remittance.returned.is_some() => {
                            let out = Outgoing::carried(remittance).ok_or("a return carries a send")?;
                            self.ledger.returned(out)?;
                            self.remittances.came_back(remittance);
                        }
                        (Some(sent), _) => {
                            // Its total is in escrow here.
                            self.openable(sent)?;
                            self.packets.insert(sent.spec.id, PacketState::open((**sent).clone()));
                        }
                        (None, Some(sent)) => {
                            // Its amount is pending here.
                            let id = sent.spec.id;
                            if self.transfers.contains_key(&id) {
                                return Err(format!("transfer {id} sent twice"));
                            }
                            self.transfers.insert(id, TransferState::open((**sent).clone()));
                        }
                        (None, None) => {
                            self.ledger.try_credit(Credit { user: remittance.user, amount: remittance.amount })?
                        }
                    }
                    self.remittances.receive(remittance).map_err(|e| e.to_string())?;
                }
            }
            Record::Acknowledged { to, through } => self.remittances.acknowledged(*to, *through)?,
            Record::Returned { remittance, reason } => {
                if remittance.returned.is_some() || SendId::carried(remittance).is_none() {
                    return Err(format!("{remittance:?} returned, though it carries no send to this partition"));
                }
                if self.remittances.check(remittance).map_err(|e| e.to_string())? {
                    self.remittances.receive(remittance).map_err(|e| e.to_string())?;
                    // Back to its sender's partition, where it came from.
                    self.remittances.replayed_return(remittance, *reason);
                }
            }
            Record::Roster { .. } | Record::MembersAdded { .. } | Record::MembersRemoved { .. } => {
                roster::apply(&mut self.rosters, record);
            }
            Record::OrgCreated { .. } | Record::OrgPolicySet { .. } | Record::GroupAttached { .. } => {
                self.orgs.apply(record)?;
            }
            Record::Retired { packets, transfers, .. } => {
                // An id unknown here may be a send from here that came back meanwhile: retiring
                // it changes nothing. Money never leaves with a retirement.
                if let Some(id) =
                    packets.iter().find(|id| self.packets.get(id).is_some_and(|p| !p.status().is_closed()))
                {
                    return Err(format!("packet {id} retired while open"));
                }
                if let Some(id) =
                    transfers.iter().find(|id| self.transfers.get(id).is_some_and(|t| t.settled().is_none()))
                {
                    return Err(format!("transfer {id} retired while pending"));
                }
                packets.iter().for_each(|id| {
                    self.packets.remove(id);
                });
                self.remittances.retire(packets, transfers);
                transfers.iter().for_each(|id| {
                    self.transfers.remove(id);
                });
                self.ledger.apply(record)?;
            }
            _ => {
                self.ledger.apply(record)?;
            }
        }
        // Applied: the record is part of the history, and of the log if it concerns an org.
        self.oplog.observe(record);
        self.records += 1;
        Ok(())
    }

    /// Whether a packet sent here, or arrived from its sender's partition, may open: its id is
    /// free, and its cap can serve its split (a record is input: one it cannot serve is
    /// refused, never drawn).
    fn openable(&self, sent: &PacketSent) -> Result<(), String> {
        let id = sent.spec.id;
        if self.packets.contains_key(&id) {
            return Err(format!("packet {id} sent twice"));
        }
        split::check_servable(&sent.spec.split, sent.share_fen_max)
            .map_err(|e| format!("packet {id} cannot be drawn: {e}"))
    }

    /// Sums of balances, of escrow (open packets) and of pending money (packets cooling off,
    /// transfers not yet settled), in fen.
    pub(crate) fn held(&self) -> (u128, u128, u128) {
        let (mut escrow, mut pending) = (0u128, 0u128);
        for p in self.packets.values() {
            let fen = u128::from(p.escrow().as_fen());
            match p.status() {
                PacketStatus::CoolingOff { .. } | PacketStatus::AwaitingApproval { .. } => pending += fen,
                _ => escrow += fen,
            }
        }
        pending += self.transfers.values().map(|t| u128::from(t.pending().as_fen())).sum::<u128>();
        (u128::from(self.ledger.totals().balances), escrow, pending)
    }

    /// Each packet's status, counted.
    pub(crate) fn packet_counts(&self) -> PacketCounts {
        let mut counts = PacketCounts::default();
        for p in self.packets.values() {
            match p.status() {
                PacketStatus::CoolingOff { .. } | PacketStatus::AwaitingApproval { .. } => counts.cooling_off += 1,
                PacketStatus::SoldOut => counts.sold_out += 1,
                PacketStatus::Expired { .. } => counts.expired += 1,
                PacketStatus::Cancelled { .. } => counts.cancelled += 1,
                PacketStatus::Recalled { .. } => counts.recalled += 1,
                PacketStatus::Rejected { .. } => counts.cancelled += 1,
                _ => counts.open += 1,
            }
        }
        counts
    }

    /// Transfers counted: (pending, settled).
    pub(crate) fn transfer_counts(&self) -> (usize, usize) {
        let settled = self.transfers.values().filter(|t| t.settled().is_some()).count();
        (self.transfers.len() - settled, settled)
    }
}

/// Packets of a replica by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PacketCounts {
    pub open: usize,
    pub cooling_off: usize,
    pub sold_out: usize,
    pub expired: usize,
    pub cancelled: usize,
    pub recalled: usize,
}

impl Fold for Replica {
    fn apply(&mut self, _seq: u64, record: &Record) -> Result<(), String> {
        self.apply_record(record)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let totals = self.ledger.totals();
        put_u64s(out, &[totals.deposited, totals.withdrawn, self.records]);
        let mut balances: Vec<(UserId, u64)> = self.ledger.balances().collect();
        balances.sort_unstable();
        put_u64s(out, &[balances.len() as u64]);
        balances.iter().for_each(|(u, fen)| put_u64s(out, &[u.0, *fen]));
        let mut ops: Vec<(OpId, OpDone)> = self.ledger.ops().collect();
        ops.sort_unstable_by_key(|(op, _)| *op);
        put_u64s(out, &[ops.len() as u64]);
        for (op, d) in ops {
            put_u64s(out, &[op.0, u64::from(d.deposit), d.user.0, d.amount.as_fen(), d.balance_after.as_fen(), d.at.0]);
        }
        let mut rosters: Vec<_> = self.rosters.iter().collect();
        rosters.sort_unstable_by_key(|(g, _)| **g);
        put_u64s(out, &[rosters.len() as u64]);
        for (g, members) in rosters {
            let mut members: Vec<UserId> = members.iter().copied().collect();
            members.sort_unstable();
            put_u64s(out, &[g.0, members.len() as u64]);
            members.iter().for_each(|m| put_u64s(out, &[m.0]));
        }
        put_u64s(out, &[self.packets.len() as u64]);
        for p in self.packets.values() {
            record::encode_prefixed(&Record::PacketSent(p.sent().clone()), out);
            put_u64s(out, &[p.claims().len() as u64]);
            for c in p.claims() {
                put_u64s(out, &[c.user.0, c.amount.as_fen(), u64::from(c.position), c.at.0]);
            }
            let (how, refunded) = match p.status() {
                PacketStatus::Expired { refunded } => (REFUND_EXPIRED, refunded),
                PacketStatus::Cancelled { refunded } => (REFUND_CANCELLED, refunded),
                PacketStatus::Recalled { refunded } => (REFUND_RECALLED, refunded),
                PacketStatus::Rejected { refunded } => (REFUND_REJECTED, refunded),
                _ => (0, Amount::ZERO),
            };
            put_u64s(out, &[how, refunded.as_fen()]);
            put_u64s(out, &[p.closed_at().map_or(0, |t| t.0), p.opened_at().map_or(0, |t| t.0)]);
        }
        let mut days: Vec<(UserId, DayUse)> = self.ledger.days().collect();
        days.sort_unstable_by_key(|(u, _)| *u);
        put_u64s(out, &[days.len() as u64]);
        days.iter().for_each(|(u, d)| put_u64s(out, &[u.0, d.day, d.sent_fen, u64::from(d.packets)]));
        let mut cooling: Vec<(UserId, CoolingOff)> = self.ledger.cooling_offs().collect();
        cooling.sort_unstable_by_key(|(u, _)| *u);
        put_u64s(out, &[cooling.len() as u64]);
        cooling.iter().for_each(|(u, c)| put_u64s(out, &[u.0, c.threshold.as_fen(), c.secs]));
        let mut guardians: Vec<(UserId, Guardian)> = self.ledger.guardians().collect();
        guardians.sort_unstable_by_key(|(u, _)| *u);
        put_u64s(out, &[guardians.len() as u64]);
        guardians.iter().for_each(|(u, g)| put_u64s(out, &[u.0, g.guardian.0, g.above.as_fen()]));
        let orgs = self.orgs.records();
        put_u64s(out, &[orgs.len() as u64]);
        orgs.iter().for_each(|r| record::encode_prefixed(r, out));
        put_u64s(out, &[self.transfers.len() as u64]);
        for t in self.transfers.values() {
            record::encode_prefixed(&Record::TransferSent(t.sent().clone()), out);
            let settled = t.settled().map_or([0, 0], |(outcome, at)| [outcome_code(outcome), at.0]);
            put_u64s(out, &[t.approved_at().map_or(0, |at| at.0), t.arrived_at().map_or(0, |at| at.0)]);
            put_u64s(out, &settled);
        }
        self.oplog.encode(out);
        put_u64s(out, &[u64::from(self.partition_named)]);
        self.remittances.encode(out);
    }
}

/// How a snapshot's packet gave its escrow back.
const REFUND_EXPIRED: u64 = 1;
const REFUND_CANCELLED: u64 = 2;
const REFUND_RECALLED: u64 = 3;
const REFUND_REJECTED: u64 = 4;

fn outcome_code(outcome: TransferOutcome) -> u64 {
    match outcome {
        TransferOutcome::Accepted => 1,
        TransferOutcome::Declined => 2,
        TransferOutcome::Recalled => 3,
        TransferOutcome::Returned => 4,
        TransferOutcome::Rejected => 5,
    }
}

fn outcome_from_code(code: u64) -> Result<TransferOutcome, DecodeError> {
    Ok(match code {
        1 => TransferOutcome::Accepted,
        2 => TransferOutcome::Declined,
        3 => TransferOutcome::Recalled,
        4 => TransferOutcome::Returned,
        5 => TransferOutcome::Rejected,
        _ => return Err(DecodeError::Damaged("a snapshot's transfer settled in an unknown way")),
    })
}

/// A nonzero time, or none.
fn time(ms: u64) -> Option<Timestamp> {
    (ms != 0).then_some(Timestamp(ms))
}

impl Restore for Replica {
    fn decode(&self, version: u8, bytes: &[u8]) -> Result<Replica, DecodeError> {
        // Version 1 kept neither when an operation was applied nor when a packet closed;
        // version 3 added cooling-off, daily caps and transfers.
        let (timed, v3) = (version >= 2, version >= 3);
        let mut r = Reader::new(bytes);
        let (deposited, withdrawn, records) = (r.u64()?, r.u64()?, r.u64()?);
        let balances = (0..r.count(16)?).map(|_| Ok((UserId(r.u64()?), r.u64()?))).collect::<Result<Vec<_>, _>>()?;
        let ops = (0..r.count(40)?)
            .map(|_| {
                let op = OpId(r.u64()?);
                let deposit = r.u64()? == 1;
                let (user, amount, balance_after) = (UserId(r.u64()?), Amount::fen(r.u64()?), Amount::fen(r.u64()?));
                let at = Timestamp(if timed { r.u64()? } else { 0 });
                Ok((op, OpDone { deposit, user, amount, balance_after, at }))
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let ledger = Ledger::from_parts(balances, ops, deposited, withdrawn);
        let mut replica = Replica { ledger, records, ..Replica::new(self.share_fen_max) };
        replica.oplog = OpLog::new(self.oplog.retention_secs());
        for _ in 0..r.count(16)? {
            let group = GroupId(r.u64()?);
            let members = (0..r.count(8)?).map(|_| r.u64().map(UserId)).collect::<Result<_, _>>()?;
            replica.rosters.insert(group, members);
        }
        for _ in 0..r.count(24)? {
            let Record::PacketSent(sent) = record::decode_prefixed(&mut r)? else {
                return Err(DecodeError::Damaged("a snapshot's packet is not a send record"));
            };
            let claims = (0..r.count(32)?)
                .map(|_| {
                    let (user, amount) = (UserId(r.u64()?), Amount::fen(r.u64()?));
                    Ok(ClaimView { user, amount, position: r.u64()? as u32, at: Timestamp(r.u64()?) })
                })
                .collect::<Result<Vec<_>, DecodeError>>()?;
            let (how, refund) = (r.u64()?, Amount::fen(r.u64()?));
            let closed_at = Timestamp(if timed { r.u64()? } else { 0 });
            let opened_at = if v3 { time(r.u64()?) } else { None };
            let id = sent.spec.id;
            let sent = sent.with_legacy_cap(replica.share_fen_max);
            split::check_servable(&sent.spec.split, sent.share_fen_max)
                .map_err(|_| DecodeError::Damaged("a snapshot's packet cannot be drawn under its cap"))?;
            let mut state = PacketState::restore(sent, opened_at, &claims)
                .map_err(|_| DecodeError::Damaged("a snapshot's claims do not follow the packet's draw"))?;
            let refunded = match how {
                0 => None,
                REFUND_EXPIRED => Some(Record::Expired { packet: id, refund, at: closed_at }),
                REFUND_CANCELLED => Some(Record::PacketCancelled { packet: id, refund, at: closed_at }),
                // Who recalled and why is in the journal (and the operation log), not the state.
                REFUND_REJECTED => Some(Record::Rejected {
                    subject: ApprovalId::Packet(id),
                    by: None,
                    reason: String::new(),
                    at: closed_at,
                }),
                REFUND_RECALLED => Some(Record::PacketRecalled {
                    packet: id,
                    org: crate::money::OrgId(0),
                    by: UserId(0),
                    refund,
                    reason: String::new(),
                    at: closed_at,
                }),
                _ => return Err(DecodeError::Damaged("a snapshot's packet closed in an unknown way")),
            };
            if let Some(record) = refunded {
                state.apply(&record).map_err(|_| DecodeError::Damaged("a snapshot's refund is not the escrow"))?;
            }
            replica.packets.insert(id, state);
        }
        if v3 {
            decode_v3_tail(&mut r, &mut replica)?;
        }
        if version >= 4 {
            replica.partition_named = r.u64()? == 1;
            replica.remittances = self.remittances.decode(&mut r, version)?;
        } else if !self.remittances.partition.is_whole() {
            return Err(DecodeError::Damaged("a snapshot from before partitions cannot be a partition's"));
        }
        r.finish()?;
        Ok(replica)
    }
}

/// The sections version 3 added: days of use, cooling-off settings, orgs, transfers.
fn decode_v3_tail(r: &mut Reader<'_>, replica: &mut Replica) -> Result<(), DecodeError> {
    let days = (0..r.count(32)?)
        .map(|_| {
            let user = UserId(r.u64()?);
            let (day, sent_fen, packets) = (r.u64()?, r.u64()?, r.u64()?);
            let packets =
                u32::try_from(packets).map_err(|_| DecodeError::Damaged("a snapshot's day counts too much"))?;
            Ok((user, DayUse { day, sent_fen, packets }))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let cooling = (0..r.count(24)?)
        .map(|_| Ok((UserId(r.u64()?), CoolingOff { threshold: Amount::fen(r.u64()?), secs: r.u64()? })))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let guardians = (0..r.count(24)?)
        .map(|_| Ok((UserId(r.u64()?), Guardian { guardian: UserId(r.u64()?), above: Amount::fen(r.u64()?) })))
        .collect::<Result<Vec<_>, DecodeError>>()?;
    replica.ledger = std::mem::take(&mut replica.ledger).with_policies(days, cooling).with_guardians(guardians);
    for _ in 0..r.count(8)? {
        let record = record::decode_prefixed(r)?;
        let org_record =
            matches!(record, Record::OrgCreated { .. } | Record::OrgPolicySet { .. } | Record::GroupAttached { .. });
        if !org_record || replica.orgs.apply(&record).is_err() {
            return Err(DecodeError::Damaged("a snapshot's org records do not build an org"));
        }
    }
    for _ in 0..r.count(32)? {
        let Record::TransferSent(sent) = record::decode_prefixed(r)? else {
            return Err(DecodeError::Damaged("a snapshot's transfer is not a transfer record"));
        };
        let (approved, arrived, how, at) = (time(r.u64()?), time(r.u64()?), r.u64()?, r.u64()?);
        let settled = if how == 0 { None } else { Some((outcome_from_code(how)?, Timestamp(at))) };
        let state = TransferState::restore(sent, approved, arrived, settled)
            .map_err(|_| DecodeError::Damaged("a snapshot's transfer moved in a way it cannot"))?;
        replica.transfers.insert(state.id(), state);
    }
    replica.oplog = OpLog::decode(r, replica.oplog.retention_secs())?;
    Ok(())
}

/// The state a partition's log folds into: what a replicated journal keeps beside its log, to
/// snapshot it, and what an engine starts from ([`crate::Config::with_journal_state`]) instead
/// of replaying the whole log. Built from a snapshot plus the records after it, or from
/// nothing, with a configuration's partition and settings.
#[derive(Clone, Debug)]
pub struct Folded {
    pub(crate) replica: Replica,
}

/// Where a snapshot ends in its log, in the log's own terms: its position (a stream sequence,
/// say), and a hash of what is there, so that a snapshot is never taken for one of another
/// log that reached the same position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogMark {
    pub position: u64,
    pub hash: [u8; 32],
}

impl Folded {
    /// The state before any record, with `config`'s partition and settings.
    pub fn empty(config: &crate::Config) -> Folded {
        let replica = Replica::new(config.limits.share_fen_max)
            .with_log_retention(config.limits.op_log_retention_secs)
            .with_partition(config.partition);
        Folded { replica }
    }

    /// Applies the next record of the log.
    ///
    /// # Errors
    ///
    /// A description if the record contradicts the state; the state is then unchanged.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        self.replica.apply_record(record)
    }

    /// Records folded in, a snapshot's included.
    pub fn records(&self) -> u64 {
        self.replica.records
    }

    /// A snapshot of this state ending at `mark`: the format of the file journal's snapshots,
    /// sealed with a hash.
    pub fn snapshot(&self, mark: &LogMark) -> Vec<u8> {
        crate::journal::snapshot::encode(mark.position, &mark.hash, &self.replica)
    }

    /// The state a snapshot holds, read with `config`'s partition and settings, and where it
    /// ends.
    ///
    /// # Errors
    ///
    /// If the bytes are not a whole snapshot, or one of another partition.
    pub fn restore(config: &crate::Config, bytes: &[u8]) -> Result<(Folded, LogMark), DecodeError> {
        let empty = Folded::empty(config).replica;
        let snapshot = crate::journal::snapshot::decode(&empty, bytes)?;
        let mark = LogMark { position: snapshot.seq, hash: snapshot.last_hash };
        Ok((Folded { replica: snapshot.state }, mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NewPacket, PacketSent};
    use crate::split::Split;

    const CAP: u64 = 20_000;

    fn sent(id: u64, total: u64, shares: u32) -> Record {
        Record::PacketSent(PacketSent {
            spec: NewPacket {
                id: PacketId(id),
                sender: UserId(1),
                group: GroupId(1),
                split: Split::lucky(Amount::fen(total), shares),
                greeting: String::new(),
            },
            seed: 9,
            sent_at: Timestamp(0),
            expires_at: Timestamp(10),
            share_fen_max: CAP,
            opens_at: Timestamp(0),
            day: 0,
            approval: None,
        })
    }

    fn claim(user: u64, position: u32, fen: u64) -> Record {
        Record::Claim { packet: PacketId(7), user: UserId(user), amount: Amount::fen(fen), position, at: Timestamp(1) }
    }

    #[test]
    fn a_history_replays_conserves_and_snapshots() {
        let shares = split::lucky_shares(1_000, 3, CAP, 9);
        let mut r = Replica::new(CAP);
        let history = [
            Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000), at: Timestamp(0) },
            Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000), at: Timestamp(0) }, // once
            Record::Roster { group: GroupId(1), members: vec![UserId(1), UserId(2)] },
            sent(7, 1_000, 3),
            claim(2, 1, shares[0]),
            Record::Expired { packet: PacketId(7), refund: Amount::fen(1_000 - shares[0]), at: Timestamp(10) },
            Record::Withdrawal { op: OpId(2), user: UserId(2), amount: Amount::fen(shares[0]), at: Timestamp(11) },
        ];
        for rec in &history {
            r.apply_record(rec).unwrap();
        }
        assert_eq!(r.records, 7);
        assert_eq!(r.ledger.balance(UserId(1)), Amount::fen(5_000 - shares[0]));
        let (wallets, escrow, pending) = r.held();
        assert_eq!(wallets + escrow + pending, 5_000 - u128::from(shares[0]));
        let mut bytes = Vec::new();
        r.encode(&mut bytes);
        let back = Replica::new(CAP).decode(5, &bytes).unwrap();
        assert_eq!(back.ledger, r.ledger);
        assert_eq!(back.rosters, r.rosters);
        assert_eq!(back.records, r.records);
        let views = |x: &Replica| x.packets.values().map(PacketState::view).collect::<Vec<_>>();
        assert_eq!(views(&back), views(&r));
    }

    #[test]
    fn contradictions_are_refused_and_change_nothing() {
        let mut r = Replica::new(CAP);
        r.apply_record(&Record::Deposit { op: OpId(1), user: UserId(1), amount: Amount::fen(5_000), at: Timestamp(0) })
            .unwrap();
        r.apply_record(&sent(7, 1_000, 3)).unwrap();
        let first = split::lucky_shares(1_000, 3, CAP, 9)[0];
        r.apply_record(&claim(2, 1, first)).unwrap();
        let records = r.records;
        assert!(r.apply_record(&claim(2, 2, 10)).unwrap_err().contains("cannot happen"));
        assert!(r.apply_record(&claim(3, 5, 10)).unwrap_err().contains("position"));
        assert!(r.apply_record(&claim(3, 2, 5_000)).unwrap_err().contains("draw gives"));
        assert!(r.apply_record(&sent(7, 1, 1)).unwrap_err().contains("sent twice"));
        assert!(r.apply_record(&sent(8, 10_000, 3)).unwrap_err().contains("escrows"));
        let unknown = Record::SoldOut { packet: PacketId(9) };
        assert!(r.apply_record(&unknown).unwrap_err().contains("unknown packet"));
        assert_eq!(r.records, records);
        let refund = Amount::fen(1_000 - first);
        r.apply_record(&Record::Expired { packet: PacketId(7), refund, at: Timestamp(10) }).unwrap();
        let again = Record::Expired { packet: PacketId(7), refund: Amount::ZERO, at: Timestamp(10) };
        assert!(r.apply_record(&again).is_err());
    }
}
