//! The operation log of each org (rule 24): every admin action (org created, policy changed,
//! group attached, packet recalled) and every money movement of the org's packets (sent,
//! claimed, opened, cancelled, expired, recalled), as [`OperationEntry`]s.
//!
//! The log is a fold over the journal: [`OpLog::observe`] turns each record into entries, in
//! journal order, live (the engine's journal passes each record once it is durable, see
//! [`LoggedJournal`]) and on replay alike (`Replica`, `hongbao log`), so the log is exactly
//! what the hash-chained journal says — tamper-evident — and a restart rebuilds the same one.
//! Snapshots carry it, so the part of the history a snapshot replaced is kept.
//!
//! # Limits
//!
//! Entries older than `op_log_retention_secs` (180 days by default, like WeCom's admin log) are
//! dropped as new ones arrive; a query returns at most `op_log_page_max` entries.
//!
//! # Cost
//!
//! While no org exists, observing a record costs one atomic load: packets outside any org pay
//! nothing else. Afterwards, a record of a packet outside every org costs one lookup in a
//! sharded map.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::journal::{Completion, Journal, StorageFailure};
use crate::money::{Amount, GroupId, OrgId, PacketId, TransferId, UserId};
use crate::record::{put_u64s, DecodeError, Reader, Record};

/// What an operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OpKind {
    /// The org was created (the actor is its first admin).
    OrgCreated,
    /// An admin replaced the policy.
    PolicySet,
    /// An admin attached a group.
    GroupAttached,
    /// A member sent a packet in one of the org's groups.
    PacketSent,
    /// A packet held by its sender's cooling-off opened.
    PacketOpened,
    /// A member claimed a share.
    Claimed,
    /// The sender cancelled a packet during its cooling-off.
    PacketCancelled,
    /// A packet expired; its remainder went back to the sender.
    PacketExpired,
    /// An admin recalled a packet's remainder.
    PacketRecalled,
    /// An admin (or the sender's guardian) approved a packet waiting for approval.
    PacketApproved,
    /// A packet waiting for approval was rejected (the actor is the approver; at the deadline,
    /// the sender refunded).
    PacketRejected,
    /// A member sent a transfer under the org.
    TransferSent,
    /// An admin approved a transfer waiting for approval.
    TransferApproved,
    /// A transfer waiting for approval was rejected (at the deadline: the sender refunded).
    TransferRejected,
    /// The receiver accepted a transfer.
    TransferAccepted,
    /// The receiver declined a transfer (the sender refunded).
    TransferDeclined,
    /// The sender recalled a transfer.
    TransferRecalled,
    /// Nobody accepted a transfer in time (the sender refunded).
    TransferReturned,
}

impl OpKind {
    const ALL: [OpKind; 18] = [
        OpKind::OrgCreated,
        OpKind::PolicySet,
        OpKind::GroupAttached,
        OpKind::PacketSent,
        OpKind::PacketOpened,
        OpKind::Claimed,
        OpKind::PacketCancelled,
        OpKind::PacketExpired,
        OpKind::PacketRecalled,
        OpKind::PacketApproved,
        OpKind::PacketRejected,
        OpKind::TransferSent,
        OpKind::TransferApproved,
        OpKind::TransferRejected,
        OpKind::TransferAccepted,
        OpKind::TransferDeclined,
        OpKind::TransferRecalled,
        OpKind::TransferReturned,
    ];

    fn code(self) -> u64 {
        OpKind::ALL.iter().position(|&k| k == self).expect("every kind is listed") as u64
    }

    fn from_code(code: u64) -> Result<OpKind, DecodeError> {
        OpKind::ALL.get(code as usize).copied().ok_or(DecodeError::Damaged("an operation of an unknown kind"))
    }

