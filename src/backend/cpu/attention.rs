//! Attention on the CPU, one clip at a time: per head, the scores Q·Kᵀ, the probabilities and
//! the products with V come from `gemm` on strided views of the packed q | k | v (Kᵀ and Vᵀ,
//! right-hand sides stored by columns, are copied into rows first: `gemm_by_rows`). A clip's T×T scores fit in cache at the model's sizes; unlike the GPU, the
//! CPU has no need to stream them.

use std::ops::Range;

use rayon::prelude::*;

use super::elementwise::DropoutChunk;
use super::simd::{self, Block, Simd, WithSimd};
use super::staging::{Dst, Scratch, Src};
use super::storage::{f32s, f32s_mut, with_io};
use super::CpuBackend;
use crate::backend::{math, AttentionSpec, NO_KEYS_LSE};
use crate::error::Result;
use crate::rng;
use crate::tensor::Tensor;

/// `dst (m×n, row stride dst_rs) = alpha·lhs·rhs`, every operand a strided view: element
/// (i, j) of dst is `dst[i·dst_rs + j]`, (i, p) of lhs `lhs[i·lhs_rs + p·lhs_cs]`, and (p, j)
/// of rhs `rhs[p·rhs_rs + j·rhs_cs]`.
///
/// # Safety
/// For every i < m, j < n and p < k, those elements of lhs and rhs must lie inside one
/// allocation each and be readable, and those of dst inside one allocation and writable, with
/// no reference to them alive elsewhere; dst's elements must not overlap lhs's or rhs's.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    alpha: f32,
) {
    // SAFETY: gemm_by_rows asks what this function's caller vouches for.
    unsafe {
        super::gemm::gemm_by_rows(
            (m, n, k),
            (dst, dst_rs, false),
            (lhs, lhs_rs, lhs_cs),
            (rhs, rhs_rs, rhs_cs),
            (0.0, alpha),
            gemm::Parallelism::None,
        );
    }
}

/// One head of one clip: where its q, k, v columns start in the clip's packed qkv.
///
/// Each of its column blocks (d wide, from q, k, v or o) lies inside a row: q + d ≤ d_model,
/// k + d ≤ 2·d_model, v + d ≤ 3·d_model = qkv_rs, o + d ≤ d_model = out_rs. So t rows of one
/// block, as the products read and write them, lie inside the clip's t rows of qkv (or of
/// out, dout, dqkv): the invariant that the `product` calls below rely on.
struct Head {
    t: usize,
    d: usize,
    /// Row stride of qkv (3·d_model) and of out / dout (d_model).
    qkv_rs: usize,
    out_rs: usize,
    q: usize,
    k: usize,
    v: usize,
    /// Column of this head in out / dout.
    o: usize,
    /// Dropout element of (query 0, key 0).
    first_element: u64,
}

impl Head {
    fn new(spec: &AttentionSpec, b: usize, h: usize) -> Head {
        let (t, d, dm) = (spec.seq, spec.head_dim, spec.d_model());
        Head {
            t,
            d,
            qkv_rs: 3 * dm,
            out_rs: dm,
            q: h * d,
            k: dm + h * d,
            v: 2 * dm + h * d,
            o: h * d,
            first_element: ((b * spec.heads + h) * t * t) as u64,
        }
    }

    /// scores = (Q·Kᵀ)/√d into a t×t matrix.
    fn scores(&self, qkv: &[f32], scores: &mut [f32]) {
        assert!(qkv.len() >= self.t * self.qkv_rs && scores.len() >= self.t * self.t);
        let scale = 1.0 / (self.d as f32).sqrt();
        // Q: rows of qkv at column q; Kᵀ: element (i, key) = qkv[key, k + i].
        // SAFETY: asserted above: scores holds t×t, and qkv t rows, of which Q and K are this
        // head's blocks (Head); scores is a buffer of its own.
        unsafe {
            product(
                (self.t, self.t, self.d),
                scores.as_mut_ptr(),
                self.t,
                qkv[self.q..].as_ptr(),
                (self.qkv_rs, 1),
                qkv[self.k..].as_ptr(),
                (1, self.qkv_rs),
                scale,
            );
        }
    }

