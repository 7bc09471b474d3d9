//! The [`Engine`] handle: the only thing callers hold.
//!
//! `Engine` is `Clone + Send + Sync`, its futures are `Send`, and no actix type appears in its
//! API: it works from any tokio runtime (multi-thread servers, `#[tokio::test]`) and from an
//! actix-rt context alike. Behind it, an actix system runs on its own threads: packet actors
//! on `arbiters` arbiters (placed by hashing the packet id), `wallet_shards` wallet shards, and
//! one timer.
//!
//! # Routing
//!
//! A grab costs one lookup in the routing table (a sharded map from packet id to the packet's
//! mailbox); then the request goes to the packet's bounded mailbox with `try_send`, and a full
//! mailbox answers `Busy` at once. The packet actor checks eligibility against a roster it
//! caches until a roster change bumps the roster epoch, so a grab reads no shared map but the
//! routing table.
//!
//! A sent packet is *dormant* — a route entry with its metadata, no actor, no mailbox — until
//! the first grab or its expiry wakes it (under the routing entry's lock, so exactly once).
//! Packets nobody opens therefore cost a few hundred bytes each, not an actor apiece.
//!
//! # Shutdown
//!
//! [`Engine::shutdown`] refuses new requests, lets every mailbox drain (each actor answers a
//! flush after everything queued before it), flushes the journal, ends event subscriptions and
//! stops the actor threads. Dropping the last handle without it stops the threads at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::join_all;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::error::{EngineError, GrabError, SendError, StartError, WalletError};
use crate::events::{Event, EventHub, Subscription};
use crate::file_journal::FileJournal;
use crate::journal::{Journal, Record};
use crate::limits::Limits;
use crate::money::{bucket, Amount, GroupId, IdSet, OpId, PacketId, UserId};
use crate::packet::{check_view, Expiry, NewPacket, PacketState, PacketStatus, PacketView};
use crate::packet_actor::{self, Expire, Grab, Inspect, PacketActor, Query};
use crate::replay::Replica;
use crate::split::{self, Split};
use crate::timer::{Attach, Schedule, Timer};
use crate::wallet::{self, Balance, Deposit, Escrow, GetTotals, Ledger, WalletShard, Withdraw};

/// How long `Engine::start` waits for the actor threads to come up.
const START_TIMEOUT_SECS: u64 = 30;

/// How often a request follows a route whose actor stopped under it (it closed at expiry)
/// before concluding that the engine is stopping.
const ROUTE_ATTEMPTS_MAX: usize = 3;

/// A share won.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grabbed {
    /// The packet.
    pub packet: PacketId,
    /// The winner.
    pub user: UserId,
    /// The share, already in the winner's wallet.
    pub amount: Amount,
    /// 1 for the first share taken.
    pub position: u32,
    /// Shares left after this one.
    pub shares_left: u32,
    /// Escrow left after this one.
    pub remaining: Amount,
}

/// Both sides of the conservation equation, and every invariant violation found.
///
/// At a quiescent point (no request in flight),
/// `wallets + escrow + pending == deposits - withdrawals`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// Sum of wallet balances.
    pub wallets: Amount,
    /// Sum of the escrow of open packets.
    pub escrow: Amount,
    /// Sum of pending transfers (none exist yet: always zero).
    pub pending: Amount,
    /// Sum of deposits.
    pub deposits: Amount,
    /// Sum of withdrawals.
    pub withdrawals: Amount,
    /// Packets still live (open, or sold out and not yet expired).
    pub packets_live: usize,
    /// Packets closed at expiry.
    pub packets_closed: usize,
    /// Every broken packet invariant, described.
    pub violations: Vec<String>,
}

impl Audit {
    /// Whether money is conserved and no invariant is broken.
    pub fn is_balanced(&self) -> bool {
        let held =
            u128::from(self.wallets.as_fen()) + u128::from(self.escrow.as_fen()) + u128::from(self.pending.as_fen());
        let net = i128::from(self.deposits.as_fen()) - i128::from(self.withdrawals.as_fen());
        held as i128 == net && self.violations.is_empty()
    }
}

/// What the engine keeps of every open packet, awake or dormant: what was sent, the draw's
/// seed, the deadline, and the claims made before a restart (none for a packet sent in this
/// run). The same shape as a packet replayed from the journal, because that is what it is.
pub(crate) use crate::replay::ReplayedPacket as PacketMeta;

