//! A deterministic simulation of the engine on a faulty disk, in the manner of TigerBeetle's
//! VOPR: a seeded workload of every operation (deposits, withdrawals, roster changes, sends of
//! every kind, grabs, transfers and their recalls, accepts and declines, cooling-off settings
//! and cancels, an org with its policy changes, admin recalls and approvals, guardians,
//! deadlines by a manual clock
//! that also steps back, restarts), with storage
//! faults injected under the journal from the same seed (a full disk, failing syncs, failing
//! cuts, stalls, a power loss at any byte of a write), checked after every restart:
//!
//! - every acknowledged operation is there;
//! - nothing refused is applied — an operation answered `OutcomeUnknown` is retried with the
//!   same ids, as the contract says, and after that retry every total is exact;
//! - nobody is paid twice, money is conserved, refunds happen once (the engine's audit and the
//!   journal's audit, both).
//!
//! `HONGBAO_SIM_SEEDS=N` runs N seeds (default 300, about half a minute), from
//! `HONGBAO_SIM_SEED` (default 0). A failing seed prints itself; the same seed replays the same workload and faults (the
//! threads' interleaving is the operating system's, so a rare race may need a few runs).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::journal::segment::{FaultPlan, Faults};
use crate::transfer::Action;
use crate::{
    audit_journal, Amount, Arrival, CancelError, Config, CoolingOff, Durability, Engine, FileJournalConfig, GrabError,
    GroupId, Health, Limits, ManualClock, NewOrg, NewPacket, NewTransfer, OpId, OrgId, PacketId, PacketStatus, Policy,
    RecallError, RecallPolicy, SendError, Split, TransferError, TransferId, TransferStatus, TransferView, UserId,
    WalletError,
};
use crate::{ApprovalError, ApprovalId, Guardian};

const USERS: u64 = 12;
const STEPS: usize = 160;
const GROUPS: u64 = 2;
/// The simulated org, its one admin (not a user who sends), and the group it holds.
const ORG: OrgId = OrgId(1);
const ORG_ADMIN: UserId = UserId(999);

/// Closed packets are kept this long: short, so that retirements happen in every seed. A
/// packet can close the moment it is sent (sold out), so from then on it may be gone.
const RETENTION_SECS: u64 = 3 * 86_400;

/// What the simulation knows happened: each acknowledged operation, and those whose outcome
/// is unknown until they are retried.
#[derive(Default)]
struct Model {
    /// Deposits and withdrawals by id: (deposit, user, fen), acknowledged.
    ops: BTreeMap<u64, (bool, UserId, u64)>,
    /// The same, outcome unknown: retried after the next restart.
    unknown_ops: BTreeMap<u64, (bool, UserId, u64)>,
    sends: BTreeMap<u64, NewPacket>,
    unknown_sends: BTreeMap<u64, NewPacket>,
    /// Sends refused (nothing changed): never to be found.
    refused_sends: Vec<u64>,
    /// When each packet was sent, by the engine's clock.
    sent_at: HashMap<u64, u64>,
    /// Grabs acknowledged: (packet, user) → fen.
    grabs: HashMap<(u64, UserId), u64>,
    unknown_grabs: Vec<(u64, UserId)>,
    /// Grabs refused (nothing changed): no such claim unless another grab was acknowledged.
    refused_grabs: Vec<(u64, UserId)>,
    /// Transfers acknowledged, with when they were sent.
    transfers: BTreeMap<u64, (NewTransfer, u64)>,
    unknown_transfers: BTreeMap<u64, (NewTransfer, u64)>,
    refused_transfers: Vec<u64>,
    /// How each transfer settled, as a recall, accept or decline was answered.
    settled: HashMap<u64, TransferStatus>,
    unknown_moves: Vec<(u64, Action, UserId)>,
    /// Packets sent held by a cooling-off.
    held: Vec<u64>,
    /// Packets whose cancellation was acknowledged.
    cancelled: Vec<u64>,
    /// Sends whose approval (true) or rejection (false) was acknowledged.
    decided: HashMap<ApprovalId, bool>,
    /// Sends acknowledged as waiting for approval.
    waiting: Vec<ApprovalId>,
    /// Packets whose admin recall was acknowledged, and those whose outcome is unknown.
    recalled: Vec<u64>,
    unknown_recalls: Vec<u64>,
    /// Whether the org exists (its creation acknowledged).
    org: bool,
    unknown_cancels: Vec<u64>,
    next_op: u64,
}

