//! Records: every state change of the engine, as plain data, and their binary encoding.
//!
//! A [`Record`] is what an actor decided; the same record is applied to the live state, written
//! to the journal, and applied again by replay, snapshots and `hongbao audit` (see
//! `replay.rs`). [`NewPacket`] and [`PacketSent`] live here because a send *is* a record: the
//! request, its seed and its deadline, in one shape used everywhere.
//!
//! # Encoding
//!
//! A tag byte, then fixed-width little-endian fields, strings and lists prefixed by their
//! `u32` length. Compact (a claim is 37 bytes), stable (the tags and layouts below are the
//! format; a change needs a new tag), and decoded without trusting lengths (every read is
//! bounds-checked). [`Reader`] and [`put_u64s`] are the one byte reader and writer of the
//! crate; snapshots use them too.

use thiserror::Error;

use crate::clock::Timestamp;
use crate::money::{Amount, GroupId, OpId, PacketId, UserId};
use crate::split::Split;

const DEPOSIT: u8 = 1;
const WITHDRAWAL: u8 = 2;
const ROSTER: u8 = 3;
const PACKET_SENT: u8 = 4;
const CLAIM: u8 = 5;
const SOLD_OUT: u8 = 6;
const EXPIRED: u8 = 7;
const MEMBERS_ADDED: u8 = 8;
const MEMBERS_REMOVED: u8 = 9;
/// A send that records its per-share cap (format version 2); tag 4 is the older send record
/// without it.
const PACKET_SENT_CAPPED: u8 = 10;
const RETIRED: u8 = 11;
/// Deposits and withdrawals with the time they were applied (format version 2); tags 1 and 2
/// are the older records without it.
const DEPOSIT_AT: u8 = 12;
const WITHDRAWAL_AT: u8 = 13;

/// Most ids one retirement record lists (so that it stays far within the record bound).
pub(crate) const RETIRED_IDS_MAX: usize = 100_000;

const SPLIT_LUCKY: u8 = 1;
const SPLIT_FIXED: u8 = 2;
const SPLIT_EXCLUSIVE: u8 = 3;

/// What a sender asks for. The same id with the same fields is the same send (a retry).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NewPacket {
    /// Chosen by the caller, so that a retried send is applied once.
    pub id: PacketId,
    /// Who pays; must be a member of `group`.
    pub sender: UserId,
    /// Whose members may grab it.
    pub group: GroupId,
    /// How the total divides.
    pub split: Split,
    /// Shown with the packet (恭喜发财).
    pub greeting: String,
}

/// A packet as sent: the request with every parameter its shares depend on (the seed of its
/// draw, the per-share cap it was sent under) and its deadline. This is the payload of
/// [`Record::PacketSent`], and the part of every packet state that never changes: a journal
/// replays each packet as it was sent, whatever the engine's configuration is later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketSent {
    /// What the sender asked for.
    pub spec: NewPacket,
    /// Seed of the lucky draw's random stream.
    pub seed: u64,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When its remainder is refunded.
    pub expires_at: Timestamp,
    /// The per-share cap, in fen, its shares are drawn under. Zero in a record written before
    /// the cap was recorded (format version 1): replay then uses the cap it is configured with.
    pub share_fen_max: u64,
}

impl PacketSent {
    /// This send with `cap` as its cap if its record did not carry one.
    pub(crate) fn with_legacy_cap(mut self, cap: u64) -> PacketSent {
        if self.share_fen_max == 0 {
            self.share_fen_max = cap;
        }
        self
    }
}

