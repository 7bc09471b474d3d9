//! Records: every state change of the engine, as plain data, and their binary encoding.
//!
//! A [`Record`] is what an actor decided; the same record is applied to the live state, written
//! to the journal, and applied again by replay, snapshots and `hongbao audit` (see
//! `replay.rs`). [`NewPacket`] and [`PacketSent`] live here because a send *is* a record: the
//! request, its seed and its deadline, in one shape used everywhere.
//!
//! # Encoding
//!
//! A tag byte, then fixed-width little-endian fields, strings and lists prefixed by their
//! `u32` length. Compact (a claim is 37 bytes), stable (the tags and layouts below are the
//! format; a change needs a new tag), and decoded without trusting lengths (every read is
//! bounds-checked). [`Reader`] and [`put_u64s`] are the one byte reader and writer of the
//! crate; snapshots use them too.

use thiserror::Error;

use crate::clock::Timestamp;
use crate::money::{Amount, GroupId, OpId, OrgId, PacketId, TransferId, UserId};
use crate::split::{Draw, Split};

const DEPOSIT: u8 = 1;
const WITHDRAWAL: u8 = 2;
const ROSTER: u8 = 3;
const PACKET_SENT: u8 = 4;
const CLAIM: u8 = 5;
const SOLD_OUT: u8 = 6;
const EXPIRED: u8 = 7;
const MEMBERS_ADDED: u8 = 8;
const MEMBERS_REMOVED: u8 = 9;
/// A send that records its per-share cap (format version 2); tag 4 is the older send record
/// without it.
const PACKET_SENT_CAPPED: u8 = 10;
const RETIRED: u8 = 11;
/// Deposits and withdrawals with the time they were applied (format version 2); tags 1 and 2
/// are the older records without it.
const DEPOSIT_AT: u8 = 12;
const WITHDRAWAL_AT: u8 = 13;
/// A send that records when it opens and its day (format version 3).
const PACKET_SENT_OPENS: u8 = 14;
const PACKET_OPENED: u8 = 15;
const PACKET_CANCELLED: u8 = 16;
const TRANSFER_SENT: u8 = 17;
const TRANSFER_ARRIVED: u8 = 18;
const TRANSFER_SETTLED: u8 = 19;
const COOLING_OFF_SET: u8 = 20;
/// A retirement that lists settled transfers too (format version 3).
const RETIRED_TRANSFERS: u8 = 21;
const ORG_CREATED: u8 = 22;
const ORG_POLICY_SET: u8 = 23;
const GROUP_ATTACHED: u8 = 24;
const PACKET_RECALLED: u8 = 25;
const APPROVED: u8 = 26;
const REJECTED: u8 = 27;
const GUARDIAN_SET: u8 = 28;
/// A remittance from another partition, applied here (format version 3).
const RECEIVED: u8 = 29;
/// The partition a journal belongs to, its first record (format version 3).
const PARTITIONED: u8 = 30;
/// A send debited here whose packet opens in another partition; a remittance that carries a
/// packet to open; one that could not open and went back to its sender.
const PACKET_REMITTED: u8 = 31;
const RECEIVED_PACKET: u8 = 32;
const RETURNED: u8 = 33;
/// The remittances to a partition up to a number were acknowledged.
const ACKNOWLEDGED: u8 = 34;
/// A transfer debited here whose id places it in another partition.
const TRANSFER_REMITTED: u8 = 35;
/// A remittance that carries a transfer to its partition.
const RECEIVED_TRANSFER: u8 = 36;
/// A transfer that could not be held in its partition, and goes back to its sender.
const RETURNED_TRANSFER: u8 = 37;
/// A remittance that brings a packet or transfer that went back home to its sender's
/// partition, with the reason.
const RECEIVED_PACKET_BACK: u8 = 38;
const RECEIVED_TRANSFER_BACK: u8 = 39;
const RETURN_ID_TAKEN: u8 = 1;
const RETURN_PACKETS_FULL: u8 = 2;
const RETURN_TRANSFERS_FULL: u8 = 3;

const SUBJECT_PACKET: u8 = 1;
const SUBJECT_TRANSFER: u8 = 2;
const APPROVER_NONE: u8 = 0;
const APPROVER_ORG: u8 = 1;
const APPROVER_GUARDIAN: u8 = 2;

const RECALL_OFF: u8 = 0;
const RECALL_WHITELIST: u8 = 1;

const ARRIVAL_INSTANT: u8 = 1;
const ARRIVAL_DELAYED: u8 = 2;

/// The day offset of records written before sends recorded their day (UTC+8).
const LEGACY_DAY_OFFSET_SECS: i32 = 8 * 3_600;

/// Most ids one retirement record lists, packets, operations and transfers together (8 bytes
/// each: about 800 KB, so that it stays within the record bound and within one NATS message of
/// the default `max_payload`, 1 MiB).
pub(crate) const RETIRED_IDS_MAX: usize = 100_000;

const SPLIT_LUCKY: u8 = 1;
const SPLIT_FIXED: u8 = 2;
const SPLIT_EXCLUSIVE: u8 = 3;
/// A lucky split by the shuffled draw (format version 3).
const SPLIT_LUCKY_SHUFFLED: u8 = 4;

/// What a sender asks for. The same id with the same fields is the same send (a retry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NewPacket {
    /// Chosen by the caller, so that a retried send is applied once.
    pub id: PacketId,
    /// Who pays; must be a member of `group`.
    pub sender: UserId,
    /// Whose members may grab it.
    pub group: GroupId,
    /// How the total divides.
    pub split: Split,
    /// Shown with the packet (恭喜发财).
    pub greeting: String,
}

/// A packet as sent: the request with every parameter its shares depend on (the seed of its
/// draw, the per-share cap it was sent under) and its deadline. This is the payload of
/// [`Record::PacketSent`], and the part of every packet state that never changes: a journal
/// replays each packet as it was sent, whatever the engine's configuration is later.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PacketSent {
    /// What the sender asked for.
    pub spec: NewPacket,
    /// Seed of the lucky draw's random stream.
    pub seed: u64,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When its remainder is refunded.
    pub expires_at: Timestamp,
    /// The per-share cap, in fen, its shares are drawn under. Zero in a record written before
    /// the cap was recorded (format version 1): replay then uses the cap it is configured with.
    pub share_fen_max: u64,
    /// When it opens for grabs: the end of the sender's cooling-off, or `sent_at` when none
    /// applied. Its expiry counts from then.
    pub opens_at: Timestamp,
    /// The sender's day it counts against for the daily caps (see `Timestamp::day`).
    pub day: u64,
    /// If it waits for a second person's approval: who, and until when.
    pub approval: Option<Approval>,
}

/// Money on its way from one partition to another: a share won or a transfer accepted by a
/// member whose wallet is elsewhere (a credit of `user`), or a packet or transfer sent by a
/// member whose wallet is elsewhere than its id places it (`packet` or `transfer`: its amount,
/// from its sender, to be held where its id places it). It carries at most one of the two.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Remittance {
    /// The sending partition.
    pub from: u32,
    /// The receiving partition (the wallet's, or the packet's).
    pub to: u32,
    /// Its number among the remittances from `from` to `to`, from 1, in `from`'s journal order.
    pub seq: u64,
    /// Whose wallet it credits; for a packet, its sender.
    pub user: UserId,
    /// How much; for a packet, its total.
    pub amount: Amount,
    /// The packet it opens, if it carries one: then it credits no wallet.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub packet: Option<Box<PacketSent>>,
    /// The transfer it carries, if it carries one: then it credits no wallet.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub transfer: Option<Box<TransferSent>>,
    /// For a packet or transfer it carries, set when it brings it back to its sender's
    /// partition, from the partition of its id that could not take it in, and why: the
    /// amount is the sender's again.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub returned: Option<ReturnReason>,
}

