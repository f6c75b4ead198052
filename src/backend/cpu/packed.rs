//! Products whose right-hand side is a weight packed once ([`Backend::pack_weight`]) into
//! the panels this file's kernel reads, for a model whose weights no longer change.
//!
//! Why not `gemm`: it takes no packed operand, so it packs the weight again at every product,
//! and at a clip's 64 rows that repacking took a fifth of a prediction (BENCHMARKS.md). The
//! crates that do take one (tract's linalg) are an inference engine's internals, with an API
//! that changes with each release. The kernel is small: BLIS's register tile, written once
//! over `pulp`'s vectors so that it runs at the width of every instruction set.
//!
//! Layout: weight W [n, k] (out × in) becomes panels [⌈n/NR⌉, k, NR], NR = two vectors of the
//! CPU's instruction set ([`panel_width`]): panel p, row kk holds W[p·NR .. p·NR + NR][kk],
//! zeros past n. A tile of [`TILE_ROWS`] rows of A and one panel keeps its 2·TILE_ROWS sums
//! in registers across the whole of K, one FMA per A element and panel vector: the sums run
//! over K in order, as the reference's do.
//!
//! [`Backend::pack_weight`]: crate::backend::Backend::pack_weight

use std::ops::Range;

use rayon::prelude::*;

use super::simd::{self, Simd, WithSimd};
use super::staging::{Dst, Src};
use super::storage::with_io;
use super::CpuBackend;
use crate::backend::MatmulSpec;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rows of A a tile computes: 6 rows × 2 vectors are 12 accumulators, which with the panel's
/// two vectors and a broadcast A element fit AVX2's 16 registers.
pub(super) const TILE_ROWS: usize = 6;

/// Rows of A one task computes against its panels: 12 tiles, whose A rows (up to 288 KiB at
/// K = 1024) stay in L2 while the task sweeps its panels. A clip's 64 frames are one block,
/// whose panels the threads share; larger batches share out blocks.
const BLOCK_ROWS: usize = 12 * TILE_ROWS;

/// The panel width NR under instruction set `S`: two vectors.
fn width_of<S: Simd>() -> usize {
    2 * std::mem::size_of::<S::f32s>() / 4
}

/// The panel width NR of this CPU's kernel.
pub(super) fn panel_width() -> usize {
    struct Width;
    impl WithSimd for Width {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> usize {
            width_of::<S>()
        }
    }
    simd::run(Width)
}

/// `w` [n, k] (row-major) as panels [⌈n/nr⌉, k, nr], zeros past n.
pub(super) fn pack(w: &[f32], n: usize, k: usize, nr: usize) -> Vec<f32> {
    let mut panels = vec![0.0; n.div_ceil(nr) * k * nr];
    for (col, row) in w.chunks_exact(k).take(n).enumerate() {
        let (p, j) = (col / nr, col % nr);
        for (kk, &v) in row.iter().enumerate() {
            panels[(p * k + kk) * nr + j] = v;
        }
    }
    panels
}

/// `out = a · b (+ bias)` for a `b` packed by [`pack`] (`spec.packed_b`; checked: one item,
/// A not transposed, B's shape). Half-precision A and C are widened and rounded as
/// [`super::gemm::matmul`] does; B is f32.
pub(super) fn matmul(
    a: &Tensor<CpuBackend>,
    b: &Tensor<CpuBackend>,
    bias: Option<&Tensor<CpuBackend>>,
    out: &Tensor<CpuBackend>,
    spec: &MatmulSpec,
) -> Result<()> {
    let nr = b.shape()[2];
    if nr != panel_width() {
        return Err(Error::shape(
            "matmul",
            format!(
                "B was packed in panels of {nr} columns, this CPU's kernel reads {}: pack it \
                 with this backend's pack_weight",
                panel_width()
            ),
        ));
    }
    let mut inputs = vec![a, b];
    inputs.extend(bias);
    with_io(&inputs, &[out], |ins, outs| {
        let [mut a_scratch, mut b_scratch, mut bias_scratch, mut c_scratch] = Default::default();
        let a = Src::of(ins[0], a).f32s(&mut a_scratch);
        let panels = Src::of(ins[1], b).f32s(&mut b_scratch);
        let bias = bias.map(|t| Src::of(ins[2], t).f32s(&mut bias_scratch));
        let (m, n, k) = (spec.m, spec.n, spec.k);
        Dst::of(outs[0], out).store(&mut c_scratch, |c| {
            product(
                Operands {
                    a,
                    panels,
                    bias,
                    m,
                    n,
                    k,
                    nr,
                },
                &mut c[..m * n],
            )
        });
    })
}