impl PacketMeta {
    /// The state of an open packet as of its last claim.
    pub(crate) fn open_state(&self, share_fen_max: u64) -> PacketState {
        self.state(share_fen_max).expect("claims were checked against the draw when the journal was read")
    }

    /// The view of a packet nobody has touched in this run.
    fn untouched_view(&self, share_fen_max: u64) -> PacketView {
        self.open_state(share_fen_max).view()
    }
}

/// A packet actor's address, with what the handle needs to route and check eligibility.
pub(crate) struct LivePacket {
    pub addr: Addr<PacketActor>,
    pub meta: Arc<PacketMeta>,
}

/// Where a packet id leads.
#[derive(Clone)]
pub(crate) enum Route {
    /// A send is in progress: the escrow is being debited.
    Opening,
    /// Open, and nobody has touched it yet: no actor, no mailbox.
    Dormant(Arc<PacketMeta>),
    /// The packet's actor is running.
    Live(Arc<LivePacket>),
    /// Expired and stopped; the final view answers repeat grabs and queries.
    Closed(Arc<PacketView>),
}

impl Route {
    /// The packet's metadata if it is open (dormant or live).
    fn open_meta(&self) -> Option<&Arc<PacketMeta>> {
        match self {
            Route::Dormant(meta) => Some(meta),
            Route::Live(live) => Some(&live.meta),
            Route::Opening | Route::Closed(_) => None,
        }
    }
}

/// State shared by the handle and the actors.
pub(crate) struct Shared {
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    pub journal: Arc<dyn Journal>,
    pub events: Arc<EventHub>,
    pub routes: Arc<DashMap<PacketId, Route>>,
    pub rosters: DashMap<GroupId, Arc<IdSet<UserId>>>,
    /// Bumped by every roster change, so packet actors know when their cached roster is old.
    pub roster_epoch: AtomicU64,
    pub wallets: Box<[Addr<WalletShard>]>,
    pub arbiters: Box<[ArbiterHandle]>,
    pub timer: Addr<Timer>,
    /// Packets opening or live; bounded by `open_packets_max`.
    pub open_packets: AtomicUsize,
    /// Which user each operation id belongs to, so an id reused for another user is refused
    /// even though the two users live on different shards.
    op_owners: DashMap<OpId, UserId>,
    running: AtomicBool,
    seed: Option<u64>,
}

impl Shared {
    pub(crate) fn wallet(&self, user: UserId) -> &Addr<WalletShard> {
        &self.wallets[bucket(user.0, self.wallets.len())]
    }

