//! Layer norm over rows, forward and backward, in explicit SIMD ([`simd::Block`]): the row
//! is read from memory once per pass at most, and every loop keeps its sums in registers.

use rayon::prelude::*;

use super::reductions::{sum_in_block_order, ROW_BLOCK};
use super::simd::{self, Block, Simd, WithSimd};
use super::staging::{Dst, Scratch, Src};
use super::storage::{f32s, store, with_io, HostBlock};
use super::{CpuBackend, CHUNK};
use crate::backend::math::Real;
use crate::error::Result;
use crate::tensor::Tensor;

/// Row `i` of a matrix of `cols` columns, or nothing past the last.
fn row(m: &[f32], i: usize, cols: usize) -> &[f32] {
    m.get(i * cols..(i + 1) * cols).unwrap_or_default()
}

/// The forward pass over whole rows: `y = (x − mean)·rstd·w + b`, with each row's
/// `(mean, rstd)`.
pub(super) struct Forward<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub b: &'a [f32],
    pub eps: f32,
    pub y: &'a mut [f32],
    pub stats: &'a mut [(f32, f32)],
}

impl WithSimd for Forward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Forward {
            x: rows_x,
            w,
            b,
            eps,
            y,
            stats,
        } = self;
        let cols = w.len();
        // The statistics of a row whose sum is known: its variance from the cache.
        let stats_of = |x: &[f32], sum: f32| {
            let mean = sum / cols as f32;
            let var = simd::sum_sq_dev(s, x, mean) / cols as f32;
            (mean, 1.0 / (var + eps).sqrt())
        };
        let Some(first) = rows_x.get(..cols) else {
            return;
        };
        let mut row_stats = stats_of(first, row_sum(s, first));
        let mut rows = rows_x
            .chunks_exact(cols)
            .zip(y.chunks_exact_mut(cols))
            .zip(stats)
            .enumerate()
            .peekable();
        while let Some((i, ((x, y), stat))) = rows.next() {
            *stat = row_stats;
            let next: Option<&[f32]> = rows.peek().map(|(_, ((next, _), _))| *next);
            let ahead = row(rows_x, i + 2, cols);
            // The last row sums itself again (discarded), so that every row takes one loop.
            let next_sum = normalize(s, x, row_stats, w, b, y, next.unwrap_or(x), ahead);
            if let Some(next) = next {
                row_stats = stats_of(next, next_sum);
            }
        }
    }
}

/// The forward pass's sweeps run two vectors at a time: a cache line under AVX2, two under
/// AVX-512.
type Line<S> = Block<S, 2>;

/// Σ x, in the order [`normalize`] sums a row (so with the same bits).
#[inline(always)]
fn row_sum<S: Simd>(s: S, x: &[f32]) -> f32 {
    let mut sum = Line::<S>::splat(s, 0.0);
    simd::for_each_block(
        Line::<S>::len(),
        x.len(),
        #[inline(always)]
        |c| sum = sum + Line::load(s, &x[c]),
    );
    sum.reduce_sum()
}

/// Writes `y = (x − mean)·rstd·w + b` for row `x`, and returns Σ `next` (a row as long as
/// `x`), prefetching the row `ahead`: one sweep that reads the next row from memory while it
/// writes this one, as a streaming loop does, rather than a pass over a row in the cache that
/// leaves the memory idle (the gain: BENCHMARKS.md).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn normalize<S: Simd>(
    s: S,
    x: &[f32],
    (mean, rstd): (f32, f32),
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    next: &[f32],
    ahead: &[f32],
) -> f32 {
    // All as long as `x`, so that the loop's slicing needs no bounds checks.
    let n = x.len();
    let (w, b, y, next) = (&w[..n], &b[..n], &mut y[..n], &next[..n]);
    let (mean, rstd) = (Line::<S>::splat(s, mean), Line::<S>::splat(s, rstd));
    let mut sum = Line::<S>::splat(s, 0.0);
    simd::for_each_block(
        Line::<S>::len(),
        n,
        #[inline(always)]
        |c| {
            simd::prefetch_lines(ahead, c.clone());
            sum = sum + Line::load(s, &next[c.clone()]);
            let xhat = (Line::load(s, &x[c.clone()]) - mean) * rstd;
            let (w, b) = (Line::load(s, &w[c.clone()]), Line::load(s, &b[c.clone()]));
            xhat.mul_add(w, b).store(&mut y[c]);
        },
    );
    sum.reduce_sum()
}

