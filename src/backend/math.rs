//! Scalar functions both backends compute the same way (shaders/elementwise.wgsl mirrors
//! these constants; WGSL has no erf).

/// erfc by the Chebyshev fit of Numerical Recipes (`erfcc`): relative error under 1.2e-7
/// everywhere, so that the normal CDF of a very negative x keeps its significant digits (an
/// absolute-error erf would not, and GELU's tail would lose them).
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
    let r = t * (-z * z + poly).exp();
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
fn normal_cdf(x: f32) -> f32 {
    0.5 * erfc(-x * FRAC_1_SQRT_2)
}

/// Exact GELU, `x·Φ(x)` = `0.5·x·(1 + erf(x/√2))`.
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f32) -> f32 {
    normal_cdf(x) + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}