impl Remittance {
    /// The remittance that carries `sent` to the partition of its id.
    pub(crate) fn of_packet(from: u32, to: u32, seq: u64, sent: PacketSent) -> Option<Remittance> {
        let (user, amount) = (sent.spec.sender, sent.spec.split.total()?);
        Some(Remittance { from, to, seq, user, amount, packet: Some(Box::new(sent)), transfer: None, returned: None })
    }

    /// The remittance that carries `sent` to the partition of its id.
    pub(crate) fn of_transfer(from: u32, to: u32, seq: u64, sent: TransferSent) -> Remittance {
        let (user, amount) = (sent.spec.from, sent.spec.amount);
        Remittance { from, to, seq, user, amount, packet: None, transfer: Some(Box::new(sent)), returned: None }
    }

    /// A credit of `user`'s wallet, carrying nothing.
    pub(crate) fn credit(from: u32, to: u32, seq: u64, user: UserId, amount: Amount) -> Remittance {
        Remittance { from, to, seq, user, amount, packet: None, transfer: None, returned: None }
    }
}

/// Why a packet or transfer that arrived from its sender's partition was not taken in, and its
/// amount went back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ReturnReason {
    /// Its id was taken by another packet.
    IdTaken,
    /// The partition had `open_packets_max` packets open.
    TooManyOpenPackets,
    /// The partition had `pending_transfers_max` transfers pending.
    TooManyPendingTransfers,
}

impl ReturnReason {
    fn tag(self) -> u8 {
        match self {
            ReturnReason::IdTaken => RETURN_ID_TAKEN,
            ReturnReason::TooManyOpenPackets => RETURN_PACKETS_FULL,
            ReturnReason::TooManyPendingTransfers => RETURN_TRANSFERS_FULL,
        }
    }

    fn from_tag(tag: u8) -> Result<ReturnReason, DecodeError> {
        Ok(match tag {
            RETURN_ID_TAKEN => ReturnReason::IdTaken,
            RETURN_PACKETS_FULL => ReturnReason::TooManyOpenPackets,
            RETURN_TRANSFERS_FULL => ReturnReason::TooManyPendingTransfers,
            tag => return Err(DecodeError::UnknownTag(tag)),
        })
    }
}

/// Who may approve a send that waits for a second person (rule 23): never its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", content = "id", rename_all = "snake_case"))]
pub enum Approver {
    /// Any admin of this org but the sender (the packet was sent in one of its groups above
    /// its `approval_above`).
    OrgAdmins(OrgId),
    /// The sender's guardian (亲情提醒; the send was above the guardian's threshold).
    Guardian(UserId),
}

impl Approver {
    /// Whether `by` may approve (or reject) for this approver; `is_admin` says whether a user
    /// is an admin of an org. The sender is refused before this is asked.
    pub(crate) fn admits(self, by: UserId, is_admin: impl Fn(OrgId, UserId) -> bool) -> bool {
        match self {
            Approver::OrgAdmins(org) => is_admin(org, by),
            Approver::Guardian(guardian) => guardian == by,
        }
    }
}

/// A send waiting for approval: who may approve it, and when it is rejected if nobody has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Approval {
    /// Who may approve.
    pub approver: Approver,
    /// Rejected, refunding the sender, if not approved by then.
    pub until: Timestamp,
}

/// A user's guardian: their sends (packets and transfers) above `above` wait for the
/// guardian's approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Guardian {
    /// Who approves.
    pub guardian: UserId,
    /// Sends above this wait.
    pub above: Amount,
}

/// What an approval is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", content = "id", rename_all = "snake_case"))]
pub enum ApprovalId {
    /// A packet.
    Packet(PacketId),
    /// A transfer.
    Transfer(TransferId),
}

/// When a transfer reaches its receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum Arrival {
    /// At once (after the sender's cooling-off, if one applies).
    Instant,
    /// After `secs` seconds (the product offers 2 h and 24 h), during which the sender may
    /// recall it.
    Delayed {
        /// The delay, at most `transfer_delay_secs_max`.
        secs: u64,
    },
}

/// What a sender asks for with a transfer (转账). The same id with the same fields is the same
/// transfer (a retry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NewTransfer {
    /// Chosen by the caller, so that a retried transfer is applied once.
    pub id: TransferId,
    /// Who pays.
    pub from: UserId,
    /// Who receives (once they accept).
    pub to: UserId,
    /// How much, at most `transfer_fen_max`.
    pub amount: Amount,
    /// At once, or after a delay during which the sender may recall it.
    pub arrival: Arrival,
    /// Shown with the transfer (房租), at most `transfer_note_bytes_max` bytes.
    pub note: String,
    /// The org it is sent under, if any: the sender must be a member of one of the org's
    /// groups, and the org's approval threshold, daily cap and operation log apply.
    #[cfg_attr(feature = "serde", serde(default))]
    pub org: Option<OrgId>,
}

/// A transfer as sent: the request and every deadline it will meet, all fixed when it is
/// sent. This is the payload of [`Record::TransferSent`] and [`Record::TransferRemitted`], and
/// what [`Remittance::transfer`] carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TransferSent {
    /// What the sender asked for.
    pub spec: NewTransfer,
    /// When it was sent (and debited).
    pub sent_at: Timestamp,
    /// The sender's day it counts against for the daily caps.
    pub day: u64,
    /// The end of the sender's cooling-off; `sent_at` when none applied.
    pub cooling_until: Timestamp,
    /// When it reaches the receiver: the cooling-off's end plus the delay.
    pub arrives_at: Timestamp,
    /// When it returns to the sender if the receiver has not accepted it.
    pub accept_until: Timestamp,
    /// If it waits for its sender's guardian: who, and until when. Its arrival and acceptance
    /// then count from the approval (the deadlines above shift by the wait).
    pub approval: Option<Approval>,
}

/// How a transfer settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum TransferOutcome {
    /// The receiver accepted: the money is theirs.
    Accepted,
    /// The receiver declined: the money went back to the sender.
    Declined,
    /// The sender recalled it before it arrived: the money went back to them.
    Recalled,
    /// Nobody accepted it in time: the money went back to the sender.
    Returned,
    /// Its approval was refused (or never came): the money went back to the sender.
    Rejected,
}

impl TransferOutcome {
    fn tag(self) -> u8 {
        match self {
            TransferOutcome::Accepted => 1,
            TransferOutcome::Declined => 2,
            TransferOutcome::Recalled => 3,
            TransferOutcome::Returned => 4,
            TransferOutcome::Rejected => 5,
        }
    }

    fn from_tag(tag: u8) -> Result<TransferOutcome, DecodeError> {
        Ok(match tag {
            1 => TransferOutcome::Accepted,
            2 => TransferOutcome::Declined,
            3 => TransferOutcome::Recalled,
            4 => TransferOutcome::Returned,
            5 => TransferOutcome::Rejected,
            tag => return Err(DecodeError::UnknownTag(tag)),
        })
    }
}

/// Where a transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum TransferStatus {
    /// Waiting for the sender's guardian to approve it until `until`; the sender may recall it.
    AwaitingApproval {
        /// Rejected, refunding the sender, if not approved by then.
        until: Timestamp,
    },
    /// Held by the sender's cooling-off until `until`; the sender may recall it.
    CoolingOff {
        /// The end of the cooling-off.
        until: Timestamp,
    },
    /// Delayed, on its way; the sender may recall it until `arrives_at`.
    InTransit {
        /// When it arrives.
        arrives_at: Timestamp,
    },
    /// Arrived; the receiver may accept or decline it until `until`, when it returns.
    AwaitingAcceptance {
        /// When it returns to the sender if nobody accepts it.
        until: Timestamp,
    },
    /// Accepted: the receiver has the money.
    Accepted,
    /// Declined: the sender has the money back.
    Declined,
    /// Recalled by the sender before it arrived.
    Recalled,
    /// Not accepted in time: the sender has the money back.
    Returned,
    /// Its approval was refused or never came: the sender has the money back.
    Rejected,
}

