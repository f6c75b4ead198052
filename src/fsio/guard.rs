//! The one rule of every command that writes: it never writes over a file it reads, nor into a
//! folder it reads. Files are compared by identity (device and inode on unix, the canonical
//! path elsewhere), so that another spelling, a symbolic link or a hard link is caught too.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// True when `a` and `b` are the same file (or folder): both exist and are one object on disk.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    }
}

/// `path` made absolute, with its longest existing ancestor resolved (links, `.` and `..`), so
/// that a path not yet created can still be placed inside or outside a folder.
pub fn resolve(path: &Path) -> PathBuf {
    let Ok(absolute) = std::path::absolute(path) else {
        return path.to_path_buf();
    };
    let mut rest = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p: PathBuf, c| match c {
                Component::ParentDir => p.parent().map_or(p.clone(), Path::to_path_buf),
                Component::CurDir => p,
                c => p.join(c),
            });
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses any of `writes` that is a file one of `reads` names, or lies inside a folder one of
/// `reads` names. Each entry is the flag (or argument) that gave the path, then the path.
pub fn check_writes(reads: &[(&str, &Path)], writes: &[(&str, &Path)]) -> Result<()> {
    for &(out_flag, out) in writes {
        let placed = resolve(out);
        for &(in_flag, input) in reads {
            if same_file(out, input) {
                return Err(Error::data(
                    out,
                    format!(
                        "{out_flag} would write over this file, which this command reads as {in_flag} ({}); \
                         a command never writes over its input: choose another path",
                        input.display()
                    ),
                ));
            }
            if input.is_dir() && placed.starts_with(resolve(input)) {
                return Err(Error::data(
                    out,
                    format!(
                        "{out_flag} would write inside the folder this command reads as {in_flag} ({}); \
                         a command never writes into its input: choose a path outside it",
                        input.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_spelling_or_a_link_is_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("a.bin");
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let hard = d.join("hard.bin");
        std::fs::hard_link(&file, &hard).unwrap();
        for alias in [
            file.clone(),
            d.join("sub/../a.bin"),
            d.join("./a.bin"),
            hard,
        ] {
            assert!(same_file(&alias, &file), "{}", alias.display());
            let err = check_writes(&[("--in", &file)], &[("--out", &alias)]).unwrap_err();
            assert!(err.to_string().contains("--out would write over"), "{err}");
        }
        assert!(!same_file(&d.join("missing"), &file));
        check_writes(&[("--in", &file)], &[("--out", &d.join("b.bin"))]).unwrap();
    }

    #[test]
    fn nothing_is_written_inside_a_folder_read() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("in")).unwrap();
        for out in ["in/x.bin", "in/new/deeper/x.bin", "elsewhere/../in/x.bin"] {
            let err =
                check_writes(&[("DIR", &d.join("in"))], &[("--output", &d.join(out))]).unwrap_err();
            assert!(err.to_string().contains("inside the folder"), "{err}");
        }
        check_writes(
            &[("DIR", &d.join("in"))],
            &[("--output", &d.join("inx.bin"))],
        )
        .unwrap();
        assert_eq!(
            resolve(&d.join("new/../in")),
            d.canonicalize().unwrap().join("in")
        );
    }
}
