//! Parity checks: run an op on a backend and on the f64 reference with the same fresh random
//! inputs, outputs poisoned beforehand, and measure the difference. `signflow selftest` and
//! the test suite both run these, so a check is written once.

use rand::{Rng, SeedableRng};

use crate::backend::{Backend, MatmulSpec};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
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
}

impl ParityRow {
    fn new(op: Op, dtype: DType, shape: String, class: OpClass, got: &[f32], want: &[f64]) -> Self {
        let d = Deviation::measure(got, want);
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
    Ok(rows)
}
