//! The CPU backend and the first GPU adapter in f16 and bf16 storage against the f64 reference fed the same rounded
//! inputs and rounding where the kernels store (`signflow::reference`), within the
//! tolerances `signflow::tolerance` derives from each format's unit roundoff; the dtype rule
//! of every op (`Backend`'s docs); overflow to infinity; determinism.

use signflow::backend::AttentionSpec;
use signflow::reference as r;
use signflow::selftest::{self, Inputs};
use signflow::tolerance::{tolerance_for, Deviation, OpClass};
use signflow::{
    AdamW, Backend, CpuBackend, DType, DropoutKey, Error, GpuBackend, HostTensor, MatmulSpec,
    Tensor,
};

const HALVES: [DType; 2] = [DType::F16, DType::Bf16];

/// A fresh seed, printed so that a failure can be replayed.
fn seed() -> u64 {
    let seed = Inputs::fresh_seed();
    eprintln!("seed {seed}");
    seed
}

/// Random inputs in one storage dtype, uploaded, and the same rounded values for the
/// reference.
struct Case<'b, B: Backend> {
    b: &'b B,
    inputs: Inputs,
    seed: u64,
}

impl<'b, B: Backend> Case<'b, B> {
    fn new(b: &'b B) -> Case<'b, B> {
        let seed = seed();
        Case {
            b,
            inputs: Inputs::new(seed),
            seed,
        }
    }

    /// `len` values uniform in [-scale, scale) stored in `dtype`: the tensor, and its values.
    fn tensor(&mut self, len: usize, dtype: DType, scale: f32) -> (Tensor<B>, Vec<f64>) {
        let values: Vec<f32> = self.inputs.uniform(len).iter().map(|v| v * scale).collect();
        self.upload(&values, dtype)
    }

    fn upload(&self, values: &[f32], dtype: DType) -> (Tensor<B>, Vec<f64>) {
        selftest::upload_as(self.b, &[values.len()], values, dtype).unwrap()
    }

    /// An output filled with NaN, so that an element left unwritten shows.
    fn poisoned(&self, len: usize, dtype: DType) -> Tensor<B> {
        selftest::poisoned(self.b, &[len], dtype).unwrap()
    }

    /// `got` within the tolerance of the dtype it is stored in for sums of `n` terms,
    /// relative to at least `min_scale`; never NaN.
    fn expect(
        &self,
        what: &str,
        got: &Tensor<B>,
        want: &[f64],
        (class, n, min_scale): (OpClass, usize, f64),
    ) {
        let dtype = got.dtype();
        let got = got.to_f32_vec().unwrap();
        assert!(
            got.iter().all(|v| !v.is_nan()),
            "seed {}: {what}: NaN",
            self.seed
        );
        let d = Deviation::measure_at_scale(&got, want, min_scale);
        let tol = tolerance_for(class, dtype, n);
        assert!(
            d.within(tol),
            "seed {}: {what}: {d:?} over {tol:e}",
            self.seed
        );
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::default()
}

/// The first GPU adapter (lavapipe where no GPU is present).
fn gpu() -> GpuBackend {
    let adapters = signflow::Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter at all (install mesa-vulkan-drivers)");
    GpuBackend::new(adapter, info.clone(), &signflow::GpuConfig::default())
        .expect("the adapter opens")
}

/// `#[test]`s `on_cpu::NAME` and `on_gpu::NAME` running `NAME(&backend)` on the CPU backend and
/// on the first GPU adapter.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_cpu {
            $( #[test] fn $name() { super::$name(&super::cpu()) } )*
        }
        mod on_gpu {
            $( #[test] fn $name() { super::$name(&super::gpu()) } )*
        }
    };
}

on_both!(
    elementwise_ops_and_dropout,
    matmul_in_every_layout_at_awkward_sizes,
    matmul_half_operands_into_f32_and_batched,
    matmul_bias_gelu_stores_pre_and_out,
);

fn matmul_in_every_layout_at_awkward_sizes<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    // Past the awkward sizes: rows of multiples of 4 (the GPU's four-element loads where the
    // layout allows) with an odd N (rows starting mid-word), and a K that the GPU splits.
    let sizes = [
        (1, 1, 1),
        (3, 17, 5),
        (63, 65, 127),
        (17, 33, 469),
        (36, 21, 44),
        (9, 21, 600),
    ];
    for dtype in HALVES {
        for (m, n, k) in sizes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let spec = MatmulSpec::new(m, n, k).transpose(ta, tb);
                let (a, av) = c.tensor(spec.a_len(), dtype, 1.0);
                let (w, wv) = c.tensor(spec.b_len(), dtype, 1.0);
                let (bias, biasv) = c.tensor(n, dtype, 1.0);
                let out = c.poisoned(spec.c_len(), dtype);
                b.matmul(&a, &w, Some(&bias), &out, &spec).unwrap();
                let want = r::cast(&r::matmul(&av, &wv, Some(&biasv), &spec), dtype);
                let what = format!("{m}x{n}x{k} {} {dtype}", spec.layout());
                c.expect(&what, &out, &want, (OpClass::Reduction, k, 0.0));
            }
        }
    }
}

