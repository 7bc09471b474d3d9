//! Remittances between partitions, exactly once, and the live outbox.
//!
//! The remittances from one partition to another are numbered 1, 2, 3, … in the order of the
//! sending partition's journal: the number is taken under the same lock as the claim's append
//! ([`Outbox::append_crediting`]), and replay numbers the claims it meets in the same order, so a
//! restarted or new owner of the partition gives every remittance the number it had. The
//! receiving partition records each one it applies ([`Record::Received`]) and keeps, per
//! sender, the highest number applied: a number at or below it is a repeat and changes
//! nothing, the next one is applied, and one past it is refused as a gap. A remittance leaves
//! the outbox only when it is acknowledged: safe beyond this partition (applied by the
//! receiver, or stored durably on its way).
//!
//! Each partition counts what it sent and received, per peer: its own equation is
//! `wallets + escrow + pending + sent = deposits − withdrawals + received`, and over the
//! cluster the sent and received sums cancel except for the remittances still in flight,
//! which [`crate::ClusterAudit`] counts per pair.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::journal::{Completion, Journal};
use crate::ledger::{Credit, Outgoing};
use crate::money::{Amount, PacketId, TransferId, UserId};
use crate::partition::{check, Flow, Partition, RemittanceError, ACKNOWLEDGED_RECORD_EVERY, REMITTANCES_HELD_MAX};
use crate::record::{decode_prefixed, encode_prefixed, PacketSent, Remittance, ReturnReason, TransferSent};
use crate::record::{put_u64s, DecodeError, Reader, Record, RETIRED_IDS_MAX};

/// What a partition sent to and received from the others, as its journal tells: part of the
/// state, folded the same way live and on replay.
#[derive(Clone, Debug, Default)]
pub(crate) struct Remittances {
    pub(crate) partition: Partition,
    /// By receiver.
    sent: BTreeMap<u32, Flow>,
    /// By sender.
    received: BTreeMap<u32, Flow>,
    /// Sent, durable, and not yet acknowledged by the receiver, by receiver.
    unacknowledged: BTreeMap<u32, VecDeque<Remittance>>,
    /// Live only: credits decided (their room in the outbox taken) and not yet numbered, by
    /// receiver.
    reserved: BTreeMap<u32, u64>,
    /// Packets and transfers sent from here to be held elsewhere, with the remittance that
    /// carries each and, once it came back, why: a retry of the send is answered from it (or,
    /// once it came back, is a new send). Kept until retired, a retention after the send.
    dispatched: BTreeMap<SendId, (Remittance, Option<ReturnReason>)>,
}

/// Whether two remittances carry the same send.
fn same_send(a: &Remittance, b: &Remittance) -> bool {
    a.packet == b.packet && a.transfer == b.transfer
}

/// A packet or a transfer sent from one partition to be held in another: the key of the sends
/// a partition dispatched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum SendId {
    Packet(PacketId),
    Transfer(TransferId),
}

impl SendId {
    /// The send a record remits, if it remits one.
    pub(crate) fn remitted(record: &Record) -> Option<SendId> {
        match record {
            Record::PacketRemitted(sent) => Some(SendId::Packet(sent.spec.id)),
            Record::TransferRemitted(sent) => Some(SendId::Transfer(sent.spec.id)),
            _ => None,
        }
    }

    /// The send a remittance carries, if it carries one.
    pub(crate) fn carried(r: &Remittance) -> Option<SendId> {
        match (&r.packet, &r.transfer) {
            (Some(sent), _) => Some(SendId::Packet(sent.spec.id)),
            (None, Some(sent)) => Some(SendId::Transfer(sent.spec.id)),
            (None, None) => None,
        }
    }

    /// Every one of `packets`, then of `transfers`.
    pub(crate) fn all<'a>(packets: &'a [PacketId], transfers: &'a [TransferId]) -> impl Iterator<Item = SendId> + 'a {
        packets.iter().map(|&p| SendId::Packet(p)).chain(transfers.iter().map(|&t| SendId::Transfer(t)))
    }

    /// The partition it is held in.
    pub(crate) fn placed(self, partition: Partition) -> u32 {
        match self {
            SendId::Packet(id) => partition.of_packet(id),
            SendId::Transfer(id) => partition.of_transfer(id),
        }
    }
}

impl Remittances {
    pub(crate) fn new(partition: Partition) -> Remittances {
        Remittances { partition, ..Remittances::default() }
    }

    /// Numbers the next remittance to `to` and counts it as sent: of `credit` (a wallet
    /// elsewhere, or a send's sender and amount).
    fn number(&mut self, to: u32, credit: Credit) -> Remittance {
        let flow = self.sent.entry(to).or_insert(Flow { peer: to, ..Flow::default() });
        flow.count += 1;
        // A sum in fen that passes u64 (1.8 × 10^17 yuan) is out of reach of any real traffic.
        flow.amount = flow.amount.checked_add(credit.amount).expect("the sum of remittances fits u64 fen");
        Remittance::credit(self.partition.index(), to, flow.count, credit.user, credit.amount)
    }

    /// Numbers the remittance of `credit`, to its wallet's partition.
    fn number_credit(&mut self, credit: Credit) -> Remittance {
        self.number(self.partition.of_user(credit.user), credit)
    }

