//! The one definition of how close a result must be to the f64 reference (DESIGN.md, Testing).
//!
//! Errors are measured relative to the largest magnitude of the reference output, so that a
//! tolerance means the same thing for tensors of any scale.

use crate::dtype::DType;

/// Which family of op a comparison is for; matrix products and attention accumulate long sums
/// and get a looser f32 bound than elementwise ops and norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    Elementwise,
    Reduction,
}

/// The largest allowed error relative to the reference's max magnitude, for any reduction
/// length: [`tolerance_for`] at its ceiling.
pub fn tolerance(class: OpClass, dtype: DType) -> f64 {
    tolerance_for(class, dtype, usize::MAX)
}

/// The unit roundoff u of a storage format: half the distance from 1 to the next value, the
/// largest relative error of one rounding to nearest (2^-24, 2^-11, 2^-8).
pub fn unit_roundoff(dtype: DType) -> f64 {
    let mantissa_bits = match dtype {
        DType::F32 => 24,
        DType::F16 => 11,
        DType::Bf16 => 8,
    };
    2f64.powi(-mantissa_bits)
}

/// The largest allowed error, relative to the reference's max magnitude, of an op whose
/// results are stored in `dtype` and whose longest sum has `reduction_len` terms (1 for
/// elementwise ops; K for a product; the row length for a norm or a softmax).
///
/// f32: fixed bounds, 1e-5 for elementwise ops and norms, 1e-4 for products and attention
/// (DESIGN.md, Testing).
///
/// f16 and bf16 (computed in f32, stored in the half format; the reference gets the same
/// rounded inputs and rounds where the kernels store, `crate::reference`):
/// - the f32 bound, for the arithmetic;
/// - 2u: the kernel and the reference each round the result once, and may land on either
///   side of a rounding boundary, one unit in the last place (2u relative) apart;
/// - u·log2(n): a kernel may keep partial results of a sum of n terms in the half format (a
///   tile's products, a block's probabilities), adding at most one rounding per level of a
///   blocked reduction tree;
///
/// and never more than the ceilings DESIGN.md sets, 5e-3 for f16 (about 10u) and 3e-2 for
/// bf16 (about 8u), which long sums reach.
pub fn tolerance_for(class: OpClass, dtype: DType, reduction_len: usize) -> f64 {
    let f32_bound = match class {
        OpClass::Elementwise => 1e-5,
        OpClass::Reduction => 1e-4,
    };
    let ceiling = match dtype {
        DType::F32 => return f32_bound,
        DType::F16 => 5e-3,
        DType::Bf16 => 3e-2,
    };
    let u = unit_roundoff(dtype);
    let levels = (reduction_len.max(1) as f64).log2();
    (f32_bound + u * (2.0 + levels)).min(ceiling)
}

/// How far `got` is from `want`: the largest absolute difference, and that divided by the
/// largest magnitude in `want` (or by 1 where `want` is all zeros). A NaN or an infinity in
/// `got` where `want` is finite counts as an infinite error, so that it can never pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deviation {
    pub max_abs_err: f64,
    pub max_rel_err: f64,
}

impl Deviation {
    pub fn measure(got: &[f32], want: &[f64]) -> Deviation {
        Self::measure_at_scale(got, want, 0.0)
    }

    /// As [`Deviation::measure`], relative to at least `min_scale`: for statistics whose
    /// absolute error is what matters (a log-sum-exp, a mean) and whose values may be near 0.
    pub fn measure_at_scale(got: &[f32], want: &[f64], min_scale: f64) -> Deviation {
        assert_eq!(got.len(), want.len(), "compared tensors differ in length");
        let scale = want.iter().fold(min_scale, |m, w| m.max(w.abs()));
        let mut max_abs_err = 0.0f64;
        for (&g, &w) in got.iter().zip(want) {
            let err = if g.is_finite() || !w.is_finite() {
                (g as f64 - w).abs()
            } else {
                f64::INFINITY
            };
            // `max` would drop a NaN; keep it visible.
            if err.is_nan() || err > max_abs_err {
                max_abs_err = if err.is_nan() { f64::INFINITY } else { err };
            }
        }
        let denom = if scale > 0.0 { scale } else { 1.0 };
        Deviation {
            max_abs_err,
            max_rel_err: max_abs_err / denom,
        }
    }

    pub fn within(&self, tol: f64) -> bool {
        self.max_rel_err <= tol
    }
}

/// How close the model must come to PyTorch's float64 golden values
/// (`shared/fixtures/golden-small`).
pub mod pytorch {
    /// Logits and loss, relative to their largest magnitude.
    pub const LOGITS_REL: f64 = 1e-5;
    /// Each gradient tensor, relative to that tensor's largest magnitude.
    pub const GRAD_REL: f64 = 1e-4;
    /// The losses along a few AdamW steps, relative.
    pub const ADAMW_LOSS_REL: f64 = 1e-4;
    /// The parameters after those steps, absolute.
    pub const PARAM_ABS: f64 = 5e-4;
}

/// How close each GELU value must be to itself in f64, value by value (the parity tolerance is
/// relative to a tensor's largest value; for a one-element tensor that is the value itself,
/// so GELU must keep its relative accuracy in the tail).
pub mod gelu_values {
    /// The largest error relative to the value.
    pub const REL: f64 = 3e-6;
    /// gelu' crosses zero near x = −0.75, where no f32 sum Φ + x·φ keeps relative accuracy:
    /// derivatives are measured relative to at least this.
    pub const GRAD_FLOOR: f64 = 0.1;
}
