//! f32 ↔ f16 and f32 ↔ bf16 conversion of slices, with the bits of `half`'s (round to nearest
//! even; NaNs made quiet).
//!
//! f16: both use the F16C instructions where the CPU has them. `half` calls a function per
//! eight elements there, since its conversion cannot be inlined across the target-feature
//! boundary, and that call made the f32 → f16 cast much slower than a copy of the same bytes
//! (BENCHMARKS.md); here the whole loop is compiled for F16C. Without F16C and the OS's AVX support (or
//! off x86-64), `half` converts.
//!
//! bf16: `half` converts one element at a time with branches; here the same rule is written
//! without them, so that the compiler vectorises the loop (for AVX2 where the CPU has it).

use half::{bf16, f16, slice::HalfFloatSliceExt};

/// Elements one F16C instruction converts.
#[cfg(target_arch = "x86_64")]
const LANES: usize = 8;

/// Whether this CPU (and its OS) run the F16C loops below. (std caches the detection.)
#[cfg(target_arch = "x86_64")]
fn has_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c")
}

/// `dst[i] = f16(src[i])`, rounding to nearest even (equal lengths).
pub(super) fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the loop's features were just detected.
        unsafe { f32_to_f16_f16c(src, dst) };
        return;
    }
    dst.convert_from_f32_slice(src);
}

/// `dst[i] = f32(src[i])`, exact (equal lengths).
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: as in `f32_to_f16`.
        unsafe { f16_to_f32_f16c(src, dst) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

/// `dst[i] = bf16(src[i])`, rounding to nearest even (equal lengths).
pub(super) fn f32_to_bf16(src: &[f32], dst: &mut [bf16]) {
    map(
        src,
        dst,
        #[inline(always)]
        |x| bf16::from_bits(bf16_bits(x)),
    );
}

/// `dst[i] = f32(src[i])`, exact but for NaNs, made quiet (equal lengths).
pub(super) fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    map(
        src,
        dst,
        #[inline(always)]
        |h| {
            let h = h.to_bits() as u32;
            let quiet = if h & 0x7fff > 0x7f80 { 0x40 } else { 0 };
            f32::from_bits((h | quiet) << 16)
        },
    );
}

/// `dst[i] = f(src[i])` (equal lengths) in a loop compiled for the best instruction set, which
/// the compiler vectorises where `f` has no branches.
#[inline(always)]
fn map<S: Copy, D>(src: &[S], dst: &mut [D], f: impl Fn(S) -> D) {
    assert_eq!(src.len(), dst.len(), "a conversion of unequal lengths");
    super::simd::run(
        #[inline(always)]
        || {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f(*s);
            }
        },
    );
}

/// `half`'s f32 → bf16 rule without branches: a NaN keeps its sign and top payload bits with
/// the quiet bit set; otherwise round to nearest, ties to even (the carry may reach the
/// exponent, up to infinity).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let x = x.to_bits();
    let nan = x & 0x7fff_ffff > 0x7f80_0000;
    // Past the half-way bit, or exactly at it with an odd result: up.
    let round_up = x & 0x8000 != 0 && x & 0x1_7fff != 0;
    let rounded = (x >> 16) + round_up as u32;
    (if nan { (x >> 16) | 0x40 } else { rounded }) as u16
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    by_blocks(
        src,
        dst,
        // SAFETY: `s` holds eight f32 and `d` eight f16 (16 bytes); both accesses are
        // unaligned.
        |s, d| unsafe {
            let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
            _mm_storeu_si128(d.as_mut_ptr() as *mut __m128i, halves);
        },
        |s, d| d.convert_from_f32_slice(s),
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    by_blocks(
        src,
        dst,
        // SAFETY: `s` holds eight f16 (16 bytes) and `d` eight f32; both accesses are
        // unaligned.
        |s, d| unsafe {
            let halves = _mm_loadu_si128(s.as_ptr() as *const __m128i);
            _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(halves));
        },
        |s, d| s.convert_to_f32_slice(d),
    );
}

