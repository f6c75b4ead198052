//! Import of the MediaPipe tutorial layout `MP_Data/<class>/<sequence>/<frame>.npy` into a
//! clip pack: one clip per sequence folder, one frame per `.npy` file of 258 values (or 1662,
//! whose face is dropped), float64 or float32.
//!
//! Ordering: classes in sorted folder order (or the order of a given class list), sequences
//! in numeric order (`2` before `10`; names that are not numbers after the numbers, by name).
//! A sequence's frames are exactly `0.npy` to `{N-1}.npy`: a gap, a name such as `05.npy` or
//! `five.npy`, or any other file beside them breaks the clip, since its frame order would be
//! a guess. Hidden entries are ignored. A class without clips is an error (or dropped, with
//! `skip_broken`).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::features::{hands_offset, POSE_VALUES};
use crate::data::npy;
use crate::data::packs::{ClipPack, FRAME_WIDTH};
use crate::error::{Error, Result};
use crate::fsio::read::read_regular_file;

/// What [`import_mp_data`] imports and how it treats broken clips.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// Import only these classes, in this order (each must have a folder); `None`: every
    /// class folder, sorted by name.
    pub classes: Option<Vec<String>>,
    /// The group (who recorded the clips) of every imported clip; `None`: the imported
    /// folder's name.
    pub group: Option<String>,
    /// Drop a clip with a broken file or misnamed frames, and a class left without clips, and
    /// report them, instead of failing the import.
    pub skip_broken: bool,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Clips imported.
    pub clips: usize,
    /// Clips dropped under `skip_broken`: the broken file (or the sequence folder whose frame
    /// files are wrong) and what is wrong with it.
    pub skipped: Vec<(PathBuf, String)>,
    /// Classes dropped under `skip_broken` because no clip of theirs was left (an empty class
    /// folder, or every sequence broken): the class folder and why.
    pub dropped_classes: Vec<(PathBuf, String)>,
}

/// A file that makes its clip unusable, and why.
struct Broken {
    path: PathBuf,
    reason: String,
}

/// Imports `dir` (laid out `<class>/<sequence>/<frame>.npy`) as a clip pack with one group.
/// `progress` gets the number of sequences as its length and advances by one per sequence read;
/// finishing it is left to the caller (pass `ProgressBar::hidden()` for none).
pub fn import_mp_data(
    dir: &Path,
    opts: &ImportOptions,
    progress: &ProgressBar,
) -> Result<(ClipPack, ImportReport)> {
    if !std::fs::metadata(dir)
        .map_err(|e| Error::io(dir, e))?
        .is_dir()
    {
        return Err(Error::data(
            dir,
            "is not a folder: data import reads an MP_Data folder (<class>/<sequence>/<frame>.npy)",
        ));
    }
    let classes = class_names(dir, opts.classes.as_deref())?;
    let mut sequences = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        for seq in sorted_folders(&dir.join(class))? {
            sequences.push((label, seq));
        }
    }
    progress.set_length(sequences.len() as u64);
    // Read in parallel (many small files), then assemble in order so that the result and the
    // first error reported do not depend on thread timing.
    let read: Vec<_> = sequences
        .par_iter()
        .map(|(_, seq)| {
            let clip = read_sequence(seq);
            progress.inc(1);
            clip
        })
        .collect();

    let mut report = ImportReport::default();
    let mut clips = Vec::new();
    for ((label, _), clip) in sequences.iter().zip(read) {
        match clip {
            Ok(frames) => clips.push((*label, frames)),
            Err(b) if opts.skip_broken => report.skipped.push((b.path, b.reason)),
            Err(b) => {
                return Err(Error::data(
                    b.path,
                    format!(
                        "{}; fix or delete it, or import with skip_broken to drop its clip",
                        b.reason
                    ),
                ))
            }
        }
    }
    let classes = drop_empty_classes(dir, classes, &mut clips, &sequences, opts, &mut report)?;
    if clips.is_empty() {
        return Err(Error::data(
            dir,
            format!(
                "no clips to import ({} skipped as broken); expected <class>/<sequence>/<frame>.npy",
                report.skipped.len()
            ),
        ));
    }
    report.clips = clips.len();
    let group = opts.group.clone().unwrap_or_else(|| folder_name(dir));
    Ok((assemble(clips, classes, group, dir), report))
}

