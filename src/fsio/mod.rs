//! File safety. Writing files so that a crash never leaves a torn one: write a temporary file
//! beside the target, flush it to disk, then rename it over the target. The modules: what a
//! command may write ([`guard`]), one run per directory ([`lock`]), a data file's fingerprint
//! ([`fingerprint`]) and paths recorded in JSON without loss ([`path_json`]).

pub mod fingerprint;
pub mod guard;
pub mod lock;
pub mod path_json;

pub mod read;

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically (a temporary file in the same folder, then a rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::data(
            path,
            format!(
                "cannot be written: its folder {} does not exist (or is not a folder); create it \
                 first",
                dir.display()
            ),
        ));
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    // Temporary files are created owner-only; the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(tmp.path(), e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
