//! Remittances between partitions, exactly once, and the live outbox.
//!
//! The remittances from one partition to another are numbered 1, 2, 3, … in the order of the
//! sending partition's journal: the number is taken under the same lock as the claim's append
//! ([`Outbox::append_crediting`]), and replay numbers the claims it meets in the same order, so a
//! restarted or new owner of the partition gives every remittance the number it had. The
//! receiving partition records each one it applies ([`Record::Received`]) and keeps, per
//! sender, the highest number applied: a number at or below it is a repeat and changes
//! nothing, the next one is applied, and one past it is refused as a gap. A remittance leaves
//! the outbox only when the receiver has acknowledged it.
//!
//! Each partition counts what it sent and received, per peer: its own equation is
//! `wallets + escrow + pending + sent = deposits − withdrawals + received`, and over the
//! cluster the sent and received sums cancel except for the remittances still in flight,
//! which [`crate::ClusterAudit`] counts per pair.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;

use crate::journal::{Completion, Journal};
use crate::ledger::Credit;
use crate::partition::{check, Flow, Partition, Remittance, RemittanceError};
use crate::record::Record;

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
}

impl Remittances {
    pub(crate) fn new(partition: Partition) -> Remittances {
        Remittances { partition, ..Remittances::default() }
    }

    /// Numbers the next remittance of `credit` (a wallet elsewhere) and counts it as sent.
    fn number(&mut self, credit: Credit) -> Remittance {
        let to = self.partition.of_user(credit.user);
        let flow = self.sent.entry(to).or_insert(Flow { peer: to, ..Flow::default() });
        flow.count += 1;
        // A remittance is a share of escrowed deposits: no sum of them passes the deposits.
        flow.amount = flow.amount.checked_add(credit.amount).expect("remittances come from escrowed deposits");
        Remittance { from: self.partition.index(), to, seq: flow.count, user: credit.user, amount: credit.amount }
    }

    /// Replay's half of [`Outbox::append_crediting`]: a durable credit of a wallet elsewhere,
    /// waiting for its receiver's acknowledgement.
    pub(crate) fn replayed(&mut self, credit: Credit) {
        let remittance = self.number(credit);
        self.unacknowledged.entry(remittance.to).or_default().push_back(remittance);
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
        if !self.check(r)? {
            return Ok(false);
        }
        let flow = self.received.entry(r.from).or_insert(Flow { peer: r.from, ..Flow::default() });
        // What arrives was sent from escrowed deposits: no sum of it passes them.
        let amount = flow.amount.checked_add(r.amount).expect("remittances come from escrowed deposits");
        *flow = Flow { peer: r.from, count: r.seq, amount };
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
    /// The highest number from each sender whose remittance is durable here and credited.
    applied: Mutex<BTreeMap<u32, u64>>,
    /// Rung when a remittance is durable here, for those awaiting one.
    rung: tokio::sync::watch::Sender<u64>,
}

impl Outbox {
    pub(crate) fn new(mut state: Remittances) -> Outbox {
        let held = Mutex::new(std::mem::take(&mut state.unacknowledged));
        let partition = state.partition;
        let applied = Mutex::new(state.received.iter().map(|(&from, flow)| (from, flow.count)).collect());
        let rung = tokio::sync::watch::channel(0).0;
        Outbox { partition, state: Mutex::new(state), held, applied, rung }
    }

    pub(crate) fn partition(&self) -> Partition {
        self.partition
    }

    /// Appends `record`, whose effect credits `credit` (a share won, a refund, a transfer
    /// settled), and runs `then` once it is durable. A wallet here is credited by `land` first
    /// (before anyone hears of the record); a wallet elsewhere gets a remittance instead,
    /// numbered under the same lock as the append, so numbers follow the journal's order, and
    /// `then` hears of it.
    pub(crate) fn append_crediting(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        record: Record,
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
        let mut state = self.state.lock();
        let remittance = state.number(credit);
        let me = std::sync::Arc::clone(self);
        let durable: Completion = Box::new(move || {
            me.held.lock().entry(remittance.to).or_default().push_back(remittance);
            then(Some(remittance));
        });
        journal.append(record, durable);
    }

    /// Up to `max` durable remittances to `to` not yet acknowledged, oldest first.
    pub(crate) fn pending(&self, to: u32, max: usize) -> Vec<Remittance> {
        self.held.lock().get(&to).map(|q| q.iter().take(max).copied().collect()).unwrap_or_default()
    }

    /// The receiver `to` applied every remittance up to `through`: they leave the outbox.
    pub(crate) fn acknowledge(&self, to: u32, through: u64) {
        if let Some(queue) = self.held.lock().get_mut(&to) {
            while queue.front().is_some_and(|r| r.seq <= through) {
                queue.pop_front();
            }
        }
    }

    /// Decides a batch of received remittances (all of it, or nothing if one is misrouted or
    /// leaves a gap), counts the fresh ones and appends a [`Record::Received`] for each, in
    /// order. Once one is durable, `credit` lands its share and it counts as applied.
    ///
    /// # Errors
    ///
    /// The first misrouted remittance or gap; nothing changes then.
    pub(crate) fn receive(
        self: &std::sync::Arc<Outbox>,
        journal: &dyn Journal,
        batch: &[Remittance],
        credit: impl Fn(Credit) + Clone + Send + 'static,
    ) -> Result<(), RemittanceError> {
        let mut state = self.state.lock();
        let mut applied: BTreeMap<u32, u64> = BTreeMap::new();
        for r in batch {
            let last = *applied.entry(r.from).or_insert_with(|| state.received_from(r.from));
            if check(self.partition, r, last)? {
                applied.insert(r.from, r.seq);
            }
        }
        for r in batch {
            if state.receive(r)? {
                let (me, credit, r) = (std::sync::Arc::clone(self), credit.clone(), *r);
                let durable: Completion = Box::new(move || {
                    credit(Credit { user: r.user, amount: r.amount });
                    me.applied.lock().insert(r.from, r.seq);
                    me.rung.send_modify(|n| *n += 1);
                });
                journal.append(Record::Received(r), durable);
            }
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
    use crate::money::{Amount, UserId};

    fn user_in(p: Partition, index: u32) -> UserId {
        (0..).map(UserId).find(|&u| p.of_user(u) == index).unwrap()
    }

    #[test]
    fn remittances_apply_once_and_in_order() {
        let (a, b) = (Partition::new(0, 2).unwrap(), Partition::new(1, 2).unwrap());
        let mut sender = Remittances::new(a);
        let user = user_in(a, 1);
        (1..=3).for_each(|n| sender.replayed(Credit { user, amount: Amount::fen(n) }));
        let out: Vec<Remittance> = sender.unacknowledged[&1].iter().copied().collect();
        assert_eq!(out.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let mut receiver = Remittances::new(b);
        assert!(matches!(receiver.check(&out[1]), Err(RemittanceError::Gap { expected: 1, .. })));
        assert_eq!(receiver.receive(&out[0]), Ok(true));
        assert_eq!(receiver.receive(&out[0]), Ok(false));
        assert_eq!(receiver.receive(&out[1]), Ok(true));
        assert_eq!(receiver.received_from(0), 2);
        assert_eq!(receiver.totals(), (0, 3));
        assert!(matches!(sender.check(&out[0]), Err(RemittanceError::Misrouted { .. })));
        let wrong_user = Remittance { user: user_in(a, 0), ..out[2] };
        assert!(matches!(receiver.check(&wrong_user), Err(RemittanceError::Misrouted { .. })));
    }
}
