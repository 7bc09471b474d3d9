//! The errors callers can act on. Each names what went wrong and, where it helps, the value or
//! bound involved. An error means nothing changed — except `OutcomeUnknown`, which says the
//! engine failed while recording the request: it may have taken effect, and the only safe
//! follow-up is the same request again (same ids) once the engine runs again.
//!
//! The enums are `#[non_exhaustive]`: new refusals come with new rules. With the `serde`
//! feature each serializes as a `kind` tag plus its fields, as in
//! `{"kind":"already_grabbed","amount":"1.00","position":3}`.

use thiserror::Error;

use crate::clock::Timestamp;
use crate::money::{Amount, GroupId, OpId, OrgId, PacketId, TransferId, UserId};
use crate::record::TransferStatus;
use crate::split::InvalidSplit;

/// Why a grab won nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum GrabError {
    /// The member already won a share of this packet: the first result, again.
    #[error("already grabbed {amount} (share {position})")]
    AlreadyGrabbed {
        /// The share won the first time.
        amount: Amount,
        /// Its position.
        position: u32,
    },
    /// Every share was taken.
    #[error("every share was taken")]
    SoldOut,
    /// The packet expired; its remainder went back to the sender.
    #[error("the packet expired")]
    Expired,
    /// Not a member of the packet's group, or not the recipient of an exclusive packet.
    #[error("not eligible for this packet")]
    NotEligible,
    /// No packet has this id (or its send has not completed).
    #[error("no such packet")]
    UnknownPacket,
    /// The packet is held by its sender's cooling-off: it opens at `opens_at`, unless the
    /// sender cancels it first.
    #[error("the packet opens at {opens_at}")]
    NotOpenYet {
        /// When it opens.
        opens_at: Timestamp,
    },
    /// The sender cancelled the packet during its cooling-off; nothing was ever grabbable.
    #[error("the sender cancelled the packet")]
    Cancelled,
    /// An admin of the packet's org recalled its remainder.
    #[error("an admin recalled the packet")]
    Recalled,
    /// The packet's approval was refused or never came; nothing was ever grabbable.
    #[error("the packet was not approved")]
    Rejected,
    /// The packet's mailbox is full, or (in a partition of a cluster) too many remittances
    /// wait for the grabber's partition because the relay is behind: try again shortly.
    /// Nothing changed.
    #[error("the packet is busy; try again")]
    Busy,
    /// The packet is in another partition of the cluster: ask its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Grab again once the engine runs again: a repeat grab returns the first
    /// result, so nothing is paid twice.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why a packet was not sent. Nothing was debited.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum SendError {
    /// The sender's balance cannot cover the total.
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds {
        /// The balance.
        balance: Amount,
        /// The packet's total.
        needed: Amount,
    },
    /// The split breaks a rule of money or a limit.
    #[error("invalid split: {reason}")]
    InvalidSplit {
        /// Which rule.
        reason: InvalidSplit,
    },
    /// The sender (or an exclusive packet's recipient) is not a member of the group.
    #[error("user {user} is not a member of the group")]
    NotMember {
        /// Who.
        user: UserId,
    },
    /// A packet with this id exists with different fields.
    #[error("packet {packet} exists with different fields")]
    IdConflict {
        /// The id.
        packet: PacketId,
    },
    /// The greeting is longer than `greeting_bytes_max`.
    #[error("greeting is {bytes} bytes; the limit is {max}")]
    GreetingTooLong {
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// `open_packets_max` packets are open already.
    #[error("too many open packets (limit {max})")]
    TooManyOpenPackets {
        /// The limit.
        max: usize,
    },
    /// The send would take the sender past `daily_sent_fen_max` today.
    #[error("daily sending limit: {used} sent today, the limit is {max}")]
    DailyLimit {
        /// Sent today before this send.
        used: Amount,
        /// The limit.
        max: Amount,
    },
    /// The send would take the sender past the daily cap of the org whose group it is sent in
    /// (`Policy::daily_sent_fen_max`), on top of the engine's own.
    #[error("org {org}'s daily sending limit: {used} sent today, the org's limit is {max}")]
    OrgDailyLimit {
        /// The org whose policy refused.
        org: OrgId,
        /// Sent today before this send.
        used: Amount,
        /// The org's limit.
        max: Amount,
    },
    /// The sender has sent `daily_packets_max` packets today.
    #[error("daily packet limit: {used} packets sent today, the limit is {max}")]
    DailyPacketLimit {
        /// Packets sent today.
        used: u32,
        /// The limit.
        max: u32,
    },
    /// A mailbox on the way is full, or a send with the same id is in progress: try again.
    #[error("busy; try again")]
    Busy,
    /// The wallet (or the packet or transfer) is in another partition of the cluster: ask
    /// its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Send again with the same packet id and fields once the engine runs
    /// again: it is applied once.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why a deposit or withdrawal did nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum WalletError {
    /// Zero amounts move nothing and are refused.
    #[error("the amount is zero")]
    ZeroAmount,
    /// The balance cannot cover the withdrawal.
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds {
        /// The balance.
        balance: Amount,
        /// The amount asked for.
        needed: Amount,
    },
    /// The deposit would take the balance past `balance_fen_max`.
    #[error("the balance would exceed its limit of {max}")]
    BalanceLimit {
        /// The limit.
        max: Amount,
    },
    /// The operation id was used before with different fields.
    #[error("operation {op} was used before with different fields")]
    IdConflict {
        /// The id.
        op: OpId,
    },
    /// The wallet's mailbox is full: try again shortly.
    #[error("the wallet is busy; try again")]
    Busy,
    /// The wallet (or the packet or transfer) is in another partition of the cluster: ask
    /// its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Retry with the same operation id and fields once the engine runs
    /// again: it is applied once.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why a transfer request did nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum TransferError {
    /// The sender's balance cannot cover the amount.
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds {
        /// The balance.
        balance: Amount,
        /// The amount.
        needed: Amount,
    },
    /// Over the single-transfer cap, `transfer_fen_max`.
    #[error("a transfer is at most {max}")]
    OverLimit {
        /// The cap.
        max: Amount,
    },
    /// The transfer would take the sender past `daily_sent_fen_max` today.
    #[error("daily sending limit: {used} sent today, the limit is {max}")]
    DailyLimit {
        /// Sent today before this transfer.
        used: Amount,
        /// The limit.
        max: Amount,
    },
    /// Sender and receiver are the same user.
    #[error("a transfer to oneself")]
    ToSelf,
    /// Zero amounts move nothing and are refused.
    #[error("the amount is zero")]
    ZeroAmount,
    /// A delay of zero or past `transfer_delay_secs_max`.
    #[error("a delay of {secs} s; delays are 1 s to {max_secs} s")]
    InvalidDelay {
        /// The delay asked for.
        secs: u64,
        /// The limit.
        max_secs: u64,
    },
    /// The note is longer than `transfer_note_bytes_max`.
    #[error("note is {bytes} bytes; the limit is {max}")]
    NoteTooLong {
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The transfer names an org that does not exist.
    #[error("no such org")]
    UnknownOrg,
    /// The sender is not a member of any group of the org the transfer names.
    #[error("the sender is not a member of org {org}")]
    NotOrgMember {
        /// The org.
        org: OrgId,
    },
    /// The transfer would take the sender past the daily cap of the org it is sent under.
    #[error("org {org}'s daily sending limit: {used} sent today, the org's limit is {max}")]
    OrgDailyLimit {
        /// The org whose policy refused.
        org: OrgId,
        /// Sent today before this transfer.
        used: Amount,
        /// The org's limit.
        max: Amount,
    },
    /// A transfer with this id exists with different fields.
    #[error("transfer {transfer} exists with different fields")]
    IdConflict {
        /// The id.
        transfer: TransferId,
    },
    /// No transfer has this id (or it was retired after its retention).
    #[error("no such transfer")]
    UnknownTransfer,
    /// Only the sender may recall a transfer.
    #[error("only the sender may do this")]
    NotSender,
    /// Only the receiver may accept or decline a transfer.
    #[error("only the receiver may do this")]
    NotReceiver,
    /// The transfer has not arrived yet: it can be accepted or declined from `arrives_at`.
    #[error("the transfer arrives at {arrives_at}")]
    NotArrived {
        /// When it arrives.
        arrives_at: Timestamp,
    },
    /// The transfer moved on before this request: a recall after it arrived, an accept after
    /// it returned or was recalled or declined. `status` is where it stands.
    #[error("too late: the transfer is {status:?}")]
    TooLate {
        /// Where it stands.
        status: TransferStatus,
    },
    /// The request was applied before: a second accept, decline or recall hears the first
    /// outcome.
    #[error("already settled: {status:?}")]
    AlreadySettled {
        /// The first outcome.
        status: TransferStatus,
    },
    /// `pending_transfers_max` transfers are pending already.
    #[error("too many pending transfers (limit {max})")]
    TooManyPending {
        /// The limit.
        max: usize,
    },
    /// A mailbox on the way is full, or a transfer with the same id is being sent: try again.
    #[error("busy; try again")]
    Busy,
    /// The wallet (or the packet or transfer) is in another partition of the cluster: ask
    /// its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Retry the same request (same transfer id and fields) once the engine runs
    /// again: it is applied once.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why cancelling a packet during its cooling-off did nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum CancelError {
    /// No packet has this id.
    #[error("no such packet")]
    UnknownPacket,
    /// Only the sender may cancel a packet.
    #[error("only the sender may cancel a packet")]
    NotSender,
    /// The packet is not cooling off: it opened (or was never held), and personal packets
    /// are irrevocable from then on.
    #[error("too late: the packet is open, and irrevocable")]
    TooLate,
    /// The packet was cancelled before: the first answer again.
    #[error("already cancelled; {refunded} was refunded")]
    AlreadyCancelled {
        /// What the cancellation refunded.
        refunded: Amount,
    },
    /// The packet's mailbox is full: try again shortly.
    #[error("the packet is busy; try again")]
    Busy,
    /// The packet is in another partition of the cluster: ask its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Cancel again once the engine runs again: a repeat answers `AlreadyCancelled`.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why an org call did nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum OrgError {
    /// No org has this id.
    #[error("no such org")]
    UnknownOrg,
    /// The caller is not one of the org's admins.
    #[error("user {user} is not an admin of the org")]
    NotAdmin {
        /// The caller.
        user: UserId,
    },
    /// An org needs at least one admin.
    #[error("an org needs at least one admin")]
    NoAdmins,
    /// More admins than `org_admins_max`.
    #[error("{admins} admins is more than the limit of {max}")]
    TooManyAdmins {
        /// Admins given.
        admins: usize,
        /// The limit.
        max: usize,
    },
    /// A recall whitelist longer than `org_whitelist_max`.
    #[error("a whitelist of {senders} senders is more than the limit of {max}")]
    WhitelistTooLong {
        /// Senders given.
        senders: usize,
        /// The limit.
        max: usize,
    },
    /// A name or reason longer than `org_text_bytes_max`.
    #[error("{bytes} bytes of text; the limit is {max}")]
    TextTooLong {
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An org with this id exists with other fields.
    #[error("org {org} exists with different fields")]
    IdConflict {
        /// The id.
        org: OrgId,
    },
    /// The group is attached to another org already.
    #[error("group {group} belongs to org {org}")]
    GroupTaken {
        /// The group.
        group: GroupId,
        /// The org it is attached to.
        org: OrgId,
    },
    /// `org_groups_max` groups are attached to the org already.
    #[error("too many groups attached (limit {max})")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// `orgs_max` orgs exist already.
    #[error("too many orgs (limit {max})")]
    TooManyOrgs {
        /// The limit.
        max: usize,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Retry it once the engine runs again: the same change again changes nothing more.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why an admin recall took nothing back. The conditions are checked in this order.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum RecallError {
    /// No packet has this id.
    #[error("no such packet")]
    UnknownPacket,
    /// The packet was not sent in a group attached to an org: a personal packet, irrevocable.
    #[error("not an org packet: personal packets are irrevocable")]
    NotOrgPacket,
    /// The caller is not an admin of the packet's org.
    #[error("user {user} is not an admin of the packet's org")]
    NotAdmin {
        /// The caller.
        user: UserId,
    },
    /// The org's recall policy is off.
    #[error("the org's recall policy is off")]
    RecallDisabled,
    /// The packet's sender is not on the org's recall whitelist.
    #[error("sender {sender} is not on the org's recall whitelist")]
    NotWhitelisted {
        /// The packet's sender.
        sender: UserId,
    },
    /// The packet closed before (sold out, expired, cancelled, or recalled already): nothing
    /// is left to take back.
    #[error("the packet is closed: nothing is left to recall")]
    AlreadyClosed,
    /// The reason is longer than `org_text_bytes_max`.
    #[error("the reason is {bytes} bytes; the limit is {max}")]
    ReasonTooLong {
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The packet's mailbox is full: try again shortly.
    #[error("the packet is busy; try again")]
    Busy,
    /// The packet is in another partition of the cluster: ask its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Recall again once the engine runs again: a repeat answers `AlreadyClosed`.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why an approval or rejection did nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum ApprovalError {
    /// No packet or transfer has this id.
    #[error("no such packet or transfer")]
    Unknown,
    /// It never waited for approval.
    #[error("it does not wait for approval")]
    NotAwaitingApproval,
    /// The sender cannot approve (or reject) their own send.
    #[error("the sender cannot approve their own send")]
    OwnSend,
    /// The caller is not who may approve it (an admin of its org, or the sender's guardian).
    #[error("user {user} may not approve this")]
    NotApprover {
        /// The caller.
        user: UserId,
    },
    /// It was approved before.
    #[error("already approved")]
    AlreadyApproved,
    /// It was rejected before, by its approver or by its deadline.
    #[error("already rejected")]
    AlreadyRejected,
    /// It closed otherwise while it waited (recalled by its sender or an admin): there is
    /// nothing left to decide.
    #[error("closed before it was decided")]
    Closed,
    /// The reason is longer than `org_text_bytes_max`.
    #[error("the reason is {bytes} bytes; the limit is {max}")]
    ReasonTooLong {
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A mailbox on the way is full: try again shortly.
    #[error("busy; try again")]
    Busy,
    /// The wallet (or the packet or transfer) is in another partition of the cluster: ask
    /// its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Ask again once the engine runs again: a repeat answers `AlreadyApproved` or
    /// `AlreadyRejected`.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why a query or administrative call failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum EngineError {
    /// No packet has this id.
    #[error("no such packet")]
    UnknownPacket,
    /// Personal packets cannot be recalled by their sender: what nobody grabs returns at
    /// expiry.
    #[error("packet {packet} is a personal packet and cannot be recalled; its remainder returns at expiry")]
    Irrevocable {
        /// The packet.
        packet: crate::money::PacketId,
    },
    /// A roster larger than `members_per_group_max`.
    #[error("{members} members is more than the limit of {max}")]
    TooManyMembers {
        /// Members given.
        members: usize,
        /// The limit.
        max: usize,
    },
    /// `groups_max` groups have rosters already.
    #[error("too many groups (limit {max})")]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// The user has another guardian: only that guardian may remove theirs first.
    #[error("the user's guardian is {guardian}; only they may remove it")]
    GuardianAlreadySet {
        /// The current guardian.
        guardian: UserId,
    },
    /// Only the user's guardian may remove it.
    #[error("user {user} is not the guardian")]
    NotGuardian {
        /// Who asked.
        user: UserId,
    },
    /// A user cannot be their own guardian.
    #[error("user {user} cannot be their own guardian")]
    InvalidGuardian {
        /// The user.
        user: UserId,
    },
    /// A cooling-off window longer than `cooling_off_secs_max`.
    #[error("a cooling-off of {secs} s; the limit is {max_secs} s")]
    CoolingOffTooLong {
        /// The window asked for.
        secs: u64,
        /// The limit.
        max_secs: u64,
    },
    /// `subscribers_max` subscribers already.
    #[error("too many subscribers (limit {max})")]
    TooManySubscribers {
        /// The limit.
        max: usize,
    },
    /// A mailbox on the way is full: try again shortly.
    #[error("busy; try again")]
    Busy,
    /// The wallet (or the packet or transfer) is in another partition of the cluster: ask
    /// its owner.
    #[error("held by partition {partition}; ask its owner")]
    Elsewhere {
        /// The partition that holds it.
        partition: u32,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a storage failure or an internal error (see
    /// `Engine::health`); this request changed nothing.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while this request was being recorded: it may or may not have taken
    /// effect. Retry once the engine runs again: roster changes are idempotent.
    #[error("outcome unknown: the engine failed while recording this; retry with the same id once it runs again")]
    OutcomeUnknown,
}

/// Why the engine did not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration contradicts itself.
    #[error(transparent)]
    InvalidLimits(#[from] crate::limits::InvalidLimits),
    /// `arbiters` or `wallet_shards` is zero.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The journal could not be opened: locked by another process, damaged, or unreadable.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The journal reads cleanly but the state it describes breaks a rule of money.
    #[error("journal replay found the state inconsistent: {0}")]
    Recovery(String),
    /// The actor threads could not be started.
    #[error("could not start the actor system: {0}")]
    Runtime(String),
}
