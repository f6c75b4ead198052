//! A recorded stream of raw frames, as `signflow predict --stream` reads it: one `.npy` of
//! `[frames, 258 | 1662]` values, or an MP_Data sequence folder of `<frame>.npy` files.

use std::path::Path;

use crate::data::features::{hands_offset, FACE_FRAME_WIDTH, POSE_VALUES};
use crate::data::import::read_sequence_folder;
use crate::data::npy;
use crate::data::packs::{ClipPack, FRAME_WIDTH};
use crate::error::{Error, Result};
use crate::fsio::read::{read_regular_file, NO_CAP};

/// Frames of one stream in order, `width` values each (258, or 1662 with the face).
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub values: Vec<f32>,
    pub width: usize,
}

impl Recording {
    /// Reads a `.npy` file of `[frames, 258 | 1662]` float64 or float32 values, or a folder
    /// of `<frame>.npy` files as `data import` reads one sequence. A recording without
    /// frames is an error; non-finite values are left to the recogniser, which names the
    /// frame.
    pub fn load(path: &Path) -> Result<Recording> {
        if path.is_dir() {
            let values = read_sequence_folder(path)?;
            return Ok(Recording {
                values,
                width: FRAME_WIDTH,
            });
        }
        let bytes = read_regular_file(path, NO_CAP, "recording (.npy)")?;
        let (shape, values) = npy::read_array(&bytes).map_err(|e| Error::data(path, e))?;
        let width = match shape[..] {
            [frames, width] if hands_offset(width as usize).is_some() => {
                if frames == 0 {
                    return Err(Error::data(path, "holds no frames"));
                }
                width as usize
            }
            _ => {
                return Err(Error::data(
                    path,
                    format!(
                        "holds an array of shape {shape:?}; a recording is [frames, \
                         {FRAME_WIDTH}] (pose and hands) or [frames, {FACE_FRAME_WIDTH}] (with \
                         the face)"
                    ),
                ))
            }
        };
        Ok(Recording { values, width })
    }

    /// Clips of `pack` joined by `gap` idle frames (before the first, between each two and
    /// after the last): the last frame before the gap (the first clip's first frame for the
    /// leading gap) with the hands out of view. A stream of known signs, for tests and
    /// demonstrations.
    ///
    /// # Panics
    /// If a clip index is not below `pack.len()`, as slice indexing does.
    pub fn stitch(pack: &ClipPack, clips: &[usize], gap: usize) -> Recording {
        let mut values = Vec::new();
        let idle = |values: &mut Vec<f32>, frame: &[f32]| {
            for _ in 0..gap {
                values.extend(without_hands(frame));
            }
        };
        for &i in clips {
            let clip = pack.clip(i);
            let before = match values.len() {
                0 => &clip[..FRAME_WIDTH],
                n => &values[n - FRAME_WIDTH..],
            }
            .to_vec();
            idle(&mut values, &before);
            values.extend_from_slice(clip);
        }
        if let Some(last) = values.len().checked_sub(FRAME_WIDTH) {
            let last = values[last..].to_vec();
            idle(&mut values, &last);
        }
        Recording {
            values,
            width: FRAME_WIDTH,
        }
    }

    /// Frames in the recording.
    pub fn len(&self) -> usize {
        self.values.len() / self.width
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The frames in order.
    pub fn frames(&self) -> std::slice::ChunksExact<'_, f32> {
        self.values.chunks_exact(self.width)
    }
}

/// Frames of [`FRAME_WIDTH`] values with both hands zeroed and the pose kept: what MediaPipe
/// gives while the hands are out of view.
pub fn without_hands(frames: &[f32]) -> Vec<f32> {
    let mut out = frames.to_vec();
    for frame in out.chunks_exact_mut(FRAME_WIDTH) {
        frame[POSE_VALUES..].fill(0.0);
    }
    out
}
