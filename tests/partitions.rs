//! Partitions in one process: three engines, each serving one partition of three, with a relay
//! between them as a test would write it. A grab is decided in the packet's partition; a share
//! won by a member whose wallet is elsewhere travels as a remittance, numbered in the sending
//! journal's order, applied once by the receiver; the cluster conserves money with the
//! remittances in flight counted; a restarted partition numbers every remittance as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use hongbao::{
    split::Split, Amount, ClusterAudit, Config, Engine, GrabError, GroupId, Journal, Limits, ManualClock,
    MemoryJournal, NewPacket, NewTransfer, OpId, PacketId, Partition, Remittance, RemittanceError, SendError,
    TransferError, TransferId, UserId, WalletError,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const PARTITIONS: u32 = 3;
const MEMBERS: u64 = 120;
const GROUP: GroupId = GroupId(1);

struct Cluster {
    engines: Vec<Engine>,
    journals: Vec<Arc<MemoryJournal>>,
    clock: ManualClock,
}

fn partition(index: u32) -> Partition {
    Partition::new(index, PARTITIONS).unwrap()
}

fn config(index: u32, clock: &ManualClock, journal: Arc<dyn Journal>) -> Config {
    config_with(index, clock, journal, Limits::default())
}

fn config_with(index: u32, clock: &ManualClock, journal: Arc<dyn Journal>, limits: Limits) -> Config {
    Config { arbiters: 2, wallet_shards: 2, ..Config::default() }
        .with_limits(limits)
        .with_clock(Arc::new(clock.clone()))
        .with_seed(11)
        .with_journal(journal)
        .with_partition(partition(index))
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(Limits::default()).await
    }

    async fn start_with(limits: Limits) -> Cluster {
        let clock = ManualClock::default();
        let journals: Vec<Arc<MemoryJournal>> = (0..PARTITIONS).map(|_| Arc::new(MemoryJournal::recording())).collect();
        let engines = (0..PARTITIONS)
            .map(|i| Engine::start(config_with(i, &clock, journals[i as usize].clone(), limits.clone())).unwrap())
            .collect::<Vec<_>>();
        let members: Vec<UserId> = (1..=MEMBERS).map(UserId).collect();
        for engine in &engines {
            // Rosters are in every partition: a grab anywhere checks them where it is decided.
            engine.set_members(GROUP, members.clone()).await.unwrap();
        }
        let cluster = Cluster { engines, journals, clock };
        for &user in &members {
            cluster.wallet(user).deposit(OpId(user.0), user, Amount::yuan(100)).await.unwrap();
        }
        cluster
    }

    fn wallet(&self, user: UserId) -> &Engine {
        &self.engines[partition(0).of_user(user) as usize]
    }

    fn packets(&self, packet: PacketId) -> &Engine {
        &self.engines[partition(0).of_packet(packet) as usize]
    }

    /// Carries every durable remittance from each partition to its receiver, `max` at a time,
    /// and acknowledges what the receiver applied.
    async fn relay(&self, max: usize) -> usize {
        let mut carried = 0;
        for from in &self.engines {
            for to in &self.engines {
                let (f, t) = (from.partition().index(), to.partition().index());
                if f == t {
                    continue;
                }
                carried += self.carry(f, t, max).await;
            }
        }
        carried
    }

    /// Carries every durable remittance from partition `from` to `to` (one way), `max` at a
    /// time, and acknowledges what the receiver applied.
    async fn carry(&self, from: u32, to: u32, max: usize) -> usize {
        let (sender, receiver) = (&self.engines[from as usize], &self.engines[to as usize]);
        let mut carried = 0;
        loop {
            let batch = sender.outbox(to, max);
            if batch.is_empty() {
                return carried;
            }
            receiver.receive(&batch).await.unwrap();
            carried += batch.len();
            sender.acknowledge(to, receiver.received_from(from));
        }
    }

    async fn audit(&self) -> ClusterAudit {
        let mut audits = Vec::new();
        for engine in &self.engines {
            audits.push((engine.partition().index(), engine.audit().await.unwrap()));
        }
        ClusterAudit::of(&audits)
    }
}

/// The first id from `from` that places a packet in `index`.
fn packet_in(index: u32, from: u64) -> PacketId {
    (from..).map(PacketId).find(|&p| partition(0).of_packet(p) == index).unwrap()
}

/// The first id from `from` that places a transfer in `index`.
fn transfer_in(index: u32, from: u64) -> TransferId {
    (from..).map(TransferId).find(|&t| partition(0).of_transfer(t) == index).unwrap()
}

fn sender_in(index: u32) -> UserId {
    (1..=MEMBERS).map(UserId).find(|&u| partition(0).of_user(u) == index).unwrap()
}

