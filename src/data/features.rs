//! Preprocessing: raw MediaPipe frames → model input `[seq_len, NUM_FEATURES]`, as
//! `shared/reference/features.py` specifies it:
//!
//! 1. [`to_raw225`]: reorder a 258- (or 1662-) wide frame to the 225 layout: left hand 21 × 3,
//!    right hand 21 × 3, pose 33 × (x, y, z);
//! 2. [`resample`]: linear interpolation along time onto `seq_len` evenly spaced points;
//! 3. [`enrich`]: body-normalised coordinates (225), velocities (225), hand distances (5),
//!    joint angles (4) and hand shape (10), non-finite results replaced by 0.
//!
//! The arithmetic follows numpy's step by step: f32 everywhere except the interpolation,
//! which numpy (`np.linspace`, `np.interp`) does in f64, and sums over the 3 coordinates in
//! order. Bit-level agreement matters for the joint angles: `acos` near ±1 turns a one-ulp
//! difference in the cosine into an error of about 3e-4.

use crate::data::packs::FRAME_WIDTH;
use crate::error::{Error, Result};

/// Values per frame in the 225 layout.
pub const RAW_DIM: usize = 225;
/// Features per frame of model input.
pub const NUM_FEATURES: usize = 469;
/// Values per frame in the MediaPipe layout that also keeps the face: pose 132, face 468 × 3,
/// left hand 63, right hand 63.
pub const FACE_FRAME_WIDTH: usize = 1662;

/// Values of one pose (33 × 4 with visibility, first in every frame) and one hand (21 × 3).
pub(crate) const POSE_VALUES: usize = 132;
const HAND_VALUES: usize = 63;

/// Lower bound of every norm (features.py `EPS`): keeps divisions by a norm finite.
const EPS: f32 = 1e-8;
/// Where each part starts in the 225 layout.
const LH: usize = 0;
const RH: usize = 63;
const POSE: usize = 126;
/// Pose landmarks.
const L_SHOULDER: usize = 11;
const R_SHOULDER: usize = 12;
const L_ELBOW: usize = 13;
const R_ELBOW: usize = 14;
const L_WRIST: usize = 15;
const R_WRIST: usize = 16;
const L_HIP: usize = 23;
const R_HIP: usize = 24;
/// Hand landmarks.
const WRIST: usize = 0;
const THUMB_TIP: usize = 4;
const INDEX_TIP: usize = 8;
const MIDDLE_TIP: usize = 12;
const RING_TIP: usize = 16;
const PINKY_TIP: usize = 20;

/// Where the left hand starts in a frame of `width` values (the right hand follows it); `None`
/// for a width that is neither layout.
pub(crate) fn hands_offset(width: usize) -> Option<usize> {
    match width {
        FRAME_WIDTH => Some(POSE_VALUES),
        FACE_FRAME_WIDTH => Some(FACE_FRAME_WIDTH - 2 * HAND_VALUES),
        _ => None,
    }
}