    /// Dropout factors of query `query`: keep_scale or 0 (all 1 without dropout). They are the
    /// dropout op applied to `ones` (a row of 1.0), so that attention and that op share one
    /// keep rule and its integer compare.
    #[inline(always)]
    fn dropout<S: Simd>(
        &self,
        s: S,
        spec: &AttentionSpec,
        query: usize,
        ones: &[f32],
        z: &mut [f32],
    ) {
        if spec.dropout == 0.0 {
            z.fill(1.0);
            return;
        }
        DropoutChunk {
            key: &spec.key,
            first_element: self.first_element + (query * self.t) as u64,
            p: spec.dropout,
            scale: rng::keep_scale(spec.dropout),
            x: ones,
            out: z,
        }
        .with_simd(s);
    }
}

/// A row of scores to turn into probabilities over its real keys; its SIMD body returns
/// the row's log-sum-exp ([`NO_KEYS_LSE`], and a row of zeros, when no key is real). In
/// explicit vectors: left to the compiler, the running sum (which it must keep in order) made
/// the loop scalar, exponentials included (what that cost: BENCHMARKS.md).
pub(super) struct SoftmaxRow<'a> {
    pub row: &'a mut [f32],
    pub mask: &'a [f32],
}

impl WithSimd for SoftmaxRow<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) -> f32 {
        let SoftmaxRow { row, mask } = self;
        let (n, len) = (row.len(), Block::<S>::len());
        // Padding past the row's end loads a mask of 0: not a real key.
        let (neg_inf, zero) = (
            Block::<S>::splat(s, f32::NEG_INFINITY),
            Block::<S>::splat(s, 0.0),
        );
        let mut max = neg_inf;
        simd::for_each_block(
            len,
            n,
            #[inline(always)]
            |c| {
                let real = Block::load(s, &mask[c.clone()]);
                max = max.max(real.select_nonzero(Block::load(s, &row[c]), neg_inf));
            },
        );
        let max = max.reduce_max();
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return NO_KEYS_LSE;
        }
        let max_v = Block::<S>::splat(s, max);
        let mut sum = zero;
        simd::for_each_block(
            len,
            n,
            #[inline(always)]
            |c| {
                let real = Block::load(s, &mask[c.clone()]);
                let e =
                    real.select_nonzero(math::exp(Block::load(s, &row[c.clone()]) - max_v), zero);
                sum = sum + e;
                e.store(&mut row[c]);
            },
        );
        let sum = sum.reduce_sum();
        let sum_v = Block::<S>::splat(s, sum);
        simd::for_each_block(
            len,
            n,
            #[inline(always)]
            |c| (Block::load(s, &row[c.clone()]) / sum_v).store(&mut row[c]),
        );
        max + sum.ln()
    }
}

/// Forward pass of heads `heads` of clip `b`: `out` is their [t, heads.len()·head_dim]
/// output (the clip's [t, d_model] when they are all its heads), `lse` their [heads.len(), t].
/// A [`WithSimd`] body, not a closure given to `simd::run`: a closure this large was compiled
/// once, outside the AVX2 and AVX-512 copies, and its loops ran as baseline SSE2.
pub(super) struct Forward<'a> {
    pub spec: &'a AttentionSpec,
    pub b: usize,
    pub heads: Range<usize>,
    pub qkv: &'a [f32],
    pub mask: &'a [f32],
    pub out: &'a mut [f32],
    pub lse: &'a mut [f32],
}

