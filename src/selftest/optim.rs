//! The optimizer's ops: AdamW steps, the gradient norm with clipping, and unscaling with the
//! finite check.

use super::{poisoned, upload, widen, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance::OpClass;

/// Three AdamW steps on `n` parameters from a state with moments already non-zero.
pub fn check_adamw<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let hp = crate::backend::AdamW {
        lr: 3e-3,
        weight_decay: 0.05,
        ..Default::default()
    };
    let (p0, m0) = (
        inputs.uniform(n),
        inputs
            .uniform(n)
            .iter()
            .map(|v| v * 0.1)
            .collect::<Vec<_>>(),
    );
    let v0: Vec<f32> = inputs.uniform(n).iter().map(|v| v.abs() * 0.01).collect();
    let grads: Vec<Vec<f32>> = (0..3).map(|_| inputs.uniform(n)).collect();
    let (tp, tm, tv) = (
        upload(b, &[n], &p0)?,
        upload(b, &[n], &m0)?,
        upload(b, &[n], &v0)?,
    );
    let (mut rp, mut rm, mut rv) = (widen(&p0), widen(&m0), widen(&v0));
    let rhp = reference::AdamWParams {
        lr: hp.lr as f64,
        beta1: hp.beta1 as f64,
        beta2: hp.beta2 as f64,
        eps: hp.eps as f64,
        weight_decay: hp.weight_decay as f64,
    };
    for (i, g) in grads.iter().enumerate() {
        let step = 10 + i as u64;
        b.adamw(&tp, &upload(b, &[n], g)?, &tm, &tv, &hp, step)?;
        reference::adamw(&mut rp, &widen(g), &mut rm, &mut rv, &rhp, step);
    }
    let got = [tp.to_f32_vec()?, tm.to_f32_vec()?, tv.to_f32_vec()?];
    // Each result is a difference or sum of terms that may nearly cancel (with few
    // parameters, all of them may): judge it at the scale of its terms, not of itself.
    let largest = |v: &[f32]| v.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64));
    let g_max = grads.iter().map(|g| largest(g)).fold(0.0, f64::max);
    let scales = [
        largest(&p0).max(rhp.lr),
        largest(&m0).max((1.0 - rhp.beta1) * g_max),
        largest(&v0).max((1.0 - rhp.beta2) * g_max * g_max),
    ];
    Ok(ParityRow::of_scaled_parts(
        Op::Adamw,
        DType::F32,
        format!("{n} x3 steps"),
        OpClass::Elementwise,
        &[
            (&got[0], &rp, scales[0]),
            (&got[1], &rm, scales[1]),
            (&got[2], &rv, scales[2]),
        ],
    ))
}

/// The norm of `n` gradients, and clipping them to half of it.
pub fn check_grad_norm<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let g = inputs.uniform(n);
    let (tg, norm) = (upload(b, &[n], &g)?, poisoned(b, &[1], DType::F32)?);
    b.grad_norm(&tg, &norm)?;
    let want_norm = reference::grad_norm(&widen(&g));
    let max_norm = (want_norm * 0.5) as f32;
    b.clip_grads(&tg, &norm, max_norm)?;
    let want_clipped = reference::clip_grads(&widen(&g), max_norm as f64);
    let got = [norm.to_f32_vec()?, tg.to_f32_vec()?];
    Ok(ParityRow::of_parts(
        Op::GradNorm,
        DType::F32,
        format!("{n} +clip"),
        OpClass::Elementwise,
        &[(&got[0], &[want_norm]), (&got[1], &want_clipped)],
    ))
}

/// Unscaling `n` gradients, with a non-finite one planted when `plant` is set.
pub fn check_unscale<B: Backend>(
    b: &B,
    n: usize,
    plant: bool,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let mut g: Vec<f32> = inputs.uniform(n).iter().map(|v| v * 65536.0).collect();
    if plant {
        g[n / 2] = f32::INFINITY;
    }
    let (tg, found) = (upload(b, &[n], &g)?, poisoned(b, &[1], DType::F32)?);
    let inv_scale = 1.0 / 65536.0;
    b.unscale_check(&tg, inv_scale, &found)?;
    let (want, want_found) = reference::unscale_check(&widen(&g), inv_scale as f64);
    // Compare the finite gradients only; the planted one is infinite on both sides.
    let got = tg.to_f32_vec()?;
    let keep = |i: &usize| !(plant && *i == n / 2);
    let got_finite: Vec<f32> = (0..n).filter(keep).map(|i| got[i]).collect();
    let want_finite: Vec<f64> = (0..n).filter(keep).map(|i| want[i]).collect();
    Ok(ParityRow::of_parts(
        Op::UnscaleCheck,
        DType::F32,
        format!("{n}{}", if plant { " +inf" } else { "" }),
        OpClass::Elementwise,
        &[
            (&found.to_f32_vec()?, &[want_found as u8 as f64]),
            (&got_finite, &want_finite),
        ],
    ))
}

/// (parameters, a non-finite gradient planted) of the optimizer checks.
const OPTIM_CASES: [(usize, bool); 4] = [(1, false), (17, true), (4099, false), (70_001, true)];
/// The tests' further cases: each size above with the other choice of planting, sizes around
/// a workgroup multiple, and a large one.
const MORE_OPTIM_CASES: [(usize, bool); 7] = [
    (1, true),
    (17, false),
    (4099, true),
    (70_001, false),
    (4096, true),
    (4097, false),
    (300_000, true),
];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    for (n, plant) in scope.cases(&OPTIM_CASES, &MORE_OPTIM_CASES) {
        push(check_adamw(b, n, inputs)?);
        push(check_grad_norm(b, n, inputs)?);
        push(check_unscale(b, n, plant, inputs)?);
    }
    Ok(())
}
