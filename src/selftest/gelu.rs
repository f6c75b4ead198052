//! GELU forward and backward on random inputs, and value by value over a sweep of x.

use super::elementwise::{MORE_SIZES, SIZES};
use super::{poisoned, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance;
use crate::tolerance::OpClass;

pub fn check_gelu<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let x: Vec<f32> = inputs.uniform(n).iter().map(|v| v * 6.0).collect();
    let out = poisoned(b, &[n], DType::F32)?;
    b.gelu(&upload(b, &[n], &x)?, &out)?;
    let want = reference::gelu(&widen(&x));
    Ok(ParityRow::new(
        Op::GeluFwd,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_gelu_backward<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let x: Vec<f32> = inputs.uniform(n).iter().map(|v| v * 6.0).collect();
    let dy = inputs.uniform(n);
    let dx = poisoned(b, &[n], DType::F32)?;
    b.gelu_backward(&upload(b, &[n], &x)?, &upload(b, &[n], &dy)?, &dx)?;
    let want = reference::gelu_backward(&widen(&x), &widen(&dy));
    Ok(ParityRow::new(
        Op::GeluBwd,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &dx.to_f32_vec()?,
        &want,
    ))
}

/// The range of GELU's value-by-value check (x·Φ(x) is a normal f32 down to −13.1), in steps of
/// [`GELU_SWEEP_STEP`].
const GELU_SWEEP: (f32, f32) = (-13.0, 11.0);
const GELU_SWEEP_STEP: f32 = 1e-4;

/// Inputs for GELU's value-by-value check: through the inner forms, the outer forms on both
/// sides, and vectors that mix them.
pub fn gelu_sweep() -> Vec<f32> {
    let (from, to) = GELU_SWEEP;
    let steps = ((to - from) / GELU_SWEEP_STEP).round() as usize;
    (0..=steps)
        .map(|i| from + i as f32 * GELU_SWEEP_STEP)
        .collect()
}

/// The worst error of one output over [`gelu_sweep`]: relative to the value, with the x where
/// it occurs, and the largest absolute error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValueError {
    pub rel: f64,
    pub at: f32,
    pub abs: f64,
}

impl ValueError {
    fn add(&mut self, x: f32, got: f32, want: f64, scale: f64) {
        // A NaN counts as infinitely wrong.
        let abs = match (got as f64 - want).abs() {
            e if e.is_nan() => f64::INFINITY,
            e => e,
        };
        let rel = if scale == 0.0 { abs } else { abs / scale };
        if rel > self.rel {
            self.rel = rel;
            self.at = x;
        }
        self.abs = self.abs.max(abs);
    }
}

/// GELU values and derivatives over [`gelu_sweep`], each against itself in f64 (see
/// [`tolerance::gelu_values`]).
#[derive(Debug, Clone, Copy)]
pub struct GeluValueErrors {
    pub gelu: ValueError,
    pub grad: ValueError,
}

impl GeluValueErrors {
    /// Measures `y = gelu(x)` and `grad = gelu'(x)` against the f64 reference.
    pub fn measure(x: &[f32], y: &[f32], grad: &[f32]) -> GeluValueErrors {
        use tolerance::gelu_values::GRAD_FLOOR;
        let wide = widen(x);
        let want = reference::gelu(&wide);
        let want_grad = reference::gelu_backward(&wide, &vec![1.0; wide.len()]);
        let (mut gelu, mut grad_err) = (ValueError::default(), ValueError::default());
        for (i, &x) in x.iter().enumerate() {
            gelu.add(x, y[i], want[i], want[i].abs());
            grad_err.add(x, grad[i], want_grad[i], want_grad[i].abs().max(GRAD_FLOOR));
        }
        GeluValueErrors {
            gelu,
            grad: grad_err,
        }
    }

    pub fn within(&self) -> bool {
        self.rows().iter().all(|r| r.pass)
    }

    /// The self-test's rows for these.
    pub fn rows(&self) -> [ParityRow; 2] {
        let tol = tolerance::gelu_values::REL;
        [(Op::GeluFwd, self.gelu), (Op::GeluBwd, self.grad)].map(|(op, e)| ParityRow {
            op,
            dtype: DType::F32,
            shape: format!("each x in [{}, {}]", GELU_SWEEP.0, GELU_SWEEP.1),
            max_abs_err: e.abs,
            max_rel_err: e.rel,
            tol,
            pass: e.rel <= tol,
            skipped: None,
        })
    }
}

/// GELU and its derivative on `b`, value by value over [`gelu_sweep`].
pub fn check_gelu_values<B: Backend>(b: &B) -> Result<GeluValueErrors> {
    let x = gelu_sweep();
    let n = x.len();
    let (y, grad) = (
        poisoned(b, &[n], DType::F32)?,
        poisoned(b, &[n], DType::F32)?,
    );
    let xt = upload(b, &[n], &x)?;
    b.gelu(&xt, &y)?;
    b.gelu_backward(&xt, &upload(b, &[n], &vec![1.0; n])?, &grad)?;
    Ok(GeluValueErrors::measure(
        &x,
        &y.to_f32_vec()?,
        &grad.to_f32_vec()?,
    ))
}

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, usize>; 2] = [check_gelu, check_gelu_backward];
    for n in scope.cases(&SIZES, &MORE_SIZES) {
        for check in checks {
            push(check(b, n, inputs)?);
        }
    }
    for row in check_gelu_values(b)?.rows() {
        push(row);
    }
    Ok(())
}