/// The backward pass over whole rows: `dx`, and this block of rows' contribution to
/// `[dw | db]` added into `acc`.
pub(super) struct Backward<'a> {
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub w: &'a [f32],
    /// The rows' saved mean and reciprocal standard deviation.
    pub mean: &'a [f32],
    pub rstd: &'a [f32],
    pub dx: &'a mut [f32],
    pub acc: &'a mut [f32],
}

impl WithSimd for Backward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Backward {
            x,
            dy,
            w,
            mean,
            rstd,
            dx,
            acc,
        } = self;
        let cols = w.len();
        let (acc_w, acc_b) = acc.split_at_mut(cols);
        // Row after row, each read from memory once and then from the cache: x and dy are
        // then read in memory order, which the hardware prefetchers follow. (Rows two at a
        // time, dw and db then read and written once a pair and the next pair prefetched in
        // software, were slower; BENCHMARKS.md.)
        let rows = x
            .chunks_exact(cols)
            .zip(dy.chunks_exact(cols))
            .zip(mean.iter().zip(rstd))
            .zip(dx.chunks_exact_mut(cols));
        for (((x, dy), (&mean, &rstd)), dx) in rows {
            let row = Row { x, dy, mean, rstd };
            let (sum_g, sum_g_xhat) = accumulate(s, row, w, acc_w, acc_b);
            let n = cols as f32;
            input_gradient(s, row, w, sum_g / n, sum_g_xhat / n, dx);
        }
    }
}

/// One row of the backward pass: its input, output gradient and saved statistics.
#[derive(Clone, Copy)]
struct Row<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    mean: f32,
    rstd: f32,
}

/// The backward pass's sums run one vector at a time, with their statistics and
/// temporaries in registers.
type Lane<S> = Block<S, 1>;

/// Σ g and Σ g·xhat of a row (g = dy·w, xhat = (x − mean)·rstd); and the row's dw += dy·xhat
/// and db += dy added into `acc_w` and `acc_b`. Padding past the row's end loads dy = 0, so
/// that it adds nothing.
#[inline(always)]
fn accumulate<S: Simd>(
    s: S,
    row: Row,
    w: &[f32],
    acc_w: &mut [f32],
    acc_b: &mut [f32],
) -> (f32, f32) {
    // All as long as `w`, so that the loop's slicing needs no bounds checks.
    let n = w.len();
    let (x, dy, acc_w, acc_b) = (&row.x[..n], &row.dy[..n], &mut acc_w[..n], &mut acc_b[..n]);
    let (mean, rstd) = (Lane::<S>::splat(s, row.mean), Lane::<S>::splat(s, row.rstd));
    let (mut sum_g, mut sum_g_xhat) = (Lane::<S>::splat(s, 0.0), Lane::<S>::splat(s, 0.0));
    simd::for_each_block(
        Lane::<S>::len(),
        n,
        #[inline(always)]
        |c| {
            let w = Lane::<S>::load(s, &w[c.clone()]);
            let dy = Lane::load(s, &dy[c.clone()]);
            let xhat = (Lane::load(s, &x[c.clone()]) - mean) * rstd;
            let g = dy * w;
            dy.mul_add(xhat, Lane::load(s, &acc_w[c.clone()]))
                .store(&mut acc_w[c.clone()]);
            (Lane::load(s, &acc_b[c.clone()]) + dy).store(&mut acc_b[c]);
            sum_g = sum_g + g;
            sum_g_xhat = g.mul_add(xhat, sum_g_xhat);
        },
    );
    (sum_g.reduce_sum(), sum_g_xhat.reduce_sum())
}

/// The elementwise part of the backward pass, two vectors at a time:
/// dx = rstd·(g − mean(g) − xhat·mean(g·xhat)), recomputing g and xhat from the row, which is
/// still in the cache.
#[inline(always)]
fn input_gradient<S: Simd>(
    s: S,
    row: Row,
    w: &[f32],
    mean_g: f32,
    mean_g_xhat: f32,
    dx: &mut [f32],
) {
    type Pair<S> = Block<S, 2>;
    // All as long as `w`, as in `accumulate`.
    let n = w.len();
    let (x, dy, dx) = (&row.x[..n], &row.dy[..n], &mut dx[..n]);
    let (m, r) = (Pair::<S>::splat(s, row.mean), Pair::<S>::splat(s, row.rstd));
    let (mean_g, minus_mean_g_xhat) = (
        Pair::<S>::splat(s, mean_g),
        Pair::<S>::splat(s, -mean_g_xhat),
    );
    simd::for_each_block(
        Pair::<S>::len(),
        n,
        #[inline(always)]
        |c| {
            let xhat = (Block::load(s, &x[c.clone()]) - m) * r;
            let g = Block::load(s, &dy[c.clone()]) * Block::load(s, &w[c.clone()]);
            (xhat.mul_add(minus_mean_g_xhat, g - mean_g) * r).store(&mut dx[c]);
        },
    );
}

