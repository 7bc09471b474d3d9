//! Audits: conservation of money and every packet's invariants, for a running engine
//! ([`crate::Engine::audit`]) and for a journal directory ([`audit_journal`], which the
//! `hongbao audit` command prints).
//!
//! Conservation is one function, [`Audit::is_balanced`]:
//! `wallets + escrow + pending + remitted = deposits - withdrawals + received`, computed in
//! `u128` so that no sum can overflow (`remitted` and `received` are the money sent to and
//! received from other partitions, zero in an unpartitioned engine).

use std::path::{Path, PathBuf};

use crate::clock::Timestamp;
use crate::journal::{format, reader, JournalError, Progress};
use crate::money::Amount;
use crate::packet::check_view;
use crate::partition::Flow;
use crate::replay::Replica;
use std::collections::BTreeMap;

/// Both sides of the conservation equation, and every invariant violation found.
///
/// At a quiescent point (no request in flight),
/// `wallets + escrow + pending + remitted == deposits - withdrawals + received`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Audit {
    /// Sum of wallet balances.
    pub wallets: Amount,
    /// Sum of the escrow of open packets.
    pub escrow: Amount,
    /// Money held on its way: transfers not yet settled, and packets cooling off.
    pub pending: Amount,
    /// Sum of deposits.
    pub deposits: Amount,
    /// Sum of withdrawals.
    pub withdrawals: Amount,
    /// Sum of the remittances sent to other partitions (shares won and transfers accepted
    /// here by members whose wallets are elsewhere).
    pub remitted: Amount,
    /// Sum of the remittances received from other partitions and applied here.
    pub received: Amount,
    /// Remittances sent, by receiving partition.
    pub sent_to: Vec<crate::partition::Flow>,
    /// Remittances received, by sending partition.
    pub received_from: Vec<crate::partition::Flow>,
    /// Packets open or cooling off (not sold out, expired or cancelled).
    pub packets_live: usize,
    /// Packets closed: sold out, expired or cancelled.
    pub packets_closed: usize,
    /// Transfers not yet settled.
    pub transfers_pending: usize,
    /// Transfers settled and still kept.
    pub transfers_settled: usize,
    /// Every broken invariant, described.
    pub violations: Vec<String>,
}

/// Sums in fen, before they become an [`Audit`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sums {
    pub wallets: u128,
    pub escrow: u128,
    pub pending: u128,
    pub deposits: u128,
    pub withdrawals: u128,
    pub remitted: u128,
    pub received: u128,
}

impl Audit {
    /// An audit of these sums; a sum past `u64` fen is a violation.
    pub(crate) fn new(sums: Sums, packets_live: usize, packets_closed: usize, mut violations: Vec<String>) -> Audit {
        let mut fen = |sum: u128, what: &str| {
            u64::try_from(sum).map(Amount::fen).unwrap_or_else(|_| {
                violations.push(format!("{what} overflows u64 fen"));
                Amount::ZERO
            })
        };
        Audit {
            wallets: fen(sums.wallets, "wallets"),
            escrow: fen(sums.escrow, "escrow"),
            pending: fen(sums.pending, "pending"),
            deposits: fen(sums.deposits, "deposits"),
            withdrawals: fen(sums.withdrawals, "withdrawals"),
            remitted: fen(sums.remitted, "remitted"),
            received: fen(sums.received, "received"),
            sent_to: Vec::new(),
            received_from: Vec::new(),
            packets_live,
            packets_closed,
            transfers_pending: 0,
            transfers_settled: 0,
            violations,
        }
    }

    /// This audit with its transfer counts.
    pub(crate) fn with_transfers(mut self, pending: usize, settled: usize) -> Audit {
        self.transfers_pending = pending;
        self.transfers_settled = settled;
        self
    }

    /// This audit with the flows between its partition and the others.
    pub(crate) fn with_flows(mut self, (sent_to, received_from): (Vec<Flow>, Vec<Flow>)) -> Audit {
        self.sent_to = sent_to;
        self.received_from = received_from;
        self
    }

    /// Whether money is conserved and no invariant is broken.
    pub fn is_balanced(&self) -> bool {
        self.is_conserved() && self.violations.is_empty()
    }

