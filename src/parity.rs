//! Parity checks: run an op on a backend and on the f64 reference with the same fresh random
//! inputs, outputs poisoned beforehand, and measure the difference. `signflow selftest` and
//! the test suite both run these, so a check is written once.

use rand::{Rng, SeedableRng};

use crate::backend::{AttentionSpec, Backend, DropoutKey, MatmulSpec};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tensor::{HostTensor, Tensor};
use crate::tolerance::{self, tolerance, Deviation, OpClass};

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
        }
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

/// The elements of the C items of a (possibly strided) product, in order.
fn items(c: &[f32], spec: &MatmulSpec) -> Vec<f32> {
    (0..spec.batch)
        .flat_map(|i| &c[i * spec.stride_c..i * spec.stride_c + spec.m * spec.n])
        .copied()
        .collect()
}

fn items_f64(c: &[f64], spec: &MatmulSpec) -> Vec<f64> {
    (0..spec.batch)
        .flat_map(|i| &c[i * spec.stride_c..i * spec.stride_c + spec.m * spec.n])
        .copied()
        .collect()
}

pub fn check_matmul<B: Backend>(
    b: &B,
    spec: &MatmulSpec,
    with_bias: bool,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let a = inputs.uniform(spec.a_len());
    let bm = inputs.uniform(spec.b_len());
    let bias = inputs.uniform(spec.n);
    let ta = b.upload(&HostTensor::from_f32(&[a.len()], a.clone())?)?;
    let tb = b.upload(&HostTensor::from_f32(&[bm.len()], bm.clone())?)?;
    let tbias = b.upload(&HostTensor::from_f32(&[spec.n], bias.clone())?)?;
    let out = poisoned(b, &[spec.c_len()], DType::F32)?;
    b.matmul(&ta, &tb, with_bias.then_some(&tbias), &out, spec)?;
    let got = out.to_f32_vec()?;
    let want = reference::matmul(
        &widen(&a),
        &widen(&bm),
        with_bias.then(|| widen(&bias)).as_deref(),
        spec,
    );
    let shape = format!(
        "{}x{}x{} {}{}{}",
        spec.m,
        spec.n,
        spec.k,
        spec.layout(),
        if spec.batch > 1 {
            format!(" batch {}", spec.batch)
        } else {
            String::new()
        },
        if with_bias { " +bias" } else { "" }
    );
    Ok(ParityRow::new(
        Op::Matmul,
        DType::F32,
        shape,
        OpClass::Reduction,
        &items(&got, spec),
        &items_f64(&want, spec),
    ))
}

/// The product with the bias + GELU epilogue: both the pre-activation and the output.
pub fn check_matmul_bias_gelu<B: Backend>(
    b: &B,
    spec: &MatmulSpec,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let a: Vec<f32> = inputs.uniform(spec.a_len());
    let bm: Vec<f32> = inputs.uniform(spec.b_len());
    let bias = inputs.uniform(spec.n);
    let (pre, out) = (
        poisoned(b, &[spec.c_len()], DType::F32)?,
        poisoned(b, &[spec.c_len()], DType::F32)?,
    );
    b.matmul_bias_gelu(
        &upload(b, &[a.len()], &a)?,
        &upload(b, &[bm.len()], &bm)?,
        &upload(b, &[spec.n], &bias)?,
        spec,
        &pre,
        &out,
    )?;
    let want_pre = reference::matmul(&widen(&a), &widen(&bm), Some(&widen(&bias)), spec);
    let want_out = reference::gelu(&want_pre);
    let got = [
        items(&pre.to_f32_vec()?, spec),
        items(&out.to_f32_vec()?, spec),
    ];
    Ok(ParityRow::of_parts(
        Op::Matmul,
        DType::F32,
        format!(
            "{}x{}x{} {} +bias+gelu",
            spec.m,
            spec.n,
            spec.k,
            spec.layout()
        ),
        OpClass::Reduction,
        &[
            (&got[0], &items_f64(&want_pre, spec)),
            (&got[1], &items_f64(&want_out, spec)),
        ],
    ))
}

