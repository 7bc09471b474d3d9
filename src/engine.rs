//! The [`Engine`] handle: the only thing callers hold.
//!
//! `Engine` is `Clone + Send + Sync`, its futures are `Send`, and no actix type appears in its
//! API: it works from any tokio runtime (multi-thread servers, `#[tokio::test]`) and from an
//! actix-rt context alike. Behind it, an actix system runs on its own threads (`runtime.rs`):
//! packet actors on `arbiters` arbiters, placed by hashing the packet id and reached through
//! the routing table (`routes.rs`); `wallet_shards` wallet shards (`wallet.rs`); one timer.
//!
//! The handle checks what can be checked without the state (limits, the split, membership),
//! then hands the request to the actor that owns the state; the actor decides, records and
//! applies (see `lib.rs` for where each rule lives). A full mailbox answers `Busy` at once.
//!
//! # Shutdown
//!
//! [`Engine::shutdown`] refuses new requests, lets every mailbox drain (each actor answers a
//! flush after everything queued before it), flushes the journal, ends event subscriptions and
//! stops the actor threads. Dropping the last handle without it stops the threads at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::audit::{Audit, Sums};
use crate::clock::Timestamp;
use crate::config::Config;
use crate::error::{
    ApprovalError, CancelError, EngineError, GrabError, OrgError, RecallError, SendError, StartError, TransferError,
    WalletError,
};
use crate::events::Subscription;
use crate::health::{Health, Stopped};
use crate::ledger::Usage;
use crate::limits::Limits;
use crate::money::{Amount, GroupId, OpId, OrgId, PacketId, TransferId, UserId};
use crate::oplog::{OpPage, OpQuery};
use crate::org::{OrgBook, OrgView};
use crate::outbox::{Dispatch, DispatchRoom, Landing, SendId};
use crate::packet::PacketState;
use crate::packet::{check_view, grab_refusal, PacketStatus, PacketView};
use crate::packet_actor::{self, AdminRecall, Cancel, Decide, Grab, Grabbed, Inspect, Query};
use crate::partition::{Partition, RemittanceError, REMITTANCES_PER_CALL_MAX};
use crate::parts::{open_sent, settle_send, Inner, Lifetime, Retired};
use crate::placement;
use crate::record::{
    ApprovalId, CoolingOff, Guardian, NewOrg, NewPacket, NewTransfer, PacketSent, Policy, Remittance, ReturnReason,
};
use crate::roster::{self, Change};
use crate::routes::{Reservation, Route};
use crate::runtime::{self, Refused};
use crate::split;
use crate::transfer::{Action, TransferState, TransferView};
use crate::transfer_shard::{Act, ArrivalOf, Get, Send as SendTransfer};
use crate::wallet::{Balance, Escrow, GetUsage, SetCoolingOff, SetGuardian};

/// How often a request follows a route whose actor stopped under it (it closed at expiry)
/// before concluding that the engine is stopping.
const ROUTE_ATTEMPTS_MAX: usize = 3;

/// The handle to a running engine. Cheap to clone; every clone drives the same engine.
///
/// # Examples
///
/// ```
/// use hongbao::{Amount, Config, Engine, GroupId, NewPacket, OpId, PacketId, Split, UserId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = Engine::start(Config::default())?;
/// engine.set_members(GroupId(7), (1..=3).map(UserId)).await?;
/// engine.deposit(OpId(1), UserId(1), Amount::yuan(10)).await?;
/// engine
///     .send_packet(NewPacket {
///         id: PacketId(42),
///         sender: UserId(1),
///         group: GroupId(7),
///         split: Split::Fixed { each: Amount::yuan(1), shares: 2 },
///         greeting: "恭喜发财".into(),
///     })
///     .await?;
/// let won = engine.grab(PacketId(42), UserId(2)).await?;
/// assert_eq!(won.amount, Amount::yuan(1));
/// assert_eq!(engine.balance(UserId(2)).await?, Amount::yuan(1));
/// assert!(engine.audit().await?.is_balanced());
/// engine.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// Shared by the handles alone: the last one to go stops the engine.
    _lifetime: Arc<Lifetime>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("arbiters", &self.inner.runtime.arbiters().len())
            .field("wallet_shards", &self.inner.wallets.len())
            .finish_non_exhaustive()
    }
}

/// The checks of a new send that do not depend on its sender's wallet.
fn check_send(inner: &Inner, spec: &NewPacket) -> Result<(), SendError> {
    let limits = &inner.limits;
    if spec.greeting.len() > limits.greeting_bytes_max {
        return Err(SendError::GreetingTooLong { bytes: spec.greeting.len(), max: limits.greeting_bytes_max });
    }
    split::validate(&spec.split, limits).map_err(|reason| SendError::InvalidSplit { reason })?;
    if !inner.rosters.is_member(spec.group, spec.sender) {
        return Err(SendError::NotMember { user: spec.sender });
    }
    if let split::Split::Exclusive { to, .. } = spec.split {
        if !inner.rosters.is_member(spec.group, to) {
            return Err(SendError::NotMember { user: to });
        }
    }
    Ok(())
}

/// A new send as it would open now, and its expiry after opening. The sender's shard moves the
/// opening (and the expiry after it) if their cooling-off holds it.
fn packet_sent(inner: &Inner, spec: NewPacket) -> (PacketSent, u64) {
    let (limits, now) = (&inner.limits, inner.clock.now());
    let seed = inner.seed.map_or_else(rand::random, |seed| placement::packet_seed(seed, spec.id));
    let (expiry_secs, day) = (limits.expiry_secs, now.day(limits.day_utc_offset_secs));
    let (opens_at, expires_at, share_fen_max) = (now, now.plus_secs(expiry_secs), limits.share_fen_max);
    (PacketSent { spec, seed, sent_at: now, expires_at, share_fen_max, opens_at, day, approval: None }, expiry_secs)
}

/// The answer to a send whose id was sent from here to another partition: the view it opened
/// with if it is the same send (a retry), `IdConflict` if not, `Busy` while the first is still
/// being debited.
fn redispatch(dispatch: Dispatch, spec: &NewPacket) -> Result<PacketView, SendError> {
    match dispatch {
        Dispatch::Debiting(_) => Err(SendError::Busy),
        Dispatch::Remitted(Remittance { packet: Some(sent), .. }) if sent.spec == *spec => {
            Ok(PacketState::open(*sent).view())
        }
        // (One that came back is not answered from: a retry of it is a new send.)
        Dispatch::Remitted(_) | Dispatch::CameBack(..) => Err(SendError::IdConflict { packet: spec.id }),
    }
}

/// The answer to a transfer whose id was sent from here to another partition: the view it was
/// sent with if it is the same transfer (a retry), `IdConflict` if not, `Busy` while the first
/// is still being debited.
fn redispatch_transfer(dispatch: Dispatch, spec: &NewTransfer) -> Result<TransferView, TransferError> {
    match dispatch {
        Dispatch::Debiting(_) => Err(TransferError::Busy),
        Dispatch::Remitted(Remittance { transfer: Some(sent), .. }) if sent.spec == *spec => {
            let sent_at = sent.sent_at;
            Ok(TransferState::open(*sent).view(sent_at))
        }
        Dispatch::Remitted(_) | Dispatch::CameBack(..) => Err(TransferError::IdConflict { transfer: spec.id }),
    }
}

