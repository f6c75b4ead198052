//! The self-test: run an op on a backend and on the f64 reference with the same fresh random
//! inputs, outputs poisoned beforehand, and measure the difference. `signflow selftest` and
//! the parity test suites both run these checks, so a check is written once.
//!
//! The checks live by op family, each file beside its cases; a [`Family`] runs its checks over
//! its cases, the self-test's alone or, in the test suites, those and more ([`Scope`]). A new
//! op needs its check and an entry in its family's case table, nothing else here or in the
//! tests.

mod attention;
mod dropout;
mod elementwise;
mod gelu;
mod half;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;

pub use gelu::{gelu_sweep, GeluValueErrors, ValueError};
pub use half::{upload_as, HALVES};
pub use matmul::check_matmul;

use rand::{Rng, SeedableRng};

use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{HostTensor, Tensor};
use crate::tolerance::{tolerance, Deviation, OpClass};

/// One line of the self-test table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParityRow {
    pub op: Op,
    pub dtype: DType,
    pub shape: String,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub tol: f64,
    pub pass: bool,
    /// Why the backend did not run this check (it refused the dtype): neither a pass nor a
    /// failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl ParityRow {
    fn new(op: Op, dtype: DType, shape: String, class: OpClass, got: &[f32], want: &[f64]) -> Self {
        Self::of_parts(op, dtype, shape, class, &[(got, want)])
    }

    /// One row for an op with several outputs, each measured against its own scale (a
    /// gradient summed over many rows must not hide the error of a small one).
    fn of_parts(
        op: Op,
        dtype: DType,
        shape: String,
        class: OpClass,
        parts: &[(&[f32], &[f64])],
    ) -> Self {
        let scaled: Vec<(&[f32], &[f64], f64)> = parts.iter().map(|&(g, w)| (g, w, 0.0)).collect();
        Self::of_scaled_parts(op, dtype, shape, class, &scaled)
    }

    /// As [`ParityRow::of_parts`], each part relative to at least its own minimum scale
    /// (statistics such as a log-sum-exp are judged by their absolute error).
    fn of_scaled_parts(
        op: Op,
        dtype: DType,
        shape: String,
        class: OpClass,
        parts: &[(&[f32], &[f64], f64)],
    ) -> Self {
        let d = parts
            .iter()
            .map(|&(got, want, min_scale)| Deviation::measure_at_scale(got, want, min_scale))
            .fold(
                Deviation {
                    max_abs_err: 0.0,
                    max_rel_err: 0.0,
                },
                |a, b| Deviation {
                    max_abs_err: a.max_abs_err.max(b.max_abs_err),
                    max_rel_err: a.max_rel_err.max(b.max_rel_err),
                },
            );
        let tol = tolerance(class, dtype);
        ParityRow {
            op,
            dtype,
            shape,
            max_abs_err: d.max_abs_err,
            max_rel_err: d.max_rel_err,
            tol,
            pass: d.within(tol),
            skipped: None,
        }
    }

    /// A check in `dtype` that the backend refused, with its reason.
    fn skipped(op: Op, dtype: DType, tol: f64, reason: String) -> Self {
        ParityRow {
            op,
            dtype,
            shape: "-".into(),
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            tol,
            pass: false,
            skipped: Some(reason),
        }
    }

    /// A check that ran and missed its tolerance.
    pub fn failed(&self) -> bool {
        !self.pass && self.skipped.is_none()
    }
}

/// Random inputs for parity checks: uniform in [-1, 1), from a seeded generator so that a
/// failure can be replayed.
pub struct Inputs(rand::rngs::StdRng);

impl Inputs {
    pub fn new(seed: u64) -> Inputs {
        Inputs(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// A seed from the clock, for fresh inputs on every run.
    pub fn fresh_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }

    pub fn uniform(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.0.random_range(-1.0f32..1.0)).collect()
    }

