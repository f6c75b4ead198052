//! Dropout: the counter-based mask and the scaling of kept elements.

use super::{poisoned, upload, widen, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::rng::DropoutKey;
use crate::tolerance::OpClass;

pub fn check_dropout<B: Backend>(
    b: &B,
    n: usize,
    p: f32,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let x = inputs.uniform(n);
    let key = DropoutKey {
        seed: 0x1234_5678_9abc,
        step: 7,
        site: 3,
    };
    let out = poisoned(b, &[n], DType::F32)?;
    b.dropout(&upload(b, &[n], &x)?, p, &key, &out)?;
    let want = reference::dropout(&widen(&x), p as f64, &key);
    Ok(ParityRow::new(
        Op::Dropout,
        DType::F32,
        format!("{n} p {p}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

/// (elements, probability) of the dropout checks.
const DROPOUT_CASES: [(usize, f32); 3] = [(1, 0.5), (4099, 0.1), (70_001, 0.3)];
/// The tests' further cases, among them nothing dropped and everything dropped.
const MORE_DROPOUT_CASES: [(usize, f32); 4] = [(1, 0.0), (17, 0.5), (65_537, 0.9), (10, 1.0)];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    for (n, p) in scope.cases(&DROPOUT_CASES, &MORE_DROPOUT_CASES) {
        push(check_dropout(b, n, p, inputs)?);
    }
    Ok(())
}