/// What an engine holds at one moment, for gauges ([`Engine::gauges`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Gauges {
    /// Packets open (or opening), bounded by `open_packets_max`.
    pub open_packets: usize,
    /// Transfers sending or pending (not yet settled), bounded by `pending_transfers_max`.
    pub pending_transfers: usize,
}

impl Engine {
    /// Starts the actor system on background threads and returns a handle to it. With a
    /// journal directory, it first recovers the state the journal records.
    ///
    /// It blocks the calling thread for the few milliseconds the threads take to start (and
    /// for recovery).
    ///
    /// # Errors
    ///
    /// [`StartError`] if the limits contradict each other, `arbiters` or `wallet_shards` is
    /// zero, the journal cannot be opened or recovered, or the threads cannot be started.
    pub fn start(config: Config) -> Result<Engine, StartError> {
        let inner = Inner::start(config)?;
        Ok(Engine { _lifetime: Arc::new(Lifetime(Arc::clone(&inner))), inner })
    }

    /// The engine's parts, unless it is stopping or its journal has failed.
    fn inner(&self) -> Result<&Inner, Stopped> {
        let inner = &*self.inner;
        // A journal that can no longer make changes durable, or an actor that panicked, stops
        // the engine: answering anything then could acknowledge what a restart would not have.
        match inner.health() {
            Health::Serving => Ok(inner),
            Health::ShuttingDown => Err(Stopped::ShuttingDown),
            _ => Err(Stopped::Unavailable),
        }
    }

    /// Whether the engine is serving, shutting down, or stopped by a failure (and which).
    pub fn health(&self) -> Health {
        self.inner.health()
    }

    /// What the engine holds now, read without asking any actor (a few atomic loads): for
    /// a server's gauges.
    pub fn gauges(&self) -> Gauges {
        let inner = &*self.inner;
        Gauges {
            open_packets: inner.routes.open_count(),
            pending_transfers: inner.transfer_ctx.pending.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Whether `user` is in `group`'s roster now (every roster change that returned before
    /// this call is seen). A server checks it before pushing a group's events to a member.
    pub fn is_member(&self, group: GroupId, user: UserId) -> bool {
        self.inner.rosters.is_member(group, user)
    }

    /// The limits this engine runs with.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The engine's clock's current time.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Replaces a group's roster: its members are the only ones who may grab its packets
    /// (besides the named recipient of an exclusive packet). Duplicates are ignored.
    ///
    /// # Errors
    ///
    /// `TooManyMembers` over `members_per_group_max`, `TooManyGroups` over `groups_max`,
    /// `ShuttingDown`. Nothing changes on an error.
    pub async fn set_members(
        &self,
        group: GroupId,
        members: impl IntoIterator<Item = UserId>,
    ) -> Result<(), EngineError> {
        let max = self.inner.limits.members_per_group_max;
        self.change_roster(group, Change::Set(roster::collect_ids(members, max)?)).await
    }

    /// Adds members to a group's roster (creating it if it has none); members already in it
    /// stay. Journaled as the additions alone.
    ///
    /// # Errors
    ///
    /// As [`Engine::set_members`].
    pub async fn add_members(
        &self,
        group: GroupId,
        members: impl IntoIterator<Item = UserId>,
    ) -> Result<(), EngineError> {
        let max = self.inner.limits.members_per_group_max;
        self.change_roster(group, Change::Add(roster::collect_ids(members, max)?)).await
    }

    /// Removes members from a group's roster; ids not in it are ignored. A member removed
    /// can no longer grab the group's packets (a repeat grab still returns the first share).
    ///
    /// # Errors
    ///
    /// As [`Engine::set_members`].
    pub async fn remove_members(
        &self,
        group: GroupId,
        members: impl IntoIterator<Item = UserId>,
    ) -> Result<(), EngineError> {
        let max = self.inner.limits.members_per_group_max;
        self.change_roster(group, Change::Remove(roster::collect_ids(members, max)?)).await
    }

    async fn change_roster(&self, group: GroupId, change: Change) -> Result<(), EngineError> {
        let inner = self.inner()?;
        let (tx, rx) = oneshot::channel();
        let then = Box::new(move || {
            let _ = tx.send(());
        });
        inner.rosters.change(group, change, &*inner.journal, then)?;
        rx.await.map_err(|_| inner.lost().into())
    }

    /// A group's members, sorted (empty for a group without a roster). Every roster change
    /// that returned before this call is in it.
    ///
    /// # Errors
    ///
    /// `ShuttingDown`.
    pub async fn members(&self, group: GroupId) -> Result<Vec<UserId>, EngineError> {
        let inner = self.inner()?;
        let (tx, rx) = oneshot::channel();
        inner.rosters.members(group, &*inner.journal, tx);
        rx.await.map_err(|_| inner.lost().read().into())
    }

    /// Adds `amount` to `user`'s wallet, once per `op`: a retry with the same fields returns
    /// the balance the first application produced. Returns the new balance.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `BalanceLimit`, `IdConflict` (the id was used with other fields),
    /// `Busy`, `ShuttingDown`. Nothing changes on an error.
    pub async fn deposit(&self, op: OpId, user: UserId, amount: Amount) -> Result<Amount, WalletError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        let (max, now) = (inner.limits.balance_fen_max, inner.clock.now());
        inner.wallets.send_move((op, user, amount), Some(max), now, reply)?;
        rx.await.map_err(|_| WalletError::from(inner.lost()))?
    }

    /// Takes `amount` from `user`'s wallet, once per `op`. Returns the new balance.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `InsufficientFunds`, `IdConflict`, `Busy`, `ShuttingDown`. Nothing
    /// changes on an error.
    pub async fn withdraw(&self, op: OpId, user: UserId, amount: Amount) -> Result<Amount, WalletError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        inner.wallets.send_move((op, user, amount), None, inner.clock.now(), reply)?;
        rx.await.map_err(|_| WalletError::from(inner.lost()))?
    }

