//! # hongbao
//!
//! Group red packets (红包, lucky money) under extreme contention: a member puts money into a
//! packet split into shares, up to a thousand members grab at the same instant, each gets at
//! most one share — credited to their wallet before the grab returns — and what nobody took
//! goes back to the sender when the packet expires. Around them: transfers (转账) that can be
//! delayed and recalled and must be accepted, a cooling-off window (冷静期) that holds large
//! sends and lets the sender cancel them, and daily caps.
//!
//! Start an [`Engine`] with a [`Config`], and call it from any async context; see
//! [`Engine`] for an example.
//!
//! # Layout
//!
//! Imports point down this list: a module uses only modules below it (the actors get narrow
//! handles and callbacks when they start, never the engine).
//!
//! | module | role |
//! |---|---|
//! | `engine` | the [`Engine`] handle: checks what needs no state, routes requests, start and shutdown |
//! | `parts` | the engine's parts together: start order, health, retirement sweeps, settling sends |
//! | `outbox` | remittances between partitions: numbered in journal order, held until acknowledged, applied once |
//! | `partition` | which partition holds a packet, a wallet or a transfer; [`Remittance`]s and their refusals |
//! | `config` | [`Config`]: limits, threads, clock, journal, seed |
//! | `routes` | the routing table: packet id → opening / dormant / live actor / closed view, the open count |
//! | `runtime` | the actix system and arbiters, start and stop order, bounded sends (`Busy`) |
//! | `packet_actor` | one actor per live packet: decides grabs and expiry, records, applies, replies |
//! | `transfer_shard` | transfer shard actors (transfer → shard by hash): sends, recalls, accepts, declines, deadlines |
//! | `wallet` | wallet shard actors (user → shard by hash) and the handle that routes to them; sends are decided here |
//! | `timer` | every deadline (packets' openings and expiries, transfers' arrivals and returns) in one sorted set |
//! | `audit` | conservation and invariants, for an engine and for a journal directory |
//! | `replay` | the state a journal describes, folded through the same rules as the live engine |
//! | `journal` | the [`Journal`] trait, the memory journal, the file journal (`format`, `reader`, `writer`, `snapshot`) |
//! | `events` | [`Event`]s and [`Subscription`]s (a `Stream`) |
//! | `roster` | who belongs to which group: eligibility, roster changes |
//! | `org` | enterprises: admins, policy, attached groups, the checks of admin recall |
//! | `oplog` | each org's operation log, folded from the journal |
//! | `packet` | a packet's state and rules, as plain data (cooling-off, grabs, expiry, cancellation) |
//! | `transfer` | a transfer's state and rules, as plain data |
//! | `ledger` | wallet balances, daily caps and cooling-off settings, and their rules, as plain data |
//! | `record` | [`Record`]s of every state change, and their binary encoding |
//! | `split` | validation of a split and the lucky "double mean" draw |
//! | `health` | serving, shutting down or failed; what a caller may assume after a failure |
//! | `error` | the typed errors callers act on |
//! | `placement` | which thread or shard an id goes to; per-packet seeds |
//! | `limits`, `clock`, `money` | every bound; system and manual time; [`Amount`] in fen and the ids |
//!
//! # Where each rule of money lives
//!
//! Every rule is one function; the live actors and replay call the same one (decide → record
//! → apply). The numbers are those of the design's rules.
//!
//! | rule | owner |
//! |---|---|
//! | 1 integer fen | [`Amount`] (`money.rs`) |
//! | 2 a send debits at once, or changes nothing | `Ledger::decide_debit`, `Ledger::apply` (`ledger.rs`) |
//! | 3, 4 kinds of packet, shares within bounds and summing to the total | [`split::validate`] |
//! | 5 the lucky draw, re-derivable from its seed | [`split::draw`] (double mean) and [`split::shuffled_shares`] (the order-fair rule); checked on every claim by `PacketState::apply` |
//! | 6 one claim per member, a repeat gets the first result | `grab_refusal` and `PacketState::apply` (`packet.rs`) |
//! | 7 eligibility | `roster::eligible` |
//! | 8 credit before the reply | `packet_actor.rs` (`Credit` sent before the reply, FIFO shard mailbox) |
//! | 9 personal packets are irrevocable | [`Engine::recall`]; once open, `PacketState::decide_cancel` says `TooLate` |
//! | 10 expiry refunds once | `PacketState::decide_expiry`, `PacketState::apply` |
//! | 11 conservation | [`Audit::is_balanced`] (pending: `TransferState::pending`, packets `CoolingOff`) |
//! | 12 records before replies; storage failure is "outcome unknown" unless cut back | the [`Journal`] contract; `journal/writer.rs` (`cut_back`), [`StorageFailure`] |
//! | 13 a transfer debits at once; delayed ones recallable until arrival | `Ledger::decide_send` and `Ledger::apply(TransferSent)`; `TransferState::decide` (recall) and `decide_due` (arrival) |
//! | 14 accept, decline, or return after 24 h, once each | `TransferState::decide`, `TransferState::decide_due`, `TransferState::apply` |
//! | 15 single-transfer cap; daily caps by the engine's day | [`Engine::transfer`] (`transfer_fen_max`); `Ledger::decide_send` with the day each send records (`Timestamp::day`) |
//! | 16 cooling-off holds a send, the sender may cancel, then it opens | `CoolingOff::opens_at` (decided in `Ledger::decide_send`); `PacketState::decide_open` / `decide_cancel`; a transfer's `cooling_until` |
//! | 17 a deadline racing a request has one outcome | the packet actor and the transfer shard serialize both, applying passed deadlines before any request |
//! | 18 a deadline leaves the timer only when its action is recorded | `timer.rs`; the packet actor and the transfer shard schedule again what is not yet due |
//! | 19 caps and policies derived from the journal | `Ledger::apply` folds days of use and cooling-off settings from records; snapshots carry them |
//! | 20 caller ids, applied once | `Ledger::decide_deposit` / `decide_withdrawal` (`OpId`), `routes.rs` (`PacketId`), the transfer shard's `send` (`TransferId`), `Outbox::reserve_dispatch` (a packet or transfer sent to another partition) |
//! | 21 only an org's admins change it | `OrgBook::decide_policy` / `decide_attach` (`org.rs`) |
//! | 22 admin recall of an org packet's remainder, whitelisted senders only | `OrgBook::check_recall`, then `PacketState::decide_recall` and `apply(PacketRecalled)` in the packet's actor |
//! | 23 sends above a threshold wait for a second person, never the sender | `Ledger::decide_send` (who approves: the guardian, else the org's admins); `PacketState::decide_approval` / `TransferState::decide_approval`; the deadline in `decide_approval_deadline` / `decide_due` |
//! | 24 the operation log, derived from the journal | `OpLog::observe` (`oplog.rs`), live through `LoggedJournal` and on replay through `Replica` |
//! | 26 memory bounded by retention | `Record::Retired`, decided by `parts.rs` (`retire_due`), applied by `routes.rs`, `Ledger::apply`, the transfer shards, `Replica::apply_record` |

