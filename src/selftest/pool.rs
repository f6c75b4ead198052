//! Masked mean pooling over the real frames of each clip, forward and backward.

use super::{poisoned, ragged_mask, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance::OpClass;

pub fn check_mean_pool<B: Backend>(
    b: &B,
    (batch, t, d): (usize, usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let h = inputs.uniform(batch * t * d);
    let mask = ragged_mask(batch, t, batch > 1);
    let out = poisoned(b, &[batch, d], DType::F32)?;
    b.mean_pool(
        &upload(b, &[batch, t, d], &h)?,
        &upload(b, &[batch, t], &mask)?,
        &out,
    )?;
    let want = reference::mean_pool(&widen(&h), &widen(&mask), batch, d);
    Ok(ParityRow::new(
        Op::MeanPoolFwd,
        DType::F32,
        format!("{batch}x{t}x{d}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_mean_pool_backward<B: Backend>(
    b: &B,
    (batch, t, d): (usize, usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let dout = inputs.uniform(batch * d);
    let mask = ragged_mask(batch, t, batch > 1);
    let dh = poisoned(b, &[batch, t, d], DType::F32)?;
    b.mean_pool_backward(
        &upload(b, &[batch, d], &dout)?,
        &upload(b, &[batch, t], &mask)?,
        &dh,
    )?;
    let want = reference::mean_pool_backward(&widen(&dout), &widen(&mask), batch, d);
    Ok(ParityRow::new(
        Op::MeanPoolBwd,
        DType::F32,
        format!("{batch}x{t}x{d}"),
        OpClass::Elementwise,
        &dh.to_f32_vec()?,
        &want,
    ))
}

/// (batch, t, d) of the pooling checks.
const POOL_SHAPES: [(usize, usize, usize); 4] = [(1, 1, 1), (3, 7, 17), (5, 64, 256), (2, 200, 3)];
/// The tests' further shapes: frames past a round count, and one frame per clip.
const MORE_POOL_SHAPES: [(usize, usize, usize); 2] = [(4, 65, 33), (7, 1, 5)];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, (usize, usize, usize)>; 2] = [check_mean_pool, check_mean_pool_backward];
    for shape in scope.cases(&POOL_SHAPES, &MORE_POOL_SHAPES) {
        for check in checks {
            push(check(b, shape, inputs)?);
        }
    }
    Ok(())
}