impl From<TransferOutcome> for TransferStatus {
    fn from(outcome: TransferOutcome) -> TransferStatus {
        match outcome {
            TransferOutcome::Accepted => TransferStatus::Accepted,
            TransferOutcome::Declined => TransferStatus::Declined,
            TransferOutcome::Recalled => TransferStatus::Recalled,
            TransferOutcome::Returned => TransferStatus::Returned,
            TransferOutcome::Rejected => TransferStatus::Rejected,
        }
    }
}

/// A user's cooling-off (冷静期): their sends (packets and transfers) above `threshold` are held
/// for `secs` seconds, during which they may cancel them. `secs: 0` turns it off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CoolingOff {
    /// Sends above this amount are held.
    pub threshold: Amount,
    /// How long, at most `cooling_off_secs_max`.
    pub secs: u64,
}

/// An enterprise as created: its admins (at least one) and its name. The same org id with the
/// same fields is the same creation (a retry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NewOrg {
    /// Who may change the org and act for it; at most `org_admins_max`.
    pub admins: Vec<UserId>,
    /// Its name, at most `org_name_bytes_max` bytes.
    pub name: String,
}

/// Whether, and for whose packets, the org's admins may recall the unclaimed remainder.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", content = "senders", rename_all = "snake_case"))]
pub enum RecallPolicy {
    /// Nobody's packets may be recalled (the default).
    #[default]
    Off,
    /// Packets sent by these members (at most `org_whitelist_max`) may be recalled.
    Whitelist(Vec<UserId>),
}

/// An org's policy. `Policy::default()` recalls nothing and adds no cap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Policy {
    /// Admin recall: off, or for a whitelist of senders.
    pub recall: RecallPolicy,
    /// Packets sent in the org's groups above this wait for the approval of an admin other
    /// than the sender (`Engine::approve`), and are rejected (refunded) after
    /// `approval_secs`.
    pub approval_above: Option<Amount>,
    /// Most a member may send in one day, in fen, when sending in one of the org's groups: a
    /// packet that would take their sends of the day (packets and transfers, everywhere) past
    /// it is refused with `SendError::OrgDailyLimit`, on top of the engine's own cap.
    pub daily_sent_fen_max: Option<u64>,
}

impl CoolingOff {
    /// When a send of `amount` at `now` opens: `now` unless this cooling-off holds it.
    pub(crate) fn opens_at(&self, amount: Amount, now: Timestamp) -> Timestamp {
        if self.secs > 0 && amount > self.threshold {
            now.plus_secs(self.secs)
        } else {
            now
        }
    }
}

impl PacketSent {
    /// This send with `cap` as its cap if its record did not carry one.
    pub(crate) fn with_legacy_cap(mut self, cap: u64) -> PacketSent {
        if self.share_fen_max == 0 {
            self.share_fen_max = cap;
        }
        self
    }
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// Money entered a wallet from outside.
    Deposit {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// When it was applied (zero in records of format version 1): its id is remembered
        /// for `op_retention_secs` from then.
        at: Timestamp,
    },
    /// Money left a wallet to the outside.
    Withdrawal {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// When it was applied (zero in records of format version 1).
        at: Timestamp,
    },
    /// A group's roster was replaced.
    Roster {
        /// The group.
        group: GroupId,
        /// Its members, sorted.
        members: Vec<UserId>,
    },
    /// Members joined a group.
    MembersAdded {
        /// The group.
        group: GroupId,
        /// Who joined, sorted.
        members: Vec<UserId>,
    },
    /// Members left a group.
    MembersRemoved {
        /// The group.
        group: GroupId,
        /// Who left, sorted.
        members: Vec<UserId>,
    },
    /// A packet was sent: its total left the sender's wallet for escrow.
    PacketSent(PacketSent),
    /// A member won a share; it moved from escrow to the member's wallet.
    Claim {
        /// The packet.
        packet: PacketId,
        /// The winner.
        user: UserId,
        /// The share.
        amount: Amount,
        /// 1 for the first share taken.
        position: u32,
        /// When.
        at: Timestamp,
    },
    /// The packet's last share was taken. Written by engines before format 2's last change;
    /// now derived from the last claim, and still read (and checked) on replay.
    SoldOut {
        /// The packet.
        packet: PacketId,
    },
    /// The packet expired; its remainder went back to the sender.
    Expired {
        /// The packet.
        packet: PacketId,
        /// The refund (zero is not recorded: a sold-out packet has nothing to refund).
        refund: Amount,
        /// When.
        at: Timestamp,
    },
    /// The sender's cooling-off ended: the packet opened for grabs.
    PacketOpened {
        /// The packet.
        packet: PacketId,
        /// When.
        at: Timestamp,
    },
    /// The sender cancelled the packet during its cooling-off (禁止领取): its total went back.
    PacketCancelled {
        /// The packet.
        packet: PacketId,
        /// The refund: the whole total (nobody could grab yet).
        refund: Amount,
        /// When.
        at: Timestamp,
    },
    /// A transfer was sent: its amount left the sender's wallet, pending until it settles.
    TransferSent(TransferSent),
    /// A transfer reached its receiver (the end of its delay or of the cooling-off).
    TransferArrived {
        /// The transfer.
        transfer: TransferId,
        /// When.
        at: Timestamp,
    },
    /// A transfer settled: accepted (credited to the receiver) or declined, recalled or
    /// returned (credited back to the sender).
    TransferSettled {
        /// The transfer.
        transfer: TransferId,
        /// How.
        outcome: TransferOutcome,
        /// When.
        at: Timestamp,
    },
    /// A user set their cooling-off.
    CoolingOffSet {
        /// The user.
        user: UserId,
        /// The setting, from now on.
        setting: CoolingOff,
        /// When.
        at: Timestamp,
    },
    /// An org was created.
    OrgCreated {
        /// The org.
        org: OrgId,
        /// Its admins and name.
        spec: NewOrg,
        /// When.
        at: Timestamp,
    },
    /// An admin replaced the org's policy.
    OrgPolicySet {
        /// The org.
        org: OrgId,
        /// The admin.
        by: UserId,
        /// The policy from now on.
        policy: Policy,
        /// When.
        at: Timestamp,
    },
    /// An admin attached a group to the org: its packets follow the org's policy.
    GroupAttached {
        /// The org.
        org: OrgId,
        /// The group.
        group: GroupId,
        /// The admin.
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// A second person approved a send waiting for approval: it opens (a packet) or goes on
    /// its way (a transfer).
    Approved {
        /// The send.
        subject: ApprovalId,
        /// The approver.
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// A send waiting for approval was rejected (by its approver, or by its deadline when `by`
    /// is `None`); its money went back to the sender.
    Rejected {
        /// The send.
        subject: ApprovalId,
        /// The approver who rejected it; `None` at the deadline.
        by: Option<UserId>,
        /// Why, as the approver said.
        reason: String,
        /// When.
        at: Timestamp,
    },
    /// A user set (or, with `None`, removed) their guardian.
    GuardianSet {
        /// The user.
        user: UserId,
        /// The guardian from now on.
        guardian: Option<Guardian>,
        /// When.
        at: Timestamp,
    },
    /// An org admin recalled a packet's unclaimed remainder; it went back to the sender.
    PacketRecalled {
        /// The packet.
        packet: PacketId,
        /// The org whose policy allowed it.
        org: OrgId,
        /// The admin.
        by: UserId,
        /// What went back (the escrow left; claimed shares stand).
        refund: Amount,
        /// Why, as the admin said.
        reason: String,
        /// When.
        at: Timestamp,
    },
    /// The journal belongs to partition `index` of `count`: the first record of a partition's
    /// journal. An engine configured otherwise refuses to start on it (placement depends on
    /// the count, so replaying under another one would credit wallets where they are not).
    Partitioned {
        /// The partition.
        index: u32,
        /// Of how many.
        count: u32,
    },
    /// A remittance from another partition was applied: a share won or a transfer accepted
    /// there by a member whose wallet is here (credited); a packet or transfer sent there whose
    /// id is here (opened, its total in escrow; held, its amount pending); or one sent from
    /// here that went back (`returned`: credited to its sender, and no longer counted against
    /// their day). Applied once: a repeat of its number changes nothing.
    Received(Remittance),
    /// A packet was sent here by a member whose wallet is here, and its id places it in another
    /// partition: its total left the sender's wallet, and goes there as a numbered remittance
    /// that opens it.
    PacketRemitted(PacketSent),
    /// The remittances from here to partition `to` numbered up to `through` are safe beyond
    /// this partition (applied there, or stored durably on their way): a restart need not
    /// offer them again.
    Acknowledged {
        /// The receiving partition.
        to: u32,
        /// The highest number acknowledged.
        through: u64,
    },
    /// A transfer was sent from this partition by a member whose wallet is here, and its id
    /// places it in another partition: its amount left the sender's wallet, and goes there as
    /// a numbered remittance that holds it there until it settles.
    TransferRemitted(TransferSent),
    /// A remittance carrying a packet or a transfer was applied but could not be taken in here:
    /// its amount goes back to its sender as a remittance of its own.
    Returned {
        /// What arrived.
        remittance: Remittance,
        /// Why it did not open.
        reason: ReturnReason,
    },
    /// Closed packets, settled transfers and operation ids past their retention were dropped:
    /// from memory and from later snapshots. A retired packet or transfer id is unknown from
    /// then on, and a retired operation id may be used again.
    Retired {
        /// Closed packets dropped.
        packets: Vec<PacketId>,
        /// Operation ids forgotten.
        ops: Vec<OpId>,
        /// Settled transfers dropped.
        transfers: Vec<TransferId>,
    },
}

impl Record {
    /// The record's encoding, as the file journal frames it (without the frame): what a
    /// journal of another kind stores.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self, &mut out);
        out
    }

    /// The record `bytes` encode.
    ///
    /// # Errors
    ///
    /// If they are not one whole record of this format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, DecodeError> {
        decode(bytes)
    }