    /// Values across many magnitudes, subnormal f16 ones included, for casts.
    pub fn wide(&mut self, n: usize) -> Vec<f32> {
        const SCALES: [f32; 6] = [1.0, 1e3, 3e4, 1e-3, 1e-5, 3e-7];
        (0..n)
            .map(|i| self.0.random_range(-1.0f32..1.0) * SCALES[i % SCALES.len()])
            .collect()
    }
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// A tensor of `shape` filled with NaN, so that an element the op fails to write shows.
pub fn poisoned<B: Backend>(b: &B, shape: &[usize], dtype: DType) -> Result<Tensor<B>> {
    b.upload(&HostTensor::filled(shape, dtype, f32::NAN))
}

fn upload<B: Backend>(b: &B, shape: &[usize], data: &[f32]) -> Result<Tensor<B>> {
    b.upload(&HostTensor::from_f32(shape, data.to_vec())?)
}

/// A padding mask for `batch` clips of `t` frames: clip b has `t − (b·7 mod t)` real frames
/// (ragged), then padding; with `empty`, the last clip has none.
pub fn ragged_mask(batch: usize, t: usize, empty: bool) -> Vec<f32> {
    (0..batch * t)
        .map(|i| {
            let (b, s) = (i / t, i % t);
            let real = if empty && b == batch - 1 {
                0
            } else {
                t - (b * 7) % t
            };
            (s < real) as u8 as f32
        })
        .collect()
}

/// A check of one op on one case: the row it measured.
type Check<B, Case> = fn(&B, Case, &mut Inputs) -> Result<ParityRow>;

/// Where each row a family measures goes.
type Push<'a> = &'a mut dyn FnMut(ParityRow);

/// Which cases a family runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The self-test's: every op at sizes that cut the tiles, quick enough for any machine.
    Selftest,
    /// The test suites': the self-test's cases and more (sizes, settings and edge cases).
    Tests,
}

impl Scope {
    /// The self-test's cases, and in the test suites `more` after them.
    fn cases<'a, T: Copy>(self, selftest: &'a [T], more: &'a [T]) -> impl Iterator<Item = T> + 'a {
        let more: &[T] = match self {
            Scope::Selftest => &[],
            Scope::Tests => more,
        };
        selftest.iter().chain(more).copied()
    }
}

/// The op families, in the order the self-test runs them. Each test suite has a test per
/// family (tests/common/mod.rs checks that none is missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Matmul,
    MatmulBiasGelu,
    Elementwise,
    Gelu,
    BiasGradAndLayernorm,
    MeanPool,
    CrossEntropy,
    Dropout,
    Attention,
    Optimizer,
}

impl Family {
    pub const ALL: [Family; 10] = [
        Family::Matmul,
        Family::MatmulBiasGelu,
        Family::Elementwise,
        Family::Gelu,
        Family::BiasGradAndLayernorm,
        Family::MeanPool,
        Family::CrossEntropy,
        Family::Dropout,
        Family::Attention,
        Family::Optimizer,
    ];

    /// Runs the family's checks over its cases in `scope`, in a fixed order (so that a seed
    /// replays a run), handing each row to `push`.
    pub fn run<B: Backend>(
        self,
        b: &B,
        scope: Scope,
        inputs: &mut Inputs,
        push: Push,
    ) -> Result<()> {
        match self {
            Family::Matmul => matmul::run(b, scope, inputs, push),
            Family::MatmulBiasGelu => matmul::run_bias_gelu(b, scope, inputs, push),
            Family::Elementwise => elementwise::run(b, scope, inputs, push),
            Family::Gelu => gelu::run(b, scope, inputs, push),
            Family::BiasGradAndLayernorm => norm::run(b, scope, inputs, push),
            Family::MeanPool => pool::run(b, scope, inputs, push),
            Family::CrossEntropy => loss::run(b, scope, inputs, push),
            Family::Dropout => dropout::run(b, scope, inputs, push),
            Family::Attention => attention::run(b, scope, inputs, push),
            Family::Optimizer => optim::run(b, scope, inputs, push),
        }
    }
}

/// Every check, as `signflow selftest` runs them: each family in f32, then in each of
/// [`HALVES`] where the backend runs it in that format. Whether it does is the backend's
/// answer: an op it refuses with [`Error::UnsupportedDtype`] (the GPU until its half-precision
/// kernels exist) turns the family's rows in that format into one skipped row with the reason.
pub fn run_all<B: Backend>(
    b: &B,
    seed: u64,
    mut progress: impl FnMut(&ParityRow),
) -> Result<Vec<ParityRow>> {
    let mut inputs = Inputs::new(seed);
    let mut rows = Vec::new();
    let mut push = |row: ParityRow| {
        progress(&row);
        rows.push(row);
    };
    for family in Family::ALL {
        family.run(b, Scope::Selftest, &mut inputs, &mut push)?;
        for dtype in HALVES {
            match half::run(family, b, dtype, &mut inputs, &mut push) {
                Ok(()) => {}
                Err(Error::UnsupportedDtype { op, hint, .. }) => {
                    let first = half::first_op(family).expect("a family with half rows");
                    let tol = tolerance(OpClass::Reduction, dtype);
                    push(ParityRow::skipped(
                        first,
                        dtype,
                        tol,
                        format!("{op}: {hint}"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(rows)
}
