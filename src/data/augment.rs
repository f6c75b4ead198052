//! Training-time augmentation of raw landmark clips ([`FRAME_WIDTH`]-wide MediaPipe Holistic
//! frames, `../shared/data/README.md`), applied before preprocessing.
//!
//! Each clip gets, in this order and each only when enabled: a mirror (probability 0.5), a time
//! stretch, one spatial transform for the whole clip (scale, rotation, shift of x and y), and
//! frozen spans. All draws come from the caller's generator, so a clip's augmentation is a
//! function of that generator's seed alone (the loader seeds one per clip and epoch).
//!
//! A point whose x, y and z are all exactly zero is missing (MediaPipe found no hand, or no
//! body): it stays exactly zero through every step, so preprocessing still sees it as missing.
//!
//! How much survives preprocessing: the features are centred on the hips and divided by the
//! shoulder width (`shared/reference/features.py`), which undoes a shift entirely and a uniform
//! scale almost entirely; this is why x and y are scaled by independent factors (a change of
//! aspect ratio, which the normalisation keeps). Likewise preprocessing resamples every clip to
//! `seq_len` frames, so a uniform time stretch mostly comes back out as a slight smoothing.
//! Rotation, mirroring and frozen spans change the features fully.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::packs::FRAME_WIDTH;
use crate::error::{Error, Result};

/// Pose landmarks per frame, each (x, y, z, visibility).
const POSE_POINTS: usize = 33;
/// Values in the pose block; the left hand starts here, then the right hand.
const POSE_WIDTH: usize = POSE_POINTS * 4;
/// Values in one hand block: 21 × (x, y, z).
const HAND_WIDTH: usize = 63;
const LEFT_HAND: usize = POSE_WIDTH;
const RIGHT_HAND: usize = POSE_WIDTH + HAND_WIDTH;

/// MediaPipe Pose landmarks that trade places under a mirror: eyes (inner, centre, outer),
/// ears, mouth corners, shoulders, elbows, wrists, pinky, index, thumb, hips, knees, ankles,
/// heels, foot index. The nose (0) is its own mirror image.
const POSE_MIRROR_PAIRS: [(usize, usize); 16] = [
    (1, 4),
    (2, 5),
    (3, 6),
    (7, 8),
    (9, 10),
    (11, 12),
    (13, 14),
    (15, 16),
    (17, 18),
    (19, 20),
    (21, 22),
    (23, 24),
    (25, 26),
    (27, 28),
    (29, 30),
    (31, 32),
];

/// The centre of rotation and scaling: the middle of the image in MediaPipe's normalised
/// coordinates. Chosen over the body's centre because it needs no estimate (the hips are often
/// out of frame) and the preprocessing re-centres on the body anyway.
const CENTRE: f32 = 0.5;

/// How strongly to augment; every field at 0 (or `false`) turns its step off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Time stretch: the clip is resampled to `round(n · s)` frames (at least one), `s` uniform
    /// in `[1 − stretch, 1 + stretch]`. In `[0, 1)`.
    pub stretch: f32,
    /// x and y are scaled about the image centre by independent factors, each uniform in
    /// `[1 − scale, 1 + scale]`. In `[0, 1)`.
    pub scale: f32,
    /// Rotation in the image plane about the image centre, uniform in `±rotate_degrees`. In
    /// `[0, 180]`.
    pub rotate_degrees: f32,
    /// Shift of x and of y, each uniform in `±shift` (normalised image units). In `[0, 1]`.
    pub shift: f32,
    /// With probability 0.5, mirror the clip: x → 1 − x, left and right hands swapped, and
    /// left and right pose landmarks swapped, which makes a right-handed signer left-handed.
    pub mirror: bool,
    /// Frozen spans: the clip gets between 1 and `time_mask_spans` spans (uniform), each
    /// replaced by the frame just before it, as if the video stalled. 0 = off.
    ///
    /// Frozen rather than zeroed, because zeros read as "no hand, no body", which is a
    /// different signal; and rather than dropped, because dropping frames is what the time
    /// stretch already does.
    pub time_mask_spans: usize,
    /// The longest frozen span, as a fraction of the clip's frames (at least one frame, and
    /// never the first frame). In `[0, 1]`.
    pub time_mask_max: f32,
}

