// Exact GELU and its derivative, computed as src/backend/math.rs computes them: polynomials
// in x² for |x| ≤ GELU_INNER, φ times Mills' ratio beyond. The constants (CDF_ODD,
// GELU_GRAD_ODD, GELU_INNER, MILLS_P, MILLS_Q, MILLS_LO, MILLS_HI, FRAC_1_SQRT_2PI, LN2_HI,
// LN2_LO) are put in front from there.

// The inner forms, 1/2 + x·P(x²): Φ with P = CDF_ODD (degree 5), gelu' with P = GELU_GRAD_ODD
// (degree 6).
fn cdf_inner(x: f32) -> f32 {
    let s = x * x;
    let c = CDF_ODD;
    let p = c[0] + s * (c[1] + s * (c[2] + s * (c[3] + s * (c[4] + s * c[5]))));
    return fma(x, p, 0.5);
}

fn gelu_grad_inner(x: f32) -> f32 {
    let s = x * x;
    let c = GELU_GRAD_ODD;
    let p = c[0] + s * (c[1] + s * (c[2] + s * (c[3] + s * (c[4] + s * (c[5] + s * c[6])))));
    return fma(x, p, 0.5);
}

// Mills' ratio R(|x|), for |x| beyond GELU_INNER: 1 − Φ(|x|) = φ(x)·R(|x|).
fn mills_ratio(x: f32) -> f32 {
    let t = clamp(abs(x), MILLS_LO, MILLS_HI);
    let p = MILLS_P[0] + t * (MILLS_P[1] + t * (MILLS_P[2] + t * MILLS_P[3]));
    let q = MILLS_Q[0] + t * (MILLS_Q[1] + t * (MILLS_Q[2] + t * (MILLS_Q[3] + t * MILLS_Q[4])));
    return p / q;
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

// GELU, x·Φ(x). (A NaN takes the inner form and stays NaN.) Where x < 0 beyond GELU_INNER, x·φ
// is formed first: below −12.95, Φ = φ·R is a subnormal f32, which this driver may flush to
// zero (NVIDIA's does), while x·Φ is normal down to −13.1.
fn gelu(x: f32) -> f32 {
    if !(abs(x) > GELU_INNER) {
        return x * cdf_inner(x);
    }
    let xc = clamp(x, -MILLS_HI, MILLS_HI);
    let pdf = normal_pdf(xc);
    let ratio = mills_ratio(xc);
    return select(x * pdf * ratio, x * (1.0 - pdf * ratio), x >= 0.0);
}

// gelu'(x) = Φ(x) + x·φ(x).
fn gelu_grad(x: f32) -> f32 {
    if !(abs(x) > GELU_INNER) {
        return gelu_grad_inner(x);
    }
    let xc = clamp(x, -MILLS_HI, MILLS_HI);
    let pdf = normal_pdf(xc);
    let upper = pdf * mills_ratio(xc);
    return fma(xc, pdf, select(upper, 1.0 - upper, xc >= 0.0));
}
