//! The engine's parts, and what they do together beyond any one actor: starting in order
//! (recovery, threads, shards, timer, routes), health and what a caller whose reply was lost
//! may assume, retirement sweeps, and settling a send once its escrow is decided. The
//! [`crate::Engine`] handle holds an `Arc<Inner>` and nothing else.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::audit;
use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::error::{SendError, StartError};
use crate::events::{Event, EventHub};
use crate::health::{Failure, Fuse, Health, Stopped};
use crate::journal::{self, FileJournal, Journal};
use crate::ledger::DailyCaps;
use crate::limits::Limits;
use crate::money::{OpId, PacketId, UserId};
use crate::oplog::{LiveLog, LoggedJournal};
use crate::org::Orgs;
use crate::outbox::Outbox;
use crate::packet::{PacketState, PacketStatus, PacketView};
use crate::packet_actor::PacketCtx;
use crate::record::{ApprovalId, PacketSent, Record, RETIRED_IDS_MAX};
use crate::replay::{Folded, Replica};
use crate::roster::Rosters;
use crate::routes::{PacketMeta, Routes};
use crate::runtime::{Refused, Runtime};
use crate::timer::{Attach, AttachSweep, Due, Schedule, Timer};
use crate::transfer::TransferState;
use crate::transfer_shard::{TransferCtx, TransferShard, Transfers};
use crate::wallet::{Settle, WalletShard, Wallets};

/// What one retirement sweep dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retired {
    /// Closed packets dropped from memory (their ids are unknown from then on).
    pub packets: usize,
    /// Operation ids forgotten (they may be used again).
    pub ops: usize,
    /// Settled transfers dropped from memory (their ids are unknown from then on).
    pub transfers: usize,
}

/// The engine's parts, shared by every handle.
pub(crate) struct Inner {
    pub(crate) limits: Limits,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) events: Arc<EventHub>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) rosters: Arc<Rosters>,
    pub(crate) wallets: Arc<Wallets>,
    pub(crate) transfers: Arc<Transfers>,
    /// What the transfer shards share: the pending count is read for [`crate::Gauges`].
    pub(crate) transfer_ctx: Arc<TransferCtx>,
    pub(crate) orgs: Arc<Orgs>,
    pub(crate) oplog: Arc<LiveLog>,
    /// What this partition sent to and received from the others.
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) running: AtomicBool,
    /// Blown when an actor panics.
    pub(crate) fuse: Arc<Fuse>,
    /// Held while a retirement is decided, applied and appended: two sweeps at once (the
    /// timer's and a caller's) would retire the same packet twice.
    pub(crate) retiring: tokio::sync::Mutex<()>,
    pub(crate) seed: Option<u64>,
    pub(crate) runtime: Runtime,
}

impl Inner {
    /// `Elsewhere` for a packet another partition holds.
    pub(crate) fn holds_packet(&self, packet: PacketId) -> Result<(), Refused> {
        let partition = self.outbox.partition();
        match partition.holds_packet(packet) {
            true => Ok(()),
            false => Err(Refused::Elsewhere(partition.of_packet(packet))),
        }
    }