    /// Numbers the remittance that carries the send `record` remits (a packet or a transfer)
    /// to the partition of its id.
    fn number_send(&mut self, record: &Record) -> Result<(SendId, Remittance), String> {
        let id = SendId::remitted(record).ok_or("only a send is remitted")?;
        let to = id.placed(self.partition);
        if to == self.partition.index() {
            return Err(format!("{id:?} remitted to its own partition"));
        }
        let remittance = match record {
            Record::PacketRemitted(sent) => {
                let amount = sent.spec.split.total().ok_or(format!("{id:?}: total overflows"))?;
                let mut r = self.number(to, Credit { user: sent.spec.sender, amount });
                r.packet = Some(Box::new(sent.clone()));
                r
            }
            Record::TransferRemitted(sent) => {
                let mut r = self.number(to, Credit { user: sent.spec.from, amount: sent.spec.amount });
                r.transfer = Some(Box::new(sent.clone()));
                r
            }
            _ => unreachable!("a remitted send"),
        };
        Ok((id, remittance))
    }

    /// Numbers the remittance that takes a send `r` carried here back to its sender's
    /// partition, for `reason`: the same send, its amount theirs again.
    fn number_return(&mut self, r: &Remittance, reason: ReturnReason) -> Remittance {
        let back = self.number(r.from, Credit { user: r.user, amount: r.amount });
        Remittance { packet: r.packet.clone(), transfer: r.transfer.clone(), returned: Some(reason), ..back }
    }

    /// Replay's half of a [`Record::Returned`]: the send goes back, waiting for its sender's
    /// partition's acknowledgement.
    pub(crate) fn replayed_return(&mut self, r: &Remittance, reason: ReturnReason) {
        let back = self.number_return(r, reason);
        self.hold(back);
    }

    /// Replay's half of a send from here that came back (`r`, its return): a retry of it is a
    /// new send. A return of a send no longer held (retired, or sent again since) changes
    /// nothing here.
    pub(crate) fn came_back(&mut self, r: &Remittance) {
        let Some(id) = SendId::carried(r) else { return };
        if let Some((sent, back @ None)) = self.dispatched.get_mut(&id) {
            if same_send(sent, r) {
                *back = r.returned;
            }
        }
    }

    /// Replay's half of [`Outbox::append_crediting`]: a durable credit of a wallet elsewhere,
    /// waiting for its receiver's acknowledgement.
    pub(crate) fn replayed(&mut self, credit: Credit) {
        let remittance = self.number_credit(credit);
        self.hold(remittance);
    }

    /// Replay's half of [`Outbox::append_remitting`]: a packet or transfer sent from here (the
    /// send `record` remits), on its way to the partition of its id.
    ///
    /// # Errors
    ///
    /// If it is placed here, or was sent from here already.
    pub(crate) fn replayed_send(&mut self, record: &Record) -> Result<(), String> {
        if let Some(id) = SendId::remitted(record).filter(|&id| self.awaits(id)) {
            return Err(format!("{id:?} remitted twice"));
        }
        let (id, remittance) = self.number_send(record)?;
        self.dispatched.insert(id, (remittance.clone(), None));
        self.hold(remittance);
        Ok(())
    }

    /// Holds a durable remittance until it is acknowledged.
    fn hold(&mut self, remittance: Remittance) {
        queue_up(&mut self.unacknowledged, remittance);
    }

    /// Replay's half of [`Outbox::acknowledge`]: the remittances to `to` up to `through` were
    /// acknowledged, and leave the outbox.
    ///
    /// # Errors
    ///
    /// If `through` passes the remittances numbered to `to`.
    pub(crate) fn acknowledged(&mut self, to: u32, through: u64) -> Result<(), String> {
        if through > self.sent_to(to) {
            return Err(format!("remittances to {to} acknowledged up to {through}, past those sent"));
        }
        if let Some(queue) = self.unacknowledged.get_mut(&to) {
            drop_through(queue, through);
        }
        Ok(())
    }

    /// Whether a packet or transfer was sent from here to be held elsewhere, and did not come
    /// back (nor was retired).
    pub(crate) fn awaits(&self, id: SendId) -> bool {
        matches!(self.dispatched.get(&id), Some((_, None)))
    }

    /// Forgets retired packets and transfers sent from here.
    pub(crate) fn retire(&mut self, packets: &[PacketId], transfers: &[TransferId]) {
        SendId::all(packets, transfers).for_each(|id| drop(self.dispatched.remove(&id)));
    }

    /// Gives back one place reserved for a remittance to `to` (numbered or abandoned).
    fn unreserve(&mut self, to: u32) {
        if let Some(reserved) = self.reserved.get_mut(&to) {
            *reserved = reserved.saturating_sub(1);
        }
    }

    /// Remittances numbered to `to` so far.
    fn sent_to(&self, to: u32) -> u64 {
        self.sent.get(&to).map_or(0, |f| f.count)
    }

    /// Whether `remittance` is fresh here (the next from its sender), a repeat, or refused.
    pub(crate) fn check(&self, r: &Remittance) -> Result<bool, RemittanceError> {
        check(self.partition, r, self.received_from(r.from))
    }

    /// Applies a received remittance: counts it, and says whether it is fresh (its credit
    /// lands) or a repeat (nothing changes).
    ///
    /// # Errors
    ///
    /// A misrouted remittance or a gap; nothing changes then.
    pub(crate) fn receive(&mut self, r: &Remittance) -> Result<bool, RemittanceError> {
        if !self.receivable(r)? {
            return Ok(false);
        }
        let flow = self.received.entry(r.from).or_insert(Flow { peer: r.from, ..Flow::default() });
        let amount = flow.amount.checked_add(r.amount).expect("checked");
        *flow = Flow { peer: r.from, count: r.seq, amount };
        Ok(true)
    }