    /// `user`'s balance, including every share whose grab has returned.
    ///
    /// # Errors
    ///
    /// `Busy` when the wallet shard's mailbox is full, `ShuttingDown`.
    pub async fn balance(&self, user: UserId) -> Result<Amount, EngineError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        inner.wallets.tell(user, Balance { user, reply })?;
        rx.await.map_err(|_| inner.lost().read().into())
    }

    /// Sends a packet: debits the sender's wallet by its total (held in escrow) and opens it
    /// for grabs — or, above the sender's cooling-off threshold, holds it `CoolingOff` until
    /// the window ends (the sender may cancel it meanwhile; its expiry counts from its
    /// opening). Sending the same packet again (same id, same fields) returns its current view
    /// and debits nothing.
    ///
    /// In a partition of a cluster, a packet whose id places it in another partition than its
    /// sender's wallet is debited here and travels there as a remittance
    /// ([`Engine::remitted_packet`]) that opens it ([`Engine::arrival`]); the answer is then the
    /// view it opens with, and a retry gets the same.
    ///
    /// # Errors
    ///
    /// `InvalidSplit`, `GreetingTooLong`, `NotMember` (sender, or exclusive recipient),
    /// `DailyPacketLimit`, `DailyLimit`, `InsufficientFunds`, `IdConflict` (same id, other
    /// fields), `TooManyOpenPackets`, `Busy`, `ShuttingDown`. Nothing is debited on an error.
    pub async fn send_packet(&self, spec: NewPacket) -> Result<PacketView, SendError> {
        let inner = self.inner()?;
        let partition = inner.outbox.partition();
        if !partition.holds_user(spec.sender) {
            return Err(SendError::Elsewhere { partition: partition.of_user(spec.sender) });
        }
        if !partition.holds_packet(spec.id) {
            return self.send_elsewhere(spec).await;
        }
        // A retry is answered from the packet it retries, before anything that may have changed
        // since its first send (the roster, the limits) is checked again: it was sent.
        if let Some(route) = inner.routes.get(spec.id) {
            return self.resend(route, spec).await;
        }
        check_send(inner, &spec)?;
        match inner.routes.reserve(spec.id) {
            Reservation::Reserved => {}
            Reservation::Full => return Err(SendError::TooManyOpenPackets { max: inner.limits.open_packets_max }),
            // Taken since the lookup above: a send of the same id raced this one.
            Reservation::Taken(route) => return self.resend(route, spec).await,
        }
        let id = spec.id;
        let settle = |reply| settle_send(inner, id, reply);
        self.escrow(spec, None, settle, || inner.routes.abandon(id)).await
    }

    /// Has the sender's shard debit a new send (reserved by the caller, given back by
    /// `abandon` if the shard's mailbox refuses it) and answers what `settle` makes of it.
    /// From the shard on, the send completes even if this future is dropped: the shard debits
    /// and the packet opens without the caller.
    async fn escrow(
        &self,
        spec: NewPacket,
        remit: Option<Arc<crate::outbox::Outbox>>,
        settle: impl FnOnce(oneshot::Sender<Result<PacketView, SendError>>) -> crate::wallet::Settle,
        abandon: impl FnOnce(),
    ) -> Result<PacketView, SendError> {
        let inner = self.inner()?;
        let sender = spec.sender;
        let (sent, expiry_secs) = packet_sent(inner, spec);
        let (reply, rx) = oneshot::channel();
        let org = inner.orgs.rules_of(sent.spec.group);
        let escrow = Escrow { sent, expiry_secs, org, remit, settle: settle(reply) };
        if let Err(refused) = inner.wallets.tell(sender, escrow) {
            abandon();
            return Err(refused.into());
        }
        rx.await.map_err(|_| SendError::from(inner.lost()))?
    }

    /// A send whose packet opens in another partition: the sender's wallet is debited here, in
    /// the same record that numbers the remittance carrying the packet there.
    async fn send_elsewhere(&self, spec: NewPacket) -> Result<PacketView, SendError> {
        let inner = self.inner()?;
        let id = SendId::Packet(spec.id);
        if let Some(dispatch) = inner.outbox.dispatch(id).filter(Dispatch::stands) {
            return redispatch(dispatch, &spec);
        }
        check_send(inner, &spec)?;
        match inner.outbox.reserve_dispatch(id) {
            DispatchRoom::Reserved => {}
            // The remittances to its partition wait for the relay: it catches up.
            DispatchRoom::Full => return Err(SendError::Busy),
            DispatchRoom::Taken(dispatch) => return redispatch(dispatch, &spec),
        }
        let outbox = Arc::clone(&inner.outbox);
        let settle = |reply: oneshot::Sender<_>| -> crate::wallet::Settle {
            Box::new(move |result| {
                if result.is_err() {
                    outbox.abandon_dispatch(id);
                }
                let _ = reply.send(result.map(|sent| PacketState::open(sent).view()));
            })
        };
        let remit = Some(Arc::clone(&inner.outbox));
        self.escrow(spec, remit, settle, || inner.outbox.abandon_dispatch(id)).await
    }

    /// The remittance that carries `packet` from here to the partition of its id, once its
    /// send is durable here (and until it is retired): that partition opens the packet when it
    /// applies it ([`Engine::arrival`]).
    pub fn remitted_packet(&self, packet: PacketId) -> Option<Remittance> {
        self.remitted(SendId::Packet(packet))
    }

    /// The remittance that carries transfer `id` from here to the partition of its id, once
    /// its send is durable here (and until it is retired): that partition holds the transfer
    /// when it applies it ([`Engine::transfer_arrival`]).
    pub fn remitted_transfer(&self, id: TransferId) -> Option<Remittance> {
        self.remitted(SendId::Transfer(id))
    }

    fn remitted(&self, id: SendId) -> Option<Remittance> {
        match self.inner.outbox.dispatch(id)? {
            Dispatch::Remitted(remittance) | Dispatch::CameBack(remittance, _) => Some(remittance),
            // A new send of one that came back, being decided: the one that came back, so far.
            Dispatch::Debiting(came_back) => came_back.map(|(remittance, _)| remittance),
        }
    }

    /// What `remittance` carries here (`carried` of it: a packet or a transfer), once it is
    /// applied here; `elsewhere` if it carries none for this partition.
    async fn carried_here<'r, T: 'r, E: From<Stopped>>(
        &self,
        remittance: &'r Remittance,
        carried: impl FnOnce(&'r Remittance) -> Option<&'r T>,
        elsewhere: E,
    ) -> Result<&'r T, E> {
        let inner = self.inner()?;
        let here = remittance.to == inner.outbox.partition().index();
        let Some(sent) = carried(remittance).filter(|_| here) else { return Err(elsewhere) };
        self.await_remittance(remittance).await.map_err(|e| match e {
            RemittanceError::ShuttingDown => E::from(Stopped::ShuttingDown),
            RemittanceError::Misrouted { .. } => elsewhere,
            _ => E::from(inner.lost()),
        })?;
        Ok(sent)
    }

    /// What became of a packet's remittance here ([`Engine::remitted_packet`] of its sender's
    /// partition), once it is applied: the packet's view if it opened, else why not (its total
    /// went back to its sender). It waits as long as the remittance takes to arrive: bound it
    /// with a timeout.
    ///
    /// # Errors
    ///
    /// `IdConflict` (another packet has its id), `TooManyOpenPackets` (it did not open, and
    /// its id is free), `Elsewhere` if `remittance` carries no packet for this partition,
    /// `Busy`, `ShuttingDown`.
    pub async fn arrival(&self, remittance: &Remittance) -> Result<PacketView, SendError> {
        let inner = self.inner()?;
        let elsewhere = SendError::Elsewhere { partition: remittance.to };
        let sent = self.carried_here(remittance, |r| r.packet.as_deref(), elsewhere).await?;
        // Once applied, an arrived packet's route is open (or closed since): it is this very
        // send (same draw, same moment) or another packet that had the id.
        let id = sent.spec.id;
        match inner.routes.get(id) {
            // A packet that went back for want of room leaves its id free.
            None => Err(SendError::TooManyOpenPackets { max: inner.limits.open_packets_max }),
            Some(route) if route.open_meta().is_some_and(|m| m.sent == *sent) => {
                self.resend(route, sent.spec.clone()).await
            }
            Some(Route::Closed(view)) if view.sent_at == sent.sent_at && view.seed == sent.seed => {
                self.resend(Route::Closed(view), sent.spec.clone()).await
            }
            Some(_) => Err(SendError::IdConflict { packet: id }),
        }
    }

    /// The answer to a send whose id is taken: the packet's view if it is the same send (a
    /// retry), `IdConflict` if not, `Busy` while the first send is still being debited.
    async fn resend(&self, route: Route, spec: NewPacket) -> Result<PacketView, SendError> {
        let inner = self.inner()?;
        match route {
            Route::Opening => Err(SendError::Busy),
            route if route.open_meta().is_some_and(|m| m.sent.spec == spec) => {
                self.packet(spec.id).await.map_err(|e| match e {
                    EngineError::Busy => SendError::Busy,
                    _ => SendError::from(inner.lost().read()),
                })
            }
            Route::Closed(view) if view.spec() == spec => {
                inner.after_barrier((*view).clone()).await.ok_or_else(|| inner.lost().read().into())
            }
            _ => Err(SendError::IdConflict { packet: spec.id }),
        }
    }

    /// Grabs a share of `packet` for `user`. The share is in the user's wallet when this
    /// returns; when that wallet is in another partition, it is on its way there as
    /// [`Grabbed::remitted`]. A repeat grab by the same user returns `AlreadyGrabbed` with the first share.
    ///
    /// # Errors
    ///
    /// `AlreadyGrabbed`, `NotEligible`, `Expired`, `SoldOut`, `UnknownPacket`, `Busy` (the
    /// packet's mailbox is full: retry), `ShuttingDown`.
    pub async fn grab(&self, packet: PacketId, user: UserId) -> Result<Grabbed, GrabError> {
        let inner = self.inner()?;
        let closed = |view: &PacketView| {
            let first = view.claims.iter().find(|c| c.user == user);
            let eligible = inner.rosters.is_eligible(view.group, &view.split, user);
            // A closed packet that is not sold out has expired.
            grab_refusal(first, eligible, view.status).unwrap_or(GrabError::Expired)
        };
        let absent = (GrabError::UnknownPacket, GrabError::Busy);
        Engine::ask_packet(inner, packet, absent, closed, |reply| Grab { user, reply }).await
    }

    /// The packet as it stands: status, claims in grab order, escrow left, best luck once sold
    /// out.
    ///
    /// # Errors
    ///
    /// `UnknownPacket`, `Busy`, `ShuttingDown`.
    pub async fn packet(&self, packet: PacketId) -> Result<PacketView, EngineError> {
        let inner = self.inner()?;
        inner.holds_packet(packet)?;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let live = match inner.routes.get(packet) {
                None | Some(Route::Opening) => return Err(EngineError::UnknownPacket),
                Some(Route::Closed(view)) => {
                    return inner.after_barrier((*view).clone()).await.ok_or_else(|| inner.lost().read().into())
                }
                // Nothing has happened to it yet: no need to wake it to describe it.
                Some(Route::Dormant(meta)) => return Ok(meta.state().view()),
                Some(Route::Live(live)) => live,
            };
            let (reply, rx) = oneshot::channel();
            match runtime::tell(&live.addr, Query(reply)) {
                Ok(()) => {}
                Err(Refused::Closed) => continue,
                Err(refused) => return Err(refused.into()),
            }
            if let Ok(view) = rx.await {
                return Ok(view);
            }
        }
        Err(inner.lost().read().into())
    }

    /// Asks to take back a packet's unclaimed remainder before expiry. Personal packets are
    /// irrevocable (rule 9 of the design): the remainder returns to the sender at expiry, and
    /// this call always refuses. It exists so that callers get that answer as a typed error.
    ///
    /// # Errors
    ///
    /// `Irrevocable` for any packet that exists, `UnknownPacket`, `ShuttingDown`.
    pub async fn recall(&self, packet: PacketId) -> Result<Amount, EngineError> {
        let inner = self.inner()?;
        inner.holds_packet(packet)?;
        match inner.routes.get(packet) {
            None | Some(Route::Opening) => Err(EngineError::UnknownPacket),
            Some(_) => Err(EngineError::Irrevocable { packet }),
        }
    }

    /// Cancels a packet during its sender's cooling-off (禁止领取, "forbid claiming"): its whole
    /// total goes back to the sender at once (to a wallet in another partition, as a
    /// remittance), and nobody can grab it. Returns the refund.
    ///
    /// # Errors
    ///
    /// `NotSender`, `TooLate` (the packet opened, or never cooled off: personal packets are
    /// irrevocable once open), `AlreadyCancelled` with the first refund, `UnknownPacket`,
    /// `Busy`, `ShuttingDown`. Nothing changes on an error.
    pub async fn cancel_packet(&self, packet: PacketId, by: UserId) -> Result<Amount, CancelError> {
        let inner = self.inner()?;
        let closed = |view: &PacketView| match view.status {
            _ if view.sender != by => CancelError::NotSender,
            PacketStatus::Cancelled { refunded } => CancelError::AlreadyCancelled { refunded },
            _ => CancelError::TooLate,
        };
        let absent = (CancelError::UnknownPacket, CancelError::Busy);
        Engine::ask_packet(inner, packet, absent, closed, |reply| Cancel { by, reply }).await
    }

    /// Sends a transfer (转账): debits the sender at once. An `Instant` transfer arrives at
    /// once; a `Delayed` one is in transit until its delay ends, and the sender may recall it
    /// until then. Above the sender's cooling-off threshold it is held `CoolingOff` first (the
    /// delay counts from the end of the window). An arrived transfer waits for its receiver to
    /// accept or decline it, and returns to the sender if nobody accepts it within
    /// `transfer_accept_secs`. Sending the same transfer again (same id, same fields) returns
    /// its current view and debits nothing.
    ///
    /// In a partition of a cluster, a transfer whose id places it in another partition than
    /// its sender's wallet is debited here and travels there as a remittance
    /// ([`Engine::remitted_transfer`]) that holds it there ([`Engine::transfer_arrival`]): the
    /// answer, and a retry's, is then the view it was sent with.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `OverLimit` (over `transfer_fen_max`), `ToSelf`, `InvalidDelay`,
    /// `NoteTooLong`, `DailyLimit`, `InsufficientFunds`, `IdConflict` (same id, other
    /// fields), `TooManyPending`, `Elsewhere` (the sender's wallet is in another partition),
    /// `Busy`, `ShuttingDown`. Nothing is debited on an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use hongbao::{Amount, Arrival, Config, Engine, NewTransfer, OpId, TransferId, TransferStatus, UserId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let engine = Engine::start(Config::default())?;
    /// engine.deposit(OpId(1), UserId(1), Amount::yuan(500)).await?;
    /// let rent = NewTransfer {
    ///     org: None,
    ///     id: TransferId(9),
    ///     from: UserId(1),
    ///     to: UserId(2),
    ///     amount: Amount::yuan(300),
    ///     arrival: Arrival::Delayed { secs: 7_200 },
    ///     note: "房租".into(),
    /// };
    /// let view = engine.transfer(rent).await?;
    /// assert!(matches!(view.status, TransferStatus::InTransit { .. }));
    /// engine.recall_transfer(TransferId(9), UserId(1)).await?;
    /// assert_eq!(engine.balance(UserId(1)).await?, Amount::yuan(500));
    /// engine.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transfer(&self, spec: NewTransfer) -> Result<TransferView, TransferError> {
        let inner = self.inner()?;
        let partition = inner.outbox.partition();
        if !partition.holds_user(spec.from) {
            return Err(TransferError::Elsewhere { partition: partition.of_user(spec.from) });
        }
        // The org's rules for this sender now; the shard uses them only for a new transfer (a
        // retry is answered from the transfer it retries, whatever changed since).
        let org = match spec.org {
            Some(org) => inner.orgs.transfer_rules(org, |group| inner.rosters.is_member(group, spec.from)).map(Some),
            None => Ok(None),
        };
        if !partition.holds_transfer(spec.id) {
            return self.transfer_elsewhere(spec, org).await;
        }
        // The transfer's shard answers a retry from the transfer it retries, and checks a new
        // one against the limits (`transfer::validate`).
        let (reply, rx) = oneshot::channel();
        inner.transfers.tell(spec.id, SendTransfer { spec, org, reply })?;
        // From here the transfer completes even if this future is dropped.
        rx.await.map_err(|_| TransferError::from(inner.lost()))?
    }

    /// A transfer held in another partition than its sender's wallet: the wallet is debited
    /// here, in the same record that numbers the remittance carrying the transfer there.
    async fn transfer_elsewhere(
        &self,
        spec: NewTransfer,
        org: Result<Option<crate::ledger::OrgRules>, TransferError>,
    ) -> Result<TransferView, TransferError> {
        let inner = self.inner()?;
        let id = SendId::Transfer(spec.id);
        if let Some(dispatch) = inner.outbox.dispatch(id).filter(Dispatch::stands) {
            return redispatch_transfer(dispatch, &spec);
        }
        crate::transfer::validate(&spec, &inner.limits)?;
        let org = org?;
        match inner.outbox.reserve_dispatch(id) {
            DispatchRoom::Reserved => {}
            // The remittances to its partition wait for the relay: it catches up.
            DispatchRoom::Full => return Err(TransferError::Busy),
            DispatchRoom::Taken(dispatch) => return redispatch_transfer(dispatch, &spec),
        }
        let (reply, rx) = oneshot::channel();
        let outbox = Arc::clone(&inner.outbox);
        let settle: crate::wallet::TransferSettle = Box::new(move |result| {
            if result.is_err() {
                outbox.abandon_dispatch(id);
            }
            let _ = reply.send(result.map(|sent| {
                let sent_at = sent.sent_at;
                TransferState::open(sent).view(sent_at)
            }));
        });
        // From here the transfer completes even if this future is dropped.
        inner.transfer_ctx.debit(spec, org, Some(Arc::clone(&inner.outbox)), settle);
        rx.await.map_err(|_| TransferError::from(inner.lost()))?
    }

    /// What became of a transfer's remittance here ([`Engine::remitted_transfer`] of its
    /// sender's partition), once it is applied: the transfer's view if it is held here, else
    /// why not (its amount went back to its sender). It waits as long as the remittance takes
    /// to arrive: bound it with a timeout.
    ///
    /// # Errors
    ///
    /// `IdConflict` (another transfer has its id), `TooManyPending` (it was not held, and its
    /// id is free), `Elsewhere` if `remittance` carries no transfer for this partition, `Busy`,
    /// `ShuttingDown`.
    pub async fn transfer_arrival(&self, remittance: &Remittance) -> Result<TransferView, TransferError> {
        let inner = self.inner()?;
        let elsewhere = TransferError::Elsewhere { partition: remittance.to };
        let sent = self.carried_here(remittance, |r| r.transfer.as_deref(), elsewhere).await?;
        let (reply, rx) = oneshot::channel();
        inner.transfers.tell(sent.spec.id, ArrivalOf { sent: sent.clone(), reply })?;
        rx.await.map_err(|_| TransferError::from(inner.lost().read()))?
    }

    /// The sender takes back a transfer that has not arrived (cooling off or in transit): the
    /// money is back in their wallet when this returns (or, when that wallet is in another
    /// partition, on its way there as the view's `remitted`). Returns the settled view.
    ///
    /// # Errors
    ///
    /// `NotSender`, `TooLate` (it arrived: only its receiver can send it back now),
    /// `AlreadySettled` (recalled before), `UnknownTransfer`, `Busy`, `ShuttingDown`.
    pub async fn recall_transfer(&self, id: TransferId, by: UserId) -> Result<TransferView, TransferError> {
        self.act(id, Action::Recall, by).await
    }

    /// The receiver accepts an arrived transfer: the money is in their wallet when this
    /// returns (or, when that wallet is in another partition, on its way there as the
    /// view's `remitted`). Returns the settled view.
    ///
    /// # Errors
    ///
    /// `NotReceiver`, `NotArrived`, `TooLate` (it returned, was recalled or declined),
    /// `AlreadySettled` (accepted before), `UnknownTransfer`, `Busy`, `ShuttingDown`.
    pub async fn accept_transfer(&self, id: TransferId, by: UserId) -> Result<TransferView, TransferError> {
        self.act(id, Action::Accept, by).await
    }

    /// The receiver declines an arrived transfer: the money is back in the sender's wallet
    /// when this returns (or on its way there, as for [`Engine::recall_transfer`]). Returns the
    /// settled view.
    ///
    /// # Errors
    ///
    /// As [`Engine::accept_transfer`].
    pub async fn decline_transfer(&self, id: TransferId, by: UserId) -> Result<TransferView, TransferError> {
        self.act(id, Action::Decline, by).await
    }

    async fn act(&self, id: TransferId, action: Action, by: UserId) -> Result<TransferView, TransferError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        inner.transfers.tell(id, Act { id, action, by, reply })?;
        rx.await.map_err(|_| TransferError::from(inner.lost()))?
    }

    /// A transfer as it stands: status, amount, every deadline.
    ///
    /// # Errors
    ///
    /// `UnknownTransfer`, `Busy`, `ShuttingDown`.
    pub async fn transfer_view(&self, id: TransferId) -> Result<TransferView, TransferError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        inner.transfers.tell(id, Get { id, reply })?;
        rx.await.map_err(|_| TransferError::from(inner.lost().read()))?
    }

    /// Sets `user`'s cooling-off (冷静期): from now on their sends (packets and transfers)
    /// above `threshold` are held for `secs` seconds, during which they may cancel a packet or
    /// recall a transfer. `secs: 0` turns it off. Sends already made keep their windows.
    ///
    /// # Errors
    ///
    /// `CoolingOffTooLong` over `cooling_off_secs_max`, `Busy`, `ShuttingDown`.
    pub async fn set_cooling_off(&self, user: UserId, setting: CoolingOff) -> Result<(), EngineError> {
        let inner = self.inner()?;
        let max_secs = inner.limits.cooling_off_secs_max;
        if setting.secs > max_secs {
            return Err(EngineError::CoolingOffTooLong { secs: setting.secs, max_secs });
        }
        let (reply, rx) = oneshot::channel();
        inner.wallets.tell(user, SetCoolingOff { user, setting, now: inner.clock.now(), reply })?;
        rx.await.map_err(|_| inner.lost().into())
    }

    /// Sets `user`'s guardian (亲情提醒): from now on their sends (packets and transfers) above
    /// `above` wait for the guardian's approval (`approve`), and are rejected, refunding them,
    /// after `approval_secs`. For a packet in an org's group whose approval threshold it passes,
    /// the org's admins approve instead (a guardian is the sender's choice, not the org's).
    /// Setting the same guardian again does nothing; a different one needs the current one to
    /// remove theirs first, so that nobody talks the user out of the protection.
    ///
    /// # Errors
    ///
    /// `InvalidGuardian` (oneself), `GuardianAlreadySet`, `Busy`, `ShuttingDown`.
    pub async fn set_guardian(&self, user: UserId, guardian: Guardian) -> Result<(), EngineError> {
        if guardian.guardian == user {
            return Err(EngineError::InvalidGuardian { user });
        }
        self.change_guardian(user, Some(guardian), None).await
    }

    /// Removes `user`'s guardian, for the guardian (`by`). Sends already waiting keep waiting
    /// for them.
    ///
    /// # Errors
    ///
    /// `NotGuardian` (anyone else, the user included), `Busy`, `ShuttingDown`.
    pub async fn remove_guardian(&self, user: UserId, by: UserId) -> Result<(), EngineError> {
        self.change_guardian(user, None, Some(by)).await
    }

    async fn change_guardian(
        &self,
        user: UserId,
        guardian: Option<Guardian>,
        by: Option<UserId>,
    ) -> Result<(), EngineError> {
        let inner = self.inner()?;
        let (reply, rx) = oneshot::channel();
        inner.wallets.tell(user, SetGuardian { user, guardian, by, now: inner.clock.now(), reply })?;
        rx.await.map_err(|_| EngineError::from(inner.lost()))?
    }

    /// Approves a send waiting for a second person (rule 23): a packet opens (its group hears
    /// `PacketOpened`; its expiry counts from now), a transfer goes on its way (its delay and
    /// acceptance count from now). The approver is an admin of the packet's org other than the
    /// sender, or the sender's guardian; never the sender.
    ///
    /// # Errors
    ///
    /// `Unknown`, `NotAwaitingApproval`, `OwnSend`, `NotApprover`, `AlreadyApproved`,
    /// `AlreadyRejected` (by its approver, or its deadline passed), `Busy`, `ShuttingDown`.
    pub async fn approve(&self, subject: ApprovalId, by: UserId) -> Result<(), ApprovalError> {
        self.decide(subject, by, None).await.map(|_| ())
    }

    /// Rejects a send waiting for approval: its money goes back to the sender at once (to a
    /// wallet in another partition, as a remittance the relay carries). Returns the refund.
    ///
    /// # Errors
    ///
    /// As [`Engine::approve`], and `ReasonTooLong`.
    pub async fn reject(&self, subject: ApprovalId, by: UserId, reason: String) -> Result<Amount, ApprovalError> {
        let max = self.inner()?.limits.org_text_bytes_max;
        if reason.len() > max {
            return Err(ApprovalError::ReasonTooLong { bytes: reason.len(), max });
        }
        self.decide(subject, by, Some(reason)).await
    }

    async fn decide(&self, subject: ApprovalId, by: UserId, reject: Option<String>) -> Result<Amount, ApprovalError> {
        let inner = self.inner()?;
        let packet = match subject {
            ApprovalId::Transfer(id) => {
                let (reply, rx) = oneshot::channel();
                inner.transfers.tell(id, crate::transfer_shard::Decide { id, by, reject, reply })?;
                return rx.await.map_err(|_| ApprovalError::from(inner.lost()))?;
            }
            ApprovalId::Packet(packet) => packet,
        };
        let orgs = &inner.orgs;
        let closed = |view: &PacketView| {
            crate::packet::approval_refusal(view, by, |org, user| orgs.is_admin(org, user))
                .unwrap_or(ApprovalError::Closed)
        };
        let absent = (ApprovalError::Unknown, ApprovalError::Busy);
        Engine::ask_packet(inner, packet, absent, closed, |reply| Decide { by, reject: reject.clone(), reply }).await
    }

    /// Asks a packet's actor (waking it if dormant) with the request `message` makes, and
    /// waits for its answer: the one route every request on a packet takes (grab, cancel,
    /// admin recall, approval). A closed packet answers with `closed` of its final view, once
    /// the records the view holds are durable, as a live one would; `(unknown, busy)` answer
    /// an unknown packet and a full mailbox.
    async fn ask_packet<T, E, M>(
        inner: &Inner,
        packet: PacketId,
        (unknown, busy): (E, E),
        closed: impl Fn(&PacketView) -> E,
        message: impl Fn(oneshot::Sender<Result<T, E>>) -> M,
    ) -> Result<T, E>
    where
        T: std::marker::Send + 'static,
        E: From<Stopped> + From<Refused> + std::marker::Send + 'static,
        M: actix::Message<Result = ()> + std::marker::Send + 'static,
        packet_actor::PacketActor: actix::Handler<M>,
    {
        inner.holds_packet(packet)?;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let live = match inner.routes.wake(packet) {
                None | Some(Route::Opening) => return Err(unknown),
                Some(Route::Closed(view)) => {
                    let answer = inner.after_barrier(closed(&view)).await;
                    return Err(answer.ok_or_else(|| E::from(inner.lost().read()))?);
                }
                Some(Route::Live(live)) => live,
                Some(Route::Dormant(_)) => unreachable!("wake starts dormant packets"),
            };
            let (reply, rx) = oneshot::channel();
            match runtime::tell(&live.addr, message(reply)) {
                Ok(()) => {}
                Err(Refused::Closed) => continue,
                // Full: a packet's mailbox is never in another partition.
                Err(_) => return Err(busy),
            }
            match rx.await {
                Ok(result) => return result,
                // The reply was lost in a failure: the request may have been recorded.
                Err(_) if inner.health() != Health::Serving => return Err(inner.lost().into()),
                // The packet closed with this request still queued: its closed route now
                // answers it.
                Err(_) => continue,
            }
        }
        Err(inner.lost().into())
    }

    /// What `user` has sent today against the daily caps, and their cooling-off.
    ///
    /// # Errors
    ///
    /// `Busy`, `ShuttingDown`.
    pub async fn usage(&self, user: UserId) -> Result<Usage, EngineError> {
        let inner = self.inner()?;
        let day = inner.clock.now().day(inner.limits.day_utc_offset_secs);
        let (reply, rx) = oneshot::channel();
        inner.wallets.tell(user, GetUsage { user, day, reply })?;
        rx.await.map_err(|_| inner.lost().read().into())
    }

    /// Creates an enterprise (企业) with its admins (rule 21). Creating the same org again (same
    /// id, same fields) returns its view and changes nothing. An org starts with the default
    /// policy: admin recall off, no approval, no cap of its own.
    ///
    /// # Errors
    ///
    /// `NoAdmins`, `TooManyAdmins`, `TextTooLong` (the name), `IdConflict`, `TooManyOrgs`,
    /// `ShuttingDown`. Nothing changes on an error.
    pub async fn create_org(&self, org: OrgId, spec: NewOrg) -> Result<OrgView, OrgError> {
        let now = self.inner()?.clock.now();
        self.change_org(org, |book, limits| book.decide_create(org, &spec, limits, now)).await
    }

    /// Replaces an org's policy, for one of its admins.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `NotAdmin`, `WhitelistTooLong`, `ShuttingDown`. Nothing changes on an
    /// error.
    pub async fn set_policy(&self, org: OrgId, by: UserId, policy: Policy) -> Result<OrgView, OrgError> {
        let now = self.inner()?.clock.now();
        self.change_org(org, |book, limits| book.decide_policy(org, by, &policy, limits, now).map(Some)).await
    }

    /// Attaches a group to an org, for one of its admins: the group's packets follow the org's
    /// policy from then on (its recall policy applies to packets sent in it before, too).
    /// Attaching it again does nothing.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `NotAdmin`, `GroupTaken` (attached to another org), `ShuttingDown`.
    pub async fn attach_group(&self, org: OrgId, group: GroupId, by: UserId) -> Result<OrgView, OrgError> {
        let now = self.inner()?.clock.now();
        self.change_org(org, |book, limits| book.decide_attach(org, group, by, limits, now)).await
    }

    /// An org: its admins, policy and groups.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `ShuttingDown`.
    pub async fn org(&self, org: OrgId) -> Result<OrgView, OrgError> {
        let inner = self.inner()?;
        let view = inner.orgs.view(org).ok_or(OrgError::UnknownOrg)?;
        inner.after_barrier(view).await.ok_or_else(|| inner.lost().read().into())
    }

    /// A page of an org's operation log (rule 24): every admin action and every money movement
    /// of the org's packets, in order, filtered by time window, actor and kind, from the cursor
    /// `after`. The log is folded from the journal, so it is what the journal says, and it
    /// survives restarts; entries are kept `op_log_retention_secs` (180 days).
    ///
    /// Every operation acknowledged before the call is in it. Page with `after: page.next`
    /// until `next` is `None`.
    ///
    /// # Errors
    ///
    /// `UnknownOrg`, `ShuttingDown`.
    pub async fn operations(&self, org: OrgId, query: OpQuery) -> Result<OpPage, OrgError> {
        let inner = self.inner()?;
        inner.orgs.view(org).ok_or(OrgError::UnknownOrg)?;
        // What was acknowledged is durable, so it went through the log by now; the barrier
        // covers what an earlier reply is still waiting on.
        inner.after_barrier(()).await.ok_or_else(|| OrgError::from(inner.lost().read()))?;
        Ok(inner.oplog.query(org, &query, inner.limits.op_log_page_max, inner.clock.now()))
    }

    async fn change_org(
        &self,
        org: OrgId,
        decide: impl FnOnce(&OrgBook, &crate::limits::Limits) -> Result<Option<crate::record::Record>, OrgError>,
    ) -> Result<OrgView, OrgError> {
        let inner = self.inner()?;
        let answer = inner.orgs.change(org, &*inner.journal, decide)?;
        let view = answer.await.map_err(|_| OrgError::from(inner.lost()))?;
        Ok(view.expect("a changed org exists"))
    }

    /// An org admin takes back an org packet's unclaimed remainder (rule 22): it goes back to
    /// the sender at once, exactly once; shares already claimed stand. Allowed only for a
    /// packet sent in a group attached to an org, by one of its admins, with the org's recall
    /// policy on and the packet's sender on its whitelist. Returns the refund. The recall is
    /// decided by the packet's own actor, so a grab racing it either won its share before or
    /// meets the packet recalled.
    ///
    /// # Errors
    ///
    /// In this order: `UnknownPacket`, `NotOrgPacket` (a personal packet: irrevocable),
    /// `NotAdmin`, `RecallDisabled`, `NotWhitelisted`, `AlreadyClosed`; also `ReasonTooLong`,
    /// `Busy`, `ShuttingDown`. Nothing changes on an error.
    pub async fn admin_recall(&self, packet: PacketId, by: UserId, reason: String) -> Result<Amount, RecallError> {
        let inner = self.inner()?;
        let max = inner.limits.org_text_bytes_max;
        if reason.len() > max {
            return Err(RecallError::ReasonTooLong { bytes: reason.len(), max });
        }
        let closed = |view: &PacketView| {
            inner.orgs.check_recall(view.group, view.sender, by).err().unwrap_or(RecallError::AlreadyClosed)
        };
        let absent = (RecallError::UnknownPacket, RecallError::Busy);
        Engine::ask_packet(inner, packet, absent, closed, |reply| AdminRecall { by, reason: reason.clone(), reply })
            .await
    }

    /// A stream of events from now on.
    ///
    /// # Errors
    ///
    /// `TooManySubscribers` over `subscribers_max`, `ShuttingDown`.
    pub fn subscribe(&self) -> Result<Subscription, EngineError> {
        let inner = self.inner()?;
        inner.events.subscribe().ok_or(EngineError::TooManySubscribers { max: inner.limits.subscribers_max })
    }

    /// Performs every deadline action due by the engine's clock — packets opening at the end
    /// of a cooling-off, packets expiring (refunding), transfers arriving, transfers returning
    /// to their senders — and returns once each is durable and credited. Returns how many
    /// open packets it found due; the timer may have acted on others already, and this call
    /// waits for those too.
    ///
    /// The timer does this by itself; this call is for callers that must know it is done (a
    /// test that moved a manual clock, an operator draining deadlines before maintenance). It
    /// scans every packet and transfer: O(packets + transfers).
    ///
    /// # Errors
    ///
    /// `ShuttingDown`.
    pub async fn run_due(&self) -> Result<usize, EngineError> {
        let inner = self.inner()?;
        let due = inner.routes.due(inner.clock.now());
        // A dropped reply means the packet closed under an earlier expiry; the barrier below
        // waits for that expiry's refund too.
        futures::future::join_all(due.iter().filter_map(|&packet| {
            let (reply, rx) = oneshot::channel();
            inner.routes.run_due(packet, Some(reply)).then_some(rx)
        }))
        .await;
        inner.transfers.run_due().await;
        inner.after_barrier(()).await.ok_or_else(|| EngineError::from(inner.lost().read()))?;
        // Credits travel through the wallet mailboxes; a flush of each makes them applied.
        inner.wallets.flush().await;
        Ok(due.len())
    }

    /// Retires what has passed its retention: closed packets `closed_retention_secs` after they
    /// closed, settled transfers `settled_transfer_retention_secs` after they settled,
    /// operation ids `op_retention_secs` after they were applied (up to 100 000 ids in all per
    /// call). In a partition of a cluster, also the packets and transfers sent from here to be
    /// held elsewhere, a retention after they were sent once their remittance is
    /// acknowledged. The engine does this by itself every `retire_interval_secs`; this call is
    /// for tests on a manual clock and operators. Returns how many of each it retired.
    ///
    /// # Errors
    ///
    /// `ShuttingDown`, `Unavailable`, `OutcomeUnknown` (the retirement record may or may not
    /// be durable; nothing about money depends on it).
    pub async fn retire_due(&self) -> Result<Retired, EngineError> {
        let inner = self.inner()?;
        Ok(inner.retire_due().await?)
    }

    /// Both sides of the conservation equation and every packet invariant, for a quiescent
    /// moment (requests in flight during the audit may be counted on one side only).
    ///
    /// # Errors
    ///
    /// `ShuttingDown`.
    pub async fn audit(&self) -> Result<Audit, EngineError> {
        let inner = self.inner()?;
        let (mut live, mut closed, mut violations) = (0, 0, Vec::new());
        let mut sums = Sums::default();
        let mut actors = Vec::new();
        // A packet cooling off or waiting for approval holds pending money, not escrow: nobody
        // can grab it yet.
        let hold = |sums: &mut Sums, status: PacketStatus, escrow: Amount| match status {
            PacketStatus::CoolingOff { .. } | PacketStatus::AwaitingApproval { .. } => {
                sums.pending += u128::from(escrow.as_fen())
            }
            _ => sums.escrow += u128::from(escrow.as_fen()),
        };
        for route in inner.routes.all() {
            match route {
                Route::Opening => {}
                Route::Dormant(meta) => {
                    live += 1;
                    let state = meta.state();
                    hold(&mut sums, state.status(), state.escrow());
                }
                Route::Live(l) => actors.push(l.addr.clone()),
                Route::Closed(view) => {
                    closed += 1;
                    violations.extend(check_view(&view).err());
                }
            }
        }
        // A packet that closes meanwhile drops the message; its closed view carries no escrow.
        for (status, escrow, check) in runtime::ask_all(actors.iter(), Inspect).await.into_iter().flatten() {
            live += 1;
            hold(&mut sums, status, escrow);
            violations.extend(check.err());
        }
        let held = inner.transfers.held().await.ok_or_else(|| EngineError::from(inner.lost().read()))?;
        sums.pending += held.pending_fen;
        for t in inner.wallets.totals().await.ok_or_else(|| EngineError::from(inner.lost().read()))? {
            sums.wallets += u128::from(t.balances);
            sums.deposits += u128::from(t.deposited);
            sums.withdrawals += u128::from(t.withdrawn);
        }
        (sums.remitted, sums.received) = inner.outbox.totals();
        let audit = Audit::new(sums, live, closed, violations).with_transfers(held.pending, held.settled);
        Ok(audit.with_flows(inner.outbox.flows()))
    }

    /// The partition of a cluster this engine serves ([`Config::with_partition`]).
    pub fn partition(&self) -> Partition {
        self.inner.outbox.partition()
    }

    /// Up to `max` remittances to partition `to` that are durable here and not yet
    /// acknowledged, oldest first: what a relay carries to `to` and hands to its
    /// [`Engine::receive`]. They stay until [`Engine::acknowledge`]; after a restart, every
    /// remittance not acknowledged before is here again, with its number.
    pub fn outbox(&self, to: u32, max: usize) -> Vec<Remittance> {
        self.inner.outbox.pending(to, max)
    }

    /// The remittances from here to partition `to` up to number `through` are safe beyond this
    /// partition — applied by `to` ([`Engine::received_from`] there), or stored durably on
    /// their way (as the NATS relay's inbox stream does) — and leave the outbox. Journaled
    /// now and then ([`crate::Record::Acknowledged`], see [`crate::ACKNOWLEDGED_RECORD_EVERY`]): a
    /// restart offers again only those acknowledged since, which their receiver takes as
    /// repeats.
    pub fn acknowledge(&self, to: u32, through: u64) {
        if let Some(record) = self.inner.outbox.acknowledge(to, through) {
            self.inner.journal.append(record, Box::new(|| {}));
        }
    }

    /// Applies remittances from other partitions: each credits its wallet here once, in the
    /// order of its sender's numbers; a number applied before is a repeat and changes nothing.
    /// Returns once every fresh one is durable and credited.
    ///
    /// # Errors
    ///
    /// `Misrouted` (not for this partition, or for a wallet it does not hold), `Gap` (a number
    /// skipped), `InvalidAmount` (zero, or above every share and transfer cap), `TooMany`
    /// (more than [`REMITTANCES_PER_CALL_MAX`]): nothing changes then.
    /// `ShuttingDown`, `Unavailable`, `OutcomeUnknown` (send them again once it runs).
    pub async fn receive(&self, batch: &[Remittance]) -> Result<(), RemittanceError> {
        let inner = self.inner()?;
        if batch.len() > REMITTANCES_PER_CALL_MAX {
            return Err(RemittanceError::TooMany { count: batch.len(), max: REMITTANCES_PER_CALL_MAX });
        }
        let (wallets, routes, events, transfers) = (
            Arc::clone(&inner.wallets),
            Arc::clone(&inner.routes),
            Arc::clone(&inner.events),
            Arc::clone(&inner.transfers),
        );
        // A share, a transfer, or a packet's refund or return: none is larger than these.
        let limits = &inner.limits;
        let amount_max =
            Amount::fen(limits.share_fen_max.max(limits.transfer_fen_max).max(limits.packet_total_fen_max));
        let land = move |landing| match landing {
            Landing::Credit(credit) => wallets.credit(credit),
            Landing::Opened(sent) => drop(open_sent(&routes, &events, sent)),
            Landing::Arrived(sent) => transfers.arrived(sent),
            Landing::Returned(out) => wallets.returned(out),
        };
        // A packet or transfer from another partition is taken in here if its id is free and
        // there is room; if not, its amount goes back.
        let room = |r: &Remittance| match (&r.packet, &r.transfer) {
            (Some(sent), _) => match inner.routes.reserve(sent.spec.id) {
                Reservation::Reserved => None,
                Reservation::Taken(_) => Some(ReturnReason::IdTaken),
                Reservation::Full => Some(ReturnReason::TooManyOpenPackets),
            },
            (None, Some(sent)) => inner.transfer_ctx.reserve_arrival(sent.spec.id).err(),
            (None, None) => None,
        };
        inner.outbox.receive(&*inner.journal, batch, amount_max, land, room)?;
        let (tx, rx) = oneshot::channel();
        crate::journal::reply_after_barrier(&*inner.journal, tx, ());
        // A failure may have come after some of the batch was durable and credited: whatever
        // the journal proved of the rest, the batch's outcome is unknown (sending it again is
        // safe: repeats change nothing).
        rx.await.map_err(|_| match RemittanceError::from(inner.lost()) {
            RemittanceError::ShuttingDown => RemittanceError::ShuttingDown,
            _ => RemittanceError::OutcomeUnknown,
        })
    }

    /// The highest number of the remittances from partition `from` durable and credited here:
    /// a relay starts after it.
    pub fn received_from(&self, from: u32) -> u64 {
        self.inner.outbox.received_from(from)
    }

    /// Resolves once `remittance` is durable and credited here ([`Grabbed::remitted`]): a
    /// balance read after it sees the share, so a grabber whose wallet is in this partition
    /// reads their own writes. It waits as long as the remittance takes to arrive: bound it
    /// with a timeout.
    ///
    /// # Errors
    ///
    /// `Misrouted` if it is not for this partition; `ShuttingDown`, `Unavailable`.
    pub async fn await_remittance(&self, remittance: &Remittance) -> Result<(), RemittanceError> {
        self.inner()?.outbox.check_destination(remittance)?;
        // Looked at again now and then: an engine that stops meanwhile answers why.
        let every = std::time::Duration::from_millis(100);
        loop {
            let inner = self.inner()?;
            if tokio::time::timeout(every, inner.outbox.applied(remittance.from, remittance.seq)).await.is_ok() {
                return Ok(());
            }
        }
    }

    /// Stops the engine gracefully: new requests are refused with `ShuttingDown`, requests
    /// already queued are answered, the journal is flushed, subscriptions end, and the actor
    /// threads stop. Other handles see `ShuttingDown` from then on. Calling it again does
    /// nothing.
    pub async fn shutdown(&self) {
        let inner = &*self.inner;
        if !inner.running.swap(false, Ordering::AcqRel) {
            return;
        }
        // Packets and transfers first: their credits land in wallet mailboxes, which drain
        // next.
        runtime::ask_all(inner.routes.live().iter(), packet_actor::Flush).await;
        inner.transfers.flush().await;
        inner.wallets.flush().await;
        // The flush (an fsync, and a snapshot for the file journal) blocks: it runs on a thread
        // of its own so the caller's runtime keeps turning, whatever runtime that is.
        let (flushed_tx, flushed_rx) = oneshot::channel();
        let journal = Arc::clone(&inner.journal);
        std::thread::spawn(move || {
            journal.flush();
            // Released before answering: once shutdown returns, dropping the handle releases
            // the journal (and its directory lock) at once.
            drop(journal);
            let _ = flushed_tx.send(());
        });
        let _ = flushed_rx.await;
        inner.events.close();
        inner.runtime.stop().await;
    }
}