/// A weight gradient's product reads half-precision operands and writes f32 (with an f32
/// bias, or one in the storage dtype; the second K is long enough for the GPU to split);
/// batched items at strides, one operand shared by every item.
fn matmul_half_operands_into_f32_and_batched<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (m, n, k, bias_dtype) in [(37, 11, 129, DType::F32), (24, 20, 640, dtype)] {
            let spec = MatmulSpec::new(m, n, k).transpose(true, false);
            let (x, xv) = c.tensor(spec.a_len(), dtype, 1.0);
            let (dy, dyv) = c.tensor(spec.b_len(), dtype, 1.0);
            let (bias, biasv) = c.tensor(n, bias_dtype, 1.0);
            let dw = c.poisoned(spec.c_len(), DType::F32);
            b.matmul(&x, &dy, Some(&bias), &dw, &spec).unwrap();
            let want = r::matmul(&xv, &dyv, Some(&biasv), &spec);
            let what = format!("{m}x{n}x{k} f32 out of {dtype}, {bias_dtype} bias");
            c.expect(&what, &dw, &want, (OpClass::Reduction, k, 0.0));
        }

        let (m, n, k) = (5, 7, 9);
        let spec = MatmulSpec::new(m, n, k).strided(3, m * k + 2, 0, m * n + 4);
        let (a, av) = c.tensor(spec.a_len(), dtype, 1.0);
        let (w, wv) = c.tensor(spec.b_len(), dtype, 1.0);
        let out = c.poisoned(spec.c_len(), dtype);
        b.matmul(&a, &w, None, &out, &spec).unwrap();
        let want = r::cast(&r::matmul(&av, &wv, None, &spec), dtype);
        let got = out.to_f32_vec().unwrap();
        for item in 0..3 {
            let items = item * spec.stride_c..item * spec.stride_c + m * n;
            let d = Deviation::measure(&got[items.clone()], &want[items]);
            let tol = tolerance_for(OpClass::Reduction, dtype, k);
            assert!(d.within(tol), "seed {}: {dtype} item {item}: {d:?}", c.seed);
        }
        // The gaps between items are not the product's to write.
        assert!(got[m * n..spec.stride_c].iter().all(|v| v.is_nan()));
    }
}

fn matmul_bias_gelu_stores_pre_and_out<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        let sizes = [(1, 1, 1), (7, 13, 29), (65, 31, 64), (33, 20, 16)];
        for ((m, n, k), bias_dtype) in sizes.into_iter().zip([DType::F32, dtype].repeat(2)) {
            let spec = MatmulSpec::new(m, n, k);
            let (a, av) = c.tensor(spec.a_len(), dtype, 1.0);
            let (w, wv) = c.tensor(spec.b_len(), dtype, 1.0);
            let (bias, biasv) = c.tensor(n, bias_dtype, 1.0);
            let (pre, out) = (c.poisoned(m * n, dtype), c.poisoned(m * n, dtype));
            b.matmul_bias_gelu(&a, &w, &bias, &spec, &pre, &out)
                .unwrap();
            let (want_pre, want_out) = r::matmul_bias_gelu_in(dtype, &av, &wv, &biasv, &spec);
            let what = format!("{m}x{n}x{k} pre {dtype}");
            c.expect(&what, &pre, &want_pre, (OpClass::Reduction, k, 0.0));
            let what = format!("{m}x{n}x{k} gelu {dtype}");
            c.expect(&what, &out, &want_out, (OpClass::Reduction, k, 0.0));
        }
    }
}

