//! The CPU backend and the first GPU adapter in f16 and bf16 storage against the f64 reference fed the same rounded
//! inputs and rounding where the kernels store (`signflow::reference`), within the
//! tolerances `signflow::tolerance` derives from each format's unit roundoff; the dtype rule
//! of every op (`Backend`'s docs); overflow to infinity; determinism.

use signflow::backend::AttentionSpec;
use signflow::reference as r;
use signflow::selftest::{self, Inputs, HALVES};
use signflow::tolerance::{tolerance_for, Deviation, OpClass};
use signflow::{
    AdamW, Backend, CpuBackend, DType, DropoutKey, Error, GpuBackend, HostTensor, MatmulSpec,
    Tensor,
};

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

    /// [`Case::tensor`] viewed as `shape` from element `offset` (even) on.
    fn tensor_at(
        &mut self,
        offset: usize,
        shape: &[usize],
        dtype: DType,
        scale: f32,
    ) -> (Tensor<B>, Vec<f64>) {
        let len = shape.iter().product::<usize>();
        let (t, values) = self.tensor(offset + len, dtype, scale);
        (t.view(offset, shape).unwrap(), values[offset..].to_vec())
    }

    /// [`Case::poisoned`] viewed as `shape` from element `offset` (even) on.
    fn poisoned_at(&self, offset: usize, shape: &[usize], dtype: DType) -> Tensor<B> {
        let len = shape.iter().product::<usize>();
        let t = self.poisoned(offset + len, dtype);
        t.view(offset, shape).unwrap()
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
    bias_grad_sums_half_rows_into_f32,
    layernorm_forward_and_backward,
    mean_pool_forward_and_backward,
    cross_entropy_of_half_logits,
    norms_pools_and_losses_repeat_their_bits,
    attention_forward_and_backward,
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

/// Odd row lengths put a row's last element and the next row's first in one 32-bit word;
/// views start at element 0 or 2 of their buffer.
fn bias_grad_sums_half_rows_into_f32<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (case, (rows, cols)) in [(1, 1), (3, 17), (129, 65), (300, 469), (70, 64)]
            .into_iter()
            .enumerate()
        {
            let at = 2 * (case % 2);
            let (dy, dyv) = c.tensor_at(at, &[rows * cols], dtype, 1.0);
            let db = c.poisoned_at(at, &[cols], DType::F32);
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

fn layernorm_forward_and_backward<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (case, (rows, cols)) in [(1, 1), (5, 3), (17, 65), (130, 469), (9, 64)]
            .into_iter()
            .enumerate()
        {
            let at = 2 * (case % 2);
            let (x, xv) = c.tensor_at(at, &[rows * cols], dtype, 3.0);
            let (w, wv) = c.tensor(cols, DType::F32, 1.0);
            let (bias, bv) = c.tensor(cols, DType::F32, 1.0);
            let y = c.poisoned_at(at, &[rows * cols], dtype);
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
            let (dy, dyv) = c.tensor_at(at, &[rows * cols], dtype, 1.0);
            let dx = c.poisoned_at(at, &[rows * cols], dtype);
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

/// Odd d puts the end of one clip's (or frame's) row and the start of the next in one word.
fn mean_pool_forward_and_backward<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (case, (batch, t, d)) in [(1, 1, 1), (3, 5, 17), (4, 33, 65), (3, 4, 8)]
            .into_iter()
            .enumerate()
        {
            let at = 2 * (case % 2);
            let (h, hv) = c.tensor_at(at, &[batch, t, d], dtype, 2.0);
            let mask_values = key_mask(batch, t, batch > 1);
            let (mask, maskv) = c.upload(&mask_values, DType::F32);
            let mask = mask.view(0, &[batch, t]).unwrap();
            let out = c.poisoned_at(at, &[batch, d], dtype);
            b.mean_pool(&h, &mask, &out).unwrap();
            let want = r::cast(&r::mean_pool(&hv, &maskv, batch, d), dtype);
            c.expect(
                &format!("mean_pool {dtype}"),
                &out,
                &want,
                (OpClass::Elementwise, t, 0.0),
            );
            let (dout, doutv) = c.tensor_at(at, &[batch, d], dtype, 1.0);
            let dh = c.poisoned_at(at, &[batch, t, d], dtype);
            b.mean_pool_backward(&dout, &mask, &dh).unwrap();
            let want = r::cast(&r::mean_pool_backward(&doutv, &maskv, batch, d), dtype);
            let what = format!("mean_pool_backward {dtype}");
            c.expect(&what, &dh, &want, (OpClass::Elementwise, 1, 0.0));
        }
    }
}

/// Odd class counts put a row's last logit and the next row's first in one word; the gradient
/// also overwrites the logits in place.
fn cross_entropy_of_half_logits<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (case, (batch, classes)) in [(1, 1), (3, 7), (5, 33), (33, 250)].into_iter().enumerate()
        {
            let at = 2 * (case % 2);
            let (logits, zv) = c.tensor_at(at, &[batch, classes], dtype, 4.0);
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
            let dlogits = c.poisoned_at(at, &[batch, classes], dtype);
            // lse as the forward pass stored it.
            b.cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 2.0, &dlogits)
                .unwrap();
            let want = r::cast(
                &r::cross_entropy_backward(&zv, &labelsv, None, 0.1, 2.0),
                dtype,
            );
            let what = format!("cross_entropy_backward {dtype}");
            let sums = (OpClass::Reduction, classes, 0.0);
            c.expect(&what, &dlogits, &want, sums);
            b.cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 2.0, &logits)
                .unwrap();
            c.expect(&format!("{what} in place"), &logits, &want, sums);
        }
    }
}

