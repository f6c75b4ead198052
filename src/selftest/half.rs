//! The self-test in f16 and bf16 storage: every family's ops on inputs rounded to the format,
//! against the f64 reference fed the same rounded values and rounding where the kernels store
//! (`crate::reference`), within `tolerance_for` the format and each output's reduction length.
//! Statistics, parameters and their gradients stay f32 (the dtype rule, `Backend`'s docs) and
//! are judged by the f32 bound.

use super::{poisoned, ragged_mask, widen, Family, Inputs, ParityRow, Push};
use crate::backend::{AttentionSpec, Backend, DropoutKey, MatmulSpec};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference as r;
use crate::tensor::{HostTensor, Tensor};
use crate::tolerance::{tolerance_for, Deviation, OpClass};

/// The half-precision storage formats the self-test covers besides f32.
pub const HALVES: [DType; 2] = [DType::F16, DType::Bf16];

/// `values` stored in `dtype` on `b`: the tensor, and the values it holds (rounded).
pub fn upload_as<B: Backend>(
    b: &B,
    shape: &[usize],
    values: &[f32],
    dtype: DType,
) -> Result<(Tensor<B>, Vec<f64>)> {
    let host = HostTensor::from_f32_as(shape, values, dtype)?;
    let stored = widen(&host.to_f32_vec());
    Ok((b.upload(&host)?, stored))
}

/// `len` values uniform in [-scale, scale) stored in `dtype`.
fn random<B: Backend>(
    b: &B,
    inputs: &mut Inputs,
    shape: &[usize],
    dtype: DType,
    scale: f32,
) -> Result<(Tensor<B>, Vec<f64>)> {
    let len = shape.iter().product();
    let values: Vec<f32> = inputs.uniform(len).iter().map(|v| v * scale).collect();
    upload_as(b, shape, &values, dtype)
}

/// One output of an op, measured against the reference rounded to the output's own dtype,
/// whose longest sum has `n` terms, relative to at least `min_scale`.
struct Part {
    deviation: Deviation,
    tol: f64,
}

impl Part {
    fn of<B: Backend>(
        got: &Tensor<B>,
        want: &[f64],
        class: OpClass,
        n: usize,
        min_scale: f64,
    ) -> Result<Part> {
        let dtype = got.dtype();
        Ok(Part {
            deviation: Deviation::measure_at_scale(
                &got.to_f32_vec()?,
                &r::cast(want, dtype),
                min_scale,
            ),
            tol: tolerance_for(class, dtype, n),
        })
    }
}

/// The row of an op in `dtype` storage: it passes when every part is within its tolerance,
/// and shows the part closest to (or furthest past) its bound.
fn row(op: Op, dtype: DType, shape: String, parts: &[Part]) -> ParityRow {
    let ratio = |p: &Part| p.deviation.max_rel_err / p.tol;
    let worst = parts
        .iter()
        .max_by(|a, b| ratio(a).total_cmp(&ratio(b)))
        .expect("every row has a part");
    ParityRow {
        op,
        dtype,
        shape,
        max_abs_err: worst.deviation.max_abs_err,
        max_rel_err: worst.deviation.max_rel_err,
        tol: worst.tol,
        pass: parts.iter().all(|p| p.deviation.within(p.tol)),
        skipped: None,
    }
}

/// Runs `family`'s checks in `dtype` storage. The optimizer's ops compute on f32 master
/// weights and gradients in every precision, so that family has no half rows.
pub(super) fn run<B: Backend>(
    family: Family,
    b: &B,
    dtype: DType,
    inputs: &mut Inputs,
    push: Push,
) -> Result<()> {
    let c = &mut Ctx { b, dtype, inputs };
    match family {
        Family::Matmul => matmul(c, push),
        Family::MatmulBiasGelu => matmul_bias_gelu(c, push),
        Family::Elementwise => elementwise(c, push),
        Family::Gelu => gelu(c, push),
        Family::BiasGradAndLayernorm => norm(c, push),
        Family::MeanPool => mean_pool(c, push),
        Family::CrossEntropy => cross_entropy(c, push),
        Family::Dropout => dropout(c, push),
        Family::Attention => attention(c, push),
        Family::Optimizer => Ok(()),
    }
}