/// Lengths of 1, under and over a SIMD vector, and over the CPU's parallel chunk (2^15).
const LENGTHS: [usize; 5] = [1, 3, 17, 127, 70_001];

fn elementwise_ops_and_dropout<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    let key = DropoutKey {
        seed: c.seed,
        step: 3,
        site: 1,
    };
    for dtype in HALVES {
        for len in LENGTHS {
            let (x, xv) = c.tensor(len, dtype, 4.0);
            let (y, yv) = c.tensor(len, dtype, 4.0);
            let class = (OpClass::Elementwise, 1, 0.0);
            let out = c.poisoned(len, dtype);
            b.add(&x, &y, &out).unwrap();
            c.expect(
                &format!("add {dtype}"),
                &out,
                &r::cast(&r::add(&xv, &yv), dtype),
                class,
            );
            let out = c.poisoned(len, dtype);
            b.scale(&x, -0.37, &out).unwrap();
            let want = r::cast(&r::scale(&xv, -0.37), dtype);
            c.expect(&format!("scale {dtype}"), &out, &want, class);
            let out = c.poisoned(len, dtype);
            b.gelu(&x, &out).unwrap();
            c.expect(
                &format!("gelu {dtype}"),
                &out,
                &r::cast(&r::gelu(&xv), dtype),
                class,
            );
            let out = c.poisoned(len, dtype);
            b.gelu_backward(&x, &y, &out).unwrap();
            let want = r::cast(&r::gelu_backward(&xv, &yv), dtype);
            c.expect(&format!("gelu_backward {dtype}"), &out, &want, class);
            let out = c.poisoned(len, dtype);
            b.dropout(&x, 0.3, &key, &out).unwrap();
            let want = r::cast(&r::dropout(&xv, 0.3, &key), dtype);
            c.expect(&format!("dropout {dtype}"), &out, &want, class);
            // In place.
            b.add(&x, &y, &x).unwrap();
            c.expect(
                &format!("add in place {dtype}"),
                &x,
                &r::cast(&r::add(&xv, &yv), dtype),
                class,
            );
        }
    }
}

#[test]
fn bias_grad_sums_half_rows_into_f32() {
    let b = cpu();
    let mut c = Case::new(&b);
    for dtype in HALVES {
        for (rows, cols) in [(1, 1), (3, 17), (129, 65), (300, 469)] {
            let (dy, dyv) = c.tensor(rows * cols, dtype, 1.0);
            let db = c.poisoned(cols, DType::F32);
            b.bias_grad(&dy, &db).unwrap();
            let what = format!("bias_grad {rows}x{cols} of {dtype}");
            c.expect(
                &what,
                &db,
                &r::bias_grad(&dyv, cols),
                (OpClass::Reduction, rows, 0.0),
            );
        }
    }
}

#[test]
fn layernorm_forward_and_backward() {
    let b = cpu();
    let mut c = Case::new(&b);
    for dtype in HALVES {
        for (rows, cols) in [(1, 1), (5, 3), (17, 65), (130, 469)] {
            let (x, xv) = c.tensor(rows * cols, dtype, 3.0);
            let (w, wv) = c.tensor(cols, DType::F32, 1.0);
            let (bias, bv) = c.tensor(cols, DType::F32, 1.0);
            let y = c.poisoned(rows * cols, dtype);
            let (mean, rstd) = (c.poisoned(rows, DType::F32), c.poisoned(rows, DType::F32));
            b.layernorm(&x, &w, &bias, 1e-5, &y, &mean, &rstd).unwrap();
            let (want_y, want_mean, want_rstd) = r::layernorm(&xv, &wv, &bv, 1e-5);
            let norm = (OpClass::Elementwise, cols, 0.0);
            c.expect(
                &format!("layernorm {dtype}"),
                &y,
                &r::cast(&want_y, dtype),
                norm,
            );
            let stat = (OpClass::Elementwise, cols, 1.0);
            c.expect("layernorm mean", &mean, &want_mean, stat);
            c.expect("layernorm rstd", &rstd, &want_rstd, stat);

            // The backward pass from statistics as the forward pass stored them (f32).
            let (mean_v, rstd_v) = (
                r::cast(&want_mean, DType::F32),
                r::cast(&want_rstd, DType::F32),
            );
            let (mean, _) = c.upload(
                &mean_v.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                DType::F32,
            );
            let (rstd, _) = c.upload(
                &rstd_v.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                DType::F32,
            );
            let (dy, dyv) = c.tensor(rows * cols, dtype, 1.0);
            let dx = c.poisoned(rows * cols, dtype);
            let (dw, db) = (c.poisoned(cols, DType::F32), c.poisoned(cols, DType::F32));
            b.layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)
                .unwrap();
            let (want_dx, want_dw, want_db) =
                r::layernorm_backward(&xv, &wv, &mean_v, &rstd_v, &dyv);
            let what = format!("layernorm_backward dx {dtype}");
            c.expect(
                &what,
                &dx,
                &r::cast(&want_dx, dtype),
                (OpClass::Reduction, cols, 0.0),
            );
            let sums = (OpClass::Reduction, rows, 0.0);
            c.expect("layernorm_backward dw", &dw, &want_dw, sums);
            c.expect("layernorm_backward db", &db, &want_db, sums);
        }
    }
}