    /// What [`Remittances::receive`] would answer, changing nothing.
    pub(crate) fn receivable(&self, r: &Remittance) -> Result<bool, RemittanceError> {
        if !self.check(r)? {
            return Ok(false);
        }
        let received = self.received.get(&r.from).map(|f| f.amount).unwrap_or_default();
        received.checked_add(r.amount).ok_or(RemittanceError::InvalidAmount { amount: r.amount })?;
        Ok(true)
    }

    /// The highest number applied from `from`.
    pub(crate) fn received_from(&self, from: u32) -> u64 {
        self.received.get(&from).map_or(0, |f| f.count)
    }

    fn sums(flows: &BTreeMap<u32, Flow>) -> u128 {
        flows.values().map(|f| u128::from(f.amount.as_fen())).sum()
    }

    /// Sent and received, in fen.
    pub(crate) fn totals(&self) -> (u128, u128) {
        (Remittances::sums(&self.sent), Remittances::sums(&self.received))
    }

    /// Every flow out and in.
    pub(crate) fn flows(&self) -> (Vec<Flow>, Vec<Flow>) {
        (self.sent.values().copied().collect(), self.received.values().copied().collect())
    }

    /// Appends the snapshot encoding (version 6; 5 is the same layout): the partition, the flows out and in, the
    /// remittances not yet acknowledged and the packets and transfers sent from here to be held
    /// elsewhere (each remittance in its record's encoding; one that came back with its
    /// `returned` set to why). Reservations are live only.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let p = self.partition;
        put_u64s(out, &[u64::from(p.index()), u64::from(p.count())]);
        for flows in [&self.sent, &self.received] {
            put_u64s(out, &[flows.len() as u64]);
            flows.values().for_each(|f| put_u64s(out, &[u64::from(f.peer), f.count, f.amount.as_fen()]));
        }
        let dispatched = self.dispatched.values().map(|(r, back)| Remittance { returned: *back, ..r.clone() });
        for remittances in [self.unacknowledged.values().flatten().cloned().collect::<Vec<_>>(), dispatched.collect()] {
            put_u64s(out, &[remittances.len() as u64]);
            remittances.into_iter().for_each(|r| encode_prefixed(&Record::Received(r), out));
        }
    }

    /// Reads what [`Remittances::encode`] wrote (or version 4, whose remittances were numbers
    /// and credits only), into the remittances of `self.partition`.
    ///
    /// # Errors
    ///
    /// If the bytes are damaged or describe another partition.
    pub(crate) fn decode(&self, r: &mut Reader<'_>, version: u8) -> Result<Remittances, DecodeError> {
        let (index, count) = (r.u64()?, r.u64()?);
        let me = self.partition;
        if (index, count) != (u64::from(me.index()), u64::from(me.count())) {
            return Err(DecodeError::Damaged("a snapshot of another partition"));
        }
        let mut decoded = Remittances::new(me);
        for flows in [&mut decoded.sent, &mut decoded.received] {
            for _ in 0..r.count(24)? {
                let peer = u32::try_from(r.u64()?).map_err(|_| DecodeError::Damaged("a snapshot's peer"))?;
                let (count, amount) = (r.u64()?, Amount::fen(r.u64()?));
                flows.insert(peer, Flow { peer, count, amount });
            }
        }
        if version == 4 {
            for _ in 0..r.count(32)? {
                let (seq, to) = (r.u64()?, r.u64()?);
                let to = u32::try_from(to).map_err(|_| DecodeError::Damaged("a snapshot's remittance"))?;
                let (user, amount) = (UserId(r.u64()?), Amount::fen(r.u64()?));
                let remittance = Remittance::credit(me.index(), to, seq, user, amount);
                queue_up(&mut decoded.unacknowledged, remittance);
            }
            return Ok(decoded);
        }
        let remittance = |r: &mut Reader<'_>| match decode_prefixed(r)? {
            Record::Received(remittance) if remittance.from == me.index() => Ok(remittance),
            _ => Err(DecodeError::Damaged("a snapshot's remittance")),
        };
        for _ in 0..r.count(8)? {
            let remittance = remittance(r)?;
            queue_up(&mut decoded.unacknowledged, remittance);
        }
        for _ in 0..r.count(8)? {
            let remittance = remittance(r)?;
            let id = SendId::carried(&remittance).ok_or(DecodeError::Damaged("a snapshot's send held elsewhere"))?;
            let back = remittance.returned;
            decoded.dispatched.insert(id, (Remittance { returned: None, ..remittance }, back));
        }
        Ok(decoded)
    }
}

/// Queues a durable remittance to wait for its receiver's acknowledgement.
fn queue_up(queues: &mut BTreeMap<u32, VecDeque<Remittance>>, remittance: Remittance) {
    queues.entry(remittance.to).or_default().push_back(remittance);
}

/// Takes the remittances numbered up to `through` out of their queue.
fn drop_through(queue: &mut VecDeque<Remittance>, through: u64) {
    while queue.front().is_some_and(|r| r.seq <= through) {
        queue.pop_front();
    }
}