/// The first op `family` runs in half precision: the one a skipped row names.
pub(super) fn first_op(family: Family) -> Option<Op> {
    Some(match family {
        Family::Matmul | Family::MatmulBiasGelu => Op::Matmul,
        Family::Elementwise => Op::Add,
        Family::Gelu => Op::GeluFwd,
        Family::BiasGradAndLayernorm => Op::BiasGrad,
        Family::MeanPool => Op::MeanPoolFwd,
        Family::CrossEntropy => Op::SoftmaxXentFwd,
        Family::Dropout => Op::Dropout,
        Family::Attention => Op::AttentionFwd,
        Family::Optimizer => return None,
    })
}

struct Ctx<'a, B> {
    b: &'a B,
    dtype: DType,
    inputs: &'a mut Inputs,
}

impl<B: Backend> Ctx<'_, B> {
    fn random(
        &mut self,
        shape: &[usize],
        dtype: DType,
        scale: f32,
    ) -> Result<(Tensor<B>, Vec<f64>)> {
        random(self.b, self.inputs, shape, dtype, scale)
    }

    fn poisoned(&self, shape: &[usize], dtype: DType) -> Result<Tensor<B>> {
        poisoned(self.b, shape, dtype)
    }
}

/// Sizes that cut the tiles, every layout, with a bias in the activations' format.
fn matmul<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for (m, n, k) in [(3, 17, 63), (65, 127, 3), (17, 469, 65)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let spec = MatmulSpec::new(m, n, k).transpose(ta, tb);
            let (a, av) = c.random(&[spec.a_len()], dtype, 1.0)?;
            let (w, wv) = c.random(&[spec.b_len()], dtype, 1.0)?;
            let (bias, biasv) = c.random(&[n], dtype, 1.0)?;
            let out = c.poisoned(&[spec.c_len()], dtype)?;
            c.b.matmul(&a, &w, Some(&bias), &out, &spec)?;
            let want = r::matmul(&av, &wv, Some(&biasv), &spec);
            let part = Part::of(&out, &want, OpClass::Reduction, k, 0.0)?;
            let shape = format!("{m}x{n}x{k} {} +bias", spec.layout());
            push(row(Op::Matmul, dtype, shape, &[part]));
        }
    }
    // A weight gradient: half operands into f32.
    let spec = MatmulSpec::new(37, 11, 129).transpose(true, false);
    let (x, xv) = c.random(&[spec.a_len()], dtype, 1.0)?;
    let (dy, dyv) = c.random(&[spec.b_len()], dtype, 1.0)?;
    let dw = c.poisoned(&[spec.c_len()], DType::F32)?;
    c.b.matmul(&x, &dy, None, &dw, &spec)?;
    let part = Part::of(
        &dw,
        &r::matmul(&xv, &dyv, None, &spec),
        OpClass::Reduction,
        129,
        0.0,
    )?;
    let shape = format!("37x11x129 {} into f32", spec.layout());
    push(row(Op::Matmul, dtype, shape, &[part]));
    // Half-precision inference's linear layer: the weight rounded to the format, then packed
    // (in the dtype the backend packs in), where the backend packs weights.
    let (m, n, k) = (65, 37, 70);
    let (w, wv) = c.random(&[n, k], dtype, 1.0)?;
    if let Some(packed) = c.b.pack_weight(&w)? {
        let (x, xv) = c.random(&[m, k], dtype, 1.0)?;
        let (bias, biasv) = c.random(&[n], DType::F32, 1.0)?;
        let out = c.poisoned(&[m * n], dtype)?;
        let spec = MatmulSpec::new(m, n, k).packed();
        c.b.matmul(&x, &packed, Some(&bias), &out, &spec)?;
        let unpacked = MatmulSpec::new(m, n, k).transpose(false, true);
        let want = r::matmul(&xv, &wv, Some(&biasv), &unpacked);
        let part = Part::of(&out, &want, OpClass::Reduction, k, 0.0)?;
        push(row(
            Op::Matmul,
            dtype,
            format!("{m}x{n}x{k} packed +bias"),
            &[part],
        ));
    }
    Ok(())
}