    /// The kind's name, as `hongbao log` prints it.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::OrgCreated => "org_created",
            OpKind::PolicySet => "policy_set",
            OpKind::GroupAttached => "group_attached",
            OpKind::PacketSent => "packet_sent",
            OpKind::PacketOpened => "packet_opened",
            OpKind::Claimed => "claimed",
            OpKind::PacketCancelled => "packet_cancelled",
            OpKind::PacketExpired => "packet_expired",
            OpKind::PacketRecalled => "packet_recalled",
            OpKind::PacketApproved => "packet_approved",
            OpKind::PacketRejected => "packet_rejected",
            OpKind::TransferSent => "transfer_sent",
            OpKind::TransferApproved => "transfer_approved",
            OpKind::TransferRejected => "transfer_rejected",
            OpKind::TransferAccepted => "transfer_accepted",
            OpKind::TransferDeclined => "transfer_declined",
            OpKind::TransferRecalled => "transfer_recalled",
            OpKind::TransferReturned => "transfer_returned",
        }
    }
}

impl std::str::FromStr for OpKind {
    type Err = String;

    /// Parses a kind by its name (`claimed`, `packet_recalled`, …).
    fn from_str(s: &str) -> Result<OpKind, String> {
        OpKind::ALL.iter().copied().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = OpKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kind {s:?}; the kinds are {}", names.join(", "))
        })
    }
}

/// One operation of an org.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OperationEntry {
    /// Its number in the org's log: 1 for the org's creation, then one more per entry.
    pub seq: u64,
    /// When, by the engine's clock.
    pub at: Timestamp,
    /// Who did it: the admin, the sender, the grabber (for an expiry: the sender refunded).
    pub actor: UserId,
    /// What.
    pub kind: OpKind,
    /// The group it concerns, if any.
    pub group: Option<GroupId>,
    /// The packet it concerns, if any.
    pub packet: Option<PacketId>,
    /// The transfer it concerns, if any.
    pub transfer: Option<TransferId>,
    /// The money it moved, if any.
    pub amount: Option<Amount>,
    /// The reason an admin gave, if any.
    pub reason: Option<String>,
}

/// Which entries a query wants: a time window (`since` inclusive, `until` exclusive), an actor
/// and a kind if given, after the cursor `after` (an entry's `seq`), at most `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OpQuery {
    /// From this time (inclusive).
    pub since: Option<Timestamp>,
    /// Until this time (exclusive).
    pub until: Option<Timestamp>,
    /// Only this actor's.
    pub actor: Option<UserId>,
    /// Only this kind.
    pub kind: Option<OpKind>,
    /// Only entries after this `seq` (the `next` of the previous page).
    pub after: Option<u64>,
    /// At most this many (capped at `op_log_page_max`; 0 means the cap).
    pub limit: usize,
}

/// A page of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct OpPage {
    /// The entries, in `seq` order.
    pub entries: Vec<OperationEntry>,
    /// The cursor for the next page (`OpQuery::after`), if more entries may match.
    pub next: Option<u64>,
}

/// An org packet's context, while it may still move money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OrgPacket {
    org: OrgId,
    group: GroupId,
    sender: UserId,
    /// What a rejection refunds (nothing is claimed while a packet waits for approval).
    total: Amount,
}

/// Every org's log, as plain data: the fold of the journal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpLog {
    logs: BTreeMap<OrgId, (u64, VecDeque<OperationEntry>)>,
    group_org: HashMap<GroupId, OrgId>,
    packets: HashMap<PacketId, OrgPacket>,
    /// The org transfers the log follows: their org, sender and amount.
    transfers: HashMap<TransferId, (OrgId, UserId, Amount)>,
    /// Entries older than this many seconds before the newest are dropped.
    retention_secs: u64,
}

impl OpLog {
    pub(crate) fn new(retention_secs: u64) -> OpLog {
        OpLog { retention_secs, ..OpLog::default() }
    }

    /// How long entries are kept, in seconds.
    pub(crate) fn retention_secs(&self) -> u64 {
        self.retention_secs
    }

    /// This log keeping entries `secs` seconds from now on.
    pub(crate) fn with_retention(mut self, secs: u64) -> OpLog {
        self.retention_secs = secs;
        self
    }

    /// Whether any org exists (until then no record concerns the log).
    pub(crate) fn is_active(&self) -> bool {
        !self.logs.is_empty()
    }