/// A packet or transfer sent from here to be held in another partition, as a retry of its
/// send finds it.
#[derive(Clone, Debug)]
pub(crate) enum Dispatch {
    /// Its sender's debit is being decided; in place of the send of the same id that came
    /// back, if one did (it stands again if this one is refused).
    Debiting(Option<(Remittance, ReturnReason)>),
    /// Debited, durably: the remittance that carries it.
    Remitted(Remittance),
    /// It came back, for this reason, and its amount is its sender's again: a retry of it is a
    /// new send.
    CameBack(Remittance, ReturnReason),
}

impl Dispatch {
    /// Whether a retry of the send is answered from it (it did not come back).
    pub(crate) fn stands(&self) -> bool {
        !matches!(self, Dispatch::CameBack(..))
    }
}

/// What taking room for a packet sent from here found.
pub(crate) enum DispatchRoom {
    /// Room is taken for it: debit, then [`Outbox::append_remitting`] or
    /// [`Outbox::abandon_dispatch`].
    Reserved,
    /// The id was sent from here already (or is being sent).
    Taken(Dispatch),
    /// [`REMITTANCES_HELD_MAX`] remittances to its partition wait for acknowledgement.
    Full,
}

/// What lands once a received remittance is durable here.
pub(crate) enum Landing {
    /// A credit of a wallet here.
    Credit(Credit),
    /// A packet whose id is here, its route reserved: it opens.
    Opened(PacketSent),
    /// A transfer whose id is here, its id and pending place reserved: it is held here.
    Arrived(TransferSent),
    /// A send from here that went back: its amount is its sender's again.
    Returned(Outgoing),
}

/// The live side of [`Remittances`]: claims crediting a wallet elsewhere are appended through
/// it, so that their numbers follow the journal's order, and it holds what waits for
/// acknowledgement.
pub(crate) struct Outbox {
    partition: Partition,
    /// The counts; held across a claim's append.
    state: Mutex<Remittances>,
    /// Durable remittances waiting for acknowledgement, by receiver (locked apart from the
    /// counts: an in-memory journal makes a claim durable inside its append).
    held: Mutex<BTreeMap<u32, VecDeque<Remittance>>>,
    /// The highest number each receiver acknowledged (after a restart: the last one before
    /// those held).
    acknowledged: Mutex<BTreeMap<u32, u64>>,
    /// The highest number from each sender whose remittance is durable here and credited.
    applied: Mutex<BTreeMap<u32, u64>>,
    /// Rung when a remittance is durable here, for those awaiting one.
    rung: tokio::sync::watch::Sender<u64>,
    /// Packets and transfers sent from here to be held elsewhere (standing, or come back),
    /// and those being debited. Never locked while `state` is wanted (an append's completion
    /// takes it under `state`).
    dispatched: Mutex<HashMap<SendId, Dispatch>>,
    /// The highest acknowledgement to each receiver journaled.
    journaled: Mutex<BTreeMap<u32, u64>>,
}

impl Outbox {
    pub(crate) fn new(mut state: Remittances) -> Outbox {
        let held = std::mem::take(&mut state.unacknowledged);
        let acknowledged: BTreeMap<u32, u64> = state
            .sent
            .keys()
            .map(|&to| (to, held.get(&to).and_then(|q| q.front()).map_or(state.sent_to(to), |r| r.seq - 1)))
            .collect();
        let (held, acknowledged) = (Mutex::new(held), Mutex::new(acknowledged));
        let partition = state.partition;
        let applied = Mutex::new(state.received.iter().map(|(&from, flow)| (from, flow.count)).collect());
        let rung = tokio::sync::watch::channel(0).0;
        let dispatched = std::mem::take(&mut state.dispatched).into_iter().map(|(id, (r, back))| {
            (id, back.map_or_else(|| Dispatch::Remitted(r.clone()), |reason| Dispatch::CameBack(r.clone(), reason)))
        });
        let dispatched = Mutex::new(dispatched.collect());
        let journaled = Mutex::new(acknowledged.lock().clone());
        Outbox { partition, state: Mutex::new(state), held, acknowledged, applied, rung, dispatched, journaled }
    }

    pub(crate) fn partition(&self) -> Partition {
        self.partition
    }

    /// Appends `record`, whose effect credits `credit` (a share won, a refund, a transfer
    /// settled), and runs `then` once it is durable. A wallet here is credited by `land` first
    /// (before anyone hears of the record); a wallet elsewhere gets a remittance instead,
    /// numbered under the same lock as the append, so numbers follow the journal's order, and
    /// `then` hears of it.
    ///
    /// `reserved` says whether the caller took room for the credit ([`Outbox::reserve`]: a
    /// share, an accept); a refund or a return cannot be refused, and is numbered past the
    /// bound if it must.
    pub(crate) fn append_crediting(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        (record, reserved): (Record, bool),
        credit: Option<Credit>,
        land: impl FnOnce(Credit) + Send + 'static,
        then: impl FnOnce(Option<Remittance>) + Send + 'static,
    ) {
        let Some(credit) = credit.filter(|c| !self.partition.holds_user(c.user)) else {
            return journal.append(
                record,
                Box::new(move || {
                    if let Some(credit) = credit {
                        land(credit);
                    }
                    then(None);
                }),
            );
        };
        self.append_numbered(journal, record, |state| state.number_credit(credit), reserved, move |_, r| then(Some(r)));
    }