mod audit;
mod clock;
mod config;
mod engine;
mod error;
mod events;
mod health;
pub mod journal;
mod ledger;
mod limits;
mod money;
mod oplog;
mod org;
mod outbox;
mod packet;
mod packet_actor;
mod partition;
mod parts;
mod placement;
mod record;
mod replay;
mod roster;
mod routes;
mod runtime;
pub mod split;
mod timer;
mod transfer;
mod transfer_shard;
mod wallet;

#[cfg(test)]
mod fault_tests;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod sim;

pub use audit::{
    audit_history, audit_journal, audit_journal_with_progress, operation_log, Audit, ClusterAudit, HistoryAudit,
    JournalAudit,
};
pub use clock::{Clock, ManualClock, Sleep, SystemClock, Timestamp};
pub use config::Config;
pub use engine::{Engine, Gauges};
pub use error::{
    ApprovalError, CancelError, EngineError, GrabError, OrgError, RecallError, SendError, StartError, TransferError,
    WalletError,
};
pub use events::{Event, EventsError, Subscription};
pub use health::{Failure, Health};
pub use journal::{
    BatchObserver, BatchWritten, Completion, Durability, FileJournalConfig, History, Journal, JournalError,
    MemoryJournal, Progress, Record, StorageFailure,
};
pub use ledger::Usage;
pub use limits::{InvalidLimits, Limits, QUEUE_LEN_MAX, RECORD_BYTES_MAX};
pub use money::{Amount, GroupId, OpId, OrgId, PacketId, ParseAmountError, ParseIdError, TransferId, UserId};
pub use oplog::{OpKind, OpPage, OpQuery, OperationEntry};
pub use org::OrgView;
pub use packet::{ClaimView, PacketStatus, PacketView};
pub use packet_actor::Grabbed;
pub use partition::{
    Flow, InvalidPartition, Partition, RemittanceError, ACKNOWLEDGED_RECORD_EVERY, PARTITIONS_MAX,
    REMITTANCES_PER_CALL_MAX,
};
pub use parts::Retired;
pub use placement::packet_seed;
pub use record::{
    Approval, ApprovalId, Approver, Arrival, CoolingOff, DecodeError, Guardian, NewOrg, NewPacket, NewTransfer,
    PacketSent, Policy, RecallPolicy, Remittance, ReturnReason, TransferOutcome, TransferSent, TransferStatus,
};
pub use replay::{Folded, LogMark};
pub use split::{Draw, InvalidSplit, Split};
pub use transfer::TransferView;

/// The README's example, compiled and run as a doc test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
