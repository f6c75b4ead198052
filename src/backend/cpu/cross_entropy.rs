//! Cross-entropy with class weights and label smoothing, as PyTorch computes it, and its
//! gradient: rows in parallel, the batch summed in row order.

use rayon::prelude::*;

use super::staging::{Dst, Scratch, Src};
use super::storage::{f32s, f32s_mut, with_io};
use super::CpuBackend;
use crate::backend::math;
use crate::error::Result;
use crate::tensor::Tensor;

/// One row of a cross-entropy: its share of the loss numerator, its weight, its label's rank
/// among the logits, and its log-sum-exp.
struct XentRow {
    loss: f32,
    weight: f32,
    rank: f32,
    lse: f32,
}

/// A label as a class index, if it is one.
fn class_index(label: f32, classes: usize) -> Option<usize> {
    (label >= 0.0 && label < classes as f32 && label.fract() == 0.0).then_some(label as usize)
}

fn xent_row(z: &[f32], label: f32, w: Option<&[f32]>, smoothing: f32) -> XentRow {
    let classes = z.len();
    let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + z.iter().map(|v| math::exp(v - max)).sum::<f32>().ln();
    let Some(y) = class_index(label, classes) else {
        return XentRow {
            loss: f32::NAN,
            weight: f32::NAN,
            rank: f32::NAN,
            lse,
        };
    };
    let weight = |c: usize| w.map_or(1.0, |w| w[c]);
    let smooth: f32 = (0..classes).map(|c| weight(c) * (lse - z[c])).sum();
    // A row with a NaN or an infinity ranks nothing: its label is put past every class.
    let rank = if z.iter().all(|v| v.is_finite()) {
        (0..classes)
            .filter(|&c| z[c] > z[y] || (z[c] == z[y] && c < y))
            .count()
    } else {
        classes
    };
    XentRow {
        loss: (1.0 - smoothing) * weight(y) * (lse - z[y]) + smoothing / classes as f32 * smooth,
        weight: weight(y),
        rank: rank as f32,
        lse,
    }
}

/// The mean loss, the top-1 and top-5 hits, and each row's log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    logits: &Tensor<CpuBackend>,
    labels: &Tensor<CpuBackend>,
    weights: Option<&Tensor<CpuBackend>>,
    label_smoothing: f32,
    loss: &Tensor<CpuBackend>,
    hits: &Tensor<CpuBackend>,
    lse: &Tensor<CpuBackend>,
    classes: usize,
) -> Result<()> {
    let mut inputs = vec![logits, labels];
    inputs.extend(weights);
    with_io(&inputs, &[loss, hits, lse], |ins, outs| {
        let (z, y) = (Src::of(ins[0], logits), f32s(ins[1], labels));
        let w = weights.map(|t| f32s(ins[2], t));
        let rows: Vec<XentRow> = y
            .par_iter()
            .enumerate()
            .map(|(i, &y)| {
                let mut scratch = Scratch::default();
                let z = z.slice(i * classes..(i + 1) * classes).f32s(&mut scratch);
                xent_row(z, y, w, label_smoothing)
            })
            .collect();
        // The batch sums in row order: the same bits on every run.
        let (mut total, mut weight_sum, mut top1, mut top5) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        let k = classes.min(5) as f32;
        for r in &rows {
            total += r.loss;
            weight_sum += r.weight;
            top1 += (r.rank < 1.0) as u8 as f32;
            top5 += (r.rank < k) as u8 as f32;
        }
        f32s_mut(outs[0], loss)[0] = total / weight_sum;
        f32s_mut(outs[1], hits).copy_from_slice(&[top1, top5]);
        for (o, r) in f32s_mut(outs[2], lse).iter_mut().zip(&rows) {
            *o = r.lse;
        }
    })
}

/// `dlogits = scale · d(loss)/d(logits)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    logits: &Tensor<CpuBackend>,
    labels: &Tensor<CpuBackend>,
    weights: Option<&Tensor<CpuBackend>>,
    label_smoothing: f32,
    lse: &Tensor<CpuBackend>,
    scale: f32,
    dlogits: &Tensor<CpuBackend>,
    classes: usize,
) -> Result<()> {
    let mut inputs = vec![logits, labels, lse];
    inputs.extend(weights);
    with_io(&inputs, &[dlogits], |ins, outs| {
        let (z, y, lse) = (
            Src::of(ins[0], logits),
            f32s(ins[1], labels),
            f32s(ins[2], lse),
        );
        let w = weights.map(|t| f32s(ins[3], t));
        let weight = |c: usize| w.map_or(1.0, |w| w[c]);
        let weight_sum: f32 = y
            .iter()
            .map(|&y| class_index(y, classes).map_or(f32::NAN, weight))
            .sum();
        let class_weight_sum: f32 = w.map_or(classes as f32, |w| w.iter().sum());
        let smooth = label_smoothing / classes as f32;
        Dst::of(outs[0], dlogits)
            .chunks(classes)
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut d)| {
                let mut scratch = Scratch::default();
                let z = z.slice(i * classes..(i + 1) * classes).f32s(&mut scratch);
                let label = class_index(y[i], classes);
                let wy = label.map_or(f32::NAN, weight);
                d.store(&mut Scratch::default(), |d| {
                    for (j, (d, &zj)) in d.iter_mut().zip(z).enumerate() {
                        let p = math::exp(zj - lse[i]);
                        let onehot = (label == Some(j)) as u8 as f32;
                        let hard = (1.0 - label_smoothing) * wy * (p - onehot);
                        let soft = smooth * (class_weight_sum * p - weight(j));
                        *d = scale * (hard + soft) / weight_sum;
                    }
                });
            });
    })
}