    /// Appends `record`, numbering its remittance (`number`) under the same lock, so numbers
    /// follow the journal's order; gives the room back if the caller `reserved` it; once it is
    /// durable, holds the remittance and runs `then` with it.
    fn append_numbered(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        record: Record,
        number: impl FnOnce(&mut Remittances) -> Remittance,
        reserved: bool,
        then: impl FnOnce(&Outbox, Remittance) + Send + 'static,
    ) {
        let mut state = self.state.lock();
        let remittance = number(&mut state);
        if reserved {
            state.unreserve(remittance.to);
        }
        let me = std::sync::Arc::clone(self);
        let durable: Completion = Box::new(move || {
            queue_up(&mut me.held.lock(), remittance.clone());
            then(&me, remittance);
        });
        journal.append(record, durable);
    }

    /// Takes room for a packet or transfer sent from here whose id places it in another
    /// partition: the id must be new here, and the remittances to its partition below the
    /// bound (as for [`Outbox::reserve`]).
    pub(crate) fn reserve_dispatch(&self, id: SendId) -> DispatchRoom {
        if let Some(dispatch) = self.dispatch(id).filter(Dispatch::stands) {
            return DispatchRoom::Taken(dispatch);
        }
        let to = id.placed(self.partition);
        // The room first (under `state`), the id after (under `dispatched`, alone): a send of
        // the same id that won meanwhile gets the room back.
        if !self.reserve_to(to) {
            return DispatchRoom::Full;
        }
        let taken = match self.dispatched.lock().entry(id) {
            Entry::Occupied(e) if e.get().stands() => Some(e.get().clone()),
            Entry::Occupied(mut e) => {
                let Dispatch::CameBack(sent, reason) = e.get().clone() else { unreachable!("it does not stand") };
                e.insert(Dispatch::Debiting(Some((sent, reason))));
                None
            }
            Entry::Vacant(e) => {
                e.insert(Dispatch::Debiting(None));
                None
            }
        };
        match taken {
            Some(dispatch) => {
                self.state.lock().unreserve(to);
                DispatchRoom::Taken(dispatch)
            }
            None => DispatchRoom::Reserved,
        }
    }

    /// Gives back the room of a packet or transfer whose send was refused.
    pub(crate) fn abandon_dispatch(&self, id: SendId) {
        let abandoned = match self.dispatched.lock().entry(id) {
            Entry::Occupied(mut e) => match e.get().clone() {
                Dispatch::Debiting(Some((sent, reason))) => {
                    e.insert(Dispatch::CameBack(sent, reason));
                    true
                }
                Dispatch::Debiting(None) => {
                    e.remove();
                    true
                }
                _ => false,
            },
            Entry::Vacant(_) => false,
        };
        if abandoned {
            self.state.lock().unreserve(id.placed(self.partition));
        }
    }

    /// Appends `record`, a [`Record::PacketRemitted`] or [`Record::TransferRemitted`] whose
    /// room is reserved, numbering the remittance that carries the send under the same lock,
    /// and runs `then` with it once it is durable.
    pub(crate) fn append_remitting(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        record: Record,
        then: impl FnOnce(Remittance) + Send + 'static,
    ) {
        let id = SendId::remitted(&record).expect("only a send is remitted");
        let number = {
            let record = record.clone();
            move |state: &mut Remittances| state.number_send(&record).expect("a send placed elsewhere, checked").1
        };
        // The completion queues the remittance for the relay, then marks the send remitted: its
        // return can only land after that, since it lands in a completion too, and completions
        // run one at a time in journal order.
        self.append_numbered(journal, record, number, true, move |me, remittance| {
            me.dispatched.lock().insert(id, Dispatch::Remitted(remittance.clone()));
            then(remittance);
        });
    }

    /// A send from here came back (`r`, its return): a retry of it is a new send. A return of
    /// a send no longer held (retired, or sent again since) changes nothing here.
    fn came_back(&self, id: SendId, r: &Remittance) {
        let mut dispatched = self.dispatched.lock();
        if let (Some(Dispatch::Remitted(sent)), Some(reason)) = (dispatched.get(&id), r.returned) {
            if same_send(sent, r) {
                let sent = sent.clone();
                dispatched.insert(id, Dispatch::CameBack(sent, reason));
            }
        }
    }

    /// Where a packet or transfer sent from here to be held elsewhere stands, if it was.
    pub(crate) fn dispatch(&self, id: SendId) -> Option<Dispatch> {
        self.dispatched.lock().get(&id).cloned()
    }

