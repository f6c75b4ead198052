//! Layer norm forward and backward, and the family of row-wise ops that it leads (the bias
//! gradient's column sums run over the same shapes).

use super::elementwise::check_bias_grad;
use super::{narrow, poisoned, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance::OpClass;

/// Layer norm inputs: rows with a non-zero mean and a spread that differs by row, like
/// activations; weights around 1.
fn layernorm_inputs(
    rows: usize,
    cols: usize,
    inputs: &mut Inputs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let shift = inputs.uniform(rows);
    let x: Vec<f32> = inputs
        .uniform(rows * cols)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / cols) as f32 % 3.0) + shift[i / cols])
        .collect();
    let w = inputs.uniform(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
    (x, w, inputs.uniform(cols))
}

const LAYERNORM_EPS: f32 = 1e-5;

pub fn check_layernorm<B: Backend>(
    b: &B,
    (rows, cols): (usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (x, w, bias) = layernorm_inputs(rows, cols, inputs);
    let y = poisoned(b, &[rows, cols], DType::F32)?;
    let (mean, rstd) = (
        poisoned(b, &[rows], DType::F32)?,
        poisoned(b, &[rows], DType::F32)?,
    );
    b.layernorm(
        &upload(b, &[rows, cols], &x)?,
        &upload(b, &[cols], &w)?,
        &upload(b, &[cols], &bias)?,
        LAYERNORM_EPS,
        &y,
        &mean,
        &rstd,
    )?;
    let (want_y, want_mean, want_rstd) =
        reference::layernorm(&widen(&x), &widen(&w), &widen(&bias), LAYERNORM_EPS as f64);
    let got = [y.to_f32_vec()?, mean.to_f32_vec()?, rstd.to_f32_vec()?];
    // A row's mean may be near 0: it is judged by its absolute error.
    Ok(ParityRow::of_scaled_parts(
        Op::LayernormFwd,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &[
            (&got[0], &want_y, 0.0),
            (&got[1], &want_mean, 1.0),
            (&got[2], &want_rstd, 0.0),
        ],
    ))
}

pub fn check_layernorm_backward<B: Backend>(
    b: &B,
    (rows, cols): (usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (x, w, _) = layernorm_inputs(rows, cols, inputs);
    let dy = inputs.uniform(rows * cols);
    // The saved statistics come from the reference, so that only the backward is judged.
    let (_, mean, rstd) = reference::layernorm(
        &widen(&x),
        &widen(&w),
        &vec![0.0; cols],
        LAYERNORM_EPS as f64,
    );
    let (mean32, rstd32) = (narrow(&mean), narrow(&rstd));
    let dx = poisoned(b, &[rows, cols], DType::F32)?;
    let (dw, db) = (
        poisoned(b, &[cols], DType::F32)?,
        poisoned(b, &[cols], DType::F32)?,
    );
    b.layernorm_backward(
        &upload(b, &[rows, cols], &x)?,
        &upload(b, &[cols], &w)?,
        &upload(b, &[rows], &mean32)?,
        &upload(b, &[rows], &rstd32)?,
        &upload(b, &[rows, cols], &dy)?,
        &dx,
        &dw,
        &db,
    )?;
    let (want_dx, want_dw, want_db) = reference::layernorm_backward(
        &widen(&x),
        &widen(&w),
        &widen(&mean32),
        &widen(&rstd32),
        &widen(&dy),
    );
    // dx = rstd·(dy·w − mean(dy·w) − x̂·mean(dy·w·x̂)) cancels to exactly 0 in a one-column
    // row, and nearly so in very short ones, so dx is judged against the size of the terms
    // that cancel. A fused multiply-add leaves an f32 rounding of them: NVIDIA's driver
    // contracts dy·w − mean(dy·w), which gave 1.9e-5 · rstd·|dy·w| at 1×1 on an H100.
    let dx_terms = (0..rows * cols)
        .map(|i| rstd[i / cols] * (dy[i] as f64 * w[i % cols] as f64).abs())
        .fold(0.0, f64::max);
    let got = [dx.to_f32_vec()?, dw.to_f32_vec()?, db.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::LayernormBwd,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &[
            (&got[0], &want_dx, dx_terms),
            (&got[1], &want_dw, 0.0),
            (&got[2], &want_db, 0.0),
        ],
    ))
}

/// (rows, cols) of the row-wise ops: a single element, odd sizes, the model's widths.
const ROW_SHAPES: [(usize, usize); 6] =
    [(1, 1), (3, 17), (65, 469), (130, 256), (7, 1024), (200, 3)];
/// The tests' further shapes: round, just past round, and many short rows.
const MORE_ROW_SHAPES: [(usize, usize); 3] = [(64, 64), (129, 65), (1000, 7)];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, (usize, usize)>; 3] =
        [check_bias_grad, check_layernorm, check_layernorm_backward];
    for shape in scope.cases(&ROW_SHAPES, &MORE_ROW_SHAPES) {
        for check in checks {
            push(check(b, shape, inputs)?);
        }
    }
    Ok(())
}
