//! The optimizer's ops over whole arenas: the AdamW step, the gradient norm, clipping, and
//! the unscale-and-check of dynamic loss scaling.

use rayon::prelude::*;

use super::simd;
use super::storage::{f32s, f32s_mut, with_io};
use super::{CpuBackend, CHUNK};
use crate::backend::{AdamW, Backend};
use crate::error::Result;
use crate::tensor::Tensor;

/// One AdamW step, chunk by chunk.
pub(super) fn adamw(
    params: &Tensor<CpuBackend>,
    grads: &Tensor<CpuBackend>,
    m: &Tensor<CpuBackend>,
    v: &Tensor<CpuBackend>,
    hp: &AdamW,
    step: u64,
) -> Result<()> {
    let (decay, step_size, bc2_sqrt) = hp.step_scalars(step);
    with_io(&[grads], &[params, m, v], |ins, outs| {
        let g = f32s(ins[0], grads);
        let [p_words, m_words, v_words] = outs else {
            unreachable!("three outputs")
        };
        let p = f32s_mut(p_words, params);
        let mm = f32s_mut(m_words, m);
        let vv = f32s_mut(v_words, v);
        p.par_chunks_mut(CHUNK)
            .zip(mm.par_chunks_mut(CHUNK))
            .zip(vv.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| {
                // Zipped slices (no bounds checks), so that the compiler vectorises the
                // step, square root and division included, for AVX2.
                simd::run(
                    #[inline(always)]
                    || {
                        let pmv = p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut());
                        for (((p, m), v), &g) in pmv.zip(g) {
                            *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                            *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                            let denom = v.sqrt() / bc2_sqrt + hp.eps;
                            *p = *p * decay - step_size * *m / denom;
                        }
                    },
                )
            });
    })
}

/// `norm[0] = ‖grads‖₂`: partial sums per chunk, added in chunk order.
pub(super) fn grad_norm(grads: &Tensor<CpuBackend>, norm: &Tensor<CpuBackend>) -> Result<()> {
    with_io(&[grads], &[norm], |ins, outs| {
        let g = f32s(ins[0], grads);
        let partials: Vec<f32> = g
            .par_chunks(CHUNK)
            .map(|c| simd::run(simd::Dot(c, c)))
            .collect();
        f32s_mut(outs[0], norm)[0] = partials.iter().sum::<f32>().sqrt();
    })
}

/// Scales the gradients down to `max_norm` where their norm exceeds it.
pub(super) fn clip_grads(
    backend: &CpuBackend,
    grads: &Tensor<CpuBackend>,
    norm: &Tensor<CpuBackend>,
    max_norm: f32,
) -> Result<()> {
    let coef = max_norm / (norm.to_f32_vec()?[0] + 1e-6);
    // A NaN norm makes the gradients NaN, as PyTorch's clip_grad_norm_ does.
    if coef < 1.0 || coef.is_nan() {
        backend.scale(grads, coef, grads)?;
    }
    Ok(())
}

/// `grads *= inv_scale`, flagging any gradient that was not finite.
pub(super) fn unscale_check(
    grads: &Tensor<CpuBackend>,
    inv_scale: f32,
    found_inf: &Tensor<CpuBackend>,
) -> Result<()> {
    with_io(&[], &[grads, found_inf], |_, outs| {
        let [g_words, flag_words] = outs else {
            unreachable!("two outputs")
        };
        let found = f32s_mut(g_words, grads)
            .par_chunks_mut(CHUNK)
            .map(|c| {
                let bad = c.iter().any(|x| !x.is_finite());
                c.iter_mut().for_each(|x| *x *= inv_scale);
                bad
            })
            .reduce(|| false, |a, b| a || b);
        f32s_mut(flag_words, found_inf)[0] = found as u8 as f32;
    })
}