    /// Whether `wallets + escrow + pending + remitted == deposits - withdrawals + received`.
    pub fn is_conserved(&self) -> bool {
        let fen = |amounts: &[Amount]| amounts.iter().map(|a| i128::from(a.as_fen())).sum::<i128>();
        fen(&[self.wallets, self.escrow, self.pending, self.remitted])
            == fen(&[self.deposits, self.received]) - fen(&[self.withdrawals])
    }
}

/// What [`audit_journal`] found in a journal that reads cleanly.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct JournalAudit {
    /// The directory.
    pub dir: PathBuf,
    /// Records in the history (including those a snapshot covers).
    pub records: u64,
    /// Segment files read.
    pub segments: usize,
    /// Bytes of a torn final write (a crash mid-write; never acknowledged).
    pub torn_tail_bytes: u64,
    /// Whether the history was replayed from its first record (false: from a snapshot that
    /// replaced the deleted segments).
    pub whole_history: bool,
    /// Packets open.
    pub packets_open: usize,
    /// Packets held by their sender's cooling-off.
    pub packets_cooling_off: usize,
    /// Packets sold out.
    pub packets_sold_out: usize,
    /// Packets expired.
    pub packets_expired: usize,
    /// Packets cancelled by their sender during cooling-off.
    pub packets_cancelled: usize,
    /// Packets whose remainder an org admin recalled.
    pub packets_recalled: usize,
    /// Orgs.
    pub orgs: usize,
    /// Transfers not yet settled.
    pub transfers_pending: usize,
    /// Transfers settled (and not yet retired).
    pub transfers_settled: usize,
    /// Conservation and every packet's invariants.
    pub audit: Audit,
}

impl JournalAudit {
    /// Whether the journal describes a state that conserves money and breaks no invariant.
    pub fn is_ok(&self) -> bool {
        self.audit.is_balanced()
    }
}

/// Verifies the journal in `dir` as `hongbao audit` does: every checksum and the whole hash
/// chain, each record replayed through the engine's own rules (so every lucky claim is checked
/// against the share its seed draws, with `share_fen_max` as the cap), then conservation and
/// every packet's invariants. It reads the whole history when its first segment is there,
/// otherwise it starts from the newest snapshot. It does not lock the directory or change it.
///
/// # Errors
///
/// [`JournalError::Corrupt`] naming the segment, byte offset and record of the first damaged
/// or contradictory record; [`JournalError::NotADirectory`] or [`JournalError::NoJournal`] for
/// a path that holds no journal (an audit never passes an empty or foreign directory);
/// [`JournalError::Io`].
pub fn audit_journal(dir: &Path, share_fen_max: u64) -> Result<JournalAudit, JournalError> {
    audit_journal_with_progress(dir, share_fen_max, &mut |_| {})
}

/// [`audit_journal`], telling `progress` after each segment (for a progress bar).
///
/// # Errors
///
/// As [`audit_journal`].
pub fn audit_journal_with_progress(
    dir: &Path,
    share_fen_max: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<JournalAudit, JournalError> {
    format::check_existing(dir)?;
    let whole_history = format::path(dir, format::Kind::Segment, 0).exists();
    let recovered = reader::read(dir, !whole_history, Replica::new(share_fen_max), progress)?;
    let replica = &recovered.state;
    let counts = replica.packet_counts();
    let (transfers_pending, transfers_settled) = replica.transfer_counts();
    Ok(JournalAudit {
        dir: dir.to_path_buf(),
        records: recovered.records,
        segments: recovered.segments,
        torn_tail_bytes: recovered.torn_bytes,
        whole_history,
        packets_open: counts.open,
        packets_cooling_off: counts.cooling_off,
        packets_sold_out: counts.sold_out,
        packets_expired: counts.expired,
        packets_cancelled: counts.cancelled,
        packets_recalled: counts.recalled,
        orgs: replica.orgs.len(),
        transfers_pending,
        transfers_settled,
        audit: replica_audit(replica),
    })
}

/// A page of an org's operation log read from the journal in `dir`, as `hongbao log` prints
/// it: every checksum and the hash chain are verified as the records are read (the log is
/// folded from them, so a tampered record refuses the read, naming where), from the newest
/// snapshot on when earlier segments were deleted (the snapshot carries the log). Entries are
/// kept by the default `op_log_retention_secs` (180 days), counted back from the newest entry
/// of the org: an engine configured with a shorter retention shows fewer.
///
/// # Errors
///
/// As [`audit_journal`].
pub fn operation_log(dir: &Path, org: crate::OrgId, query: &crate::OpQuery) -> Result<crate::OpPage, JournalError> {
    format::check_existing(dir)?;
    let whole_history = format::path(dir, format::Kind::Segment, 0).exists();
    let limits = crate::Limits::default();
    let recovered = reader::read(dir, !whole_history, Replica::new(limits.share_fen_max), &mut |_| {})?;
    // A reader is not a service: one page as large as asked.
    Ok(recovered.state.oplog.query(org, query, usize::MAX, Timestamp(0)))
}

/// What [`audit_history`] found in a journal of another kind (a replicated stream).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct HistoryAudit {
    /// Records replayed.
    pub records: u64,
    /// Packets open or held by their sender's cooling-off.
    pub packets_open: usize,
    /// Packets closed: sold out, expired, cancelled or recalled.
    pub packets_closed: usize,
    /// Transfers not yet settled.
    pub transfers_pending: usize,
    /// Conservation and every packet's invariants.
    pub audit: Audit,
}

