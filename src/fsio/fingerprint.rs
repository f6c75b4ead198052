//! A data file's fingerprint: its size and a 64-bit hash of all its bytes, recorded when a run
//! starts so that a resume can tell the same data (by any path, even a copy) from data that
//! changed. The hash is for telling accidental changes apart, not for security: four lanes of
//! 8-byte words, each folded in with SplitMix64's finaliser, then the lanes and the length
//! mixed together. It must never change, or every recorded run would look changed.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a run records of each data file it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    /// The file's length in bytes.
    pub bytes: u64,
    /// The hash of its bytes, 16 hexadecimal digits.
    pub hash: String,
}

impl Fingerprint {
    /// Reads `path` to its recorded end (it must be a regular file).
    pub fn of_file(path: &Path) -> Result<Fingerprint> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::data(path, "is not a regular file"));
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader = file.take(meta.len());
        let mut hasher = Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(Fingerprint {
            bytes: hasher.len,
            hash: format!("{:016x}", hasher.finish()),
        })
    }

    /// How `now` differs from this recorded fingerprint, in words; None when it does not.
    pub fn change(&self, now: &Fingerprint) -> Option<String> {
        if self.bytes != now.bytes {
            Some(format!("{} bytes, now {}", self.bytes, now.bytes))
        } else if self.hash != now.hash {
            Some(format!(
                "same size, other contents: hash {}, now {}",
                self.hash, now.hash
            ))
        } else {
            None
        }
    }
}

const LANES: usize = 4;

#[derive(Default)]
struct Hasher {
    lanes: [u64; LANES],
    /// Bytes not yet making a whole block of `LANES` words.
    pending: Vec<u8>,
    len: u64,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Hasher {
    const BLOCK: usize = 8 * LANES;

    fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.pending.is_empty() {
            let take = (Self::BLOCK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < Self::BLOCK {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.block(&block);
        }
        let mut blocks = bytes.chunks_exact(Self::BLOCK);
        for block in &mut blocks {
            self.block(block);
        }
        self.pending.extend_from_slice(blocks.remainder());
    }

    fn block(&mut self, block: &[u8]) {
        for (lane, word) in self.lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_le_bytes(word.try_into().expect("8-byte chunks"));
            *lane = mix(*lane ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(mut self) -> u64 {
        let mut tail = std::mem::take(&mut self.pending);
        tail.resize(Self::BLOCK, 0);
        self.block(&tail);
        let mut h = mix(self.len);
        for (i, lane) in self.lanes.iter().enumerate() {
            h = mix(h ^ lane.rotate_left(16 * i as u32));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(chunks: &[&[u8]]) -> u64 {
        let mut h = Hasher::default();
        for c in chunks {
            h.update(c);
        }
        h.finish()
    }

    #[test]
    fn the_hash_is_fixed_and_sees_every_byte() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = hash(&[&data]);
        assert_eq!(whole, hash(&[&data[..3], &data[3..40], &data[40..]]));
        // Recorded runs depend on this value staying the same.
        assert_eq!(format!("{:016x}", hash(&[b"signflow"])), "7a7ae38fd9344c33");
        for i in [0, 7, 8, 31, 32, 500, 999] {
            let mut changed = data.clone();
            changed[i] ^= 1;
            assert_ne!(hash(&[&changed]), whole, "byte {i}");
        }
        assert_ne!(hash(&[&data, &[0]]), whole, "a zero appended");
    }

    #[test]
    fn a_fingerprint_says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"abc").unwrap();
        let before = Fingerprint::of_file(&path).unwrap();
        assert_eq!(before.bytes, 3);
        assert_eq!(before.change(&Fingerprint::of_file(&path).unwrap()), None);
        std::fs::write(&path, b"abd").unwrap();
        let same_size = before
            .change(&Fingerprint::of_file(&path).unwrap())
            .unwrap();
        assert!(same_size.contains("other contents"), "{same_size}");
        std::fs::write(&path, b"abcd").unwrap();
        let longer = before
            .change(&Fingerprint::of_file(&path).unwrap())
            .unwrap();
        assert!(longer.contains("3 bytes, now 4"), "{longer}");
        assert!(Fingerprint::of_file(dir.path()).is_err());
    }
}
