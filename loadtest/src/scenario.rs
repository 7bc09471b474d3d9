//! The scenarios and the client that drives them.
//!
//! Requests are spread over `--connections` workers, each recording into its own histograms
//! (merged at the end, so recording takes no shared lock). Workers start together: each
//! allocates what it needs, then waits at a barrier; the clock starts when the last one is
//! there. In a burst (storm, hot) each worker has all its grabs in flight at once; in open loop
//! each worker starts its share of a fixed schedule and measures from the scheduled instant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hongbao::{GroupId, PacketId, UserId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::args::{Args, Scenario};
use crate::pace::{Pacer, Release, Schedule, Start};
use crate::progress::{self, Counter};
use crate::recall;
use crate::report::{Figures, Report};
use crate::target::{Answer, LuckySend, Reply, Target};

/// One grab to make.
#[derive(Clone, Copy, Debug)]
struct GrabOp {
    packet: PacketId,
    group: GroupId,
    user: UserId,
    /// The recall scenario: the packet's admin recall goes out right after this grab.
    recall_after: bool,
}

/// A grab that won: checked against the target afterwards.
type Win = (PacketId, UserId, u64);

/// User 0 of each group is its sender; members follow, distinct across groups.
pub fn member(group: u64, i: u64, members: u64) -> UserId {
    UserId(group * (members + 1) + i + 1)
}

/// How long a client waits before sending a grab again after `Busy`.
const BUSY_BACKOFF: Duration = Duration::from_millis(1);

/// Grabs, sending again after `Busy` up to `retries_max` times but not past `until` (the
/// run's end: a request in flight then is answered, not retried for ever).
async fn grab_until_answered(target: &Target, op: GrabOp, retries_max: u32, until: Option<Instant>) -> (Reply, u64) {
    let mut retries = 0u64;
    loop {
        let reply = target.grab(op.packet, op.group, op.user).await;
        let over = until.is_some_and(|end| Instant::now() >= end);
        if reply == Reply::Busy && retries < u64::from(retries_max) && !over {
            // A real client backs off and retries; the latency keeps counting from the start.
            retries += 1;
            tokio::time::sleep(BUSY_BACKOFF).await;
            continue;
        }
        return (reply, retries);
    }
}

/// An open-loop run's pace: the requests per second, the pacing thread, and the run's slots
/// when it has a duration (none: it runs all its requests).
#[derive(Clone)]
struct OpenLoop {
    rate: f64,
    pacer: Pacer,
    slots: Option<u64>,
    duration: Option<Duration>,
}

impl OpenLoop {
    fn new(args: &Args) -> Option<OpenLoop> {
        args.rate.map(|rate| OpenLoop {
            rate,
            pacer: Pacer::start(rate),
            // The slots due before the duration ends: k / rate < secs.
            slots: args.duration().map(|d| (d.as_secs_f64() * rate).ceil() as u64),
            duration: args.duration(),
        })
    }

    /// The run's time its schedule accounts for once `first` slots were used: their span, at
    /// most the duration (its last slot is due before the duration ends).
    fn schedule_time(&self, first: u64) -> Duration {
        let span = Duration::from_secs_f64(first as f64 / self.rate);
        self.duration.map_or(span, |d| span.min(d))
    }

    /// The schedule of a stretch of the run released at `start`, after `spent` of the run's
    /// measured time, whose first request is the run's slot `first`. The run is one schedule:
    /// when earlier stretches fell behind, this one's first slot is already past at its
    /// release (by `spent - first / rate`), and its requests count from their slots.
    fn schedule(&self, start: Instant, first: u64, spent: Duration) -> Schedule {
        let lag = spent.saturating_sub(Duration::from_secs_f64(first as f64 / self.rate));
        Schedule { start: start.checked_sub(lag).unwrap_or(start), rate: self.rate, first, slots: self.slots }
    }
}

/// What one worker of a round did: its figures, its wins, when its last reply came, and the
/// recalls it sent.
type WorkerRound = (Figures, Vec<Win>, Option<Instant>, Vec<recall::RecallDone>);

