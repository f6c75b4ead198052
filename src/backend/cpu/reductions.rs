//! Sums over rows in a fixed order, so that every run gives the same bits: column sums (the
//! bias gradient; layer norm's parameter gradients add their blocks with
//! [`sum_in_block_order`]) and the mean pool over frames.

use rayon::prelude::*;

use super::simd::{self, Simd, WithSimd};
use super::staging::{Dst, Scratch, Src};
use super::storage::{f32s, f32s_mut, with_io, HostBlock};
use super::CpuBackend;
use crate::error::Result;
use crate::tensor::Tensor;

/// Column sums (bias and layer norm gradients) add up partial sums over blocks of this many
/// rows, in block order: parallel, yet the same bits on every run.
pub(super) const ROW_BLOCK: usize = 64;

/// Sums rows of `m` (rows of `cols`) into `cols` accumulators: partial sums over blocks of
/// [`ROW_BLOCK`] rows in parallel (each block widened to f32 where `m` is half precision),
/// then the partials in block order.
pub(super) fn column_sums(m: Src<'_>, cols: usize) -> Vec<f32> {
    let block = ROW_BLOCK * cols;
    let partials = (0..m.len().div_ceil(block))
        .into_par_iter()
        .map(|i| {
            let mut scratch = Scratch::default();
            let rows = m.slice(i * block..m.len().min((i + 1) * block));
            let mut sums = HostBlock::zeroed(cols);
            simd::run(ColumnSums {
                rows: rows.f32s(&mut scratch),
                sums: sums.as_f32s_mut(),
            });
            sums
        })
        .collect();
    sum_in_block_order(partials, cols)
}

/// The column sums of a block of rows, each column's rows added one after another in row
/// order, whichever way the block is walked (so the same bits).
pub(super) struct ColumnSums<'a> {
    pub rows: &'a [f32],
    /// One sum a column, that the rows are added to.
    pub sums: &'a mut [f32],
}

/// The vectors of one strip of columns that [`ColumnSums`] walks down the rows under
/// AVX-512: 512 bytes of each row, summed in registers.
type Strip<S> = simd::Block<S, 8>;

impl WithSimd for ColumnSums<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let ColumnSums { rows, sums } = self;
        let cols = sums.len();
        if Strip::<S>::len() >= 128 {
            // Under AVX-512 (32 registers), a strip of columns at a time down all the rows,
            // its sums in registers, beats the four-row passes below. Under AVX2, strips of
            // 512 bytes (16 registers, spilled) or 256 were no faster than those passes, and
            // of 128 bytes much slower (BENCHMARKS.md).
            simd::for_each_block(
                Strip::<S>::len(),
                cols,
                #[inline(always)]
                |c| {
                    let mut sum = Strip::<S>::load(s, &sums[c.clone()]);
                    for row in rows.chunks_exact(cols) {
                        sum = sum + Strip::load(s, &row[c.clone()]);
                    }
                    sum.store(&mut sums[c]);
                },
            );
            return;
        }
        // Four rows to a pass over `sums`, added one after another as row by row would (the
        // same bits), so that `sums` is read and written a quarter as often.
        let mut quads = rows.chunks_exact(4 * cols);
        for quad in &mut quads {
            let (r01, r23) = quad.split_at(2 * cols);
            let ((r0, r1), (r2, r3)) = (r01.split_at(cols), r23.split_at(cols));
            let rows = r0.iter().zip(r1).zip(r2.iter().zip(r3));
            for (a, ((g0, g1), (g2, g3))) in sums.iter_mut().zip(rows) {
                *a = *a + g0 + g1 + g2 + g3;
            }
        }
        for row in quads.remainder().chunks_exact(cols) {
            sums.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
    }
}

/// Adds up per-block partial sums in block order: blocks of a fixed size (not one per
/// thread), so that the result is the same on every run and any number of threads.
pub(super) fn sum_in_block_order(partials: Vec<HostBlock>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    // No blocks (no rows): zeros.
    let mut total = partials
        .next()
        .map_or_else(|| vec![0.0; len], |first| first.as_f32s().to_vec());
    for partial in partials {
        total
            .iter_mut()
            .zip(partial.as_f32s())
            .for_each(|(t, p)| *t += p);
    }
    total
}

/// `db` = the column sums of `dy`.
pub(super) fn bias_grad(dy: &Tensor<CpuBackend>, db: &Tensor<CpuBackend>) -> Result<()> {
    let cols = db.len();
    with_io(&[dy], &[db], |ins, outs| {
        let words = &mut *outs[0];
        let sums = column_sums(Src::of(ins[0], dy), cols);
        f32s_mut(words, db).copy_from_slice(&sums);
    })?;
    Ok(())
}

/// The mean of each clip's real frames.
pub(super) fn mean_pool(
    h: &Tensor<CpuBackend>,
    mask: &Tensor<CpuBackend>,
    out: &Tensor<CpuBackend>,
    (t, d): (usize, usize),
) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    with_io(&[h, mask], &[out], |ins, outs| {
        let (h, mask) = (Src::of(ins[0], h), f32s(ins[1], mask));
        Dst::of(outs[0], out)
            .chunks(d)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut o)| {
                let mut scratch = Scratch::default();
                let h = h.slice(b * t * d..(b + 1) * t * d).f32s(&mut scratch);
                o.store(&mut Scratch::default(), |o| {
                    o.fill(0.0);
                    let m = &mask[b * t..(b + 1) * t];
                    for (s, &weight) in m.iter().enumerate() {
                        if weight != 0.0 {
                            let row = &h[s * d..(s + 1) * d];
                            o.iter_mut().zip(row).for_each(|(o, x)| *o += weight * x);
                        }
                    }
                    let count: f32 = m.iter().sum();
                    if count > 0.0 {
                        o.iter_mut().for_each(|o| *o /= count);
                    }
                });
            });
    })
}

/// Each real frame's share of its clip's pooled gradient.
pub(super) fn mean_pool_backward(
    dout: &Tensor<CpuBackend>,
    mask: &Tensor<CpuBackend>,
    dh: &Tensor<CpuBackend>,
    (t, d): (usize, usize),
) -> Result<()> {
    if dh.is_empty() {
        return Ok(());
    }
    with_io(&[dout, mask], &[dh], |ins, outs| {
        let (dout, mask) = (Src::of(ins[0], dout), f32s(ins[1], mask));
        Dst::of(outs[0], dh)
            .chunks(t * d)
            .into_par_iter()
            .enumerate()
            .for_each(|(b, mut clip)| {
                let mut scratch = Scratch::default();
                let dout = dout.slice(b * d..(b + 1) * d).f32s(&mut scratch);
                let m = &mask[b * t..(b + 1) * t];
                let count: f32 = m.iter().sum();
                clip.store(&mut Scratch::default(), |clip| {
                    for (s, row) in clip.chunks_exact_mut(d).enumerate() {
                        let weight = if count > 0.0 { m[s] / count } else { 0.0 };
                        row.iter_mut().zip(dout).for_each(|(o, g)| *o = weight * g);
                    }
                });
            });
    })
}