/// A key mask of `batch` clips of `t` frames, the last frames of every other clip padding,
/// and with `empty` a clip without real frames.
fn key_mask(batch: usize, t: usize, empty: bool) -> Vec<f32> {
    (0..batch * t)
        .map(|i| {
            let (clip, frame) = (i / t, i % t);
            let real = if clip % 2 == 1 {
                frame < t.div_ceil(2)
            } else {
                true
            };
            (real && !(empty && clip == batch - 1)) as u8 as f32
        })
        .collect()
}

#[test]
fn mean_pool_forward_and_backward() {
    let b = cpu();
    let mut c = Case::new(&b);
    for dtype in HALVES {
        for (batch, t, d) in [(1, 1, 1), (3, 5, 17), (4, 33, 65)] {
            let (h, hv) = c.tensor(batch * t * d, dtype, 2.0);
            let mask_values = key_mask(batch, t, batch > 1);
            let (mask, maskv) = c.upload(&mask_values, DType::F32);
            let (h, mask) = (
                h.view(0, &[batch, t, d]).unwrap(),
                mask.view(0, &[batch, t]).unwrap(),
            );
            let out = selftest::poisoned(&b, &[batch, d], dtype).unwrap();
            b.mean_pool(&h, &mask, &out).unwrap();
            let want = r::cast(&r::mean_pool(&hv, &maskv, batch, d), dtype);
            c.expect(
                &format!("mean_pool {dtype}"),
                &out,
                &want,
                (OpClass::Elementwise, t, 0.0),
            );
            let (dout, doutv) = c.tensor(batch * d, dtype, 1.0);
            let dout = dout.view(0, &[batch, d]).unwrap();
            let dh = selftest::poisoned(&b, &[batch, t, d], dtype).unwrap();
            b.mean_pool_backward(&dout, &mask, &dh).unwrap();
            let want = r::cast(&r::mean_pool_backward(&doutv, &maskv, batch, d), dtype);
            let what = format!("mean_pool_backward {dtype}");
            c.expect(&what, &dh, &want, (OpClass::Elementwise, 1, 0.0));
        }
    }
}

#[test]
fn cross_entropy_of_half_logits() {
    let b = cpu();
    let mut c = Case::new(&b);
    for dtype in HALVES {
        for (batch, classes) in [(1, 1), (3, 7), (33, 250)] {
            let (logits, zv) = c.tensor(batch * classes, dtype, 4.0);
            let logits = logits.view(0, &[batch, classes]).unwrap();
            let labels_v: Vec<f32> = (0..batch).map(|i| ((i * 7) % classes) as f32).collect();
            let (labels, labelsv) = c.upload(&labels_v, DType::F32);
            let (loss, hits, lse) = (
                c.poisoned(1, DType::F32),
                c.poisoned(2, DType::F32),
                c.poisoned(batch, DType::F32),
            );
            b.cross_entropy(&logits, &labels, None, 0.1, &loss, &hits, &lse)
                .unwrap();
            let want = r::cross_entropy(&zv, &labelsv, None, 0.1);
            let sums = (OpClass::Reduction, classes, 1.0);
            c.expect("cross_entropy loss", &loss, &[want.loss], sums);
            c.expect("cross_entropy lse", &lse, &want.lse, sums);
            assert_eq!(
                hits.to_f32_vec().unwrap(),
                [want.top1 as f32, want.top5 as f32]
            );
            let dlogits = selftest::poisoned(&b, &[batch, classes], dtype).unwrap();
            // lse as the forward pass stored it.
            b.cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 2.0, &dlogits)
                .unwrap();
            let want = r::cast(
                &r::cross_entropy_backward(&zv, &labelsv, None, 0.1, 2.0),
                dtype,
            );
            let what = format!("cross_entropy_backward {dtype}");
            c.expect(&what, &dlogits, &want, (OpClass::Reduction, classes, 0.0));
        }
    }
}