/// How a round runs: whether it is measured, the progress counter, the open-loop schedule (the
/// run's first slot of the round and the measured time spent so far), and the recall
/// scenario's admin.
struct RoundSpec<'a> {
    measure: bool,
    progress: &'a Counter,
    open_loop: Option<(&'a OpenLoop, u64, Duration)>,
    admin: Option<Arc<recall::Admin>>,
}

/// What a round did: the wins, the time from the release to the last reply, and the recalls.
type RoundDone = (Vec<Win>, Duration, Vec<recall::RecallDone>);

/// Runs one round of grabs; returns the wins and the time from the release to the last
/// reply. Each worker records into its own entry of `figures` (kept across rounds, so their
/// memory is warm; nothing is recorded when the round is not measured). In open loop a measured
/// round's grabs follow the run's schedule from its slot `first`, and stop when the run's
/// time ends; warm-up rounds are released at once, as a burst.
async fn grab_round(
    target: &Arc<Target>,
    ops: Arc<Vec<GrabOp>>,
    args: &Args,
    figures: &mut Vec<Figures>,
    spec: RoundSpec<'_>,
) -> RoundDone {
    let workers = figures.len().min(ops.len()).max(1);
    let release = Arc::new(Release::new(workers));
    let measure = spec.measure;
    let open_loop = spec.open_loop.filter(|_| measure).map(|(o, first, spent)| (o.clone(), first, spent));
    let tasks: Vec<_> = figures
        .drain(..workers)
        .enumerate()
        .map(|(w, figures)| {
            let (target, ops, release, progress, admin) =
                (Arc::clone(target), Arc::clone(&ops), Arc::clone(&release), spec.progress.clone(), spec.admin.clone());
            let (open_loop, retries_max) = (open_loop.clone(), args.busy_retries_max);
            tokio::spawn(async move {
                let mut worker = RoundWorker {
                    figures,
                    wins: Vec::new(),
                    last: None,
                    measure,
                    progress,
                    admin,
                    recalls: Vec::new(),
                };
                let start = release.wait().await;
                let mine = ops.iter().enumerate().skip(w).step_by(workers).map(|(k, op)| (k as u64, *op));
                match open_loop {
                    None => worker.burst(&target, mine, start, retries_max).await,
                    Some((open_loop, first, spent)) => {
                        let schedule = open_loop.schedule(start, first, spent);
                        worker.paced(&target, mine, &schedule, start, &open_loop.pacer, retries_max).await;
                    }
                }
                (worker.figures, worker.wins, worker.last, worker.recalls)
            })
        })
        .collect();
    let start = release.open().await;
    let mut wins = Vec::new();
    let mut last = start;
    let (mut returned, mut recalls) = (Vec::with_capacity(workers), Vec::new());
    for t in tasks {
        let (f, w, done, r): WorkerRound = t.await.expect("worker panicked");
        returned.push(f);
        wins.extend(w);
        last = last.max(done.unwrap_or(start));
        recalls.extend(r);
    }
    // The workers' figures go back in front, in order, for the next round.
    figures.splice(0..0, returned);
    (wins, last.duration_since(start), recalls)
}

/// One worker's part of a round.
struct RoundWorker {
    figures: Figures,
    wins: Vec<Win>,
    last: Option<Instant>,
    measure: bool,
    progress: Counter,
    admin: Option<Arc<recall::Admin>>,
    recalls: Vec<recall::RecallDone>,
}

impl RoundWorker {
    fn record(
        &mut self,
        op: GrabOp,
        (reply, retries): (Reply, u64),
        intended: Instant,
        sent: Instant,
        pace: Option<Start>,
    ) {
        let done = Instant::now();
        self.last = Some(done);
        if self.measure {
            let figures = &mut self.figures;
            figures.busy_retries += retries;
            let us = |from: Instant| done.duration_since(from).as_micros() as u64;
            figures.record_answer(&reply.answer(), us(intended), us(sent));
            if let Some(pace) = pace {
                figures.started(pace);
            }
            self.progress.add(1);
        }
        if let Reply::Won(fen) = reply {
            self.wins.push((op.packet, op.user, fen));
        }
    }

