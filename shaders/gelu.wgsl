// GELU's building blocks: functions only, concatenated in front of the kernels that use them
// (elementwise.wgsl, and the matrix product's GELU epilogue). WGSL has no erf.

// erfc by the Chebyshev fit of Numerical Recipes (relative error under 1.2e-7 everywhere),
// the same as src/backend/math.rs, so that both backends compute the same GELU.
fn erfc(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * abs(z));
    let poly = -1.2655122 + t * (1.0000237 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.135204 + t * (1.4885159 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + poly);
    return select(2.0 - r, r, z >= 0.0);
}

// The standard normal CDF.
fn normal_cdf(x: f32) -> f32 {
    return 0.5 * erfc(-x * 0.70710678);
}

// The standard normal density.
fn normal_pdf(x: f32) -> f32 {
    return 0.3989423 * exp(-0.5 * x * x);
}

// Exact GELU, x·Φ(x).
fn gelu(x: f32) -> f32 {
    return x * normal_cdf(x);
}