impl WithSimd for Forward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Forward {
            spec,
            b,
            heads,
            qkv,
            mask,
            out,
            lse,
        } = self;
        let (t, d) = (spec.seq, spec.head_dim);
        let out_rs = heads.len() * d;
        // The lengths the products' safety rests on.
        assert!(qkv.len() == t * 3 * spec.d_model() && out.len() == t * out_rs);
        assert!(heads.end <= spec.heads && lse.len() == heads.len() * t);
        let (mut probs, mut z, ones) = (vec![0.0f32; t * t], vec![0.0f32; t], vec![1.0f32; t]);
        for (i, h) in heads.enumerate() {
            let head = Head::new(spec, b, h);
            head.scores(qkv, &mut probs);
            for (q, row) in probs.chunks_exact_mut(t).enumerate() {
                // In this body's instruction set, not dispatched again for each row.
                lse[i * t + q] = SoftmaxRow { row, mask }.with_simd(s);
                head.dropout(s, spec, q, &ones, &mut z);
                row.iter_mut().zip(&z).for_each(|(p, z)| *p *= z);
            }
            // out_h = P̃·V, into the i-th d columns of out.
            // SAFETY: probs is t×t; V is this head's block of the clip's qkv (Head) and out_h
            // the i-th block of d columns of out's t rows of out_rs, whose lengths were asserted
            // above; out is borrowed mutably, apart from both.
            unsafe {
                product(
                    (t, d, t),
                    out[i * d..].as_mut_ptr(),
                    out_rs,
                    probs.as_ptr(),
                    (t, 1),
                    qkv[head.v..].as_ptr(),
                    (head.qkv_rs, 1),
                    1.0,
                );
            }
        }
    }
}

/// Backward pass of clip `b`: `dqkv` is its [t, 3·d_model] gradient, written whole. A
/// [`WithSimd`] body, as [`Forward`] is.
pub(super) struct Backward<'a> {
    pub spec: &'a AttentionSpec,
    pub b: usize,
    pub qkv: &'a [f32],
    pub mask: &'a [f32],
    pub out: &'a [f32],
    pub lse: &'a [f32],
    pub dout: &'a [f32],
    pub dqkv: &'a mut [f32],
}