    /// Every grab of this worker in flight at once, all intended at the round's release.
    async fn burst(
        &mut self,
        target: &Target,
        mine: impl Iterator<Item = (u64, GrabOp)>,
        start: Instant,
        retries_max: u32,
    ) {
        let admin = self.admin.clone();
        let mut inflight: FuturesUnordered<_> = mine
            .map(|(_, op)| {
                let admin = admin.as_deref().filter(|_| op.recall_after);
                async move {
                    let sent = Instant::now();
                    // Polled together, the grab is sent first and the recall right behind it.
                    let grab = grab_until_answered(target, op, retries_max, None);
                    let recall = async move {
                        match admin {
                            Some(admin) => Some(admin.recall(op.packet).await),
                            None => None,
                        }
                    };
                    let (answer, recalled) = futures::join!(grab, recall);
                    (op, answer, sent, recalled)
                }
            })
            .collect();
        // Unconstrained: tokio's per-task budget would make thousands of ready replies look
        // pending and have the set poll them again and again.
        tokio::task::unconstrained(async {
            while let Some((op, answer, sent, recalled)) = inflight.next().await {
                self.record(op, answer, start, sent, None);
                self.recalls.extend(recalled);
            }
        })
        .await;
    }

    /// One grab at a time, each at its slot of the schedule, until the run's time ends. A slot
    /// already past at the round's `release` finds the worker behind: it was still busy with
    /// the rounds before.
    async fn paced(
        &mut self,
        target: &Target,
        mut mine: impl Iterator<Item = (u64, GrabOp)>,
        schedule: &Schedule,
        release: Instant,
        pacer: &Pacer,
        retries_max: u32,
    ) {
        while let Some((k, op)) = mine.next() {
            if !schedule.contains(k) {
                break;
            }
            if schedule.ended(Instant::now()) {
                // The run's time is over: this grab and the rest of the worker's slots inside
                // it were never started.
                let rest = mine.filter(|(k, _)| schedule.contains(*k)).count() as u64;
                if self.measure {
                    self.figures.dropped += 1 + rest;
                }
                break;
            }
            let slot = schedule.slot(k);
            let pace = pacer.until(slot, self.last.or(Some(release))).await;
            let sent = Instant::now();
            let grab = grab_until_answered(target, op, retries_max, schedule.end());
            let admin = self.admin.as_deref().filter(|_| op.recall_after);
            let recall = async move {
                match admin {
                    Some(admin) => Some(admin.recall(op.packet).await),
                    None => None,
                }
            };
            let (answer, recalled) = futures::join!(grab, recall);
            self.record(op, answer, slot, sent, Some(pace));
            self.recalls.extend(recalled);
        }
    }
}

/// Checks every packet and winner after a storm: winners distinct, no more than the shares,
/// shares summing to the total when sold out, the target's claims equal to the acknowledged
/// wins, and every member's balance equal to what they won.
async fn check_storm(target: &Target, packets: &[(PacketId, u64, u32)], wins: &[Win]) -> Result<Vec<String>, String> {
    let mut violations = Vec::new();
    let mut by_packet: HashMap<PacketId, Vec<(UserId, u64)>> = HashMap::new();
    let mut by_user: HashMap<UserId, u64> = HashMap::new();
    for &(p, u, fen) in wins {
        by_packet.entry(p).or_default().push((u, fen));
        *by_user.entry(u).or_default() += fen;
    }
    for &(packet, total, shares) in packets {
        let mut won = by_packet.remove(&packet).unwrap_or_default();
        let users: HashSet<UserId> = won.iter().map(|w| w.0).collect();
        if users.len() != won.len() {
            violations.push(format!("packet {packet}: a member was paid twice"));
        }
        let sum: u64 = won.iter().map(|w| w.1).sum();
        if won.len() > shares as usize || (won.len() == shares as usize && sum != total) {
            violations.push(format!(
                "packet {packet}: {} wins summing to {sum} fen of {total} in {shares} shares",
                won.len()
            ));
        }
        let mut claims = target.claims(packet).await?;
        claims.sort_unstable();
        won.sort_unstable();
        if claims != won {
            violations.push(format!(
                "packet {packet}: {} claims recorded, {} wins acknowledged",
                claims.len(),
                won.len()
            ));
        }
    }
    let balances: Vec<_> = futures::stream::iter(by_user)
        .map(|(user, won)| async move { (user, won, target.balance(user).await) })
        .buffer_unordered(64)
        .collect()
        .await;
    for (user, won, balance) in balances {
        if balance? != won {
            violations.push(format!("{user}'s balance is not the {won} fen they won"));
        }
    }
    Ok(violations)
}