    /// Forgets a send that was refused, so the id can be sent again.
    pub(crate) fn abandon_opening(&self, packet: PacketId) {
        if self.routes.remove_if(&packet, |_, r| matches!(r, Route::Opening)).is_some() {
            self.open_packets.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The current roster of `group` and the epoch it was read at.
    pub(crate) fn roster(&self, group: GroupId) -> (u64, Option<Arc<IdSet<UserId>>>) {
        let epoch = self.roster_epoch.load(Ordering::Acquire);
        (epoch, self.rosters.get(&group).map(|r| Arc::clone(r.value())))
    }

    fn is_eligible(&self, group: GroupId, split: &Split, user: UserId) -> bool {
        match *split {
            Split::Exclusive { to, .. } => to == user,
            _ => self.is_member(group, user),
        }
    }

    fn is_member(&self, group: GroupId, user: UserId) -> bool {
        self.rosters.get(&group).is_some_and(|r| r.contains(&user))
    }

    fn route(&self, packet: PacketId) -> Option<Route> {
        self.routes.get(&packet).map(|r| r.value().clone())
    }

    /// Loads what a journal recorded: rosters, operation ids, and every packet — open ones
    /// dormant with their claims and their deadlines scheduled (a deadline that passed while
    /// the engine was down fires at once), expired ones closed.
    fn load(&self, replica: Replica) -> Result<(), StartError> {
        let cap = self.limits.share_fen_max;
        for (group, members) in replica.rosters {
            self.rosters.insert(group, Arc::new(members.into_iter().collect()));
        }
        self.roster_epoch.fetch_add(1, Ordering::AcqRel);
        for (op, applied) in replica.ops {
            self.op_owners.insert(op, applied.user);
        }
        let now = self.clock.now();
        for (id, p) in replica.packets {
            // Expired ones, and sold-out ones past their deadline (closing those records
            // nothing), are closed; the rest wait for a grab or their deadline.
            let sold_out = p.claims.len() == p.spec.split.shares() as usize;
            if p.refunded.is_some() || (sold_out && p.expires_at <= now) {
                let state = p.state(cap).map_err(StartError::Recovery)?;
                self.routes.insert(id, Route::Closed(Arc::new(state.view())));
                continue;
            }
            let expires_at = p.expires_at;
            self.routes.insert(id, Route::Dormant(Arc::new(p)));
            self.open_packets.fetch_add(1, Ordering::AcqRel);
            self.timer.do_send(Schedule { at: expires_at, packet: id });
        }
        Ok(())
    }

    /// Opens a packet whose escrow is durable: dormant until someone touches it. Runs in the
    /// escrow record's journal completion, so it completes even if the sender stopped
    /// waiting.
    pub(crate) fn open_packet(&self, meta: PacketMeta) -> PacketView {
        let view = meta.untouched_view(self.limits.share_fen_max);
        // Published before the route exists, so `PacketSent` is the packet's first event.
        self.events.publish(|| Event::PacketSent {
            packet: view.id,
            sender: view.sender,
            group: view.group,
            total: view.total,
            shares: view.shares,
            expires_at: view.expires_at,
        });
        self.routes.insert(view.id, Route::Dormant(Arc::new(meta)));
        // Not refused: one deadline per open packet, bounded by `open_packets_max`.
        self.timer.do_send(Schedule { at: view.expires_at, packet: view.id });
        view
    }

    /// Tells an open packet (waking it if dormant) to expire if it is due. Returns whether the
    /// packet was open. The message is not refused: one per due packet per caller.
    pub(crate) fn expire_packet(self: &Arc<Self>, packet: PacketId, reply: Option<oneshot::Sender<Expiry>>) -> bool {
        match self.wake(packet) {
            Some(Route::Live(live)) => {
                live.addr.do_send(Expire { reply });
                true
            }
            _ => false,
        }
    }

    /// The packet's route, with its actor started if it was dormant. The routing table's
    /// entry lock makes sure only one actor is ever started for a packet.
    pub(crate) fn wake(self: &Arc<Self>, packet: PacketId) -> Option<Route> {
        let route = self.route(packet)?;
        if !matches!(route, Route::Dormant(_)) {
            return Some(route);
        }
        let mut entry = self.routes.get_mut(&packet)?;
        if let Route::Dormant(meta) = entry.value() {
            let meta = Arc::clone(meta);
            let addr = PacketActor::spawn(Arc::clone(self), &meta);
            *entry.value_mut() = Route::Live(Arc::new(LivePacket { addr, meta }));
        }
        Some(entry.value().clone())
    }

    fn packet_seed(&self, packet: PacketId) -> u64 {
        match self.seed {
            // splitmix64 of the pair: distinct, well-mixed seeds per packet, reproducible.
            Some(seed) => {
                let mut z = seed ^ packet.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^ (z >> 31)
            }
            None => rand::random(),
        }
    }
}

/// The running actor system, stopped when the last handle goes.
struct Runtime {
    shared: Arc<Shared>,
    system: actix_rt::System,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.running.store(false, Ordering::Release);
        self.shared.events.close();
        self.system.stop();
    }
}

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
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("arbiters", &self.runtime.shared.arbiters.len())
            .field("wallet_shards", &self.runtime.shared.wallets.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the actor system on background threads and returns a handle to it.
    ///
    /// It blocks the calling thread for the few milliseconds the threads take to start.
    ///
    /// # Errors
    ///
    /// [`StartError`] if the limits contradict each other, `arbiters` or `wallet_shards` is
    /// zero, or the threads cannot be started.
    pub fn start(config: Config) -> Result<Engine, StartError> {
        config.limits.validate()?;
        if config.arbiters == 0 || config.wallet_shards == 0 {
            return Err(StartError::InvalidConfig("arbiters and wallet_shards must be at least 1".into()));
        }
        let shard_count = config.wallet_shards;
        let Config { limits, clock, journal, journal_dir, seed, .. } = config;
        // Recovery first: a journal that cannot be read refuses the start before any thread.
        let (journal, replica) = match journal_dir {
            Some(dir) => {
                let (file, recovered) = FileJournal::open(&dir)?;
                let problems = recovered.replica.check(limits.share_fen_max);
                if !problems.is_empty() {
                    return Err(StartError::Recovery(problems.join("; ")));
                }
                (Arc::new(file) as Arc<dyn Journal>, Some(recovered.replica))
            }
            None => (journal, None),
        };
        let mut ledgers: Vec<Ledger> = (0..shard_count).map(|_| Ledger::new(limits.balance_fen_max)).collect();
        if let Some(replica) = &replica {
            let mut balances: Vec<Vec<(UserId, u64)>> = vec![Vec::new(); shard_count];
            let mut ops: Vec<Vec<_>> = vec![Vec::new(); shard_count];
            for (&user, &fen) in &replica.balances {
                balances[bucket(user.0, shard_count)].push((user, fen));
            }
            for (&op, &applied) in &replica.ops {
                ops[bucket(applied.user.0, shard_count)].push((op, applied));
            }
            ledgers =
                balances.into_iter().zip(ops).map(|(b, o)| Ledger::restore(limits.balance_fen_max, b, o)).collect();
        }
        let (system, arbiters, stopped) = start_system(config.arbiters)?;
        let events = Arc::new(EventHub::new(limits.event_buffer_len, limits.subscribers_max));
        let routes = Arc::new(DashMap::new());

        // Each actor reports once its mailbox capacity is set, so no request meets actix's
        // default capacity.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let wallets: Box<[_]> = ledgers
            .into_iter()
            .enumerate()
            .map(|(i, ledger)| {
                let (journal, events, ready) = (Arc::clone(&journal), Arc::clone(&events), ready_tx.clone());
                let capacity = limits.wallet_mailbox_capacity;
                WalletShard::start_in_arbiter(&arbiters[i % arbiters.len()], move |ctx| {
                    ctx.set_mailbox_capacity(capacity);
                    let _ = ready.send(());
                    WalletShard::new(ledger, journal, events)
                })
            })
            .collect();
        let timer = {
            let (clock, ready) = (Arc::clone(&clock), ready_tx.clone());
            Timer::start_in_arbiter(&arbiters[0], move |_| {
                let _ = ready.send(());
                Timer::new(clock)
            })
        };
        drop(ready_tx);
        for _ in 0..=wallets.len() {
            if ready_rx.recv_timeout(Duration::from_secs(START_TIMEOUT_SECS)).is_err() {
                system.stop();
                return Err(StartError::Runtime("actors did not start".into()));
            }
        }
        let shared = Arc::new(Shared {
            limits,
            clock,
            journal,
            events,
            routes,
            rosters: DashMap::new(),
            roster_epoch: AtomicU64::new(0),
            wallets,
            arbiters,
            timer,
            open_packets: AtomicUsize::new(0),
            op_owners: DashMap::new(),
            running: AtomicBool::new(true),
            seed,
        });
        // Weak: the timer must not keep the engine alive after the last handle is gone.
        shared.timer.do_send(Attach(Arc::downgrade(&shared)));
        if let Some(replica) = replica {
            shared.load(replica)?;
        }
        Ok(Engine { runtime: Arc::new(Runtime { shared, system, stopped: Mutex::new(Some(stopped)) }) })
    }

    fn shared(&self) -> Option<&Arc<Shared>> {
        let shared = &self.runtime.shared;
        // A journal that can no longer make changes durable stops the engine: answering
        // anything then could acknowledge what a restart would not have.
        (shared.running.load(Ordering::Acquire) && !shared.journal.failed()).then_some(shared)
    }

    /// The limits this engine runs with.
    pub fn limits(&self) -> &Limits {
        &self.runtime.shared.limits
    }

    /// The engine's clock's current time.
    pub fn now(&self) -> Timestamp {
        self.runtime.shared.clock.now()
    }

    /// Replaces a group's roster: its members are the only ones who may grab its packets
    /// (besides the named recipient of an exclusive packet). Duplicates are ignored.
    ///
    /// # Errors
    ///
    /// `TooManyMembers` over `members_per_group_max`, `TooManyGroups` over `groups_max`,
    /// `ShuttingDown`.
    pub async fn set_members(
        &self,
        group: GroupId,
        members: impl IntoIterator<Item = UserId>,
    ) -> Result<(), EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        let max = shared.limits.members_per_group_max;
        let mut sorted: Vec<UserId> = Vec::new();
        for m in members {
            sorted.push(m);
            // Checked as they come, so an endless iterator cannot exhaust memory.
            if sorted.len() > max.saturating_mul(2) {
                return Err(EngineError::TooManyMembers { members: sorted.len(), max });
            }
        }
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() > max {
            return Err(EngineError::TooManyMembers { members: sorted.len(), max });
        }
        if !shared.rosters.contains_key(&group) && shared.rosters.len() >= shared.limits.groups_max {
            return Err(EngineError::TooManyGroups { max: shared.limits.groups_max });
        }
        shared.rosters.insert(group, Arc::new(sorted.iter().copied().collect()));
        // After the insert: an actor that sees the new epoch finds the new roster.
        shared.roster_epoch.fetch_add(1, Ordering::AcqRel);
        let (tx, rx) = oneshot::channel();
        shared.journal.append(
            Record::Roster { group, members: sorted },
            Box::new(move || {
                let _ = tx.send(());
            }),
        );
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Adds `amount` to `user`'s wallet, once per `op`: a retry with the same fields returns
    /// the balance the first application produced. Returns the new balance.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `BalanceLimit`, `IdConflict` (the id was used with other fields),
    /// `Busy`, `ShuttingDown`. Nothing changes on an error.
    pub async fn deposit(&self, op: OpId, user: UserId, amount: Amount) -> Result<Amount, WalletError> {
        let shared = self.shared().ok_or(WalletError::ShuttingDown)?;
        claim_op(shared, op, user)?;
        let (reply, rx) = oneshot::channel();
        try_send_wallet(shared.wallet(user), Deposit { op, user, amount, reply })?;
        rx.await.map_err(|_| WalletError::ShuttingDown)?
    }

    /// Takes `amount` from `user`'s wallet, once per `op`. Returns the new balance.
    ///
    /// # Errors
    ///
    /// `ZeroAmount`, `InsufficientFunds`, `IdConflict`, `Busy`, `ShuttingDown`. Nothing
    /// changes on an error.
    pub async fn withdraw(&self, op: OpId, user: UserId, amount: Amount) -> Result<Amount, WalletError> {
        let shared = self.shared().ok_or(WalletError::ShuttingDown)?;
        claim_op(shared, op, user)?;
        let (reply, rx) = oneshot::channel();
        try_send_wallet(shared.wallet(user), Withdraw { op, user, amount, reply })?;
        rx.await.map_err(|_| WalletError::ShuttingDown)?
    }

    /// `user`'s balance, including every share whose grab has returned.
    ///
    /// # Errors
    ///
    /// `Busy` when the wallet shard's mailbox is full, `ShuttingDown`.
    pub async fn balance(&self, user: UserId) -> Result<Amount, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        let (reply, rx) = oneshot::channel();
        shared.wallet(user).try_send(Balance { user, reply }).map_err(|e| match e {
            actix::prelude::SendError::Full(_) => EngineError::Busy,
            actix::prelude::SendError::Closed(_) => EngineError::ShuttingDown,
        })?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Sends a packet: debits the sender's wallet by its total (held in escrow) and opens it
    /// for grabs. Sending the same packet again (same id, same fields) returns its current
    /// view and debits nothing.
    ///
    /// # Errors
    ///
    /// `InvalidSplit`, `GreetingTooLong`, `NotMember` (sender, or exclusive recipient),
    /// `InsufficientFunds`, `IdConflict` (same id, other fields), `TooManyOpenPackets`,
    /// `Busy`, `ShuttingDown`. Nothing is debited on an error.
    pub async fn send_packet(&self, spec: NewPacket) -> Result<PacketView, SendError> {
        let shared = self.shared().ok_or(SendError::ShuttingDown)?;
        let limits = &shared.limits;
        if spec.greeting.len() > limits.greeting_bytes_max {
            return Err(SendError::GreetingTooLong { bytes: spec.greeting.len(), max: limits.greeting_bytes_max });
        }
        split::validate(&spec.split, limits).map_err(|reason| SendError::InvalidSplit { reason })?;
        if !shared.is_member(spec.group, spec.sender) {
            return Err(SendError::NotMember { user: spec.sender });
        }
        if let Split::Exclusive { to, .. } = spec.split {
            if !shared.is_member(spec.group, to) {
                return Err(SendError::NotMember { user: to });
            }
        }
        // Reserve the id, or find that it is taken. The map guard is released before any await.
        let existing = match shared.routes.entry(spec.id) {
            Entry::Occupied(e) => Some(e.get().clone()),
            Entry::Vacant(e) => {
                let max = limits.open_packets_max;
                if shared
                    .open_packets
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                    .is_err()
                {
                    return Err(SendError::TooManyOpenPackets { max });
                }
                e.insert(Route::Opening);
                None
            }
        };
        match existing {
            None => {}
            Some(Route::Opening) => return Err(SendError::Busy),
            Some(route @ (Route::Dormant(_) | Route::Live(_))) if route.open_meta().is_some_and(|m| m.spec == spec) => {
                return self.packet(spec.id).await.map_err(|_| SendError::Busy)
            }
            Some(Route::Closed(view)) if same_spec(&view, &spec) => return Ok((*view).clone()),
            Some(_) => return Err(SendError::IdConflict { packet: spec.id }),
        }
        let (id, sender) = (spec.id, spec.sender);
        let (reply, rx) = oneshot::channel();
        let escrow = Escrow { shared: Arc::clone(shared), spec, seed: shared.packet_seed(id), reply };
        if let Err(e) = shared.wallet(sender).try_send(escrow) {
            shared.abandon_opening(id);
            return Err(match e {
                actix::prelude::SendError::Full(_) => SendError::Busy,
                actix::prelude::SendError::Closed(_) => SendError::ShuttingDown,
            });
        }
        // From here the send completes even if this future is dropped: the shard debits and
        // the packet opens without the caller.
        rx.await.map_err(|_| SendError::ShuttingDown)?
    }

    /// Grabs a share of `packet` for `user`. The share is in the user's wallet when this
    /// returns. A repeat grab by the same user returns `AlreadyGrabbed` with the first share.
    ///
    /// # Errors
    ///
    /// `AlreadyGrabbed`, `NotEligible`, `Expired`, `SoldOut`, `UnknownPacket`, `Busy` (the
    /// packet's mailbox is full: retry), `ShuttingDown`.
    pub async fn grab(&self, packet: PacketId, user: UserId) -> Result<Grabbed, GrabError> {
        let shared = self.shared().ok_or(GrabError::ShuttingDown)?;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let live = match shared.wake(packet) {
                None | Some(Route::Opening) => return Err(GrabError::UnknownPacket),
                Some(Route::Closed(view)) => {
                    return Err(closed_answer(&view, user, shared.is_eligible(view.group, &view.split, user)))
                }
                Some(Route::Live(live)) => live,
                Some(Route::Dormant(_)) => unreachable!("wake starts dormant packets"),
            };
            let (reply, rx) = oneshot::channel();
            match live.addr.try_send(Grab { user, reply }) {
                Ok(()) => {}
                Err(actix::prelude::SendError::Full(_)) => return Err(GrabError::Busy),
                Err(actix::prelude::SendError::Closed(_)) => continue,
            }
            match rx.await {
                Ok(result) => return result,
                // The actor closed at expiry with this grab still queued: the route now
                // holds the closed view, which answers it.
                Err(_) => continue,
            }
        }
        Err(GrabError::ShuttingDown)
    }

