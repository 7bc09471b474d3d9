//! # hongbao
//!
//! Group red packets (红包, lucky money) under extreme contention: a member puts money into a
//! packet split into shares, up to a thousand members grab at the same instant, each gets at
//! most one share — credited to their wallet before the grab returns — and what nobody took
//! goes back to the sender when the packet expires.
//!
//! Start an [`Engine`] with a [`Config`], and call it from any async context; see
//! [`Engine`] for an example.
//!
//! # Layout
//!
//! - [`money`]: [`Amount`] (integer fen) and the id types.
//! - [`split`]: validation of a split and the lucky "double mean" draw. Pure.
//! - [`packet`]: a packet's state and rules — claims, sold out, expiry. Pure.
//! - `packet_actor`: one actix actor per packet, serializing its grabs.
//! - [`wallet`]: the ledger (pure) and the wallet shard actors.
//! - `timer`: the deadline actor driving expiries.
//! - [`journal`]: the record of every state change, and the order replies wait for.
//! - [`codec`], [`file_journal`]: the durable journal's encoding and its segment files.
//! - [`replay`]: the state a journal describes, for recovery and `hongbao audit`.
//! - [`events`]: what subscribers hear.
//! - [`clock`]: system and manual time.
//! - [`limits`]: every bound, in one place.
//! - [`engine`]: the handle callers hold.

pub mod clock;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
pub mod file_journal;
pub mod journal;
pub mod limits;
pub mod money;
pub mod packet;
mod packet_actor;
pub mod replay;
pub mod snapshot;
pub mod split;
mod timer;
pub mod wallet;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use config::Config;
pub use engine::{Audit, Engine, Grabbed};
pub use error::{EngineError, GrabError, SendError, StartError, WalletError};
pub use events::{Event, EventsError, Subscription};
pub use file_journal::{Durability, FileJournalConfig, JournalError};
pub use journal::{Journal, MemoryJournal, Record};
pub use limits::Limits;
pub use money::{Amount, GroupId, OpId, PacketId, ParseAmountError, UserId};
pub use packet::{ClaimView, NewPacket, PacketStatus, PacketView};
pub use split::{InvalidSplit, Split};

/// The README's example, compiled and run as a doc test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