/// Converts `src` into `dst` (equal lengths) by `block`, [`LANES`] elements at a time, and the
/// tail under that by `tail` (`half`, which uses the same instruction under F16C). The callers'
/// closures inherit their target features (Rust 1.86); inlining this lets them be inlined
/// into the loop.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn by_blocks<S, D>(
    src: &[S],
    dst: &mut [D],
    mut block: impl FnMut(&[S], &mut [D]),
    tail: impl FnOnce(&[S], &mut [D]),
) {
    assert_eq!(src.len(), dst.len(), "a conversion of unequal lengths");
    let whole = src.len() / LANES * LANES;
    let ((src, src_tail), (dst, dst_tail)) = (src.split_at(whole), dst.split_at_mut(whole));
    for (s, d) in src.chunks_exact(LANES).zip(dst.chunks_exact_mut(LANES)) {
        block(s, d);
    }
    tail(src_tail, dst_tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 values where rounding to f16 is delicate: signed zeros, infinities, NaNs with
    /// payloads (signalling and quiet), the largest f16 and the values either side of where
    /// rounding overflows, subnormals and their ties, ties to even among normals; then bit
    /// patterns from all over the f32 range.
    fn awkward_f32s() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff80_2000),
            f32::from_bits(0x7fc0_0000),
            f32::from_bits(0x7fff_ffff),
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            2f32.powi(-24),
            2f32.powi(-25),
            3.0 * 2f32.powi(-25),
            2f32.powi(-14),
            2f32.powi(-14) - 2f32.powi(-25),
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            -(1.0 + 2f32.powi(-11)),
        ];
        let mut state = 0x2545_f491_u32;
        for _ in 0..100_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            v.push(f32::from_bits(state));
        }
        v
    }

    /// `convert` gives `want`'s bits (`half`'s) on every value of `src`, from every start and
    /// at lengths around the eight-element blocks, so that each element is converted in a
    /// block and in a tail somewhere.
    fn f32s_to_halves(
        src: &[f32],
        convert: impl Fn(&[f32], &mut [u16]),
        want: impl Fn(f32) -> u16,
    ) {
        for start in 0..8 {
            for len in [0, 1, 7, 8, 9, 23, src.len() - start] {
                let src = &src[start..start + len];
                let mut dst = vec![0x7e55; len];
                convert(src, &mut dst);
                for (x, y) in src.iter().zip(&dst) {
                    assert_eq!(*y, want(*x), "{x:e} ({:08x})", x.to_bits());
                }
            }
        }
    }

    /// `convert` gives `want`'s bits (`half`'s) on every 16-bit pattern, from every start.
    fn every_half_to_f32(convert: impl Fn(&[u16], &mut [f32]), want: impl Fn(u16) -> f32) {
        let src: Vec<u16> = (0..=u16::MAX).collect();
        for start in 0..8 {
            let src = &src[start..];
            let mut dst = vec![f32::NAN; src.len()];
            convert(src, &mut dst);
            for (x, y) in src.iter().zip(&dst) {
                assert_eq!(y.to_bits(), want(*x).to_bits(), "{x:04x}");
            }
        }
    }

    #[test]
    fn f32_to_f16_has_the_bits_of_half_element_by_element() {
        f32s_to_halves(
            &awkward_f32s(),
            |s, d| f32_to_f16(s, bytemuck::cast_slice_mut(d)),
            |x| f16::from_f32(x).to_bits(),
        );
    }

    #[test]
    fn f32_to_bf16_has_the_bits_of_half_element_by_element() {
        let mut src = awkward_f32s();
        // bf16's own edges: ties to even either way, the largest finite value and the
        // rounding that carries into infinity, NaNs whose payload is only in the low half.
        src.extend(
            [
                0x3f80_8000u32,
                0x3f81_8000,
                0x3f80_8001,
                0xbf81_8000,
                0x7f7f_7fff,
                0x7f7f_8000,
                0x7f7f_ffff,
                0xff7f_ffff,
                0x7f80_0001,
                0xff80_8000,
                0x0000_8000,
                0x0001_8000,
            ]
            .map(f32::from_bits),
        );
        f32s_to_halves(
            &src,
            |s, d| f32_to_bf16(s, bytemuck::cast_slice_mut(d)),
            |x| bf16::from_f32(x).to_bits(),
        );
    }

    #[test]
    fn f16_to_f32_has_the_bits_of_half_for_every_f16() {
        every_half_to_f32(
            |s, d| f16_to_f32(bytemuck::cast_slice(s), d),
            |h| f16::from_bits(h).to_f32(),
        );
    }

    #[test]
    fn bf16_to_f32_has_the_bits_of_half_for_every_bf16() {
        every_half_to_f32(
            |s, d| bf16_to_f32(bytemuck::cast_slice(s), d),
            |h| bf16::from_bits(h).to_f32(),
        );
    }
}
