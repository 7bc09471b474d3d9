//! Partitions: past one machine, packets and wallets are split over a fixed number of
//! partitions, each an engine with a journal of its own, and money that crosses from one to
//! another travels as a [`Remittance`] (numbered and applied once: see `outbox.rs`).
//!
//! A packet belongs to the partition of its id, a wallet to the partition of its user id, a
//! transfer to the partition of its id ([`Partition::of_packet`] and friends: one stable hash,
//! part of the format). A grab is decided in the packet's partition, a transfer's acceptance in
//! the transfer's; when the wallet to credit is elsewhere, the money leaves as a remittance to
//! the wallet's partition instead of being credited where it was decided.

use thiserror::Error;

use crate::money::{Amount, PacketId, TransferId, UserId};
use crate::record::Remittance;

/// The most partitions a cluster may have.
pub const PARTITIONS_MAX: u32 = 4096;

/// The most remittances from one partition to another that may be numbered and not yet
/// acknowledged: a grab, an accept or a send whose money would pass it is refused with `Busy`
/// until the relay catches up. (Refunds and returns, which cannot be refused, are numbered
/// past it; a restarted partition holds every remittance its journal does not record as
/// acknowledged, so none is lost.)
pub const REMITTANCES_HELD_MAX: u64 = 100_000;

/// Acknowledgements are journaled ([`crate::Record::Acknowledged`]) when they pass the last
/// one journaled by this many remittances, or empty the outbox to their receiver: a restarted
/// partition offers again at most this many its receiver already applied (repeats there).
pub const ACKNOWLEDGED_RECORD_EVERY: u64 = 256;

/// The most remittances one [`crate::Engine::receive`] takes.
pub const REMITTANCES_PER_CALL_MAX: usize = 10_000;

/// Which partition an engine serves, out of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Partition {
    index: u32,
    count: u32,
}

/// A partition that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("partition {index} of {count}: a cluster has 1 to {PARTITIONS_MAX} partitions, numbered from 0")]
pub struct InvalidPartition {
    /// The index asked for.
    pub index: u32,
    /// The count asked for.
    pub count: u32,
}

impl Default for Partition {
    fn default() -> Partition {
        Partition::whole()
    }
}

impl Partition {
    /// The only partition of an unpartitioned engine: it holds everything.
    pub const fn whole() -> Partition {
        Partition { index: 0, count: 1 }
    }

    /// Partition `index` of `count`.
    ///
    /// # Errors
    ///
    /// If `count` is 0 or above [`PARTITIONS_MAX`], or `index` is not below `count`.
    pub fn new(index: u32, count: u32) -> Result<Partition, InvalidPartition> {
        if count == 0 || count > PARTITIONS_MAX || index >= count {
            return Err(InvalidPartition { index, count });
        }
        Ok(Partition { index, count })
    }

    /// This partition's index.
    pub fn index(self) -> u32 {
        self.index
    }

    /// How many partitions there are.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether this is the only partition.
    pub fn is_whole(self) -> bool {
        self.count == 1
    }

    /// The partition of `user`'s wallet.
    pub fn of_user(self, user: UserId) -> u32 {
        place(user.0, self.count)
    }

    /// The partition of a packet.
    pub fn of_packet(self, packet: PacketId) -> u32 {
        place(packet.0, self.count)
    }

    /// The partition of a transfer.
    pub fn of_transfer(self, transfer: TransferId) -> u32 {
        place(transfer.0, self.count)
    }

    /// Whether `user`'s wallet is in this partition.
    pub fn holds_user(self, user: UserId) -> bool {
        self.of_user(user) == self.index
    }

    /// Whether a packet is in this partition.
    pub fn holds_packet(self, packet: PacketId) -> bool {
        self.of_packet(packet) == self.index
    }

    /// Whether a transfer is in this partition.
    pub fn holds_transfer(self, transfer: TransferId) -> bool {
        self.of_transfer(transfer) == self.index
    }
}

/// The partition of id `id` among `count`: splitmix64 of the id, reduced. Pinned by a test: it
/// decides where every journaled thing lives.
fn place(id: u64, count: u32) -> u32 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(count.max(1))) as u32
}

