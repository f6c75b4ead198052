// Exact GELU and its derivative, computed as src/backend/math.rs computes them: a rational
// function of x² for Φ in the centre, φ times Mills' ratio in the lower tail. The constants
// (CDF_P, CDF_Q, CDF_CENTRE_LO, CDF_CENTRE_HI, MILLS_P, MILLS_Q, MILLS_LO, MILLS_HI,
// FRAC_1_SQRT_2PI, LN2_HI, LN2_LO) are put in front from there.

// Φ(x) for x ≥ CDF_CENTRE_LO.
fn cdf_centre(x_in: f32) -> f32 {
    let x = clamp(x_in, -CDF_CENTRE_HI, CDF_CENTRE_HI);
    let s = x * x;
    let p = CDF_P[0] + s * (CDF_P[1] + s * (CDF_P[2] + s * (CDF_P[3] + s * (CDF_P[4] + s * CDF_P[5]))));
    let q = CDF_Q[0] + s * (CDF_Q[1] + s * (CDF_Q[2] + s * (CDF_Q[3] + s * (CDF_Q[4] + s * CDF_Q[5]))));
    return fma(x, p / q, 0.5);
}

// Φ(x) for x < CDF_CENTRE_LO, given φ(x).
fn cdf_tail(x: f32, pdf: f32) -> f32 {
    let t = clamp(-x, MILLS_LO, MILLS_HI);
    let p = MILLS_P[0] + t * (MILLS_P[1] + t * (MILLS_P[2] + t * MILLS_P[3]));
    let q = MILLS_Q[0] + t * (MILLS_Q[1] + t * (MILLS_Q[2] + t * (MILLS_Q[3] + t * MILLS_Q[4])));
    return pdf * p / q;
}

// φ(x) = e^(−x²/2)/√(2π). The rounding of x² is magnified by x²/2 in the exponential, and so
// is WGSL's exp's own argument error (Vulkan allows 3 + 2·|a| ulp); math.rs recovers the first
// with a fused multiply-add, which WGSL's fma need not be (lavapipe's is not). So x is split
// exactly, x = hi + lo with hi of 12 bits, hi² exact; the multiple k of ln 2 is taken out of
// −hi²/2 exactly (Cody and Waite), and the small rest −(hi·lo + lo²/2) added after.
fn normal_pdf(x: f32) -> f32 {
    let hi = bitcast<f32>(bitcast<u32>(x) & 0xfffff000u);
    let lo = x - hi;
    let a = -0.5 * hi * hi;
    let k = round(a * 1.442695);
    let r = (a - k * LN2_HI) - k * LN2_LO - (hi * lo + 0.5 * lo * lo);
    return ldexp(exp(r), i32(k)) * FRAC_1_SQRT_2PI;
}

// GELU, x·Φ(x).
fn gelu(x: f32) -> f32 {
    if x >= CDF_CENTRE_LO {
        return x * cdf_centre(x);
    }
    return x * cdf_tail(x, normal_pdf(x));
}

// gelu'(x) = Φ(x) + x·φ(x).
fn gelu_grad(x: f32) -> f32 {
    let pdf = normal_pdf(x);
    var cdf: f32;
    if x >= CDF_CENTRE_LO {
        cdf = cdf_centre(x);
    } else {
        cdf = cdf_tail(x, pdf);
    }
    return fma(x, pdf, cdf);
}
