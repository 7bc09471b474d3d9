//! The actor runtime behind an engine: an actix system on a thread of its own, its arbiters
//! (one thread each), and the start and stop order.
//!
//! Also the two ways the engine talks to actors: [`tell`], a bounded send that answers `Busy`
//! instead of queueing, and [`ask_all`], a request to every actor of a kind (wallet shards,
//! packets) joined into one answer.

use std::sync::mpsc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use actix_rt::ArbiterHandle;
use futures::future::join_all;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{EngineError, SendError as SendRefused, StartError, WalletError};

/// How long `Engine::start` waits for the actor threads to come up.
const START_TIMEOUT_SECS: u64 = 30;

/// Why a bounded send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The mailbox is full: the caller hears `Busy`.
    Full,
    /// The actor has stopped.
    Closed,
    /// The wallet, packet or transfer is in this other partition.
    Elsewhere(u32),
}

/// How each error type says a mailbox refused: `Busy`, `ShuttingDown`, `Elsewhere`.
macro_rules! from_refused {
    ($($error:ty),*) => {$(
        impl From<Refused> for $error {
            fn from(r: Refused) -> $error {
                type E = $error;
                match r {
                    Refused::Full => E::Busy,
                    Refused::Closed => E::ShuttingDown,
                    Refused::Elsewhere(partition) => E::Elsewhere { partition },
                }
            }
        }
    )*};
}

from_refused!(
    EngineError,
    WalletError,
    SendRefused,
    crate::error::TransferError,
    crate::error::ApprovalError,
    crate::error::GrabError,
    crate::error::CancelError,
    crate::error::RecallError
);

/// Sends `msg` to `addr` unless its mailbox is full.
pub(crate) fn tell<A, M>(addr: &Addr<A>, msg: M) -> Result<(), Refused>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    try_tell(addr, msg).map_err(|(refused, _)| refused)
}

/// [`tell`], handing the message back when it is refused: a message that carries a callback
/// (a settle, a reply) can then still be answered.
pub(crate) fn try_tell<A, M>(addr: &Addr<A>, msg: M) -> Result<(), (Refused, M)>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    addr.try_send(msg).map_err(|e| match e {
        SendError::Full(msg) => (Refused::Full, msg),
        SendError::Closed(msg) => (Refused::Closed, msg),
    })
}

/// Asks every actor in `addrs` with a message made by `ask` and waits for every answer. The
/// message is never refused (one per actor per call): it is for the audit, flushes and
/// shutdown, which must reach every actor. An actor that stops without answering gives `None`.
pub(crate) async fn ask_all<'a, A, M, R>(
    addrs: impl IntoIterator<Item = &'a Addr<A>>,
    ask: impl Fn(oneshot::Sender<R>) -> M,
) -> Vec<Option<R>>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    join_all(addrs.into_iter().map(|addr| {
        let (reply, rx) = oneshot::channel();
        addr.do_send(ask(reply));
        async move { rx.await.ok() }
    }))
    .await
}

/// The running actix system and its arbiters.
pub(crate) struct Runtime {
    system: actix_rt::System,
    arbiters: Box<[ArbiterHandle]>,
    /// Told once every thread has ended.
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Runtime {
    /// Starts the system thread and `arbiters` arbiter threads.
    ///
    /// # Errors
    ///
    /// [`StartError::Runtime`] if the threads cannot be started.
    pub(crate) fn start(arbiters: usize) -> Result<Runtime, StartError> {
        let (started_tx, started_rx) = mpsc::channel();
        let (stopped_tx, stopped_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("hongbao-system".into())
            .spawn(move || {
                let runner = actix_rt::System::new();
                let threads: Vec<Arbiter> = (0..arbiters).map(|_| Arbiter::new()).collect();
                let handles: Box<[ArbiterHandle]> = threads.iter().map(Arbiter::handle).collect();
                let _ = started_tx.send((actix_rt::System::current(), handles));
                let _ = runner.run();
                for arbiter in threads {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
                let _ = stopped_tx.send(());
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let (system, arbiters) = started_rx
            .recv_timeout(Duration::from_secs(START_TIMEOUT_SECS))
            .map_err(|_| StartError::Runtime("the actor system did not start".into()))?;
        Ok(Runtime { system, arbiters, stopped: Mutex::new(Some(stopped_rx)) })
    }

    /// The arbiters packet actors are placed on.
    pub(crate) fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Starts `count` actors, the i-th on arbiter `i % arbiters` with the mailbox capacity
    /// `capacity`, made by `make(i)`, and waits until each has set its capacity (so no request
    /// ever meets actix's default).
    ///
    /// # Errors
    ///
    /// [`StartError::Runtime`] if an actor does not start.
    pub(crate) fn start_actors<A>(
        &self,
        count: usize,
        capacity: usize,
        mut make: impl FnMut(usize) -> A,
    ) -> Result<Box<[Addr<A>]>, StartError>
    where
        A: Actor<Context = Context<A>> + Send,
    {
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let addrs = (0..count)
            .map(|i| {
                let (actor, ready) = (make(i), ready_tx.clone());
                A::start_in_arbiter(&self.arbiters[i % self.arbiters.len()], move |ctx| {
                    ctx.set_mailbox_capacity(capacity);
                    let _ = ready.send(());
                    actor
                })
            })
            .collect();
        for _ in 0..count {
            if ready_rx.recv_timeout(Duration::from_secs(START_TIMEOUT_SECS)).is_err() {
                self.system.stop();
                return Err(StartError::Runtime("actors did not start".into()));
            }
        }
        Ok(addrs)
    }

    /// Tells every actor thread to stop, without waiting.
    pub(crate) fn stop_now(&self) {
        self.system.stop();
    }

    /// Stops every actor thread and waits until they have ended.
    pub(crate) async fn stop(&self) {
        self.system.stop();
        let stopped = self.stopped.lock().take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // The last handle went without a shutdown: stop the threads at once.
        self.system.stop();
    }
}