/// The epilogue stores the pre-activation and GELU of the stored value, both in the format.
fn matmul_bias_gelu<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for spec in [
        MatmulSpec::new(3, 17, 63),
        MatmulSpec::new(65, 33, 20).transpose(true, true),
    ] {
        let (a, av) = c.random(&[spec.a_len()], dtype, 1.0)?;
        let (w, wv) = c.random(&[spec.b_len()], dtype, 1.0)?;
        let (bias, biasv) = c.random(&[spec.n], DType::F32, 1.0)?;
        let (pre, out) = (
            c.poisoned(&[spec.c_len()], dtype)?,
            c.poisoned(&[spec.c_len()], dtype)?,
        );
        c.b.matmul_bias_gelu(&a, &w, &bias, &spec, &pre, &out)?;
        let (want_pre, want_out) = r::matmul_bias_gelu_in(dtype, &av, &wv, &biasv, &spec);
        let k = spec.k;
        let parts = [
            Part::of(&pre, &want_pre, OpClass::Reduction, k, 0.0)?,
            Part::of(&out, &want_out, OpClass::Reduction, k, 0.0)?,
        ];
        let shape = format!("{}x{}x{k} {} +bias+gelu", spec.m, spec.n, spec.layout());
        push(row(Op::Matmul, dtype, shape, &parts));
    }
    Ok(())
}

/// Lengths of 1, under and over a SIMD vector, and over the CPU's parallel chunk (2^15).
const LENGTHS: [usize; 4] = [1, 17, 127, 70_001];

fn elementwise<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    let class = OpClass::Elementwise;
    for len in LENGTHS {
        let (x, xv) = c.random(&[len], dtype, 4.0)?;
        let (y, yv) = c.random(&[len], dtype, 4.0)?;
        let out = c.poisoned(&[len], dtype)?;
        c.b.add(&x, &y, &out)?;
        let part = Part::of(&out, &r::add(&xv, &yv), class, 1, 0.0)?;
        push(row(Op::Add, dtype, len.to_string(), &[part]));
        let out = c.poisoned(&[len], dtype)?;
        c.b.scale(&x, -0.37, &out)?;
        let part = Part::of(&out, &r::scale(&xv, -0.37), class, 1, 0.0)?;
        push(row(Op::Scale, dtype, len.to_string(), &[part]));
        let (wide, widev) = upload_as(c.b, &[len], &c.inputs.wide(len), DType::F32)?;
        let out = c.poisoned(&[len], dtype)?;
        c.b.cast(&wide, &out)?;
        let part = Part::of(&out, &widev, class, 1, 0.0)?;
        push(row(Op::Cast, dtype, format!("{len} from f32"), &[part]));
    }
    Ok(())
}

fn gelu<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    let class = OpClass::Elementwise;
    for len in LENGTHS {
        let (x, xv) = c.random(&[len], dtype, 6.0)?;
        let (dy, dyv) = c.random(&[len], dtype, 1.0)?;
        let out = c.poisoned(&[len], dtype)?;
        c.b.gelu(&x, &out)?;
        let part = Part::of(&out, &r::gelu(&xv), class, 1, 0.0)?;
        push(row(Op::GeluFwd, dtype, len.to_string(), &[part]));
        let dx = c.poisoned(&[len], dtype)?;
        c.b.gelu_backward(&x, &dy, &dx)?;
        let part = Part::of(&dx, &r::gelu_backward(&xv, &dyv), class, 1, 0.0)?;
        push(row(Op::GeluBwd, dtype, len.to_string(), &[part]));
    }
    Ok(())
}