    /// The packet as it stands: status, claims in grab order, escrow left, best luck once sold
    /// out.
    ///
    /// # Errors
    ///
    /// `UnknownPacket`, `Busy`, `ShuttingDown`.
    pub async fn packet(&self, packet: PacketId) -> Result<PacketView, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let live = match shared.route(packet) {
                None | Some(Route::Opening) => return Err(EngineError::UnknownPacket),
                Some(Route::Closed(view)) => return Ok((*view).clone()),
                // Nothing has happened to it yet: no need to wake it to describe it.
                Some(Route::Dormant(meta)) => return Ok(meta.untouched_view(shared.limits.share_fen_max)),
                Some(Route::Live(live)) => live,
            };
            let (reply, rx) = oneshot::channel();
            match live.addr.try_send(Query { reply }) {
                Ok(()) => {}
                Err(actix::prelude::SendError::Full(_)) => return Err(EngineError::Busy),
                Err(actix::prelude::SendError::Closed(_)) => continue,
            }
            if let Ok(view) = rx.await {
                return Ok(view);
            }
        }
        Err(EngineError::ShuttingDown)
    }

    /// Asks to take back a packet's unclaimed remainder before expiry. Personal packets are
    /// irrevocable (rule 9 of the design): the remainder returns to the sender at expiry, and
    /// this call always refuses. It exists so that callers get that answer as a typed error.
    ///
    /// # Errors
    ///
    /// `Irrevocable` for any packet that exists, `UnknownPacket`, `ShuttingDown`.
    pub async fn recall(&self, packet: PacketId) -> Result<Amount, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        match shared.route(packet) {
            None | Some(Route::Opening) => Err(EngineError::UnknownPacket),
            Some(Route::Dormant(_) | Route::Live(_) | Route::Closed(_)) => Err(EngineError::Irrevocable { packet }),
        }
    }

    /// A stream of events from now on.
    ///
    /// # Errors
    ///
    /// `TooManySubscribers` over `subscribers_max`, `ShuttingDown`.
    pub fn subscribe(&self) -> Result<Subscription, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        shared.events.subscribe().ok_or(EngineError::TooManySubscribers { max: shared.limits.subscribers_max })
    }

    /// Expires every live packet whose deadline has passed by the engine's clock, and returns
    /// once each refund is durable and credited. Returns how many live packets it found due;
    /// the timer may have closed others already, and this call waits for those too.
    ///
    /// The timer does this by itself; this call is for callers that must know it is done (a
    /// test that moved a manual clock, an operator draining expiries before maintenance). It
    /// scans the routing table: O(packets).
    ///
    /// # Errors
    ///
    /// `ShuttingDown`.
    pub async fn expire_due(&self) -> Result<usize, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        let now = shared.clock.now();
        let due: Vec<PacketId> = shared
            .routes
            .iter()
            .filter(|r| r.value().open_meta().is_some_and(|m| m.expires_at <= now))
            .map(|r| *r.key())
            .collect();
        // A dropped reply means the packet closed under an earlier expiry; the barrier below
        // waits for that expiry's refund too.
        join_all(due.iter().filter_map(|&packet| {
            let (reply, rx) = oneshot::channel();
            shared.expire_packet(packet, Some(reply)).then_some(rx)
        }))
        .await;
        barrier(&shared.journal).await;
        // Credits travel through the wallet mailboxes; a flush of each makes them applied.
        join_all(shared.wallets.iter().map(|w| {
            let (reply, rx) = oneshot::channel();
            w.do_send(wallet::Flush { reply });
            rx
        }))
        .await;
        Ok(due.len())
    }

    /// Both sides of the conservation equation and every packet invariant, for a quiescent
    /// moment (requests in flight during the audit may be counted on one side only).
    ///
    /// # Errors
    ///
    /// `ShuttingDown`.
    pub async fn audit(&self) -> Result<Audit, EngineError> {
        let shared = self.shared().ok_or(EngineError::ShuttingDown)?;
        let routes: Vec<Route> = shared.routes.iter().map(|r| r.value().clone()).collect();
        let mut audit = Audit {
            wallets: Amount::ZERO,
            escrow: Amount::ZERO,
            pending: Amount::ZERO,
            deposits: Amount::ZERO,
            withdrawals: Amount::ZERO,
            packets_live: 0,
            packets_closed: 0,
            violations: Vec::new(),
        };
        let mut inspections = Vec::new();
        let mut escrow: u128 = 0;
        for route in routes {
            match route {
                Route::Opening => {}
                Route::Dormant(meta) => {
                    audit.packets_live += 1;
                    escrow += u128::from(meta.open_state(shared.limits.share_fen_max).escrow().as_fen());
                }
                Route::Live(live) => {
                    let (reply, rx) = oneshot::channel();
                    // Not refused: the audit must see every packet. A packet that closes
                    // meanwhile drops the message; its closed view carries no escrow.
                    live.addr.do_send(Inspect { reply });
                    inspections.push(rx);
                }
                Route::Closed(view) => {
                    audit.packets_closed += 1;
                    if let Err(v) = check_view(&view) {
                        audit.violations.push(v);
                    }
                }
            }
        }
        for (amount, check) in join_all(inspections).await.into_iter().flatten() {
            audit.packets_live += 1;
            escrow += u128::from(amount.as_fen());
            if let Err(v) = check {
                audit.violations.push(v);
            }
        }
        let totals = join_all(shared.wallets.iter().map(|w| {
            let (reply, rx) = oneshot::channel();
            w.do_send(GetTotals { reply });
            rx
        }))
        .await;
        let (mut balances, mut deposited, mut withdrawn) = (0u128, 0u128, 0u128);
        for t in totals {
            let t = t.map_err(|_| EngineError::ShuttingDown)?;
            balances += u128::from(t.balances);
            deposited += u128::from(t.deposited);
            withdrawn += u128::from(t.withdrawn);
        }
        let fen = |sum: u128, what: &str, violations: &mut Vec<String>| {
            u64::try_from(sum).map(Amount::fen).unwrap_or_else(|_| {
                violations.push(format!("{what} overflows u64 fen"));
                Amount::ZERO
            })
        };
        audit.escrow = fen(escrow, "escrow", &mut audit.violations);
        audit.wallets = fen(balances, "wallets", &mut audit.violations);
        audit.deposits = fen(deposited, "deposits", &mut audit.violations);
        audit.withdrawals = fen(withdrawn, "withdrawals", &mut audit.violations);
        Ok(audit)
    }

    /// Stops the engine gracefully: new requests are refused with `ShuttingDown`, requests
    /// already queued are answered, the journal is flushed, subscriptions end, and the actor
    /// threads stop. Other handles see `ShuttingDown` from then on. Calling it again does
    /// nothing.
    pub async fn shutdown(&self) {
        let shared = &self.runtime.shared;
        if !shared.running.swap(false, Ordering::AcqRel) {
            return;
        }
        let live: Vec<Arc<LivePacket>> = shared
            .routes
            .iter()
            .filter_map(|r| if let Route::Live(l) = r.value() { Some(Arc::clone(l)) } else { None })
            .collect();
        // Packets first: their credits land in wallet mailboxes, which drain next.
        join_all(live.iter().map(|l| {
            let (reply, rx) = oneshot::channel();
            l.addr.do_send(packet_actor::Flush { reply });
            rx
        }))
        .await;
        join_all(shared.wallets.iter().map(|w| {
            let (reply, rx) = oneshot::channel();
            w.do_send(wallet::Flush { reply });
            rx
        }))
        .await;
        // The flush (an fsync, and a snapshot for the file journal) blocks: it runs on a thread
        // of its own so the caller's runtime keeps turning, whatever runtime that is.
        let (flushed_tx, flushed_rx) = oneshot::channel();
        let journal = Arc::clone(&shared.journal);
        std::thread::spawn(move || {
            journal.flush();
            // Released before answering: once shutdown returns, dropping the handle releases
            // the journal (and its directory lock) at once.
            drop(journal);
            let _ = flushed_tx.send(());
        });
        let _ = flushed_rx.await;
        shared.events.close();
        self.runtime.system.stop();
        let stopped = self.runtime.stopped.lock().take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

/// The actix system thread's handles: the system, its arbiters, and a receiver told when every
/// thread has ended.
type SystemHandles = (actix_rt::System, Box<[ArbiterHandle]>, oneshot::Receiver<()>);

/// Starts the actix system thread and its arbiters.
fn start_system(arbiters: usize) -> Result<SystemHandles, StartError> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
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
    let (system, handles) = started_rx
        .recv_timeout(Duration::from_secs(START_TIMEOUT_SECS))
        .map_err(|_| StartError::Runtime("the actor system did not start".into()))?;
    Ok((system, handles, stopped_rx))
}

