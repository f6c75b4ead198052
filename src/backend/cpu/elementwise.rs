//! Elementwise ops in parallel chunks: every [`Elementwise`] op (in explicit vectors), and
//! dropout.

use rayon::prelude::*;

use super::philox::{for_each_tile, Tile};
use super::simd::{self, Simd, WithSimd};
use super::staging::{Dst, Scratch, Src};
use super::storage::with_io;
use super::{CpuBackend, CHUNK};
use crate::backend::{math, DropoutKey, Elementwise};
use crate::error::Result;
use crate::rng;
use crate::tensor::Tensor;

/// Vectors per step in GELU: two, not [`simd::WIDTH`]'s four. GELU's temporaries for four
/// vectors outgrow AVX2's sixteen registers and spill; two ran faster than four or one,
/// forward and backward (BENCHMARKS.md).
const GELU_WIDTH: usize = 2;

/// One chunk of an [`Elementwise`] op.
pub(super) struct ElementwiseChunk<'a> {
    pub op: Elementwise,
    pub ins: &'a [&'a [f32]],
    pub out: &'a mut [f32],
}

impl WithSimd for ElementwiseChunk<'_> {
    type Output = ();
    // The closures are `#[inline(always)]` (even around a plain function) so that the SIMD
    // copies inline them rather than call them per block.
    #[allow(clippy::redundant_closure)]
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (ins, out) = (self.ins, self.out);
        match self.op {
            // Memory-bound: plain loops, which the compiler vectorises itself.
            Elementwise::Add => {
                for ((o, a), b) in out.iter_mut().zip(ins[0]).zip(ins[1]) {
                    *o = a + b;
                }
            }
            Elementwise::Scale(alpha) => {
                for (o, x) in out.iter_mut().zip(ins[0]) {
                    *o = alpha * x;
                }
            }
            Elementwise::Gelu => simd::map1::<S, GELU_WIDTH>(
                s,
                ins[0],
                out,
                #[inline(always)]
                |x| math::gelu(x),
            ),
            Elementwise::GeluBackward => simd::map2::<S, GELU_WIDTH>(
                s,
                ins[0],
                ins[1],
                out,
                #[inline(always)]
                |x, dy| dy * math::gelu_grad(x),
            ),
        }
    }
}

/// How far ahead of the elements it draws for dropout prefetches its input: four tiles, the
/// most [`for_each_tile`] draws at once.
const PREFETCH_AHEAD: usize = 4 * rng::TILE as usize;

/// One chunk of dropout: `x · scale` where the element's draw is at least `p`, else 0 (also
/// attention's dropout factors, as the dropout of a row of ones).
pub(super) struct DropoutChunk<'a> {
    pub key: &'a DropoutKey,
    /// The element index of `x[0]`, which keys its draw.
    pub first_element: u64,
    pub p: f32,
    pub scale: f32,
    pub x: &'a [f32],
    pub out: &'a mut [f32],
}