#[test]
fn attention_forward_and_backward() {
    let b = cpu();
    let mut c = Case::new(&b);
    for dtype in HALVES {
        for (batch, t, heads, head_dim, p) in
            [(1, 1, 1, 1, 0.0), (2, 17, 3, 5, 0.0), (3, 33, 2, 16, 0.2)]
        {
            let mut spec = AttentionSpec::new(batch, t, heads, head_dim);
            spec.dropout = p;
            spec.key = DropoutKey {
                seed: c.seed,
                step: 1,
                site: 2,
            };
            let dm = spec.d_model();
            let (qkv, qkvv) = c.tensor(batch * t * 3 * dm, dtype, 2.0);
            let (mask, maskv) = c.upload(&key_mask(batch, t, false), DType::F32);
            let out = c.poisoned(batch * t * dm, dtype);
            let lse = c.poisoned(batch * heads * t, DType::F32);
            b.attention(&qkv, &mask, &spec, &out, &lse).unwrap();
            let (want_out, want_lse) = r::attention(
                &qkvv, &maskv, batch, t, heads, head_dim, p as f64, &spec.key,
            );
            let n = t.max(head_dim);
            let what = format!("attention {batch}x{t}x{heads}x{head_dim} {dtype}");
            c.expect(
                &what,
                &out,
                &r::cast(&want_out, dtype),
                (OpClass::Reduction, n, 0.0),
            );
            c.expect(
                "attention lse",
                &lse,
                &want_lse,
                (OpClass::Reduction, n, 1.0),
            );

            let (dout, doutv) = c.tensor(batch * t * dm, dtype, 1.0);
            let dqkv = c.poisoned(batch * t * 3 * dm, dtype);
            b.attention_backward(&qkv, &mask, &spec, &out, &lse, &dout, &dqkv)
                .unwrap();
            let want = r::attention_backward_in(
                dtype, &qkvv, &maskv, &doutv, batch, t, heads, head_dim, p as f64, &spec.key,
            );
            let what = format!("attention_backward {batch}x{t}x{heads}x{head_dim} {dtype}");
            c.expect(&what, &dqkv, &want, (OpClass::Reduction, n, 0.0));
        }
    }
}

/// The error's message, which must name `operand`.
fn refused<T: std::fmt::Debug>(result: signflow::Result<T>, operand: &str) -> String {
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(operand), "{msg}");
    msg
}

