//! Softmax cross-entropy forward (loss, top-1/top-5 hits, log-sum-exp) and backward, with
//! label smoothing and class weights.

use super::{poisoned, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance::OpClass;

/// Logits with a wide spread (some very large, to test the safety of the log-sum-exp),
/// labels, and class weights.
fn xent_inputs(
    batch: usize,
    classes: usize,
    inputs: &mut Inputs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let logits = inputs
        .uniform(batch * classes)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 8.0 + if i % 97 == 5 { 80.0 } else { 0.0 })
        .collect();
    let labels = inputs
        .uniform(batch)
        .iter()
        .map(|v| {
            ((v + 1.0) / 2.0 * classes as f32)
                .floor()
                .min(classes as f32 - 1.0)
        })
        .collect();
    let weights = inputs
        .uniform(classes)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    (logits, labels, weights)
}

pub fn check_cross_entropy<B: Backend>(
    b: &B,
    (batch, classes, smoothing, weighted): XentCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (logits, labels, weights) = xent_inputs(batch, classes, inputs);
    let (loss, hits, lse) = (
        poisoned(b, &[1], DType::F32)?,
        poisoned(b, &[2], DType::F32)?,
        poisoned(b, &[batch], DType::F32)?,
    );
    let tw = upload(b, &[classes], &weights)?;
    b.cross_entropy(
        &upload(b, &[batch, classes], &logits)?,
        &upload(b, &[batch], &labels)?,
        weighted.then_some(&tw),
        smoothing,
        &loss,
        &hits,
        &lse,
    )?;
    let want = reference::cross_entropy(
        &widen(&logits),
        &widen(&labels),
        weighted.then(|| widen(&weights)).as_deref(),
        smoothing as f64,
    );
    let got = [loss.to_f32_vec()?, hits.to_f32_vec()?, lse.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::SoftmaxXentFwd,
        DType::F32,
        format!(
            "{batch}x{classes} ls {smoothing}{}",
            if weighted { " weighted" } else { "" }
        ),
        OpClass::Elementwise,
        &[
            (&got[0], &[want.loss], 1.0),
            (&got[1], &[want.top1, want.top5], 0.0),
            (&got[2], &want.lse, 1.0),
        ],
    ))
}

pub fn check_cross_entropy_backward<B: Backend>(
    b: &B,
    (batch, classes, smoothing, weighted): XentCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (logits, labels, weights) = xent_inputs(batch, classes, inputs);
    let want_fwd = reference::cross_entropy(&widen(&logits), &widen(&labels), None, 0.0);
    let lse: Vec<f32> = want_fwd.lse.iter().map(|&v| v as f32).collect();
    let dlogits = poisoned(b, &[batch, classes], DType::F32)?;
    let tw = upload(b, &[classes], &weights)?;
    let scale = 0.75;
    b.cross_entropy_backward(
        &upload(b, &[batch, classes], &logits)?,
        &upload(b, &[batch], &labels)?,
        weighted.then_some(&tw),
        smoothing,
        &upload(b, &[batch], &lse)?,
        scale,
        &dlogits,
    )?;
    let want = reference::cross_entropy_backward(
        &widen(&logits),
        &widen(&labels),
        weighted.then(|| widen(&weights)).as_deref(),
        smoothing as f64,
        scale as f64,
    );
    Ok(ParityRow::new(
        Op::SoftmaxXentBwd,
        DType::F32,
        format!(
            "{batch}x{classes} ls {smoothing}{}",
            if weighted { " weighted" } else { "" }
        ),
        OpClass::Elementwise,
        &dlogits.to_f32_vec()?,
        &want,
    ))
}

/// (batch, classes, label smoothing, weighted) of a loss check.
pub type XentCase = (usize, usize, f32, bool);

/// The loss checks: one class, two, odd sizes and the model's, with and without smoothing and
/// weights.
const XENT_CASES: [XentCase; 5] = [
    (1, 1, 0.0, false),
    (3, 2, 0.1, false),
    (17, 33, 0.0, true),
    (32, 100, 0.1, false),
    (65, 469, 0.2, true),
];
/// The tests' further cases: many rows of few classes, and many classes.
const MORE_XENT_CASES: [XentCase; 2] = [(300, 5, 0.1, true), (2, 1000, 0.0, false)];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, XentCase>; 2] = [check_cross_entropy, check_cross_entropy_backward];
    for case in scope.cases(&XENT_CASES, &MORE_XENT_CASES) {
        for check in checks {
            push(check(b, case, inputs)?);
        }
    }
    Ok(())
}