/// One state change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// Money entered a wallet from outside.
    Deposit {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// When it was applied (zero in records of format version 1): its id is remembered
        /// for `op_retention_secs` from then.
        at: Timestamp,
    },
    /// Money left a wallet to the outside.
    Withdrawal {
        /// Idempotency key.
        op: OpId,
        /// The wallet.
        user: UserId,
        /// How much.
        amount: Amount,
        /// When it was applied (zero in records of format version 1).
        at: Timestamp,
    },
    /// A group's roster was replaced.
    Roster {
        /// The group.
        group: GroupId,
        /// Its members, sorted.
        members: Vec<UserId>,
    },
    /// Members joined a group.
    MembersAdded {
        /// The group.
        group: GroupId,
        /// Who joined, sorted.
        members: Vec<UserId>,
    },
    /// Members left a group.
    MembersRemoved {
        /// The group.
        group: GroupId,
        /// Who left, sorted.
        members: Vec<UserId>,
    },
    /// A packet was sent: its total left the sender's wallet for escrow.
    PacketSent(PacketSent),
    /// A member won a share; it moved from escrow to the member's wallet.
    Claim {
        /// The packet.
        packet: PacketId,
        /// The winner.
        user: UserId,
        /// The share.
        amount: Amount,
        /// 1 for the first share taken.
        position: u32,
        /// When.
        at: Timestamp,
    },
    /// The packet's last share was taken. Written by engines before format 2's last change;
    /// now derived from the last claim, and still read (and checked) on replay.
    SoldOut {
        /// The packet.
        packet: PacketId,
    },
    /// The packet expired; its remainder went back to the sender.
    Expired {
        /// The packet.
        packet: PacketId,
        /// The refund (zero is not recorded: a sold-out packet has nothing to refund).
        refund: Amount,
        /// When.
        at: Timestamp,
    },
    /// Closed packets and operation ids past their retention were dropped: from memory and
    /// from later snapshots. A retired packet id is unknown from then on, and a retired
    /// operation id may be used again.
    Retired {
        /// Closed packets dropped.
        packets: Vec<PacketId>,
        /// Operation ids forgotten.
        ops: Vec<OpId>,
    },
}

impl Record {
    /// The packet a record is about, if any.
    pub fn packet(&self) -> Option<PacketId> {
        match self {
            Record::PacketSent(sent) => Some(sent.spec.id),
            Record::Claim { packet, .. } | Record::SoldOut { packet } | Record::Expired { packet, .. } => Some(*packet),
            Record::Deposit { .. }
            | Record::Withdrawal { .. }
            | Record::Roster { .. }
            | Record::MembersAdded { .. }
            | Record::MembersRemoved { .. }
            | Record::Retired { .. } => None,
        }
    }
}

/// Bytes that are not what they claim to be: a record, or a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes ended inside a field.
    #[error("truncated")]
    Truncated,
    /// An unknown record or split tag.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A greeting that is not UTF-8.
    #[error("greeting is not UTF-8")]
    BadText,
    /// Bytes left over after the record.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A checksum or magic that does not match.
    #[error("{0}")]
    Damaged(&'static str),
}

/// Appends each value as 8 little-endian bytes.
pub(crate) fn put_u64s(out: &mut Vec<u8>, values: &[u64]) {
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn put_ids(out: &mut Vec<u8>, ids: &[UserId]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    ids.iter().for_each(|m| out.extend_from_slice(&m.0.to_le_bytes()));
}

/// Appends the encoding of `record` to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Deposit { op, user, amount, at } => {
            out.push(DEPOSIT_AT);
            put_u64s(out, &[op.0, user.0, amount.as_fen(), at.0]);
        }
        Record::Withdrawal { op, user, amount, at } => {
            out.push(WITHDRAWAL_AT);
            put_u64s(out, &[op.0, user.0, amount.as_fen(), at.0]);
        }
        Record::Retired { packets, ops } => {
            out.push(RETIRED);
            for ids in [packets.iter().map(|p| p.0).collect::<Vec<_>>(), ops.iter().map(|o| o.0).collect()] {
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                put_u64s(out, &ids);
            }
        }
        Record::Roster { group, members }
        | Record::MembersAdded { group, members }
        | Record::MembersRemoved { group, members } => {
            out.push(match record {
                Record::Roster { .. } => ROSTER,
                Record::MembersAdded { .. } => MEMBERS_ADDED,
                _ => MEMBERS_REMOVED,
            });
            put_u64s(out, &[group.0]);
            put_ids(out, members);
        }
        Record::PacketSent(PacketSent { spec, seed, sent_at, expires_at, share_fen_max }) => {
            out.push(PACKET_SENT_CAPPED);
            put_u64s(out, &[spec.id.0, spec.sender.0, spec.group.0, *seed, sent_at.0, expires_at.0, *share_fen_max]);
            match spec.split {
                Split::Lucky { total, shares } => {
                    out.push(SPLIT_LUCKY);
                    put_u64s(out, &[total.as_fen(), u64::from(shares)]);
                }
                Split::Fixed { each, shares } => {
                    out.push(SPLIT_FIXED);
                    put_u64s(out, &[each.as_fen(), u64::from(shares)]);
                }
                Split::Exclusive { to, amount } => {
                    out.push(SPLIT_EXCLUSIVE);
                    put_u64s(out, &[to.0, amount.as_fen()]);
                }
            }
            out.extend_from_slice(&(spec.greeting.len() as u32).to_le_bytes());
            out.extend_from_slice(spec.greeting.as_bytes());
        }
        Record::Claim { packet, user, amount, position, at } => {
            out.push(CLAIM);
            put_u64s(out, &[packet.0, user.0, amount.as_fen()]);
            out.extend_from_slice(&position.to_le_bytes());
            put_u64s(out, &[at.0]);
        }
        Record::SoldOut { packet } => {
            out.push(SOLD_OUT);
            put_u64s(out, &[packet.0]);
        }
        Record::Expired { packet, refund, at } => {
            out.push(EXPIRED);
            put_u64s(out, &[packet.0, refund.as_fen(), at.0]);
        }
    }
}