pub fn check_add<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let (x, y) = (inputs.uniform(n), inputs.uniform(n));
    let tx = b.upload(&HostTensor::from_f32(&[n], x.clone())?)?;
    let ty = b.upload(&HostTensor::from_f32(&[n], y.clone())?)?;
    let out = poisoned(b, &[n], DType::F32)?;
    b.add(&tx, &ty, &out)?;
    let want = reference::add(&widen(&x), &widen(&y));
    Ok(ParityRow::new(
        Op::Add,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_scale<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let x = inputs.uniform(n);
    let alpha = inputs.uniform(1)[0] * 4.0;
    let tx = b.upload(&HostTensor::from_f32(&[n], x.clone())?)?;
    let out = poisoned(b, &[n], DType::F32)?;
    b.scale(&tx, alpha, &out)?;
    let want = reference::scale(&widen(&x), alpha as f64);
    Ok(ParityRow::new(
        Op::Scale,
        DType::F32,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

/// Casts `n` values of many magnitudes from `from` to `to`. The row's dtype is the narrower
/// of the two, whose tolerance applies.
pub fn check_cast<B: Backend>(
    b: &B,
    n: usize,
    from: DType,
    to: DType,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let source = HostTensor::from_f32_as(&[n], &inputs.wide(n), from)?;
    let x = b.upload(&source)?;
    let out = poisoned(b, &[n], to)?;
    b.cast(&x, &out)?;
    let want = reference::cast(&widen(&source.to_f32_vec()), to);
    let dtype = if to == DType::F32 { from } else { to };
    Ok(ParityRow::new(
        Op::Cast,
        dtype,
        format!("{n} {from}->{to}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_copy<B: Backend>(
    b: &B,
    n: usize,
    dtype: DType,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let source = HostTensor::from_f32_as(&[n], &inputs.uniform(n), dtype)?;
    let x = b.upload(&source)?;
    let out = poisoned(b, &[n], dtype)?;
    b.copy(&x, &out)?;
    let want = widen(&source.to_f32_vec());
    Ok(ParityRow::new(
        Op::Copy,
        dtype,
        format!("{n}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

fn upload<B: Backend>(b: &B, shape: &[usize], data: &[f32]) -> Result<Tensor<B>> {
    b.upload(&HostTensor::from_f32(shape, data.to_vec())?)
}

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
pub const GELU_SWEEP: (f32, f32) = (-13.0, 11.0);
pub const GELU_SWEEP_STEP: f32 = 1e-4;

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

pub fn check_bias_grad<B: Backend>(
    b: &B,
    rows: usize,
    cols: usize,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let dy = inputs.uniform(rows * cols);
    let db = poisoned(b, &[cols], DType::F32)?;
    b.bias_grad(&upload(b, &[rows, cols], &dy)?, &db)?;
    let want = reference::bias_grad(&widen(&dy), cols);
    Ok(ParityRow::new(
        Op::BiasGrad,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &db.to_f32_vec()?,
        &want,
    ))
}

/// Layer norm inputs: rows with a non-zero mean and a spread that differs by row, like
/// activations; weights around 1.
fn layernorm_inputs(
    rows: usize,
    cols: usize,
    inputs: &mut Inputs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let shift = inputs.uniform(rows);
    let x: Vec<f32> = inputs
        .uniform(rows * cols)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / cols) as f32 % 3.0) + shift[i / cols])
        .collect();
    let w = inputs.uniform(cols).iter().map(|v| 1.0 + 0.5 * v).collect();
    (x, w, inputs.uniform(cols))
}

pub const LAYERNORM_EPS: f32 = 1e-5;

pub fn check_layernorm<B: Backend>(
    b: &B,
    rows: usize,
    cols: usize,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (x, w, bias) = layernorm_inputs(rows, cols, inputs);
    let y = poisoned(b, &[rows, cols], DType::F32)?;
    let (mean, rstd) = (
        poisoned(b, &[rows], DType::F32)?,
        poisoned(b, &[rows], DType::F32)?,
    );
    b.layernorm(
        &upload(b, &[rows, cols], &x)?,
        &upload(b, &[cols], &w)?,
        &upload(b, &[cols], &bias)?,
        LAYERNORM_EPS,
        &y,
        &mean,
        &rstd,
    )?;
    let (want_y, want_mean, want_rstd) =
        reference::layernorm(&widen(&x), &widen(&w), &widen(&bias), LAYERNORM_EPS as f64);
    let got = [y.to_f32_vec()?, mean.to_f32_vec()?, rstd.to_f32_vec()?];
    // A row's mean may be near 0: it is judged by its absolute error.
    Ok(ParityRow::of_scaled_parts(
        Op::LayernormFwd,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &[
            (&got[0], &want_y, 0.0),
            (&got[1], &want_mean, 1.0),
            (&got[2], &want_rstd, 0.0),
        ],
    ))
}

pub fn check_layernorm_backward<B: Backend>(
    b: &B,
    rows: usize,
    cols: usize,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (x, w, _) = layernorm_inputs(rows, cols, inputs);
    let dy = inputs.uniform(rows * cols);
    // The saved statistics come from the reference, so that only the backward is judged.
    let (_, mean, rstd) = reference::layernorm(
        &widen(&x),
        &widen(&w),
        &vec![0.0; cols],
        LAYERNORM_EPS as f64,
    );
    let (mean32, rstd32) = (narrow(&mean), narrow(&rstd));
    let dx = poisoned(b, &[rows, cols], DType::F32)?;
    let (dw, db) = (
        poisoned(b, &[cols], DType::F32)?,
        poisoned(b, &[cols], DType::F32)?,
    );
    b.layernorm_backward(
        &upload(b, &[rows, cols], &x)?,
        &upload(b, &[cols], &w)?,
        &upload(b, &[rows], &mean32)?,
        &upload(b, &[rows], &rstd32)?,
        &upload(b, &[rows, cols], &dy)?,
        &dx,
        &dw,
        &db,
    )?;
    let (want_dx, want_dw, want_db) = reference::layernorm_backward(
        &widen(&x),
        &widen(&w),
        &widen(&mean32),
        &widen(&rstd32),
        &widen(&dy),
    );
    // dx = rstd·(dy·w − mean(dy·w) − x̂·mean(dy·w·x̂)) cancels to exactly 0 in a one-column
    // row, and nearly so in very short ones, so dx is judged against the size of the terms
    // that cancel. A fused multiply-add leaves an f32 rounding of them: NVIDIA's driver
    // contracts dy·w − mean(dy·w), which gave 1.9e-5 · rstd·|dy·w| at 1×1 on an H100.
    let dx_terms = (0..rows * cols)
        .map(|i| rstd[i / cols] * (dy[i] as f64 * w[i % cols] as f64).abs())
        .fold(0.0, f64::max);
    let got = [dx.to_f32_vec()?, dw.to_f32_vec()?, db.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::LayernormBwd,
        DType::F32,
        format!("{rows}x{cols}"),
        OpClass::Elementwise,
        &[
            (&got[0], &want_dx, dx_terms),
            (&got[1], &want_dw, 0.0),
            (&got[2], &want_db, 0.0),
        ],
    ))
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

pub fn check_mean_pool<B: Backend>(
    b: &B,
    (batch, t, d): (usize, usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let h = inputs.uniform(batch * t * d);
    let mask = ragged_mask(batch, t, batch > 1);
    let out = poisoned(b, &[batch, d], DType::F32)?;
    b.mean_pool(
        &upload(b, &[batch, t, d], &h)?,
        &upload(b, &[batch, t], &mask)?,
        &out,
    )?;
    let want = reference::mean_pool(&widen(&h), &widen(&mask), batch, d);
    Ok(ParityRow::new(
        Op::MeanPoolFwd,
        DType::F32,
        format!("{batch}x{t}x{d}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

pub fn check_mean_pool_backward<B: Backend>(
    b: &B,
    (batch, t, d): (usize, usize, usize),
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let dout = inputs.uniform(batch * d);
    let mask = ragged_mask(batch, t, batch > 1);
    let dh = poisoned(b, &[batch, t, d], DType::F32)?;
    b.mean_pool_backward(
        &upload(b, &[batch, d], &dout)?,
        &upload(b, &[batch, t], &mask)?,
        &dh,
    )?;
    let want = reference::mean_pool_backward(&widen(&dout), &widen(&mask), batch, d);
    Ok(ParityRow::new(
        Op::MeanPoolBwd,
        DType::F32,
        format!("{batch}x{t}x{d}"),
        OpClass::Elementwise,
        &dh.to_f32_vec()?,
        &want,
    ))
}

/// Logits with a wide spread (some very large, to test the safety of the log-sum-exp),
/// labels, and class weights.
fn xent_inputs(
    batch: usize,
    classes: usize,
    inputs: &mut Inputs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let logits = inputs
        .uniform(batch * classes)
        .iter()
        .enumerate()
        .map(|(i, v)| v * 8.0 + if i % 97 == 5 { 80.0 } else { 0.0 })
        .collect();
    let labels = inputs
        .uniform(batch)
        .iter()
        .map(|v| {
            ((v + 1.0) / 2.0 * classes as f32)
                .floor()
                .min(classes as f32 - 1.0)
        })
        .collect();
    let weights = inputs
        .uniform(classes)
        .iter()
        .map(|v| 1.0 + 0.5 * v)
        .collect();
    (logits, labels, weights)
}

pub fn check_cross_entropy<B: Backend>(
    b: &B,
    batch: usize,
    classes: usize,
    smoothing: f32,
    weighted: bool,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (logits, labels, weights) = xent_inputs(batch, classes, inputs);
    let (loss, hits, lse) = (
        poisoned(b, &[1], DType::F32)?,
        poisoned(b, &[2], DType::F32)?,
        poisoned(b, &[batch], DType::F32)?,
    );
    let tw = upload(b, &[classes], &weights)?;
    b.cross_entropy(
        &upload(b, &[batch, classes], &logits)?,
        &upload(b, &[batch], &labels)?,
        weighted.then_some(&tw),
        smoothing,
        &loss,
        &hits,
        &lse,
    )?;
    let want = reference::cross_entropy(
        &widen(&logits),
        &widen(&labels),
        weighted.then(|| widen(&weights)).as_deref(),
        smoothing as f64,
    );
    let got = [loss.to_f32_vec()?, hits.to_f32_vec()?, lse.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::SoftmaxXentFwd,
        DType::F32,
        format!(
            "{batch}x{classes} ls {smoothing}{}",
            if weighted { " weighted" } else { "" }
        ),
        OpClass::Elementwise,
        &[
            (&got[0], &[want.loss], 1.0),
            (&got[1], &[want.top1, want.top5], 0.0),
            (&got[2], &want.lse, 1.0),
        ],
    ))
}

pub fn check_cross_entropy_backward<B: Backend>(
    b: &B,
    batch: usize,
    classes: usize,
    smoothing: f32,
    weighted: bool,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (logits, labels, weights) = xent_inputs(batch, classes, inputs);
    let want_fwd = reference::cross_entropy(&widen(&logits), &widen(&labels), None, 0.0);
    let lse: Vec<f32> = want_fwd.lse.iter().map(|&v| v as f32).collect();
    let dlogits = poisoned(b, &[batch, classes], DType::F32)?;
    let tw = upload(b, &[classes], &weights)?;
    let scale = 0.75;
    b.cross_entropy_backward(
        &upload(b, &[batch, classes], &logits)?,
        &upload(b, &[batch], &labels)?,
        weighted.then_some(&tw),
        smoothing,
        &upload(b, &[batch], &lse)?,
        scale,
        &dlogits,
    )?;
    let want = reference::cross_entropy_backward(
        &widen(&logits),
        &widen(&labels),
        weighted.then(|| widen(&weights)).as_deref(),
        smoothing as f64,
        scale as f64,
    );
    Ok(ParityRow::new(
        Op::SoftmaxXentBwd,
        DType::F32,
        format!(
            "{batch}x{classes} ls {smoothing}{}",
            if weighted { " weighted" } else { "" }
        ),
        OpClass::Elementwise,
        &dlogits.to_f32_vec()?,
        &want,
    ))
}

/// Three AdamW steps on `n` parameters from a state with moments already non-zero.
pub fn check_adamw<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let hp = crate::backend::AdamW {
        lr: 3e-3,
        weight_decay: 0.05,
        ..Default::default()
    };
    let (p0, m0) = (
        inputs.uniform(n),
        inputs
            .uniform(n)
            .iter()
            .map(|v| v * 0.1)
            .collect::<Vec<_>>(),
    );
    let v0: Vec<f32> = inputs.uniform(n).iter().map(|v| v.abs() * 0.01).collect();
    let grads: Vec<Vec<f32>> = (0..3).map(|_| inputs.uniform(n)).collect();
    let (tp, tm, tv) = (
        upload(b, &[n], &p0)?,
        upload(b, &[n], &m0)?,
        upload(b, &[n], &v0)?,
    );
    let (mut rp, mut rm, mut rv) = (widen(&p0), widen(&m0), widen(&v0));
    let rhp = reference::AdamWParams {
        lr: hp.lr as f64,
        beta1: hp.beta1 as f64,
        beta2: hp.beta2 as f64,
        eps: hp.eps as f64,
        weight_decay: hp.weight_decay as f64,
    };
    for (i, g) in grads.iter().enumerate() {
        let step = 10 + i as u64;
        b.adamw(&tp, &upload(b, &[n], g)?, &tm, &tv, &hp, step)?;
        reference::adamw(&mut rp, &widen(g), &mut rm, &mut rv, &rhp, step);
    }
    let got = [tp.to_f32_vec()?, tm.to_f32_vec()?, tv.to_f32_vec()?];
    Ok(ParityRow::of_parts(
        Op::Adamw,
        DType::F32,
        format!("{n} x3 steps"),
        OpClass::Elementwise,
        &[(&got[0], &rp), (&got[1], &rm), (&got[2], &rv)],
    ))
}

/// The norm of `n` gradients, and clipping them to half of it.
pub fn check_grad_norm<B: Backend>(b: &B, n: usize, inputs: &mut Inputs) -> Result<ParityRow> {
    let g = inputs.uniform(n);
    let (tg, norm) = (upload(b, &[n], &g)?, poisoned(b, &[1], DType::F32)?);
    b.grad_norm(&tg, &norm)?;
    let want_norm = reference::grad_norm(&widen(&g));
    let max_norm = (want_norm * 0.5) as f32;
    b.clip_grads(&tg, &norm, max_norm)?;
    let want_clipped = reference::clip_grads(&widen(&g), max_norm as f64);
    let got = [norm.to_f32_vec()?, tg.to_f32_vec()?];
    Ok(ParityRow::of_parts(
        Op::GradNorm,
        DType::F32,
        format!("{n} +clip"),
        OpClass::Elementwise,
        &[(&got[0], &[want_norm]), (&got[1], &want_clipped)],
    ))
}

/// Unscaling `n` gradients, with a non-finite one planted when `plant` is set.
pub fn check_unscale<B: Backend>(
    b: &B,
    n: usize,
    plant: bool,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let mut g: Vec<f32> = inputs.uniform(n).iter().map(|v| v * 65536.0).collect();
    if plant {
        g[n / 2] = f32::INFINITY;
    }
    let (tg, found) = (upload(b, &[n], &g)?, poisoned(b, &[1], DType::F32)?);
    let inv_scale = 1.0 / 65536.0;
    b.unscale_check(&tg, inv_scale, &found)?;
    let (want, want_found) = reference::unscale_check(&widen(&g), inv_scale as f64);
    // Compare the finite gradients only; the planted one is infinite on both sides.
    let got = tg.to_f32_vec()?;
    let keep = |i: &usize| !(plant && *i == n / 2);
    let got_finite: Vec<f32> = (0..n).filter(keep).map(|i| got[i]).collect();
    let want_finite: Vec<f64> = (0..n).filter(keep).map(|i| want[i]).collect();
    Ok(ParityRow::of_parts(
        Op::UnscaleCheck,
        DType::F32,
        format!("{n}{}", if plant { " +inf" } else { "" }),
        OpClass::Elementwise,
        &[
            (&found.to_f32_vec()?, &[want_found as u8 as f64]),
            (&got_finite, &want_finite),
        ],
    ))
}

pub fn check_dropout<B: Backend>(
    b: &B,
    n: usize,
    p: f32,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let x = inputs.uniform(n);
    let key = DropoutKey {
        seed: 0x1234_5678_9abc,
        step: 7,
        site: 3,
    };
    let out = poisoned(b, &[n], DType::F32)?;
    b.dropout(&upload(b, &[n], &x)?, p, &key, &out)?;
    let want = reference::dropout(&widen(&x), p as f64, &key);
    Ok(ParityRow::new(
        Op::Dropout,
        DType::F32,
        format!("{n} p {p}"),
        OpClass::Elementwise,
        &out.to_f32_vec()?,
        &want,
    ))
}

/// An attention case: its spec (dropout on or off) and a ragged key mask.
fn attention_case(
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    dropout: f32,
) -> (AttentionSpec, Vec<f32>) {
    let mut spec = AttentionSpec::new(batch, t, heads, head_dim);
    spec.dropout = dropout;
    spec.key = DropoutKey {
        seed: 42,
        step: 3,
        site: 1,
    };
    (spec, ragged_mask(batch, t, false))
}

fn attention_shape(spec: &AttentionSpec) -> String {
    format!(
        "b{} t{} h{} d{}{}",
        spec.batch,
        spec.seq,
        spec.heads,
        spec.head_dim,
        if spec.dropout > 0.0 {
            format!(" p {}", spec.dropout)
        } else {
            String::new()
        }
    )
}

pub fn check_attention<B: Backend>(
    b: &B,
    (batch, t, heads, head_dim, dropout): AttentionCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (spec, mask) = attention_case(batch, t, heads, head_dim, dropout);
    let dm = spec.d_model();
    let qkv = inputs.uniform(batch * t * 3 * dm);
    let (out, lse) = (
        poisoned(b, &[batch, t, dm], DType::F32)?,
        poisoned(b, &[batch, heads, t], DType::F32)?,
    );
    b.attention(
        &upload(b, &[batch, t, 3 * dm], &qkv)?,
        &upload(b, &[batch, t], &mask)?,
        &spec,
        &out,
        &lse,
    )?;
    let (want_out, want_lse) = reference::attention(
        &widen(&qkv),
        &widen(&mask),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    let got = [out.to_f32_vec()?, lse.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::AttentionFwd,
        DType::F32,
        attention_shape(&spec),
        OpClass::Reduction,
        &[(&got[0], &want_out, 0.0), (&got[1], &want_lse, 1.0)],
    ))
}

pub fn check_attention_backward<B: Backend>(
    b: &B,
    (batch, t, heads, head_dim, dropout): AttentionCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (spec, mask) = attention_case(batch, t, heads, head_dim, dropout);
    let dm = spec.d_model();
    let qkv = inputs.uniform(batch * t * 3 * dm);
    let dout = inputs.uniform(batch * t * dm);
    // The saved forward results come from the reference, so that only the backward is judged.
    let (out, lse) = reference::attention(
        &widen(&qkv),
        &widen(&mask),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    let dqkv = poisoned(b, &[batch, t, 3 * dm], DType::F32)?;
    b.attention_backward(
        &upload(b, &[batch, t, 3 * dm], &qkv)?,
        &upload(b, &[batch, t], &mask)?,
        &spec,
        &upload(b, &[batch, t, dm], &narrow(&out))?,
        &upload(b, &[batch, heads, t], &narrow(&lse))?,
        &upload(b, &[batch, t, dm], &dout)?,
        &dqkv,
    )?;
    let want = reference::attention_backward(
        &widen(&qkv),
        &widen(&mask),
        &widen(&dout),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    Ok(ParityRow::new(
        Op::AttentionBwd,
        DType::F32,
        attention_shape(&spec),
        OpClass::Reduction,
        &dqkv.to_f32_vec()?,
        &want,
    ))
}

/// (batch, t, heads, head_dim, dropout) of an attention check.
pub type AttentionCase = (usize, usize, usize, usize, f32);

/// Attention checks: sequence lengths that cut the tiles (1, 2, 7, 63, 64, 65, 200, 300) and
/// take every GPU query block (64, 128, 256), the head sizes the model uses and odd ones,
/// ragged masks, with and without dropout.
pub const ATTENTION_CASES: [AttentionCase; 10] = [
    (1, 1, 1, 16, 0.0),
    (2, 2, 2, 32, 0.0),
    (3, 7, 2, 64, 0.1),
    (2, 63, 2, 16, 0.0),
    (2, 64, 1, 32, 0.2),
    (2, 65, 2, 64, 0.0),
    (1, 200, 1, 24, 0.1),
    (1, 17, 2, 128, 0.0),
    (2, 33, 3, 5, 0.5),
    (2, 300, 2, 64, 0.1),
];

/// (batch, t, d) of the pooling checks.
pub const POOL_SHAPES: [(usize, usize, usize); 4] =
    [(1, 1, 1), (3, 7, 17), (5, 64, 256), (2, 200, 3)];
/// (batch, classes, label smoothing, weighted) of the loss checks.
pub const XENT_CASES: [(usize, usize, f32, bool); 5] = [
    (1, 1, 0.0, false),
    (3, 2, 0.1, false),
    (17, 33, 0.0, true),
    (32, 100, 0.1, false),
    (65, 469, 0.2, true),
];
/// Parameter counts of the optimizer checks.
pub const OPTIM_SIZES: [usize; 4] = [1, 17, 4099, 70_001];

/// (rows, cols) of the row-wise ops: a single element, odd sizes, the model's widths.
pub const ROW_SHAPES: [(usize, usize); 6] =
    [(1, 1), (3, 17), (65, 469), (130, 256), (7, 1024), (200, 3)];

/// Matrix product cases: sizes that cut every tile edge and round ones, every layout, with
/// and without bias, batched back to back and at loose strides (and a shared operand).
pub fn matmul_cases() -> Vec<(MatmulSpec, bool)> {
    let sizes = [
        (1, 1, 1),
        (3, 17, 63),
        (65, 127, 3),
        (17, 469, 65),
        (64, 64, 64),
        (127, 63, 128),
        (260, 300, 20),
        // Small grids with a long K: split over K on the GPU (kernel_config::matmul_k_split).
        (7, 33, 1100),
        (64, 96, 600),
    ];
    let mut cases = Vec::new();
    for (i, &(m, n, k)) in sizes.iter().enumerate() {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let spec = MatmulSpec::new(m, n, k).transpose(trans_a, trans_b);
            cases.push((spec, (i + trans_a as usize) % 2 == 0));
        }
    }
    cases.push((MatmulSpec::new(7, 12, 16).batched(3), true));
    cases.push((
        MatmulSpec::new(5, 9, 13)
            .transpose(true, true)
            .strided(4, 70, 0, 50),
        false,
    ));
    cases.push((
        MatmulSpec::new(16, 8, 4)
            .transpose(false, true)
            .strided(2, 64, 40, 132),
        true,
    ));
    cases
}

/// Element counts for elementwise checks: odd, tile-cutting, and one that needs a 2-D grid
/// of workgroups on adapters with few workgroups per dimension.
pub const ELEMENTWISE_SIZES: [usize; 4] = [1, 17, 469, 65_537];

/// Every check, as `signflow selftest` runs them.
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
    for (spec, bias) in matmul_cases() {
        push(check_matmul(b, &spec, bias, &mut inputs)?);
    }
    for spec in [
        MatmulSpec::new(3, 17, 63),
        MatmulSpec::new(64, 1024, 256),
        MatmulSpec::new(65, 33, 20).transpose(true, true).batched(2),
    ] {
        push(check_matmul_bias_gelu(b, &spec, &mut inputs)?);
    }
    for n in ELEMENTWISE_SIZES {
        push(check_add(b, n, &mut inputs)?);
        push(check_scale(b, n, &mut inputs)?);
    }
    for from in DType::ALL {
        for to in DType::ALL {
            push(check_cast(b, 4_099, from, to, &mut inputs)?);
        }
    }
    for dtype in DType::ALL {
        push(check_copy(b, 1_001, dtype, &mut inputs)?);
    }
    for n in ELEMENTWISE_SIZES {
        push(check_gelu(b, n, &mut inputs)?);
        push(check_gelu_backward(b, n, &mut inputs)?);
    }
    for row in check_gelu_values(b)?.rows() {
        push(row);
    }
    for (r, c) in ROW_SHAPES {
        push(check_bias_grad(b, r, c, &mut inputs)?);
        push(check_layernorm(b, r, c, &mut inputs)?);
        push(check_layernorm_backward(b, r, c, &mut inputs)?);
    }
    for shape in POOL_SHAPES {
        push(check_mean_pool(b, shape, &mut inputs)?);
        push(check_mean_pool_backward(b, shape, &mut inputs)?);
    }
    for (batch, classes, smoothing, weighted) in XENT_CASES {
        push(check_cross_entropy(
            b,
            batch,
            classes,
            smoothing,
            weighted,
            &mut inputs,
        )?);
        push(check_cross_entropy_backward(
            b,
            batch,
            classes,
            smoothing,
            weighted,
            &mut inputs,
        )?);
    }
    for (n, p) in [(1, 0.5), (4099, 0.1), (70_001, 0.3)] {
        push(check_dropout(b, n, p, &mut inputs)?);
    }
    for case in ATTENTION_CASES {
        push(check_attention(b, case, &mut inputs)?);
        push(check_attention_backward(b, case, &mut inputs)?);
    }
    for (i, n) in OPTIM_SIZES.into_iter().enumerate() {
        push(check_adamw(b, n, &mut inputs)?);
        push(check_grad_norm(b, n, &mut inputs)?);
        push(check_unscale(b, n, i % 2 == 1, &mut inputs)?);
    }
    Ok(rows)
}