    /// Adds to `record`, a [`Record::Retired`], the packets and transfers sent from here
    /// before their cutoffs (`(packets, transfers)`; up to [`RETIRED_IDS_MAX`] ids in the record
    /// in all) whose remittance is acknowledged, forgets them, and appends it, all under the
    /// lock that orders sends from here, so that
    /// replay forgets exactly these. Counted from the send, a send is retired here no later
    /// than its own partition retires it (from its close, with the same retention), so a
    /// retry answered here finds it there. Returns the record, or `None` (appending nothing)
    /// if it retires nothing.
    pub(crate) fn append_retiring(
        &self,
        journal: &dyn Journal,
        (packets_cutoff, transfers_cutoff): (Timestamp, Timestamp),
        mut record: Record,
        then: Completion,
    ) -> Option<Record> {
        let Record::Retired { packets, ops, transfers } = &mut record else { unreachable!("a retirement") };
        // Due: sent before its cutoff, and its remittance acknowledged (a send still on its way
        // stays, or a retry of it would be a new send). A send being decided is new.
        let due = |id: &SendId, d: &Dispatch, acknowledged: &BTreeMap<u32, u64>| {
            let cutoff = if matches!(id, SendId::Packet(_)) { packets_cutoff } else { transfers_cutoff };
            let (Dispatch::Remitted(r) | Dispatch::CameBack(r, _)) = d else { return false };
            let sent_at = r.packet.as_ref().map(|p| p.sent_at).or(r.transfer.as_ref().map(|t| t.sent_at));
            sent_at.is_some_and(|at| at < cutoff) && acknowledged.get(&r.to).is_some_and(|&through| r.seq <= through)
        };
        // Chosen apart from `state` (a scan of every send from here), then taken under it,
        // checked again.
        let chosen: Vec<SendId> = {
            let acknowledged = self.acknowledged.lock().clone();
            let dispatched = self.dispatched.lock();
            let due = dispatched.iter().filter(|(id, d)| due(id, d, &acknowledged)).map(|(&id, _)| id);
            due.take(RETIRED_IDS_MAX).collect()
        };
        let _ordered = self.state.lock();
        let acknowledged = self.acknowledged.lock().clone();
        let mut dispatched = self.dispatched.lock();
        for id in chosen {
            if packets.len() + ops.len() + transfers.len() >= RETIRED_IDS_MAX {
                break;
            }
            if !dispatched.get(&id).is_some_and(|d| due(&id, d, &acknowledged)) {
                continue;
            }
            match id {
                SendId::Packet(p) => packets.push(p),
                SendId::Transfer(t) => transfers.push(t),
            }
            dispatched.remove(&id);
        }
        if dispatched.len() * 4 < dispatched.capacity() {
            dispatched.shrink_to_fit();
        }
        drop(dispatched);
        if packets.is_empty() && ops.is_empty() && transfers.is_empty() {
            return None;
        }
        journal.append(record.clone(), then);
        Some(record)
    }

    /// Takes room for one credit of `user`, about to be decided and appended through
    /// [`Outbox::append_crediting`] by the caller (at once, in the same handler): always for a
    /// wallet here; for a wallet elsewhere, only while fewer than [`REMITTANCES_HELD_MAX`]
    /// remittances to its partition are numbered, or about to be, and not acknowledged. The
    /// check and the taking are one step, so no two callers can pass the bound together.
    pub(crate) fn reserve(&self, user: UserId) -> bool {
        self.partition.holds_user(user) || self.reserve_to(self.partition.of_user(user))
    }

    /// Takes room for one remittance to `to`, if fewer than [`REMITTANCES_HELD_MAX`] are
    /// numbered, or about to be, and not acknowledged.
    fn reserve_to(&self, to: u32) -> bool {
        let mut state = self.state.lock();
        let acknowledged = self.acknowledged.lock().get(&to).copied().unwrap_or(0);
        let reserved = state.reserved.get(&to).copied().unwrap_or(0);
        if (state.sent_to(to) + reserved).saturating_sub(acknowledged) >= REMITTANCES_HELD_MAX {
            return false;
        }
        *state.reserved.entry(to).or_insert(0) += 1;
        true
    }

    /// Up to `max` durable remittances to `to` not yet acknowledged, oldest first.
    pub(crate) fn pending(&self, to: u32, max: usize) -> Vec<Remittance> {
        self.held.lock().get(&to).map(|q| q.iter().take(max).cloned().collect()).unwrap_or_default()
    }

    /// The receiver `to` applied every remittance up to `through` (at most those durable
    /// here): they leave the outbox. Returns the acknowledgement to journal, when it passes
    /// the last one journaled by [`ACKNOWLEDGED_RECORD_EVERY`] or empties the outbox to `to`.
    pub(crate) fn acknowledge(&self, to: u32, through: u64) -> Option<Record> {
        let mut held = self.held.lock();
        let mut acknowledged = self.acknowledged.lock();
        let last = acknowledged.entry(to).or_insert(0);
        // Durable here: those held, and those acknowledged before.
        let durable = held.get(&to).and_then(|q| q.back()).map_or(*last, |r| r.seq.max(*last));
        let through = through.min(durable);
        *last = (*last).max(through);
        drop(acknowledged);
        let queue = held.entry(to).or_default();
        drop_through(queue, through);
        let emptied = queue.is_empty();
        drop(held);
        let mut journaled = self.journaled.lock();
        let last = journaled.entry(to).or_insert(0);
        if through > *last && (emptied || through - *last >= ACKNOWLEDGED_RECORD_EVERY) {
            *last = through;
            return Some(Record::Acknowledged { to, through });
        }
        None
    }

