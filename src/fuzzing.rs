//! Entry points for the coverage-guided fuzz targets under `fuzz/` (built with
//! `--cfg fuzzing`), and for the unit test below that runs them over the committed corpus and
//! over seeded mutations of valid encodings. Each decodes untrusted bytes; none may panic,
//! whatever the input.

use crate::journal::format::{self, Frame};
use crate::journal::snapshot;
use crate::journal::Restore;
use crate::record;
use crate::replay::Replica;

/// A record's payload.
pub fn record(bytes: &[u8]) {
    let _ = record::decode(bytes);
}

/// A segment: its header, then frames until the first that is not whole, then the scan for a
/// valid frame after damage.
pub fn segment(bytes: &[u8]) {
    let _ = format::read_header(bytes);
    let mut at = bytes.len().min(format::SEGMENT_HEADER_BYTES);
    while at < bytes.len() {
        match format::read_frame(&bytes[at..]) {
            Frame::Whole { payload, len, .. } => {
                let _ = record::decode(payload);
                at += len;
            }
            Frame::CutShort | Frame::BadChecksum => {
                let _ = format::next_valid_frame(bytes, at + 1);
                break;
            }
        }
    }
}

/// A snapshot file (its hash stops almost everything), and a snapshot's body as if its hash
/// held: the first byte picks the format version.
pub fn snapshot(bytes: &[u8]) {
    let empty = Replica::new(20_000);
    let _ = snapshot::decode(&empty, bytes);
    if let Some((&version, body)) = bytes.split_first() {
        let _ = empty.decode(version % 3 + 1, body);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::journal::Fold;

    /// A fuzz target's entry point.
    type Target = fn(&[u8]);

    /// The entry point of each fuzz target, by name.
    const TARGETS: [(&str, Target); 3] = [("record", record), ("segment", segment), ("snapshot", snapshot)];

    /// Valid encodings to mutate, by target: every sample record, a segment of them, a
    /// snapshot body.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let records = record::tests::samples();
        let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut segment_bytes = format::segment_header().to_vec();
        let mut prev = format::GENESIS;
        let mut replica = Replica::new(20_000);
        // Funds for the samples' sends, so that the snapshot seed holds packets and transfers.
        let funds = crate::Record::Deposit {
            op: crate::OpId(u64::MAX - 1),
            user: crate::UserId(1),
            amount: crate::Amount::yuan(1_000),
            at: crate::Timestamp(0),
        };
        replica.apply_record(&funds).expect("a deposit applies");
        for r in &records {
            let mut payload = Vec::new();
            record::encode(r, &mut payload);
            prev = format::put_frame(&prev, &payload, &mut segment_bytes);
            out.push(("record", payload));
            let _ = replica.apply_record(r);
        }
        out.push(("segment", segment_bytes));
        // The first byte picks version 3 (`2 % 3 + 1`), the version `encode` writes.
        let mut body = vec![2];
        replica.encode(&mut body);
        out.push(("snapshot", body));
        out
    }

    /// Writes the seed corpus of the fuzz targets (run once with `HONGBAO_WRITE_CORPUS=1`).
    #[test]
    fn write_the_seed_corpus_when_asked() {
        if std::env::var_os("HONGBAO_WRITE_CORPUS").is_none() {
            return;
        }
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (i, (target, bytes)) in seeds().into_iter().enumerate() {
            std::fs::create_dir_all(corpus.join(target)).unwrap();
            std::fs::write(corpus.join(target).join(format!("seed-{i:02}")), bytes).unwrap();
        }
    }

    #[test]
    fn decoders_survive_the_corpus_and_a_hundred_thousand_mutations() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (target, run) in TARGETS {
            for entry in std::fs::read_dir(corpus.join(target)).into_iter().flatten().flatten() {
                run(&std::fs::read(entry.path()).unwrap());
            }
        }
        let seed = 0xF022;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let seeds = seeds();
        for _ in 0..100_000 {
            let (target, valid) = &seeds[rng.random_range(0..seeds.len())];
            let run = TARGETS.iter().find(|t| t.0 == *target).expect("a target").1;
            let mut bytes = valid.clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..4) {
                    0 if !bytes.is_empty() => {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] ^= 1 << rng.random_range(0..8);
                    }
                    1 if !bytes.is_empty() => bytes.truncate(rng.random_range(0..bytes.len())),
                    2 => bytes.extend((0..rng.random_range(1..16)).map(|_| rng.random::<u8>())),
                    _ if bytes.len() >= 4 => {
                        let i = rng.random_range(0..bytes.len() - 3);
                        bytes[i..i + 4].copy_from_slice(&rng.random::<u32>().to_le_bytes());
                    }
                    _ => {}
                }
            }
            run(&bytes);
        }
    }
}
