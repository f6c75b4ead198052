//! Scalar functions both backends compute the same way (shaders/gelu.wgsl is given GELU's
//! constants from here; WGSL has no erf).
//!
//! Each is written once over [`Real`]: one `f32` (the attention and loss kernels' per-value
//! use), or a SIMD vector (the CPU backend's GELU, through `cpu::simd`). The polynomials are
//! evaluated by Estrin's scheme rather than Horner's: the same terms, but in short
//! independent chains, which a CPU overlaps where Horner's scheme waits on each step.

use std::ops::{Add, Div, Mul, Neg, Sub};

/// A number the functions here compute on: one `f32`, or a vector of them.
pub trait Real:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    /// `v` in the same form as `self` (a vector carries its instruction set).
    fn constant(self, v: f32) -> Self;
    /// `self * a + b`; fused where the instruction set has it.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn abs(self) -> Self;
    /// `self` limited to `[lo, hi]`.
    fn clamp_to(self, lo: f32, hi: f32) -> Self;
    /// `if_nonneg` where `self >= 0`, else `otherwise` (also where `self` is NaN).
    fn select_nonneg(self, if_nonneg: Self, otherwise: Self) -> Self;
    /// `if_positive` where `self > 0`, else `otherwise` (also where `self` is NaN).
    fn select_positive(self, if_positive: Self, otherwise: Self) -> Self;
    /// Whether an element's magnitude exceeds `bound` (a NaN element may count either way).
    fn any_beyond(self, bound: f32) -> bool;
    /// 2^k for `self` = k + [`ROUNDER`] with k an integer in [−126, 127]: (k + 127) << 23 as
    /// float bits.
    fn pow2_of_rounded(self) -> Self;
}

/// Adding 1.5·2^23 to a float of magnitude below 2^22 rounds it to an integer and leaves that
/// integer in the low bits of the sum's bits.
pub const ROUNDER: f32 = 12_582_912.0;

impl Real for f32 {
    #[inline(always)]
    fn constant(self, v: f32) -> f32 {
        v
    }
    /// Unfused: a scalar `f32::mul_add` is a library call on CPUs without FMA.
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        self * a + b
    }
    #[inline(always)]
    fn abs(self) -> f32 {
        f32::abs(self)
    }
    #[inline(always)]
    fn clamp_to(self, lo: f32, hi: f32) -> f32 {
        self.clamp(lo, hi)
    }
    #[inline(always)]
    fn select_nonneg(self, if_nonneg: f32, otherwise: f32) -> f32 {
        if self >= 0.0 {
            if_nonneg
        } else {
            otherwise
        }
    }
    #[inline(always)]
    fn select_positive(self, if_positive: f32, otherwise: f32) -> f32 {
        if self > 0.0 {
            if_positive
        } else {
            otherwise
        }
    }
    #[inline(always)]
    fn any_beyond(self, bound: f32) -> bool {
        self.abs() > bound
    }
    #[inline(always)]
    fn pow2_of_rounded(self) -> f32 {
        f32::from_bits(
            self.to_bits()
                .wrapping_sub(ROUNDER.to_bits())
                .wrapping_add(127)
                << 23,
        )
    }
}

/// ln 2 = LN2_HI + LN2_LO, the first with so few bits that k·LN2_HI is exact for any
/// exponent k of an f32 (Cody and Waite's range reduction).
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x, x clamped to [−87.3, 88] (where f32 stays normal): Cody–Waite range reduction and
/// Cephes' degree-5 polynomial for (e^r − 1 − r)/r², accurate to about 1 ulp, in plain
/// arithmetic with no calls and no float-to-int conversions, so that it vectorises.
#[inline(always)]
pub fn exp<T: Real>(x: T) -> T {
    // (Constants through `x.constant`, not a closure: closures are not reliably inlined into
    // the SIMD copies, and a call per operation would undo them.)
    let x = x.clamp_to(-87.3, 88.0);
    let shifted = x.mul_add(x.constant(std::f32::consts::LOG2_E), x.constant(ROUNDER));
    let k = shifted - x.constant(ROUNDER);
    let r = k.mul_add(x.constant(-LN2_HI), x);
    let r = k.mul_add(x.constant(-LN2_LO), r);
    let r2 = r * r;
    let r4 = r2 * r2;
    let p01 = r.mul_add(x.constant(0.166_666_66), x.constant(0.5));
    let p23 = r.mul_add(x.constant(8.333_452e-3), x.constant(4.166_579_6e-2));
    let p45 = r.mul_add(x.constant(1.987_569_1e-4), x.constant(1.398_199_9e-3));
    let p = r4.mul_add(p45, r2.mul_add(p23, p01));
    let y = p.mul_add(r2, r) + x.constant(1.0);
    y * shifted.pow2_of_rounded()
}

