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
    /// `if_nonneg` where `self >= 0`, else `otherwise`.
    fn select_nonneg(self, if_nonneg: Self, otherwise: Self) -> Self;
    /// Whether an element is below `lo` (a NaN element may count either way).
    fn any_below(self, lo: f32) -> bool;
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
    fn any_below(self, lo: f32) -> bool {
        self < lo
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

/// Where GELU switches from the centre form to the tail form: below it, Φ(x) is small enough
/// that `1/2 + (Φ(x) − 1/2)` would lose its relative accuracy (the sum is exact, but the odd
/// part's rounding, relative to the odd part, grows by (1/2 − Φ)/Φ: 6.5× here, 21× at −2).
pub const CDF_CENTRE_LO: f32 = -1.5;
/// Φ(x) − 1/2 = x·P(x²)/Q(x²) for |x| ≤ [`CDF_CENTRE_HI`]; beyond, Φ rounds to 0 or 1.
/// A weighted least-squares fit (P = this, Q = [`CDF_Q`]) to 9.3e-9 of Φ; in f32, Φ to 1.3e-6
/// relative on [−1.5, ∞).
pub const CDF_P: [f32; 6] = [
    0.398_942_23,
    0.034_376_03,
    0.004_707_253_5,
    0.000_173_850_07,
    6.356_527_6e-6,
    2.214_530_6e-8,
];
pub const CDF_Q: [f32; 6] = [
    1.0,
    0.252_833_63,
    0.028_940_04,
    0.001_912_973_7,
    7.510_174e-5,
    1.180_211_9e-6,
];
pub const CDF_CENTRE_HI: f32 = 5.6;
/// Mills' ratio R(t) = (1 − Φ(t))/φ(t) = P(t)/Q(t) on t ∈ [[`MILLS_LO`], [`MILLS_HI`]], so
/// that Φ(x) = φ(x)·R(−x) in the tail keeps its relative accuracy wherever φ is a normal f32.
/// A relative least-squares fit (P = this, Q = [`MILLS_Q`]) to 1.2e-8; 4.6e-7 in f32.
pub const MILLS_P: [f32; 4] = [1.252_000_1, 1.032_607_4, 0.379_428_12, 0.068_638_734];
pub const MILLS_Q: [f32; 5] = [1.0, 1.617_260_2, 1.102_436_5, 0.379_372_12, 0.068_639_85];
pub const MILLS_LO: f32 = 1.4;
pub const MILLS_HI: f32 = 14.0;

/// Σ c[i]·s^i for six coefficients, in Estrin's order.
#[inline(always)]
fn poly6<T: Real>(s: T, s2: T, c: &[f32; 6]) -> T {
    let p01 = s.mul_add(s.constant(c[1]), s.constant(c[0]));
    let p23 = s.mul_add(s.constant(c[3]), s.constant(c[2]));
    let p45 = s.mul_add(s.constant(c[5]), s.constant(c[4]));
    (s2 * s2).mul_add(p45, s2.mul_add(p23, p01))
}

/// Φ(x) for x ≥ [`CDF_CENTRE_LO`]: a rational function, no exponential.
#[inline(always)]
fn cdf_centre<T: Real>(x: T) -> T {
    let x = x.clamp_to(-CDF_CENTRE_HI, CDF_CENTRE_HI);
    let s = x * x;
    let s2 = s * s;
    x.mul_add(poly6(s, s2, &CDF_P) / poly6(s, s2, &CDF_Q), x.constant(0.5))
}

/// Φ(x) for x < [`CDF_CENTRE_LO`], from the density φ(x) and Mills' ratio.
#[inline(always)]
fn cdf_tail<T: Real>(x: T, pdf: T) -> T {
    // Elements of a vector that take the centre form pass through here too: the clamp keeps
    // them clear of Q's poles and of overflow. (Past 14, φ is no longer a normal f32.)
    let t = (-x).clamp_to(MILLS_LO, MILLS_HI);
    let t2 = t * t;
    let p = t2.mul_add(
        t.mul_add(x.constant(MILLS_P[3]), x.constant(MILLS_P[2])),
        t.mul_add(x.constant(MILLS_P[1]), x.constant(MILLS_P[0])),
    );
    let q01 = t.mul_add(x.constant(MILLS_Q[1]), x.constant(MILLS_Q[0]));
    let q23 = t.mul_add(x.constant(MILLS_Q[3]), x.constant(MILLS_Q[2]));
    let q = (t2 * t2).mul_add(x.constant(MILLS_Q[4]), t2.mul_add(q23, q01));
    pdf * p / q
}

/// Φ(x), given φ(x) for the tail. The tail form is computed only for a value (a vector)
/// with an element below [`CDF_CENTRE_LO`], and chosen per element, so that each element's
/// result depends on that element alone; activations seldom reach the tail.
#[inline(always)]
fn normal_cdf<T: Real>(x: T, pdf: impl Fn() -> T) -> T {
    let centre = cdf_centre(x);
    if !x.any_below(CDF_CENTRE_LO) {
        return centre;
    }
    (x - x.constant(CDF_CENTRE_LO)).select_nonneg(centre, cdf_tail(x, pdf()))
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
    x * normal_cdf(
        x,
        #[inline(always)]
        || normal_pdf(x),
    )
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad<T: Real>(x: T) -> T {
    let pdf = normal_pdf(x);
    x.mul_add(
        pdf,
        normal_cdf(
            x,
            #[inline(always)]
            || pdf,
        ),
    )
}