/// Layer norm, its column sums, mean pool and cross-entropy give the same bits twice: fixed
/// reduction orders, and a word shared by two rows' ends keeps both halves whichever row's
/// workgroup writes first.
fn norms_pools_and_losses_repeat_their_bits<B: Backend>(b: &B) {
    let seed = seed();
    let outputs = |dtype: DType| {
        let mut c = Case {
            b,
            inputs: Inputs::new(seed),
            seed,
        };
        let (rows, cols) = (67, 129);
        let (x, _) = c.tensor(rows * cols, dtype, 2.0);
        let (dy, _) = c.tensor(rows * cols, dtype, 1.0);
        let (w, _) = c.tensor(cols, DType::F32, 1.0);
        let (y, dx) = (
            c.poisoned(rows * cols, dtype),
            c.poisoned(rows * cols, dtype),
        );
        let (mean, rstd) = (c.poisoned(rows, DType::F32), c.poisoned(rows, DType::F32));
        let [dw, db, bias_db] = [(); 3].map(|()| c.poisoned(cols, DType::F32));
        b.layernorm(&x, &w, &w, 1e-5, &y, &mean, &rstd).unwrap();
        b.layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)
            .unwrap();
        b.bias_grad(&dy, &bias_db).unwrap();
        let (batch, t, d) = (5, 9, 33);
        let (h, _) = c.tensor_at(0, &[batch, t, d], dtype, 2.0);
        let (mask, _) = c.upload(&key_mask(batch, t, true), DType::F32);
        let mask = mask.view(0, &[batch, t]).unwrap();
        let (pooled, dh) = (
            c.poisoned_at(0, &[batch, d], dtype),
            c.poisoned_at(0, &[batch, t, d], dtype),
        );
        b.mean_pool(&h, &mask, &pooled).unwrap();
        b.mean_pool_backward(&pooled, &mask, &dh).unwrap();
        let (logits, _) = c.tensor_at(0, &[17, 33], dtype, 4.0);
        let labels: Vec<f32> = (0..17).map(|i| (i * 5 % 33) as f32).collect();
        let (labels, _) = c.upload(&labels, DType::F32);
        let (loss, hits, lse) = (
            c.poisoned(1, DType::F32),
            c.poisoned(2, DType::F32),
            c.poisoned(17, DType::F32),
        );
        b.cross_entropy(&logits, &labels, None, 0.1, &loss, &hits, &lse)
            .unwrap();
        let dlogits = c.poisoned_at(0, &[17, 33], dtype);
        b.cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 1.0, &dlogits)
            .unwrap();
        [
            &y, &mean, &rstd, &dx, &dw, &db, &bias_db, &pooled, &dh, &loss, &lse, &dlogits,
        ]
        .map(|t| {
            let values = t.to_f32_vec().unwrap();
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        })
    };
    for dtype in HALVES {
        assert!(
            outputs(dtype) == outputs(dtype),
            "seed {seed}: {dtype}: two runs differ"
        );
    }
}

/// Half-precision operands of an attention, each a view two elements into a buffer one element
/// longer than it (so that a row straddles words and an odd length ends mid-word).
const ATTENTION_LEAD: usize = 2;

/// A view of `len` elements of `whole` at [`ATTENTION_LEAD`].
fn attention_view<B: Backend>(whole: &Tensor<B>, len: usize) -> Tensor<B> {
    whole.view(ATTENTION_LEAD, &[len]).unwrap()
}

/// The elements of `whole` around its attention view are the poison it was filled with.
fn attention_neighbours_untouched<B: Backend>(what: &str, whole: &Tensor<B>) {
    let v = whole.to_f32_vec().unwrap();
    let around = [0, 1, v.len() - 1];
    assert!(around.iter().all(|&i| v[i].is_nan()), "{what}: {v:?}");
}