/// storm and hot: rounds of packets grabbed by every member at once.
pub async fn storm(target: Arc<Target>, args: &Args) -> Result<Report, String> {
    let groups = if args.scenario == Scenario::Hot { 1 } else { args.groups };
    let (members, shares, total) = (args.members, args.shares, args.yuan * 100);
    for g in 0..groups {
        target.set_members(GroupId(g), (0..=members).map(|i| member(g, i, members)).collect()).await?;
    }
    if args.background_packets > 0 {
        // Open, untouched packets in a group of their own, ids far above the storm's.
        let (group, sender, first) = (GroupId(1 << 40), UserId(1 << 40), 1 << 40);
        target.set_members(group, vec![sender]).await?;
        if target.deposit(1 << 40, sender, args.background_packets * IDLE_PACKET_FEN).await != "deposited" {
            return Err("funding the background packets failed".into());
        }
        let opened =
            open_packets(&target, args, sender, group, first, args.background_packets, &Counter::default(), || async {
                Ok(())
            })
            .await?;
        if opened.count("sent") != args.background_packets {
            return Err(format!("only {} background packets opened", opened.count("sent")));
        }
    }
    let admin = match args.scenario {
        Scenario::Recall => {
            let senders: Vec<_> = (0..groups).map(|g| (GroupId(g), member(g, 0, members))).collect();
            Some(Arc::new(recall::Admin::set_up(&target, &senders, args.seed).await?))
        }
        _ => None,
    };
    let (mut refunds, mut admin_figures) = (Vec::new(), Figures::default());
    let rounds = args.warmup + args.rounds();
    let mut measured_requests = u64::from(args.rounds()) * groups * members;
    if let (Some(rate), Some(duration)) = (args.rate, args.duration()) {
        // An open-loop run with a duration makes at most the slots due within it.
        measured_requests = measured_requests.min((duration.as_secs_f64() * rate).ceil() as u64);
    }
    let what = format!("{:?} on {}", args.scenario, target.name()).to_lowercase();
    let (progress, shown) = progress::show(args, what, Some(measured_requests));
    // No more workers than a round has grabs.
    let workers_max = args.connections.min(usize::try_from(groups * members).unwrap_or(usize::MAX));
    let mut workers: Vec<Figures> = (0..workers_max).map(|_| Figures::default()).collect();
    let mut elapsed = Duration::ZERO;
    let mut packets = Vec::new();
    let mut wins = Vec::new();
    let open_loop = OpenLoop::new(args);
    // The run's next slot: the measured rounds make one schedule.
    let mut first = 0u64;
    for round in 0..u64::from(rounds) {
        if let Some(n) = open_loop.as_ref().and_then(|o| o.slots) {
            let over = args.duration().is_some_and(|d| elapsed >= d);
            if first >= n || over {
                // The open-loop run's time is over: the slots it held that no round reached
                // were never started.
                workers[0].dropped += n.saturating_sub(first);
                break;
            }
        }
        // Fund and send this round's packets (not timed).
        let sends = (0..groups).map(|g| {
            let target = &target;
            async move {
                let packet = PacketId(round * groups + g);
                let sender = member(g, 0, members);
                let deposited = target.deposit(packet.0, sender, total).await;
                let send = LuckySend {
                    packet,
                    sender,
                    group: GroupId(g),
                    fen: total,
                    shares,
                    seed: hongbao::packet_seed(args.seed, packet),
                };
                let sent = target.send(&send).await;
                (deposited == "deposited" && sent == "sent")
                    .then_some(packet)
                    .ok_or(format!("round {round}: {deposited}, {sent}"))
            }
        });
        for sent in futures::future::join_all(sends).await {
            packets.push((sent?, total, shares));
        }
        // The recall scenario: each packet's admin recall rides behind one of its grabs.
        let recall_at = admin.as_ref().map(|a| a.positions(round, groups, members, shares));
        let ops: Vec<GrabOp> = (0..groups)
            .flat_map(|g| {
                let recall_at = recall_at.as_ref().map(|at| at[g as usize] + 1);
                (1..=members).map(move |i| GrabOp {
                    packet: PacketId(round * groups + g),
                    group: GroupId(g),
                    user: member(g, i, members),
                    recall_after: recall_at == Some(i),
                })
            })
            .collect();
        let measure = round >= u64::from(args.warmup);
        let round_len = ops.len() as u64;
        let spec = RoundSpec {
            measure,
            progress: &progress,
            open_loop: open_loop.as_ref().map(|o| (o, first, elapsed)),
            admin: admin.clone(),
        };
        let (round_wins, took, recalls) = grab_round(&target, Arc::new(ops), args, &mut workers, spec).await;
        for done in recalls {
            if measure {
                done.record(&mut admin_figures);
            }
            refunds.push((done.packet, done.outcome));
        }
        match (&open_loop, measure) {
            (Some(o), true) => {
                // The run's time is at least its schedule's: past the last slot this round used,
                // whenever its last reply came.
                first += o.schedule(Instant::now(), first, elapsed).inside(round_len);
                elapsed = (elapsed + took).max(o.schedule_time(first));
            }
            (None, true) => elapsed += took,
            (_, false) => {}
        }
        wins.extend(round_wins);
    }
    let mut figures = Figures::default();
    for w in &workers {
        figures.merge(w);
    }
    shown.finish().await;
    let mut violations = check_storm(&target, &packets, &wins).await?;
    if admin.is_some() {
        let mut claimed: HashMap<PacketId, (usize, u64)> = HashMap::new();
        for &(packet, _, fen) in &wins {
            let c = claimed.entry(packet).or_default();
            *c = (c.0 + 1, c.1 + fen);
        }
        let sender_of = |p: PacketId| member(p.0 % groups, 0, members);
        let (broken, owed) = recall::check_refunds(&packets, &claimed, &refunds, sender_of);
        violations.extend(broken);
        violations.extend(recall::check_senders(&target, owed).await?);
    }
    let verdict = target.audit().await?;
    Ok(Report {
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        target: target.name(),
        mode: if args.rate.is_some() { "open-loop".into() } else { "burst".into() },
        params: json!({
            "groups": groups, "members": members, "shares": shares, "yuan": args.yuan,
            "rounds": args.rounds(), "warmup": args.warmup, "rate": args.rate,
            "connections": args.connections, "seed": args.seed,
            "background_packets": args.background_packets,
        }),
        figures,
        elapsed_secs: elapsed.as_secs_f64(),
        audit_balanced: verdict.balanced,
        audit_detail: verdict.detail,
        violations,
        idle: None,
        retire: None,
        journal_bytes: None,
        deadlines: None,
        recalls: admin.is_some().then_some(admin_figures),
    })
}

