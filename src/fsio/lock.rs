//! One run per directory: a run holds an advisory lock on `run.lock` in its output directory
//! for as long as it writes there. The operating system drops the lock when the process ends,
//! however it ends, so a crash never leaves the directory locked; the file keeps the pid of
//! the run that held it, to name it to a run that is refused, and to say whose lock a run
//! took over after a crash.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside a run's directory.
pub const LOCK_FILE: &str = "run.lock";

/// A held lock on a directory; dropping it releases the lock and removes the file, and the
/// directory itself when [`DirLock::acquire`] created it and nothing was written there.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    file: File,
    created: Option<PathBuf>,
}

impl DirLock {
    /// Locks `dir` (created if missing), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let created = (!dir.exists()).then(|| dir.to_path_buf());
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut lock = DirLock {
            path: path.clone(),
            file: Self::locked_file(dir, &path)?,
            created,
        };
        let mut previous = String::new();
        // An unreadable pid only costs the warning's detail.
        let _ = lock.file.read_to_string(&mut previous);
        if let Some(pid) = pid_in(&previous) {
            tracing::warn!(
                "{}: taking over the stale lock of run {pid}, which ended without releasing it",
                dir.display()
            );
        }
        let written = lock.file.set_len(0).and_then(|()| {
            lock.file.rewind()?;
            writeln!(lock.file, "{}", std::process::id())?;
            lock.file.sync_all()
        });
        written.map_err(|e| Error::io(&path, e))?;
        Ok(lock)
    }

    /// The lock file, opened and locked; the file a previous holder removed while this process
    /// opened it is not the lock anymore, so the opening is tried again.
    fn locked_file(dir: &Path, path: &Path) -> Result<File> {
        loop {
            let Some(file) = try_lock(path).map_err(|e| Error::io(path, e))? else {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let holder = pid_in(&text).map_or("another run".into(), |p| format!("run {p}"));
                return Err(Error::data(
                    dir,
                    format!(
                        "{holder} is training in this directory (it holds {LOCK_FILE}); wait for \
                         it to end, or choose another output directory"
                    ),
                ));
            };
            if file_is(&file, path) {
                return Ok(file);
            }
        }
    }
}

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    options
}

/// The file at `path` (created if missing), exclusively locked; None when another process
/// holds the lock.
#[cfg(unix)]
fn try_lock(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::fd::AsRawFd;
    let file = options().open(path)?;
    // SAFETY: flock only reads the descriptor, which `file` owns and keeps open; closing it
    // releases the lock.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(None),
        _ => Err(e),
    }
}

/// Windows: a file opened without sharing is locked until it is closed.
#[cfg(windows)]
fn try_lock(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::windows::fs::OpenOptionsExt;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    match options().share_mode(0).open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(ERROR_SHARING_VIOLATION) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(any(unix, windows)))]
fn try_lock(path: &Path) -> std::io::Result<Option<File>> {
    options().open(path).map(Some)
}

/// True when the open `file` is the one now at `path`.
fn file_is(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    // Elsewhere an open file cannot be removed, so the file at `path` is the one opened.
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// The pid a lock file holds, as written (`pid 1234`), if any.
fn pid_in(text: &str) -> Option<String> {
    let pid = text.trim();
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| format!("pid {pid}"))
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Emptied, so that a file left behind (where an open file cannot be removed) names no
        // run; removed while still locked (closing `file` afterwards releases it), so that no
        // other run locks the file on its way out.
        let _ = self.file.set_len(0);
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created {
            // Fails, as it should, once the run wrote anything there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = DirLock::acquire(&run).unwrap();
        let text = std::fs::read_to_string(run.join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        let err = DirLock::acquire(&run).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("run"),
            "{err}"
        );
        drop(first);
        assert!(!run.exists(), "the empty directory it created is removed");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("kept"), b"").unwrap();
        drop(DirLock::acquire(&run).unwrap());
        assert!(run.join("kept").exists() && !run.join(LOCK_FILE).exists());
    }

    #[test]
    fn a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "4000000\n").unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(lock);
        assert!(dir.path().exists());
    }
}