/// Where GELU switches from its inner forms (polynomials in x²: no exponential, no division)
/// to its outer ones (φ times Mills' ratio). Below −1.5, Φ(x) = 1/2 + x·E(x²) would lose its
/// relative accuracy: the sum is exact, but the rounding of x·E, relative to Φ, grows by
/// (1/2 − Φ)/Φ (6.5× here, 21× at −2).
pub const GELU_INNER: f32 = 1.5;
/// Φ(x) = 1/2 + x·E(x²) for |x| ≤ [`GELU_INNER`], E(s) = Σ CDF_ODD[i]·s^i: a weighted
/// minimax fit (Lawson's iteration) to 1.2e-7 of Φ, relative; 6.3e-7 in f32 (mostly the
/// rounding of x·E near −1.5).
pub const CDF_ODD: [f32; 6] = [
    0.398_941_9,
    -0.066_486_75,
    0.009_962_495,
    -0.001_172_027_2,
    0.000_104_624_02,
    -5.513_359e-6,
];
/// gelu'(x) = Φ(x) + x·φ(x) = 1/2 + x·G(x²) for |x| ≤ [`GELU_INNER`], with
/// G(s) = E(s) + e^(−s/2)/√(2π) = Σ GELU_GRAD_ODD[i]·s^i: fitted as [`CDF_ODD`], to 7.1e-8
/// relative to max(|gelu'|, 0.1) (gelu' crosses 0 near x = −0.75); 8.4e-7 in f32.
pub const GELU_GRAD_ODD: [f32; 7] = [
    0.797_884_35,
    -0.265_959_08,
    0.059_831_13,
    -0.009_478_315,
    0.001_132_653_1,
    -0.000_100_411_02,
    5.138_845_6e-6,
];
/// Mills' ratio R(t) = (1 − Φ(t))/φ(t) = P(t)/Q(t) on t ∈ [[`MILLS_LO`], [`MILLS_HI`]], so
/// that beyond [`GELU_INNER`], 1 − Φ(|x|) = φ(x)·R(|x|) keeps its relative accuracy wherever
/// φ is a normal f32. A relative least-squares fit (P = this, Q = [`MILLS_Q`]) to 1.2e-8;
/// 4.6e-7 in f32.
pub const MILLS_P: [f32; 4] = [1.252_000_1, 1.032_607_4, 0.379_428_12, 0.068_638_734];
pub const MILLS_Q: [f32; 5] = [1.0, 1.617_260_2, 1.102_436_5, 0.379_372_12, 0.068_639_85];
pub const MILLS_LO: f32 = 1.4;
/// Past 14, φ is no longer a normal f32: x is clamped here in the outer forms, where Φ has
/// long rounded to 0 or 1 (and x·φ(x) cannot grow with x).
pub const MILLS_HI: f32 = 14.0;

/// 1/2 + x·P(x²), P = Σ c[i]·s^i by Horner's scheme: the inner forms of Φ and gelu'. (Not
/// Estrin's, as elsewhere here: its powers of s cost multiplies, and the multiply units are
/// what these forms wait on; many elements in flight hide Horner's longer chain.)
#[inline(always)]
fn half_plus_odd<T: Real, const N: usize>(x: T, c: &[f32; N]) -> T {
    let s = x * x;
    let mut p = x.constant(c[N - 1]);
    for &c in c[..N - 1].iter().rev() {
        p = p.mul_add(s, x.constant(c));
    }
    x.mul_add(p, x.constant(0.5))
}

