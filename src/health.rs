//! Whether an engine is serving, and what a caller may assume when it is not.
//!
//! An engine stops serving for three reasons: a graceful shutdown, a storage failure (the
//! journal can no longer make changes durable), or an internal error (an actor panicked; its
//! state can no longer be trusted). After a failure it refuses every request with `Unavailable`
//! ("nothing changed"), and a request whose reply was lost in the failure hears
//! `OutcomeUnknown` ("retry with the same id") unless the journal proved that nothing in
//! flight reached the disk.
//!
//! [`Fuse`] is how an actor's panic becomes a failure instead of a dead thread: unwinding
//! through actix would stop every actor on that arbiter and leave their callers hearing
//! `ShuttingDown` from a running engine, with their packets' escrow out of reach.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{
    ApprovalError, CancelError, EngineError, GrabError, OrgError, RecallError, SendError, TransferError, WalletError,
};
use crate::journal::StorageFailure;
use crate::partition::RemittanceError;

/// What an engine is doing, for a health check (a server's readiness probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Health {
    /// Accepting requests.
    Serving,
    /// Shutting down or shut down: requests hear `ShuttingDown`.
    ShuttingDown,
    /// Stopped by a failure: requests hear `Unavailable`. A restart (from the journal) is
    /// the way back.
    Failed {
        /// What failed.
        failure: Failure,
    },
}

/// What stopped an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Failure {
    /// The journal failed; see [`StorageFailure`] for the records in flight then.
    Storage(StorageFailure),
    /// An actor panicked (a bug); the requests it was serving have an unknown outcome.
    Internal,
}

/// Blown when an actor panics.
#[derive(Debug, Default)]
pub(crate) struct Fuse(AtomicBool);

impl Fuse {
    /// Runs an actor's handler. A panic in it blows the fuse (and the engine then refuses every
    /// request) instead of unwinding through the actor system. Once blown, handlers do not run:
    /// the state they would change can no longer be trusted.
    pub(crate) fn guard(&self, actor: &str, handler: impl FnOnce()) {
        if self.is_blown() {
            return;
        }
        if catch_unwind(AssertUnwindSafe(handler)).is_err() {
            self.0.store(true, Ordering::Release);
            tracing::error!(actor, "an actor panicked; the engine stops serving (restart it from its journal)");
        }
    }

    /// Whether an actor has panicked.
    pub(crate) fn is_blown(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Why the engine did not (or could not) answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// A graceful shutdown.
    ShuttingDown,
    /// A failure, before the request changed anything.
    Unavailable,
    /// A failure while the request was in flight: it may or may not have taken effect.
    OutcomeUnknown,
}

impl Stopped {
    /// For a request that changes nothing (a read), an unknown outcome is only unavailability.
    pub(crate) fn read(self) -> Stopped {
        match self {
            Stopped::OutcomeUnknown => Stopped::Unavailable,
            other => other,
        }
    }
}

macro_rules! from_stopped {
    ($($error:ident),*) => {$(
        impl From<Stopped> for $error {
            fn from(stopped: Stopped) -> $error {
                match stopped {
                    Stopped::ShuttingDown => $error::ShuttingDown,
                    Stopped::Unavailable => $error::Unavailable,
                    Stopped::OutcomeUnknown => $error::OutcomeUnknown,
                }
            }
        }
    )*};
}

from_stopped!(
    GrabError,
    SendError,
    WalletError,
    EngineError,
    TransferError,
    CancelError,
    OrgError,
    RecallError,
    ApprovalError,
    RemittanceError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_blows_the_fuse_and_later_ones_do_not_run() {
        let fuse = Fuse::default();
        let mut ran = 0;
        fuse.guard("test", || ran += 1);
        assert!(!fuse.is_blown());
        fuse.guard("test", || panic!("a bug"));
        assert!(fuse.is_blown());
        fuse.guard("test", || ran += 1);
        assert_eq!(ran, 1);
        assert_eq!(GrabError::from(Stopped::OutcomeUnknown.read()), GrabError::Unavailable);
    }
}