impl WithSimd for DropoutChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let DropoutChunk {
            key,
            first_element,
            p,
            scale,
            x,
            out,
        } = self;
        // draw ≥ threshold as draw > threshold − 1, in signed lanes: draws and thresholds
        // are at most 2^16 (SSE and AVX2 compare only signed integers).
        let below = s.splat_u32s(rng::keep_threshold(p).wrapping_sub(1));
        let (scale, zero) = (s.splat_f32s(scale), s.splat_f32s(0.0));
        const TILE: usize = rng::TILE as usize;
        for_each_tile(
            s,
            key,
            first_element,
            out.len(),
            #[inline(always)]
            |range, tile| {
                // The input a group of calls ahead, in the cache by the time Philox, which
                // does not hide under the loads by itself, is done with the calls before it
                // (half or twice as far measured no better; BENCHMARKS.md).
                simd::prefetch_lines(x, range.start + PREFETCH_AHEAD..range.end + PREFETCH_AHEAD);
                let (x, out) = (&x[range.clone()], &mut out[range]);
                // A select, not `x · 0`, so that a dropped NaN or infinity becomes 0.
                let apply = |out: &mut [f32], x: &[f32], draws: S::u32s| {
                    let kept = s.greater_than_i32s(
                        s.transmute_i32s_u32s(draws),
                        s.transmute_i32s_u32s(below),
                    );
                    let kept_x = s.select_f32s(kept, s.mul_f32s(simd::load(s, x), scale), zero);
                    simd::store(s, out, kept_x);
                };
                // Whole tiles (one, or a pair) as arrays, so that the runs' bounds are known.
                if !runs_over::<S, TILE>(s, &tile, out, x, apply)
                    && !runs_over::<S, { 2 * TILE }>(s, &tile, out, x, apply)
                {
                    tile.for_each_run(
                        s,
                        #[inline(always)]
                        |run, draws| apply(&mut out[run.clone()], &x[run], draws),
                    );
                }
            },
        );
    }
}

/// `apply(out, x, draws)` for each run of `tile` if `out` and `x` are `N` long, as arrays so
/// that the runs' bounds are known where the loop is unrolled; false, doing nothing, if not.
#[inline(always)]
fn runs_over<S: Simd, const N: usize>(
    s: S,
    tile: &Tile<'_, S>,
    out: &mut [f32],
    x: &[f32],
    apply: impl Fn(&mut [f32], &[f32], S::u32s),
) -> bool {
    let (Ok(out), Ok(x)) = (<&mut [f32; N]>::try_from(out), <&[f32; N]>::try_from(x)) else {
        return false;
    };
    tile.for_each_run(
        s,
        #[inline(always)]
        |run, draws| apply(&mut out[run.clone()], &x[run], draws),
    );
    true
}

/// An elementwise op over inputs as long as `out`, in parallel chunks (each widened and
/// rounded by [`staging`] where the storage is half precision).
pub(super) fn map_chunks(
    op: Elementwise,
    inputs: &[&Tensor<CpuBackend>],
    out: &Tensor<CpuBackend>,
) -> Result<()> {
    with_io(inputs, &[out], |ins, outs| {
        let xs: Vec<Src> = ins
            .iter()
            .zip(inputs)
            .map(|(i, t)| Src::of(*i, t))
            .collect();
        Dst::of(outs[0], out)
            .chunks(CHUNK)
            .into_par_iter()
            .enumerate()
            .for_each(|(c, mut o)| {
                let range = c * CHUNK..c * CHUNK + o.len();
                let mut scratch: Vec<Scratch> = xs.iter().map(|_| Scratch::default()).collect();
                let ins: Vec<&[f32]> = xs
                    .iter()
                    .zip(&mut scratch)
                    .map(|(x, s)| x.slice(range.clone()).f32s(s))
                    .collect();
                o.store(&mut Scratch::default(), |out| {
                    simd::run(ElementwiseChunk { op, ins: &ins, out })
                });
            });
    })
}

/// `out = x · keep / (1 − p)`, chunk by chunk.
pub(super) fn dropout(
    x: &Tensor<CpuBackend>,
    p: f32,
    key: &DropoutKey,
    out: &Tensor<CpuBackend>,
) -> Result<()> {
    let scale = rng::keep_scale(p);
    with_io(&[x], &[out], |ins, outs| {
        let x = Src::of(ins[0], x);
        Dst::of(outs[0], out)
            .chunks(CHUNK)
            .into_par_iter()
            .enumerate()
            .for_each(|(c, mut o)| {
                let start = c * CHUNK;
                let mut scratch = Scratch::default();
                let x = x.slice(start..start + o.len()).f32s(&mut scratch);
                o.store(&mut Scratch::default(), |out| {
                    simd::run(DropoutChunk {
                        key,
                        first_element: start as u64,
                        p,
                        scale,
                        x,
                        out,
                    })
                });
            });
    })
}
