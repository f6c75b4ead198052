//! Scalar functions both backends compute the same way (shaders/elementwise.wgsl mirrors
//! these constants; WGSL has no erf).
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
    fn pow2_of_rounded(self) -> f32 {
        f32::from_bits(
            self.to_bits()
                .wrapping_sub(ROUNDER.to_bits())
                .wrapping_add(127)
                << 23,
        )
    }
}

/// e^x, x clamped to [−87.3, 88] (where f32 stays normal): Cody–Waite range reduction and
/// Cephes' degree-5 polynomial for (e^r − 1 − r)/r², accurate to about 1 ulp, in plain
/// arithmetic with no calls and no float-to-int conversions, so that it vectorises.
#[inline(always)]
pub fn exp<T: Real>(x: T) -> T {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
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

/// erfc by the Chebyshev fit of Numerical Recipes (`erfcc`): relative error under 1.2e-7
/// everywhere, so that the normal CDF of a very negative x keeps its significant digits (an
/// absolute-error erf would not, and GELU's tail would lose them).
#[inline(always)]
pub fn erfc<T: Real>(z: T) -> T {
    const C: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_23,
        0.170_872_77,
    ];
    let one = z.constant(1.0);
    let t = one / z.abs().mul_add(z.constant(0.5), one);
    // Σ C[i]·t^i, as pairs C[2j] + C[2j+1]·t combined by powers of t².
    let t2 = t * t;
    let t4 = t2 * t2;
    let t8 = t4 * t4;
    let p01 = t.mul_add(z.constant(C[1]), z.constant(C[0]));
    let p23 = t.mul_add(z.constant(C[3]), z.constant(C[2]));
    let p45 = t.mul_add(z.constant(C[5]), z.constant(C[4]));
    let p67 = t.mul_add(z.constant(C[7]), z.constant(C[6]));
    let p89 = t.mul_add(z.constant(C[9]), z.constant(C[8]));
    let low = t2.mul_add(p23, p01);
    let high = t2.mul_add(p67, p45);
    let poly = t8.mul_add(p89, t4.mul_add(high, low));
    let r = t * exp((-z).mul_add(z, poly));
    z.select_nonneg(r, z.constant(2.0) - r)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal CDF, Φ(x) = erfc(−x/√2)/2.
#[inline(always)]
fn normal_cdf<T: Real>(x: T) -> T {
    x.constant(0.5) * erfc(-x * x.constant(FRAC_1_SQRT_2))
}

/// Exact GELU, `x·Φ(x)` = `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu<T: Real>(x: T) -> T {
    x * normal_cdf(x)
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad<T: Real>(x: T) -> T {
    normal_cdf(x) + x * x.constant(FRAC_1_SQRT_2PI) * exp(x.constant(-0.5) * x * x)
}
