//! The file journal's format, and the one place its file names are made.
//!
//! A directory holds segments and snapshots. A segment is named after the position of its
//! first record (`00000000000000000000.hbj`) and starts with an 8-byte header: `HONGBAO` and
//! the format version as an ASCII digit (`HONGBAO3`). Version 1 recorded sends without their
//! per-share cap; version 2 had no cooling-off, daily caps or transfers; this build reads
//! versions 1 to 3 and writes 3, and refuses any other version by name (an older build refuses
//! a version 3 segment by name rather than stumble on a record it does not know). Then frames, one per record:
//!
//! ```text
//! len: u32 LE | crc32c(prev ‖ payload): u32 LE | prev: [u8; 32] | payload: len bytes
//! ```
//!
//! `prev` is the BLAKE3 hash of the previous frame (all of its bytes; zeros for the first), so
//! any edit, deletion or reordering breaks the chain. The payload is a record's encoding
//! (`record.rs`). A snapshot `NNNNNNNNNNNNNNNNNNNN.hbs` covers the records before position N
//! (see `snapshot.rs`). `LOCK` is held by the one engine that has the directory open.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The first bytes of every segment, before the version digit.
const SEGMENT_MAGIC_PREFIX: &[u8; 7] = b"HONGBAO";
/// The format version this build writes.
pub(crate) const FORMAT_VERSION: u8 = 3;
/// The oldest format version this build reads.
pub(crate) const FORMAT_VERSION_MIN: u8 = 1;
/// The bytes of a segment's header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 8;

/// The header of a segment of the current format.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0; SEGMENT_HEADER_BYTES];
    header[..7].copy_from_slice(SEGMENT_MAGIC_PREFIX);
    header[7] = b'0' + FORMAT_VERSION;
    header
}

/// What a segment's first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// A segment of a format this build reads.
    Version(u8),
    /// A header cut short by a crash while the segment was created.
    Torn,
    /// A hongbao segment of a format this build does not know.
    Unknown(u8),
    /// Not a hongbao segment.
    Foreign,
}

/// Reads a segment's header.
pub(crate) fn read_header(bytes: &[u8]) -> Header {
    // A segment created just before a power loss may hold only zeros where its header was
    // being written: nothing in it was ever acknowledged.
    if bytes.iter().all(|&b| b == 0) {
        return Header::Torn;
    }
    if bytes.len() < SEGMENT_HEADER_BYTES {
        let prefix = &bytes[..bytes.len().min(SEGMENT_MAGIC_PREFIX.len())];
        return if SEGMENT_MAGIC_PREFIX.starts_with(prefix) { Header::Torn } else { Header::Foreign };
    }
    if &bytes[..7] != SEGMENT_MAGIC_PREFIX || !bytes[7].is_ascii_digit() {
        return Header::Foreign;
    }
    match bytes[7] - b'0' {
        v @ FORMAT_VERSION_MIN..=FORMAT_VERSION => Header::Version(v),
        v => Header::Unknown(v),
    }
}
/// Length, checksum and previous hash.
pub(crate) const FRAME_HEADER_BYTES: usize = 4 + 4 + 32;
/// Largest payload a frame may claim; anything larger is damage, not a record.
pub(crate) const PAYLOAD_BYTES_MAX: usize = crate::limits::RECORD_BYTES_MAX;
/// The hash that the first frame of a history follows.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

const SEGMENT_EXT: &str = "hbj";
const SNAPSHOT_EXT: &str = "hbs";
const LOCK_FILE: &str = "LOCK";

/// Why a journal could not be opened or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Another engine holds the directory. (A child process forked at the moment an engine
    /// closes its journal shares the lock until it execs, so a restart right after a close
    /// in a process that spawns children may see this briefly.)
    #[error("journal {0} is in use by another process")]
    Locked(PathBuf),
    /// A frame that is not the torn tail is damaged, or a record contradicts the ones before.
    #[error("journal damaged in {segment} at byte {offset} (record {seq}): {what}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad frame.
        offset: u64,
        /// Position of the bad record.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// A segment of a format version this build does not read (written by a newer one).
    #[error(
        "journal segment {segment} has format version {version}; this build reads versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// The segment file.
        segment: PathBuf,
        /// Its version.
        version: u8,
    },
    /// The path is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The directory holds no hongbao journal (no segment and no snapshot), and the caller
    /// asked not to create one (an operator inspecting a journal, an audit).
    #[error("{0} holds no hongbao journal (no segment and no snapshot)")]
    NoJournal(PathBuf),
    /// The journal's configuration cannot be served.
    #[error("invalid journal configuration: {0}")]
    InvalidConfig(String),
    /// The operating system refused.
    #[error("journal I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Maps an I/O error on `path` to a [`JournalError`].
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// The kinds of file in a journal directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Segment,
    Snapshot,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Segment => SEGMENT_EXT,
            Kind::Snapshot => SNAPSHOT_EXT,
        }
    }
}

/// The path of the file of `kind` that starts (segment) or ends (snapshot) at record `seq`.
pub(crate) fn path(dir: &Path, kind: Kind, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{}", kind.ext()))
}

/// The path of the directory's lock file.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

/// The record position a journal file is named after, and its kind.
pub(crate) fn parse(path: &Path) -> Option<(Kind, u64)> {
    let kind = match path.extension()?.to_str()? {
        SEGMENT_EXT => Kind::Segment,
        SNAPSHOT_EXT => Kind::Snapshot,
        _ => return None,
    };
    Some((kind, path.file_stem()?.to_str()?.parse().ok()?))
}