/// mixed: deposits, sends, grabs, transfers (embedded) and balance reads, closed-loop or on a
/// schedule.
pub async fn mixed(target: Arc<Target>, args: &Args) -> Result<Report, String> {
    let (groups, members, total, shares) = (args.groups, args.members, args.yuan * 100, args.shares);
    for g in 0..groups {
        target.set_members(GroupId(g), (0..=members).map(|i| member(g, i, members)).collect()).await?;
    }
    // Everyone starts with enough for a few packets.
    let op_ids = Arc::new(AtomicU64::new(1 << 40));
    let funding: Vec<_> =
        futures::stream::iter((0..groups).flat_map(|g| (0..=members).map(move |i| member(g, i, members))))
            .map(|user| {
                let (target, op) = (&target, op_ids.fetch_add(1, Ordering::Relaxed));
                async move { target.deposit(op, user, total * 3).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    if let Some(kind) = funding.iter().find(|k| **k != "deposited") {
        return Err(format!("funding members failed: {kind}"));
    }
    let shared = Arc::new(MixedShared {
        target: Arc::clone(&target),
        current: (0..groups).map(|_| AtomicU64::new(u64::MAX)).collect(),
        packet_ids: AtomicU64::new(0),
        op_ids,
        groups,
        members,
        total,
        shares,
        seed: args.seed,
        retries_max: args.busy_retries_max,
        transfers: target.has_transfers(),
    });
    let duration = args.duration().expect("mixed always runs for a duration");
    let open_loop = OpenLoop::new(args);
    let workers = args.connections;
    let release = Arc::new(Release::new(workers));
    let scheduled = args.rate.map(|rate| (rate * duration.as_secs_f64()).ceil() as u64);
    let (progress, shown) = progress::show(args, format!("mixed on {}", target.name()), scheduled);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (release, progress, open_loop) = (Arc::clone(&release), progress.clone(), open_loop.clone());
            let mut worker = MixedWorker::new(Arc::clone(&shared), w);
            tokio::spawn(async move {
                let mut figures = Figures::default();
                let mut last_reply = None;
                let start = release.wait().await;
                let deadline = start + duration;
                let schedule = open_loop.as_ref().map(|o| o.schedule(start, 0, Duration::ZERO));
                for k in (w as u64..).step_by(workers) {
                    let (intended, pace) = match (&open_loop, &schedule) {
                        (Some(open_loop), Some(schedule)) => {
                            if !schedule.contains(k) {
                                break;
                            }
                            if schedule.ended(Instant::now()) {
                                // Every slot of this worker left in the run was never started.
                                figures.dropped += schedule.remaining(k, workers as u64, u64::MAX);
                                break;
                            }
                            let slot = schedule.slot(k);
                            (slot, Some(open_loop.pacer.until(slot, last_reply).await))
                        }
                        _ => {
                            let now = Instant::now();
                            if now >= deadline {
                                break;
                            }
                            (now, None)
                        }
                    };
                    let sent = Instant::now();
                    let (answer, retries) = worker.request(deadline).await;
                    let done = Instant::now();
                    last_reply = Some(done);
                    if let Some(pace) = pace {
                        figures.started(pace);
                    }
                    figures.busy_retries += retries;
                    let us = |from: Instant| done.duration_since(from).as_micros() as u64;
                    figures.record_answer(&answer, us(intended), us(sent));
                    progress.add(1);
                }
                figures
            })
        })
        .collect();
    let start = release.open().await;
    let mut figures = Figures::default();
    for t in tasks {
        figures.merge(&t.await.map_err(|e| format!("worker failed: {e}"))?);
    }
    // The run lasts its duration at least, even when its last slot and reply came sooner.
    let elapsed = start.elapsed().max(duration);
    shown.finish().await;
    let verdict = target.audit().await?;
    Ok(Report {
        scenario: "mixed".into(),
        target: target.name(),
        mode: if args.rate.is_some() { "open-loop".into() } else { "closed-loop".into() },
        params: json!({
            "groups": groups, "members": members, "shares": shares, "yuan": args.yuan,
            "duration_secs": duration.as_secs(), "rate": args.rate, "connections": workers, "seed": args.seed,
            "mix": if target.has_transfers() {
                "54% grab, 8% send, 6% transfer (send or accept), 12% deposit, 20% balance"
            } else {
                "60% grab, 8% send, 12% deposit, 20% balance"
            },
        }),
        figures,
        elapsed_secs: elapsed.as_secs_f64(),
        audit_balanced: verdict.balanced,
        audit_detail: verdict.detail,
        violations: Vec::new(),
        idle: None,
        retire: None,
        journal_bytes: None,
        deadlines: None,
        recalls: None,
    })
}

/// What the mixed scenario's workers share: the target, each group's current packet, and
/// the id counters.
struct MixedShared {
    target: Arc<Target>,
    /// Each group's latest packet (u64::MAX: none yet), the one its members grab.
    current: Vec<AtomicU64>,
    packet_ids: AtomicU64,
    op_ids: Arc<AtomicU64>,
    groups: u64,
    members: u64,
    total: u64,
    shares: u32,
    seed: u64,
    retries_max: u32,
    /// Whether the target has transfers (the Redis baseline has none).
    transfers: bool,
}

/// One mixed-scenario worker: its own seeded choices and its transfers in flight.
struct MixedWorker {
    shared: Arc<MixedShared>,
    rng: ChaCha8Rng,
    /// This worker's transfers not yet accepted: (id, receiver). Ids are the worker's own, so
    /// no two workers send the same one.
    awaiting: std::collections::VecDeque<(u64, UserId)>,
    next_transfer: u64,
}

impl MixedWorker {
    fn new(shared: Arc<MixedShared>, w: usize) -> MixedWorker {
        let rng = ChaCha8Rng::seed_from_u64(shared.seed ^ (w as u64).wrapping_mul(0x9E37_79B9));
        MixedWorker { shared, rng, awaiting: std::collections::VecDeque::new(), next_transfer: (w as u64) << 40 }
    }

    /// Makes one request of the mix; its answer and the Busy retries it took (none after
    /// `until`, the run's end).
    async fn request(&mut self, until: Instant) -> (Answer, u64) {
        let s = Arc::clone(&self.shared);
        let target = &s.target;
        let g = self.rng.random_range(0..s.groups);
        let user = member(g, self.rng.random_range(1..=s.members), s.members);
        let roll = self.rng.random_range(0..100);
        let packet = s.current[g as usize].load(Ordering::Acquire);
        if roll < 8 || (roll < 68 && packet == u64::MAX) {
            let id = PacketId(s.packet_ids.fetch_add(1, Ordering::Relaxed));
            let send = LuckySend {
                packet: id,
                sender: user,
                group: GroupId(g),
                fen: s.total,
                shares: s.shares,
                seed: hongbao::packet_seed(s.seed, id),
            };
            let answer = target.send(&send).await;
            if answer == "sent" {
                s.current[g as usize].store(id.0, Ordering::Release);
            }
            (answer, 0)
        } else if roll < 62 || (roll < 68 && !s.transfers) {
            let op = GrabOp { packet: PacketId(packet), group: GroupId(g), user, recall_after: false };
            let (reply, retries) = grab_until_answered(target, op, s.retries_max, Some(until)).await;
            (reply.answer(), retries)
        } else if roll < 68 {
            // Half send an instant transfer to another member, half accept the oldest this
            // worker sent.
            let oldest = if roll < 65 { self.awaiting.pop_front() } else { None };
            if let Some((id, to)) = oldest {
                return (target.accept(id, to).await, 0);
            }
            let to = member(g, self.rng.random_range(1..=s.members), s.members);
            if to == user {
                return (balance(target, user).await, 0);
            }
            let id = self.next_transfer;
            self.next_transfer += 1;
            let answer = target.transfer(id, user, to, self.rng.random_range(1..=1_000)).await;
            if answer == "transfer_sent" {
                self.awaiting.push_back((id, to));
            }
            (answer, 0)
        } else if roll < 80 {
            (target.deposit(s.op_ids.fetch_add(1, Ordering::Relaxed), user, 1_000).await, 0)
        } else {
            (balance(target, user).await, 0)
        }
    }
}

/// A balance read as an answer.
async fn balance(target: &Target, user: UserId) -> Answer {
    match target.balance(user).await {
        Ok(_) => Answer::ok("balance"),
        Err(e) => Answer::refused("error", e),
    }
}

/// Opens `packets` packets (ids from `first_id`) of 1 yuan in 10 shares from `sender`, spread
/// over the workers; `ready` runs once every worker is set up, just before they start.
// Each argument is a different part of the request; a struct for one caller would only move them.
#[allow(clippy::too_many_arguments)]
async fn open_packets<F, Fut>(
    target: &Arc<Target>,
    args: &Args,
    sender: UserId,
    group: GroupId,
    first_id: u64,
    packets: u64,
    progress: &Counter,
    ready: F,
) -> Result<Figures, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let workers = args.connections.min(packets as usize).max(1);
    let release = Arc::new(Release::new(workers));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (target, release, progress, seed) =
                (Arc::clone(target), Arc::clone(&release), progress.clone(), args.seed);
            tokio::spawn(async move {
                let mut figures = Figures::default();
                release.wait().await;
                for p in (w as u64..packets).step_by(workers) {
                    let sent = Instant::now();
                    let id = PacketId(first_id + p);
                    let send = LuckySend {
                        packet: id,
                        sender,
                        group,
                        fen: IDLE_PACKET_FEN,
                        shares: 10,
                        seed: hongbao::packet_seed(seed, id),
                    };
                    let answer = target.send(&send).await;
                    let us = sent.elapsed().as_micros() as u64;
                    figures.record_answer(&answer, us, us);
                    progress.add(1);
                }
                figures
            })
        })
        .collect();
    // Every worker has allocated its histograms before `ready` (which may read memory).
    release.all_ready().await;
    ready().await?;
    release.go().await;
    let mut figures = Figures::default();
    for t in tasks {
        figures.merge(&t.await.map_err(|e| format!("worker failed: {e}"))?);
    }
    Ok(figures)
}