/// The bits of a tensor's values.
fn attention_bits<B: Backend>(t: &Tensor<B>) -> Vec<u32> {
    t.to_f32_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Ragged masks and fully masked clips, odd head sizes (element by element) and even ones
/// (a word at a time, whole vec4s and a half one), with and without dropout; on views whose
/// neighbours must stay untouched; the same bits on a second run.
fn attention_forward_and_backward<B: Backend>(b: &B) {
    let mut c = Case::new(b);
    for dtype in HALVES {
        for (batch, t, heads, head_dim, p, empty) in [
            (1, 1, 1, 1, 0.0, false),
            (2, 17, 3, 5, 0.0, true),
            (3, 33, 2, 16, 0.2, false),
            (2, 9, 2, 6, 0.1, true),
        ] {
            let mut spec = AttentionSpec::new(batch, t, heads, head_dim);
            spec.dropout = p;
            spec.key = DropoutKey {
                seed: c.seed,
                step: 1,
                site: 2,
            };
            let dm = spec.d_model();
            let (rows1, rows3) = (batch * t * dm, batch * t * 3 * dm);
            let padded = |len: usize| len + ATTENTION_LEAD + 1;
            let (qkv, qkvv) = c.tensor(padded(rows3), dtype, 2.0);
            let (qkv, qkvv) = (
                attention_view(&qkv, rows3),
                &qkvv[ATTENTION_LEAD..][..rows3],
            );
            let (mask, maskv) = c.upload(&key_mask(batch, t, empty), DType::F32);
            let run_forward = || {
                let out = c.poisoned(padded(rows1), dtype);
                let lse = c.poisoned(batch * heads * t, DType::F32);
                b.attention(&qkv, &mask, &spec, &attention_view(&out, rows1), &lse)
                    .unwrap();
                (out, lse)
            };
            let (out_whole, lse) = run_forward();
            let out = attention_view(&out_whole, rows1);
            let (want_out, want_lse) =
                r::attention(qkvv, &maskv, batch, t, heads, head_dim, p as f64, &spec.key);
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
            attention_neighbours_untouched(&what, &out_whole);
            let (again, again_lse) = run_forward();
            let again = attention_view(&again, rows1);
            assert!(
                attention_bits(&again) == attention_bits(&out)
                    && attention_bits(&again_lse) == attention_bits(&lse),
                "seed {}: {what}: a second run differs",
                c.seed
            );

            let (dout, doutv) = c.tensor(padded(rows1), dtype, 1.0);
            let (dout, doutv) = (
                attention_view(&dout, rows1),
                &doutv[ATTENTION_LEAD..][..rows1],
            );
            let run_backward = || {
                let dqkv = c.poisoned(padded(rows3), dtype);
                let view = attention_view(&dqkv, rows3);
                b.attention_backward(&qkv, &mask, &spec, &out, &lse, &dout, &view)
                    .unwrap();
                dqkv
            };
            let dqkv_whole = run_backward();
            let dqkv = attention_view(&dqkv_whole, rows3);
            let want = r::attention_backward_in(
                dtype, qkvv, &maskv, doutv, batch, t, heads, head_dim, p as f64, &spec.key,
            );
            let what = format!("attention_backward {batch}x{t}x{heads}x{head_dim} {dtype}");
            c.expect(&what, &dqkv, &want, (OpClass::Reduction, n, 0.0));
            attention_neighbours_untouched(&what, &dqkv_whole);
            assert!(
                attention_bits(&attention_view(&run_backward(), rows3)) == attention_bits(&dqkv),
                "seed {}: {what}: a second run differs",
                c.seed
            );
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

/// f16 kernels need SHADER_F16: an adapter without it (GL here) refuses f16 operands, naming
/// bf16, and runs bf16. (Where every adapter has SHADER_F16 there is nothing to check.)
#[test]
fn an_adapter_without_shader_f16_refuses_f16_and_runs_bf16() {
    let adapters = signflow::Adapters::discover();
    let mut index = 0;
    while let Some((adapter, info)) = adapters.adapter(index) {
        index += 1;
        if info.precisions.contains(&DType::F16) {
            continue;
        }
        let g = GpuBackend::new(adapter, info.clone(), &signflow::GpuConfig::default())
            .expect("the adapter opens");
        let x = g
            .upload(&HostTensor::from_f32(&[3], vec![1.0, -2.5, 3.0]).unwrap())
            .unwrap();
        let [h, hb] = [DType::F16, DType::Bf16].map(|d| g.alloc(&[3], d).unwrap());
        let msg = g.scale(&h, 2.0, &h).unwrap_err().to_string();
        assert!(msg.contains("SHADER_F16") && msg.contains("bf16"), "{msg}");
        g.cast(&x, &hb).unwrap();
        g.scale(&hb, 2.0, &hb).unwrap();
        assert_eq!(hb.to_f32_vec().unwrap(), [2.0, -5.0, 6.0], "{}", info.name);
    }
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
