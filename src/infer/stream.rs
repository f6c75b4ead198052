//! Live recognition: [`StreamingRecognizer`] takes raw MediaPipe frames one at a time, as a
//! webcam application receives them, classifies a sliding window of the latest frames with an
//! [`InferencePipeline`], and hands the class probabilities to a [`Segmenter`], which smooths
//! them over windows and emits the signs it finds as [`Segment`]s.
//!
//! Frame numbers count the stream's frames from 0, as they were pushed; a rejected frame
//! (wrong width, a non-finite value) is not counted.

mod recording;
mod segmenter;

use std::collections::VecDeque;

use super::{softmax, InferencePipeline};
use crate::backend::Backend;
use crate::data::features::{hands_offset, POSE_VALUES};
use crate::data::packs::FRAME_WIDTH;
use crate::error::{Error, Result};
pub use recording::{without_hands, Recording};
pub use segmenter::{Segment, Segmenter};

/// How a stream is windowed and how windows become segments.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Frames per classified window (each window is preprocessed as a clip is: resampled to
    /// the pipeline's seq_len). Default 32, about a second at 30 frames/s.
    pub window: usize,
    /// Frames from one classified window to the next, at most `window`. Default 8.
    pub stride: usize,
    /// The least smoothed probability of a sign's class that makes a window count for it,
    /// from 0 to 1. Default 0.5.
    pub min_prob: f32,
    /// Windows whose class probabilities are averaged before a window is decided: the
    /// latest and those before it (1 = no smoothing). Default 3.
    pub smoothing: usize,
    /// Class names that mean "no sign", compared without regard to case: a window whose best
    /// class is one of them ends any sign and starts none. Default `-`, `none` and `idle`.
    pub no_sign: Vec<String>,
}

/// The longest window: a sign lasts a few seconds, and a window of more frames than this
/// (34 s at 30 frames/s) would hold many signs and resample them to one clip's length.
pub const MAX_WINDOW: usize = 1024;
/// The most windows smoothed over.
pub const MAX_SMOOTHING: usize = 64;

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            window: 32,
            stride: 8,
            min_prob: 0.5,
            smoothing: 3,
            no_sign: ["-", "none", "idle"].map(String::from).to_vec(),
        }
    }
}

impl StreamSettings {
    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, value: String, allowed| {
            Err(Error::InvalidConfig {
                field,
                value,
                allowed,
            })
        };
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return invalid(
                "window",
                self.window.to_string(),
                "from 1 to 1024 frames (a window is one clip's worth of signing)",
            );
        }
        if !(1..=self.window).contains(&self.stride) {
            return invalid(
                "stride",
                self.stride.to_string(),
                "from 1 frame to the window's length (a longer stride never classifies the \
                 frames between windows)",
            );
        }
        if !(0.0..=1.0).contains(&self.min_prob) {
            return invalid(
                "min_prob",
                self.min_prob.to_string(),
                "a probability from 0 to 1",
            );
        }
        if !(1..=MAX_SMOOTHING).contains(&self.smoothing) {
            return invalid(
                "smoothing",
                self.smoothing.to_string(),
                "from 1 (no smoothing) to 64 windows",
            );
        }
        Ok(())
    }
}

/// A sliding-window recogniser over one stream of frames, on the pipeline's device.
///
/// The first window is classified when `window` frames have come, then one every `stride`
/// frames; [`finish`](StreamingRecognizer::finish) classifies the last frames once more when
/// frames came after the last window (so that a stream shorter than a window is classified
/// as one shorter window) and closes the sign still open.
pub struct StreamingRecognizer<'p, 'b, B: Backend> {
    pipeline: &'p InferencePipeline<'b, B>,
    settings: StreamSettings,
    segmenter: Segmenter,
    /// The latest frames, at most `window`, [`FRAME_WIDTH`] values each.
    ring: VecDeque<f32>,
    /// Frames taken so far.
    frames: usize,
    /// Frames taken when the last window was classified.
    classified_at: usize,
}

impl<'p, 'b, B: Backend> StreamingRecognizer<'p, 'b, B> {
    pub fn new(
        pipeline: &'p InferencePipeline<'b, B>,
        settings: StreamSettings,
    ) -> Result<StreamingRecognizer<'p, 'b, B>> {
        let segmenter = Segmenter::new(pipeline.classes().to_vec(), &settings)?;
        Ok(StreamingRecognizer {
            pipeline,
            ring: VecDeque::with_capacity(settings.window * FRAME_WIDTH),
            settings,
            segmenter,
            frames: 0,
            classified_at: 0,
        })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// Frames taken so far (the next frame's number).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Takes the next frame (258 values, or 1662 with the face, which is dropped), and
    /// returns the sign that ends at it, if any. A frame of another width or with a value
    /// that is not finite is an error and is not taken; the stream goes on.
    pub fn push(&mut self, frame: &[f32]) -> Result<Option<Segment>> {
        let name = || format!("frame {}", self.frames);
        let hands = hands_offset(frame.len()).ok_or_else(|| {
            Error::data(
                name(),
                format!(
                    "has {} values; a frame has {FRAME_WIDTH} (pose and hands) or 1662 (with \
                     the face)",
                    frame.len()
                ),
            )
        })?;
        if let Some(j) = frame.iter().position(|v| !v.is_finite()) {
            return Err(Error::data(
                name(),
                format!("value {j} is {}; landmarks must be finite", frame[j]),
            ));
        }
        if self.ring.len() == self.settings.window * FRAME_WIDTH {
            self.ring.drain(..FRAME_WIDTH);
        }
        self.ring.extend(&frame[..POSE_VALUES]);
        self.ring.extend(&frame[hands..]);
        self.frames += 1;
        let due = self.frames >= self.settings.window
            && (self.frames - self.settings.window) % self.settings.stride == 0;
        if due {
            self.classify()
        } else {
            Ok(None)
        }
    }

    /// Every frame of a whole recording in turn, then [`finish`](Self::finish): the
    /// segments found, in order.
    pub fn recognize<'f>(
        mut self,
        frames: impl IntoIterator<Item = &'f [f32]>,
    ) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        for frame in frames {
            segments.extend(self.push(frame)?);
        }
        segments.extend(self.finish()?);
        Ok(segments)
    }

    /// Ends the stream: classifies the frames after the last window (see the type's notes)
    /// and returns the signs that end then, in order.
    pub fn finish(mut self) -> Result<Vec<Segment>> {
        let mut segments = Vec::new();
        if self.frames > self.classified_at {
            segments.extend(self.classify()?);
        }
        segments.extend(self.segmenter.finish());
        Ok(segments)
    }

    /// Classifies the frames in the ring, the window that ends at the latest frame.
    fn classify(&mut self) -> Result<Option<Segment>> {
        self.classified_at = self.frames;
        let end = self.frames - 1;
        let start = self.frames - self.ring.len() / FRAME_WIDTH;
        let logits = self
            .pipeline
            .frames_logits(self.ring.make_contiguous(), FRAME_WIDTH)?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFiniteOutput {
                input: format!("frames {start} to {end} of the stream"),
                detail: "the window's logits hold a NaN or an infinity".into(),
            });
        }
        self.segmenter.window(start, end, &softmax(&logits))
    }
}