    fn push(&mut self, org: OrgId, at: Timestamp, actor: UserId, kind: OpKind, detail: Detail) {
        let (last, entries) = self.logs.entry(org).or_default();
        *last += 1;
        let Detail { group, packet, transfer, amount, reason } = detail;
        entries.push_back(OperationEntry { seq: *last, at, actor, kind, group, packet, transfer, amount, reason });
        let cutoff = at.as_millis().saturating_sub(self.retention_secs.saturating_mul(1_000));
        while entries.front().is_some_and(|e| e.at.as_millis() < cutoff) {
            entries.pop_front();
        }
    }

    fn on_packet(
        &mut self,
        packet: PacketId,
        at: Timestamp,
        actor: Option<UserId>,
        kind: OpKind,
        amount: Option<Amount>,
    ) {
        if let Some(p) = self.packets.get(&packet).copied() {
            let detail = Detail { group: Some(p.group), packet: Some(packet), amount, ..Detail::default() };
            self.push(p.org, at, actor.unwrap_or(p.sender), kind, detail);
        }
    }

    /// Turns a record into the entries it makes, if it concerns an org. The one derivation of
    /// the log, live and on replay.
    pub(crate) fn observe(&mut self, record: &Record) {
        // A packet is logged where it opens: here for one sent here, or arrived from its
        // sender's partition.
        if let Some(sent) = record.opened_packet() {
            let (id, group, sender) = (sent.spec.id, sent.spec.group, sent.spec.sender);
            if let Some(&org) = self.group_org.get(&group) {
                let total = sent.spec.split.total().unwrap_or(Amount::ZERO);
                self.packets.insert(id, OrgPacket { org, group, sender, total });
                self.on_packet(id, sent.sent_at, Some(sender), OpKind::PacketSent, sent.spec.split.total());
            }
            return;
        }
        // So is a transfer: where it is held.
        if let Some(sent) = record.opened_transfer() {
            // Under an org this partition knows (one that arrives from a partition that knew
            // it first is logged where its org is known, live and on replay alike).
            if let Some(org) = sent.spec.org.filter(|org| self.logs.contains_key(org)) {
                let (id, from, amount) = (sent.spec.id, sent.spec.from, sent.spec.amount);
                self.transfers.insert(id, (org, from, amount));
                let detail = Detail { transfer: Some(id), amount: Some(amount), ..Detail::default() };
                self.push(org, sent.sent_at, from, OpKind::TransferSent, detail);
            }
            return;
        }
        match record {
            Record::OrgCreated { org, spec, at } => {
                let actor = spec.admins.iter().copied().min().unwrap_or(UserId(0));
                self.push(*org, *at, actor, OpKind::OrgCreated, Detail::default());
            }
            Record::OrgPolicySet { org, by, at, .. } => self.push(*org, *at, *by, OpKind::PolicySet, Detail::default()),
            Record::GroupAttached { org, group, by, at } => {
                self.group_org.insert(*group, *org);
                let detail = Detail { group: Some(*group), ..Detail::default() };
                self.push(*org, *at, *by, OpKind::GroupAttached, detail);
            }
            Record::Claim { packet, user, amount, at, .. } => {
                self.on_packet(*packet, *at, Some(*user), OpKind::Claimed, Some(*amount))
            }
            Record::PacketOpened { packet, at } => self.on_packet(*packet, *at, None, OpKind::PacketOpened, None),
            Record::PacketCancelled { packet, refund, at } => {
                self.on_packet(*packet, *at, None, OpKind::PacketCancelled, Some(*refund))
            }
            Record::Expired { packet, refund, at } => {
                self.on_packet(*packet, *at, None, OpKind::PacketExpired, Some(*refund))
            }
            // An admin action: logged in the org that allowed it, also for a packet sent before
            // its group was attached (whose earlier movements the log did not follow).
            Record::PacketRecalled { packet, org, by, refund, reason, at } => {
                let group = self.packets.get(packet).map(|p| p.group);
                let detail = Detail {
                    group,
                    packet: Some(*packet),
                    amount: Some(*refund),
                    reason: Some(reason.clone()),
                    transfer: None,
                };
                self.push(*org, *at, *by, OpKind::PacketRecalled, detail);
            }
            Record::Approved { subject: crate::record::ApprovalId::Packet(packet), by, at } => {
                self.on_packet(*packet, *at, Some(*by), OpKind::PacketApproved, None)
            }
            Record::Rejected { subject: crate::record::ApprovalId::Packet(packet), by, reason, at } => {
                if let Some(p) = self.packets.get(packet).copied() {
                    let reason = by.map(|_| reason.clone());
                    let detail = Detail {
                        group: Some(p.group),
                        packet: Some(*packet),
                        amount: Some(p.total),
                        reason,
                        transfer: None,
                    };
                    self.push(p.org, *at, by.unwrap_or(p.sender), OpKind::PacketRejected, detail);
                }
            }
            Record::TransferSettled { transfer, outcome, at } => {
                if let Some(&(org, from, amount)) = self.transfers.get(transfer) {
                    use crate::record::TransferOutcome as O;
                    let kind = match outcome {
                        O::Accepted => OpKind::TransferAccepted,
                        O::Declined => OpKind::TransferDeclined,
                        O::Recalled => OpKind::TransferRecalled,
                        O::Returned => OpKind::TransferReturned,
                        O::Rejected => OpKind::TransferRejected,
                    };
                    // Who acted is not in the record but follows from the outcome: the sender
                    // recalls, the receiver accepts or declines; a return is the sender's refund.
                    let detail = Detail { transfer: Some(*transfer), amount: Some(amount), ..Detail::default() };
                    self.push(org, *at, from, kind, detail);
                }
            }
            Record::Approved { subject: crate::record::ApprovalId::Transfer(transfer), by, at } => {
                if let Some(&(org, _, amount)) = self.transfers.get(transfer) {
                    let detail = Detail { transfer: Some(*transfer), amount: Some(amount), ..Detail::default() };
                    self.push(org, *at, *by, OpKind::TransferApproved, detail);
                }
            }
            Record::Rejected { subject: crate::record::ApprovalId::Transfer(transfer), by, reason, at } => {
                if let Some(&(org, from, amount)) = self.transfers.get(transfer) {
                    let reason = by.map(|_| reason.clone());
                    let detail =
                        Detail { transfer: Some(*transfer), amount: Some(amount), reason, ..Detail::default() };
                    self.push(org, *at, by.unwrap_or(from), OpKind::TransferRejected, detail);
                }
            }
            Record::Retired { packets, transfers, .. } => {
                packets.iter().for_each(|p| {
                    self.packets.remove(p);
                });
                transfers.iter().for_each(|t| {
                    self.transfers.remove(t);
                });
            }
            _ => {}
        }
    }

