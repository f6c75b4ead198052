//! Evaluation of a model on a labelled dataset: mean loss, top-1 and top-min(5, classes)
//! accuracy, and accuracy per class. A clip whose logits hold a NaN or an infinity is never
//! counted as correct, and is counted apart.

use crate::backend::Backend;
use crate::data::loader::Loader;
use crate::error::Result;
use crate::model::{SignTransformer, Workspace};

/// What [`evaluate`] measures. Accuracies are fractions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalReport {
    pub clips: usize,
    /// Mean cross-entropy without label smoothing; NaN or infinite when the model's outputs
    /// overflowed.
    pub loss: f64,
    pub top1: f64,
    /// Top-`k` accuracy, k = min(5, classes).
    pub topk: f64,
    pub k: usize,
    /// (correct at top-1, clips) per class, in class order.
    pub per_class: Vec<(usize, usize)>,
    /// Clips whose logits hold a NaN or an infinity.
    pub non_finite: usize,
}

impl EvalReport {
    /// Whether the loss and every clip's logits are finite: only then do the scores measure
    /// the model.
    pub fn is_finite(&self) -> bool {
        self.loss.is_finite() && self.non_finite == 0
    }

    /// What was not finite, for a report that is not ([`EvalReport::is_finite`]).
    pub fn non_finite_note(&self) -> String {
        if self.non_finite > 0 {
            format!(
                "{} of {} clips gave NaN or infinite logits, counted as wrong",
                self.non_finite, self.clips
            )
        } else {
            "every logit is finite, but the loss overflowed: some logits are too far apart for \
             f32"
            .into()
        }
    }
}

/// Runs `model` without dropout over every batch of `loader` (its batches in order).
pub fn evaluate<B: Backend>(
    backend: &B,
    model: &SignTransformer<B>,
    loader: &Loader,
) -> Result<EvalReport> {
    let cfg = model.config();
    let mut ws: Option<Workspace<B>> = None;
    let (mut loss_sum, mut top1, mut topk, mut clips) = (0.0f64, 0usize, 0usize, 0usize);
    let mut non_finite = 0;
    let mut per_class = vec![(0usize, 0usize); cfg.num_classes];
    for item in loader.epoch(0) {
        let (batch, ids) = item?;
        let w = planned(&mut ws, backend, model, batch.batch, batch.seq, false)?;
        w.load(backend, cfg, &batch, &ids)?;
        model.forward(backend, w, None)?;
        model.loss(backend, w, 0.0)?;
        let (loss, hits1, hitsk) = w.loss_and_hits()?;
        loss_sum += loss as f64 * batch.batch as f64;
        top1 += hits1;
        topk += hitsk;
        clips += batch.batch;
        let logits = w.logits().to_f32_vec()?;
        for (row, &label) in logits.chunks(cfg.num_classes).zip(&batch.labels) {
            per_class[label].1 += 1;
            match argmax(row) {
                Some(best) if best == label => per_class[label].0 += 1,
                Some(_) => {}
                None => non_finite += 1,
            }
        }
    }
    let frac = |n: usize| {
        if clips == 0 {
            0.0
        } else {
            n as f64 / clips as f64
        }
    };
    Ok(EvalReport {
        clips,
        loss: if clips == 0 {
            0.0
        } else {
            loss_sum / clips as f64
        },
        top1: frac(top1),
        topk: frac(topk),
        k: cfg.num_classes.min(5),
        per_class,
        non_finite,
    })
}

/// The index of the largest value (the first of equals); None when a value is NaN or
/// infinite, since such a row ranks nothing.
pub fn argmax(row: &[f32]) -> Option<usize> {
    if row.iter().any(|v| !v.is_finite()) {
        return None;
    }
    row.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, bv)) if v <= bv => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

/// The workspace for `(batch, seq)`, re-planned only when the shape changes (the last, smaller
/// batch of an epoch).
pub(crate) fn planned<'w, B: Backend>(
    ws: &'w mut Option<Workspace<B>>,
    backend: &B,
    model: &SignTransformer<B>,
    batch: usize,
    seq: usize,
    training: bool,
) -> Result<&'w Workspace<B>> {
    if ws.as_ref().is_none_or(|w| w.batch != batch || w.seq != seq) {
        *ws = None; // free the old plan's buffers before allocating the new one
        *ws = Some(Workspace::new_in(
            backend,
            model.config(),
            batch,
            seq,
            training,
            model.precision(),
        )?);
    }
    Ok(ws.as_ref().expect("planned above"))
}