/// One product's operands: A [m, k] in rows, the packed B, the bias [n].
#[derive(Clone, Copy)]
pub(super) struct Operands<'a> {
    pub a: &'a [f32],
    pub panels: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub nr: usize,
}

/// `c` [m, n] = A·B (+ bias), shared among the pool's threads as blocks of rows × groups of
/// panels; a product smaller than [`super::gemm::SERIAL_BELOW`] runs on this thread.
pub(super) fn product(ops: Operands, c: &mut [f32]) {
    let Operands { m, n, k, nr, .. } = ops;
    assert!(ops.a.len() >= m * k && c.len() >= m * n);
    assert!(ops.panels.len() >= n.div_ceil(nr) * k * nr);
    assert!(ops.bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return;
    }
    let panels = n.div_ceil(nr);
    let threads = rayon::current_num_threads();
    let blocks = m.div_ceil(BLOCK_ROWS);
    let groups = if m * n * k < super::gemm::SERIAL_BELOW {
        1
    } else {
        threads.div_ceil(blocks).min(panels)
    };
    let c = c.as_mut_ptr() as usize;
    let task = |t: usize| {
        let (block, group) = (t / groups, t % groups);
        let rows = block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(m);
        let panels = group * panels / groups..(group + 1) * panels / groups;
        // SAFETY: c holds m·n elements (asserted); the tasks' (rows, panels) are disjoint.
        simd::run(unsafe { Tiles::new(ops, c as *mut f32, rows, panels) });
    };
    if blocks * groups == 1 {
        task(0);
    } else {
        (0..blocks * groups).into_par_iter().for_each(task);
    }
}

/// Rows `rows` of C against panels `panels`, tile by tile, into C [m, n] at `c`.
pub(super) struct Tiles<'a> {
    ops: Operands<'a>,
    c: *mut f32,
    rows: Range<usize>,
    panels: Range<usize>,
}

impl<'a> Tiles<'a> {
    /// # Safety
    /// `c` points at m·n floats (C [m, n]) of which no other thread reads or writes the
    /// elements in rows `rows` and the columns of panels `panels` while the body runs; `rows`
    /// lie within m and `panels` within ⌈n/nr⌉.
    pub(super) unsafe fn new(
        ops: Operands<'a>,
        c: *mut f32,
        rows: Range<usize>,
        panels: Range<usize>,
    ) -> Tiles<'a> {
        Tiles {
            ops,
            c,
            rows,
            panels,
        }
    }
}

impl WithSimd for Tiles<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let Operands {
            a,
            panels,
            bias,
            n,
            k,
            nr,
            ..
        } = self.ops;
        assert_eq!(
            nr,
            width_of::<S>(),
            "panels packed for another vector width"
        );
        let lanes = nr / 2;
        let last = self.panels.end.saturating_sub(1);
        for p in self.panels {
            let panel = &panels[p * k * nr..(p + 1) * k * nr];
            // The panel the next one of this body's panels reads, for this one's first tile to
            // fetch into L2 while it computes ([`Tile::ahead`]).
            let next = &panels[(p + 1).min(last) * k * nr..][..k * nr];
            let cols = nr.min(n - p * nr);
            // The bias of the panel's columns, zeros past n.
            let start = [s.splat_f32s(0.0); 2];
            let start = bias.map_or(start, |bias| {
                let bias = &bias[p * nr..p * nr + cols];
                let (lo, hi) = bias.split_at(cols.min(lanes));
                [s.partial_load_f32s(lo), s.partial_load_f32s(hi)]
            });
            let mut r = self.rows.start;
            while r < self.rows.end {
                let rows = (self.rows.end - r).min(TILE_ROWS);
                let a = &a[r * k..(r + rows) * k];
                let ahead = if r == self.rows.start { next } else { panel };
                // SAFETY: row r + rows - 1 < m and column p·nr + cols - 1 < n of C [m, n].
                let c = unsafe { self.c.add(r * n + p * nr) };
                let tile = Tile {
                    s,
                    a,
                    k,
                    panel,
                    ahead,
                    start,
                    c,
                    ldc: n,
                    cols,
                };
                match rows {
                    6 => tile.run::<6>(),
                    5 => tile.run::<5>(),
                    4 => tile.run::<4>(),
                    3 => tile.run::<3>(),
                    2 => tile.run::<2>(),
                    _ => tile.run::<1>(),
                }
                r += rows;
            }
        }
    }
}