/// A bounds-checked cursor over bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A `u64` count of items of at least `item_bytes` each, refused if the bytes left cannot
    /// hold them: a damaged count never becomes a huge allocation.
    pub(crate) fn count(&mut self, item_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u64()?).map_err(|_| DecodeError::Truncated)?;
        self.check_room(n, item_bytes)?;
        Ok(n)
    }

    fn check_room(&self, n: usize, item_bytes: usize) -> Result<(), DecodeError> {
        if self.bytes.len() < n.saturating_mul(item_bytes) {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }

    fn ids(&mut self) -> Result<Vec<UserId>, DecodeError> {
        let n = self.u32()? as usize;
        self.check_room(n, 8)?;
        (0..n).map(|_| self.u64().map(UserId)).collect()
    }

    /// Whether every byte was read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Decodes one record that fills `bytes` exactly.
///
/// # Errors
///
/// [`DecodeError`] for a truncated, unknown or over-long payload.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader::new(bytes);
    let record = decode_from(&mut r)?;
    r.finish()?;
    Ok(record)
}

fn decode_from(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    Ok(match r.u8()? {
        tag @ (DEPOSIT | DEPOSIT_AT | WITHDRAWAL | WITHDRAWAL_AT) => {
            let (op, user, amount) = (OpId(r.u64()?), UserId(r.u64()?), Amount::fen(r.u64()?));
            let at = Timestamp(if matches!(tag, DEPOSIT_AT | WITHDRAWAL_AT) { r.u64()? } else { 0 });
            match tag {
                DEPOSIT | DEPOSIT_AT => Record::Deposit { op, user, amount, at },
                _ => Record::Withdrawal { op, user, amount, at },
            }
        }
        RETIRED => {
            let packets = r.ids()?.into_iter().map(|id| PacketId(id.0)).collect();
            let ops = r.ids()?.into_iter().map(|id| OpId(id.0)).collect();
            Record::Retired { packets, ops }
        }
        ROSTER => Record::Roster { group: GroupId(r.u64()?), members: r.ids()? },
        MEMBERS_ADDED => Record::MembersAdded { group: GroupId(r.u64()?), members: r.ids()? },
        MEMBERS_REMOVED => Record::MembersRemoved { group: GroupId(r.u64()?), members: r.ids()? },
        tag @ (PACKET_SENT | PACKET_SENT_CAPPED) => {
            let (id, sender, group) = (PacketId(r.u64()?), UserId(r.u64()?), GroupId(r.u64()?));
            let (seed, sent_at, expires_at) = (r.u64()?, Timestamp(r.u64()?), Timestamp(r.u64()?));
            let share_fen_max = if tag == PACKET_SENT_CAPPED { r.u64()? } else { 0 };
            let split = match r.u8()? {
                SPLIT_LUCKY => Split::Lucky { total: Amount::fen(r.u64()?), shares: r.u64()? as u32 },
                SPLIT_FIXED => Split::Fixed { each: Amount::fen(r.u64()?), shares: r.u64()? as u32 },
                SPLIT_EXCLUSIVE => Split::Exclusive { to: UserId(r.u64()?), amount: Amount::fen(r.u64()?) },
                tag => return Err(DecodeError::UnknownTag(tag)),
            };
            let len = r.u32()? as usize;
            let greeting = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| DecodeError::BadText)?;
            let spec = NewPacket { id, sender, group, split, greeting };
            Record::PacketSent(PacketSent { spec, seed, sent_at, expires_at, share_fen_max })
        }
        CLAIM => Record::Claim {
            packet: PacketId(r.u64()?),
            user: UserId(r.u64()?),
            amount: Amount::fen(r.u64()?),
            position: r.u32()?,
            at: Timestamp(r.u64()?),
        },
        SOLD_OUT => Record::SoldOut { packet: PacketId(r.u64()?) },
        EXPIRED => {
            Record::Expired { packet: PacketId(r.u64()?), refund: Amount::fen(r.u64()?), at: Timestamp(r.u64()?) }
        }
        tag => return Err(DecodeError::UnknownTag(tag)),
    })
}