    /// A page of `org`'s log, leaving out entries from before `kept_from` (past their
    /// retention, even if no newer entry has trimmed them yet).
    pub(crate) fn query(&self, org: OrgId, q: &OpQuery, page_max: usize, kept_from: Timestamp) -> OpPage {
        let Some((_, entries)) = self.logs.get(&org) else { return OpPage::default() };
        let limit = if q.limit == 0 { page_max } else { q.limit.min(page_max) };
        let matches = |e: &&OperationEntry| {
            e.at >= kept_from
                && q.after.is_none_or(|after| e.seq > after)
                && q.since.is_none_or(|since| e.at >= since)
                && q.until.is_none_or(|until| e.at < until)
                && q.actor.is_none_or(|actor| e.actor == actor)
                && q.kind.is_none_or(|kind| e.kind == kind)
        };
        // Entries are in `seq` order: skip to the cursor by binary search, then filter.
        let start = q.after.map_or(0, |after| entries.partition_point(|e| e.seq <= after));
        let mut found: Vec<OperationEntry> =
            entries.range(start..).filter(matches).take(limit.saturating_add(1)).cloned().collect();
        let next = (found.len() > limit).then(|| {
            found.truncate(limit);
            found.last().map_or(0, |e| e.seq)
        });
        OpPage { entries: found, next }
    }

