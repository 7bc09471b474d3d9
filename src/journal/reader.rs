//! Reading a journal directory back: every frame's checksum and the hash chain, from the
//! first segment to the last, each record folded into a state.
//!
//! Damage at the end of the last segment with no valid frame anywhere after it — a frame cut
//! short, garbage, or zeros (what some file systems leave after a power loss) — is a write
//! torn by a crash: it is reported (and cut by the writer when it opens the directory), and
//! nothing it held was ever acknowledged. Any other damage is corruption: reading refuses,
//! naming the segment and offset.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::format::{self, Frame, Header, JournalError, Kind, GENESIS, SEGMENT_HEADER_BYTES};
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
    /// The last segment, where writing continues.
    pub tail: Option<Tail>,
    /// Hash of the last frame.
    pub last_hash: [u8; 32],
}

/// How far a read has come, reported after each segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Segments read so far.
    pub segments_read: usize,
    /// Segments to read.
    pub segments_total: usize,
    /// Records read so far.
    pub records: u64,
}

/// The last segment of a journal.
#[derive(Debug)]
pub(crate) struct Tail {
    pub path: PathBuf,
    /// The length of its valid part.
    pub len: u64,
    /// Its format version (meaningless when `len` is 0).
    pub version: u8,
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
pub(crate) fn read<S: Restore>(
    dir: &Path,
    from_snapshot: bool,
    empty: S,
    progress: &mut dyn FnMut(Progress),
) -> Result<Recovered<S>, JournalError> {
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
    let mut done = Progress { segments_total: files.len(), ..Progress::default() };
    for (i, (_, path)) in files.iter().enumerate() {
        let last_segment = i + 1 == files.len();
        let (valid_len, version) = read_segment(path, last_segment, &start, &mut at)?;
        if last_segment {
            torn_bytes = std::fs::metadata(path).map_err(format::io(path))?.len() - valid_len;
            tail = Some(Tail { path: path.clone(), len: valid_len, version });
        }
        done.segments_read += 1;
        done.records = at.seq;
        progress(done);
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
/// of its valid part (short of the file's length only for a torn tail of the last segment) and
/// its format version.
fn read_segment<S: Restore>(
    path: &Path,
    last_segment: bool,
    start: &Start,
    at: &mut Cursor<S>,
) -> Result<(u64, u8), JournalError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(format::io(path))?;
    let corrupt = |offset: usize, seq: u64, what: String| JournalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        seq,
        what,
    };
    let version = match format::read_header(&bytes) {
        Header::Version(v) => v,
        // Created but the header never fully written: a torn start.
        Header::Torn if last_segment => return Ok((0, format::FORMAT_VERSION)),
        Header::Unknown(version) => return Err(JournalError::UnsupportedVersion { segment: path.into(), version }),
        Header::Torn | Header::Foreign => return Err(corrupt(0, at.seq, "not a hongbao journal segment".into())),
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let (prev, payload, hash, len) = match format::read_frame(&bytes[offset..]) {
            Frame::Whole { prev, payload, hash, len } => (prev, payload, hash, len),
            // A write torn by a crash leaves a cut frame, garbage or zeros at the very end of
            // the last segment, with nothing valid after it: that tail was never acknowledged.
            // Damage with a valid frame after it (a flipped bit in a length, say) would cut
            // acknowledged history: it is corruption, like damage in any other segment.
            damaged => {
                let what = match damaged {
                    Frame::CutShort => "frame cut short",
                    _ => "checksum mismatch",
                };
                if !last_segment {
                    return Err(corrupt(offset, at.seq, what.into()));
                }
                if let Some(valid) = format::next_valid_frame(&bytes, offset + 1) {
                    let what = format!("{what}, with a valid record at byte {valid} after it");
                    return Err(corrupt(offset, at.seq, what));
                }
                break;
            }
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
    Ok((offset as u64, version))
}
