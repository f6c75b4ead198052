//! From the class probabilities of successive windows to segments: each window's
//! probabilities are averaged with those of the windows before it ([`StreamSettings`]'s
//! `smoothing`); a window counts for its best class when that class is a sign (not a "no sign"
//! class) at least `min_prob` likely; a run of windows that count for the same sign is one
//! segment, emitted when the run ends.

use std::collections::VecDeque;

use super::StreamSettings;
use crate::error::{Error, Result};

/// A sign found in a stream: frames `start_frame` to `end_frame`, both included (the first
/// frame of the run's first window to the last frame of its last window; so a sign that
/// follows another without a pause may share frames with it).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    pub start_frame: usize,
    pub end_frame: usize,
    pub class: String,
    /// The sign's smoothed probability, averaged over the run's windows.
    pub prob: f32,
}

/// The decisions of a stream's windows, turned into segments.
#[derive(Debug, Clone)]
pub struct Segmenter {
    classes: Vec<String>,
    is_sign: Vec<bool>,
    min_prob: f32,
    smoothing: usize,
    /// The probabilities of the latest windows, at most `smoothing`.
    recent: VecDeque<Vec<f32>>,
    run: Option<Run>,
}

/// Windows in a row that counted for one sign.
#[derive(Debug, Clone)]
struct Run {
    class: usize,
    start_frame: usize,
    end_frame: usize,
    prob_sum: f64,
    windows: usize,
}

impl Run {
    fn segment(self, classes: &[String]) -> Segment {
        Segment {
            start_frame: self.start_frame,
            end_frame: self.end_frame,
            class: classes[self.class].clone(),
            prob: (self.prob_sum / self.windows as f64) as f32,
        }
    }
}

impl Segmenter {
    /// A segmenter for a model with these classes (those named in `settings.no_sign` never
    /// make a segment).
    pub fn new(classes: Vec<String>, settings: &StreamSettings) -> Result<Segmenter> {
        settings.validate()?;
        let is_sign = classes
            .iter()
            .map(|c| !settings.no_sign.iter().any(|n| n.eq_ignore_ascii_case(c)))
            .collect();
        Ok(Segmenter {
            classes,
            is_sign,
            min_prob: settings.min_prob,
            smoothing: settings.smoothing,
            recent: VecDeque::with_capacity(settings.smoothing),
            run: None,
        })
    }

    /// Takes the class probabilities of the window of frames `start_frame` to `end_frame`
    /// (windows in stream order), and returns the segment that this window ends, if any.
    pub fn window(
        &mut self,
        start_frame: usize,
        end_frame: usize,
        probs: &[f32],
    ) -> Result<Option<Segment>> {
        if probs.len() != self.classes.len() {
            return Err(Error::shape(
                "segmenter",
                format!(
                    "{} probabilities for a model of {} classes",
                    probs.len(),
                    self.classes.len()
                ),
            ));
        }
        if let Some(p) = probs.iter().find(|p| !(0.0..=1.0).contains(*p)) {
            return Err(Error::shape(
                "segmenter",
                format!("{p} is not a probability from 0 to 1"),
            ));
        }
        if self.recent.len() == self.smoothing {
            self.recent.pop_front();
        }
        self.recent.push_back(probs.to_vec());
        let decision = self.decide();
        if let (Some(run), Some((class, prob))) = (&mut self.run, decision) {
            if run.class == class {
                run.end_frame = end_frame;
                run.prob_sum += prob as f64;
                run.windows += 1;
                return Ok(None);
            }
        }
        let ended = self.run.take().map(|r| r.segment(&self.classes));
        self.run = decision.map(|(class, prob)| Run {
            class,
            start_frame,
            end_frame,
            prob_sum: prob as f64,
            windows: 1,
        });
        Ok(ended)
    }

    /// Ends the stream: the segment still open, if any.
    pub fn finish(&mut self) -> Option<Segment> {
        self.recent.clear();
        self.run.take().map(|r| r.segment(&self.classes))
    }

    /// The sign that the latest windows' mean probabilities point to, and its probability;
    /// none when the best class is no sign or less likely than `min_prob`.
    fn decide(&self) -> Option<(usize, f32)> {
        let n = self.recent.len() as f32;
        let mean: Vec<f32> = (0..self.classes.len())
            .map(|c| self.recent.iter().map(|p| p[c]).sum::<f32>() / n)
            .collect();
        // The first of equally likely classes, as top_k ranks them.
        let best = (0..mean.len()).reduce(|a, b| if mean[b] > mean[a] { b } else { a })?;
        (self.is_sign[best] && mean[best] >= self.min_prob).then_some((best, mean[best]))
    }
}