/// Statistics, parameters, their gradients and losses stay f32 whatever the activations are
/// stored in; activations in two storage dtypes are refused, naming the operand.
#[test]
fn the_dtype_rule_refuses_what_it_does_not_allow() {
    let b = cpu();
    let t = |len: usize, dtype: DType| b.alloc(&[len], dtype).unwrap();
    let (h, bf, f) = (DType::F16, DType::Bf16, DType::F32);
    let spec = MatmulSpec::new(2, 2, 2);
    let msg = refused(b.matmul(&t(4, h), &t(4, bf), None, &t(4, h), &spec), "B");
    assert!(msg.contains("bf16") && msg.contains("f16"), "{msg}");
    refused(b.matmul(&t(4, h), &t(4, h), None, &t(4, bf), &spec), "C");
    refused(
        b.matmul(&t(4, h), &t(4, h), Some(&t(2, bf)), &t(4, h), &spec),
        "bias",
    );
    refused(
        b.matmul_bias_gelu(&t(4, h), &t(4, h), &t(2, f), &spec, &t(4, f), &t(4, f)),
        "pre",
    );
    refused(b.add(&t(4, h), &t(4, f), &t(4, h)), "input 1");
    refused(b.gelu(&t(4, bf), &t(4, h)), "out");
    refused(
        b.dropout(
            &t(4, h),
            0.5,
            &DropoutKey {
                seed: 0,
                step: 0,
                site: 0,
            },
            &t(4, f),
        ),
        "out",
    );
    refused(b.bias_grad(&t(4, h), &t(2, h)), "db");
    let (x, y) = (t(6, h), t(6, h));
    refused(
        b.layernorm(&x, &t(3, h), &t(3, f), 1e-5, &y, &t(2, f), &t(2, f)),
        "w",
    );
    refused(
        b.layernorm(&x, &t(3, f), &t(3, f), 1e-5, &y, &t(2, h), &t(2, f)),
        "mean",
    );
    refused(
        b.layernorm(&x, &t(3, f), &t(3, f), 1e-5, &t(6, bf), &t(2, f), &t(2, f)),
        "y",
    );
    refused(
        b.layernorm_backward(
            &x,
            &t(3, f),
            &t(2, f),
            &t(2, f),
            &t(6, h),
            &t(6, h),
            &t(3, h),
            &t(3, f),
        ),
        "dw",
    );
    let logits = b.alloc(&[2, 3], h).unwrap();
    let labels = t(2, f);
    refused(
        b.cross_entropy(&logits, &labels, None, 0.0, &t(1, h), &t(2, f), &t(2, f)),
        "loss",
    );
    refused(
        b.cross_entropy(&logits, &t(2, h), None, 0.0, &t(1, f), &t(2, f), &t(2, f)),
        "labels",
    );
    let dlogits = b.alloc(&[2, 3], bf).unwrap();
    refused(
        b.cross_entropy_backward(&logits, &labels, None, 0.0, &t(2, f), 1.0, &dlogits),
        "dlogits",
    );
    let spec = AttentionSpec::new(1, 2, 1, 2);
    let (qkv, out) = (t(12, h), t(4, h));
    refused(b.attention(&qkv, &t(2, f), &spec, &out, &t(2, h)), "lse");
    refused(
        b.attention(&qkv, &t(2, h), &spec, &out, &t(2, f)),
        "key_mask",
    );
    refused(
        b.attention_backward(&qkv, &t(2, f), &spec, &out, &t(2, f), &t(4, bf), &t(12, h)),
        "dout",
    );
    // The optimizer's ops are f32 throughout.
    let p = t(4, f);
    assert!(b
        .adamw(&p, &t(4, h), &t(4, f), &t(4, f), &AdamW::default(), 1)
        .is_err());
    assert!(b.grad_norm(&t(4, h), &t(1, f)).is_err());
    assert!(b.unscale_check(&t(4, bf), 1.0, &t(1, f)).is_err());
    assert!(b.clip_grads(&t(4, h), &t(1, f), 1.0).is_err());
    assert!(matches!(
        b.layernorm(&x, &t(3, h), &t(3, f), 1e-5, &y, &t(2, f), &t(2, f)),
        Err(Error::OperandDtype { .. })
    ));
}

/// A result beyond f16's range is stored as ±∞, as the format says (never NaN); bf16 has
/// f32's range and keeps it finite.
#[test]
fn f16_overflows_to_infinity() {
    let b = cpu();
    let c = Case::new(&b);
    let spec = MatmulSpec::new(2, 1, 2);
    for dtype in HALVES {
        let (a, _) = c.upload(&[300.0, 300.0, -300.0, -300.0], dtype);
        let (w, _) = c.upload(&[300.0, 300.0], dtype);
        let out = c.poisoned(2, dtype);
        b.matmul(&a, &w, None, &out, &spec).unwrap();
        let (x, _) = c.upload(&[60000.0, -60000.0, 1.0], dtype);
        let doubled = c.poisoned(3, dtype);
        b.add(&x, &x, &doubled).unwrap();
        let y = c.poisoned(3, dtype);
        let (mean, rstd) = (c.poisoned(1, DType::F32), c.poisoned(1, DType::F32));
        let (w3, _) = c.upload(&[1.0; 3], DType::F32);
        let (b3, _) = c.upload(&[0.0; 3], DType::F32);
        b.layernorm(&x, &w3, &b3, 1e-5, &y, &mean, &rstd).unwrap();
        let (product, sum) = (out.to_f32_vec().unwrap(), doubled.to_f32_vec().unwrap());
        let normed = y.to_f32_vec().unwrap();
        assert!(normed.iter().all(|v| v.is_finite()), "{dtype}: {normed:?}");
        if dtype == DType::F16 {
            assert_eq!(product, [f32::INFINITY, f32::NEG_INFINITY]);
            assert_eq!(sum, [f32::INFINITY, f32::NEG_INFINITY, 2.0]);
        } else {
            assert_eq!(product, [180_224.0, -180_224.0], "180000 in bf16");
            // 60000 is stored as 59904, whose double bf16 holds exactly.
            assert_eq!(sum, [119_808.0, -119_808.0, 2.0]);
        }
    }
}