    /// The packet a record is about, if any.
    pub fn packet(&self) -> Option<PacketId> {
        match self {
            Record::PacketSent(sent) | Record::PacketRemitted(sent) => Some(sent.spec.id),
            Record::Received(Remittance { packet: Some(sent), .. })
            | Record::Returned { remittance: Remittance { packet: Some(sent), .. }, .. } => Some(sent.spec.id),
            Record::Claim { packet, .. }
            | Record::SoldOut { packet }
            | Record::Expired { packet, .. }
            | Record::PacketOpened { packet, .. }
            | Record::PacketCancelled { packet, .. }
            | Record::PacketRecalled { packet, .. } => Some(*packet),
            Record::Approved { subject: ApprovalId::Packet(packet), .. }
            | Record::Rejected { subject: ApprovalId::Packet(packet), .. } => Some(*packet),
            _ => None,
        }
    }

    /// The packet a record opens in the journal's partition, if any: one sent here, or one
    /// that arrived from its sender's partition.
    pub fn opened_packet(&self) -> Option<&PacketSent> {
        match self {
            Record::PacketSent(sent) => Some(sent),
            Record::Received(Remittance { packet: Some(sent), returned: None, .. }) => Some(sent),
            _ => None,
        }
    }

    /// The transfer a record takes in to the journal's partition, if any: one sent here, or
    /// one that arrived from its sender's partition.
    pub fn opened_transfer(&self) -> Option<&TransferSent> {
        match self {
            Record::TransferSent(sent) => Some(sent),
            Record::Received(Remittance { transfer: Some(sent), returned: None, .. }) => Some(sent),
            _ => None,
        }
    }

    /// The transfer a record is about, if any.
    pub fn transfer(&self) -> Option<TransferId> {
        match self {
            Record::TransferSent(sent) | Record::TransferRemitted(sent) => Some(sent.spec.id),
            Record::Received(Remittance { transfer: Some(sent), .. })
            | Record::Returned { remittance: Remittance { transfer: Some(sent), .. }, .. } => Some(sent.spec.id),
            Record::TransferArrived { transfer, .. } | Record::TransferSettled { transfer, .. } => Some(*transfer),
            Record::Approved { subject: ApprovalId::Transfer(transfer), .. }
            | Record::Rejected { subject: ApprovalId::Transfer(transfer), .. } => Some(*transfer),
            _ => None,
        }
    }
}

/// Bytes that are not what they claim to be: a record, or a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes ended inside a field.
    #[error("truncated")]
    Truncated,
    /// An unknown record or split tag.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A greeting that is not UTF-8.
    #[error("greeting is not UTF-8")]
    BadText,
    /// Bytes left over after the record.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A checksum or magic that does not match.
    #[error("{0}")]
    Damaged(&'static str),
}

/// A remittance's numbers, then its packet or transfer (a remittance that carries one has its
/// sender and amount as its user and amount) or its wallet and amount.
fn put_remittance(out: &mut Vec<u8>, r: &Remittance) {
    out.extend_from_slice(&r.from.to_le_bytes());
    out.extend_from_slice(&r.to.to_le_bytes());
    put_u64s(out, &[r.seq]);
    match (&r.packet, &r.transfer) {
        (Some(sent), _) => put_packet_sent(out, sent),
        (None, Some(sent)) => put_transfer_sent(out, sent),
        (None, None) => put_u64s(out, &[r.user.0, r.amount.as_fen()]),
    }
}

/// What a remittance carries, for its tag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carries {
    Credit,
    Packet,
    Transfer,
}

impl Carries {
    fn of(r: &Remittance) -> Carries {
        match (&r.packet, &r.transfer) {
            (Some(_), _) => Carries::Packet,
            (None, Some(_)) => Carries::Transfer,
            (None, None) => Carries::Credit,
        }
    }
}

/// A transfer as sent (the body of [`TRANSFER_SENT`] and [`TRANSFER_REMITTED`], and what a
/// remittance carrying a transfer holds).
fn put_transfer_sent(out: &mut Vec<u8>, sent: &TransferSent) {
    let TransferSent { spec, sent_at, day, cooling_until, arrives_at, accept_until, approval } = sent;
    put_u64s(out, &[spec.id.0, spec.from.0, spec.to.0, spec.amount.as_fen()]);
    match spec.arrival {
        Arrival::Instant => out.push(ARRIVAL_INSTANT),
        Arrival::Delayed { secs } => {
            out.push(ARRIVAL_DELAYED);
            put_u64s(out, &[secs]);
        }
    }
    put_u64s(out, &[sent_at.0, *day, cooling_until.0, arrives_at.0, accept_until.0]);
    put_approval(out, approval);
    put_u64s(out, &[u64::from(spec.org.is_some()), spec.org.map_or(0, |o| o.0)]);
    put_text(out, &spec.note);
}

