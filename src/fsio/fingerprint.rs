//! A data file's fingerprint: its size and a 64-bit hash of all its bytes, recorded when a run
//! starts so that a resume can tell the same data (by any path, even a copy) from data that
//! changed. The hash is XXH3-64 (a specified, stable hash, fast enough that fingerprinting a
//! pack costs little beside loading it); it tells accidental changes apart and is not for
//! security.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::read::open_regular_file;
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
        let (file, len) = open_regular_file(path, "data file")?;
        let mut reader = file.take(len);
        let mut hasher = Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(Fingerprint {
            bytes,
            hash: format!("{:016x}", hasher.digest()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_xxh3_and_sees_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        // XXH3-64 of the empty input, as its specification gives it.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            Fingerprint::of_file(&path).unwrap().hash,
            "2d06800538d394c2"
        );
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let whole = Fingerprint::of_file(&path).unwrap();
        assert_eq!(
            whole.hash,
            format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&data))
        );
        let mut changed = data.clone();
        changed[2_500_000] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert_ne!(Fingerprint::of_file(&path).unwrap(), whole);
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