/// Every op family's outputs, as bits, for one set of half-precision inputs.
fn half_outputs(b: &CpuBackend, dtype: DType, seed: u64) -> Vec<Vec<u32>> {
    let mut c = Case {
        b,
        inputs: Inputs::new(seed),
        seed,
    };
    let bits = |t: &Tensor<CpuBackend>| {
        let host = t.to_host().unwrap();
        host.as_bytes()
            .chunks(2)
            .map(|h| u16::from_le_bytes([h[0], h[1]]) as u32)
            .collect()
    };
    let spec = MatmulSpec::new(70, 90, 1030).transpose(true, false);
    let (a, _) = c.tensor(spec.a_len(), dtype, 1.0);
    let (w, _) = c.tensor(spec.b_len(), dtype, 1.0);
    let out = c.poisoned(spec.c_len(), dtype);
    b.matmul(&a, &w, None, &out, &spec).unwrap();
    let (rows, cols) = (700, 129);
    let (x, _) = c.tensor(rows * cols, dtype, 1.0);
    let (dy, _) = c.tensor(rows * cols, dtype, 1.0);
    let (gamma, _) = c.tensor(cols, DType::F32, 1.0);
    let (mean, rstd) = (c.poisoned(rows, DType::F32), c.poisoned(rows, DType::F32));
    let y = c.poisoned(rows * cols, dtype);
    b.layernorm(&x, &gamma, &gamma, 1e-5, &y, &mean, &rstd)
        .unwrap();
    let (dx, dw, db) = (
        c.poisoned(rows * cols, dtype),
        c.poisoned(cols, DType::F32),
        c.poisoned(cols, DType::F32),
    );
    b.layernorm_backward(&x, &gamma, &mean, &rstd, &dy, &dx, &dw, &db)
        .unwrap();
    let g = c.poisoned(rows * cols, dtype);
    b.gelu(&x, &g).unwrap();
    let mut spec = AttentionSpec::new(3, 40, 2, 8);
    spec.dropout = 0.1;
    let (qkv, _) = c.tensor(3 * 40 * 48, dtype, 1.0);
    let (mask, _) = c.upload(&key_mask(3, 40, false), DType::F32);
    let (o, lse) = (
        c.poisoned(3 * 40 * 16, dtype),
        c.poisoned(3 * 2 * 40, DType::F32),
    );
    b.attention(&qkv, &mask, &spec, &o, &lse).unwrap();
    let dqkv = c.poisoned(3 * 40 * 48, dtype);
    let (dout, _) = c.tensor(3 * 40 * 16, dtype, 1.0);
    b.attention_backward(&qkv, &mask, &spec, &o, &lse, &dout, &dqkv)
        .unwrap();
    let f32_bits = |t: &Tensor<CpuBackend>| {
        t.to_f32_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    vec![
        bits(&out),
        bits(&y),
        bits(&dx),
        f32_bits(&dw),
        f32_bits(&db),
        bits(&g),
        bits(&o),
        bits(&dqkv),
    ]
}

/// The same inputs give the same bits twice, and on one thread as on two.
#[test]
fn half_precision_is_deterministic_across_runs_and_threads() {
    let seed = seed();
    let b = cpu();
    let on = |threads: usize, dtype: DType| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| half_outputs(&b, dtype, seed))
    };
    for dtype in HALVES {
        let first = on(2, dtype);
        assert!(
            first == on(2, dtype),
            "seed {seed}: {dtype}: two runs differ"
        );
        assert!(
            first == on(1, dtype),
            "seed {seed}: {dtype}: one thread differs from two"
        );
    }
}