    /// Decides a batch of received remittances (all of it, or nothing if one is misrouted or
    /// leaves a gap), counts the fresh ones and appends a record for each, in order: a
    /// [`Record::Received`] for a credit, or for a packet or transfer `room` found room for (a
    /// packet's route, a transfer's id and pending place reserved), and a [`Record::Returned`]
    /// for one it did not, whose amount goes back to its sender as a remittance of its own.
    /// Once one is durable, `land` lands it (a credit, an opening, an arrival) and it counts as
    /// applied.
    ///
    /// # Errors
    ///
    /// The first misrouted remittance, gap, credit of zero or above `amount_max` (no share or
    /// transfer is larger), or packet its own cap cannot draw; nothing changes then.
    pub(crate) fn receive(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        batch: &[Remittance],
        amount_max: Amount,
        land: impl Fn(Landing) + Clone + Send + 'static,
        room: impl Fn(&Remittance) -> Option<ReturnReason>,
    ) -> Result<(), RemittanceError> {
        let mut state = self.state.lock();
        // Everything is checked before anything is appended: numbers, amounts, their sums.
        let mut applied: BTreeMap<u32, (u64, Amount)> = BTreeMap::new();
        for r in batch {
            let invalid = RemittanceError::InvalidAmount { amount: r.amount };
            let valid = match &r.packet {
                Some(sent) => crate::split::check_servable(&sent.spec.split, sent.share_fen_max).is_ok(),
                // A credit, or a transfer (whose amount `check` holds to its own): bounded, so
                // that no remittance can overflow a wallet. Partitions must share their limits.
                None => !r.amount.is_zero() && r.amount <= amount_max,
            };
            if !valid {
                return Err(invalid);
            }
            let received = state.received.get(&r.from).map(|f| f.amount).unwrap_or_default();
            let (last, sum) = *applied.entry(r.from).or_insert_with(|| (state.received_from(r.from), received));
            if check(self.partition, r, last)? {
                applied.insert(r.from, (r.seq, sum.checked_add(r.amount).ok_or(invalid)?));
            }
        }
        for r in batch {
            if !state.receive(r)? {
                continue;
            }
            let (me, land, (from, seq)) = (std::sync::Arc::clone(self), land.clone(), (r.from, r.seq));
            let count = move |me: &Outbox| {
                me.applied.lock().insert(from, seq);
                me.rung.send_modify(|n| *n += 1);
            };
            // A send from here that went back is its sender's again, and a retry of it a new
            // send.
            let returned = SendId::carried(r).filter(|_| r.returned.is_some());
            let back_home = r.clone();
            let landing = match (&r.packet, &r.transfer) {
                _ if returned.is_some() => Ok(Landing::Returned(Outgoing::carried(r).expect("a send"))),
                (Some(sent), _) => room(r).map_or_else(|| Ok(Landing::Opened((**sent).clone())), Err),
                (None, Some(sent)) => room(r).map_or_else(|| Ok(Landing::Arrived((**sent).clone())), Err),
                (None, None) => Ok(Landing::Credit(Credit { user: r.user, amount: r.amount })),
            };
            let (record, durable): (Record, Completion) = match landing {
                Ok(landing) => (
                    Record::Received(r.clone()),
                    Box::new(move || {
                        // The credit first: a retry that finds the send came back is debited
                        // after it.
                        land(landing);
                        if let Some(id) = returned {
                            me.came_back(id, &back_home);
                        }
                        count(&me);
                    }),
                ),
                Err(reason) => {
                    let back = state.number_return(r, reason);
                    (
                        Record::Returned { remittance: r.clone(), reason },
                        Box::new(move || {
                            queue_up(&mut me.held.lock(), back);
                            count(&me);
                        }),
                    )
                }
            };
            journal.append(record, durable);
        }
        Ok(())
    }

    /// Whether `r` is for this partition at all (its number aside).
    pub(crate) fn check_destination(&self, r: &Remittance) -> Result<(), RemittanceError> {
        check(self.partition, r, u64::MAX).map(|_| ())
    }

    /// The highest number from `from` durable and credited here.
    pub(crate) fn received_from(&self, from: u32) -> u64 {
        self.applied.lock().get(&from).copied().unwrap_or(0)
    }

    /// Resolves once the remittance numbered `seq` from `from` is durable and credited here.
    pub(crate) async fn applied(&self, from: u32, seq: u64) {
        let mut rung = self.rung.subscribe();
        while self.received_from(from) < seq {
            if rung.changed().await.is_err() {
                return;
            }
        }
    }

    pub(crate) fn totals(&self) -> (u128, u128) {
        self.state.lock().totals()
    }