/// What the faults did over a run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub seeds: u64,
    pub steps: u64,
    pub restarts: u64,
    pub crashes: u64,
    pub full_disks: u64,
    pub failed_syncs: u64,
    pub failed_cuts: u64,
    pub stalls: u64,
    pub unknown_outcomes: u64,
    /// Packets, transfers and operation ids retired by the simulation's own sweeps.
    pub retired: u64,
    /// Transfers acknowledged, transfers settled by a party's request, packets cancelled.
    pub transfers: u64,
    pub moves: u64,
    pub cancels: u64,
    pub recalls: u64,
    pub approvals: u64,
    pub rejections: u64,
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    dir: PathBuf,
    clock: ManualClock,
    faults: Faults,
    engine: Option<Engine>,
    model: Model,
    /// The latest time the clock showed (it also steps back).
    latest_ms: u64,
}

fn scratch_root() -> PathBuf {
    // A file system in memory when there is one: the simulation syncs after every batch.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Sim {
    fn config(&self, faults: bool) -> Config {
        let mut journal = FileJournalConfig::new(&self.dir, Durability::Sync);
        journal.faults = faults.then(|| Arc::clone(&self.faults));
        // Small snapshots and segments, so that restarts cross both.
        journal.snapshot_every_records = Some(40);
        journal.segment_bytes_max = 2_000;
        let limits = Limits {
            closed_retention_secs: RETENTION_SECS,
            settled_transfer_retention_secs: RETENTION_SECS,
            op_retention_secs: 2 * 86_400,
            ..Limits::default()
        };
        Config { arbiters: 2, wallet_shards: 2, journal_dir: Some(journal), ..Config::default() }
            .with_limits(limits)
            .with_clock(Arc::new(self.clock.clone()))
            .with_seed(self.seed)
    }

    fn ctx(&self, what: &str) -> String {
        format!("seed {} ({what}); replay with HONGBAO_SIM_SEED={} HONGBAO_SIM_SEEDS=1", self.seed, self.seed)
    }

    fn engine(&self) -> &Engine {
        self.engine.as_ref().expect("running")
    }

    /// Injects a fault now and then; returns its kind for the tally.
    fn maybe_inject(&mut self, tally: &mut Tally) {
        if self.rng.random_range(0..100) >= 4 {
            return;
        }
        let mut plan = self.faults.lock();
        match self.rng.random_range(0..5) {
            0 => {
                plan.space_left_bytes = Some(self.rng.random_range(0..400));
                tally.full_disks += 1;
            }
            1 => {
                plan.fail_sync = true;
                tally.failed_syncs += 1;
            }
            2 => {
                (plan.space_left_bytes, plan.fail_cut) = (Some(self.rng.random_range(0..400)), true);
                tally.failed_cuts += 1;
            }
            3 => {
                plan.crash_after_bytes = Some(self.rng.random_range(0..400));
                tally.crashes += 1;
            }
            _ => {
                plan.sync_delay = Some(Duration::from_millis(self.rng.random_range(1..5)));
                tally.stalls += 1;
            }
        }
    }

    /// Stops the engine (cleanly, or as a crash), applies what a power loss leaves on disk,
    /// starts it again without faults, retries what had an unknown outcome, and checks
    /// everything acknowledged.
    async fn restart(&mut self, tally: &mut Tally) {
        let engine = self.engine.take().expect("running");
        let clean = engine.health() == Health::Serving && self.rng.random_bool(0.3);
        if clean {
            engine.shutdown().await;
        }
        drop(engine);
        let plan = std::mem::take(&mut *self.faults.lock());
        if plan.crashed {
            self.lose_unsynced(&plan);
        }
        tally.restarts += 1;
        let engine = Engine::start(self.config(false))
            .unwrap_or_else(|e| panic!("{}: restart refused: {e}", self.ctx("restart")));
        self.engine = Some(engine);
        self.retry_unknown().await;
        self.check().await;
    }

    /// A power loss keeps what was synced of the last segment, and of the rest nothing, a torn
    /// part, or zeros.
    fn lose_unsynced(&mut self, plan: &FaultPlan) {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("journal dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "hbj"))
            .collect();
        segments.sort();
        let Some(last) = segments.last() else { return };
        let mut bytes = std::fs::read(last).expect("segment");
        let synced = (plan.synced_len as usize).min(bytes.len());
        let unsynced = bytes.split_off(synced);
        match self.rng.random_range(0..3) {
            0 => {}
            1 => bytes.extend_from_slice(&unsynced[..self.rng.random_range(0..=unsynced.len())]),
            _ => bytes.extend(std::iter::repeat_n(0u8, self.rng.random_range(0..=unsynced.len()))),
        }
        std::fs::write(last, bytes).expect("segment");
    }

    /// Retries every operation whose outcome was unknown, with the same ids and fields: it is
    /// then applied exactly once, and joins the acknowledged ones.
    async fn retry_unknown(&mut self) {
        let engine = self.engine.as_ref().expect("running").clone();
        for (op, (deposit, user, fen)) in std::mem::take(&mut self.model.unknown_ops) {
            let amount = Amount::fen(fen);
            let got = if deposit {
                engine.deposit(OpId(op), user, amount).await
            } else {
                engine.withdraw(OpId(op), user, amount).await
            };
            match got {
                Ok(_) => {
                    self.model.ops.insert(op, (deposit, user, fen));
                }
                // Refused on retry (funds moved meanwhile): then it was never applied.
                Err(WalletError::InsufficientFunds { .. }) => {}
                Err(e) => panic!("{}: retry of op {op}: {e}", self.ctx("retry")),
            }
        }
        for (id, spec) in std::mem::take(&mut self.model.unknown_sends) {
            match engine.send_packet(spec.clone()).await {
                Ok(_) => {
                    self.model.sends.insert(id, spec);
                }
                Err(SendError::InsufficientFunds { .. } | SendError::NotMember { .. }) => {}
                Err(e) => panic!("{}: retry of send {id}: {e}", self.ctx("retry")),
            }
        }
        for (id, (spec, at)) in std::mem::take(&mut self.model.unknown_transfers) {
            match engine.transfer(spec.clone()).await {
                Ok(_) => {
                    self.model.transfers.insert(id, (spec, at));
                }
                // Refused on retry: then it was never applied.
                Err(TransferError::InsufficientFunds { .. } | TransferError::DailyLimit { .. }) => {
                    self.model.refused_transfers.push(id)
                }
                Err(e) => panic!("{}: retry of transfer {id}: {e}", self.ctx("retry")),
            }
        }
        for (id, action, by) in std::mem::take(&mut self.model.unknown_moves) {
            let got = move_transfer(&engine, id, action, by).await;
            self.record_move(id, got, &mut Tally::default());
        }
        for id in std::mem::take(&mut self.model.unknown_cancels) {
            let sender = self.model.sends.get(&id).map(|s| s.sender).expect("a cancel of a sent packet");
            match engine.cancel_packet(PacketId(id), sender).await {
                Ok(_) | Err(CancelError::AlreadyCancelled { .. }) => self.model.cancelled.push(id),
                Err(CancelError::TooLate | CancelError::UnknownPacket) => {}
                Err(e) => panic!("{}: retry of cancel {id}: {e}", self.ctx("retry")),
            }
        }
        for id in std::mem::take(&mut self.model.unknown_recalls) {
            // Closed otherwise: by this recall before the failure, or by anything else; the
            // check below tells them apart only for acknowledged recalls.
            if engine.admin_recall(PacketId(id), ORG_ADMIN, String::new()).await.is_ok() {
                self.model.recalled.push(id);
            }
        }
        for (packet, user) in std::mem::take(&mut self.model.unknown_grabs) {
            match engine.grab(PacketId(packet), user).await {
                Ok(won) => {
                    self.model.grabs.insert((packet, user), won.amount.as_fen());
                }
                Err(GrabError::AlreadyGrabbed { amount, .. }) => {
                    self.model.grabs.insert((packet, user), amount.as_fen());
                }
                Err(_) => {}
            }
        }
    }

    /// Every acknowledged operation is there, nothing else moved money, and both audits pass.
    async fn check(&mut self) {
        let engine = self.engine();
        let ctx = self.ctx("check");
        // The audit holds at a quiescent point: refunds of packets that came due while the
        // engine was down may still be on their way to a wallet.
        engine.run_due().await.unwrap_or_else(|e| panic!("{ctx}: run_due: {e}"));
        let audit = engine.audit().await.unwrap_or_else(|e| panic!("{ctx}: audit: {e}"));
        if !audit.is_balanced() {
            let journal = audit_journal(&self.dir, Limits::default().share_fen_max);
            panic!("{ctx}: {audit:?}\njournal: {journal:?}");
        }
        let deposited: u64 = self.model.ops.values().filter(|o| o.0).map(|o| o.2).sum();
        let withdrawn: u64 = self.model.ops.values().filter(|o| !o.0).map(|o| o.2).sum();
        assert_eq!(audit.deposits.as_fen(), deposited, "{ctx}: deposits are exactly the acknowledged ones");
        assert_eq!(audit.withdrawals.as_fen(), withdrawn, "{ctx}: withdrawals are exactly the acknowledged ones");
        // A packet may be gone only once it could have been retired.
        let may_be_retired =
            |id: &u64| self.model.sent_at.get(id).is_some_and(|&t| self.latest_ms >= t + RETENTION_SECS * 1_000);
        for (id, spec) in &self.model.sends {
            match engine.packet(PacketId(*id)).await {
                Ok(view) => assert_eq!(&view.spec(), spec, "{ctx}: packet {id}"),
                Err(crate::EngineError::UnknownPacket) if may_be_retired(id) => {}
                Err(e) => panic!("{ctx}: acknowledged packet {id}: {e}"),
            }
        }
        for id in &self.model.refused_sends {
            let found = engine.packet(PacketId(*id)).await;
            assert_eq!(found, Err(crate::EngineError::UnknownPacket), "{ctx}: refused packet {id} exists");
        }
        for (&(packet, user), &fen) in &self.model.grabs {
            match engine.packet(PacketId(packet)).await {
                Ok(view) => assert!(
                    view.claims.iter().any(|c| c.user == user && c.amount.as_fen() == fen),
                    "{ctx}: the acknowledged grab of {fen} fen by {user} on packet {packet} is missing"
                ),
                Err(crate::EngineError::UnknownPacket) if may_be_retired(&packet) => {}
                Err(e) => panic!("{ctx}: packet {packet} of an acknowledged grab: {e}"),
            }
        }
        for &(packet, user) in &self.model.refused_grabs {
            if self.model.grabs.contains_key(&(packet, user)) {
                continue;
            }
            if let Ok(view) = engine.packet(PacketId(packet)).await {
                assert!(!view.claims.iter().any(|c| c.user == user), "{ctx}: refused grab by {user} on {packet} paid");
            }
        }
        self.check_transfers(&ctx, &may_be_retired).await;
        let journal = audit_journal(&self.dir, Limits::default().share_fen_max);
        assert!(journal.as_ref().is_ok_and(|j| j.is_ok()), "{ctx}: journal audit: {journal:?}");
    }

    /// Every acknowledged transfer and move is there; nothing refused is; every acknowledged
    /// cancellation holds.
    async fn check_transfers(&self, ctx: &str, may_be_retired: &dyn Fn(&u64) -> bool) {
        let engine = self.engine();
        let transfer_retired = |at: u64| self.latest_ms >= at + RETENTION_SECS * 1_000;
        for (id, (spec, at)) in &self.model.transfers {
            match engine.transfer_view(TransferId(*id)).await {
                Ok(view) => {
                    assert_eq!((view.from, view.to, view.amount), (spec.from, spec.to, spec.amount), "{ctx}: {id}");
                    if let Some(status) = self.model.settled.get(id) {
                        assert_eq!(view.status, *status, "{ctx}: transfer {id} settled otherwise");
                    }
                }
                Err(TransferError::UnknownTransfer) if transfer_retired(*at) => {}
                Err(e) => panic!("{ctx}: acknowledged transfer {id}: {e}"),
            }
        }
        for id in &self.model.refused_transfers {
            let found = engine.transfer_view(TransferId(*id)).await;
            assert_eq!(found, Err(TransferError::UnknownTransfer), "{ctx}: refused transfer {id} exists");
        }
        for id in &self.model.recalled {
            match engine.packet(PacketId(*id)).await {
                Ok(view) => assert!(matches!(view.status, PacketStatus::Recalled { .. }), "{ctx}: packet {id}"),
                Err(crate::EngineError::UnknownPacket) if may_be_retired(id) => {}
                Err(e) => panic!("{ctx}: recalled packet {id}: {e}"),
            }
        }
        // An acknowledged approval opened the send (it may have closed since); an acknowledged
        // rejection refunded it.
        for (subject, &approved) in &self.model.decided {
            match *subject {
                ApprovalId::Packet(id) => match engine.packet(id).await {
                    Ok(view) => {
                        let rejected = matches!(view.status, PacketStatus::Rejected { .. });
                        let waiting = matches!(view.status, PacketStatus::AwaitingApproval { .. });
                        assert!(!waiting && rejected != approved, "{ctx}: packet {id} decided {approved}: {view:?}");
                    }
                    Err(crate::EngineError::UnknownPacket) if may_be_retired(&id.0) => {}
                    Err(e) => panic!("{ctx}: decided packet {id}: {e}"),
                },
                ApprovalId::Transfer(id) => match engine.transfer_view(id).await {
                    Ok(view) => {
                        let rejected = view.status == TransferStatus::Rejected;
                        let waiting = matches!(view.status, TransferStatus::AwaitingApproval { .. });
                        assert!(!waiting && rejected != approved, "{ctx}: transfer {id} decided {approved}: {view:?}");
                    }
                    Err(TransferError::UnknownTransfer) => {}
                    Err(e) => panic!("{ctx}: decided transfer {id}: {e}"),
                },
            }
        }
        for id in &self.model.cancelled {
            match engine.packet(PacketId(*id)).await {
                Ok(view) => assert!(matches!(view.status, PacketStatus::Cancelled { .. }), "{ctx}: packet {id}"),
                Err(crate::EngineError::UnknownPacket) if may_be_retired(id) => {}
                Err(e) => panic!("{ctx}: cancelled packet {id}: {e}"),
            }
        }
    }

    /// A transfer of a random amount between two users, at once or delayed.
    async fn transfer(&mut self, engine: &Engine, from: UserId, tally: &mut Tally) {
        let id = self.model.next_op;
        self.model.next_op += 1;
        let arrival = match self.rng.random_range(0..3) {
            0 => Arrival::Instant,
            1 => Arrival::Delayed { secs: 7_200 },
            _ => Arrival::Delayed { secs: 86_400 },
        };
        let to = UserId(self.rng.random_range(1..=USERS));
        let amount = Amount::fen(self.rng.random_range(1..3_000));
        // Some under the org: its members only, its approval threshold and its log.
        let org = (self.model.org && self.rng.random_bool(0.3)).then_some(ORG);
        let spec = NewTransfer { org, id: TransferId(id), from, to, amount, arrival, note: String::new() };
        let at = crate::Clock::now(&self.clock).as_millis();
        match engine.transfer(spec.clone()).await {
            Ok(view) => {
                if matches!(view.status, TransferStatus::AwaitingApproval { .. }) {
                    self.model.waiting.push(ApprovalId::Transfer(TransferId(id)));
                }
                tally.transfers += 1;
                self.model.transfers.insert(id, (spec, at));
            }
            Err(TransferError::OutcomeUnknown) => {
                tally.unknown_outcomes += 1;
                self.model.unknown_transfers.insert(id, (spec, at));
            }
            Err(_) => self.model.refused_transfers.push(id),
        }
    }

    /// A recall, accept or decline of a random transfer, mostly by the party who may.
    async fn move_one(&mut self, engine: &Engine, tally: &mut Tally) {
        let Some((&id, (spec, _))) =
            self.model.transfers.iter().nth(self.rng.random_range(0..self.model.transfers.len().max(1)))
        else {
            return;
        };
        let (from, to) = (spec.from, spec.to);
        let action = [Action::Recall, Action::Accept, Action::Decline][self.rng.random_range(0..3)];
        let rightful = if action == Action::Recall { from } else { to };
        let by = if self.rng.random_bool(0.9) { rightful } else { UserId(self.rng.random_range(1..=USERS)) };
        let got = move_transfer(engine, id, action, by).await;
        if got == Err(TransferError::OutcomeUnknown) {
            self.model.unknown_moves.push((id, action, by));
        }
        self.record_move(id, got, tally);
    }

    /// What a move's answer says happened.
    fn record_move(&mut self, id: u64, got: Result<TransferView, TransferError>, tally: &mut Tally) {
        match got {
            Ok(view) => {
                tally.moves += 1;
                self.model.settled.insert(id, view.status);
            }
            Err(TransferError::AlreadySettled { status }) => {
                self.model.settled.insert(id, status);
            }
            Err(TransferError::OutcomeUnknown) => tally.unknown_outcomes += 1,
            Err(_) => {}
        }
    }

    /// The org's admin (or now and then someone else) recalls a recent packet; or an admin
    /// changes the recall whitelist; or, before it exists, the org is created with group 1.
    /// A guardian set or removed for a user, or an approval or rejection of a recent send by
    /// whoever may (the org's admin, or the user's guardian, who is always the next user).
    async fn approval_step(&mut self, engine: &Engine, tally: &mut Tally) {
        let user = UserId(self.rng.random_range(1..=USERS));
        let guardian = UserId(user.0 % USERS + 1);
        match self.rng.random_range(0..5) {
            0 | 1 => {
                let above = Amount::fen(self.rng.random_range(0..2_000));
                let _ = engine.set_guardian(user, Guardian { guardian, above }).await;
            }
            2 => {
                let _ = engine.remove_guardian(user, guardian).await;
            }
            _ => {
                let Some(&subject) = self.model.waiting.get(self.rng.random_range(0..self.model.waiting.len().max(1)))
                else {
                    return;
                };
                let sender = match subject {
                    ApprovalId::Packet(p) => self.model.sends.get(&p.0).map(|s| s.sender),
                    ApprovalId::Transfer(t) => self.model.transfers.get(&t.0).map(|(s, _)| s.from),
                };
                let Some(sender) = sender else { return };
                let by = if self.rng.random_bool(0.5) { ORG_ADMIN } else { UserId(sender.0 % USERS + 1) };
                let approve = self.rng.random_bool(0.6);
                let got = if approve {
                    engine.approve(subject, by).await.map(|_| ())
                } else {
                    engine.reject(subject, by, String::new()).await.map(|_| ())
                };
                match got {
                    Ok(()) => {
                        if approve {
                            tally.approvals += 1;
                        } else {
                            tally.rejections += 1;
                        }
                        self.model.decided.insert(subject, approve);
                    }
                    Err(ApprovalError::OutcomeUnknown) => tally.unknown_outcomes += 1,
                    Err(_) => {}
                }
            }
        }
    }

    async fn org_step(&mut self, engine: &Engine, tally: &mut Tally) {
        if !self.model.org {
            let spec = NewOrg { admins: vec![ORG_ADMIN], name: String::new() };
            let all =
                Policy { recall: RecallPolicy::Whitelist((1..=USERS).map(UserId).collect()), ..Policy::default() };
            if engine.create_org(ORG, spec).await.is_ok()
                && engine.attach_group(ORG, GroupId(1), ORG_ADMIN).await.is_ok()
                && engine.set_policy(ORG, ORG_ADMIN, all).await.is_ok()
            {
                self.model.org = true;
            }
            return;
        }
        if self.rng.random_bool(0.3) {
            let senders = (1..=USERS).filter(|_| self.rng.random_bool(0.5)).map(UserId).collect();
            // Now and then packets above a threshold wait for the admin's approval.
            let approval_above = self.rng.random_bool(0.5).then(|| Amount::fen(self.rng.random_range(0..2_000)));
            let policy = Policy { recall: RecallPolicy::Whitelist(senders), approval_above, ..Policy::default() };
            let _ = engine.set_policy(ORG, ORG_ADMIN, policy).await;
            return;
        }
        let back = self.rng.random_range(0..self.model.sends.len().clamp(1, 6));
        let Some((&id, _)) = self.model.sends.iter().rev().nth(back) else { return };
        let by = if self.rng.random_bool(0.9) { ORG_ADMIN } else { UserId(self.rng.random_range(1..=USERS)) };
        match engine.admin_recall(PacketId(id), by, String::new()).await {
            Ok(_) => {
                tally.recalls += 1;
                self.model.recalled.push(id);
            }
            Err(RecallError::OutcomeUnknown) => {
                tally.unknown_outcomes += 1;
                self.model.unknown_recalls.push(id);
            }
            Err(_) => {}
        }
    }

    /// The sender of a recent packet cancels it (it succeeds only while it cools off).
    async fn cancel(&mut self, engine: &Engine, tally: &mut Tally) {
        // Mostly one that was held by a cooling-off (it may still be), else a recent one.
        let id = match self.model.held.len() {
            0 => None,
            n if self.rng.random_bool(0.8) => Some(self.model.held[self.rng.random_range(0..n)]),
            _ => None,
        };
        let back = self.rng.random_range(0..self.model.sends.len().clamp(1, 4));
        let found = match id {
            Some(id) => self.model.sends.get(&id).map(|spec| (id, spec)),
            None => self.model.sends.iter().rev().nth(back).map(|(&id, spec)| (id, spec)),
        };
        let Some((id, spec)) = found else { return };
        match engine.cancel_packet(PacketId(id), spec.sender).await {
            Ok(_) => {
                tally.cancels += 1;
                self.model.cancelled.push(id);
            }
            Err(CancelError::OutcomeUnknown) => {
                tally.unknown_outcomes += 1;
                self.model.unknown_cancels.push(id);
            }
            Err(_) => {}
        }
    }

    /// One random operation, its answer recorded in the model.
    async fn step(&mut self, tally: &mut Tally) {
        let engine = self.engine().clone();
        let user = UserId(self.rng.random_range(1..=USERS));
        match self.rng.random_range(0..100) {
            0..=17 => {
                let deposit = self.rng.random_bool(0.7);
                let (op, fen) = (self.model.next_op, self.rng.random_range(1..5_000));
                self.model.next_op += 1;
                let got = if deposit {
                    engine.deposit(OpId(op), user, Amount::fen(fen)).await
                } else {
                    engine.withdraw(OpId(op), user, Amount::fen(fen)).await
                };
                match got {
                    Ok(_) => {
                        self.model.ops.insert(op, (deposit, user, fen));
                    }
                    Err(WalletError::OutcomeUnknown) => {
                        tally.unknown_outcomes += 1;
                        self.model.unknown_ops.insert(op, (deposit, user, fen));
                    }
                    Err(_) => {}
                }
            }
            18..=21 => self.burst(&engine, tally).await,
            22..=25 => {
                let group = GroupId(self.rng.random_range(1..=GROUPS));
                let members: Vec<UserId> = (1..=USERS).filter(|_| self.rng.random_bool(0.7)).map(UserId).collect();
                let _ = match self.rng.random_range(0..3) {
                    0 => engine.set_members(group, members).await,
                    1 => engine.add_members(group, members).await,
                    _ => engine.remove_members(group, members.into_iter().take(2)).await,
                };
            }
            26..=41 => self.send(&engine, user, tally).await,
            42..=63 => {
                let packet = self.rng.random_range(0..self.model.next_op.max(1));
                let got = engine.grab(PacketId(packet), user).await;
                self.record_grab(packet, user, got, tally);
            }
            64..=67 => self.org_step(&engine, tally).await,
            68..=71 => self.approval_step(&engine, tally).await,
            72..=77 => self.transfer(&engine, user, tally).await,
            78..=83 => self.move_one(&engine, tally).await,
            84..=86 => {
                let secs = [0, 600, 3_600, 3_600][self.rng.random_range(0..4)];
                let setting = CoolingOff { threshold: Amount::fen(self.rng.random_range(0..2_000)), secs };
                let _ = engine.set_cooling_off(user, setting).await;
            }
            87..=89 => self.cancel(&engine, tally).await,
            90..=95 => {
                self.clock.advance(Duration::from_secs(self.rng.random_range(0..2 * 86_400)));
                self.latest_ms = self.latest_ms.max(crate::Clock::now(&self.clock).as_millis());
                let _ = engine.run_due().await;
                // The engine's own sweep runs too; this one counts what retention drops.
                if let Ok(r) = engine.retire_due().await {
                    tally.retired += (r.packets + r.ops + r.transfers) as u64;
                }
            }
            _ => {
                // The clock steps back (NTP, a VM restored): deadlines must survive it.
                let now = crate::Clock::now(&self.clock);
                self.clock.set(crate::Timestamp(now.as_millis() - self.rng.random_range(0..7_200_000)));
            }
        }
    }

    /// Several deposits and grabs at once, so that the journal commits them in one batch (and
    /// a fault can land in the middle of one).
    async fn burst(&mut self, engine: &Engine, tally: &mut Tally) {
        let deposits: Vec<(u64, UserId, u64)> = (0..self.rng.random_range(2..12))
            .map(|_| {
                let op = self.model.next_op;
                self.model.next_op += 1;
                (op, UserId(self.rng.random_range(1..=USERS)), self.rng.random_range(1..5_000))
            })
            .collect();
        let grabs: Vec<(u64, UserId)> = (0..self.rng.random_range(0..8))
            .map(|_| (self.rng.random_range(0..self.model.next_op), UserId(self.rng.random_range(1..=USERS))))
            .collect();
        let deposited = futures::future::join_all(deposits.iter().map(|&(op, user, fen)| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.deposit(OpId(op), user, Amount::fen(fen)).await })
        }));
        let grabbed = futures::future::join_all(grabs.iter().map(|&(packet, user)| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.grab(PacketId(packet), user).await })
        }));
        let (deposited, grabbed) = futures::join!(deposited, grabbed);
        for (&(op, user, fen), got) in deposits.iter().zip(deposited) {
            match got.expect("task") {
                Ok(_) => {
                    self.model.ops.insert(op, (true, user, fen));
                }
                Err(WalletError::OutcomeUnknown) => {
                    tally.unknown_outcomes += 1;
                    self.model.unknown_ops.insert(op, (true, user, fen));
                }
                Err(_) => {}
            }
        }
        for (&(packet, user), got) in grabs.iter().zip(grabbed) {
            self.record_grab(packet, user, got.expect("task"), tally);
        }
    }

    /// What a grab's answer says happened.
    fn record_grab(&mut self, packet: u64, user: UserId, got: Result<crate::Grabbed, GrabError>, tally: &mut Tally) {
        match got {
            Ok(won) => {
                self.model.grabs.insert((packet, user), won.amount.as_fen());
            }
            Err(GrabError::AlreadyGrabbed { amount, .. }) => {
                self.model.grabs.insert((packet, user), amount.as_fen());
            }
            Err(GrabError::OutcomeUnknown) => {
                tally.unknown_outcomes += 1;
                self.model.unknown_grabs.push((packet, user));
            }
            Err(_) => self.model.refused_grabs.push((packet, user)),
        }
    }

    async fn send(&mut self, engine: &Engine, sender: UserId, tally: &mut Tally) {
        let id = self.model.next_op;
        self.model.next_op += 1;
        let split = match self.rng.random_range(0..3) {
            0 => {
                let (total, shares) = (Amount::fen(self.rng.random_range(1..3_000)), self.rng.random_range(1..6));
                // Both draw rules: their shares are checked on every replay.
                if self.rng.random_bool(0.5) {
                    Split::lucky(total, shares)
                } else {
                    Split::shuffled(total, shares)
                }
            }
            1 => Split::Fixed { each: Amount::fen(self.rng.random_range(1..500)), shares: self.rng.random_range(1..4) },
            _ => Split::Exclusive {
                to: UserId(self.rng.random_range(1..=USERS)),
                amount: Amount::fen(self.rng.random_range(1..900)),
            },
        };
        let group = GroupId(self.rng.random_range(1..=GROUPS));
        let spec = NewPacket { id: PacketId(id), sender, group, split, greeting: String::new() };
        self.model.sent_at.insert(id, crate::Clock::now(&self.clock).as_millis());
        match engine.send_packet(spec.clone()).await {
            Ok(view) => {
                if matches!(view.status, PacketStatus::CoolingOff { .. }) {
                    self.model.held.push(id);
                }
                if matches!(view.status, PacketStatus::AwaitingApproval { .. }) {
                    self.model.waiting.push(ApprovalId::Packet(PacketId(id)));
                }
                self.model.sends.insert(id, spec);
            }
            Err(SendError::OutcomeUnknown) => {
                tally.unknown_outcomes += 1;
                self.model.unknown_sends.insert(id, spec);
            }
            Err(_) => self.model.refused_sends.push(id),
        }
    }
}