/// Encodes a record with its length in front, for containers of many records (snapshots).
pub(crate) fn encode_prefixed(record: &Record, out: &mut Vec<u8>) {
    let at = out.len();
    put_u64s(out, &[0]);
    encode(record, out);
    let len = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

/// Decodes a record written by [`encode_prefixed`].
pub(crate) fn decode_prefixed(r: &mut Reader<'_>) -> Result<Record, DecodeError> {
    let len = r.count(1)?;
    decode(r.take(len)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sent(id: u64, split: Split, greeting: &str, seed: u64) -> Record {
        Record::PacketSent(PacketSent {
            spec: NewPacket {
                id: PacketId(id),
                sender: UserId(1),
                group: GroupId(7),
                split,
                greeting: greeting.into(),
            },
            seed,
            sent_at: Timestamp(5),
            expires_at: Timestamp(86_400_005),
            share_fen_max: 20_000,
        })
    }

    pub(crate) fn samples() -> Vec<Record> {
        vec![
            Record::Deposit { op: OpId(1), user: UserId(2), amount: Amount::fen(3), at: Timestamp(4) },
            Record::Withdrawal { op: OpId(u64::MAX), user: UserId(0), amount: Amount::fen(u64::MAX), at: Timestamp(5) },
            Record::Retired { packets: vec![PacketId(1), PacketId(2)], ops: vec![OpId(3)] },
            Record::Retired { packets: vec![], ops: vec![] },
            Record::Roster { group: GroupId(7), members: vec![UserId(1), UserId(9)] },
            Record::Roster { group: GroupId(8), members: vec![] },
            Record::MembersAdded { group: GroupId(7), members: vec![UserId(3)] },
            Record::MembersRemoved { group: GroupId(7), members: vec![UserId(1), UserId(3)] },
            sent(42, Split::Lucky { total: Amount::yuan(100), shares: 100 }, "恭喜发财", 0xDEAD_BEEF),
            sent(43, Split::Fixed { each: Amount::fen(88), shares: 3 }, "", 1),
            sent(44, Split::Exclusive { to: UserId(3), amount: Amount::fen(9) }, "给你", 2),
            Record::Claim {
                packet: PacketId(42),
                user: UserId(9),
                amount: Amount::fen(123),
                position: 1,
                at: Timestamp(7),
            },
            Record::SoldOut { packet: PacketId(42) },
            Record::Expired { packet: PacketId(43), refund: Amount::fen(176), at: Timestamp(8) },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for record in samples() {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            assert_eq!(decode(&bytes), Ok(record.clone()), "{record:?}");
            let mut prefixed = Vec::new();
            encode_prefixed(&record, &mut prefixed);
            assert_eq!(decode_prefixed(&mut Reader::new(&prefixed)), Ok(record.clone()));
        }
    }

    #[test]
    fn a_send_of_format_1_reads_with_its_cap_unrecorded() {
        let Record::PacketSent(sent) = sent(42, Split::Fixed { each: Amount::fen(1), shares: 1 }, "x", 3) else {
            unreachable!()
        };
        let mut bytes = Vec::new();
        encode(&Record::PacketSent(sent.clone()), &mut bytes);
        // Format 1: tag 4 and no cap after the deadline.
        bytes[0] = PACKET_SENT;
        bytes.drain(1 + 6 * 8..1 + 7 * 8);
        let Ok(Record::PacketSent(old)) = decode(&bytes) else { panic!("decodes") };
        assert_eq!(old.share_fen_max, 0);
        assert_eq!(old.with_legacy_cap(20_000), sent);
    }

    #[test]
    fn a_claim_is_compact() {
        let claim = samples().into_iter().find(|r| matches!(r, Record::Claim { .. })).unwrap();
        let mut bytes = Vec::new();
        encode(&claim, &mut bytes);
        assert_eq!(bytes.len(), 37);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        for record in samples() {
            let mut bytes = Vec::new();
            encode(&record, &mut bytes);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{record:?} cut at {cut}");
            }
            bytes.push(0);
            assert_eq!(decode(&bytes), Err(DecodeError::Trailing(1)));
        }
        assert_eq!(decode(&[99]), Err(DecodeError::UnknownTag(99)));
        // A roster claiming four billion members in a few bytes is refused, not allocated.
        let mut bytes = vec![ROSTER];
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated));
    }
}