/// Replays `history` through the engine's own rules, as [`audit_journal`] replays a journal
/// directory (every lucky claim checked against the share its seed draws, `share_fen_max` the
/// cap), then checks conservation and every packet's invariants. The history is `partition`'s:
/// what it credited to wallets elsewhere counts as remitted.
///
/// # Errors
///
/// The first record that contradicts the ones before it, counted from 1, or why the history
/// could not be read.
pub fn audit_history(
    history: &dyn crate::History,
    partition: crate::Partition,
    share_fen_max: u64,
) -> Result<HistoryAudit, String> {
    let mut replica = Replica::new(share_fen_max).with_partition(partition);
    let mut records = 0u64;
    history.replay(&mut |record| {
        records += 1;
        replica.apply_record(record).map_err(|e| format!("record {records}: {e}"))
    })?;
    history_audit(&replica)
}

/// What a replayed history holds, checked.
fn history_audit(replica: &Replica) -> Result<HistoryAudit, String> {
    if let Some(why) = replica.partition_mismatch() {
        return Err(why);
    }
    let c = replica.packet_counts();
    Ok(HistoryAudit {
        records: replica.records,
        packets_open: c.open + c.cooling_off,
        packets_closed: c.sold_out + c.expired + c.cancelled + c.recalled,
        transfers_pending: replica.transfer_counts().0,
        audit: replica_audit(replica),
    })
}

impl crate::Folded {
    /// The audit of the records folded so far, as [`audit_history`] would make of them: an
    /// auditor that reads a log in steps ([`ClusterAudit::behind`]) folds it once.
    ///
    /// # Errors
    ///
    /// If the records are a journal of no partition replayed as one.
    pub fn audit(&self) -> Result<HistoryAudit, String> {
        history_audit(&self.replica)
    }
}

/// The audit of a replayed state.
pub(crate) fn replica_audit(replica: &Replica) -> Audit {
    let (wallets, escrow, pending) = replica.held();
    let totals = replica.ledger.totals();
    let (remitted, received) = replica.remittances.totals();
    let sums = Sums {
        wallets,
        escrow,
        pending,
        deposits: u128::from(totals.deposited),
        withdrawals: u128::from(totals.withdrawn),
        remitted,
        received,
    };
    let violations = replica.packets.values().filter_map(|p| check_view(&p.view()).err()).collect();
    let c = replica.packet_counts();
    let (pending, settled) = replica.transfer_counts();
    let closed = c.sold_out + c.expired + c.cancelled + c.recalled;
    Audit::new(sums, c.open + c.cooling_off, closed, violations)
        .with_transfers(pending, settled)
        .with_flows(replica.remittances.flows())
}