/// A class without clips would be a class the model is asked to learn from nothing: an
/// error, or under `skip_broken` the class is dropped (and reported) and labels renumbered.
fn drop_empty_classes(
    dir: &Path,
    classes: Vec<String>,
    clips: &mut [(usize, Vec<f32>)],
    sequences: &[(usize, PathBuf)],
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Vec<String>> {
    let mut counts = vec![0usize; classes.len()];
    for (label, _) in clips.iter() {
        counts[*label] += 1;
    }
    let mut kept = Vec::new();
    let mut new_label = vec![0; classes.len()];
    for (label, class) in classes.into_iter().enumerate() {
        if counts[label] > 0 {
            new_label[label] = kept.len();
            kept.push(class);
            continue;
        }
        let folder = dir.join(&class);
        let why = if sequences.iter().any(|(l, _)| *l == label) {
            "every sequence of the class is broken"
        } else {
            "the class folder has no sequence folders"
        };
        if !opts.skip_broken {
            return Err(Error::data(
                folder,
                format!(
                    "{why}; a class needs clips: add some, delete the folder, or import with \
                     skip_broken to drop the class"
                ),
            ));
        }
        report
            .dropped_classes
            .push((folder, format!("{why}; class `{class}` dropped")));
    }
    for (label, _) in clips.iter_mut() {
        *label = new_label[*label];
    }
    Ok(kept)
}

/// The class folders to import, in label order.
fn class_names(dir: &Path, wanted: Option<&[String]>) -> Result<Vec<String>> {
    let found = sorted_folders(dir)?
        .iter()
        .map(|p| utf8_name(p))
        .collect::<Result<Vec<_>>>()?;
    let Some(wanted) = wanted else {
        if found.is_empty() {
            return Err(Error::data(
                dir,
                "has no class folders; expected <class>/<sequence>/<frame>.npy",
            ));
        }
        // sorted_folders sorts numerically; classes go in plain name order.
        let mut found = found;
        found.sort();
        return Ok(found);
    };
    for (i, class) in wanted.iter().enumerate() {
        if wanted[..i].contains(class) {
            return Err(Error::data(
                dir,
                format!("class `{class}` is listed twice; list each class once"),
            ));
        }
        if !found.contains(class) {
            return Err(Error::data(
                dir,
                format!(
                    "has no folder for class `{class}`; its class folders are: {}",
                    found.join(", ")
                ),
            ));
        }
    }
    Ok(wanted.to_vec())
}

/// The visible folders in `dir`, in numeric order of their names.
fn sorted_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.is_dir() && !hidden {
            entries.push(path);
        }
    }
    entries.sort_by(|a, b| numeric_order(a, b));
    Ok(entries)
}

/// Numbers first, by value; other names after them, by name.
fn numeric_order(a: &Path, b: &Path) -> Ordering {
    let key = |p: &Path| {
        let stem = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        (stem.parse::<u64>().map_err(|_| ()), stem)
    };
    let ((na, sa), (nb, sb)) = (key(a), key(b));
    match (na, nb) {
        (Ok(x), Ok(y)) => x.cmp(&y).then(sa.cmp(&sb)),
        (Ok(_), Err(())) => Ordering::Less,
        (Err(()), Ok(_)) => Ordering::Greater,
        (Err(()), Err(())) => sa.cmp(&sb),
    }
}

fn utf8_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::data(
                path,
                "folder name is not valid UTF-8; rename it (class names are text)",
            )
        })
}