/// A packet as sent (the body of [`PACKET_SENT_OPENS`]).
fn put_packet_sent(out: &mut Vec<u8>, sent: &PacketSent) {
    let PacketSent { spec, seed, sent_at, expires_at, share_fen_max, opens_at, day, approval } = sent;
    put_u64s(out, &[spec.id.0, spec.sender.0, spec.group.0, *seed, sent_at.0, expires_at.0, *share_fen_max]);
    put_u64s(out, &[opens_at.0, *day]);
    put_approval(out, approval);
    match spec.split {
        Split::Lucky { total, shares, draw } => {
            out.push(match draw {
                Draw::Shuffled => SPLIT_LUCKY_SHUFFLED,
                _ => SPLIT_LUCKY,
            });
            put_u64s(out, &[total.as_fen(), u64::from(shares)]);
        }
        Split::Fixed { each, shares } => {
            out.push(SPLIT_FIXED);
            put_u64s(out, &[each.as_fen(), u64::from(shares)]);
        }
        Split::Exclusive { to, amount } => {
            out.push(SPLIT_EXCLUSIVE);
            put_u64s(out, &[to.0, amount.as_fen()]);
        }
    }
    put_text(out, &spec.greeting);
}

/// Appends each value as 8 little-endian bytes.
pub(crate) fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn put_approval(out: &mut Vec<u8>, approval: &Option<Approval>) {
    match approval {
        None => out.push(APPROVER_NONE),
        Some(Approval { approver, until }) => {
            let (tag, id) = match approver {
                Approver::OrgAdmins(org) => (APPROVER_ORG, org.0),
                Approver::Guardian(user) => (APPROVER_GUARDIAN, user.0),
            };
            out.push(tag);
            put_u64s(out, &[id, until.0]);
        }
    }
}

fn put_subject(out: &mut Vec<u8>, subject: &ApprovalId) {
    let (tag, id) = match subject {
        ApprovalId::Packet(p) => (SUBJECT_PACKET, p.0),
        ApprovalId::Transfer(t) => (SUBJECT_TRANSFER, t.0),
    };
    out.push(tag);
    put_u64s(out, &[id]);
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_ids(out: &mut Vec<u8>, ids: &[UserId]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    ids.iter().for_each(|m| out.extend_from_slice(&m.0.to_le_bytes()));
}

/// Appends the encoding of `record` to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Deposit { op, user, amount, at } => {
            out.push(DEPOSIT_AT);
            put_u64s(out, &[op.0, user.0, amount.as_fen(), at.0]);
        }
        Record::Withdrawal { op, user, amount, at } => {
            out.push(WITHDRAWAL_AT);
            put_u64s(out, &[op.0, user.0, amount.as_fen(), at.0]);
        }
        Record::Retired { packets, ops, transfers } => {
            out.push(RETIRED_TRANSFERS);
            let lists: [Vec<u64>; 3] = [
                packets.iter().map(|p| p.0).collect(),
                ops.iter().map(|o| o.0).collect(),
                transfers.iter().map(|t| t.0).collect(),
            ];
            for ids in lists {
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                put_u64s(out, &ids);
            }
        }
        Record::PacketOpened { packet, at } => {
            out.push(PACKET_OPENED);
            put_u64s(out, &[packet.0, at.0]);
        }
        Record::PacketCancelled { packet, refund, at } => {
            out.push(PACKET_CANCELLED);
            put_u64s(out, &[packet.0, refund.as_fen(), at.0]);
        }
        Record::TransferSent(sent) => {
            out.push(TRANSFER_SENT);
            put_transfer_sent(out, sent);
        }
        Record::TransferRemitted(sent) => {
            out.push(TRANSFER_REMITTED);
            put_transfer_sent(out, sent);
        }
        Record::TransferArrived { transfer, at } => {
            out.push(TRANSFER_ARRIVED);
            put_u64s(out, &[transfer.0, at.0]);
        }
        Record::TransferSettled { transfer, outcome, at } => {
            out.push(TRANSFER_SETTLED);
            put_u64s(out, &[transfer.0]);
            out.push(outcome.tag());
            put_u64s(out, &[at.0]);
        }
        Record::CoolingOffSet { user, setting, at } => {
            out.push(COOLING_OFF_SET);
            put_u64s(out, &[user.0, setting.threshold.as_fen(), setting.secs, at.0]);
        }
        Record::OrgCreated { org, spec, at } => {
            out.push(ORG_CREATED);
            put_u64s(out, &[org.0, at.0]);
            put_ids(out, &spec.admins);
            put_text(out, &spec.name);
        }
        Record::OrgPolicySet { org, by, policy, at } => {
            out.push(ORG_POLICY_SET);
            put_u64s(out, &[org.0, by.0, at.0]);
            match &policy.recall {
                RecallPolicy::Off => out.push(RECALL_OFF),
                RecallPolicy::Whitelist(senders) => {
                    out.push(RECALL_WHITELIST);
                    put_ids(out, senders);
                }
            }
            for cap in [policy.approval_above.map(Amount::as_fen), policy.daily_sent_fen_max] {
                put_u64s(out, &[u64::from(cap.is_some()), cap.unwrap_or(0)]);
            }
        }
        Record::GroupAttached { org, group, by, at } => {
            out.push(GROUP_ATTACHED);
            put_u64s(out, &[org.0, group.0, by.0, at.0]);
        }
        Record::Approved { subject, by, at } => {
            out.push(APPROVED);
            put_subject(out, subject);
            put_u64s(out, &[by.0, at.0]);
        }
        Record::Rejected { subject, by, reason, at } => {
            out.push(REJECTED);
            put_subject(out, subject);
            put_u64s(out, &[u64::from(by.is_some()), by.map_or(0, |b| b.0), at.0]);
            put_text(out, reason);
        }
        Record::GuardianSet { user, guardian, at } => {
            out.push(GUARDIAN_SET);
            put_u64s(out, &[user.0, at.0, u64::from(guardian.is_some())]);
            put_u64s(out, &[guardian.map_or(0, |g| g.guardian.0), guardian.map_or(0, |g| g.above.as_fen())]);
        }
        Record::PacketRecalled { packet, org, by, refund, reason, at } => {
            out.push(PACKET_RECALLED);
            put_u64s(out, &[packet.0, org.0, by.0, refund.as_fen(), at.0]);
            put_text(out, reason);
        }
        Record::Roster { group, members }
        | Record::MembersAdded { group, members }
        | Record::MembersRemoved { group, members } => {
            out.push(match record {
                Record::Roster { .. } => ROSTER,
                Record::MembersAdded { .. } => MEMBERS_ADDED,
                _ => MEMBERS_REMOVED,
            });
            put_u64s(out, &[group.0]);
            put_ids(out, members);
        }
        Record::PacketSent(sent) => {
            out.push(PACKET_SENT_OPENS);
            put_packet_sent(out, sent);
        }
        Record::PacketRemitted(sent) => {
            out.push(PACKET_REMITTED);
            put_packet_sent(out, sent);
        }
        Record::Claim { packet, user, amount, position, at } => {
            out.push(CLAIM);
            put_u64s(out, &[packet.0, user.0, amount.as_fen()]);
            out.extend_from_slice(&position.to_le_bytes());
            put_u64s(out, &[at.0]);
        }
        Record::SoldOut { packet } => {
            out.push(SOLD_OUT);
            put_u64s(out, &[packet.0]);
        }
        Record::Expired { packet, refund, at } => {
            out.push(EXPIRED);
            put_u64s(out, &[packet.0, refund.as_fen(), at.0]);
        }
        Record::Partitioned { index, count } => {
            out.push(PARTITIONED);
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        Record::Received(r) => {
            out.push(match (Carries::of(r), r.returned) {
                (Carries::Credit, _) => RECEIVED,
                (Carries::Packet, None) => RECEIVED_PACKET,
                (Carries::Transfer, None) => RECEIVED_TRANSFER,
                (Carries::Packet, Some(_)) => RECEIVED_PACKET_BACK,
                (Carries::Transfer, Some(_)) => RECEIVED_TRANSFER_BACK,
            });
            if let (Carries::Packet | Carries::Transfer, Some(reason)) = (Carries::of(r), r.returned) {
                out.push(reason.tag());
            }
            put_remittance(out, r);
        }
        Record::Acknowledged { to, through } => {
            out.push(ACKNOWLEDGED);
            out.extend_from_slice(&to.to_le_bytes());
            put_u64s(out, &[*through]);
        }
        Record::Returned { remittance, reason } => {
            out.push(if Carries::of(remittance) == Carries::Transfer { RETURNED_TRANSFER } else { RETURNED });
            out.push(reason.tag());
            put_remittance(out, remittance);
        }
    }
}

