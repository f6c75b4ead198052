//! Matrix products: plain, with bias, batched and strided, with a packed weight where the
//! backend packs them, and with the bias + GELU epilogue.

use super::{poisoned, upload, widen, Inputs, ParityRow, Push, Scope};
use crate::backend::{Backend, MatmulSpec};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tensor::HostTensor;
use crate::tolerance::OpClass;

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

/// `x·Wᵀ (+ bias)` with W [n, k] packed by [`Backend::pack_weight`] (the model's linear
/// layers in inference), against the reference's product with W transposed; None where the
/// backend packs no weights. With `gelu`, through the bias + GELU epilogue, both outputs.
pub fn check_packed<B: Backend>(
    b: &B,
    (m, n, k): (usize, usize, usize),
    with_bias: bool,
    gelu: bool,
    inputs: &mut Inputs,
) -> Result<Option<ParityRow>> {
    let (x, w, bias) = (
        inputs.uniform(m * k),
        inputs.uniform(n * k),
        inputs.uniform(n),
    );
    let Some(packed) = b.pack_weight(&upload(b, &[n, k], &w)?)? else {
        return Ok(None);
    };
    let (tx, tbias) = (upload(b, &[m, k], &x)?, upload(b, &[n], &bias)?);
    let bias = (with_bias || gelu).then_some(bias);
    let (pre, out) = (
        poisoned(b, &[m * n], DType::F32)?,
        poisoned(b, &[m * n], DType::F32)?,
    );
    let spec = MatmulSpec::new(m, n, k).packed();
    if gelu {
        b.matmul_bias_gelu(&tx, &packed, &tbias, &spec, &pre, &out)?;
    } else {
        b.matmul(&tx, &packed, bias.is_some().then_some(&tbias), &pre, &spec)?;
    }
    let unpacked = MatmulSpec::new(m, n, k).transpose(false, true);
    let want = reference::matmul(
        &widen(&x),
        &widen(&w),
        bias.map(|v| widen(&v)).as_deref(),
        &unpacked,
    );
    let (got_pre, got_out) = (pre.to_f32_vec()?, out.to_f32_vec()?);
    let want_out = reference::gelu(&want);
    let parts = [(&got_pre[..], &want[..]), (&got_out[..], &want_out[..])];
    let parts = &parts[..if gelu { 2 } else { 1 }];
    let epilogue = match (gelu, with_bias) {
        (true, _) => " +bias+gelu",
        (false, true) => " +bias",
        (false, false) => "",
    };
    Ok(Some(ParityRow::of_parts(
        Op::Matmul,
        DType::F32,
        format!("{m}x{n}x{k} packed{epilogue}"),
        OpClass::Reduction,
        parts,
    )))
}

/// Packed-weight product sizes: rows that cut the CPU kernel's 6-row tiles and 72-row blocks
/// (one block's panels shared among threads, or several blocks), columns that cut its panels
/// (8, 16 or 32 wide), and a clip through the default model's first layer.
const PACKED_SIZES: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (5, 17, 63),
    (13, 33, 7),
    (64, 256, 469),
    (73, 100, 65),
    (150, 40, 129),
];

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

/// Matrix product cases: sizes that cut every tile edge and round ones, every layout, with
/// and without bias, batched back to back and at loose strides (and a shared operand).
fn matmul_cases() -> Vec<(MatmulSpec, bool)> {
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

/// Every product case, in the self-test and the tests alike.
pub(super) fn run<B: Backend>(b: &B, _scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    for (spec, bias) in matmul_cases() {
        push(check_matmul(b, &spec, bias, inputs)?);
    }
    for (i, &size) in PACKED_SIZES.iter().enumerate() {
        if let Some(row) = check_packed(b, size, i % 2 == 1, false, inputs)? {
            push(row);
        }
    }
    Ok(())
}

/// The epilogue on a few shapes in the self-test, on every product case in the tests.
pub(super) fn run_bias_gelu<B: Backend>(
    b: &B,
    scope: Scope,
    inputs: &mut Inputs,
    push: Push,
) -> Result<()> {
    let selftest = [
        MatmulSpec::new(3, 17, 63),
        MatmulSpec::new(64, 1024, 256),
        MatmulSpec::new(65, 33, 20).transpose(true, true).batched(2),
    ];
    let more: Vec<MatmulSpec> = matmul_cases().into_iter().map(|(spec, _)| spec).collect();
    for spec in scope.cases(&selftest, &more) {
        push(check_matmul_bias_gelu(b, &spec, inputs)?);
    }
    for size in scope.cases(&[(64, 1024, 256)], &PACKED_SIZES) {
        if let Some(row) = check_packed(b, size, true, true, inputs)? {
            push(row);
        }
    }
    Ok(())
}
