//! The CPU kernels' SIMD bodies under every instruction set, the order of their sums, and
//! the dropout draws.

/// The SIMD bodies under every instruction set ([`crate::for_every_instruction_set`]), each
/// against the f64 reference (dropout against the draws).
mod simd_paths {
    use super::super::elementwise::{DropoutChunk, ElementwiseChunk};
    use super::super::gemm::transpose_into;
    use super::super::simd::{self, Simd, WithSimd};
    use super::super::{attention, norm};
    use crate::backend::Elementwise;
    use crate::backend::NO_KEYS_LSE;
    use crate::dtype::DType;
    use crate::reference;
    use crate::selftest::{self, GeluValueErrors};
    use crate::tolerance::{tolerance, Deviation, OpClass};

    /// Awkward lengths: whole blocks of every width, and tails.
    const COLS: [usize; 4] = [1, 37, 64, 203];

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // A fixed pseudo-random sequence in [-4, 4): enough to reach GELU's and layer norm's
        // interesting ranges.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
            })
            .collect()
    }

    fn wide(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], class: OpClass) {
        let d = Deviation::measure(got, want);
        assert!(d.within(tolerance(class, DType::F32)), "{what}: {d:?}");
    }

    /// The packed-weight kernel at sizes that cut its tiles (6 rows) and panels (two vectors
    /// of `S`), with and without bias, into a poisoned C.
    fn check_packed<S: Simd>(s: S, set: &str) {
        use super::super::packed::{pack, Operands, Tiles};
        let nr = 2 * std::mem::size_of::<S::f32s>() / 4;
        let sizes = [
            (1, 1, 1),
            (7, nr - 1, 5),
            (6, nr, 33),
            (13, 2 * nr + 3, 64),
            (20, 3 * nr, 1),
        ];
        for (i, (m, n, k)) in sizes.into_iter().enumerate() {
            let seed = 400 + 3 * i as u64;
            let (x, w, bias) = (
                values(m * k, seed),
                values(n * k, seed + 1),
                values(n, seed + 2),
            );
            let panels = pack(&w, n, k, nr);
            for bias in [None, Some(&bias[..])] {
                let mut c = vec![f32::NAN; m * n];
                let ops = Operands {
                    a: &x,
                    panels: &panels,
                    bias,
                    m,
                    n,
                    k,
                    nr,
                };
                // SAFETY: c holds m·n floats, and this thread alone writes them.
                unsafe { Tiles::new(ops, c.as_mut_ptr(), 0..m, 0..n.div_ceil(nr)) }.with_simd(s);
                let spec = crate::backend::MatmulSpec::new(m, n, k).transpose(false, true);
                let want =
                    reference::matmul(&wide(&x), &wide(&w), bias.map(wide).as_deref(), &spec);
                let what = format!("{set} packed {m}x{n}x{k} bias {}", bias.is_some());
                assert_close(&what, &c, &want, OpClass::Reduction);
            }
        }
    }

    /// Attention's forward body on one clip: all heads, and a share of them into rows of
    /// their own (as a clip's heads are shared among threads), with and without dropout.
    fn check_attention<S: Simd>(s: S, set: &str) {
        use crate::backend::{AttentionSpec, DropoutKey};
        for (i, (t, heads, d, p)) in [(13, 3, 5, 0.0), (37, 3, 20, 0.2)].into_iter().enumerate() {
            let mut spec = AttentionSpec::new(1, t, heads, d);
            spec.dropout = p;
            spec.key = DropoutKey {
                seed: 7,
                step: 1,
                site: 2,
            };
            let dm = heads * d;
            let qkv: Vec<f32> = values(t * 3 * dm, 600 + i as u64)
                .iter()
                .map(|v| v / 4.0)
                .collect();
            let mask: Vec<f32> = (0..t).map(|k| if k % 5 == 4 { 0.0 } else { 1.0 }).collect();
            let (want_out, want_lse) = reference::attention(
                &wide(&qkv),
                &wide(&mask),
                1,
                t,
                heads,
                d,
                p as f64,
                &spec.key,
            );
            for share in [0..heads, 1..heads] {
                let w = share.len() * d;
                let (mut out, mut lse) = (vec![f32::NAN; t * w], vec![f32::NAN; share.len() * t]);
                attention::Forward {
                    spec: &spec,
                    b: 0,
                    heads: share.clone(),
                    qkv: &qkv,
                    mask: &mask,
                    out: &mut out,
                    lse: &mut lse,
                }
                .with_simd(s);
                let cols = share.start * d..share.end * d;
                let want: Vec<f64> = want_out
                    .chunks_exact(dm)
                    .flat_map(|row| row[cols.clone()].to_vec())
                    .collect();
                let what = format!("{set} attention t {t} heads {share:?} of {heads} d {d} p {p}");
                assert_close(&what, &out, &want, OpClass::Reduction);
                let lse_want = &want_lse[share.start * t..share.end * t];
                assert_close(&format!("{what} lse"), &lse, lse_want, OpClass::Reduction);
            }
        }
    }

    #[test]
    fn attention_forward_under_every_instruction_set() {
        crate::for_every_instruction_set!(check_attention);
    }

    #[test]
    fn packed_products_under_every_instruction_set() {
        crate::for_every_instruction_set!(check_packed);
    }

    fn check_all<S: Simd>(s: S, set: &str) {
        for (i, &cols) in COLS.iter().enumerate() {
            let rows = 3;
            let n = rows * cols;
            let (x, dy) = (values(n, i as u64), values(n, 100 + i as u64));
            let (w, b) = (values(cols, 200 + i as u64), values(cols, 300 + i as u64));

            let mut out = vec![f32::NAN; n];
            ElementwiseChunk {
                op: Elementwise::Gelu,
                ins: &[&x],
                out: &mut out,
            }
            .with_simd(s);
            assert_close(
                &format!("{set} gelu {n}"),
                &out,
                &reference::gelu(&wide(&x)),
                OpClass::Elementwise,
            );
            ElementwiseChunk {
                op: Elementwise::GeluBackward,
                ins: &[&x, &dy],
                out: &mut out,
            }
            .with_simd(s);
            let want = reference::gelu_backward(&wide(&x), &wide(&dy));
            assert_close(
                &format!("{set} gelu_backward {n}"),
                &out,
                &want,
                OpClass::Elementwise,
            );

            let dot: f64 = x.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert_close(
                &format!("{set} dot {n}"),
                &[simd::dot(s, &x, &dy)],
                &[dot],
                OpClass::Reduction,
            );

            let (mut y, mut stats) = (vec![f32::NAN; n], vec![(f32::NAN, f32::NAN); rows]);
            norm::Forward {
                x: &x,
                w: &w,
                b: &b,
                eps: 1e-5,
                y: &mut y,
                stats: &mut stats,
            }
            .with_simd(s);
            let (want_y, want_mean, want_rstd) =
                reference::layernorm(&wide(&x), &wide(&w), &wide(&b), 1e-5);
            assert_close(
                &format!("{set} layernorm {n}"),
                &y,
                &want_y,
                OpClass::Reduction,
            );
            let (mean, rstd): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
            assert_close(
                &format!("{set} layernorm mean {n}"),
                &mean,
                &want_mean,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm rstd {n}"),
                &rstd,
                &want_rstd,
                OpClass::Reduction,
            );
            // A row's bits do not depend on its place among the rows: the first row's sum is
            // taken alone, each later one's in the sweep over the row before it.
            let (mut alone, mut alone_stats) = (vec![f32::NAN; cols], [(f32::NAN, f32::NAN)]);
            norm::Forward {
                x: &x[cols..2 * cols],
                w: &w,
                b: &b,
                eps: 1e-5,
                y: &mut alone,
                stats: &mut alone_stats,
            }
            .with_simd(s);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (bits(&alone), bits(&[alone_stats[0].0, alone_stats[0].1])),
                (bits(&y[cols..2 * cols]), bits(&[mean[1], rstd[1]])),
                "{set} layernorm: row 1 alone and after row 0 ({cols} columns)"
            );

            // A row of attention scores over a ragged key mask (about a quarter of the keys
            // padding), and one whose keys are all padding.
            let ragged = values(cols, 400 + i as u64)
                .iter()
                .map(|&v| if v > -2.0 { 1.0 } else { 0.0 })
                .collect();
            for mask in [ragged, vec![0.0f32; cols]] {
                let mut p = x[..cols].to_vec();
                let lse = attention::SoftmaxRow {
                    row: &mut p,
                    mask: &mask,
                }
                .with_simd(s);
                let real: Vec<usize> = (0..cols).filter(|&k| mask[k] != 0.0).collect();
                if real.is_empty() {
                    assert!(lse == NO_KEYS_LSE && p.iter().all(|&v| v == 0.0), "{set}");
                    continue;
                }
                let max = real.iter().map(|&k| x[k] as f64).fold(f64::MIN, f64::max);
                let sum: f64 = real.iter().map(|&k| (x[k] as f64 - max).exp()).sum();
                let want: Vec<f64> = (0..cols)
                    .map(|k| match mask[k] != 0.0 {
                        true => (x[k] as f64 - max).exp() / sum,
                        false => 0.0,
                    })
                    .collect();
                let what = format!("{set} softmax {cols}");
                assert_close(&what, &p, &want, OpClass::Reduction);
                assert_close(&what, &[lse], &[max + sum.ln()], OpClass::Reduction);
            }

            let (mut dx, mut acc) = (vec![f32::NAN; n], vec![0.0f32; 2 * cols]);
            norm::Backward {
                x: &x,
                dy: &dy,
                w: &w,
                mean: &mean,
                rstd: &rstd,
                dx: &mut dx,
                acc: &mut acc,
            }
            .with_simd(s);
            let (want_dx, want_dw, want_db) = reference::layernorm_backward(
                &wide(&x),
                &wide(&w),
                &wide(&mean),
                &wide(&rstd),
                &wide(&dy),
            );
            assert_close(
                &format!("{set} layernorm dx {n}"),
                &dx,
                &want_dx,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm dw {n}"),
                &acc[..cols],
                &want_dw,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm db {n}"),
                &acc[cols..],
                &want_db,
                OpClass::Reduction,
            );
        }
    }

    /// Dropout element by element against `rng::keep`, over lengths and offsets that take
    /// every path of `for_each_tile`: partial tiles, lone whole tiles, and two or four
    /// at a time (two to a vector under 16 lanes).
    fn check_dropout<S: Simd>(s: S, set: &str) {
        let key = crate::rng::DropoutKey {
            seed: 7,
            step: 3,
            site: 2,
        };
        let p = 0.3;
        let scale = crate::rng::keep_scale(p);
        for (first, n) in [(0, 700), (3, 700), (64, 130), (0, 64)] {
            let x = values(n, 500 + first);
            let mut out = vec![f32::NAN; n];
            DropoutChunk {
                key: &key,
                first_element: first,
                p,
                scale,
                x: &x,
                out: &mut out,
            }
            .with_simd(s);
            for (i, (&x, &y)) in x.iter().zip(&out).enumerate() {
                let e = first + i as u64;
                let want = if crate::rng::keep(&key, e, p) {
                    x * scale
                } else {
                    0.0
                };
                assert_eq!(y.to_bits(), want.to_bits(), "{set} dropout, element {e}");
            }
        }
    }

    /// GELU and gelu' value by value under each instruction set (the native one is checked
    /// through the backend, by the parity tests).
    fn check_gelu_sweep<S: Simd>(s: S, set: &str) {
        let x = selftest::gelu_sweep();
        let ones = vec![1.0f32; x.len()];
        let (mut y, mut grad) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
        ElementwiseChunk {
            op: Elementwise::Gelu,
            ins: &[&x],
            out: &mut y,
        }
        .with_simd(s);
        ElementwiseChunk {
            op: Elementwise::GeluBackward,
            ins: &[&x, &ones],
            out: &mut grad,
        }
        .with_simd(s);
        let errors = GeluValueErrors::measure(&x, &y, &grad);
        assert!(errors.within(), "{set}: {errors:?}");
    }

    #[test]
    fn transpose_into_every_block_and_edge() {
        let sizes = [
            (1, 1),
            (1, 9),
            (9, 1),
            (8, 8),
            (13, 21),
            (16, 24),
            (67, 130),
        ];
        for ((rows, cols), pad) in sizes.into_iter().zip([0, 3, 0, 8, 1, 0, 29]) {
            // Rows `pad` elements apart beyond their width, as a head's columns of qkv are.
            let src_rs = cols + pad;
            let src: Vec<f32> = (0..rows * src_rs).map(|i| i as f32).collect();
            // A longer, dirty scratch: only its first rows·cols elements are the answer.
            let mut dst = vec![f32::NAN; rows * cols + 5];
            transpose_into(&src, rows, cols, src_rs, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    let want = src[r * src_rs + c];
                    assert_eq!(dst[c * rows + r], want, "{rows}x{cols}+{pad} at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn gelu_is_accurate_value_by_value() {
        crate::for_every_instruction_set!(check_gelu_sweep);
    }

    /// The same with subnormal results and operands taken as zero, as NVIDIA's Vulkan driver
    /// takes them (shaders/gelu.wgsl orders its operations as math.rs does): x86's
    /// flush-to-zero and denormals-are-zero modes, on this thread.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(deprecated)] // _mm_getcsr/_mm_setcsr: Rust has no other way to reach MXCSR.
    fn gelu_is_accurate_with_subnormals_flushed() {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ_DAZ: u32 = 0x8040;
        // SAFETY: MXCSR's rounding and exception bits are kept; it is restored before return.
        let saved = unsafe { _mm_getcsr() };
        unsafe { _mm_setcsr(saved | FTZ_DAZ) };
        let checked =
            std::panic::catch_unwind(|| crate::for_every_instruction_set!(check_gelu_sweep));
        unsafe { _mm_setcsr(saved) };
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn every_instruction_set_drops_the_same_elements() {
        crate::for_every_instruction_set!(check_dropout);
    }

    #[test]
    fn every_instruction_set_matches_the_reference() {
        crate::for_every_instruction_set!(check_all);
    }
}

mod column_sums_order {
    use super::super::reductions::{column_sums, sum_in_block_order, ColumnSums, ROW_BLOCK};
    use super::super::simd::{Simd, WithSimd};
    use super::super::staging::Src;
    use super::super::storage::HostBlock;

    /// Matrices of 5, 37 and 300 columns (whole vectors, whole strips and tails) and rows
    /// that leave 0 to 3 over in a block, each with its blocks' row-by-row sums.
    fn cases() -> Vec<(usize, Vec<f32>, Vec<HostBlock>)> {
        [5, 37, 300]
            .into_iter()
            .flat_map(|c| [1, 3, 4, 6, 7, 64, 65, 66, 131].map(|r| (c, r)))
            .map(|(cols, rows)| {
                let m: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 1.0e-3 * (1 + i % 3) as f32)
                    .collect();
                let want = m
                    .chunks(ROW_BLOCK * cols)
                    .map(|block| {
                        let mut acc = HostBlock::zeroed(cols);
                        for row in block.chunks_exact(cols) {
                            acc.as_f32s_mut()
                                .iter_mut()
                                .zip(row)
                                .for_each(|(a, g)| *a += g);
                        }
                        acc
                    })
                    .collect();
                (cols, m, want)
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The column sums take rows four at a time, or strips of columns down the rows: the
    /// same bits as adding the rows one after another, in every block and for every number
    /// of rows left over.
    #[test]
    fn equal_row_by_row_sums() {
        for (cols, m, want) in cases() {
            assert_eq!(
                bits(&column_sums(Src::F32(&m), cols)),
                bits(&sum_in_block_order(want, cols)),
                "{} rows of {cols}",
                m.len() / cols
            );
        }
    }

    /// Each block under every instruction set: four-row passes, and strips under 16 lanes.
    #[test]
    fn every_instruction_set_sums_in_row_order() {
        fn check<S: Simd>(s: S, set: &str) {
            for (cols, m, want) in cases() {
                for (block, want) in m.chunks(ROW_BLOCK * cols).zip(&want) {
                    let mut sums = vec![0.0; cols];
                    ColumnSums {
                        rows: block,
                        sums: &mut sums,
                    }
                    .with_simd(s);
                    assert_eq!(
                        bits(&sums),
                        bits(want.as_f32s()),
                        "{set}: {} rows of {cols}",
                        block.len() / cols
                    );
                }
            }
        }
        crate::for_every_instruction_set!(check);
    }
}

/// The vector Philox against [`crate::rng::draw`], element by element, under every instruction
/// set: runs that start on every lane of a call's outputs and halves, whole tiles one, two and
/// four at a time, and runs that cross the counter's and the key's boundaries (elements 2^35
/// and 2^37, calls 2^32 and 2^34) or end at 2^64.
mod philox_draws {
    use super::super::philox::for_each_tile;
    use super::super::simd::Simd;
    use crate::rng::{draw, DropoutKey};

    /// Every word's high half nonzero, so that a dropped or swapped high word shows.
    const KEY: DropoutKey = DropoutKey {
        seed: 0x1234_5678_9abc_def0,
        step: 0xfedc_ba98_7654_3210,
        site: 0xdead_beef,
    };

    /// The draws of elements `first .. first + len`, as `for_each_tile` hands them out.
    fn draws<S: Simd>(s: S, key: &DropoutKey, first: u64, len: usize) -> Vec<u32> {
        let mut out = vec![u32::MAX; len];
        for_each_tile(s, key, first, len, |range, tile| {
            let out = &mut out[range];
            tile.for_each_run(s, |run, bits| s.partial_store_u32s(&mut out[run], bits));
        });
        out
    }

    fn check_run<S: Simd>(s: S, set: &str, key: &DropoutKey, first: u64, len: usize) {
        for (i, &bits) in draws(s, key, first, len).iter().enumerate() {
            let e = first + i as u64;
            assert_eq!(
                bits,
                draw(key, e),
                "{set}: first {first}, len {len}, element {e}"
            );
        }
    }

    fn check<S: Simd>(s: S, set: &str) {
        let other = DropoutKey {
            seed: 0x0123_4567_89ab_cdef,
            step: 0x1_0000_0002,
            site: 9,
        };
        let long = [
            0u64,
            1,
            3,
            4,
            5,
            8,
            63,
            64,
            65,
            (1 << 35) - 129,
            (1 << 37) - 40,
        ];
        for first in long {
            for len in [31, 32, 33, 64, 100, 128, 257, 300] {
                check_run(s, set, &other, first, len);
            }
        }
        for first in [0u64, 3, 64, (1 << 35) - 29, (1 << 35) - 128, (1 << 37) - 70] {
            check_run(s, set, &KEY, first, 300);
        }
        for base in [0u64, (1 << 35) - 8, (1 << 37) - 8, u64::MAX - 20] {
            for first in base..base + 17 {
                for len in 0..13usize {
                    if first.checked_add(len as u64).is_some() {
                        check_run(s, set, &KEY, first, len);
                    }
                }
            }
        }
    }

    #[test]
    fn every_instruction_set_draws_the_same_bits() {
        crate::for_every_instruction_set!(check);
    }
}