/// Rows of `cols` elements that one parallel task takes: about a [`CHUNK`], so that
/// row-wise ops on narrow rows do not pay rayon's cost per row.
fn rows_per_task(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

/// The forward pass, rows in parallel tasks.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    x: &Tensor<CpuBackend>,
    w: &Tensor<CpuBackend>,
    b: &Tensor<CpuBackend>,
    eps: f32,
    y: &Tensor<CpuBackend>,
    mean: &Tensor<CpuBackend>,
    rstd: &Tensor<CpuBackend>,
    rows: usize,
) -> Result<()> {
    let cols = w.len();
    let mut stats = vec![(0.0f32, 0.0f32); rows];
    with_io(&[x, w, b], &[y], |ins, outs| {
        let (x, w, b) = (Src::of(ins[0], x), f32s(ins[1], w), f32s(ins[2], b));
        let task = rows_per_task(cols) * cols;
        Dst::of(outs[0], y)
            .chunks(task)
            .into_par_iter()
            .zip(stats.par_chunks_mut(task / cols))
            .enumerate()
            .for_each(|(i, (mut y, stats))| {
                let mut scratch = Scratch::default();
                let x = x.slice(i * task..i * task + y.len()).f32s(&mut scratch);
                y.store(&mut Scratch::default(), |y| {
                    simd::run(Forward {
                        x,
                        w,
                        b,
                        eps,
                        y,
                        stats,
                    })
                });
            });
    })?;
    store(mean, stats.iter().map(|s| s.0))?;
    store(rstd, stats.iter().map(|s| s.1))
}

/// The backward pass: `dx` row by row, `dw` and `db` by blocks of rows added in block order.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    x: &Tensor<CpuBackend>,
    w: &Tensor<CpuBackend>,
    mean: &Tensor<CpuBackend>,
    rstd: &Tensor<CpuBackend>,
    dy: &Tensor<CpuBackend>,
    dx: &Tensor<CpuBackend>,
    dw: &Tensor<CpuBackend>,
    db: &Tensor<CpuBackend>,
) -> Result<()> {
    let cols = w.len();
    let mut param_grads = Vec::new();
    with_io(&[x, w, mean, rstd, dy], &[dx], |ins, outs| {
        let (x, w) = (Src::of(ins[0], x), f32s(ins[1], w));
        let (mean, rstd, dy) = (f32s(ins[2], mean), f32s(ins[3], rstd), Src::of(ins[4], dy));
        // One pass over the rows: dx row by row, and dw, db as partial sums over blocks
        // of rows (added up in block order afterwards), so that x and dy are read once.
        let partials = Dst::of(outs[0], dx)
            .chunks(ROW_BLOCK * cols)
            .into_par_iter()
            .enumerate()
            .map(|(block, mut dx)| {
                let rows = block * ROW_BLOCK..block * ROW_BLOCK + dx.len() / cols;
                let elements = rows.start * cols..rows.end * cols;
                let [mut x_scratch, mut dy_scratch, mut dx_scratch] = Default::default();
                let mut acc = HostBlock::zeroed(2 * cols);
                dx.store(&mut dx_scratch, |dx| {
                    simd::run(Backward {
                        x: x.slice(elements.clone()).f32s(&mut x_scratch),
                        dy: dy.slice(elements).f32s(&mut dy_scratch),
                        w,
                        mean: &mean[rows.clone()],
                        rstd: &rstd[rows],
                        dx,
                        acc: acc.as_f32s_mut(),
                    })
                });
                acc
            })
            .collect();
        param_grads = sum_in_block_order(partials, 2 * cols);
    })?;
    store(dw, param_grads[..cols].iter().copied())?;
    store(db, param_grads[cols..].iter().copied())
}