/// The bias gradient sums half rows into f32; layer norm keeps f32 statistics and parameters.
fn norm<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for (rows, cols) in [(1, 1), (17, 65), (130, 469)] {
        let (dy, dyv) = c.random(&[rows * cols], dtype, 1.0)?;
        let db = c.poisoned(&[cols], DType::F32)?;
        c.b.bias_grad(&dy, &db)?;
        let part = Part::of(
            &db,
            &r::bias_grad(&dyv, cols),
            OpClass::Reduction,
            rows,
            0.0,
        )?;
        push(row(Op::BiasGrad, dtype, format!("{rows}x{cols}"), &[part]));

        let (x, xv) = c.random(&[rows, cols], dtype, 3.0)?;
        let (w, wv) = c.random(&[cols], DType::F32, 1.0)?;
        let (bias, bv) = c.random(&[cols], DType::F32, 1.0)?;
        let y = c.poisoned(&[rows, cols], dtype)?;
        let (mean, rstd) = (
            c.poisoned(&[rows], DType::F32)?,
            c.poisoned(&[rows], DType::F32)?,
        );
        c.b.layernorm(&x, &w, &bias, 1e-5, &y, &mean, &rstd)?;
        let (want_y, want_mean, want_rstd) = r::layernorm(&xv, &wv, &bv, 1e-5);
        let class = OpClass::Elementwise;
        let parts = [
            Part::of(&y, &want_y, class, cols, 0.0)?,
            Part::of(&mean, &want_mean, class, cols, 1.0)?,
            Part::of(&rstd, &want_rstd, class, cols, 1.0)?,
        ];
        push(row(
            Op::LayernormFwd,
            dtype,
            format!("{rows}x{cols}"),
            &parts,
        ));

        // From the statistics as the forward pass stored them (f32).
        let (mean_v, rstd_v) = (
            r::cast(&want_mean, DType::F32),
            r::cast(&want_rstd, DType::F32),
        );
        let (mean, _) = upload_as(c.b, &[rows], &super::narrow(&mean_v), DType::F32)?;
        let (rstd, _) = upload_as(c.b, &[rows], &super::narrow(&rstd_v), DType::F32)?;
        let (dy, dyv) = c.random(&[rows, cols], dtype, 1.0)?;
        let dx = c.poisoned(&[rows, cols], dtype)?;
        let (dw, db) = (
            c.poisoned(&[cols], DType::F32)?,
            c.poisoned(&[cols], DType::F32)?,
        );
        c.b.layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)?;
        let (want_dx, want_dw, want_db) = r::layernorm_backward(&xv, &wv, &mean_v, &rstd_v, &dyv);
        let sums = OpClass::Reduction;
        let parts = [
            Part::of(&dx, &want_dx, sums, cols, 0.0)?,
            Part::of(&dw, &want_dw, sums, rows, 0.0)?,
            Part::of(&db, &want_db, sums, rows, 0.0)?,
        ];
        push(row(
            Op::LayernormBwd,
            dtype,
            format!("{rows}x{cols}"),
            &parts,
        ));
    }
    Ok(())
}

fn mean_pool<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for (batch, t, d) in [(1, 1, 1), (3, 5, 17), (4, 33, 65)] {
        let (h, hv) = c.random(&[batch, t, d], dtype, 2.0)?;
        let (mask, maskv) = upload_as(
            c.b,
            &[batch, t],
            &ragged_mask(batch, t, batch > 1),
            DType::F32,
        )?;
        let out = c.poisoned(&[batch, d], dtype)?;
        c.b.mean_pool(&h, &mask, &out)?;
        let want = r::mean_pool(&hv, &maskv, batch, d);
        let part = Part::of(&out, &want, OpClass::Elementwise, t, 0.0)?;
        let shape = format!("b{batch} t{t} d{d}");
        push(row(Op::MeanPoolFwd, dtype, shape.clone(), &[part]));
        let (dout, doutv) = c.random(&[batch, d], dtype, 1.0)?;
        let dh = c.poisoned(&[batch, t, d], dtype)?;
        c.b.mean_pool_backward(&dout, &mask, &dh)?;
        let want = r::mean_pool_backward(&doutv, &maskv, batch, d);
        let part = Part::of(&dh, &want, OpClass::Elementwise, 1, 0.0)?;
        push(row(Op::MeanPoolBwd, dtype, shape, &[part]));
    }
    Ok(())
}