impl WithSimd for Backward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Backward {
            spec,
            b,
            qkv,
            mask,
            out,
            lse,
            dout,
            dqkv,
        } = self;
        let t = spec.seq;
        // The lengths the products' safety rests on.
        let (rows3, rows1) = (t * 3 * spec.d_model(), t * spec.d_model());
        assert!(qkv.len() == rows3 && dqkv.len() == rows3);
        assert!(out.len() == rows1 && dout.len() == rows1);
        let scale = 1.0 / (spec.head_dim as f32).sqrt();
        let (mut p, mut pz, mut ds) = (
            vec![0.0f32; t * t],
            vec![0.0f32; t * t],
            vec![0.0f32; t * t],
        );
        let (mut z, ones) = (vec![0.0f32; t], vec![1.0f32; t]);
        for h in 0..spec.heads {
            let head = Head::new(spec, b, h);
            // P from the saved log-sum-exp (as the GPU recomputes it), and P̃ = P·Z.
            head.scores(qkv, &mut p);
            for (q, (p, pz)) in p
                .chunks_exact_mut(t)
                .zip(pz.chunks_exact_mut(t))
                .enumerate()
            {
                let row_lse = lse[h * t + q];
                head.dropout(s, spec, q, &ones, &mut z);
                // Zipped slices rather than indices, so that the loop has no bounds checks and
                // the compiler vectorises it, exponentials included.
                let real_row = row_lse != NO_KEYS_LSE;
                for (((p, pz), &m), &z) in p.iter_mut().zip(pz.iter_mut()).zip(mask).zip(&z) {
                    *p = if m != 0.0 && real_row {
                        math::exp(*p - row_lse)
                    } else {
                        0.0
                    };
                    *pz = *p * z;
                }
            }
            // dV = P̃ᵀ·dO.
            // SAFETY: pz is t×t; dO and dV are this head's blocks of the clip's dout and dqkv, whose
            // lengths were asserted above (Head); dqkv is borrowed mutably, apart from both.
            unsafe {
                product(
                    (t, head.d, t),
                    dqkv[head.v..].as_mut_ptr(),
                    head.qkv_rs,
                    pz.as_ptr(),
                    (1, t),
                    dout[head.o..].as_ptr(),
                    (head.out_rs, 1),
                    1.0,
                );
            }
            // dP̃ = dO·Vᵀ, then dS = P·(dP̃·Z − rowsum(dO∘O))/√d (the scale folded in here).
            // SAFETY: ds is t×t; dO and V are this head's blocks of the clip's dout and qkv, whose
            // lengths were asserted above (Head); ds is a buffer of its own.
            unsafe {
                product(
                    (t, t, head.d),
                    ds.as_mut_ptr(),
                    t,
                    dout[head.o..].as_ptr(),
                    (head.out_rs, 1),
                    qkv[head.v..].as_ptr(),
                    (1, head.qkv_rs),
                    1.0,
                );
            }
            for q in 0..t {
                let row = q * head.out_rs + head.o;
                let delta: f32 = dout[row..row + head.d]
                    .iter()
                    .zip(&out[row..row + head.d])
                    .map(|(a, b)| a * b)
                    .sum();
                // P·(dP̃·Z − delta) = P̃·dP̃ − P·delta: no second pass over the dropout mask.
                let rows = ds[q * t..(q + 1) * t]
                    .iter_mut()
                    .zip(&p[q * t..(q + 1) * t]);
                for ((ds, p), pz) in rows.zip(&pz[q * t..(q + 1) * t]) {
                    *ds = (pz * *ds - p * delta) * scale;
                }
            }
            // dQ = dS·K and dK = dSᵀ·Q.
            // SAFETY: ds is t×t; K and dQ are this head's blocks of the clip's qkv and dqkv, whose
            // lengths were asserted above (Head); dqkv is borrowed mutably, apart from both.
            unsafe {
                product(
                    (t, head.d, t),
                    dqkv[head.q..].as_mut_ptr(),
                    head.qkv_rs,
                    ds.as_ptr(),
                    (t, 1),
                    qkv[head.k..].as_ptr(),
                    (head.qkv_rs, 1),
                    1.0,
                );
            }
            // SAFETY: ds is t×t; Q and dK are this head's blocks of the clip's qkv and dqkv, whose
            // lengths were asserted above (Head); dqkv is borrowed mutably, apart from both.
            unsafe {
                product(
                    (t, head.d, t),
                    dqkv[head.k..].as_mut_ptr(),
                    head.qkv_rs,
                    ds.as_ptr(),
                    (1, t),
                    qkv[head.q..].as_ptr(),
                    (head.qkv_rs, 1),
                    1.0,
                );
            }
        }
    }
}