/// Whether `r` is fresh in partition `me` (the next after `applied` from its sender), a repeat,
/// or refused.
pub(crate) fn check(me: Partition, r: &Remittance, applied: u64) -> Result<bool, RemittanceError> {
    // A packet's or transfer's remittance carries its sender and amount, and lands where its
    // id places it, from its sender's partition; or, sent back, lands in its sender's
    // partition from where its id places it.
    let carried = |placed: u32, sender: UserId, amount: Option<Amount>| {
        let home = me.of_user(sender);
        let lands = match r.returned {
            None => placed == me.index && home == r.from,
            Some(_) => home == me.index && placed == r.from,
        };
        sender == r.user && amount == Some(r.amount) && lands
    };
    let lands_here = match (&r.packet, &r.transfer) {
        (Some(sent), None) => carried(me.of_packet(sent.spec.id), sent.spec.sender, sent.spec.split.total()),
        (None, Some(sent)) => carried(me.of_transfer(sent.spec.id), sent.spec.from, Some(sent.spec.amount)),
        (None, None) => me.holds_user(r.user) && r.returned.is_none(),
        (Some(_), Some(_)) => false,
    };
    if r.to != me.index || r.from == me.index || r.from >= me.count || !lands_here || r.seq == 0 {
        let (from, to, seq, user, partition) = (r.from, r.to, r.seq, r.user, me.index);
        return Err(RemittanceError::Misrouted { from, to, seq, user, partition });
    }
    match r.seq {
        seq if seq <= applied => Ok(false),
        seq if seq == applied + 1 => Ok(true),
        seq => Err(RemittanceError::Gap { from: r.from, to: r.to, seq, expected: applied + 1 }),
    }
}

/// Why a partition refused remittances.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum RemittanceError {
    /// The remittance is for another partition, comes from this one or from none, or credits a
    /// wallet this partition does not hold.
    #[error("remittance {from}→{to} #{seq} for user {user} does not belong to partition {partition}")]
    Misrouted {
        /// The sender it names.
        from: u32,
        /// The receiver it names.
        to: u32,
        /// Its number.
        seq: u64,
        /// The wallet it names.
        user: UserId,
        /// This partition.
        partition: u32,
    },
    /// Numbers were skipped: the remittances from `from` are applied in order.
    #[error("remittance {from}→{to} #{seq} arrived before #{expected}")]
    Gap {
        /// The sender.
        from: u32,
        /// This partition.
        to: u32,
        /// The number that arrived.
        seq: u64,
        /// The number expected next.
        expected: u64,
    },
    /// An amount no remittance can carry: zero, or more than any share or transfer.
    #[error("a remittance of {amount} cannot be: no share or transfer is zero or that large")]
    InvalidAmount {
        /// The amount.
        amount: Amount,
    },
    /// More remittances in one call than [`REMITTANCES_PER_CALL_MAX`].
    #[error("{count} remittances in one call; the limit is {max}")]
    TooMany {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The engine has stopped after a failure; nothing changed.
    #[error("the engine stopped after a failure; nothing changed")]
    Unavailable,
    /// Storage failed while these were recorded: some may have been applied. Send them again
    /// once the engine runs again: repeats change nothing.
    #[error("outcome unknown: the engine failed while recording these; send them again once it runs again")]
    OutcomeUnknown,
}

/// How much went one way between two partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Flow {
    /// The other partition.
    pub peer: u32,
    /// Remittances (the highest number).
    pub count: u64,
    /// Their sum.
    pub amount: Amount,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_pinned_and_spread() {
        // Pinned: it decides where every journaled thing lives.
        let p = Partition::new(0, 64).unwrap();
        assert_eq!([0, 1, 2, 3].map(|u| p.of_user(UserId(u))), [PINNED[0], PINNED[1], PINNED[2], PINNED[3]]);
        let mut counts = [0u32; 8];
        let p = Partition::new(0, 8).unwrap();
        (0..8000).for_each(|u| counts[p.of_user(UserId(u)) as usize] += 1);
        assert!(counts.iter().all(|c| (900..=1100).contains(c)), "{counts:?}");
        assert!((0..1000).all(|u| Partition::whole().holds_user(UserId(u))));
    }

    const PINNED: [u32; 4] = [47, 1, 14, 45];

    #[test]
    fn only_real_partitions_exist() {
        assert!(Partition::new(0, 0).is_err());
        assert!(Partition::new(3, 3).is_err());
        assert!(Partition::new(0, PARTITIONS_MAX + 1).is_err());
        assert_eq!(Partition::new(2, 3).unwrap().index(), 2);
    }
}
