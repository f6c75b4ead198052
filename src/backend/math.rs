//! Scalar functions both backends compute the same way (shaders/elementwise.wgsl mirrors
//! these constants; WGSL has no erf).

/// e^x for the CPU kernels, x clamped to [−87.3, 88] (where f32 stays normal): Cody–Waite
/// range reduction and a degree-6 polynomial (Cephes' expf), accurate to about 1 ulp, in plain
/// arithmetic with no calls and no float-to-int conversions, so that loops over it vectorise
/// (the C library's exp is a call per element).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer and leaves it in the low bits of the sum.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let k = shifted - ROUNDER;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k from k's bits: (k + 127) << 23, k within [−126, 127].
    let pow2 = f32::from_bits(
        shifted
            .to_bits()
            .wrapping_sub(ROUNDER.to_bits())
            .wrapping_add(127)
            << 23,
    );
    y * pow2
}

/// erfc by the Chebyshev fit of Numerical Recipes (`erfcc`): relative error under 1.2e-7
/// everywhere, so that the normal CDF of a very negative x keeps its significant digits (an
/// absolute-error erf would not, and GELU's tail would lose them).
#[inline(always)]
pub fn erfc(z: f32) -> f32 {
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
    let t = 1.0 / (1.0 + 0.5 * z.abs());
    let poly = C.iter().rev().fold(0.0f32, |acc, &c| c + t * acc);
    let r = t * exp(-z * z + poly);
    if z >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// The standard normal CDF, Φ(x) = erfc(−x/√2)/2.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * erfc(-x * FRAC_1_SQRT_2)
}

/// Exact GELU, `x·Φ(x)` = `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    normal_cdf(x) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x)
}