/// One tile: R (≤ [`TILE_ROWS`]) rows of A [R, k] against one panel [k, 2 vectors], into C
/// from `c` (row stride `ldc`), its first `cols` columns.
struct Tile<'a, S: Simd> {
    s: S,
    a: &'a [f32],
    k: usize,
    panel: &'a [f32],
    /// A panel to fetch into L2 a row at a time as the loop goes: the next panel, for a
    /// panel's first tile, or this one (a no-op). Each weight is read once per prediction,
    /// from memory: fetched only as the first tile reached each row, the products ran at
    /// two thirds of the speed they reach on weights in cache (BENCHMARKS.md).
    ahead: &'a [f32],
    start: [S::f32s; 2],
    c: *mut f32,
    ldc: usize,
    cols: usize,
}

impl<S: Simd> Tile<'_, S> {
    #[inline(always)]
    fn run<const R: usize>(self) {
        let Tile {
            s,
            a,
            k,
            panel,
            ahead,
            start,
            c,
            ldc,
            cols,
        } = self;
        let lanes = std::mem::size_of::<S::f32s>() / 4;
        let nr = 2 * lanes;
        assert!(a.len() >= R * k && panel.len() >= k * nr && ahead.len() >= k * nr);
        let mut lo = [start[0]; R];
        let mut hi = [start[1]; R];
        let (a, mut b, mut ahead) = (a.as_ptr(), panel.as_ptr(), ahead.as_ptr());
        for kk in 0..k {
            // SAFETY: kk < k, so the panel's row kk (nr floats), `ahead`'s row kk and A's
            // element (i, kk) of each of its R rows lie inside the slices asserted above. (Pointers: the
            // bounds checks of indexing cost a third of the loop.)
            unsafe {
                let b0 = std::ptr::read_unaligned(b as *const S::f32s);
                let b1 = std::ptr::read_unaligned(b.add(lanes) as *const S::f32s);
                for i in 0..R {
                    let ai = s.splat_f32s(*a.add(i * k + kk));
                    lo[i] = s.mul_add_f32s(ai, b0, lo[i]);
                    hi[i] = s.mul_add_f32s(ai, b1, hi[i]);
                }
                for line in (0..nr).step_by(16) {
                    prefetch(ahead.add(line));
                }
                b = b.add(nr);
                ahead = ahead.add(nr);
            }
        }
        for i in 0..R {
            // SAFETY: the caller's C holds `cols` columns of each of the tile's R rows.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), cols) };
            if cols == 2 * lanes {
                // SAFETY: the row holds two vectors. (pulp's partial stores are calls.)
                unsafe {
                    std::ptr::write_unaligned(row.as_mut_ptr() as *mut S::f32s, lo[i]);
                    std::ptr::write_unaligned(row.as_mut_ptr().add(lanes) as *mut S::f32s, hi[i]);
                }
            } else {
                let (first, second) = row.split_at_mut(cols.min(lanes));
                s.partial_store_f32s(first, lo[i]);
                s.partial_store_f32s(second, hi[i]);
            }
        }
    }
}

/// Asks for the cache line holding `p` to be brought into L2 (a hint: nothing where the
/// architecture's intrinsic is not stable).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and faults on no address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
