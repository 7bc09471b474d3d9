//! Snapshots, so a restart replays a snapshot plus the records after it instead of the whole
//! history.
//!
//! A snapshot file covers the records before position N. It holds the magic `HBSNAP06` (this
//! build also reads `HBSNAP01`, whose sends do not record their cap, `HBSNAP02`, from before
//! cooling-off, daily caps and transfers, `HBSNAP03`, from before partitions, `HBSNAP04`,
//! from before packets sent across partitions, and `HBSNAP05`, from before transfers sent
//! across partitions and sends that came back), N,
//! the hash of the last frame it covers (the chain continues: the next frame's `prev` must
//! equal it), the state's own encoding ([`Fold::encode`]), and a BLAKE3 hash of all of that.
//! It is written to a temporary file, synced and renamed, so a crash leaves either the old
//! snapshot or the new one, never half of one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::format::{self, Kind};
use super::{Fold, Restore};
use crate::record::{put_u64s, DecodeError, Reader};

/// The magic this build writes: version 6, whose remittances may carry packets and transfers,
/// and whose sends from the partition may have come back (same layout as version 5).
const MAGIC: &[u8; 8] = b"HBSNAP06";
/// The magics this build reads, oldest first (the index is the version less one).
const MAGICS: [&[u8; 8]; 6] = [b"HBSNAP01", b"HBSNAP02", b"HBSNAP03", b"HBSNAP04", b"HBSNAP05", MAGIC];

/// A loaded snapshot.
#[derive(Debug)]
pub(crate) struct Snapshot<S> {
    /// Records covered: the snapshot is the state after records `0..seq`.
    pub seq: u64,
    /// Hash of the last covered frame.
    pub last_hash: [u8; 32],
    /// The state.
    pub state: S,
}

/// Encodes a snapshot of `state` after `seq` records, the last hashed `last_hash`.
pub(crate) fn encode(seq: u64, last_hash: &[u8; 32], state: &dyn Fold) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(MAGIC);
    put_u64s(&mut out, &[seq]);
    out.extend_from_slice(last_hash);
    state.encode(&mut out);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out
}

/// Decodes a snapshot, checking its hash.
///
/// # Errors
///
/// [`DecodeError`] if it is damaged or not a snapshot.
pub(crate) fn decode<S: Restore>(empty: &S, bytes: &[u8]) -> Result<Snapshot<S>, DecodeError> {
    let version =
        match MAGICS.iter().position(|m| bytes.len() >= MAGIC.len() + 8 + 32 + 32 && &bytes[..MAGIC.len()] == *m) {
            Some(index) => index as u8 + 1,
            None => return Err(DecodeError::Damaged("not a snapshot")),
        };
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != hash {
        return Err(DecodeError::Damaged("snapshot hash mismatch"));
    }
    let mut r = Reader::new(&body[MAGIC.len()..]);
    let seq = r.u64()?;
    let last_hash: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
    let state = empty.decode(version, r.take(body.len() - MAGIC.len() - 40)?)?;
    Ok(Snapshot { seq, last_hash, state })
}

/// Writes a snapshot durably into `dir` (temporary file, sync, rename, sync the directory).
///
/// # Errors
///
/// The I/O error.
pub(crate) fn write(dir: &Path, seq: u64, last_hash: &[u8; 32], state: &dyn Fold) -> std::io::Result<()> {
    let bytes = encode(seq, last_hash, state);
    let path = format::path(dir, Kind::Snapshot, seq);
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// The newest snapshot in `dir` that reads back intact, if any. A damaged newest snapshot is
/// passed over (with a warning) for an older one: the segments after an older snapshot are
/// only deleted once a newer one is safely written.
///
/// # Errors
///
/// If the directory cannot be listed.
pub(crate) fn latest<S: Restore>(dir: &Path, empty: &S) -> Result<Option<Snapshot<S>>, super::JournalError> {
    let mut found = format::list(dir, Kind::Snapshot)?;
    while let Some((_, path)) = found.pop() {
        match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| decode(empty, &b).map_err(|e| e.to_string())) {
            Ok(s) => return Ok(Some(s)),
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), error = %e, "snapshot unreadable; trying an older one")
            }
        }
    }
    Ok(None)
}