/// The name of the imported folder, for the default group (`.` resolved to its real name).
fn folder_name(dir: &Path) -> String {
    let named = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    named
        .or_else(|| {
            let real = dir.canonicalize().ok()?;
            Some(real.file_name()?.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "default".to_string())
}

/// The frames of one sequence folder, each reduced to 258 values.
fn read_sequence(seq: &Path) -> std::result::Result<Vec<f32>, Broken> {
    let broken = |reason: String| Broken {
        path: seq.to_path_buf(),
        reason,
    };
    let frames = frame_files(seq).map_err(broken)?;
    let mut clip = Vec::new();
    clip.try_reserve_exact(frames.len().saturating_mul(FRAME_WIDTH))
        .map_err(|_| {
            broken(format!(
                "{} frames are more than memory holds",
                frames.len()
            ))
        })?;
    for path in frames {
        let frame = read_frame(&path).map_err(|reason| Broken { path, reason })?;
        clip.extend(frame);
    }
    Ok(clip)
}

/// The frame files of a sequence folder in frame order: exactly `0.npy` to `{N-1}.npy`
/// (decimal, no sign, no leading zero), nothing else but hidden entries. Any other name, or a
/// gap in the numbers, would make the clip's frame order a guess.
fn frame_files(seq: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let mut numbers = Vec::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(seq).map_err(|e| format!("cannot list the folder: {e}"))? {
        let name = entry
            .map_err(|e| format!("cannot list the folder: {e}"))?
            .file_name();
        match name.to_str() {
            Some(n) if n.starts_with('.') => {}
            Some(n) => match frame_number(n) {
                Some(k) => numbers.push(k),
                None => strays.push(format!("`{n}`")),
            },
            None => strays.push(format!("`{}` (not UTF-8)", name.to_string_lossy())),
        }
    }
    numbers.sort_unstable();
    let (missing, missing_total) = missing_numbers(&numbers);
    if numbers.is_empty() && strays.is_empty() {
        return Err("sequence has no .npy frames".to_string());
    }
    if strays.is_empty() && missing_total == 0 {
        return Ok(numbers
            .iter()
            .map(|k| seq.join(format!("{k}.npy")))
            .collect());
    }
    strays.sort();
    let mut problems = Vec::new();
    if !strays.is_empty() {
        problems.push(format!("not frame names: {}", list(&strays, strays.len())));
    }
    if missing_total > 0 {
        problems.push(format!("missing: {}", list(&missing, missing_total)));
    }
    Err(format!(
        "frames must be named 0.npy to N-1.npy with no gaps and nothing else beside them; {}",
        problems.join("; ")
    ))
}

/// The frame number of `name` when it is `<number>.npy` in canonical decimal.
fn frame_number(name: &str) -> Option<usize> {
    let stem = name.strip_suffix(".npy")?;
    let canonical = stem.bytes().all(|b| b.is_ascii_digit())
        && !stem.is_empty()
        && (stem == "0" || !stem.starts_with('0'));
    canonical.then(|| stem.parse().ok()).flatten()
}

/// The numbers below the largest of sorted, distinct `numbers` that are not among them, as
/// file names (the first [`SHOWN`]), and how many there are.
fn missing_numbers(numbers: &[usize]) -> (Vec<String>, usize) {
    let mut missing = Vec::new();
    let mut total = 0usize;
    let mut next = 0usize;
    for &k in numbers {
        total = total.saturating_add(k - next);
        let room = SHOWN - missing.len();
        missing.extend((next..k).take(room).map(|m| format!("{m}.npy")));
        next = k.saturating_add(1);
    }
    (missing, total)
}

/// Names listed in a message, at most.
const SHOWN: usize = 8;

/// The first [`SHOWN`] of `total` names, and how many more there are.
fn list(names: &[String], total: usize) -> String {
    let shown = &names[..names.len().min(SHOWN)];
    match total - shown.len() {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// The largest frame file read: 1662 float64 values and a header, with room to spare.
const MAX_FRAME_BYTES: u64 = 1 << 20;

/// One frame file: 258 values, or 1662 with the face dropped; all finite.
fn read_frame(path: &Path) -> std::result::Result<Vec<f32>, String> {
    let bytes = read_regular_file(path, MAX_FRAME_BYTES, "frame (.npy)").map_err(|e| match e {
        Error::Data { detail, .. } => detail,
        other => other.to_string(),
    })?;
    let values = npy::read_floats(&bytes)?;
    let width = values.len();
    let hands = hands_offset(width).ok_or_else(|| {
        format!(
            "holds {width} values; a frame has {FRAME_WIDTH} (pose and hands) or 1662 (with the \
             face)"
        )
    })?;
    if let Some(j) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "value {j} is {}; landmarks must be finite",
            values[j]
        ));
    }
    let mut frame = Vec::with_capacity(FRAME_WIDTH);
    frame.extend_from_slice(&values[..POSE_VALUES]);
    frame.extend_from_slice(&values[hands..]);
    Ok(frame)
}

/// Pads `(label, frames)` clips into a pack of one group.
fn assemble(
    clips: Vec<(usize, Vec<f32>)>,
    classes: Vec<String>,
    group: String,
    dir: &Path,
) -> ClipPack {
    let lengths: Vec<usize> = clips.iter().map(|(_, f)| f.len() / FRAME_WIDTH).collect();
    let t_max = lengths.iter().copied().max().unwrap_or(0);
    let mut landmarks = vec![0.0; clips.len() * t_max * FRAME_WIDTH];
    for (i, (_, frames)) in clips.iter().enumerate() {
        let start = i * t_max * FRAME_WIDTH;
        landmarks[start..start + frames.len()].copy_from_slice(frames);
    }
    ClipPack {
        landmarks,
        t_max,
        labels: clips.iter().map(|(label, _)| *label).collect(),
        groups: vec![0; lengths.len()],
        lengths,
        classes,
        group_names: vec![group],
        source: format!("imported from {} (MP_Data layout)", dir.display()),
        license: "unknown".to_string(),
    }
}

/// The frames of one MP_Data sequence folder (`<frame>.npy` files in numeric order), each
/// reduced to 258 values: one clip, as `signflow predict --input DIR` reads it.
pub fn read_sequence_folder(seq: &Path) -> Result<Vec<f32>> {
    read_sequence(seq).map_err(|b| Error::data(b.path, b.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_are_canonical_numbers() {
        for (name, want) in [
            ("0.npy", Some(0)),
            ("10.npy", Some(10)),
            ("05.npy", None),
            ("-1.npy", None),
            ("+1.npy", None),
            ("five.npy", None),
            (".npy", None),
            ("1.npy.bak", None),
            ("99999999999999999999999.npy", None),
        ] {
            assert_eq!(frame_number(name), want, "{name}");
        }
    }

    #[test]
    fn missing_frames_are_listed_then_counted() {
        assert_eq!(missing_numbers(&[0, 1, 2]), (vec![], 0));
        let (shown, total) = missing_numbers(&[1, 3, usize::MAX]);
        assert_eq!((shown.len(), total), (SHOWN, usize::MAX - 2));
        assert_eq!(&shown[..3], ["0.npy", "2.npy", "4.npy"]);
        assert_eq!(
            list(&shown, total),
            format!(
                "0.npy, 2.npy, 4.npy, 5.npy, 6.npy, 7.npy, 8.npy, 9.npy and {} more",
                total - 8
            )
        );
    }
}