    /// Encodes the log (for snapshots).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let mut groups: Vec<_> = self.group_org.iter().collect();
        groups.sort_unstable();
        put_u64s(out, &[groups.len() as u64]);
        groups.iter().for_each(|(g, o)| put_u64s(out, &[g.0, o.0]));
        let mut packets: Vec<_> = self.packets.iter().collect();
        packets.sort_unstable_by_key(|(id, _)| **id);
        put_u64s(out, &[packets.len() as u64]);
        packets.iter().for_each(|(id, p)| put_u64s(out, &[id.0, p.org.0, p.group.0, p.sender.0, p.total.as_fen()]));
        let mut transfers: Vec<_> = self.transfers.iter().collect();
        transfers.sort_unstable_by_key(|(id, _)| **id);
        put_u64s(out, &[transfers.len() as u64]);
        transfers.iter().for_each(|(id, (org, from, amount))| put_u64s(out, &[id.0, org.0, from.0, amount.as_fen()]));
        put_u64s(out, &[self.logs.len() as u64]);
        for (org, (last, entries)) in &self.logs {
            put_u64s(out, &[org.0, *last, entries.len() as u64]);
            for e in entries {
                let opt = |v: Option<u64>| [u64::from(v.is_some()), v.unwrap_or(0)];
                put_u64s(out, &[e.seq, e.at.0, e.actor.0, e.kind.code()]);
                put_u64s(out, &opt(e.group.map(|g| g.0)));
                put_u64s(out, &opt(e.packet.map(|p| p.0)));
                put_u64s(out, &opt(e.transfer.map(|t| t.0)));
                put_u64s(out, &opt(e.amount.map(Amount::as_fen)));
                let reason = e.reason.as_deref().unwrap_or("");
                put_u64s(out, &[u64::from(e.reason.is_some()), reason.len() as u64]);
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }

    /// Decodes a log written by [`OpLog::encode`].
    pub(crate) fn decode(r: &mut Reader<'_>, retention_secs: u64) -> Result<OpLog, DecodeError> {
        let mut log = OpLog::new(retention_secs);
        for _ in 0..r.count(16)? {
            log.group_org.insert(GroupId(r.u64()?), OrgId(r.u64()?));
        }
        for _ in 0..r.count(40)? {
            let id = PacketId(r.u64()?);
            let (org, group, sender) = (OrgId(r.u64()?), GroupId(r.u64()?), UserId(r.u64()?));
            log.packets.insert(id, OrgPacket { org, group, sender, total: Amount::fen(r.u64()?) });
        }
        for _ in 0..r.count(32)? {
            let id = TransferId(r.u64()?);
            log.transfers.insert(id, (OrgId(r.u64()?), UserId(r.u64()?), Amount::fen(r.u64()?)));
        }
        for _ in 0..r.count(24)? {
            let (org, last) = (OrgId(r.u64()?), r.u64()?);
            let mut entries = VecDeque::new();
            for _ in 0..r.count(104)? {
                let (seq, at, actor, kind) =
                    (r.u64()?, Timestamp(r.u64()?), UserId(r.u64()?), OpKind::from_code(r.u64()?)?);
                let mut opt = || -> Result<Option<u64>, DecodeError> {
                    let (set, v) = (r.u64()?, r.u64()?);
                    Ok((set == 1).then_some(v))
                };
                let (group, packet) = (opt()?.map(GroupId), opt()?.map(PacketId));
                let (transfer, amount) = (opt()?.map(TransferId), opt()?.map(Amount::fen));
                let has_reason = r.u64()? == 1;
                let len = r.count(1)?;
                let text = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| DecodeError::BadText)?;
                let reason = has_reason.then_some(text);
                entries.push_back(OperationEntry { seq, at, actor, kind, group, packet, transfer, amount, reason });
            }
            log.logs.insert(org, (last, entries));
        }
        Ok(log)
    }
}