/// Checks that `dir` is a directory holding a journal (a segment or a snapshot), without
/// creating anything.
///
/// # Errors
///
/// [`JournalError::Io`] if it does not exist, [`JournalError::NotADirectory`],
/// [`JournalError::NoJournal`].
pub(crate) fn check_existing(dir: &Path) -> Result<(), JournalError> {
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(JournalError::NotADirectory(dir.to_path_buf()));
    }
    if list(dir, Kind::Segment)?.is_empty() && list(dir, Kind::Snapshot)?.is_empty() {
        return Err(JournalError::NoJournal(dir.to_path_buf()));
    }
    Ok(())
}

/// The files of `kind` in `dir`, in record order.
pub(crate) fn list(dir: &Path, kind: Kind) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        match parse(&path) {
            Some((k, seq)) if k == kind => found.push((seq, path)),
            // A file of that kind whose name is not a position cannot be placed in the
            // history: it sorts last, where the reader names it as damage.
            None if path.extension().is_some_and(|e| e == kind.ext()) => found.push((u64::MAX, path)),
            _ => {}
        }
    }
    found.sort();
    Ok(found)
}

/// Appends the frame of `payload` following the frame hashed `prev` to `out`, and returns the
/// new frame's hash.
pub(crate) fn put_frame(prev: &[u8; 32], payload: &[u8], out: &mut Vec<u8>) -> [u8; 32] {
    let start = out.len();
    let crc = crc32c::crc32c_append(crc32c::crc32c(prev), payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(payload);
    *blake3::hash(&out[start..]).as_bytes()
}

/// What reading the frame at the start of `bytes` found.
pub(crate) enum Frame<'a> {
    /// A whole frame whose checksum holds.
    Whole {
        /// The hash of the frame it follows.
        prev: &'a [u8],
        /// The record's encoding.
        payload: &'a [u8],
        /// The frame's own hash.
        hash: [u8; 32],
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes end inside the frame, or its length is impossible.
    CutShort,
    /// The frame is whole but its checksum fails.
    BadChecksum,
}

/// Reads the frame at the start of `bytes`.
pub(crate) fn read_frame(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Frame::CutShort;
    }
    let payload_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let len = FRAME_HEADER_BYTES + payload_len;
    if payload_len > PAYLOAD_BYTES_MAX || bytes.len() < len {
        return Frame::CutShort;
    }
    let (prev, payload) = (&bytes[8..FRAME_HEADER_BYTES], &bytes[FRAME_HEADER_BYTES..len]);
    if crc32c::crc32c_append(crc32c::crc32c(prev), payload) != crc {
        return Frame::BadChecksum;
    }
    Frame::Whole { prev, payload, hash: *blake3::hash(&bytes[..len]).as_bytes(), len }
}

/// The offset of the first whole frame whose checksum holds at or after `from` in `bytes`, if
/// any: what tells a torn tail (nothing valid after the damage) from damage in the middle of
/// acknowledged history. A checksum that holds by chance in garbage is a 1 in 2³² event per
/// offset; a length beyond the bytes left is rejected before any hashing, so the scan costs
/// little more than a pass over the bytes.
pub(crate) fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(FRAME_HEADER_BYTES - 1))
        .find(|&at| matches!(read_frame(&bytes[at..]), Frame::Whole { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_their_version() {
        assert_eq!(&segment_header(), b"HONGBAO3");
        assert_eq!(read_header(b"HONGBAO1rest"), Header::Version(1));
        assert_eq!(read_header(b"HONGBAO2"), Header::Version(2));
        assert_eq!(read_header(b"HONGBAO3"), Header::Version(3));
        assert_eq!(read_header(b"HONGBAO9"), Header::Unknown(9));
        assert_eq!(read_header(b"HONG"), Header::Torn);
        assert_eq!(read_header(b""), Header::Torn);
        assert_eq!(read_header(&[0; 100]), Header::Torn);
        assert_eq!(read_header(b"HONX"), Header::Foreign);
        assert_eq!(read_header(b"PK\x03\x04rest"), Header::Foreign);
    }

    #[test]
    fn names_sort_in_record_order_and_parse_back() {
        let dir = Path::new("/j");
        let p = path(dir, Kind::Segment, 42);
        assert_eq!(p, Path::new("/j/00000000000000000042.hbj"));
        assert_eq!(parse(&p), Some((Kind::Segment, 42)));
        assert_eq!(parse(&path(dir, Kind::Snapshot, 7)), Some((Kind::Snapshot, 7)));
        assert_eq!(parse(Path::new("/j/LOCK")), None);
        assert!(path(dir, Kind::Segment, 9) < path(dir, Kind::Segment, 10));
    }

    #[test]
    fn frames_read_back_and_damage_is_told_apart() {
        let mut bytes = Vec::new();
        let hash = put_frame(&GENESIS, b"payload", &mut bytes);
        match read_frame(&bytes) {
            Frame::Whole { prev, payload, hash: h, len } => {
                assert_eq!((prev, payload, h, len), (&GENESIS[..], &b"payload"[..], hash, bytes.len()));
            }
            _ => panic!("a whole frame"),
        }
        assert!(matches!(read_frame(&bytes[..bytes.len() - 1]), Frame::CutShort));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(read_frame(&bytes), Frame::BadChecksum));
    }
}