/// Half logits; the loss and log-sum-exp are f32.
fn cross_entropy<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for (batch, classes) in [(1, 1), (3, 7), (33, 250)] {
        let (logits, zv) = c.random(&[batch, classes], dtype, 4.0)?;
        let labels: Vec<f32> = (0..batch).map(|i| ((i * 7) % classes) as f32).collect();
        let (labels, labelsv) = upload_as(c.b, &[batch], &labels, DType::F32)?;
        let (loss, hits, lse) = (
            c.poisoned(&[1], DType::F32)?,
            c.poisoned(&[2], DType::F32)?,
            c.poisoned(&[batch], DType::F32)?,
        );
        c.b.cross_entropy(&logits, &labels, None, 0.1, &loss, &hits, &lse)?;
        let want = r::cross_entropy(&zv, &labelsv, None, 0.1);
        let sums = OpClass::Reduction;
        let hits_want = [want.top1, want.top5];
        let parts = [
            Part::of(&loss, &[want.loss], sums, classes, 1.0)?,
            Part::of(&lse, &want.lse, sums, classes, 1.0)?,
            Part::of(&hits, &hits_want, OpClass::Elementwise, 1, 1.0)?,
        ];
        let shape = format!("{batch}x{classes}");
        push(row(Op::SoftmaxXentFwd, dtype, shape.clone(), &parts));
        let dlogits = c.poisoned(&[batch, classes], dtype)?;
        c.b.cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 2.0, &dlogits)?;
        let want = r::cross_entropy_backward(&zv, &labelsv, None, 0.1, 2.0);
        let part = Part::of(&dlogits, &want, sums, classes, 0.0)?;
        push(row(Op::SoftmaxXentBwd, dtype, shape, &[part]));
    }
    Ok(())
}

fn dropout<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    let key = DropoutKey {
        seed: 0x1234_5678_9abc,
        step: 7,
        site: 3,
    };
    for (n, p) in [(1, 0.5), (4099, 0.1), (70_001, 0.3)] {
        let (x, xv) = c.random(&[n], dtype, 4.0)?;
        let out = c.poisoned(&[n], dtype)?;
        c.b.dropout(&x, p, &key, &out)?;
        let want = r::dropout(&xv, p as f64, &key);
        let part = Part::of(&out, &want, OpClass::Elementwise, 1, 0.0)?;
        push(row(Op::Dropout, dtype, format!("{n} p {p}"), &[part]));
    }
    Ok(())
}

/// Half q/k/v and output; f32 log-sum-exp; the backward pass from the stored output.
fn attention<B: Backend>(c: &mut Ctx<B>, push: Push) -> Result<()> {
    let dtype = c.dtype;
    for (batch, t, heads, head_dim, p) in [
        (1, 1, 1, 1, 0.0),
        (2, 17, 3, 5, 0.0),
        (3, 33, 2, 16, 0.2),
        (1, 20, 3, 8, 0.1),
    ] {
        let mut spec = AttentionSpec::new(batch, t, heads, head_dim);
        spec.dropout = p;
        spec.key = DropoutKey {
            seed: 42,
            step: 3,
            site: 1,
        };
        let dm = spec.d_model();
        let (qkv, qkvv) = c.random(&[batch, t, 3 * dm], dtype, 2.0)?;
        let (mask, maskv) = upload_as(c.b, &[batch, t], &ragged_mask(batch, t, false), DType::F32)?;
        let out = c.poisoned(&[batch, t, dm], dtype)?;
        let lse = c.poisoned(&[batch, heads, t], DType::F32)?;
        c.b.attention(&qkv, &mask, &spec, &out, &lse)?;
        let (want_out, want_lse) = r::attention(
            &qkvv, &maskv, batch, t, heads, head_dim, p as f64, &spec.key,
        );
        let n = t.max(head_dim);
        let parts = [
            Part::of(&out, &want_out, OpClass::Reduction, n, 0.0)?,
            Part::of(&lse, &want_lse, OpClass::Reduction, n, 1.0)?,
        ];
        let shape = format!("b{batch} t{t} h{heads} d{head_dim} p {p}");
        push(row(Op::AttentionFwd, dtype, shape.clone(), &parts));

        let (dout, doutv) = c.random(&[batch, t, dm], dtype, 1.0)?;
        let dqkv = c.poisoned(&[batch, t, 3 * dm], dtype)?;
        c.b.attention_backward(&qkv, &mask, &spec, &out, &lse, &dout, &dqkv)?;
        let want = r::attention_backward_in(
            dtype, &qkvv, &maskv, &doutv, batch, t, heads, head_dim, p as f64, &spec.key,
        );
        let part = Part::of(&dqkv, &want, OpClass::Reduction, n, 0.0)?;
        push(row(Op::AttentionBwd, dtype, shape, &[part]));
    }
    Ok(())
}