/// Conservation over a cluster: every partition's audit, and the remittances between them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct ClusterAudit {
    /// Partitions audited.
    pub partitions: usize,
    /// Sum of wallet balances.
    pub wallets: Amount,
    /// Sum of open packets' escrow.
    pub escrow: Amount,
    /// Sum of money held on its way inside partitions (pending transfers, packets cooling off).
    pub pending: Amount,
    /// Remittances sent and not yet applied by their receiver.
    pub in_flight: Amount,
    /// How many.
    pub in_flight_count: u64,
    /// Sum of deposits.
    pub deposits: Amount,
    /// Sum of withdrawals.
    pub withdrawals: Amount,
    /// Every broken invariant, described (each partition's, prefixed by its index).
    pub violations: Vec<String>,
}

impl ClusterAudit {
    /// The audit of a whole cluster from each partition's audit, by index. A partition that is
    /// not conserved, or a pair of partitions where more arrived than left, is a violation.
    pub fn of(audits: &[(u32, Audit)]) -> ClusterAudit {
        let mut violations = Vec::new();
        let (mut wallets, mut escrow, mut pending, mut deposits, mut withdrawals) = (0u128, 0u128, 0u128, 0u128, 0u128);
        let mut sent: BTreeMap<(u32, u32), Flow> = BTreeMap::new();
        let mut received: BTreeMap<(u32, u32), Flow> = BTreeMap::new();
        for (index, audit) in audits {
            violations.extend(audit.violations.iter().map(|v| format!("partition {index}: {v}")));
            if !audit.is_conserved() {
                violations.push(format!("partition {index} is not conserved"));
            }
            wallets += u128::from(audit.wallets.as_fen());
            escrow += u128::from(audit.escrow.as_fen());
            pending += u128::from(audit.pending.as_fen());
            deposits += u128::from(audit.deposits.as_fen());
            withdrawals += u128::from(audit.withdrawals.as_fen());
            sent.extend(audit.sent_to.iter().map(|f| ((*index, f.peer), *f)));
            received.extend(audit.received_from.iter().map(|f| ((f.peer, *index), *f)));
        }
        let (mut in_flight, mut in_flight_count) = (0u128, 0u64);
        for (&(from, to), out) in &sent {
            let back = received.get(&(from, to)).copied().unwrap_or_default();
            match (out.count.checked_sub(back.count), out.amount.checked_sub(back.amount)) {
                // The same numbers must carry the same money: none in flight, none owed.
                (Some(0), Some(amount)) if !amount.is_zero() => {
                    violations.push(format!("partition {to} applied the remittances from {from} with other amounts"))
                }
                (Some(count), Some(amount)) => {
                    in_flight_count += count;
                    in_flight += u128::from(amount.as_fen());
                }
                _ => violations.push(format!("partition {to} received more from {from} than it sent")),
            }
        }
        for (from, to) in received.keys().filter(|pair| !sent.contains_key(pair)) {
            violations.push(format!("partition {to} received from {from}, which sent it nothing"));
        }
        let mut fen = |sum: u128, what: &str| {
            u64::try_from(sum).map(Amount::fen).unwrap_or_else(|_| {
                violations.push(format!("{what} overflows u64 fen"));
                Amount::ZERO
            })
        };
        ClusterAudit {
            partitions: audits.len(),
            wallets: fen(wallets, "wallets"),
            escrow: fen(escrow, "escrow"),
            pending: fen(pending, "pending"),
            in_flight: fen(in_flight, "in flight"),
            in_flight_count,
            deposits: fen(deposits, "deposits"),
            withdrawals: fen(withdrawals, "withdrawals"),
            violations,
        }
    }

    /// The partitions read too early for `audits` to be a consistent cut: each sent some
    /// partition fewer remittances than that partition says it applied from it (logs read one
    /// after another while the cluster runs). Reading each of them further (every log only
    /// grows) until none is named gives audits that [`ClusterAudit::of`] can judge without a
    /// false alarm: every remittance a receiver applied is then among those its sender sent.
    pub fn behind(audits: &[(u32, Audit)]) -> Vec<u32> {
        let sent: BTreeMap<(u32, u32), u64> =
            audits.iter().flat_map(|(from, a)| a.sent_to.iter().map(move |f| ((*from, f.peer), f.count))).collect();
        let mut behind: Vec<u32> = audits
            .iter()
            .flat_map(|(to, a)| a.received_from.iter().map(move |f| (f.peer, *to, f.count)))
            .filter(|&(from, to, count)| {
                audits.iter().any(|(i, _)| *i == from) && sent.get(&(from, to)).copied().unwrap_or(0) < count
            })
            .map(|(from, _, _)| from)
            .collect();
        behind.sort_unstable();
        behind.dedup();
        behind
    }

