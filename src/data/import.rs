//! Import of the MediaPipe tutorial layout `MP_Data/<class>/<sequence>/<frame>.npy` into a
//! clip pack: one clip per sequence folder, one frame per `.npy` file of 258 values (or 1662,
//! whose face is dropped), float64 or float32.
//!
//! Ordering: classes in sorted folder order (or the order of a given class list), sequences
//! and frames in numeric order (`2` before `10`; names that are not numbers after the numbers,
//! by name). Missing frame numbers are fine; hidden entries and files that are not `.npy` are
//! ignored.

use std::cmp::Ordering;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::features::{hands_offset, POSE_VALUES};
use crate::data::packs::{ClipPack, FRAME_WIDTH};
use crate::error::{Error, Result};

/// What [`import_mp_data`] imports and how it treats broken clips.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportOptions {
    /// Import only these classes, in this order (each must have a folder); `None`: every
    /// class folder, sorted by name.
    pub classes: Option<Vec<String>>,
    /// The group (who recorded the clips) of every imported clip; `None`: the imported
    /// folder's name.
    pub group: Option<String>,
    /// Drop a clip with a broken file and report it, instead of failing the import.
    pub skip_broken: bool,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Clips imported.
    pub clips: usize,
    /// Clips dropped under `skip_broken`: the broken file (or the empty sequence folder) and
    /// what is wrong with it.
    pub skipped: Vec<(PathBuf, String)>,
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
    let classes = class_names(dir, opts.classes.as_deref())?;
    let mut sequences = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        for seq in sorted_entries(&dir.join(class), true)? {
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

/// The class folders to import, in label order.
fn class_names(dir: &Path, wanted: Option<&[String]>) -> Result<Vec<String>> {
    let found = sorted_entries(dir, true)?
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
        // sorted_entries sorts numerically; classes go in plain name order.
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

/// The visible entries of `dir` that are folders (`dirs`) or `.npy` files (`!dirs`), in
/// numeric order of their names (of their stems, for files).
fn sorted_entries(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let wanted = if dirs {
            path.is_dir()
        } else {
            path.is_file() && path.extension().is_some_and(|e| e == "npy")
        };
        if wanted && !hidden {
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
            .file_stem()
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
    let frames = sorted_entries(seq, false).map_err(|e| Broken {
        path: seq.to_path_buf(),
        reason: format!("cannot list the folder: {e}"),
    })?;
    if frames.is_empty() {
        return Err(Broken {
            path: seq.to_path_buf(),
            reason: "sequence has no .npy frames".to_string(),
        });
    }
    let mut clip = Vec::with_capacity(frames.len() * FRAME_WIDTH);
    for path in frames {
        let frame = read_frame(&path).map_err(|reason| Broken { path, reason })?;
        clip.extend(frame);
    }
    Ok(clip)
}

/// One frame file: 258 values, or 1662 with the face dropped; all finite.
fn read_frame(path: &Path) -> std::result::Result<Vec<f32>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .map_err(|e| format!("not a readable .npy file ({e})"))?;
    let width = npy.len() as usize;
    let hands = hands_offset(width).ok_or_else(|| {
        format!(
            "holds {width} values; a frame has {FRAME_WIDTH} (pose and hands) or 1662 (with the \
             face)"
        )
    })?;
    let values = read_floats(npy)?;
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

/// The values of a float64 or float32 array, as f32 (f64 values beyond f32's range become
/// infinite, which the caller rejects).
fn read_floats(npy: npyz::NpyFile<BufReader<File>>) -> std::result::Result<Vec<f32>, String> {
    let truncated = |e: std::io::Error| format!("cannot read its values ({e}); is it truncated?");
    match npy.try_data::<f64>() {
        Ok(data) => data
            .map(|v| v.map(|v| v as f32))
            .collect::<std::io::Result<_>>()
            .map_err(truncated),
        Err(npy) => match npy.try_data::<f32>() {
            Ok(data) => data.collect::<std::io::Result<_>>().map_err(truncated),
            Err(npy) => Err(format!(
                "holds {} values; expected float64 or float32",
                npy.dtype().descr()
            )),
        },
    }
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