/// Until its f16 and bf16 kernels exist, the GPU refuses half-precision operands of the ops
/// that lack them, saying so, rather than misreading their 16-bit words; casts run.
#[test]
fn the_gpu_refuses_half_operands_it_has_no_kernels_for() {
    let g = gpu();
    let t = |len: usize, dtype: DType| g.alloc(&[len], dtype).unwrap();
    let (h, f) = (DType::F16, DType::F32);
    for result in [
        g.layernorm(
            &t(6, h),
            &t(3, f),
            &t(3, f),
            1e-5,
            &t(6, h),
            &t(2, f),
            &t(2, f),
        ),
        g.attention(
            &t(12, h),
            &t(2, f),
            &AttentionSpec::new(1, 2, 1, 2),
            &t(4, h),
            &t(2, f),
        ),
    ] {
        let msg = result.unwrap_err().to_string();
        assert!(msg.contains("f16") && msg.contains("issue 20"), "{msg}");
    }
    let x = g
        .upload(&HostTensor::from_f32(&[3], vec![1.0, -2.5, 3.0]).unwrap())
        .unwrap();
    let half = t(3, h);
    g.cast(&x, &half).unwrap();
    assert_eq!(half.to_f32_vec().unwrap(), [1.0, -2.5, 3.0]);
}

/// The half-precision tolerances grow from two roundings with the reduction's depth, up to
/// DESIGN.md's ceilings; the f32 ones stay what they were.
#[test]
fn tolerances_derive_from_the_unit_roundoff() {
    use signflow::tolerance::{tolerance, unit_roundoff};
    assert_eq!(tolerance(OpClass::Elementwise, DType::F32), 1e-5);
    assert_eq!(tolerance(OpClass::Reduction, DType::F32), 1e-4);
    assert_eq!(tolerance_for(OpClass::Reduction, DType::F32, 4096), 1e-4);
    for (dtype, u, ceiling) in [
        (DType::F16, 2f64.powi(-11), 5e-3),
        (DType::Bf16, 2f64.powi(-8), 3e-2),
    ] {
        assert_eq!(unit_roundoff(dtype), u);
        assert_eq!(
            tolerance_for(OpClass::Elementwise, dtype, 1),
            1e-5 + 2.0 * u
        );
        assert_eq!(tolerance_for(OpClass::Reduction, dtype, 8), 1e-4 + 5.0 * u);
        let along: Vec<f64> = [1, 2, 16, 64, 469, 1 << 20]
            .iter()
            .map(|&n| tolerance_for(OpClass::Reduction, dtype, n))
            .collect();
        assert!(along.windows(2).all(|w| w[0] <= w[1]), "{dtype}: {along:?}");
        assert_eq!(tolerance(OpClass::Reduction, dtype), ceiling);
    }
}

/// The reference's rounding backward pass, which takes rowsum(dO∘O) from the stored output,
/// is the exact one when nothing is rounded away (f32 storage, to f32's precision).
#[test]
fn the_rounding_attention_reference_matches_the_exact_one() {
    let mut inputs = Inputs::new(seed());
    let (batch, t, heads, head_dim) = (2, 9, 2, 4);
    let key = DropoutKey {
        seed: 5,
        step: 1,
        site: 0,
    };
    let dm = heads * head_dim;
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let qkv = widen(inputs.uniform(batch * t * 3 * dm));
    let dout = widen(inputs.uniform(batch * t * dm));
    let mask: Vec<f64> = key_mask(batch, t, true)
        .into_iter()
        .map(f64::from)
        .collect();
    for p in [0.0, 0.25] {
        let exact = r::attention_backward(&qkv, &mask, &dout, batch, t, heads, head_dim, p, &key);
        let stored = r::attention_backward_in(
            DType::F32,
            &qkv,
            &mask,
            &dout,
            batch,
            t,
            heads,
            head_dim,
            p,
            &key,
        );
        let got: Vec<f32> = stored.iter().map(|&v| v as f32).collect();
        assert!(Deviation::measure(&got, &exact).within(1e-6), "p = {p}");
    }
}