    pub(crate) fn flows(&self) -> (Vec<Flow>, Vec<Flow>) {
        self.state.lock().flows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_in(p: Partition, index: u32) -> UserId {
        (0..).map(UserId).find(|&u| p.of_user(u) == index).unwrap()
    }

    #[test]
    fn a_retirement_lists_sends_from_here_that_are_due_and_acknowledged_within_its_bound() {
        use crate::money::{OpId, TransferId};
        use crate::record::{Arrival, NewTransfer, TransferSent};
        let a = Partition::new(0, 2).unwrap();
        let mut replayed = Remittances::new(a);
        let (from, to) = (user_in(a, 0), user_in(a, 1));
        let send = |id: u64, at: u64| {
            let spec = NewTransfer {
                id: TransferId(id),
                from,
                to,
                amount: Amount::fen(1),
                arrival: Arrival::Instant,
                note: String::new(),
                org: None,
            };
            let (sent_at, accept_until) = (Timestamp(at), Timestamp(at + 1));
            let sent = TransferSent {
                spec,
                sent_at,
                day: 0,
                cooling_until: sent_at,
                arrives_at: sent_at,
                accept_until,
                approval: None,
            };
            Record::TransferRemitted(sent)
        };
        // Ids placed in partition 1: twenty sent at 10, one at 1 000.
        let mut ids = (1..).filter(|&t| a.of_transfer(TransferId(t)) == 1);
        let old: Vec<u64> = ids.by_ref().take(20).collect();
        let new = ids.next().unwrap();
        old.iter().for_each(|&t| replayed.replayed_send(&send(t, 10)).unwrap());
        replayed.replayed_send(&send(new, 1_000)).unwrap();
        // Acknowledged up to the fifteenth: the last five old ones are still on their way.
        replayed.acknowledged(1, 15).unwrap();
        let outbox = Outbox::new(replayed);
        let journal = crate::journal::MemoryJournal::new();
        let cutoffs = (Timestamp(500), Timestamp(500));
        // A record nearly full of operation ids takes ten of the fifteen due.
        let ops: Vec<OpId> = (0..RETIRED_IDS_MAX as u64 - 10).map(OpId).collect();
        let retiring = Record::Retired { packets: vec![], ops, transfers: vec![] };
        let first = outbox.append_retiring(&journal, cutoffs, retiring, Box::new(|| {})).unwrap();
        let Record::Retired { transfers, .. } = &first else { unreachable!() };
        assert_eq!(transfers.len(), 10);
        let empty = || Record::Retired { packets: vec![], ops: vec![], transfers: vec![] };
        let second = outbox.append_retiring(&journal, cutoffs, empty(), Box::new(|| {})).unwrap();
        let Record::Retired { transfers: rest, .. } = &second else { unreachable!() };
        let mut all: Vec<u64> = transfers.iter().chain(rest).map(|t| t.0).collect();
        all.sort_unstable();
        assert_eq!(all, old[..15], "the due and acknowledged ones, no more");
        assert!(outbox.append_retiring(&journal, cutoffs, empty(), Box::new(|| {})).is_none(), "nothing left due");
        assert!(old[15..].iter().chain([&new]).all(|&t| outbox.dispatch(SendId::Transfer(TransferId(t))).is_some()));
    }

    #[test]
    fn remittances_apply_once_and_in_order() {
        let (a, b) = (Partition::new(0, 2).unwrap(), Partition::new(1, 2).unwrap());
        let mut sender = Remittances::new(a);
        let user = user_in(a, 1);
        (1..=3).for_each(|n| sender.replayed(Credit { user, amount: Amount::fen(n) }));
        let out: Vec<Remittance> = sender.unacknowledged[&1].iter().cloned().collect();
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let mut receiver = Remittances::new(b);
        assert!(matches!(receiver.check(&out[1]), Err(RemittanceError::Gap { expected: 1, .. })));
        assert_eq!(receiver.receive(&out[0]), Ok(true));
        assert_eq!(receiver.receive(&out[0]), Ok(false));
        assert_eq!(receiver.receive(&out[1]), Ok(true));
        assert_eq!(receiver.received_from(0), 2);
        assert_eq!(receiver.totals(), (0, 3));
        assert!(matches!(sender.check(&out[0]), Err(RemittanceError::Misrouted { .. })));
        let wrong_user = Remittance { user: user_in(a, 0), ..out[2].clone() };
        assert!(matches!(receiver.check(&wrong_user), Err(RemittanceError::Misrouted { .. })));
    }

    #[test]
    fn a_version_4_snapshot_is_still_read() {
        let a = Partition::new(0, 2).unwrap();
        let user = user_in(a, 1);
        // Partition 0 of 2; sent to 1: two remittances, 30 fen; received: none; held: #2 of
        // 10 fen (numbers and credits only, as version 4 wrote them).
        let mut bytes = Vec::new();
        put_u64s(&mut bytes, &[0, 2, 1, 1, 2, 30, 0, 1, 2, 1, user.0, 10]);
        let mut r = Reader::new(&bytes);
        let decoded = Remittances::new(a).decode(&mut r, 4).unwrap();
        r.finish().unwrap();
        let held: Vec<Remittance> = decoded.unacknowledged[&1].iter().cloned().collect();
        let expected = Remittance::credit(0, 1, 2, user, Amount::fen(10));
        assert_eq!((held, decoded.sent_to(1), decoded.dispatched.len()), (vec![expected], 2, 0));
    }

    #[test]
    fn a_restart_holds_what_was_not_acknowledged_and_the_bound_holds_the_outbox() {
        let a = Partition::new(0, 2).unwrap();
        let mut replayed = Remittances::new(a);
        let user = user_in(a, 1);
        // Past the bound (refunds are numbered past it): a restart holds every one its journal
        // does not record as acknowledged.
        (0..REMITTANCES_HELD_MAX + 5).for_each(|_| replayed.replayed(Credit { user, amount: Amount::fen(1) }));
        assert!(replayed.acknowledged(1, REMITTANCES_HELD_MAX + 6).is_err(), "past those sent");
        replayed.acknowledged(1, 3).unwrap();
        let outbox = Outbox::new(replayed);
        assert_eq!(outbox.pending(1, 1)[0].seq, 4);
        assert_eq!(outbox.pending(1, usize::MAX).len() as u64, REMITTANCES_HELD_MAX + 2);
        assert!(!outbox.reserve(user), "a full outbox refuses more");
        assert!(outbox.reserve(user_in(a, 0)), "a wallet here needs no room");
        // A small step is not journaled; one that empties the outbox or passes the step is.
        assert_eq!(outbox.acknowledge(1, 7), None);
        // Two places, taken one at a time: the third caller meets the bound.
        assert!(outbox.reserve(user) && outbox.reserve(user));
        assert!(!outbox.reserve(user), "reserved room counts");
        assert_eq!(outbox.pending(1, 1)[0].seq, 8);
        let through = 3 + crate::partition::ACKNOWLEDGED_RECORD_EVERY;
        assert_eq!(outbox.acknowledge(1, through), Some(Record::Acknowledged { to: 1, through }));
        let all = REMITTANCES_HELD_MAX + 5;
        assert_eq!(
            outbox.acknowledge(1, u64::MAX),
            Some(Record::Acknowledged { to: 1, through: all }),
            "at most those sent"
        );
        assert!(outbox.pending(1, 1).is_empty());
    }
}