/// A bounds-checked cursor over bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A `u64` count of items of at least `item_bytes` each, refused if the bytes left cannot
    /// hold them: a damaged count never becomes a huge allocation.
    pub(crate) fn count(&mut self, item_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        self.check_room(n, item_bytes)?;
        Ok(n)
    }

    fn check_room(&self, n: usize, item_bytes: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < n.saturating_mul(item_bytes) {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }

    fn approval(&mut self) -> Result<Option<Approval>, DecodeError> {
        let approver = match self.u8()? {
            APPROVER_NONE => return Ok(None),
            APPROVER_ORG => Approver::OrgAdmins(OrgId(self.u64()?)),
            APPROVER_GUARDIAN => Approver::Guardian(UserId(self.u64()?)),
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        Ok(Some(Approval { approver, until: Timestamp(self.u64()?) }))
    }

    /// A packet as sent, in the layout of record `tag` (older ones recorded less).
    fn packet_sent(&mut self, tag: u8) -> Result<PacketSent, DecodeError> {
        let (id, sender, group) = (PacketId(self.u64()?), UserId(self.u64()?), GroupId(self.u64()?));
        let (seed, sent_at, expires_at) = (self.u64()?, Timestamp(self.u64()?), Timestamp(self.u64()?));
        let share_fen_max = if tag == PACKET_SENT { 0 } else { self.u64()? };
        // Sends before cooling-off opened at once and did not record their day.
        let (opens_at, day, approval) = match tag {
            PACKET_SENT_OPENS => (Timestamp(self.u64()?), self.u64()?, self.approval()?),
            _ => (sent_at, sent_at.day(LEGACY_DAY_OFFSET_SECS), None),
        };
        let split = match self.u8()? {
            SPLIT_LUCKY => Split::lucky(Amount::fen(self.u64()?), self.u64()? as u32),
            SPLIT_LUCKY_SHUFFLED => Split::shuffled(Amount::fen(self.u64()?), self.u64()? as u32),
            SPLIT_FIXED => Split::Fixed { each: Amount::fen(self.u64()?), shares: self.u64()? as u32 },
            SPLIT_EXCLUSIVE => Split::Exclusive { to: UserId(self.u64()?), amount: Amount::fen(self.u64()?) },
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        let greeting = self.text()?;
        let spec = NewPacket { id, sender, group, split, greeting };
        Ok(PacketSent { spec, seed, sent_at, expires_at, share_fen_max, opens_at, day, approval })
    }

    /// What [`put_remittance`] wrote, carrying what `carries` says.
    fn remittance(&mut self, carries: Carries) -> Result<Remittance, DecodeError> {
        let (from, to, seq) = (self.u32()?, self.u32()?, self.u64()?);
        match carries {
            Carries::Packet => Remittance::of_packet(from, to, seq, self.packet_sent(PACKET_SENT_OPENS)?)
                .ok_or(DecodeError::Damaged("a packet whose total overflows")),
            Carries::Transfer => Ok(Remittance::of_transfer(from, to, seq, self.transfer_sent()?)),
            Carries::Credit => Ok(Remittance::credit(from, to, seq, UserId(self.u64()?), Amount::fen(self.u64()?))),
        }
    }

    /// What [`put_transfer_sent`] wrote.
    fn transfer_sent(&mut self) -> Result<TransferSent, DecodeError> {
        let (id, from, to, amount) =
            (TransferId(self.u64()?), UserId(self.u64()?), UserId(self.u64()?), Amount::fen(self.u64()?));
        let arrival = match self.u8()? {
            ARRIVAL_INSTANT => Arrival::Instant,
            ARRIVAL_DELAYED => Arrival::Delayed { secs: self.u64()? },
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        let (sent_at, day) = (Timestamp(self.u64()?), self.u64()?);
        let (cooling_until, arrives_at, accept_until) =
            (Timestamp(self.u64()?), Timestamp(self.u64()?), Timestamp(self.u64()?));
        let approval = self.approval()?;
        let (has_org, org) = (self.u64()?, OrgId(self.u64()?));
        let org = (has_org == 1).then_some(org);
        let spec = NewTransfer { org, id, from, to, amount, arrival, note: self.text()? };
        Ok(TransferSent { spec, sent_at, day, cooling_until, arrives_at, accept_until, approval })
    }

    fn subject(&mut self) -> Result<ApprovalId, DecodeError> {
        Ok(match self.u8()? {
            SUBJECT_PACKET => ApprovalId::Packet(PacketId(self.u64()?)),
            SUBJECT_TRANSFER => ApprovalId::Transfer(TransferId(self.u64()?)),
            tag => return Err(DecodeError::UnknownTag(tag)),
        })
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| DecodeError::BadText)
    }

    fn ids(&mut self) -> Result<Vec<UserId>, DecodeError> {
        let n = self.u32()? as usize;
        self.check_room(n, 8)?;
        (0..n).map(|_| self.u64().map(UserId)).collect()
    }

    /// Whether every byte was read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decodes one record that fills `bytes` exactly.
///
/// # Errors
///
/// [`DecodeError`] for a truncated, unknown or over-long payload.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader::new(bytes);
    let record = decode_from(&mut r)?;
    r.finish()?;
    Ok(record)
}

fn decode_from(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    Ok(match r.u8()? {
        tag @ (DEPOSIT | DEPOSIT_AT | WITHDRAWAL | WITHDRAWAL_AT) => {
            let (op, user, amount) = (OpId(r.u64()?), UserId(r.u64()?), Amount::fen(r.u64()?));
            let at = Timestamp(if matches!(tag, DEPOSIT_AT | WITHDRAWAL_AT) { r.u64()? } else { 0 });
            match tag {
                DEPOSIT | DEPOSIT_AT => Record::Deposit { op, user, amount, at },
                _ => Record::Withdrawal { op, user, amount, at },
            }
        }
        tag @ (RETIRED | RETIRED_TRANSFERS) => {
            let packets = r.ids()?.into_iter().map(|id| PacketId(id.0)).collect();
            let ops = r.ids()?.into_iter().map(|id| OpId(id.0)).collect();
            let transfers = match tag {
                RETIRED_TRANSFERS => r.ids()?.into_iter().map(|id| TransferId(id.0)).collect(),
                _ => Vec::new(),
            };
            Record::Retired { packets, ops, transfers }
        }
        PACKET_OPENED => Record::PacketOpened { packet: PacketId(r.u64()?), at: Timestamp(r.u64()?) },
        PACKET_CANCELLED => Record::PacketCancelled {
            packet: PacketId(r.u64()?),
            refund: Amount::fen(r.u64()?),
            at: Timestamp(r.u64()?),
        },
        TRANSFER_SENT => Record::TransferSent(r.transfer_sent()?),
        TRANSFER_REMITTED => Record::TransferRemitted(r.transfer_sent()?),
        TRANSFER_ARRIVED => Record::TransferArrived { transfer: TransferId(r.u64()?), at: Timestamp(r.u64()?) },
        TRANSFER_SETTLED => Record::TransferSettled {
            transfer: TransferId(r.u64()?),
            outcome: TransferOutcome::from_tag(r.u8()?)?,
            at: Timestamp(r.u64()?),
        },
        ORG_CREATED => {
            let (org, at) = (OrgId(r.u64()?), Timestamp(r.u64()?));
            let admins = r.ids()?;
            Record::OrgCreated { org, spec: NewOrg { admins, name: r.text()? }, at }
        }
        ORG_POLICY_SET => {
            let (org, by, at) = (OrgId(r.u64()?), UserId(r.u64()?), Timestamp(r.u64()?));
            let recall = match r.u8()? {
                RECALL_OFF => RecallPolicy::Off,
                RECALL_WHITELIST => RecallPolicy::Whitelist(r.ids()?),
                tag => return Err(DecodeError::UnknownTag(tag)),
            };
            let mut cap = || -> Result<Option<u64>, DecodeError> {
                let (set, value) = (r.u64()?, r.u64()?);
                Ok((set == 1).then_some(value))
            };
            let (approval_above, daily_sent_fen_max) = (cap()?.map(Amount::fen), cap()?);
            Record::OrgPolicySet { org, by, policy: Policy { recall, approval_above, daily_sent_fen_max }, at }
        }
        GROUP_ATTACHED => Record::GroupAttached {
            org: OrgId(r.u64()?),
            group: GroupId(r.u64()?),
            by: UserId(r.u64()?),
            at: Timestamp(r.u64()?),
        },
        APPROVED => Record::Approved { subject: r.subject()?, by: UserId(r.u64()?), at: Timestamp(r.u64()?) },
        REJECTED => {
            let subject = r.subject()?;
            let (set, by, at) = (r.u64()?, UserId(r.u64()?), Timestamp(r.u64()?));
            Record::Rejected { subject, by: (set == 1).then_some(by), reason: r.text()?, at }
        }
        GUARDIAN_SET => {
            let (user, at, set) = (UserId(r.u64()?), Timestamp(r.u64()?), r.u64()?);
            let (guardian, above) = (UserId(r.u64()?), Amount::fen(r.u64()?));
            Record::GuardianSet { user, guardian: (set == 1).then_some(Guardian { guardian, above }), at }
        }
        PACKET_RECALLED => {
            let (packet, org) = (PacketId(r.u64()?), OrgId(r.u64()?));
            let (by, refund, at) = (UserId(r.u64()?), Amount::fen(r.u64()?), Timestamp(r.u64()?));
            Record::PacketRecalled { packet, org, by, refund, reason: r.text()?, at }
        }
        COOLING_OFF_SET => {
            let user = UserId(r.u64()?);
            let setting = CoolingOff { threshold: Amount::fen(r.u64()?), secs: r.u64()? };
            Record::CoolingOffSet { user, setting, at: Timestamp(r.u64()?) }
        }
        ROSTER => Record::Roster { group: GroupId(r.u64()?), members: r.ids()? },
        MEMBERS_ADDED => Record::MembersAdded { group: GroupId(r.u64()?), members: r.ids()? },
        MEMBERS_REMOVED => Record::MembersRemoved { group: GroupId(r.u64()?), members: r.ids()? },
        tag @ (PACKET_SENT | PACKET_SENT_CAPPED | PACKET_SENT_OPENS) => Record::PacketSent(r.packet_sent(tag)?),
        PACKET_REMITTED => Record::PacketRemitted(r.packet_sent(PACKET_SENT_OPENS)?),
        CLAIM => Record::Claim {
            packet: PacketId(r.u64()?),
            user: UserId(r.u64()?),
            amount: Amount::fen(r.u64()?),
            position: r.u32()?,
            at: Timestamp(r.u64()?),
        },
        SOLD_OUT => Record::SoldOut { packet: PacketId(r.u64()?) },
        EXPIRED => {
            Record::Expired { packet: PacketId(r.u64()?), refund: Amount::fen(r.u64()?), at: Timestamp(r.u64()?) }
        }
        PARTITIONED => Record::Partitioned { index: r.u32()?, count: r.u32()? },
        RECEIVED => Record::Received(r.remittance(Carries::Credit)?),
        RECEIVED_PACKET => Record::Received(r.remittance(Carries::Packet)?),
        RECEIVED_TRANSFER => Record::Received(r.remittance(Carries::Transfer)?),
        tag @ (RECEIVED_PACKET_BACK | RECEIVED_TRANSFER_BACK) => {
            let reason = ReturnReason::from_tag(r.u8()?)?;
            let carries = if tag == RECEIVED_PACKET_BACK { Carries::Packet } else { Carries::Transfer };
            Record::Received(Remittance { returned: Some(reason), ..r.remittance(carries)? })
        }
        ACKNOWLEDGED => Record::Acknowledged { to: r.u32()?, through: r.u64()? },
        tag @ (RETURNED | RETURNED_TRANSFER) => {
            let reason = ReturnReason::from_tag(r.u8()?)?;
            let remittance = r.remittance(if tag == RETURNED { Carries::Packet } else { Carries::Transfer })?;
            Record::Returned { remittance, reason }
        }
        tag => return Err(DecodeError::UnknownTag(tag)),
    })
}

/// Encodes a record with its length in front, for containers of many records (snapshots).
pub(crate) fn encode_prefixed(record: &Record, out: &mut Vec<u8>) {
    let at = out.len();
    put_u64s(out, &[0]);
    encode(record, out);
    let len = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// Decodes a record written by [`encode_prefixed`].
pub(crate) fn decode_prefixed(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    let len = r.count(1)?;
    decode(r.take(len)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sent(id: u64, split: Split, greeting: &str, seed: u64) -> Record {
        Record::PacketSent(PacketSent {
            spec: NewPacket {
                id: PacketId(id),
                sender: UserId(1),
                group: GroupId(7),
                split,
                greeting: greeting.into(),
            },
            seed,
            sent_at: Timestamp(5),
            expires_at: Timestamp(86_400_005),
            share_fen_max: 20_000,
            opens_at: Timestamp(5),
            day: Timestamp(5).day(LEGACY_DAY_OFFSET_SECS),
            approval: None,
        })
    }

    /// A packet sent under today's format, cooling off and waiting for approval.
    fn remitted(id: u64) -> PacketSent {
        let Record::PacketSent(mut sent) = sent(id, Split::Fixed { each: Amount::fen(7), shares: 2 }, "远方", 3)
        else {
            unreachable!("`sent` makes a `PacketSent`")
        };
        sent.opens_at = Timestamp(600);
        sent.approval = Some(Approval { approver: Approver::Guardian(UserId(8)), until: Timestamp(900) });
        sent
    }

    /// A transfer sent under an org, delayed, waiting for its sender's guardian.
    fn transfer_remitted(id: u64) -> TransferSent {
        TransferSent {
            spec: NewTransfer {
                org: Some(OrgId(4)),
                id: TransferId(id),
                from: UserId(3),
                to: UserId(4),
                amount: Amount::fen(250),
                arrival: Arrival::Delayed { secs: 60 },
                note: "远方".into(),
            },
            sent_at: Timestamp(20),
            day: 1,
            cooling_until: Timestamp(30),
            arrives_at: Timestamp(90),
            accept_until: Timestamp(1_000),
            approval: Some(Approval { approver: Approver::Guardian(UserId(9)), until: Timestamp(500) }),
        }
    }

    pub(crate) fn samples() -> Vec<Record> {
        vec![
            Record::Deposit { op: OpId(1), user: UserId(2), amount: Amount::fen(3), at: Timestamp(4) },
            Record::Withdrawal { op: OpId(u64::MAX), user: UserId(0), amount: Amount::fen(u64::MAX), at: Timestamp(5) },
            Record::Retired { packets: vec![PacketId(1), PacketId(2)], ops: vec![OpId(3)], transfers: vec![] },
            Record::Retired { packets: vec![], ops: vec![], transfers: vec![TransferId(4)] },
            Record::Roster { group: GroupId(7), members: vec![UserId(1), UserId(9)] },
            Record::Roster { group: GroupId(8), members: vec![] },
            Record::MembersAdded { group: GroupId(7), members: vec![UserId(3)] },
            Record::MembersRemoved { group: GroupId(7), members: vec![UserId(1), UserId(3)] },
            sent(42, Split::lucky(Amount::yuan(100), 100), "恭喜发财", 0xDEAD_BEEF),
            sent(45, Split::shuffled(Amount::yuan(3), 7), "", 5),
            sent(43, Split::Fixed { each: Amount::fen(88), shares: 3 }, "", 1),
            sent(44, Split::Exclusive { to: UserId(3), amount: Amount::fen(9) }, "给你", 2),
            Record::Partitioned { index: 2, count: 64 },
            Record::Received(Remittance::credit(3, 1, 17, UserId(5), Amount::fen(66))),
            Record::PacketRemitted(remitted(46)),
            Record::Acknowledged { to: 3, through: 1_000 },
            Record::Received(Remittance::of_packet(2, 0, 9, remitted(47)).unwrap()),
            Record::Returned {
                remittance: Remittance::of_packet(2, 0, 10, remitted(48)).unwrap(),
                reason: ReturnReason::IdTaken,
            },
            Record::Returned {
                remittance: Remittance::of_packet(1, 0, 1, remitted(49)).unwrap(),
                reason: ReturnReason::TooManyOpenPackets,
            },
            Record::TransferRemitted(transfer_remitted(50)),
            Record::Received(Remittance {
                returned: Some(ReturnReason::TooManyPendingTransfers),
                ..Remittance::of_transfer(0, 2, 14, transfer_remitted(54))
            }),
            Record::Received(Remittance {
                returned: Some(ReturnReason::TooManyOpenPackets),
                ..Remittance::of_packet(0, 2, 15, remitted(55)).unwrap()
            }),
            Record::Received(Remittance::of_transfer(2, 0, 11, transfer_remitted(51))),
            Record::Returned {
                remittance: Remittance::of_transfer(2, 0, 12, transfer_remitted(52)),
                reason: ReturnReason::IdTaken,
            },
            Record::Returned {
                remittance: Remittance::of_transfer(2, 0, 13, transfer_remitted(53)),
                reason: ReturnReason::TooManyPendingTransfers,
            },
            Record::Claim {
                packet: PacketId(42),
                user: UserId(9),
                amount: Amount::fen(123),
                position: 1,
                at: Timestamp(7),
            },
            Record::SoldOut { packet: PacketId(42) },
            Record::Expired { packet: PacketId(43), refund: Amount::fen(176), at: Timestamp(8) },
            Record::PacketOpened { packet: PacketId(44), at: Timestamp(9) },
            Record::PacketCancelled { packet: PacketId(44), refund: Amount::fen(9), at: Timestamp(10) },
            Record::TransferSent(TransferSent {
                spec: NewTransfer {
                    org: Some(OrgId(3)),
                    id: TransferId(9),
                    from: UserId(1),
                    to: UserId(2),
                    amount: Amount::yuan(300),
                    arrival: Arrival::Delayed { secs: 7_200 },
                    note: "房租".into(),
                },
                sent_at: Timestamp(11),
                day: 3,
                cooling_until: Timestamp(12),
                arrives_at: Timestamp(13),
                accept_until: Timestamp(14),
                approval: Some(Approval { approver: Approver::Guardian(UserId(61)), until: Timestamp(99) }),
            }),
            Record::TransferSent(TransferSent {
                spec: NewTransfer {
                    org: None,
                    id: TransferId(10),
                    from: UserId(2),
                    to: UserId(1),
                    amount: Amount::fen(1),
                    arrival: Arrival::Instant,
                    note: String::new(),
                },
                sent_at: Timestamp(11),
                day: 3,
                cooling_until: Timestamp(11),
                arrives_at: Timestamp(11),
                accept_until: Timestamp(15),
                approval: None,
            }),
            Record::TransferArrived { transfer: TransferId(9), at: Timestamp(13) },
            Record::TransferSettled { transfer: TransferId(9), outcome: TransferOutcome::Returned, at: Timestamp(14) },
            Record::CoolingOffSet {
                user: UserId(1),
                setting: CoolingOff { threshold: Amount::yuan(200), secs: 300 },
                at: Timestamp(15),
            },
            Record::OrgCreated {
                org: OrgId(3),
                spec: NewOrg { admins: vec![UserId(100), UserId(101)], name: "腾讯".into() },
                at: Timestamp(16),
            },
            Record::OrgPolicySet {
                org: OrgId(3),
                by: UserId(100),
                policy: Policy {
                    recall: RecallPolicy::Whitelist(vec![UserId(7), UserId(8)]),
                    approval_above: Some(Amount::yuan(1_000)),
                    daily_sent_fen_max: None,
                },
                at: Timestamp(17),
            },
            Record::OrgPolicySet { org: OrgId(3), by: UserId(101), policy: Policy::default(), at: Timestamp(18) },
            Record::GroupAttached { org: OrgId(3), group: GroupId(7), by: UserId(100), at: Timestamp(19) },
            Record::PacketRecalled {
                packet: PacketId(42),
                org: OrgId(3),
                by: UserId(100),
                refund: Amount::fen(5),
                reason: "wrong group".into(),
                at: Timestamp(20),
            },
            Record::Approved { subject: ApprovalId::Packet(PacketId(43)), by: UserId(101), at: Timestamp(21) },
            Record::Rejected {
                subject: ApprovalId::Transfer(TransferId(9)),
                by: Some(UserId(61)),
                reason: "over budget".into(),
                at: Timestamp(22),
            },
            Record::Rejected {
                subject: ApprovalId::Packet(PacketId(44)),
                by: None,
                reason: String::new(),
                at: Timestamp(23),
            },
            Record::GuardianSet {
                user: UserId(60),
                guardian: Some(Guardian { guardian: UserId(61), above: Amount::yuan(500) }),
                at: Timestamp(24),
            },
            Record::GuardianSet { user: UserId(60), guardian: None, at: Timestamp(25) },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for record in samples() {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            assert_eq!(decode(&bytes), Ok(record.clone()), "{record:?}");
            let mut prefixed = Vec::new();
            encode_prefixed(&record, &mut prefixed);
            assert_eq!(decode_prefixed(&mut Reader::new(&prefixed)), Ok(record.clone()));
        }
    }

    #[test]
    fn a_send_of_format_1_reads_with_its_cap_unrecorded() {
        let Record::PacketSent(sent) = sent(42, Split::Fixed { each: Amount::fen(1), shares: 1 }, "x", 3) else {
            unreachable!()
        };
        let mut bytes = Vec::new();
        encode(&Record::PacketSent(sent.clone()), &mut bytes);
        // Format 1: tag 4, and neither the cap nor the opening, day and approval after the
        // deadline.
        bytes[0] = PACKET_SENT;
        bytes.drain(1 + 6 * 8..1 + 9 * 8 + 1);
        let Ok(Record::PacketSent(old)) = decode(&bytes) else { panic!("decodes") };
        assert_eq!(old.share_fen_max, 0);
        assert_eq!(old.with_legacy_cap(20_000), sent);
    }

    #[test]
    fn a_claim_is_compact() {
        let claim = samples().into_iter().find(|r| matches!(r, Record::Claim { .. })).unwrap();
        let mut bytes = Vec::new();
        encode(&claim, &mut bytes);
        assert_eq!(bytes.len(), 37);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        for record in samples() {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{record:?} cut at {cut}");
            }
            bytes.push(0);
            assert_eq!(decode(&bytes), Err(DecodeError::Trailing(1)));
        }
        assert_eq!(decode(&[99]), Err(DecodeError::UnknownTag(99)));
        // A roster claiming four billion members in a few bytes is refused, not allocated.
        let mut bytes = vec![ROSTER];
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated));
    }
}