/// The forward pass, clips in parallel; with fewer clips than threads (a prediction), each
/// clip's heads are shared out too, each share computed into rows of its own and copied into
/// the clip's output after.
pub(super) fn forward(
    qkv: &Tensor<CpuBackend>,
    key_mask: &Tensor<CpuBackend>,
    spec: &AttentionSpec,
    out: &Tensor<CpuBackend>,
    lse: &Tensor<CpuBackend>,
) -> Result<()> {
    let AttentionSpec {
        seq: t,
        heads,
        head_dim: d,
        batch,
        ..
    } = *spec;
    let dm = spec.d_model();
    if out.is_empty() {
        return Ok(());
    }
    let shares = rayon::current_num_threads().div_ceil(batch).clamp(1, heads);
    let shares: Vec<Range<usize>> = (0..shares)
        .map(|i| i * heads / shares..(i + 1) * heads / shares)
        .collect();
    with_io(&[qkv, key_mask], &[out, lse], |ins, outs| {
        let (qkv, mask) = (Src::of(ins[0], qkv), f32s(ins[1], key_mask));
        let [out_words, lse_words] = outs else {
            unreachable!("two outputs")
        };
        let (o, l) = (Dst::of(out_words, out), f32s_mut(lse_words, lse));
        o.chunks(t * dm)
            .into_par_iter()
            .zip(l.par_chunks_mut(heads * t))
            .enumerate()
            .for_each(|(b, (mut o, l))| {
                let mut scratch = Scratch::default();
                let qkv = qkv.slice(b * t * 3 * dm..(b + 1) * t * 3 * dm);
                let qkv = qkv.f32s(&mut scratch);
                let mask = &mask[b * t..(b + 1) * t];
                let run = |heads: Range<usize>, out: &mut [f32], lse: &mut [f32]| {
                    simd::run(Forward {
                        spec,
                        b,
                        heads,
                        qkv,
                        mask,
                        out,
                        lse,
                    })
                };
                if let [all] = &shares[..] {
                    return o.store(&mut Scratch::default(), |o| run(all.clone(), o, l));
                }
                let mut lse_shares = Vec::new();
                let mut rest = l;
                for share in &shares {
                    let (first, tail) = rest.split_at_mut(share.len() * t);
                    lse_shares.push(first);
                    rest = tail;
                }
                let rows: Vec<Vec<f32>> = shares
                    .par_iter()
                    .zip(lse_shares)
                    .map(|(share, lse)| {
                        let mut rows = vec![0.0; t * share.len() * d];
                        run(share.clone(), &mut rows, lse);
                        rows
                    })
                    .collect();
                o.store(&mut Scratch::default(), |o| {
                    for (share, rows) in shares.iter().zip(&rows) {
                        let w = share.len() * d;
                        for (o, r) in o.chunks_exact_mut(dm).zip(rows.chunks_exact(w)) {
                            o[share.start * d..share.end * d].copy_from_slice(r);
                        }
                    }
                });
            });
    })
}

/// The backward pass, clips in parallel.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    qkv: &Tensor<CpuBackend>,
    key_mask: &Tensor<CpuBackend>,
    spec: &AttentionSpec,
    out: &Tensor<CpuBackend>,
    lse: &Tensor<CpuBackend>,
    dout: &Tensor<CpuBackend>,
    dqkv: &Tensor<CpuBackend>,
) -> Result<()> {
    let AttentionSpec { seq: t, heads, .. } = *spec;
    let dm = spec.d_model();
    if dqkv.is_empty() {
        return Ok(());
    }
    with_io(&[qkv, key_mask, out, lse, dout], &[dqkv], |ins, outs| {
        let (qkv, mask, o) = (
            Src::of(ins[0], qkv),
            f32s(ins[1], key_mask),
            Src::of(ins[2], out),
        );
        let (lse, dout) = (f32s(ins[3], lse), Src::of(ins[4], dout));
        Dst::of(outs[0], dqkv)
            .chunks(t * 3 * dm)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut d)| {
                fn clip(x: &[f32], b: usize, rows: usize) -> &[f32] {
                    &x[b * rows..(b + 1) * rows]
                }
                let [mut qkv_scratch, mut out_scratch, mut dout_scratch] = Default::default();
                let qkv = qkv.slice(b * t * 3 * dm..(b + 1) * t * 3 * dm);
                let qkv = qkv.f32s(&mut qkv_scratch);
                let out = o.slice(b * t * dm..(b + 1) * t * dm).f32s(&mut out_scratch);
                let dout = dout.slice(b * t * dm..(b + 1) * t * dm);
                let dout = dout.f32s(&mut dout_scratch);
                d.store(&mut Scratch::default(), |d| {
                    simd::run(Backward {
                        spec,
                        b,
                        qkv,
                        mask: clip(mask, b, t),
                        out,
                        lse: clip(lse, b, heads * t),
                        dout,
                        dqkv: d,
                    })
                });
            });
    })
}