fn lucky(id: PacketId, sender: UserId, shares: u32) -> NewPacket {
    NewPacket { id, sender, group: GROUP, split: Split::lucky(Amount::yuan(50), shares), greeting: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_won_across_partitions_arrive_once_and_the_cluster_conserves_money() {
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cluster = Cluster::start().await;
    // A packet in each partition, from a sender whose wallet is there.
    let packets: Vec<PacketId> = (0..PARTITIONS).map(|i| packet_in(i, 1000 * u64::from(i + 1))).collect();
    for (i, &packet) in packets.iter().enumerate() {
        cluster.packets(packet).send_packet(lucky(packet, sender_in(i as u32), 100)).await.unwrap();
    }
    // Every member grabs every packet at once, in a seeded order.
    let mut grabs: Vec<(PacketId, UserId)> =
        packets.iter().flat_map(|&p| (1..=MEMBERS).map(move |u| (p, UserId(u)))).collect();
    for i in (1..grabs.len()).rev() {
        grabs.swap(i, rng.random_range(0..=i));
    }
    let results = join_all(grabs.iter().map(|&(p, u)| cluster.packets(p).grab(p, u))).await;
    let won: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(won.len(), 300, "seed {seed}");
    for g in &won {
        let elsewhere = partition(0).of_user(g.user) != partition(0).of_packet(g.packet);
        assert_eq!(g.remitted.is_some(), elsewhere, "seed {seed}: {g:?}");
        if let Some(r) = &g.remitted {
            assert_eq!((r.user, r.amount, r.to), (g.user, g.amount, partition(0).of_user(g.user)));
        }
    }
    // Before the relay: the shares won elsewhere are in flight, and counted.
    let travelling: u64 = won.iter().filter(|g| g.remitted.is_some()).map(|g| g.amount.as_fen()).sum();
    let before = cluster.audit().await;
    assert!(before.is_balanced(), "seed {seed}: {before:?}");
    assert_eq!(before.in_flight, Amount::fen(travelling), "seed {seed}");
    assert_eq!(before.in_flight_count, won.iter().filter(|g| g.remitted.is_some()).count() as u64);

    // A grabber waiting in their own partition for the shares they won elsewhere sees every
    // one of them once they arrive (the shares won at home were credited before their grab
    // returned).
    let g = won.iter().find(|g| g.remitted.is_some()).unwrap().clone();
    let tokens: Vec<Remittance> = won.iter().filter(|w| w.user == g.user).filter_map(|w| w.remitted.clone()).collect();
    let home = cluster.wallet(g.user).clone();
    let waiting = tokio::spawn(async move {
        for token in &tokens {
            home.await_remittance(token).await.unwrap();
        }
        home.balance(g.user).await.unwrap()
    });
    // Small batches: the relay runs many rounds.
    assert_eq!(cluster.relay(7).await as u64, before.in_flight_count);
    let expected: HashMap<UserId, u64> = won.iter().fold(HashMap::new(), |mut m, g| {
        *m.entry(g.user).or_insert(Amount::yuan(100).as_fen()) += g.amount.as_fen();
        m
    });
    assert_eq!(waiting.await.unwrap().as_fen(), expected[&g.user] - spent(g.user));
    let after = cluster.audit().await;
    assert!(after.is_balanced(), "seed {seed}: {after:?}");
    assert_eq!((after.in_flight, after.in_flight_count), (Amount::ZERO, 0));
    assert_eq!(after.escrow, Amount::ZERO, "every share was taken");
    for u in (1..=MEMBERS).map(UserId) {
        let balance = cluster.wallet(u).balance(u).await.unwrap().as_fen();
        let deposit = Amount::yuan(100).as_fen();
        assert_eq!(balance, expected.get(&u).copied().unwrap_or(deposit) - spent(u), "seed {seed}: user {u}");
    }
    // Nothing is left to carry, and carrying everything again changes nothing.
    assert_eq!(cluster.relay(100).await, 0);
    for (i, engine) in cluster.engines.iter().enumerate() {
        let peer = (i as u32 + 1) % PARTITIONS;
        let theirs = cluster.engines[peer as usize].received_from(i as u32);
        assert_eq!(engine.outbox(peer, 10), vec![], "acknowledged remittances left the outbox");
        // The acknowledgement that emptied it is journaled: a new owner offers none again.
        assert_eq!(replay_outbox(&cluster, i as u32, peer).await, vec![]);
        // Every one again, as a relay that lost track would: repeats.
        let records = cluster.journals[i].records();
        let unacknowledged: Vec<hongbao::Record> =
            records.into_iter().filter(|r| !matches!(r, hongbao::Record::Acknowledged { .. })).collect();
        let config = config(i as u32, &cluster.clock, Arc::new(MemoryJournal::new()));
        let history = Arc::new(unacknowledged);
        let forgetful = Engine::start(config.with_journal_history(Arc::new(MemoryJournal::new()), history)).unwrap();
        let again = forgetful.outbox(peer, usize::MAX);
        forgetful.shutdown().await;
        assert_eq!(again.len() as u64, theirs);
        cluster.engines[peer as usize].receive(&again).await.unwrap();
    }
    assert_eq!(cluster.audit().await, after, "repeats changed nothing");
}

/// What a new owner of partition `index` (replaying its journal) holds for `to`: every
/// remittance, as none was acknowledged to it.
async fn replay_outbox(cluster: &Cluster, index: u32, to: u32) -> Vec<Remittance> {
    let records = cluster.journals[index as usize].records();
    let config = config(index, &cluster.clock, Arc::new(MemoryJournal::new()));
    let engine = Engine::start(config.with_journal_history(Arc::new(MemoryJournal::new()), Arc::new(records))).unwrap();
    let outbox = engine.outbox(to, usize::MAX);
    engine.shutdown().await;
    outbox
}

/// What each sender put into their packet (the senders are the first member of each
/// partition).
fn spent(user: UserId) -> u64 {
    if (0..PARTITIONS).any(|i| sender_in(i) == user) {
        Amount::yuan(50).as_fen()
    } else {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_partition_numbers_its_remittances_as_before() {
    let cluster = Cluster::start().await;
    // Two packets on different arbiters of partition 0, grabbed at once: their claims
    // interleave in the journal, and the numbers must follow it.
    let packets = [packet_in(0, 1), packet_in(0, 5000)];
    for &p in &packets {
        cluster.engines[0].send_packet(lucky(p, sender_in(0), 60)).await.unwrap();
    }
    let grabs = packets.iter().flat_map(|&p| (1..=MEMBERS).map(move |u| (p, UserId(u))));
    join_all(grabs.map(|(p, u)| cluster.engines[0].grab(p, u))).await;
    for to in 1..PARTITIONS {
        let live = cluster.engines[0].outbox(to, usize::MAX);
        assert!(live.len() > 10, "{} remittances to {to}", live.len());
        assert_eq!(live.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=live.len() as u64).collect::<Vec<_>>());
        assert_eq!(replay_outbox(&cluster, 0, to).await, live);
    }
    // Half delivered before the restart: the new owner's outbox still holds the rest under
    // the same numbers, and the receiver takes the overlap as repeats.
    let to = 1;
    let live = cluster.engines[0].outbox(to, usize::MAX);
    cluster.engines[1].receive(&live[..live.len() / 2]).await.unwrap();
    let before = cluster.engines[1].audit().await.unwrap();
    cluster.engines[1].receive(&live[..live.len() / 2]).await.unwrap();
    assert_eq!(cluster.engines[1].audit().await.unwrap(), before);
    cluster.engines[1].receive(&replay_outbox(&cluster, 0, to).await).await.unwrap();
    assert_eq!(cluster.engines[1].received_from(0), live.len() as u64);
    cluster.engines[0].acknowledge(to, cluster.engines[1].received_from(0));
    assert!(cluster.engines[0].outbox(to, 1).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misrouted_remittances_and_gaps_change_nothing() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let home_of_1 = sender_in(1);
    let r = |seq, user| Remittance {
        from: 0,
        to: 1,
        seq,
        user,
        amount: Amount::fen(5),
        packet: None,
        transfer: None,
        returned: None,
    };
    let before = p1.audit().await.unwrap();
    assert!(matches!(
        p1.receive(&[r(1, home_of_1), r(3, home_of_1)]).await,
        Err(RemittanceError::Gap { expected: 2, .. })
    ));
    assert!(matches!(p1.receive(&[r(1, sender_in(2))]).await, Err(RemittanceError::Misrouted { .. })));
    assert!(matches!(p0.receive(&[r(1, home_of_1)]).await, Err(RemittanceError::Misrouted { .. })));
    assert!(matches!(
        p1.receive(&[Remittance { from: 1, ..r(1, home_of_1) }]).await,
        Err(RemittanceError::Misrouted { .. })
    ));
    assert_eq!(p1.audit().await.unwrap(), before, "a refused batch changes nothing");
    assert_eq!(p1.received_from(0), 0);
    // A packet comes from its sender's partition, to the partition of its id.
    let sent = |sender, id| {
        // Sent now, so it opens and stays open (expiring a day later) while the test runs.
        let at = hongbao::Clock::now(&cluster.clock);
        let expires_at = at.plus_secs(86_400);
        let spec = lucky(id, sender, 5);
        hongbao::PacketSent {
            spec,
            seed: 1,
            sent_at: at,
            expires_at,
            share_fen_max: 20_000,
            opens_at: at,
            day: 0,
            approval: None,
        }
    };
    let carrying = |sender, id| Remittance {
        packet: Some(Box::new(sent(sender, id))),
        user: sender,
        amount: Amount::yuan(50),
        ..r(1, sender)
    };
    assert!(p1.receive(&[carrying(sender_in(0), packet_in(1, 1))]).await.is_ok(), "the well-formed one");
    let before = p1.audit().await.unwrap();
    // A transfer's remittance is checked the same way, and carries its own amount.
    let transfer = |sender, id| {
        let spec = delayed(id, sender, sender_in(2), 3);
        let sent_at = hongbao::Clock::now(&cluster.clock);
        let sent = hongbao::TransferSent {
            spec,
            sent_at,
            day: 0,
            cooling_until: sent_at,
            arrives_at: sent_at.plus_secs(7_200),
            accept_until: sent_at.plus_secs(7_200 + 86_400),
            approval: None,
        };
        Remittance {
            packet: None,
            transfer: Some(Box::new(sent)),
            user: sender,
            amount: Amount::yuan(3),
            ..r(1, sender)
        }
    };
    let wrong_amount = Remittance { amount: Amount::yuan(4), ..transfer(sender_in(0), transfer_in(1, 1)) };
    // Both a packet and a transfer, each alone well formed (a packet of 3 yuan).
    let mut both = transfer(sender_in(0), transfer_in(1, 1));
    let mut small = sent(sender_in(0), packet_in(1, 9));
    small.spec.split = Split::Fixed { each: Amount::yuan(1), shares: 3 };
    both.packet = Some(Box::new(small));
    // Sent back, though it is not going home; going home, though not sent back; a credit
    // sent back.
    let returned = Some(hongbao::ReturnReason::IdTaken);
    let back_the_wrong_way = Remittance { returned, ..transfer(sender_in(0), transfer_in(1, 1)) };
    let home_unreturned = Remittance { from: 0, ..transfer(sender_in(1), transfer_in(0, 1)) };
    let credit_returned = Remittance { returned, ..r(2, sender_in(1)) };
    for wrong in [
        back_the_wrong_way,
        home_unreturned,
        credit_returned,
        carrying(sender_in(2), packet_in(1, 9)),
        carrying(sender_in(0), packet_in(2, 9)),
        transfer(sender_in(2), transfer_in(1, 1)),
        transfer(sender_in(0), transfer_in(2, 1)),
        wrong_amount,
        both,
    ] {
        assert!(matches!(p1.receive(&[Remittance { seq: 2, ..wrong }]).await, Err(RemittanceError::Misrouted { .. })));
    }
    assert_eq!((p1.audit().await.unwrap(), p1.received_from(0)), (before, 1), "refused, changing nothing");
    // The well-formed transfer is taken in.
    let held = Remittance { seq: 2, ..transfer(sender_in(0), transfer_in(1, 1)) };
    p1.receive(std::slice::from_ref(&held)).await.unwrap();
    assert_eq!(p1.transfer_arrival(&held).await.unwrap().id, transfer_in(1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_wallets_elsewhere_are_refused_with_their_partition() {
    let cluster = Cluster::start().await;
    let p0 = &cluster.engines[0];
    let (elsewhere, home) = (sender_in(2), sender_in(0));
    assert_eq!(p0.deposit(OpId(9_999), elsewhere, Amount::fen(1)).await, Err(WalletError::Elsewhere { partition: 2 }));
    assert!(matches!(p0.balance(elsewhere).await, Err(hongbao::EngineError::Elsewhere { partition: 2 })));
    let foreign_sender = lucky(packet_in(0, 1), elsewhere, 3);
    assert_eq!(p0.send_packet(foreign_sender).await, Err(SendError::Elsewhere { partition: 2 }));
    let transfer = |id| NewTransfer { id, amount: Amount::fen(10), ..spec_of(elsewhere, home) };
    let foreign_transfer = transfer(transfer_in(0, 1));
    assert_eq!(p0.transfer(foreign_transfer).await, Err(TransferError::Elsewhere { partition: 2 }));
    // Requests by a packet's or a transfer's id name the partition that holds it.
    let (theirs, their_transfer) = (packet_in(2, 1), transfer_in(2, 1));
    assert_eq!(p0.grab(theirs, home).await, Err(GrabError::Elsewhere { partition: 2 }));
    assert_eq!(p0.packet(theirs).await, Err(hongbao::EngineError::Elsewhere { partition: 2 }));
    assert_eq!(p0.cancel_packet(theirs, home).await, Err(hongbao::CancelError::Elsewhere { partition: 2 }));
    let recalled = p0.admin_recall(theirs, home, String::new()).await;
    assert_eq!(recalled, Err(hongbao::RecallError::Elsewhere { partition: 2 }));
    assert_eq!(p0.transfer_view(their_transfer).await, Err(TransferError::Elsewhere { partition: 2 }));
    assert_eq!(p0.accept_transfer(their_transfer, home).await, Err(TransferError::Elsewhere { partition: 2 }));
    let approval = p0.approve(hongbao::ApprovalId::Packet(theirs), home).await;
    assert_eq!(approval, Err(hongbao::ApprovalError::Elsewhere { partition: 2 }));
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!(audit.deposits, Amount::yuan(100 * MEMBERS), "nothing was taken");
    assert_eq!(audit.wallets, audit.deposits, "nothing moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_wallet_elsewhere_is_accepted_where_it_was_sent_and_lands_once() {
    let cluster = Cluster::start().await;
    let (from, to) = (sender_in(0), sender_in(1));
    let id = (1..).map(TransferId).find(|&t| partition(0).of_transfer(t) == 0).unwrap();
    let spec = NewTransfer { id, amount: Amount::yuan(30), note: "房租".into(), ..spec_of(from, to) };
    let p0 = &cluster.engines[0];
    p0.transfer(spec).await.unwrap();
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(70));
    // The receiver accepts it in the transfer's partition; the money leaves for theirs.
    let accepted = p0.accept_transfer(id, to).await.unwrap();
    let remitted = accepted.remitted.expect("the receiver's wallet is elsewhere");
    assert_eq!((remitted.to, remitted.user, remitted.amount), (1, to, Amount::yuan(30)));
    let in_flight = cluster.audit().await;
    assert!(in_flight.is_balanced(), "{in_flight:?}");
    assert_eq!(in_flight.in_flight, Amount::yuan(30));
    // A repeat of the accept changes nothing and carries nothing more.
    assert!(p0.accept_transfer(id, to).await.is_err());
    assert_eq!(cluster.relay(10).await, 1);
    cluster.engines[1].await_remittance(&remitted).await.unwrap();
    assert_eq!(cluster.engines[1].balance(to).await.unwrap(), Amount::yuan(130));
    let settled = cluster.audit().await;
    assert!(settled.is_balanced(), "{settled:?}");
    assert_eq!((settled.in_flight, settled.pending), (Amount::ZERO, Amount::ZERO));
    // A declined one goes back to its sender at home: nothing crosses.
    let back = (id.0 + 1..).map(TransferId).find(|&t| partition(0).of_transfer(t) == 0).unwrap();
    p0.transfer(NewTransfer { id: back, amount: Amount::yuan(5), ..spec_of(from, to) }).await.unwrap();
    assert_eq!(p0.decline_transfer(back, to).await.unwrap().remitted, None);
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(70));
    assert_eq!(cluster.relay(10).await, 0);
}

fn spec_of(from: UserId, to: UserId) -> NewTransfer {
    NewTransfer {
        id: TransferId(0),
        from,
        to,
        amount: Amount::ZERO,
        arrival: hongbao::Arrival::Instant,
        note: String::new(),
        org: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_replays_only_as_the_partition_it_names() {
    let cluster = Cluster::start().await;
    let records = cluster.journals[1].records();
    assert_eq!(records[0], hongbao::Record::Partitioned { index: 1, count: PARTITIONS });
    let start = |partition: Partition, history: Vec<hongbao::Record>| {
        let config = Config::default().with_partition(partition);
        Engine::start(config.with_journal_history(Arc::new(MemoryJournal::new()), Arc::new(history)))
    };
    // Under another count, or as another partition, or unpartitioned: refused, naming why.
    for other in [Partition::new(1, 4).unwrap(), partition(2), Partition::whole()] {
        match start(other, records.clone()) {
            Err(hongbao::StartError::Recovery(why)) => assert!(why.contains("partition 1 of 3"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    // A journal written unpartitioned cannot become a partition of several.
    let whole = Arc::new(MemoryJournal::recording());
    let engine = Engine::start(Config::default().with_journal(whole.clone())).unwrap();
    engine.deposit(OpId(1), UserId(1), Amount::fen(5)).await.unwrap();
    engine.shutdown().await;
    match start(partition(0), whole.records()) {
        Err(hongbao::StartError::Recovery(why)) => assert!(why.contains("unpartitioned"), "{why}"),
        other => panic!("{other:?}"),
    }
    let same = start(partition(1), records).unwrap();
    assert!(same.audit().await.unwrap().is_balanced());
    same.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_plus_the_records_after_it_is_the_whole_journal_remittances_included() {
    let cluster = Cluster::start().await;
    // Shares won across partitions, half of them carried: every partition has flows out and
    // in, and remittances not yet acknowledged.
    for i in 0..PARTITIONS {
        let packet = packet_in(i, 7000 * u64::from(i + 1));
        cluster.packets(packet).send_packet(lucky(packet, sender_in(i), 60)).await.unwrap();
        let grabs = (1..=MEMBERS).map(UserId).map(|u| cluster.packets(packet).grab(packet, u));
        assert_eq!(join_all(grabs).await.into_iter().filter(Result::is_ok).count(), 60);
        if i == 0 {
            cluster.relay(1000).await;
        }
    }
    // Packets sent from partition 1 to open elsewhere: one carried and opened in partition 0,
    // one still on its way to partition 2.
    let (carried, travelling) = (packet_in(0, 90_000), packet_in(2, 90_000));
    let mut senders = (1..=MEMBERS).map(UserId).filter(|&u| partition(1).holds_user(u) && spent(u) == 0);
    let (first, second) = (senders.next().unwrap(), senders.next().unwrap());
    cluster.engines[1].send_packet(lucky(carried, first, 5)).await.unwrap();
    cluster.relay(1000).await;
    // So are transfers: one carried and held in partition 0, one on its way to partition 2.
    let (held, sent_off) = (transfer_in(0, 90_000), transfer_in(2, 90_000));
    cluster.engines[1].transfer(delayed(held, first, second, 3)).await.unwrap();
    cluster.relay(1000).await;
    cluster.engines[1].send_packet(lucky(travelling, second, 5)).await.unwrap();
    cluster.engines[1].transfer(delayed(sent_off, second, first, 4)).await.unwrap();
    assert!(cluster.engines[0].packet(carried).await.is_ok());
    assert!(cluster.engines[0].transfer_view(held).await.is_ok());
    assert!(
        cluster.engines[1].remitted_transfer(held).is_some()
            && cluster.engines[1].remitted_transfer(sent_off).is_some()
    );
    let mark = |position: u64| hongbao::LogMark { position, hash: [7; 32] };
    for index in 0..PARTITIONS {
        let records = cluster.journals[index as usize].records();
        let config = config(index, &cluster.clock, Arc::new(MemoryJournal::new()));
        let fold = |records: &[hongbao::Record], mut state: hongbao::Folded| {
            records.iter().for_each(|r| state.apply(r).unwrap());
            state
        };
        let whole = fold(&records, hongbao::Folded::empty(&config));
        for cut in [0, 1, records.len() / 3, records.len() - 1, records.len()] {
            let before = fold(&records[..cut], hongbao::Folded::empty(&config));
            let (restored, at) = hongbao::Folded::restore(&config, &before.snapshot(&mark(cut as u64))).unwrap();
            assert_eq!(at, mark(cut as u64));
            let after = fold(&records[cut..], restored);
            assert_eq!(after.records(), records.len() as u64, "partition {index}, cut at {cut}");
            assert_eq!(after.snapshot(&mark(0)), whole.snapshot(&mark(0)), "partition {index}, cut at {cut}");
        }
        // An engine started from the state holds what one replaying every record holds:
        // balances, and the remittances it must send again.
        let (state, _) = hongbao::Folded::restore(&config, &whole.snapshot(&mark(0))).unwrap();
        let engine = Engine::start(config.clone().with_journal_state(Arc::new(MemoryJournal::new()), state)).unwrap();
        for to in (0..PARTITIONS).filter(|&to| to != index) {
            assert_eq!(engine.outbox(to, usize::MAX), replay_outbox(&cluster, index, to).await, "{index} to {to}");
        }
        for u in (1..=MEMBERS).map(UserId).filter(|&u| partition(index).holds_user(u)) {
            assert_eq!(engine.balance(u).await.unwrap(), cluster.engines[index as usize].balance(u).await.unwrap());
        }
        assert_eq!(engine.audit().await.unwrap(), cluster.engines[index as usize].audit().await.unwrap());
        for packet in [carried, travelling] {
            assert_eq!(engine.remitted_packet(packet), cluster.engines[index as usize].remitted_packet(packet));
            assert_eq!(engine.packet(packet).await, cluster.engines[index as usize].packet(packet).await);
        }
        for transfer in [held, sent_off] {
            let live = &cluster.engines[index as usize];
            assert_eq!(engine.remitted_transfer(transfer), live.remitted_transfer(transfer));
            assert_eq!(engine.transfer_view(transfer).await, live.transfer_view(transfer).await);
        }
        engine.shutdown().await;
        // A snapshot is only ever its own partition's.
        let other = hongbao::Config::default().with_partition(partition((index + 1) % PARTITIONS));
        assert!(hongbao::Folded::restore(&other, &whole.snapshot(&mark(0))).is_err());
        assert!(Engine::start(other.with_journal_state(Arc::new(MemoryJournal::new()), whole)).is_err());
    }
}

/// The engine replaying partition `index`'s journal so far, as a new owner would.
fn replayed(cluster: &Cluster, index: u32) -> Engine {
    let records = cluster.journals[index as usize].records();
    let config = config(index, &cluster.clock, Arc::new(MemoryJournal::new()));
    Engine::start(config.with_journal_history(Arc::new(MemoryJournal::new()), Arc::new(records))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_sent_from_another_partition_opens_in_its_own_and_its_remainder_goes_home() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let (sender, id) = (sender_in(0), packet_in(1, 1));
    let spec = lucky(id, sender, 10);
    // Debited at home at once; the packet travels to its own partition.
    let sent = p0.send_packet(spec.clone()).await.unwrap();
    assert_eq!((sent.id, sent.remaining, sent.shares_left), (id, Amount::yuan(50), 10));
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(50));
    // A retry is the same send: the same view, nothing more debited; another send of the id
    // conflicts.
    assert_eq!(p0.send_packet(spec.clone()).await.unwrap(), sent);
    let other = NewPacket { greeting: "另一个".into(), ..spec.clone() };
    assert_eq!(p0.send_packet(other).await, Err(SendError::IdConflict { packet: id }));
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(50));
    let remittance = p0.remitted_packet(id).expect("its send is durable");
    assert_eq!((remittance.to, remittance.user, remittance.amount), (1, sender, Amount::yuan(50)));
    assert_eq!(remittance.packet.as_deref().map(|p| &p.spec), Some(&spec));
    // In flight, the packet's total is counted once.
    let travelling = cluster.audit().await;
    assert!(travelling.is_balanced(), "{travelling:?}");
    assert_eq!(
        (travelling.in_flight, travelling.in_flight_count, travelling.escrow),
        (Amount::yuan(50), 1, Amount::ZERO)
    );
    assert_eq!(p1.grab(id, UserId(1)).await, Err(GrabError::UnknownPacket), "not open before it arrives");
    // Once carried it opens where its id places it, and is grabbed there.
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p1.arrival(&remittance).await.unwrap(), sent);
    let grabbers: Vec<UserId> = (1..=4).map(UserId).collect();
    for &u in &grabbers {
        p1.grab(id, u).await.unwrap();
    }
    let open = cluster.audit().await;
    assert!(open.is_balanced(), "{open:?}");
    // At expiry the remainder goes back to the sender's partition, as a remittance of its own.
    cluster.clock.advance(Duration::from_secs(86_400));
    p1.run_due().await.unwrap();
    let expired = p1.packet(id).await.unwrap();
    let claimed: u64 = expired.claims.iter().map(|c| c.amount.as_fen()).sum();
    assert_eq!(expired.claims.len(), grabbers.len(), "{expired:?}");
    let refund = Amount::fen(Amount::yuan(50).as_fen() - claimed);
    cluster.relay(10).await;
    cluster.relay(10).await;
    let won: u64 = expired.claims.iter().filter(|c| c.user == sender).map(|c| c.amount.as_fen()).sum();
    let home = Amount::yuan(50).as_fen() + refund.as_fen() + won;
    assert_eq!(p0.balance(sender).await.unwrap().as_fen(), home);
    let settled = cluster.audit().await;
    assert!(settled.is_balanced(), "{settled:?}");
    assert_eq!((settled.in_flight, settled.escrow), (Amount::ZERO, Amount::ZERO));
    // A new owner of either partition holds the same: the sender's partition still knows the
    // send (a retry debits nothing), the packet's holds the packet as it closed.
    let (home_again, theirs_again) = (replayed(&cluster, 0), replayed(&cluster, 1));
    assert_eq!(home_again.send_packet(spec).await.unwrap(), sent);
    assert_eq!(home_again.balance(sender).await.unwrap().as_fen(), home);
    assert_eq!(home_again.audit().await.unwrap(), p0.audit().await.unwrap());
    assert_eq!(theirs_again.packet(id).await.unwrap(), expired);
    assert_eq!(theirs_again.audit().await.unwrap(), p1.audit().await.unwrap());
    home_again.shutdown().await;
    theirs_again.shutdown().await;
    // Past the retention of a closed packet, both partitions forget it (memory is bounded),
    // and a new owner replays the retirement.
    cluster.clock.advance(Duration::from_secs(Limits::default().closed_retention_secs + 1));
    // (The engines' own sweeps may have run on the clock's move: one more finds the rest.)
    p0.retire_due().await.unwrap();
    p1.retire_due().await.unwrap();
    assert_eq!((p0.remitted_packet(id), p1.packet(id).await), (None, Err(hongbao::EngineError::UnknownPacket)));
    let home_again = replayed(&cluster, 0);
    assert_eq!(home_again.remitted_packet(id), None);
    assert_eq!(home_again.audit().await.unwrap(), p0.audit().await.unwrap());
    home_again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_whose_id_is_taken_in_its_partition_goes_back_to_its_sender() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let id = packet_in(1, 1);
    // The id is taken in its partition by a member whose wallet is there; a member elsewhere
    // sends another packet under it, which its own partition cannot know.
    p1.send_packet(lucky(id, sender_in(1), 5)).await.unwrap();
    let (sender, spec) = (sender_in(0), NewPacket { greeting: "撞号".into(), ..lucky(id, sender_in(0), 5) });
    p0.send_packet(spec).await.unwrap();
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(50));
    let remittance = p0.remitted_packet(id).unwrap();
    let before = p1.packet(id).await.unwrap();
    // Carried one way only, so the return can be seen on its way.
    assert_eq!(p0.outbox(1, 10), std::slice::from_ref(&remittance));
    assert_eq!(cluster.carry(0, 1, 10).await, 1);
    assert_eq!(p1.arrival(&remittance).await, Err(SendError::IdConflict { packet: id }));
    assert_eq!(p1.packet(id).await.unwrap(), before, "the packet that had the id is untouched");
    let returning = cluster.audit().await;
    assert!(returning.is_balanced(), "{returning:?}");
    assert_eq!(returning.in_flight, Amount::yuan(50), "the total is on its way back");
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100));
    // Home, the send is known to have come back: it still names its remittance (which its
    // partition answers for), and a retry is a new send, which would go back again.
    assert_eq!(p0.remitted_packet(id), Some(remittance.clone()));
    assert_eq!(p1.arrival(&remittance).await, Err(SendError::IdConflict { packet: id }));
    let back = cluster.audit().await;
    assert!(back.is_balanced(), "{back:?}");
    assert_eq!((back.in_flight, back.escrow), (Amount::ZERO, Amount::yuan(50)));
    // Replayed, the return is what was recorded, not decided again.
    let again = replayed(&cluster, 1);
    assert_eq!(again.audit().await.unwrap(), p1.audit().await.unwrap());
    // The return was acknowledged, and that journaled: it is not offered again.
    assert_eq!(again.outbox(0, 10), vec![]);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_that_finds_its_partition_full_goes_back_and_its_id_stays_free() {
    let cluster = Cluster::start_with(Limits { open_packets_max: 1, ..Limits::default() }).await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    // Partition 1 has as many packets open as it may.
    p1.send_packet(lucky(packet_in(1, 1), sender_in(1), 5)).await.unwrap();
    let (sender, id) = (sender_in(0), packet_in(1, 500));
    p0.send_packet(lucky(id, sender, 5)).await.unwrap();
    let remittance = p0.remitted_packet(id).unwrap();
    assert_eq!(cluster.carry(0, 1, 10).await, 1);
    assert_eq!(p1.arrival(&remittance).await, Err(SendError::TooManyOpenPackets { max: 1 }));
    assert_eq!(p1.packet(id).await, Err(hongbao::EngineError::UnknownPacket));
    // Until its total is home, a retry is answered with what was sent, and debits nothing.
    assert!(p0.send_packet(lucky(id, sender, 5)).await.is_ok());
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(50), "a retry debits nothing");
    // Home, it is the sender's again, no longer counted against their day, and the send is
    // forgotten: a retry is a new send, which finds the partition full again.
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100));
    let usage = p0.usage(sender).await.unwrap();
    assert_eq!((usage.sent_today, usage.packets_today), (Amount::ZERO, 0));
    assert_eq!(p0.remitted_packet(id), Some(remittance));
    p0.send_packet(lucky(id, sender, 5)).await.unwrap();
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(50), "a new send");
    let again = p0.remitted_packet(id).unwrap();
    assert_eq!(cluster.relay(10).await, 2, "there and back");
    assert_eq!(p1.arrival(&again).await, Err(SendError::TooManyOpenPackets { max: 1 }));
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100));
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!((audit.in_flight, audit.escrow), (Amount::ZERO, Amount::yuan(50)));
    // Replayed, each partition holds the same: the returns were recorded, not decided again.
    for index in [0, 1] {
        let again = replayed(&cluster, index);
        assert_eq!(again.audit().await.unwrap(), cluster.engines[index as usize].audit().await.unwrap());
        assert_eq!(again.usage(sender).await.ok().map(|u| u.sent_today), (index == 0).then_some(Amount::ZERO));
        again.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_logs_read_one_after_another_reads_the_early_ones_further() {
    let cluster = Cluster::start().await;
    // Shares won in partition 0 by members whose wallets are elsewhere, then carried: the
    // receivers' logs apply remittances that partition 0's log numbered late in it.
    let packet = packet_in(0, 1);
    cluster.engines[0].send_packet(lucky(packet, sender_in(0), 60)).await.unwrap();
    let config = |index| config(index, &cluster.clock, Arc::new(MemoryJournal::new()));
    let early = cluster.journals[0].records().len();
    join_all((1..=MEMBERS).map(UserId).map(|u| cluster.engines[0].grab(packet, u))).await;
    assert!(cluster.relay(1000).await > 0);
    // Partition 0's log read before the grabs, the others after: no consistent cut.
    let records: Vec<Vec<hongbao::Record>> = (0..PARTITIONS).map(|i| cluster.journals[i as usize].records()).collect();
    let mut folds: Vec<hongbao::Folded> = (0..PARTITIONS).map(|i| hongbao::Folded::empty(&config(i))).collect();
    for (i, fold) in folds.iter_mut().enumerate() {
        let read = if i == 0 { &records[0][..early] } else { &records[i][..] };
        read.iter().for_each(|r| fold.apply(r).unwrap());
    }
    let audits = |folds: &[hongbao::Folded]| -> Vec<(u32, hongbao::Audit)> {
        (0..PARTITIONS).zip(folds).map(|(i, f)| (i, f.audit().unwrap().audit)).collect()
    };
    let torn = ClusterAudit::of(&audits(&folds));
    assert!(!torn.is_balanced(), "{torn:?}");
    assert!(torn.violations.iter().any(|v| v.contains("received") && v.contains("from 0")), "{torn:?}");
    assert_eq!(ClusterAudit::behind(&audits(&folds)), [0]);
    // Read further, partition 0's log covers what the others applied: balanced, nothing
    // named.
    records[0][early..].iter().for_each(|r| folds[0].apply(r).unwrap());
    assert_eq!(ClusterAudit::behind(&audits(&folds)), Vec::<u32>::new());
    let whole = ClusterAudit::of(&audits(&folds));
    assert!(whole.is_balanced(), "{whole:?}");
    assert_eq!(whole, cluster.audit().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_packet_refunded_across_partitions_lands_whole() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let (sender, id) = (sender_in(0), packet_in(1, 1));
    // 60 000 yuan: more than any share or transfer, as much as a packet may hold.
    p0.deposit(OpId(77_777), sender, Amount::yuan(60_000)).await.unwrap();
    let split = Split::Fixed { each: Amount::yuan(200), shares: 300 };
    let spec = NewPacket { id, sender, group: GROUP, split, greeting: String::new() };
    p0.send_packet(spec).await.unwrap();
    cluster.relay(10).await;
    let grabber = UserId(if sender == UserId(1) { 2 } else { 1 });
    p1.grab(id, grabber).await.unwrap();
    cluster.clock.advance(Duration::from_secs(86_400));
    p1.run_due().await.unwrap();
    // The refund of 59 800 yuan goes home in one remittance, and is applied there.
    cluster.relay(10).await;
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100 + 59_800));
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!((audit.in_flight, audit.escrow), (Amount::ZERO, Amount::ZERO));
}

/// Each of `sends` sent twice, all at once, each answer beside its send. Sent as tasks on the
/// runtime's workers, so that the wait runs apart from them.
async fn twice_at_once<S, T, Fut>(sends: &[S], send: impl Fn(S) -> Fut) -> Vec<(S, T)>
where
    S: Clone,
    T: Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let all = sends.iter().chain(sends).map(|spec| tokio::spawn(send(spec.clone())));
    let answers = tokio::time::timeout(Duration::from_secs(60), join_all(all)).await.expect("no send hangs");
    sends.iter().chain(sends).cloned().zip(answers.into_iter().map(Result::unwrap)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_across_partitions_all_open_once() {
    let cluster = Cluster::start().await;
    let p0 = &cluster.engines[0];
    // Every member at home in partition 0 sends two packets placed elsewhere, all at once
    // (and each twice: the second is a retry or waits for the first).
    let senders: Vec<UserId> = (1..=MEMBERS).map(UserId).filter(|&u| partition(0).holds_user(u)).collect();
    let mut ids = (1..).map(PacketId).filter(|&p| partition(0).of_packet(p) != 0);
    let sends: Vec<NewPacket> = senders
        .iter()
        .flat_map(|&s| [lucky(ids.next().unwrap(), s, 3), lucky(ids.next().unwrap(), s, 3)])
        .map(|spec| NewPacket { split: Split::lucky(Amount::yuan(10), 3), ..spec })
        .collect();
    let send = |spec| {
        let p0 = p0.clone();
        async move { p0.send_packet(spec).await }
    };
    for (spec, answer) in twice_at_once(&sends, send).await {
        match answer {
            Ok(view) => assert_eq!(view.id, spec.id),
            Err(SendError::Busy) => {} // the first of the two was still being debited
            Err(e) => panic!("{spec:?}: {e}"),
        }
    }
    for s in &senders {
        assert_eq!(p0.balance(*s).await.unwrap(), Amount::yuan(80), "{s}: two packets, debited once each");
    }
    cluster.relay(1000).await;
    for spec in &sends {
        let r = p0.remitted_packet(spec.id).unwrap();
        assert_eq!(cluster.packets(spec.id).arrival(&r).await.unwrap().id, spec.id);
    }
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!((audit.in_flight, audit.escrow), (Amount::ZERO, Amount::yuan(10 * sends.len() as u64)));
}

fn delayed(id: TransferId, from: UserId, to: UserId, yuan: u64) -> NewTransfer {
    let arrival = hongbao::Arrival::Delayed { secs: 7_200 };
    NewTransfer { id, amount: Amount::yuan(yuan), arrival, note: "远方".into(), ..spec_of(from, to) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_sent_from_another_partition_is_held_in_its_own_and_settles_home() {
    let cluster = Cluster::start().await;
    let (p0, p1, p2) = (&cluster.engines[0], &cluster.engines[1], &cluster.engines[2]);
    // Sender in partition 0, transfer placed in 1, receiver in 2.
    let (from, to, id) = (sender_in(0), sender_in(2), transfer_in(1, 1));
    let spec = delayed(id, from, to, 30);
    let sent = p0.transfer(spec.clone()).await.unwrap();
    assert!(matches!(sent.status, hongbao::TransferStatus::InTransit { .. }), "{sent:?}");
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(70));
    // A retry is the same send; other fields under the id conflict; nothing more is debited.
    assert_eq!(p0.transfer(spec.clone()).await.unwrap(), sent);
    let other = NewTransfer { note: "另一笔".into(), ..spec.clone() };
    assert_eq!(p0.transfer(other).await, Err(TransferError::IdConflict { transfer: id }));
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(70));
    let remittance = p0.remitted_transfer(id).expect("its send is durable");
    assert_eq!((remittance.to, remittance.user, remittance.amount), (1, from, Amount::yuan(30)));
    assert_eq!(remittance.transfer.as_deref().map(|t| &t.spec), Some(&spec));
    let travelling = cluster.audit().await;
    assert!(travelling.is_balanced(), "{travelling:?}");
    assert_eq!((travelling.in_flight, travelling.pending), (Amount::yuan(30), Amount::ZERO));
    assert_eq!(p1.transfer_view(id).await, Err(TransferError::UnknownTransfer), "not there before it arrives");
    // Carried, it is held where its id places it, as it was sent.
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p1.transfer_arrival(&remittance).await.unwrap(), sent);
    assert_eq!(p1.transfer_view(id).await.unwrap(), sent);
    let held = cluster.audit().await;
    assert!(held.is_balanced(), "{held:?}");
    assert_eq!((held.in_flight, held.pending), (Amount::ZERO, Amount::yuan(30)));
    // Its id is taken there now: a send of the id by a member of that partition conflicts.
    let local = NewTransfer { from: sender_in(1), ..spec.clone() };
    assert_eq!(p1.transfer(local).await, Err(TransferError::IdConflict { transfer: id }));
    // Its sender recalls it in its partition; the money goes home as a remittance.
    let recalled = p1.recall_transfer(id, from).await.unwrap();
    assert_eq!(recalled.status, hongbao::TransferStatus::Recalled);
    let refund = recalled.remitted.expect("the sender's wallet is elsewhere");
    assert_eq!((refund.to, refund.user, refund.amount), (0, from, Amount::yuan(30)));
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(100));
    // One accepted by its receiver in a third partition, one left to return at its deadline.
    let (accepted, returned) = (transfer_in(1, id.0 + 1), transfer_in(1, transfer_in(1, id.0 + 1).0 + 1));
    let instant = |id, yuan| NewTransfer { id, amount: Amount::yuan(yuan), ..spec_of(from, to) };
    p0.transfer(instant(accepted, 20)).await.unwrap();
    p0.transfer(instant(returned, 5)).await.unwrap();
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(75));
    assert_eq!(cluster.relay(10).await, 2);
    let credit = p1.accept_transfer(accepted, to).await.unwrap().remitted.expect("the receiver is elsewhere");
    assert_eq!((credit.to, credit.user), (2, to));
    cluster.relay(10).await;
    p2.await_remittance(&credit).await.unwrap();
    assert_eq!(p2.balance(to).await.unwrap(), Amount::yuan(120));
    cluster.clock.advance(Duration::from_secs(Limits::default().transfer_accept_secs + 1));
    p1.run_due().await.unwrap();
    assert_eq!(p1.transfer_view(returned).await.unwrap().status, hongbao::TransferStatus::Returned);
    cluster.relay(10).await;
    assert_eq!(p0.balance(from).await.unwrap(), Amount::yuan(80));
    let settled = cluster.audit().await;
    assert!(settled.is_balanced(), "{settled:?}");
    assert_eq!((settled.in_flight, settled.pending), (Amount::ZERO, Amount::ZERO));
    // New owners hold the same: the sender's partition still answers a retry (debiting
    // nothing), the transfer's holds it as it settled.
    let (home_again, theirs_again) = (replayed(&cluster, 0), replayed(&cluster, 1));
    assert_eq!(home_again.transfer(spec).await.unwrap(), sent);
    assert_eq!(home_again.audit().await.unwrap(), p0.audit().await.unwrap());
    assert_eq!(theirs_again.transfer_view(id).await.unwrap(), p1.transfer_view(id).await.unwrap());
    assert_eq!(theirs_again.audit().await.unwrap(), p1.audit().await.unwrap());
    home_again.shutdown().await;
    theirs_again.shutdown().await;
    // Past the retention of a settled transfer (after its latest deadline, for the sender's
    // partition), both forget them, and a new owner replays the retirement.
    let latest = 7_200 + Limits::default().transfer_accept_secs;
    cluster.clock.advance(Duration::from_secs(latest + Limits::default().settled_transfer_retention_secs + 1));
    p0.retire_due().await.unwrap();
    p1.retire_due().await.unwrap();
    for t in [id, accepted, returned] {
        assert_eq!(p0.remitted_transfer(t), None, "{t}");
        assert_eq!(p1.transfer_view(t).await, Err(TransferError::UnknownTransfer), "{t}");
    }
    let home_again = replayed(&cluster, 0);
    assert_eq!(home_again.remitted_transfer(id), None);
    assert_eq!(home_again.audit().await.unwrap(), p0.audit().await.unwrap());
    home_again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_id_is_taken_in_its_partition_goes_back_to_its_sender() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let id = transfer_in(1, 1);
    // The id is taken in its partition by a member whose wallet is there.
    let first = p1.transfer(delayed(id, sender_in(1), sender_in(2), 10)).await.unwrap();
    let sender = sender_in(0);
    p0.transfer(delayed(id, sender, sender_in(2), 30)).await.unwrap();
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(70));
    let remittance = p0.remitted_transfer(id).unwrap();
    assert_eq!(cluster.carry(0, 1, 10).await, 1);
    assert_eq!(p1.transfer_arrival(&remittance).await, Err(TransferError::IdConflict { transfer: id }));
    assert_eq!(p1.transfer_view(id).await.unwrap(), first, "the transfer that had the id is untouched");
    let returning = cluster.audit().await;
    assert!(returning.is_balanced(), "{returning:?}");
    assert_eq!(returning.in_flight, Amount::yuan(30), "the amount is on its way back");
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100));
    assert_eq!(p0.remitted_transfer(id), Some(remittance.clone()), "it came back, and names how it went");
    assert_eq!(p0.usage(sender).await.unwrap().sent_today, Amount::ZERO);
    // A new owner from a snapshot knows it came back too: a retry there is a new send.
    let mut records = cluster.journals[0].records();
    let home = config(0, &cluster.clock, Arc::new(MemoryJournal::new()));
    let mut folded = hongbao::Folded::empty(&home);
    records.iter().for_each(|r| folded.apply(r).unwrap());
    let mark = hongbao::LogMark { position: 0, hash: [0; 32] };
    let (state, _) = hongbao::Folded::restore(&home, &folded.snapshot(&mark)).unwrap();
    let restored = Engine::start(home.clone().with_journal_state(Arc::new(MemoryJournal::new()), state)).unwrap();
    assert_eq!(restored.remitted_transfer(id), Some(remittance.clone()));
    restored.transfer(delayed(id, sender, sender_in(2), 30)).await.unwrap();
    assert_eq!(restored.balance(sender).await.unwrap(), Amount::yuan(70), "a new send");
    restored.shutdown().await;
    // A retirement that lists an id no longer held changes nothing, and replays (a journal
    // from before sweeps chose sends under the outbox's lock may hold one).
    records.push(hongbao::Record::Retired { packets: vec![], ops: vec![], transfers: vec![id] });
    let mut folded = hongbao::Folded::empty(&config(0, &cluster.clock, Arc::new(MemoryJournal::new())));
    records.iter().for_each(|r| folded.apply(r).unwrap());
    let back = cluster.audit().await;
    assert!(back.is_balanced(), "{back:?}");
    assert_eq!((back.in_flight, back.pending), (Amount::ZERO, Amount::yuan(10)));
    // Replayed, the return is what was recorded, not decided again.
    let again = replayed(&cluster, 1);
    assert_eq!(again.audit().await.unwrap(), p1.audit().await.unwrap());
    assert_eq!(again.transfer_view(id).await.unwrap(), first);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_that_finds_its_partition_full_goes_back_and_its_id_stays_free() {
    let cluster = Cluster::start_with(Limits { pending_transfers_max: 1, ..Limits::default() }).await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    // Partition 1 has as many transfers pending as it may.
    p1.transfer(delayed(transfer_in(1, 1), sender_in(1), sender_in(2), 10)).await.unwrap();
    let (sender, id) = (sender_in(0), transfer_in(1, 500));
    p0.transfer(delayed(id, sender, sender_in(2), 30)).await.unwrap();
    let remittance = p0.remitted_transfer(id).unwrap();
    assert_eq!(cluster.carry(0, 1, 10).await, 1);
    assert_eq!(p1.transfer_arrival(&remittance).await, Err(TransferError::TooManyPending { max: 1 }));
    assert_eq!(p1.transfer_view(id).await, Err(TransferError::UnknownTransfer));
    // Until its amount is home, a retry is answered with what was sent, and debits nothing.
    let spec = delayed(id, sender, sender_in(2), 30);
    assert!(p0.transfer(spec.clone()).await.is_ok());
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(70), "a retry debits nothing");
    // Home, it is the sender's again, and a retry is a new send: once the partition has room,
    // it is held there.
    assert_eq!(cluster.relay(10).await, 1);
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(100));
    assert_eq!(p0.usage(sender).await.unwrap().sent_today, Amount::ZERO);
    assert_eq!(p1.recall_transfer(transfer_in(1, 1), sender_in(1)).await.unwrap().remitted, None);
    let sent = p0.transfer(spec).await.unwrap();
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(70));
    cluster.relay(10).await;
    assert_eq!(p1.transfer_arrival(&p0.remitted_transfer(id).unwrap()).await.unwrap(), sent);
    // Its id and pending place were given back with the first return: a member of that
    // partition can take neither now.
    let local = delayed(id, sender_in(1), sender_in(2), 1);
    assert_eq!(p1.transfer(local).await, Err(TransferError::IdConflict { transfer: id }));
    let other = delayed(transfer_in(1, id.0 + 1), sender_in(1), sender_in(2), 1);
    assert_eq!(p1.transfer(other).await, Err(TransferError::TooManyPending { max: 1 }));
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    assert_eq!((audit.in_flight, audit.pending), (Amount::ZERO, Amount::yuan(30)));
    for index in [0, 1] {
        let again = replayed(&cluster, index);
        assert_eq!(again.audit().await.unwrap(), cluster.engines[index as usize].audit().await.unwrap());
        again.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_across_partitions_are_each_held_once() {
    let cluster = Cluster::start().await;
    let p0 = &cluster.engines[0];
    // Every member at home in partition 0 sends two transfers placed elsewhere, each twice,
    // all at once; then, while they are carried, a member of partition 1 sends transfers of
    // its own under some of their ids.
    let senders: Vec<UserId> = (1..=MEMBERS).map(UserId).filter(|&u| partition(0).holds_user(u)).collect();
    let mut ids = (1..).map(TransferId).filter(|&t| partition(0).of_transfer(t) != 0);
    let to = sender_in(2);
    let sends: Vec<NewTransfer> = senders
        .iter()
        .flat_map(|&s| [delayed(ids.next().unwrap(), s, to, 10), delayed(ids.next().unwrap(), s, to, 10)])
        .collect();
    let send = |spec| {
        let p0 = p0.clone();
        async move { p0.transfer(spec).await }
    };
    for (spec, answer) in twice_at_once(&sends, send).await {
        match answer {
            Ok(view) => assert_eq!(view.id, spec.id),
            Err(TransferError::Busy) => {} // the first of the two was still being debited
            Err(e) => panic!("{spec:?}: {e}"),
        }
    }
    for s in &senders {
        assert_eq!(p0.balance(*s).await.unwrap(), Amount::yuan(80), "{s}: two transfers, debited once each");
    }
    let contested: Vec<TransferId> =
        sends.iter().map(|s| s.id).filter(|&t| partition(0).of_transfer(t) == 1).take(8).collect();
    // (A send that goes back is forgotten once home.)
    let remitted: HashMap<TransferId, Remittance> =
        sends.iter().map(|s| (s.id, p0.remitted_transfer(s.id).unwrap())).collect();
    let locals = contested.iter().map(|&id| {
        let p1 = cluster.engines[1].clone();
        tokio::spawn(async move { p1.transfer(delayed(id, sender_in(1), sender_in(0), 1)).await })
    });
    let (_, locals) = futures::join!(cluster.relay(1000), join_all(locals));
    // Each contested id is held once: the local send's, and the arrival went back; or the
    // arrival's, and the local send was refused.
    let mut local_won = 0;
    for (id, local) in contested.iter().zip(locals) {
        let r = &remitted[id];
        match (local.unwrap(), cluster.engines[1].transfer_arrival(r).await) {
            (Ok(_), Err(TransferError::IdConflict { .. })) => local_won += 1,
            (Err(TransferError::Busy | TransferError::IdConflict { .. }), Ok(view)) => assert_eq!(view.from, r.user),
            other => panic!("{id}: {other:?}"),
        }
    }
    for spec in sends.iter().filter(|s| !contested.contains(&s.id)) {
        let holder = &cluster.engines[partition(0).of_transfer(spec.id) as usize];
        assert_eq!(holder.transfer_arrival(&remitted[&spec.id]).await.unwrap().id, spec.id);
    }
    // What went back lands home.
    cluster.relay(1000).await;
    let audit = cluster.audit().await;
    assert!(audit.is_balanced(), "{audit:?}");
    let held = 10 * (sends.len() as u64 - local_won) + local_won;
    assert_eq!((audit.in_flight, audit.pending), (Amount::ZERO, Amount::yuan(held)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_transfer_is_logged_where_it_is_held_live_as_on_replay() {
    let cluster = Cluster::start().await;
    let (p0, p1) = (&cluster.engines[0], &cluster.engines[1]);
    let (org, admin) = (hongbao::OrgId(5), sender_in(2));
    // Orgs are kept by every partition.
    for engine in &cluster.engines {
        engine.create_org(org, hongbao::NewOrg { admins: vec![admin], name: "Acme".into() }).await.unwrap();
        engine.attach_group(org, GROUP, admin).await.unwrap();
    }
    let (from, to, id) = (sender_in(0), sender_in(2), transfer_in(1, 1));
    let spec = NewTransfer { org: Some(org), ..delayed(id, from, to, 30) };
    p0.transfer(spec).await.unwrap();
    cluster.relay(10).await;
    cluster.clock.advance(Duration::from_secs(7_200));
    p1.run_due().await.unwrap();
    p1.accept_transfer(id, to).await.unwrap();
    let kinds = |page: hongbao::OpPage| page.entries.iter().map(|e| (e.kind, e.transfer)).collect::<Vec<_>>();
    let logged = kinds(p1.operations(org, hongbao::OpQuery::default()).await.unwrap());
    let transfer = |kind| (kind, Some(id));
    let expected = [transfer(hongbao::OpKind::TransferSent), transfer(hongbao::OpKind::TransferAccepted)];
    assert_eq!(logged[2..], expected, "{logged:?}");
    // Not in the sender's partition: it is logged where it is held.
    assert_eq!(kinds(p0.operations(org, hongbao::OpQuery::default()).await.unwrap()).len(), 2);
    let again = replayed(&cluster, 1);
    assert_eq!(kinds(again.operations(org, hongbao::OpQuery::default()).await.unwrap()), logged);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_still_on_its_way_is_kept_past_its_retention() {
    let cluster = Cluster::start().await;
    let p0 = &cluster.engines[0];
    let (sender, id) = (sender_in(0), transfer_in(1, 1));
    let spec = delayed(id, sender, sender_in(2), 30);
    let sent = p0.transfer(spec.clone()).await.unwrap();
    // Not carried for longer than a settled transfer's retention: the sender's partition keeps
    // it, so a retry still debits nothing.
    cluster.clock.advance(Duration::from_secs(Limits::default().settled_transfer_retention_secs + 1));
    p0.retire_due().await.unwrap();
    assert!(p0.remitted_transfer(id).is_some());
    assert_eq!(p0.transfer(spec).await.unwrap(), sent);
    assert_eq!(p0.balance(sender).await.unwrap(), Amount::yuan(70));
    // Once carried (and acknowledged), it is retired.
    assert_eq!(cluster.relay(10).await, 1);
    p0.retire_due().await.unwrap();
    assert_eq!(p0.remitted_transfer(id), None);
    let again = replayed(&cluster, 0);
    assert_eq!(again.remitted_transfer(id), None);
    assert_eq!(again.audit().await.unwrap(), p0.audit().await.unwrap());
    again.shutdown().await;
}
