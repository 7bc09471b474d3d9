//! Snapshots of the state a journal describes, so a restart replays a snapshot plus the
//! records after it instead of the whole history.
//!
//! A snapshot file `NNNNNNNNNNNNNNNNNNNN.hbs` covers the records before position N. It holds
//! the magic `HBSNAP01`, N, the hash of the last frame it covers (the chain continues: the
//! next frame's `prev` must equal it), the encoded [`Replica`], and a BLAKE3 hash of all of
//! that. It is written to a temporary file, synced and renamed, so a crash leaves either the
//! old snapshot or the new one, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{self, DecodeError};
use crate::journal::Record;
use crate::money::{Amount, GroupId, OpId, PacketId, UserId};
use crate::packet::ClaimView;
use crate::replay::{AppliedOp, ReplayedPacket, Replica};
use crate::Timestamp;

const MAGIC: &[u8; 8] = b"HBSNAP01";

/// The file name of the snapshot covering records before `seq`.
pub fn name(seq: u64) -> String {
    format!("{seq:020}.hbs")
}

/// A loaded snapshot.
#[derive(Debug)]
pub struct Snapshot {
    /// Records covered: the snapshot is the state after records `0..seq`.
    pub seq: u64,
    /// Hash of the last covered frame.
    pub last_hash: [u8; 32],
    /// The state.
    pub replica: Replica,
}

fn put(out: &mut Vec<u8>, vs: &[u64]) {
    vs.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

/// Encodes a snapshot.
pub fn encode(seq: u64, last_hash: &[u8; 32], r: &Replica) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    put(&mut out, &[seq]);
    out.extend_from_slice(last_hash);
    put(&mut out, &[r.deposited, r.withdrawn, r.records]);
    let mut balances: Vec<_> = r.balances.iter().collect();
    balances.sort_unstable();
    put(&mut out, &[balances.len() as u64]);
    for (u, fen) in balances {
        put(&mut out, &[u.0, *fen]);
    }
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_unstable_by_key(|(op, _)| **op);
    put(&mut out, &[ops.len() as u64]);
    for (op, a) in ops {
        put(&mut out, &[op.0, u64::from(a.deposit), a.user.0, a.amount.as_fen(), a.balance_after.as_fen()]);
    }
    let mut rosters: Vec<_> = r.rosters.iter().collect();
    rosters.sort_unstable_by_key(|(g, _)| **g);
    put(&mut out, &[rosters.len() as u64]);
    for (g, members) in rosters {
        put(&mut out, &[g.0, members.len() as u64]);
        members.iter().for_each(|m| put(&mut out, &[m.0]));
    }
    put(&mut out, &[r.packets.len() as u64]);
    let mut sent = Vec::with_capacity(128);
    for p in r.packets.values() {
        sent.clear();
        let record = Record::PacketSent {
            packet: p.spec.id,
            sender: p.spec.sender,
            group: p.spec.group,
            split: p.spec.split.clone(),
            seed: p.seed,
            greeting: p.spec.greeting.clone(),
            sent_at: p.sent_at,
            expires_at: p.expires_at,
        };
        codec::encode(&record, &mut sent);
        put(&mut out, &[sent.len() as u64]);
        out.extend_from_slice(&sent);
        put(&mut out, &[p.claims.len() as u64]);
        for c in &p.claims {
            put(&mut out, &[c.user.0, c.amount.as_fen(), u64::from(c.position), c.at.0]);
        }
        put(&mut out, &[u64::from(p.refunded.is_some()), p.refunded.map_or(0, |a| a.as_fen())]);
    }
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    /// A count of items of at least `item_bytes` each, refused if the data cannot hold them.
    fn count(&mut self, item_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u64()? as usize;
        if self.0.len() < n.saturating_mul(item_bytes) {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
}

/// Decodes a snapshot, checking its hash.
///
/// # Errors
///
/// [`DecodeError`] if it is damaged or not a snapshot.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    if bytes.len() < MAGIC.len() + 8 + 32 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::Truncated);
    }
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != hash {
        return Err(DecodeError::UnknownTag(0));
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let seq = r.u64()?;
    let last_hash: [u8; 32] = r.bytes(32)?.try_into().expect("32 bytes");
    let mut replica = Replica { deposited: r.u64()?, withdrawn: r.u64()?, records: r.u64()?, ..Replica::default() };
    for _ in 0..r.count(16)? {
        replica.balances.insert(UserId(r.u64()?), r.u64()?);
    }
    for _ in 0..r.count(40)? {
        let op = OpId(r.u64()?);
        let deposit = r.u64()? == 1;
        let a = AppliedOp {
            deposit,
            user: UserId(r.u64()?),
            amount: Amount::fen(r.u64()?),
            balance_after: Amount::fen(r.u64()?),
        };
        replica.ops.insert(op, a);
    }
    for _ in 0..r.count(16)? {
        let group = GroupId(r.u64()?);
        let members = (0..r.count(8)?).map(|_| r.u64().map(UserId)).collect::<Result<_, _>>()?;
        replica.rosters.insert(group, members);
    }
    for _ in 0..r.count(24)? {
        let len = r.count(1)?;
        let Record::PacketSent { packet, sender, group, split, seed, greeting, sent_at, expires_at } =
            codec::decode(r.bytes(len)?)?
        else {
            return Err(DecodeError::UnknownTag(0));
        };
        let claims = (0..r.count(32)?)
            .map(|_| {
                Ok(ClaimView {
                    user: UserId(r.u64()?),
                    amount: Amount::fen(r.u64()?),
                    position: r.u64()? as u32,
                    at: Timestamp(r.u64()?),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let refunded = (r.u64()? == 1).then_some(());
        let refund = Amount::fen(r.u64()?);
        let spec = crate::packet::NewPacket { id: packet, sender, group, split, greeting };
        let p = ReplayedPacket { spec, seed, sent_at, expires_at, claims, refunded: refunded.map(|()| refund) };
        replica.packets.insert(PacketId(packet.0), p);
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(Snapshot { seq, last_hash, replica })
}

/// Writes a snapshot durably into `dir` (temporary file, sync, rename, sync the directory).
///
/// # Errors
///
/// The I/O error.
pub fn write(dir: &Path, seq: u64, last_hash: &[u8; 32], replica: &Replica) -> std::io::Result<PathBuf> {
    let bytes = encode(seq, last_hash, replica);
    let path = dir.join(name(seq));
    let tmp = dir.join(format!("{}.tmp", name(seq)));
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// The newest snapshot in `dir` that reads back intact, if any. A damaged newest snapshot is
/// passed over (with a warning) for an older one: the segments after an older snapshot are
/// only deleted once a newer one is safely written.
pub fn latest(dir: &Path) -> std::io::Result<Option<Snapshot>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "hbs"))
        .collect();
    found.sort();
    while let Some(path) = found.pop() {
        match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| decode(&b).map_err(|e| e.to_string())) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => eprintln!("hongbao: snapshot {} unreadable ({e}); trying an older one", path.display()),
        }
    }
    Ok(None)
}