/// What an idle packet holds: 1 yuan (in 10 shares), a typical small packet.
const IDLE_PACKET_FEN: u64 = 100;

/// idle: open packets that nobody grabs and report what each costs in memory.
pub async fn idle(target: Arc<Target>, args: &Args) -> Result<Report, String> {
    let (sender, packets) = (member(0, 0, 1), args.packets);
    target.set_members(GroupId(0), vec![sender, member(0, 1, 1)]).await?;
    if target.deposit(0, sender, packets * IDLE_PACKET_FEN).await != "deposited" {
        return Err("funding the sender failed".into());
    }
    let (progress, shown) = progress::show(args, format!("idle on {}", target.name()), Some(packets));
    let (mut before, mut start) = (0, Instant::now());
    let figures = open_packets(&target, args, sender, GroupId(0), 0, packets, &progress, || async {
        before = target.memory_bytes().await?;
        start = Instant::now();
        Ok(())
    })
    .await?;
    let elapsed = start.elapsed();
    let after = target.memory_bytes().await?;
    shown.finish().await;
    let verdict = target.audit().await?;
    let sent = figures.count("sent");
    if sent != packets {
        // Memory per packet would be divided by the wrong count: the run measured nothing.
        let why: Vec<String> = figures.messages.iter().map(|(kind, m)| format!("{kind}: {m}")).collect();
        return Err(format!(
            "only {sent} of {packets} packets were sent; the target refused the rest ({})",
            why.join("; ")
        ));
    }
    let violations = Vec::new();
    Ok(Report {
        scenario: "idle".into(),
        target: target.name(),
        mode: "closed-loop".into(),
        params: json!({ "packets": packets, "connections": args.connections, "packet_fen": IDLE_PACKET_FEN, "shares": 10 }),
        figures,
        elapsed_secs: elapsed.as_secs_f64(),
        audit_balanced: verdict.balanced,
        audit_detail: verdict.detail,
        violations,
        idle: Some((packets, before, after)),
        retire: None,
        journal_bytes: None,
        deadlines: None,
        recalls: None,
    })
}