/// The outer forms' parts, for |x| > [`GELU_INNER`] and x already clamped to ±[`MILLS_HI`]:
/// (φ(x), R(|x|)), so that 1 − Φ(|x|) = φ(x)·R(|x|).
#[inline(always)]
fn pdf_and_mills_ratio<T: Real>(x: T) -> (T, T) {
    // Elements of a vector that take the inner form pass through here too: the clamp keeps
    // them clear of Q's poles.
    let t = x.abs().clamp_to(MILLS_LO, MILLS_HI);
    let t2 = t * t;
    let p = t2.mul_add(
        t.mul_add(x.constant(MILLS_P[3]), x.constant(MILLS_P[2])),
        t.mul_add(x.constant(MILLS_P[1]), x.constant(MILLS_P[0])),
    );
    let q01 = t.mul_add(x.constant(MILLS_Q[1]), x.constant(MILLS_Q[0]));
    let q23 = t.mul_add(x.constant(MILLS_Q[3]), x.constant(MILLS_Q[2]));
    let q = (t2 * t2).mul_add(x.constant(MILLS_Q[4]), t2.mul_add(q23, q01));
    (normal_pdf(x), p / q)
}

/// `inner` for the elements of magnitude up to [`GELU_INNER`], `outer()` for the others. The
/// outer form is computed only for a value (a vector) with an element beyond, and chosen per
/// element, so that each element's result depends on that element alone (a NaN takes the
/// inner form, which keeps it NaN); activations seldom leave the inner range.
#[inline(always)]
fn inner_or_outer<T: Real>(x: T, inner: T, outer: impl Fn() -> T) -> T {
    if !x.any_beyond(GELU_INNER) {
        return inner;
    }
    (x.abs() - x.constant(GELU_INNER)).select_positive(outer(), inner)
}

/// 1/√(2π).
pub const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// φ(x) = e^(−x²/2)/√(2π). The rounding of x² is magnified by x²/2 in e^(−x²/2) (1e-6 at
/// x = −6); where `mul_add` is fused it recovers that rounding exactly and puts it back to
/// first order (elsewhere the correction is 0).
#[inline(always)]
fn normal_pdf<T: Real>(x: T) -> T {
    let sq = x * x;
    let sq_err = x.mul_add(x, -sq);
    let e = exp(sq * x.constant(-0.5)) * x.constant(FRAC_1_SQRT_2PI);
    e * sq_err.mul_add(x.constant(-0.5), x.constant(1.0))
}

/// Exact GELU, `x·Φ(x)` = `0.5·x·(1 + erf(x/√2))`, to a few parts in 10⁶ of each value.
#[inline(always)]
pub fn gelu<T: Real>(x: T) -> T {
    inner_or_outer(
        x,
        x * half_plus_odd(x, &CDF_ODD),
        #[inline(always)]
        || {
            let xc = x.clamp_to(-MILLS_HI, MILLS_HI);
            let (pdf, ratio) = pdf_and_mills_ratio(xc);
            // x·φ first where x < 0: below −12.95, Φ = φ·R is a subnormal f32, which GPUs may
            // flush to zero (NVIDIA's Vulkan driver does), while x·Φ is normal down to −13.1.
            xc.select_nonneg(x * (x.constant(1.0) - pdf * ratio), x * pdf * ratio)
        },
    )
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad<T: Real>(x: T) -> T {
    inner_or_outer(
        x,
        half_plus_odd(x, &GELU_GRAD_ODD),
        #[inline(always)]
        || {
            let xc = x.clamp_to(-MILLS_HI, MILLS_HI);
            let (pdf, ratio) = pdf_and_mills_ratio(xc);
            let upper = pdf * ratio;
            xc.mul_add(pdf, xc.select_nonneg(x.constant(1.0) - upper, upper))
        },
    )
}
