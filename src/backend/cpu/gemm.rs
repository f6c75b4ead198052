//! Matrix products through the `gemm` crate, and the transposes that hand it a right-hand
//! side stored by columns as rows.

use std::ops::Range;

use super::staging::{Dst, Scratch, Src};
use super::storage::with_io;
use super::CpuBackend;
use crate::backend::MatmulSpec;
use crate::error::Result;
use crate::tensor::Tensor;

/// `out[b] = op(a[b]) · op(b[b]) (+ bias)`, item by item. Half-precision operands are widened
/// an item at a time and the item's f32 result rounded into `out` ([`staging`]), so that the
/// product runs on gemm's f32 kernels: faster here than its f16 ones (BENCHMARKS.md), and the
/// sums stay f32 across the whole of K.
pub(super) fn matmul(
    a: &Tensor<CpuBackend>,
    b: &Tensor<CpuBackend>,
    bias: Option<&Tensor<CpuBackend>>,
    out: &Tensor<CpuBackend>,
    spec: &MatmulSpec,
) -> Result<()> {
    let mut inputs = vec![a, b];
    inputs.extend(bias);
    with_io(&inputs, &[out], |ins, outs| {
        let (a, b) = (Src::of(ins[0], a), Src::of(ins[1], b));
        let mut bias_scratch = Scratch::default();
        let bias = bias.map(|t| Src::of(ins[2], t).f32s(&mut bias_scratch));
        let mut c = Dst::of(outs[0], out);
        let [mut a_scratch, mut b_scratch, mut c_scratch] = Default::default();
        let (mn, mk, kn) = (spec.m * spec.n, spec.m * spec.k, spec.k * spec.n);
        for item in 0..spec.batch {
            let a = a.slice(item * spec.stride_a..item * spec.stride_a + mk);
            let b = b.slice(item * spec.stride_b..item * spec.stride_b + kn);
            let (a, b) = (a.f32s(&mut a_scratch), b.f32s(&mut b_scratch));
            c.part(item * spec.stride_c..item * spec.stride_c + mn)
                .store(&mut c_scratch, |c| gemm_item(a, b, bias, c, spec));
        }
    })?;
    Ok(())
}