impl Default for AugmentConfig {
    /// Modest strengths: ±20% time stretch, ±10% scale, ±10° rotation, ±0.05 shift, up to two
    /// frozen spans of up to a tenth of the clip each; no mirroring, since it changes which hand
    /// signs and is only right where left-handed signers are expected.
    fn default() -> Self {
        AugmentConfig {
            stretch: 0.2,
            scale: 0.1,
            rotate_degrees: 10.0,
            shift: 0.05,
            mirror: false,
            time_mask_spans: 2,
            time_mask_max: 0.1,
        }
    }
}

impl AugmentConfig {
    /// Every step off: [`augment_clip`] returns the clip unchanged and draws nothing.
    pub fn none() -> Self {
        AugmentConfig {
            stretch: 0.0,
            scale: 0.0,
            rotate_degrees: 0.0,
            shift: 0.0,
            mirror: false,
            time_mask_spans: 0,
            time_mask_max: 0.0,
        }
    }

    /// Checks every strength against its range (see the fields).
    pub fn validate(&self) -> Result<()> {
        let check = |field: &'static str, value: f32, ok: bool, allowed: &'static str| {
            if value.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::InvalidConfig {
                    field,
                    value: value.to_string(),
                    allowed,
                })
            }
        };
        check(
            "augment.stretch",
            self.stretch,
            (0.0..1.0).contains(&self.stretch),
            "0 <= stretch < 1 (0.2 stretches clips by up to ±20%)",
        )?;
        check(
            "augment.scale",
            self.scale,
            (0.0..1.0).contains(&self.scale),
            "0 <= scale < 1 (0.1 scales x and y by up to ±10%)",
        )?;
        check(
            "augment.rotate_degrees",
            self.rotate_degrees,
            (0.0..=180.0).contains(&self.rotate_degrees),
            "0 <= rotate_degrees <= 180",
        )?;
        check(
            "augment.shift",
            self.shift,
            (0.0..=1.0).contains(&self.shift),
            "0 <= shift <= 1 (normalised image units)",
        )?;
        check(
            "augment.time_mask_max",
            self.time_mask_max,
            (0.0..=1.0).contains(&self.time_mask_max),
            "0 <= time_mask_max <= 1 (a fraction of the clip's frames)",
        )
    }
}

/// Augments one clip of `n` raw frames (`frames` is `n · FRAME_WIDTH` values, all finite; the
/// loader checks) and returns the new frames and their count, which differs from `n` when the
/// clip was stretched. The config is assumed valid ([`AugmentConfig::validate`]).
///
/// # Panics
///
/// If `frames.len() != n · FRAME_WIDTH`: a bug in the caller, not bad data.
pub fn augment_clip<R: Rng + ?Sized>(
    frames: &[f32],
    n: usize,
    cfg: &AugmentConfig,
    rng: &mut R,
) -> (Vec<f32>, usize) {
    assert_eq!(
        frames.len(),
        n * FRAME_WIDTH,
        "augment_clip: {n} frames need {} values",
        n * FRAME_WIDTH
    );
    let mut out = frames.to_vec();
    let mut n = n;
    if n == 0 {
        return (out, n);
    }

    if cfg.mirror && rng.random_bool(0.5) {
        for frame in out.chunks_exact_mut(FRAME_WIDTH) {
            mirror(frame);
        }
    }

    if cfg.stretch > 0.0 {
        let s = rng.random_range(1.0 - cfg.stretch..=1.0 + cfg.stretch);
        let m = ((n as f32 * s).round() as usize).max(1);
        out = stretch(&out, n, m);
        n = m;
    }

    let spatial = Spatial {
        sx: 1.0 + symmetric(rng, cfg.scale),
        sy: 1.0 + symmetric(rng, cfg.scale),
        angle: symmetric(rng, cfg.rotate_degrees).to_radians(),
        tx: symmetric(rng, cfg.shift),
        ty: symmetric(rng, cfg.shift),
    };
    if spatial != Spatial::IDENTITY {
        for frame in out.chunks_exact_mut(FRAME_WIDTH) {
            spatial.apply(frame);
        }
    }

    if cfg.time_mask_spans > 0 && n >= 2 {
        let spans = rng.random_range(1..=cfg.time_mask_spans);
        let longest = ((cfg.time_mask_max * n as f32).round() as usize).clamp(1, n - 1);
        for _ in 0..spans {
            let len = rng.random_range(1..=longest);
            let start = rng.random_range(1..=n - len);
            let (held, rest) = out.split_at_mut(start * FRAME_WIDTH);
            let held = &held[(start - 1) * FRAME_WIDTH..];
            for frame in rest[..len * FRAME_WIDTH].chunks_exact_mut(FRAME_WIDTH) {
                frame.copy_from_slice(held);
            }
        }
    }

    (out, n)
}