/// Sends a recall, accept or decline.
async fn move_transfer(engine: &Engine, id: u64, action: Action, by: UserId) -> Result<TransferView, TransferError> {
    let id = TransferId(id);
    match action {
        Action::Recall => engine.recall_transfer(id, by).await,
        Action::Accept => engine.accept_transfer(id, by).await,
        Action::Decline => engine.decline_transfer(id, by).await,
    }
}

/// Runs one seed: the workload, with faults, restarting after every failure and now and then
/// on its own, checking after each restart and at the end.
pub(crate) async fn run_seed(seed: u64, tally: &mut Tally) {
    let dir = scratch_root().join(format!("hongbao-sim-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut sim = Sim {
        seed,
        rng: ChaCha8Rng::seed_from_u64(seed),
        dir,
        clock: ManualClock::default(),
        faults: Arc::default(),
        engine: None,
        model: Model::default(),
        latest_ms: 0,
    };
    sim.latest_ms = crate::Clock::now(&sim.clock).as_millis();
    sim.engine = Some(Engine::start(sim.config(true)).unwrap_or_else(|e| panic!("{}: {e}", sim.ctx("start"))));
    for _ in 0..STEPS {
        sim.maybe_inject(tally);
        sim.step(tally).await;
        tally.steps += 1;
        if sim.engine().health() != Health::Serving || sim.rng.random_range(0..100) == 0 {
            sim.restart(tally).await;
            // Faults go on after a restart too.
            let config = sim.config(true);
            let engine = sim.engine.take().expect("running");
            engine.shutdown().await;
            drop(engine);
            sim.engine = Some(Engine::start(config).unwrap_or_else(|e| panic!("{}: {e}", sim.ctx("start"))));
        }
    }
    sim.restart(tally).await;
    if let Some(engine) = sim.engine.take() {
        engine.shutdown().await;
    }
    let _ = sim.rng.next_u64();
    std::fs::remove_dir_all(&sim.dir).unwrap();
    tally.seeds += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_faults_lose_nothing_acknowledged_and_apply_nothing_refused() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (first, seeds) = (env("HONGBAO_SIM_SEED", 0), env("HONGBAO_SIM_SEEDS", 300));
    let mut tally = Tally::default();
    for seed in first..first + seeds {
        run_seed(seed, &mut tally).await;
    }
    println!("simulation: {tally:?}");
    assert_eq!(tally.seeds, seeds);
}