/// One item of a matrix product through [`gemm_by_rows`], which takes any row and column
/// strides. The bias is written to C first and accumulated onto (`read_dst`).
fn gemm_item(a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32], spec: &MatmulSpec) {
    let MatmulSpec { m, n, k, .. } = *spec;
    if m == 0 || n == 0 {
        return;
    }
    if let Some(bias) = bias {
        for row in c.chunks_exact_mut(n) {
            row.copy_from_slice(bias);
        }
    }
    let (a_rs, a_cs) = if spec.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if spec.trans_b { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads();
    let parallelism = if (m * n * k) < SERIAL_BELOW || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: `spec.check` proved that A holds m·k, B k·n and C m·n elements at these strides.
    unsafe {
        gemm_by_rows(
            (m, n, k),
            (c.as_mut_ptr(), n, bias.is_some()),
            (a.as_ptr(), a_rs, a_cs),
            (b.as_ptr(), b_rs, b_cs),
            (1.0, 1.0),
            parallelism,
        );
    }
}

/// `gemm::gemm`: dst (m×n, row stride dst.1) = alpha·dst (where dst.2 says to read it) +
/// beta·lhs·rhs, each operand a (pointer, row stride, column stride) view. A right-hand side
/// stored by columns (a linear layer's Wᵀ, attention's Kᵀ and Vᵀ) is first copied into rows:
/// gemm packs such an operand one element at a time, which under its AVX-512 kernels cost more
/// than the product (BENCHMARKS.md).
///
/// # Safety
/// As `gemm::gemm`: each view's elements lie inside one allocation, and dst overlaps no other.
#[allow(clippy::type_complexity)]
pub(super) unsafe fn gemm_by_rows(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, read_dst): (*mut f32, usize, bool),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    (alpha, beta): (f32, f32),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let mut scratch = RHS_SCRATCH.take();
    let (rhs, rhs_rs, rhs_cs) = if rhs_rs == 1 && rhs_cs != 1 && k > 0 {
        // Column j of the k×n right-hand side is row j of an n×k matrix of row stride rhs_cs.
        // SAFETY: those n rows are the view the caller vouches for.
        let columns = unsafe { std::slice::from_raw_parts(rhs, (n - 1) * rhs_cs + k) };
        transpose_into(columns, n, k, rhs_cs, &mut scratch);
        (scratch.as_ptr(), n, 1)
    } else {
        (rhs, rhs_rs, rhs_cs)
    };
    // Columns `cols` of the product, by gemm; addresses rather than pointers, so that the two
    // halves can be sent to threads.
    let (dst, lhs, rhs) = (dst as usize, lhs as usize, rhs as usize);
    let columns = |cols: Range<usize>, parallelism| {
        // SAFETY: the caller's views, or the scratch's k×n rows, narrowed to columns `cols`;
        // calls for disjoint columns write disjoint elements of dst.
        unsafe {
            gemm::gemm(
                m,
                cols.len(),
                k,
                (dst as *mut f32).add(cols.start),
                1,
                dst_rs as isize,
                read_dst,
                lhs as *const f32,
                lhs_cs as isize,
                lhs_rs as isize,
                (rhs as *const f32).add(cols.start * rhs_cs),
                rhs_cs as isize,
                rhs_rs as isize,
                alpha,
                beta,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    match parallelism {
        gemm::Parallelism::Rayon(_) if m <= SPLIT_COLUMNS_UP_TO_ROWS && n >= 2 * SPLIT_ALIGN => {
            let half = (n / 2).next_multiple_of(SPLIT_ALIGN);
            rayon::join(
                || columns(0..half, gemm::Parallelism::None),
                || columns(half..n, gemm::Parallelism::None),
            );
        }
        _ => columns(0..n, parallelism),
    }
    // A weight's worth is kept for the next product; an outsized one is let go.
    if scratch.capacity() <= MAX_KEPT_SCRATCH {
        RHS_SCRATCH.set(scratch);
    }
}

/// Products of fewer multiply-adds (m·n·k) than this run on one thread: they lose more to
/// handing work to threads than they gain.
pub(super) const SERIAL_BELOW: usize = 64 * 64 * 64;

/// Products of at most this many rows (a clip's frames, in inference) split their columns in
/// two halves, each computed by one thread without gemm's own threading, which hands work to
/// its threads once per block of K: at these sizes the hand-offs cost more than they share
/// (BENCHMARKS.md). The split does not depend on the thread count.
const SPLIT_COLUMNS_UP_TO_ROWS: usize = 128;
/// The halves split at a multiple of this many columns: whole vectors of gemm's kernels.
const SPLIT_ALIGN: usize = 16;

/// The most floats the transposed right-hand side's scratch keeps between products (16 MiB).
const MAX_KEPT_SCRATCH: usize = 1 << 22;

thread_local! {
    /// A transposed right-hand side's rows (gemm_item), kept between products.
    static RHS_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `src` [rows, cols] (row stride `src_rs`) into `dst` [cols, rows]: 8×8 blocks transposed in
/// AVX registers where the CPU has AVX, in blocks of rows that stay in L1; the edges one
/// element at a time.
pub(super) fn transpose_into(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_rs: usize,
    dst: &mut Vec<f32>,
) {
    if dst.len() < rows * cols {
        dst.resize(rows * cols, 0.0);
    }
    let dst = &mut dst[..rows * cols];
    let (rows8, cols8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX; transpose_8x8_blocks stays inside rows8 × cols8.
        unsafe { transpose_8x8_blocks(src, rows, cols, src_rs, rows8, cols8, dst) };
    } else {
        transpose_scalar(src, rows, src_rs, 0..rows8, 0..cols8, dst);
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose_scalar(src, rows, src_rs, 0..rows8, 0..cols8, dst);
    transpose_scalar(src, rows, src_rs, rows8..rows, 0..cols, dst);
    transpose_scalar(src, rows, src_rs, 0..rows8, cols8..cols, dst);
}

fn transpose_scalar(
    src: &[f32],
    rows: usize,
    src_rs: usize,
    row_range: std::ops::Range<usize>,
    col_range: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    for r in row_range {
        for c in col_range.clone() {
            dst[c * rows + r] = src[r * src_rs + c];
        }
    }
}

/// The 8×8 blocks of `src` [.., cols] (row stride `src_rs`) within rows8 × cols8 (multiples of
/// 8), transposed into `dst` [cols, rows].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8_blocks(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_rs: usize,
    rows8: usize,
    cols8: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(rows8 <= rows && cols8 <= cols && cols <= src_rs);
    assert!(rows == 0 || src.len() >= (rows - 1) * src_rs + cols);
    assert!(dst.len() >= rows * cols);
    // Rows of `src` a sweep covers: their 8-column strips stay in L1 while the sweep moves
    // right, and `dst` is written 32 bytes at a time.
    const ROW_BLOCK: usize = 64;
    for r0 in (0..rows8).step_by(ROW_BLOCK) {
        let r_end = (r0 + ROW_BLOCK).min(rows8);
        for c in (0..cols8).step_by(8) {
            for r in (r0..r_end).step_by(8) {
                // SAFETY (all loads and stores): r + 7 < rows8 ≤ rows and c + 7 < cols8 ≤
                // cols ≤ src_rs, so rows r .. r + 8 of `src` hold columns c .. c + 8, and rows
                // c .. c + 8 of `dst` hold columns r .. r + 8 (lengths asserted above).
                // (A macro, not a closure: a closure would be compiled without AVX.)
                macro_rules! load {
                    ($i:expr) => {
                        _mm256_loadu_ps(src.as_ptr().add((r + $i) * src_rs + c))
                    };
                }
                let (r0v, r1, r2, r3) = (load!(0), load!(1), load!(2), load!(3));
                let (r4, r5, r6, r7) = (load!(4), load!(5), load!(6), load!(7));
                let (t0, t1) = (_mm256_unpacklo_ps(r0v, r1), _mm256_unpackhi_ps(r0v, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let (u0, u1) = (
                    _mm256_shuffle_ps::<0x44>(t0, t2),
                    _mm256_shuffle_ps::<0xEE>(t0, t2),
                );
                let (u2, u3) = (
                    _mm256_shuffle_ps::<0x44>(t1, t3),
                    _mm256_shuffle_ps::<0xEE>(t1, t3),
                );
                let (u4, u5) = (
                    _mm256_shuffle_ps::<0x44>(t4, t6),
                    _mm256_shuffle_ps::<0xEE>(t4, t6),
                );
                let (u6, u7) = (
                    _mm256_shuffle_ps::<0x44>(t5, t7),
                    _mm256_shuffle_ps::<0xEE>(t5, t7),
                );
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (i, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.as_mut_ptr().add((c + i) * rows + r), v);
                }
            }
        }
    }
}