/// Uniform in `[−a, a]`; 0 without drawing when `a` is 0, so that a step that is off leaves
/// the other steps' draws as they were.
fn symmetric<R: Rng + ?Sized>(rng: &mut R, a: f32) -> f32 {
    if a > 0.0 {
        rng.random_range(-a..=a)
    } else {
        0.0
    }
}

/// The offsets of every point's x in a frame (y follows x, then z).
fn points() -> impl Iterator<Item = usize> {
    let pose = (0..POSE_POINTS).map(|p| 4 * p);
    let hands = (0..2 * 21).map(|p| POSE_WIDTH + 3 * p);
    pose.chain(hands)
}

fn is_missing(frame: &[f32], x: usize) -> bool {
    frame[x..x + 3].iter().all(|&v| v == 0.0)
}

fn mirror(frame: &mut [f32]) {
    for &(a, b) in &POSE_MIRROR_PAIRS {
        for k in 0..4 {
            frame.swap(4 * a + k, 4 * b + k);
        }
    }
    let (left, right) = frame[LEFT_HAND..].split_at_mut(HAND_WIDTH);
    left.swap_with_slice(&mut right[..HAND_WIDTH]);
    for x in points() {
        if !is_missing(frame, x) {
            frame[x] = 1.0 - frame[x];
        }
    }
}

/// The parts of a frame that are present or missing as a whole: the body and each hand.
const PARTS: [(usize, usize); 3] = [
    (0, POSE_WIDTH),
    (LEFT_HAND, HAND_WIDTH),
    (RIGHT_HAND, HAND_WIDTH),
];

/// Resamples `n` frames to `m` by linear interpolation at `m` evenly spaced times of `[0, 1]`
/// (the first and last frames kept, as in the reference's resample). Where a part (the body or
/// a hand) is missing in either neighbouring frame, the nearer frame's part is taken as it is,
/// so that no half-present hand is invented between a hand and no hand.
fn stretch(frames: &[f32], n: usize, m: usize) -> Vec<f32> {
    if n == m {
        return frames.to_vec();
    }
    let mut out = vec![0.0; m * FRAME_WIDTH];
    for (j, dst) in out.chunks_exact_mut(FRAME_WIDTH).enumerate() {
        let t = if m == 1 {
            0.0
        } else {
            j as f32 * (n - 1) as f32 / (m - 1) as f32
        };
        let i0 = (t.floor() as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        let w = t - i0 as f32;
        let f0 = &frames[i0 * FRAME_WIDTH..(i0 + 1) * FRAME_WIDTH];
        let f1 = &frames[i1 * FRAME_WIDTH..(i1 + 1) * FRAME_WIDTH];
        for &(start, len) in &PARTS {
            let part = start..start + len;
            let missing = |f: &[f32]| f[part.clone()].iter().all(|&v| v == 0.0);
            if missing(f0) || missing(f1) {
                let nearer = if w < 0.5 { f0 } else { f1 };
                dst[part.clone()].copy_from_slice(&nearer[part]);
            } else {
                for k in part {
                    dst[k] = f0[k] + w * (f1[k] - f0[k]);
                }
            }
        }
    }
    out
}

/// One clip's spatial transform of the image-plane coordinates:
/// `p' = R(angle) · diag(sx, sy) · (p − c) + c + (tx, ty)` with `c` the image centre; z and
/// visibility untouched.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spatial {
    sx: f32,
    sy: f32,
    angle: f32,
    tx: f32,
    ty: f32,
}

impl Spatial {
    const IDENTITY: Spatial = Spatial {
        sx: 1.0,
        sy: 1.0,
        angle: 0.0,
        tx: 0.0,
        ty: 0.0,
    };

    fn apply(&self, frame: &mut [f32]) {
        let (sin, cos) = self.angle.sin_cos();
        for x in points() {
            if is_missing(frame, x) {
                continue;
            }
            let dx = (frame[x] - CENTRE) * self.sx;
            let dy = (frame[x + 1] - CENTRE) * self.sy;
            frame[x] = CENTRE + cos * dx - sin * dy + self.tx;
            frame[x + 1] = CENTRE + sin * dx + cos * dy + self.ty;
        }
    }
}