/// Records that `op` belongs to `user`, or refuses it if it belongs to someone else.
fn claim_op(shared: &Shared, op: OpId, user: UserId) -> Result<(), WalletError> {
    let owner = *shared.op_owners.entry(op).or_insert(user);
    if owner == user {
        Ok(())
    } else {
        Err(WalletError::IdConflict { op })
    }
}

fn try_send_wallet<M>(wallet: &Addr<WalletShard>, msg: M) -> Result<(), WalletError>
where
    M: Message<Result = ()> + Send + 'static,
    WalletShard: Handler<M>,
{
    wallet.try_send(msg).map_err(|e| match e {
        actix::prelude::SendError::Full(_) => WalletError::Busy,
        actix::prelude::SendError::Closed(_) => WalletError::ShuttingDown,
    })
}

async fn barrier(journal: &Arc<dyn Journal>) {
    let (tx, rx) = oneshot::channel();
    journal.barrier(Box::new(move || {
        let _ = tx.send(());
    }));
    let _ = rx.await;
}

fn spec_of(view: &PacketView) -> NewPacket {
    NewPacket {
        id: view.id,
        sender: view.sender,
        group: view.group,
        split: view.split.clone(),
        greeting: view.greeting.clone(),
    }
}

fn same_spec(view: &PacketView, spec: &NewPacket) -> bool {
    spec_of(view) == *spec
}

/// The answer a closed packet gives a grab, in the same order a live one would.
fn closed_answer(view: &PacketView, user: UserId, eligible: bool) -> GrabError {
    if let Some(c) = view.claims.iter().find(|c| c.user == user) {
        return GrabError::AlreadyGrabbed { amount: c.amount, position: c.position };
    }
    if !eligible {
        return GrabError::NotEligible;
    }
    match view.status {
        PacketStatus::SoldOut => GrabError::SoldOut,
        PacketStatus::Open | PacketStatus::Expired { .. } => GrabError::Expired,
    }
}
