//! Elementwise ops and column sums: add, scale, casts between every storage format, copies,
//! and the bias gradient.

use super::{poisoned, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tensor::HostTensor;
use crate::tolerance::OpClass;

pub fn check_add<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let (x, y) = (inputs.uniform(n), inputs.uniform(n));
    let tx = b.upload(&HostTensor::from_f32(&[n], x.clone())?)?;
    let ty = b.upload(&HostTensor::from_f32(&[n], y.clone())?)?;
    let out = poisoned(b, &[n], DType::F32)?;
    b.add(&tx, &ty, &out)?;
    let want = reference::add(&widen(&x), &widen(&y));
    Ok(ParityRow::new(
        Op::Add,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_scale<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let x = inputs.uniform(n);
    let alpha = inputs.uniform(1)[0] * 4.0;
    let tx = b.upload(&HostTensor::from_f32(&[n], x.clone())?)?;
    let out = poisoned(b, &[n], DType::F32)?;
    b.scale(&tx, alpha, &out)?;
    let want = reference::scale(&widen(&x), alpha as f64);
    Ok(ParityRow::new(
        Op::Scale,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

/// Casts `n` values of many magnitudes from `from` to `to`. The row's dtype is the narrower
/// of the two, whose tolerance applies.
pub fn check_cast<B: Backend>(
    b: &B,
    n: usize,
    from: DType,
    to: DType,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let source = HostTensor::from_f32_as(&[n], &inputs.wide(n), from)?;
    let x = b.upload(&source)?;
    let out = poisoned(b, &[n], to)?;
    b.cast(&x, &out)?;
    let want = reference::cast(&widen(&source.to_f32_vec()), to);
    let dtype = if to == DType::F32 { from } else { to };
    Ok(ParityRow::new(
        Op::Cast,
        dtype,
        format!("{n} {from}->{to}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_copy<B: Backend>(
    b: &B,
    n: usize,
    dtype: DType,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let source = HostTensor::from_f32_as(&[n], &inputs.uniform(n), dtype)?;
    let x = b.upload(&source)?;
    let out = poisoned(b, &[n], dtype)?;
    b.copy(&x, &out)?;
    let want = widen(&source.to_f32_vec());
    Ok(ParityRow::new(
        Op::Copy,
        dtype,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_bias_grad<B: Backend>(
    b: &B,
    (rows, cols): (usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let dy = inputs.uniform(rows * cols);
    let db = poisoned(b, &[cols], DType::F32)?;
    b.bias_grad(&upload(b, &[rows, cols], &dy)?, &db)?;
    let want = reference::bias_grad(&widen(&dy), cols);
    Ok(ParityRow::new(
        Op::BiasGrad,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &db.to_f32_vec()?,
        &want,
    ))
}

/// Element counts for elementwise checks: odd, tile-cutting, and one that needs a 2-D grid
/// of workgroups on adapters with few workgroups per dimension.
pub(super) const SIZES: [usize; 4] = [1, 17, 469, 65_537];
/// The tests' further element counts.
pub(super) const MORE_SIZES: [usize; 3] = [2, 3, 1000];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, usize>; 2] = [check_add, check_scale];
    for n in scope.cases(&SIZES, &MORE_SIZES) {
        for check in checks {
            push(check(b, n, inputs)?);
        }
    }
    // Casts and copies run once in the self-test, at every size in the tests.
    let every_size: Vec<usize> = SIZES.into_iter().chain(MORE_SIZES).collect();
    for n in scope.cases(&[4_099], &every_size) {
        for from in DType::ALL {
            for to in DType::ALL {
                push(check_cast(b, n, from, to, inputs)?);
            }
        }
    }
    for n in scope.cases(&[1_001], &every_size) {
        for dtype in DType::ALL {
            push(check_copy(b, n, dtype, inputs)?);
        }
    }
    Ok(())
}