/// Reorders frames of `width` values (258, or 1662 with the face) to the 225 layout: left
/// hand, right hand, pose without visibility.
pub fn to_raw225(frames: &[f32], width: usize) -> Result<Vec<f32>> {
    let hands = hands_offset(width).ok_or_else(|| {
        Error::shape(
            "to_raw225",
            format!("expected {FRAME_WIDTH} or {FACE_FRAME_WIDTH} values per frame, got {width}"),
        )
    })?;
    if frames.len() % width != 0 {
        return Err(Error::shape(
            "to_raw225",
            format!(
                "{} values are not whole frames of {width} values",
                frames.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(frames.len() / width * RAW_DIM);
    for frame in frames.chunks_exact(width) {
        out.extend_from_slice(&frame[hands..hands + 2 * HAND_VALUES]);
        for point in frame[..POSE_VALUES].chunks_exact(4) {
            out.extend_from_slice(&point[..3]);
        }
    }
    Ok(out)
}

/// `n` frames (of `seq.len() / n` values each) → `target` frames by linear interpolation
/// along time, in f64 as `np.interp` does; the first and last frames are kept exactly and a
/// one-frame clip is repeated.
///
/// # Panics
/// If `n` is 0 or `seq.len()` is not a multiple of `n` ([`preprocess`] checks both).
pub fn resample(seq: &[f32], n: usize, target: usize) -> Vec<f32> {
    assert!(
        n > 0 && seq.len() % n == 0,
        "resample: {} values are not {n} frames",
        seq.len()
    );
    if n == target {
        return seq.to_vec();
    }
    if n == 1 {
        return seq.repeat(target);
    }
    let width = seq.len() / n;
    let src = linspace(n);
    let mut out = Vec::with_capacity(target * width);
    for x in linspace(target) {
        // np.interp: the last source point at or before x; x on a source point takes that
        // frame as it is.
        let j = src.partition_point(|&s| s <= x) - 1;
        let frame = &seq[j * width..(j + 1) * width];
        if j == n - 1 || src[j] == x {
            out.extend_from_slice(frame);
            continue;
        }
        let next = &seq[(j + 1) * width..(j + 2) * width];
        let dx = src[j + 1] - src[j];
        out.extend(frame.iter().zip(next).map(|(&y0, &y1)| {
            let slope = (f64::from(y1) - f64::from(y0)) / dx;
            (slope * (x - src[j]) + f64::from(y0)) as f32
        }));
    }
    out
}

/// `np.linspace(0.0, 1.0, num)`: `i · (1 / (num − 1))`, the last point exactly 1.
fn linspace(num: usize) -> Vec<f64> {
    let step = 1.0 / (num.max(2) - 1) as f64;
    (0..num)
        .map(|i| {
            if num > 1 && i == num - 1 {
                1.0
            } else {
                i as f64 * step
            }
        })
        .collect()
}

type P3 = [f32; 3];

/// Point `idx` of the part starting at `block` in a 225-wide frame.
fn pt(frame: &[f32], block: usize, idx: usize) -> P3 {
    let s = block + 3 * idx;
    [frame[s], frame[s + 1], frame[s + 2]]
}

fn sub(a: P3, b: P3) -> P3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// `np.maximum(np.linalg.norm(v), EPS)` in f32: squares summed in order, NaN kept.
fn norm(v: P3) -> f32 {
    let n = dot(v, v).sqrt();
    if n.is_nan() {
        n
    } else {
        n.max(EPS)
    }
}

/// `np.sum(a * b, axis=-1)` in f32, summed in order as numpy does for 3 values.
fn dot(a: P3, b: P3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Centres every point of each 225-wide frame on the hip centre (the shoulder centre where
/// the hips are missing, i.e. their centre has norm ≤ 1e-5), divides by the shoulder width
/// (1 where it is ≤ 1e-4) and clips to [-5, 5].
pub fn normalize_body(seq: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(seq.len());
    for frame in seq.chunks_exact(RAW_DIM) {
        let (ls, rs) = (pt(frame, POSE, L_SHOULDER), pt(frame, POSE, R_SHOULDER));
        let (lh, rh) = (pt(frame, POSE, L_HIP), pt(frame, POSE, R_HIP));
        let hip = [0, 1, 2].map(|k| (lh[k] + rh[k]) * 0.5);
        let centre = if norm(hip) > 1e-5 {
            hip
        } else {
            [0, 1, 2].map(|k| (ls[k] + rs[k]) * 0.5)
        };
        let width = norm(sub(ls, rs));
        let scale = if width > 1e-4 { width } else { 1.0 };
        for p in frame.chunks_exact(3) {
            // clamp keeps NaN, as np.clip does; enrich replaces it.
            out.extend((0..3).map(|k| ((p[k] - centre[k]) / scale).clamp(-5.0, 5.0)));
        }
    }
    out
}

/// The angle at `b` between `a` and `c`, NaN where it is undefined.
fn angle(a: P3, b: P3, c: P3) -> f32 {
    let (ba, bc) = (sub(a, b), sub(c, b));
    let cos = dot(ba, bc) / (norm(ba) * norm(bc));
    cos.clamp(-1.0, 1.0).acos()
}

/// The 469 features of `t` frames in the 225 layout: normalised coordinates, velocities (zero
/// on the first frame), distances between the hands' wrists and tips (thumb, index, middle,
/// pinky), the elbow and wrist angles, and per hand the mean and each of the wrist-to-tip
/// distances (index, middle, ring, pinky). Non-finite results become 0.
///
/// # Panics
/// If `seq.len() != t * RAW_DIM`.
pub fn enrich(seq: &[f32], t: usize) -> Vec<f32> {
    assert_eq!(
        seq.len(),
        t * RAW_DIM,
        "enrich: expected {t} frames of {RAW_DIM}"
    );
    let n = normalize_body(seq);
    let mut out = Vec::with_capacity(t * NUM_FEATURES);
    for (i, frame) in n.chunks_exact(RAW_DIM).enumerate() {
        out.extend_from_slice(frame);
        match i {
            0 => out.extend(std::iter::repeat_n(0.0, RAW_DIM)),
            _ => {
                let prev = &n[(i - 1) * RAW_DIM..i * RAW_DIM];
                out.extend(frame.iter().zip(prev).map(|(a, b)| a - b));
            }
        }
        for idx in [WRIST, THUMB_TIP, INDEX_TIP, MIDDLE_TIP, PINKY_TIP] {
            out.push(norm(sub(pt(frame, LH, idx), pt(frame, RH, idx))));
        }
        let p = |block, idx| pt(frame, block, idx);
        out.extend([
            angle(p(POSE, L_SHOULDER), p(POSE, L_ELBOW), p(POSE, L_WRIST)),
            angle(p(POSE, R_SHOULDER), p(POSE, R_ELBOW), p(POSE, R_WRIST)),
            angle(p(POSE, L_ELBOW), p(LH, WRIST), p(LH, MIDDLE_TIP)),
            angle(p(POSE, R_ELBOW), p(RH, WRIST), p(RH, MIDDLE_TIP)),
        ]);
        for hand in [LH, RH] {
            let w = p(hand, WRIST);
            let tips =
                [INDEX_TIP, MIDDLE_TIP, RING_TIP, PINKY_TIP].map(|tip| norm(sub(p(hand, tip), w)));
            out.push((tips[0] + tips[1] + tips[2] + tips[3]) / 4.0);
            out.extend(tips);
        }
    }
    // np.nan_to_num(nan=0, posinf=0, neginf=0)
    for v in &mut out {
        if !v.is_finite() {
            *v = 0.0;
        }
    }
    out
}

/// Raw frames (`width` = 258 or 1662 values each) → `[seq_len, NUM_FEATURES]`.
///
/// A clip with no frames, or with a NaN or infinite value, is an [`Error::Data`] that names
/// the frame and the value; the caller adds the clip's name.
pub fn preprocess(frames: &[f32], width: usize, seq_len: usize) -> Result<Vec<f32>> {
    if seq_len == 0 {
        return Err(Error::InvalidConfig {
            field: "seq_len",
            value: "0".into(),
            allowed: "at least 1 frame",
        });
    }
    let raw = to_raw225(frames, width)?;
    let n = raw.len() / RAW_DIM;
    if n == 0 {
        return Err(Error::data(
            "frames",
            "none given; a clip needs at least one frame",
        ));
    }
    if let Some(j) = frames.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(
            format!("frame {}", j / width),
            format!(
                "value {} is {}; landmarks must be finite (re-record or drop this clip)",
                j % width,
                frames[j]
            ),
        ));
    }
    Ok(enrich(&resample(&raw, n, seq_len), seq_len))
}