    /// Whether `wallets + escrow + pending + in flight == deposits − withdrawals` over the
    /// cluster and nothing is broken.
    pub fn is_balanced(&self) -> bool {
        let held = [self.wallets, self.escrow, self.pending, self.in_flight]
            .iter()
            .map(|a| u128::from(a.as_fen()))
            .sum::<u128>();
        let net = i128::from(self.deposits.as_fen()) - i128::from(self.withdrawals.as_fen());
        self.violations.is_empty() && held as i128 == net
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conservation_holds_only_when_both_sides_agree() {
        let sums = Sums { wallets: 70, escrow: 20, pending: 10, deposits: 150, withdrawals: 50, ..Sums::default() };
        assert!(Audit::new(sums, 0, 0, vec![]).is_balanced());
        assert!(!Audit::new(Sums { escrow: 21, ..sums }, 0, 0, vec![]).is_balanced());
        assert!(!Audit::new(sums, 0, 0, vec!["broken".into()]).is_balanced());
        let huge = Audit::new(Sums { wallets: u128::from(u64::MAX) + 1, ..sums }, 0, 0, vec![]);
        assert!(huge.violations[0].contains("overflows"));
    }

    /// Replaying a journal from its newest snapshot gives the same state as replaying every
    /// record from the first (the snapshots and every segment are kept to compare both).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_plus_replay_equals_full_replay() {
        use crate::{Amount, Config, Durability, Engine, FileJournalConfig, GroupId, ManualClock, NewPacket, OpId};
        use crate::{PacketId, Split, UserId};
        use std::sync::Arc;

        let dir = std::env::temp_dir().join(format!("hongbao-audit-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = ManualClock::default();
        let mut journal = FileJournalConfig::new(&dir, Durability::Sync);
        journal.snapshot_every_records = Some(25);
        journal.keep_segments = true;
        let mut config = Config { arbiters: 2, wallet_shards: 3, ..Config::default() }.with_seed(5);
        config = config.with_clock(Arc::new(clock.clone()));
        config.journal_dir = Some(journal);
        let engine = Engine::start(config.clone()).unwrap();
        let (sender, members): (UserId, Vec<UserId>) = (UserId(1), (1_000..1_030).map(UserId).collect());
        engine.set_members(GroupId(1), members.iter().copied().chain([sender])).await.unwrap();
        engine.deposit(OpId(1), sender, Amount::yuan(100)).await.unwrap();
        for p in 0..6 {
            let split = Split::lucky(Amount::yuan(5), 10);
            let spec = NewPacket { id: PacketId(p), sender, group: GroupId(1), split, greeting: String::new() };
            engine.send_packet(spec).await.unwrap();
            for &u in &members[..12] {
                let _ = engine.grab(PacketId(p), u).await;
            }
        }
        clock.advance(std::time::Duration::from_secs(86_400));
        engine.run_due().await.unwrap();
        engine.withdraw(OpId(5), members[0], Amount::fen(10)).await.unwrap();
        let audit_before = engine.audit().await.unwrap();
        engine.shutdown().await;
        drop(engine);

        let cap = crate::Limits::default().share_fen_max;
        let full = reader::read(&dir, false, Replica::new(cap), &mut |_| {}).unwrap();
        let from_snapshot = reader::read(&dir, true, Replica::new(cap), &mut |_| {}).unwrap();
        assert!(full.records > 60, "{} records", full.records);
        let (a, b) = (&full.state, &from_snapshot.state);
        assert_eq!((&a.ledger, &a.rosters, a.records), (&b.ledger, &b.rosters, b.records), "same state");
        let views = |r: &Replica| r.packets.values().map(crate::packet::PacketState::view).collect::<Vec<_>>();
        assert_eq!(views(a), views(b));
        assert_eq!(from_snapshot.records, full.records);
        assert!(replica_audit(a).is_balanced());

        let engine = Engine::start(config).unwrap();
        assert_eq!(engine.audit().await.unwrap(), audit_before, "same audit");
        engine.shutdown().await;
        drop(engine);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
