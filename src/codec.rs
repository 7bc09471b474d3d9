//! The journal's binary encoding of a [`Record`]: a tag byte, then fixed-width little-endian
//! fields, strings and lists prefixed by their `u32` length. Compact (a claim is 37 bytes),
//! stable (the tags and layouts below are the format; a change needs a new tag), and decoded
//! without trusting lengths (every read is bounds-checked).

use thiserror::Error;

use crate::clock::Timestamp;
use crate::journal::Record;
use crate::money::{Amount, GroupId, OpId, PacketId, UserId};
use crate::split::Split;

const DEPOSIT: u8 = 1;
const WITHDRAWAL: u8 = 2;
const ROSTER: u8 = 3;
const PACKET_SENT: u8 = 4;
const CLAIM: u8 = 5;
const SOLD_OUT: u8 = 6;
const EXPIRED: u8 = 7;

const SPLIT_LUCKY: u8 = 1;
const SPLIT_FIXED: u8 = 2;
const SPLIT_EXCLUSIVE: u8 = 3;

/// A payload that is not a record.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The payload ended inside a field.
    #[error("record truncated")]
    Truncated,
    /// An unknown record or split tag.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A greeting that is not UTF-8.
    #[error("greeting is not UTF-8")]
    BadText,
    /// Bytes left over after the record.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// Appends the encoding of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let u64s = |out: &mut Vec<u8>, vs: &[u64]| vs.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    match record {
        Record::Deposit { op, user, amount } => {
            out.push(DEPOSIT);
            u64s(out, &[op.0, user.0, amount.as_fen()]);
        }
        Record::Withdrawal { op, user, amount } => {
            out.push(WITHDRAWAL);
            u64s(out, &[op.0, user.0, amount.as_fen()]);
        }
        Record::Roster { group, members } => {
            out.push(ROSTER);
            u64s(out, &[group.0]);
            out.extend_from_slice(&(members.len() as u32).to_le_bytes());
            members.iter().for_each(|m| out.extend_from_slice(&m.0.to_le_bytes()));
        }
        Record::PacketSent { packet, sender, group, split, seed, greeting, sent_at, expires_at } => {
            out.push(PACKET_SENT);
            u64s(out, &[packet.0, sender.0, group.0, *seed, sent_at.0, expires_at.0]);
            match *split {
                Split::Lucky { total, shares } => {
                    out.push(SPLIT_LUCKY);
                    u64s(out, &[total.as_fen(), u64::from(shares)]);
                }
                Split::Fixed { each, shares } => {
                    out.push(SPLIT_FIXED);
                    u64s(out, &[each.as_fen(), u64::from(shares)]);
                }
                Split::Exclusive { to, amount } => {
                    out.push(SPLIT_EXCLUSIVE);
                    u64s(out, &[to.0, amount.as_fen()]);
                }
            }
            out.extend_from_slice(&(greeting.len() as u32).to_le_bytes());
            out.extend_from_slice(greeting.as_bytes());
        }
        Record::Claim { packet, user, amount, position, at } => {
            out.push(CLAIM);
            u64s(out, &[packet.0, user.0, amount.as_fen()]);
            out.extend_from_slice(&position.to_le_bytes());
            u64s(out, &[at.0]);
        }
        Record::SoldOut { packet } => {
            out.push(SOLD_OUT);
            u64s(out, &[packet.0]);
        }
        Record::Expired { packet, refund, at } => {
            out.push(EXPIRED);
            u64s(out, &[packet.0, refund.as_fen(), at.0]);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

/// Decodes one record that fills `bytes` exactly.
///
/// # Errors
///
/// [`DecodeError`] for a truncated, unknown or over-long payload.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let mut r = Reader { bytes };
    let record = match r.u8()? {
        DEPOSIT => Record::Deposit { op: OpId(r.u64()?), user: UserId(r.u64()?), amount: Amount::fen(r.u64()?) },
        WITHDRAWAL => Record::Withdrawal { op: OpId(r.u64()?), user: UserId(r.u64()?), amount: Amount::fen(r.u64()?) },
        ROSTER => {
            let group = GroupId(r.u64()?);
            let n = r.u32()? as usize;
            // Bounded by the payload itself: each member is 8 bytes that must be there.
            if r.bytes.len() < n.saturating_mul(8) {
                return Err(DecodeError::Truncated);
            }
            let members = (0..n).map(|_| r.u64().map(UserId)).collect::<Result<_, _>>()?;
            Record::Roster { group, members }
        }
        PACKET_SENT => {
            let (packet, sender, group) = (PacketId(r.u64()?), UserId(r.u64()?), GroupId(r.u64()?));
            let (seed, sent_at, expires_at) = (r.u64()?, Timestamp(r.u64()?), Timestamp(r.u64()?));
            let split = match r.u8()? {
                SPLIT_LUCKY => Split::Lucky { total: Amount::fen(r.u64()?), shares: r.u64()? as u32 },
                SPLIT_FIXED => Split::Fixed { each: Amount::fen(r.u64()?), shares: r.u64()? as u32 },
                SPLIT_EXCLUSIVE => Split::Exclusive { to: UserId(r.u64()?), amount: Amount::fen(r.u64()?) },
                tag => return Err(DecodeError::UnknownTag(tag)),
            };
            let len = r.u32()? as usize;
            let greeting = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| DecodeError::BadText)?;
            Record::PacketSent { packet, sender, group, split, seed, greeting, sent_at, expires_at }
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
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::Trailing(r.bytes.len()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn samples() -> Vec<Record> {
        vec![
            Record::Deposit { op: OpId(1), user: UserId(2), amount: Amount::fen(3) },
            Record::Withdrawal { op: OpId(u64::MAX), user: UserId(0), amount: Amount::fen(u64::MAX) },
            Record::Roster { group: GroupId(7), members: vec![UserId(1), UserId(9)] },
            Record::Roster { group: GroupId(8), members: vec![] },
            Record::PacketSent {
                packet: PacketId(42),
                sender: UserId(1),
                group: GroupId(7),
                split: Split::Lucky { total: Amount::yuan(100), shares: 100 },
                seed: 0xDEAD_BEEF,
                greeting: "恭喜发财".into(),
                sent_at: Timestamp(5),
                expires_at: Timestamp(86_400_005),
            },
            Record::PacketSent {
                packet: PacketId(43),
                sender: UserId(1),
                group: GroupId(7),
                split: Split::Fixed { each: Amount::fen(88), shares: 3 },
                seed: 1,
                greeting: String::new(),
                sent_at: Timestamp(5),
                expires_at: Timestamp(6),
            },
            Record::PacketSent {
                packet: PacketId(44),
                sender: UserId(1),
                group: GroupId(7),
                split: Split::Exclusive { to: UserId(3), amount: Amount::fen(9) },
                seed: 2,
                greeting: "给你".into(),
                sent_at: Timestamp(5),
                expires_at: Timestamp(6),
            },
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
        }
    }

    #[test]
    fn a_claim_is_compact() {
        let mut bytes = Vec::new();
        encode(&samples()[7], &mut bytes);
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