/// The optional parts of an entry.
#[derive(Default)]
struct Detail {
    group: Option<GroupId>,
    packet: Option<PacketId>,
    transfer: Option<TransferId>,
    amount: Option<Amount>,
    reason: Option<String>,
}

/// The live log: the fold of the records the engine's journal made durable.
pub(crate) struct LiveLog {
    log: Mutex<OpLog>,
    /// Set once an org exists: until then no record needs looking at.
    active: AtomicBool,
    /// The packets the log follows (sent in an org's group), so a record of any other packet
    /// is passed by without the lock.
    followed: DashMap<PacketId, ()>,
    /// The same for transfers sent under an org.
    followed_transfers: DashMap<TransferId, ()>,
}

impl LiveLog {
    pub(crate) fn new(log: OpLog) -> LiveLog {
        let active = AtomicBool::new(log.is_active());
        let followed = log.packets.keys().map(|&p| (p, ())).collect();
        let followed_transfers = log.transfers.keys().map(|&t| (t, ())).collect();
        LiveLog { log: Mutex::new(log), active, followed, followed_transfers }
    }

    /// Whether `record` may make an entry (cheap; `observe` decides for good).
    fn concerns(&self, record: &Record) -> bool {
        match record {
            // Org records always; and from the first creation's append on (not its completion:
            // records of the org may be appended before that), everything that may concern one.
            Record::OrgCreated { .. } => {
                self.active.store(true, Ordering::Release);
                return true;
            }
            Record::OrgPolicySet { .. } | Record::GroupAttached { .. } | Record::PacketRecalled { .. } => return true,
            _ => {}
        }
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        match (record.packet(), record.transfer()) {
            (Some(packet), _) if record.opened_packet().is_none() => self.followed.contains_key(&packet),
            (_, Some(_)) if record.opened_transfer().is_some_and(|sent| sent.spec.org.is_none()) => false,
            (_, Some(transfer)) if record.opened_transfer().is_none() => {
                self.followed_transfers.contains_key(&transfer)
            }
            _ => true,
        }
    }

    fn observe(&self, record: &Record) {
        let mut log = self.log.lock();
        log.observe(record);
        if let Some(sent) = record.opened_packet().filter(|sent| log.packets.contains_key(&sent.spec.id)) {
            self.followed.insert(sent.spec.id, ());
        }
        if let Some(sent) = record.opened_transfer().filter(|sent| log.transfers.contains_key(&sent.spec.id)) {
            self.followed_transfers.insert(sent.spec.id, ());
        }
        if let Record::Retired { packets, transfers, .. } = record {
            packets.iter().for_each(|p| {
                self.followed.remove(p);
            });
            transfers.iter().for_each(|t| {
                self.followed_transfers.remove(t);
            });
        }
    }

    /// A page of `org`'s log, as of `now`.
    pub(crate) fn query(&self, org: OrgId, q: &OpQuery, page_max: usize, now: Timestamp) -> OpPage {
        let log = self.log.lock();
        let kept_from = Timestamp(now.as_millis().saturating_sub(log.retention_secs.saturating_mul(1_000)));
        log.query(org, q, page_max, kept_from)
    }
}

/// The engine's journal with the log folded in: each record that concerns an org is observed
/// once it is durable, in journal order, before its completion runs.
pub(crate) struct LoggedJournal {
    pub(crate) inner: Arc<dyn Journal>,
    pub(crate) log: Arc<LiveLog>,
}

impl Journal for LoggedJournal {
    fn append(&self, record: Record, then: Completion) {
        if !self.log.concerns(&record) {
            return self.inner.append(record, then);
        }
        let (log, observed) = (Arc::clone(&self.log), record.clone());
        self.inner.append(
            record,
            Box::new(move || {
                log.observe(&observed);
                then();
            }),
        );
    }

    fn barrier(&self, then: Completion) {
        self.inner.barrier(then);
    }

    fn flush(&self) {
        self.inner.flush();
    }

    fn failure(&self) -> Option<StorageFailure> {
        self.inner.failure()
    }

    fn close(&self) {
        self.inner.close();
    }
}
