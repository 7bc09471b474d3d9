//! Reading a journal directory back: every frame's checksum and the hash chain, from the
//! first segment to the last, each record folded into a state.
//!
//! A frame cut short at the very end of the last segment — or one whose checksum fails and
//! that runs to the end of that segment — is a write torn by a crash: it is reported (and cut
//! by the writer when it opens the directory), and nothing it held was ever acknowledged. A
//! bad frame anywhere else is corruption: reading refuses, naming the segment and offset.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::format::{self, Frame, JournalError, Kind, GENESIS, SEGMENT_MAGIC};
use super::{snapshot, Restore};
use crate::record;

/// What reading a journal found.
#[derive(Debug)]
pub(crate) struct Recovered<S> {
    /// The state the records describe.
    pub state: S,
    /// Records read (the position the next record takes).
    pub records: u64,
    /// Segments read.
    pub segments: usize,
    /// Bytes of a torn tail (0 if none).
    pub torn_bytes: u64,
    /// The last segment and its valid length, where writing continues.
    pub tail: Option<(PathBuf, u64)>,
    /// Hash of the last frame.
    pub last_hash: [u8; 32],
}

/// Where the fold starts, and what the first record applied must follow.
struct Start {
    seq: u64,
    /// The hash of the last frame a snapshot covers.
    snapshot_hash: Option<[u8; 32]>,
}

/// The reader's position while it walks the segments.
struct Cursor<S> {
    state: S,
    seq: u64,
    /// The hash of the frame before the next one; unknown right after compacted history.
    prev: Option<[u8; 32]>,
    last_hash: [u8; 32],
}

/// Reads and checks every record in `dir`, folding each into `empty` — from the newest
/// snapshot on when `from_snapshot` (records it covers are still checksummed and chained but
/// not applied), or from the first record otherwise.
///
/// # Errors
///
/// [`JournalError::Corrupt`] naming the segment, offset and record of the first damaged frame,
/// of the first record that contradicts the ones before it, or of a gap in the history.
pub(crate) fn read<S: Restore>(dir: &Path, from_snapshot: bool, empty: S) -> Result<Recovered<S>, JournalError> {
    let snapshot = if from_snapshot { snapshot::latest(dir, &empty)? } else { None };
    let (state, start) = match snapshot {
        Some(s) => (s.state, Start { seq: s.seq, snapshot_hash: Some(s.last_hash) }),
        None => (empty, Start { seq: 0, snapshot_hash: None }),
    };
    let mut files = format::list(dir, Kind::Segment)?;
    // Segments wholly before the starting point are not read.
    while files.len() > 1 && files[1].0 <= start.seq {
        files.remove(0);
    }
    let first = files.first().map_or(start.seq, |f| f.0);
    if first > start.seq {
        let what = format!("records {}..{first} are missing (no segment or snapshot holds them)", start.seq);
        return Err(JournalError::Corrupt { segment: files[0].1.clone(), offset: 0, seq: start.seq, what });
    }
    let mut at = Cursor {
        state,
        seq: first,
        // The first frame after compacted history has no predecessor to check against.
        prev: (first == 0).then_some(GENESIS),
        last_hash: start.snapshot_hash.unwrap_or(GENESIS),
    };
    let (mut torn_bytes, mut tail) = (0, None);
    for (i, (_, path)) in files.iter().enumerate() {
        let last_segment = i + 1 == files.len();
        let valid_len = read_segment(path, last_segment, &start, &mut at)?;
        if last_segment {
            torn_bytes = std::fs::metadata(path).map_err(format::io(path))?.len() - valid_len;
            tail = Some((path.clone(), valid_len));
        }
    }
    if at.seq < start.seq {
        return Err(JournalError::Corrupt {
            segment: files.last().map_or_else(|| dir.to_path_buf(), |f| f.1.clone()),
            offset: 0,
            seq: at.seq,
            what: format!("the snapshot covers {} records but the segments hold {}", start.seq, at.seq),
        });
    }
    let Cursor { state, seq, last_hash, .. } = at;
    Ok(Recovered { state, records: seq, segments: files.len(), torn_bytes, tail, last_hash })
}

/// Reads one segment, folding its records from `start` on into the cursor. Returns the length
/// of its valid part (short of the file's length only for a torn tail of the last segment).
fn read_segment<S: Restore>(
    path: &Path,
    last_segment: bool,
    start: &Start,
    at: &mut Cursor<S>,
) -> Result<u64, JournalError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(format::io(path))?;
    let corrupt = |offset: usize, seq: u64, what: String| JournalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        seq,
        what,
    };
    if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        if last_segment && bytes.len() < SEGMENT_MAGIC.len() && SEGMENT_MAGIC.starts_with(&bytes) {
            // Created but the magic never fully written: a torn start.
            return Ok(0);
        }
        return Err(corrupt(0, at.seq, "not a hongbao journal segment".into()));
    }
    let mut offset = SEGMENT_MAGIC.len();
    while offset < bytes.len() {
        let (prev, payload, hash, len) = match format::read_frame(&bytes[offset..]) {
            Frame::Whole { prev, payload, hash, len } => (prev, payload, hash, len),
            // Damage that only a crash mid-write can leave: allowed at the end of the last
            // segment, corruption anywhere else.
            Frame::CutShort if last_segment => break,
            Frame::CutShort => return Err(corrupt(offset, at.seq, "frame cut short".into())),
            // A torn final write leaves garbage up to the end of the file.
            Frame::BadChecksum { len } if last_segment && offset + len == bytes.len() => break,
            Frame::BadChecksum { .. } => return Err(corrupt(offset, at.seq, "checksum mismatch".into())),
        };
        let expected = if at.seq == start.seq { start.snapshot_hash.or(at.prev) } else { at.prev };
        if expected.is_some_and(|p| p != prev) {
            let what = "hash chain broken: this record does not follow the one before it".to_string();
            return Err(corrupt(offset, at.seq, what));
        }
        let record = record::decode(payload).map_err(|e| corrupt(offset, at.seq, format!("record {e}")))?;
        if at.seq >= start.seq {
            at.state.apply(at.seq, &record).map_err(|what| corrupt(offset, at.seq, what))?;
            at.last_hash = hash;
        }
        at.prev = Some(hash);
        at.seq += 1;
        offset += len;
    }
    Ok(offset as u64)
}