    /// Starts the engine's parts: recovery first (a journal that cannot be read refuses the
    /// start before any thread starts), then the actor threads, the wallet shards, the timer
    /// and the routes, loaded with what the journal recorded.
    pub(crate) fn start(config: Config) -> Result<Arc<Inner>, StartError> {
        config.limits.validate()?;
        if config.arbiters == 0 || config.wallet_shards == 0 {
            return Err(StartError::InvalidConfig("arbiters and wallet_shards must be at least 1".into()));
        }
        if config.journal_dir.is_some() && (config.start.is_some() || config.history.is_some()) {
            // The file journal recovers from its own directory: another start would be ignored.
            return Err(StartError::InvalidConfig(
                "a file journal recovers from its directory, not from a given state or history".into(),
            ));
        }
        if !config.partition.is_whole() && config.journal_dir.is_some() {
            // A partition journals to its cluster's replicated log (or memory).
            return Err(StartError::InvalidConfig("a partition of a cluster cannot use the file journal".into()));
        }
        let mut config = config;
        // Taken out of the configuration, so the state is moved into the engine, not copied.
        let start = config.start.take();
        let (journal, replica) = open_journal(&config, start)?;
        let Config { limits, clock, seed, arbiters, wallet_shards, partition, .. } = config;
        let mut replica = replica.unwrap_or_else(|| Replica::new(limits.share_fen_max).with_partition(partition));
        let outbox = Arc::new(Outbox::new(std::mem::take(&mut replica.remittances)));
        replica.ledger.stamp_unknown_times(clock.now());
        // The operation log is folded from every record made durable from here on, in journal
        // order, through the journal every part uses.
        let oplog = std::mem::take(&mut replica.oplog).with_retention(limits.op_log_retention_secs);
        let oplog = Arc::new(LiveLog::new(oplog));
        let journal: Arc<dyn Journal> = Arc::new(LoggedJournal { inner: journal, log: Arc::clone(&oplog) });
        if !partition.is_whole() && replica.records == 0 {
            // A partition's journal names its partition first, so that no engine configured
            // with another count can replay it.
            let named = Record::Partitioned { index: partition.index(), count: partition.count() };
            journal.append(named, Box::new(|| {}));
        }
        let runtime = Runtime::start(arbiters)?;
        let events = Arc::new(EventHub::new(limits.event_buffer_len, limits.subscribers_max));
        let fuse = Arc::new(Fuse::default());

        let ops: Vec<(OpId, UserId)> = replica.ledger.ops().map(|(op, done)| (op, done.user)).collect();
        let mut ledgers = replica.ledger.split(wallet_shards, |u| Wallets::place(u, wallet_shards)).into_iter();
        let caps = DailyCaps { sent_fen_max: limits.daily_sent_fen_max, packets_max: limits.daily_packets_max };
        let shards = runtime.start_actors(wallet_shards, limits.wallet_mailbox_capacity, |_| {
            let ledger = ledgers.next().expect("one ledger per shard");
            let rules = (caps, limits.approval_secs);
            WalletShard::new(ledger, rules, Arc::clone(&journal), Arc::clone(&events), Arc::clone(&fuse))
        })?;
        let timer = runtime
            .start_actors(1, limits.wallet_mailbox_capacity, |_| Timer::new(Arc::clone(&clock), Arc::clone(&fuse)))?;
        let timer = timer[0].clone();
        let wallets = Arc::new(Wallets::new(partition, shards, ops));
        let loaded: Vec<TransferState> = std::mem::take(&mut replica.transfers).into_values().collect();
        let deadlines: Vec<(Timestamp, Due)> =
            loaded.iter().filter_map(|t| Some((t.next_deadline()?, Due::Transfer(t.id())))).collect();
        let orgs = Arc::new(Orgs::new(std::mem::take(&mut replica.orgs), limits.clone()));
        let transfer_ctx = Arc::new(TransferCtx {
            orgs: Arc::clone(&orgs),
            clock: Arc::clone(&clock),
            journal: Arc::clone(&journal),
            events: Arc::clone(&events),
            wallets: Arc::clone(&wallets),
            timer: timer.clone(),
            fuse: Arc::clone(&fuse),
            pending: AtomicUsize::new(deadlines.len()),
            pending_max: limits.pending_transfers_max,
            ids: parking_lot::Mutex::new(loaded.iter().map(TransferState::id).collect()),
            limits: limits.clone(),
            outbox: Arc::clone(&outbox),
        });
        let mut parts: Vec<Vec<TransferState>> = (0..wallet_shards).map(|_| Vec::new()).collect();
        loaded.into_iter().for_each(|t| parts[Transfers::place(t.id(), wallet_shards)].push(t));
        let mut parts = parts.into_iter();
        let transfer_shards = runtime.start_actors(wallet_shards, limits.wallet_mailbox_capacity, |_| {
            TransferShard::new(Arc::clone(&transfer_ctx), parts.next().expect("one part per shard"))
        })?;
        let transfers = Arc::new(Transfers::new(partition, transfer_shards));
        let rosters = Arc::new(Rosters::new(replica.rosters, limits.members_per_group_max, limits.groups_max));
        let routes =
            Routes::new(limits.open_packets_max, runtime.arbiters().into(), timer.clone(), |on_close| PacketCtx {
                clock: Arc::clone(&clock),
                journal: Arc::clone(&journal),
                events: Arc::clone(&events),
                wallets: Arc::clone(&wallets),
                rosters: Arc::clone(&rosters),
                orgs: Arc::clone(&orgs),
                outbox: Arc::clone(&outbox),
                timer: timer.clone(),
                fuse: Arc::clone(&fuse),
                mailbox_capacity: limits.packet_mailbox_capacity,
                on_close,
            });
        // Weak: the timer must not keep the engine alive after the last handle is gone.
        let (due_routes, due_transfers) = (Arc::downgrade(&routes), Arc::downgrade(&transfers));
        timer.do_send(Attach(Box::new(move |due| match due {
            // A dormant packet is woken to act, so opening and expiry have one implementation.
            Due::Packet(packet) => {
                if let Some(routes) = due_routes.upgrade() {
                    routes.run_due(packet, None);
                }
            }
            Due::Transfer(id) => {
                if let Some(transfers) = due_transfers.upgrade() {
                    transfers.due(id);
                }
            }
        })));
        // After `Attach`: a deadline that passed while the engine was down fires at once.
        deadlines.into_iter().for_each(|(at, due)| timer.do_send(Schedule { at, due }));
        routes.load(replica.packets.into_values(), clock.now());
        let running = true.into();
        let every_secs = limits.retire_interval_secs;
        let retiring = tokio::sync::Mutex::new(());
        let inner = Inner {
            limits,
            clock,
            journal,
            events,
            routes,
            rosters,
            wallets,
            transfers,
            transfer_ctx,
            orgs,
            oplog,
            outbox,
            running,
            fuse,
            retiring,
            seed,
            runtime,
        };
        let inner = Arc::new(inner);
        // Weak, as above; the sweep runs on the timer's thread, off any caller's path.
        let sweeping = Arc::downgrade(&inner);
        let on_sweep = Box::new(move || {
            let sweeping = sweeping.clone();
            actix::spawn(async move {
                if let Some(inner) = sweeping.upgrade() {
                    if inner.health() == Health::Serving {
                        // A full sweep may take several rounds: retire until a round is short.
                        while let Ok(r) = inner.retire_due().await {
                            if r.packets + r.ops + r.transfers < RETIRED_IDS_MAX {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                    }
                }
            });
        });
        let first = inner.clock.now().plus_secs(every_secs);
        timer.do_send(AttachSweep { on_sweep, first, every_secs });
        Ok(inner)
    }

    pub(crate) fn health(&self) -> Health {
        if self.fuse.is_blown() {
            return Health::Failed { failure: Failure::Internal };
        }
        if let Some(storage) = self.journal.failure() {
            return Health::Failed { failure: Failure::Storage(storage) };
        }
        if self.running.load(Ordering::Acquire) {
            Health::Serving
        } else {
            Health::ShuttingDown
        }
    }

    /// What a caller whose reply was lost may assume: after a failure, that the request may
    /// have taken effect (unless the journal proved nothing in flight reached the disk).
    pub(crate) fn lost(&self) -> Stopped {
        match self.health() {
            Health::Failed { failure: Failure::Storage(storage) } if storage.proved_nothing_lost() => {
                Stopped::Unavailable
            }
            Health::Failed { .. } => Stopped::OutcomeUnknown,
            _ => Stopped::ShuttingDown,
        }
    }

    /// Retires closed packets, operation ids and settled transfers past their retention (at
    /// most `RETIRED_IDS_MAX` ids in all per call): decides the lists, records them, and applies
    /// them to the routes, the wallet shards and the transfer shards. Returns how many of each
    /// it retired.
    pub(crate) async fn retire_due(&self) -> Result<Retired, Stopped> {
        let _one_at_a_time = self.retiring.lock().await;
        let now = self.clock.now();
        let packets_cutoff =
            Timestamp(now.as_millis().saturating_sub(self.limits.closed_retention_secs.saturating_mul(1_000)));
        let ops_cutoff = Timestamp(now.as_millis().saturating_sub(self.limits.op_retention_secs.saturating_mul(1_000)));
        let transfers_cutoff = Timestamp(
            now.as_millis().saturating_sub(self.limits.settled_transfer_retention_secs.saturating_mul(1_000)),
        );
        // At most `RETIRED_IDS_MAX` ids in all: the rest waits for the next round.
        let packets = self.routes.closed_before(packets_cutoff, RETIRED_IDS_MAX);
        let ops = self.wallets.ops_before(ops_cutoff, RETIRED_IDS_MAX - packets.len()).await;
        let room = RETIRED_IDS_MAX - packets.len() - ops.len();
        let transfers = self.transfers.settled_before(transfers_cutoff, room).await;
        // Recorded first, applied after: an id freed in memory could otherwise be used again
        // and recorded before the retirement that freed it, which replay would refuse (a packet
        // sent twice) or misread (a deposit taken for a repeat). Packets and transfers sent from
        // here to be held elsewhere are added, and forgotten, as it is appended (a send of one
        // of their ids from then on is appended after it).
        let (tx, rx) = oneshot::channel();
        let Some(record) = self.outbox.append_retiring(
            &*self.journal,
            (packets_cutoff, transfers_cutoff),
            Record::Retired { packets, ops, transfers },
            Box::new(move || {
                let _ = tx.send(());
            }),
        ) else {
            return Ok(Retired::default());
        };
        let Record::Retired { packets, ops, transfers } = &record else { unreachable!("a retirement") };
        let retired = Retired { packets: packets.len(), ops: ops.len(), transfers: transfers.len() };
        self.routes.retire(packets);
        let record = Arc::new(record);
        self.wallets.retire(&record);
        self.transfers.retire(&record);
        rx.await.map_err(|_| self.lost())?;
        Ok(retired)
    }

    /// `value`, once everything appended so far is durable; `None` if the journal stopped.
    pub(crate) async fn after_barrier<T: Send + 'static>(&self, value: T) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        journal::reply_after_barrier(&*self.journal, tx, value);
        rx.await.ok()
    }
}

/// Held by every [`crate::Engine`] handle and nothing else: when the last handle goes, the
/// engine stops at once — even while a sweep or an actor still holds its parts for a moment.
pub(crate) struct Lifetime(pub(crate) Arc<Inner>);

impl Drop for Lifetime {
    fn drop(&mut self) {
        // The journal is closed first (synced, its writer stopped, its directory unlocked),
        // so that a new engine can open the directory when this returns; then the threads.
        let inner = &self.0;
        inner.running.store(false, Ordering::Release);
        inner.events.close();
        inner.journal.close();
        inner.runtime.stop_now();
    }
}

/// Opens the journal the configuration names: the file journal's recovery first, so a journal
/// that cannot be read refuses the start before any thread starts.
fn open_journal(
    config: &Config,
    start: Option<Arc<Folded>>,
) -> Result<(Arc<dyn Journal>, Option<Replica>), StartError> {
    let empty = Folded::empty(config).replica;
    let (journal, state): (Arc<dyn Journal>, Replica) = match (&config.journal_dir, &config.history, start) {
        (Some(dir), _, _) => {
            let (file, recovered) = FileJournal::open(dir, empty)?;
            (Arc::new(file), recovered.state)
        }
        (None, None, None) => return Ok((Arc::clone(&config.journal), None)),
        (None, history, start) => {
            let mut state = match start {
                Some(start) => Arc::unwrap_or_clone(start).replica,
                None => empty,
            };
            if state.remittances.partition != config.partition {
                return Err(StartError::Recovery("the state to start from is of another partition".into()));
            }
            let mut at = state.records;
            if let Some(history) = history {
                let mut each = |record: &Record| {
                    at += 1;
                    state.apply_record(record).map_err(|e| format!("record {at}: {e}"))
                };
                history.replay(&mut each).map_err(StartError::Recovery)?;
            }
            (Arc::clone(&config.journal), state)
        }
    };
    if let Some(why) = state.partition_mismatch() {
        return Err(StartError::Recovery(why));
    }
    let audit = audit::replica_audit(&state);
    if !audit.is_balanced() {
        let mut problems = audit.violations.clone();
        if !audit.is_conserved() {
            problems.push(format!("not conserved: {audit:?}"));
        }
        return Err(StartError::Recovery(problems.join("; ")));
    }
    Ok((journal, Some(state)))
}

/// What happens to a send once its sender's shard decided it: with the durable send record,
/// the packet's first event is published and the packet opens (dormant); with a refusal, the
/// id is given back. Runs in the journal's completion, so it completes even if the sender
/// stopped waiting.
pub(crate) fn settle_send(
    inner: &Inner,
    id: PacketId,
    reply: oneshot::Sender<Result<PacketView, SendError>>,
) -> Settle {
    let (routes, events) = (Arc::clone(&inner.routes), Arc::clone(&inner.events));
    Box::new(move |result| {
        let answer = match result {
            Ok(sent) => Ok(open_sent(&routes, &events, sent)),
            Err(e) => {
                routes.abandon(id);
                Err(e)
            }
        };
        let _ = reply.send(answer);
    })
}

/// Opens a packet whose escrow is durable here (its route reserved): the packet's first event
/// is published and it opens, dormant. Returns its view.
pub(crate) fn open_sent(routes: &Routes, events: &EventHub, sent: PacketSent) -> PacketView {
    let view = PacketState::open(sent.clone()).view();
    // Published before the route exists, so it is the packet's first event: the group's
    // `PacketSent`, or the sender's `PacketCooling` (the group hears `PacketOpened` when it
    // opens).
    if let (PacketStatus::AwaitingApproval { until }, Some(approval)) = (view.status, sent.approval) {
        // The approver hears; the group hears `PacketOpened` once it is approved.
        let (subject, sender, amount) = (ApprovalId::Packet(view.id), view.sender, view.total);
        let approver = approval.approver;
        events.publish(|| Event::AwaitingApproval { subject, sender, approver, amount, until });
    } else if let PacketStatus::CoolingOff { until } = view.status {
        let (packet, sender, group, total) = (view.id, view.sender, view.group, view.total);
        events.publish(|| Event::PacketCooling { packet, sender, group, total, until });
    } else {
        events.publish(|| Event::sent(&view));
    }
    routes.open(PacketMeta { sent, opened_at: None, claims: Vec::new() }, true);
    view
}
