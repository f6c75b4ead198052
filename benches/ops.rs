//! Criterion benchmarks of every op family in each storage precision (f32, f16, bf16) on the
//! CPU backend and on the best adapter. `signflow bench` reports the f32 cases as a table or
//! JSON; BENCHMARKS.md says how to run these and holds their figures.
//!
//! Benchmark ids read `family/backend/dtype/case`, so `cargo bench --bench ops -- layernorm`
//! or `-- /bf16/` picks a subset. Throughput is in elements (FLOPs for the products and
//! attention), the same for every dtype, so that the precisions compare directly. The long
//! attention shape runs only with `SIGNFLOW_BENCH_LONG=1`: minutes on a software adapter.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use signflow::bench::{MEMORY_ROWS, MODEL_WIDTH};
use signflow::model::{ModelConfig, ParamLayout};
use signflow::selftest::Inputs;
use signflow::{
    AdamW, Adapters, AttentionSpec, Backend, CpuBackend, DType, DropoutKey, Error, GpuBackend,
    GpuConfig, HostTensor, MatmulSpec, Result, Tensor,
};

/// Times ops on one backend: random inputs of any dtype, and one timing loop for every op.
struct Ops<'a, B: Backend> {
    b: &'a B,
    label: String,
    inputs: Inputs,
}

impl<B: Backend> Ops<'_, B> {
    /// Uniform values in [-1, 1), stored in `dtype`: never all zeros.
    fn random(&mut self, shape: &[usize], dtype: DType) -> Tensor<B> {
        let n = shape.iter().product();
        let host = HostTensor::from_f32_as(shape, &self.inputs.uniform(n), dtype).unwrap();
        self.b.upload(&host).unwrap()
    }

    fn filled(&self, shape: &[usize], dtype: DType, value: f32) -> Tensor<B> {
        self.b
            .upload(&HostTensor::filled(shape, dtype, value))
            .unwrap()
    }

    /// An output, its previous contents irrelevant.
    fn out(&self, shape: &[usize], dtype: DType) -> Tensor<B> {
        self.b.alloc(shape, dtype).unwrap()
    }

    /// Calls `op` once, then times it (each iteration waits for the device) as
    /// `family/backend/dtype/case`, at `elements` per call. An op the backend refuses in
    /// `dtype` is skipped with a note: the benchmark appears once the backend takes it.
    fn time(
        &self,
        c: &mut Criterion,
        family: &str,
        dtype: DType,
        case: &str,
        elements: f64,
        mut op: impl FnMut() -> Result<()>,
    ) {
        match op() {
            Ok(()) => {}
            Err(e @ Error::UnsupportedDtype { .. }) => {
                eprintln!("{family}/{}/{dtype}: not on this backend ({e})", self.label);
                return;
            }
            Err(e) => panic!("{family}/{}/{dtype}/{case}: {e}", self.label),
        }
        self.b.synchronize().unwrap();
        let mut group = c.benchmark_group(format!("{family}/{}", self.label));
        group.throughput(Throughput::Elements(elements as u64));
        group.bench_function(BenchmarkId::new(dtype.name(), case), |bench| {
            bench.iter(|| {
                op().unwrap();
                self.b.synchronize().unwrap();
            })
        });
        group.finish();
    }

    fn matmul(&mut self, c: &mut Criterion, sizes: &[(usize, usize, usize)]) {
        for dtype in DType::ALL {
            for &(m, n, k) in sizes {
                let spec = MatmulSpec::new(m, n, k);
                let (a, w) = (self.random(&[m, k], dtype), self.random(&[k, n], dtype));
                let out = self.out(&[m, n], dtype);
                let case = format!("{m}x{n}x{k}");
                self.time(c, "matmul", dtype, &case, spec.flops(), || {
                    self.b.matmul(&a, &w, None, &out, &spec)
                });
            }
        }
    }

    fn attention(&mut self, c: &mut Criterion, spec: &AttentionSpec) {
        let (batch, t, heads, dm) = (spec.batch, spec.seq, spec.heads, spec.d_model());
        let case = format!("b{batch}_t{t}_h{heads}_d{}", spec.head_dim);
        let mask = self.filled(&[batch, t], DType::F32, 1.0);
        let lse = self.out(&[batch, heads, t], DType::F32);
        for dtype in DType::ALL {
            let qkv = self.random(&[batch, t, 3 * dm], dtype);
            let dout = self.random(&[batch, t, dm], dtype);
            let (out, dqkv) = (
                self.out(&[batch, t, dm], dtype),
                self.out(&[batch, t, 3 * dm], dtype),
            );
            let flops = spec.forward_flops();
            self.time(c, "attention_forward", dtype, &case, flops, || {
                self.b.attention(&qkv, &mask, spec, &out, &lse)
            });
            // The forward's first call in `time` has filled `out` and `lse` for the backward.
            // FLOPs as `signflow bench` counts them: forward + backward = 3.5 forwards.
            self.time(c, "attention_backward", dtype, &case, 2.5 * flops, || {
                self.b
                    .attention_backward(&qkv, &mask, spec, &out, &lse, &dout, &dqkv)
            });
        }
    }

    /// Layer norm forward and backward over [`MEMORY_ROWS`] rows of [`MODEL_WIDTH`].
    fn layernorm(&mut self, c: &mut Criterion) {
        let (rows, width) = (MEMORY_ROWS, MODEL_WIDTH);
        let case = format!("{rows}x{width}");
        let (w, bias) = (
            self.random(&[width], DType::F32),
            self.random(&[width], DType::F32),
        );
        let (mean, rstd) = (self.out(&[rows], DType::F32), self.out(&[rows], DType::F32));
        let (dw, db) = (
            self.out(&[width], DType::F32),
            self.out(&[width], DType::F32),
        );
        let n = (rows * width) as f64;
        for dtype in DType::ALL {
            let (x, dy) = (
                self.random(&[rows, width], dtype),
                self.random(&[rows, width], dtype),
            );
            let (y, dx) = (
                self.out(&[rows, width], dtype),
                self.out(&[rows, width], dtype),
            );
            // The forward's first call in `time` has filled `mean` and `rstd` for the backward.
            self.time(c, "layernorm_forward", dtype, &case, n, || {
                self.b.layernorm(&x, &w, &bias, 1e-5, &y, &mean, &rstd)
            });
            self.time(c, "layernorm_backward", dtype, &case, n, || {
                self.b
                    .layernorm_backward(&x, &w, &mean, &rstd, &dy, &dx, &dw, &db)
            });
        }
    }

    /// GELU forward and backward, dropout and the bias gradient: the feed-forward layer's
    /// [`MEMORY_ROWS`] × [`MODEL_WIDTH`] activations.
    fn elementwise(&mut self, c: &mut Criterion) {
        let (rows, width) = (MEMORY_ROWS, MODEL_WIDTH);
        let case = format!("{rows}x{width}");
        let n = (rows * width) as f64;
        let key = DropoutKey {
            seed: 1,
            step: 1,
            site: 0,
        };
        let db = self.out(&[width], DType::F32);
        for dtype in DType::ALL {
            let (x, dy) = (
                self.random(&[rows, width], dtype),
                self.random(&[rows, width], dtype),
            );
            let out = self.out(&[rows, width], dtype);
            self.time(c, "gelu_forward", dtype, &case, n, || self.b.gelu(&x, &out));
            self.time(c, "gelu_backward", dtype, &case, n, || {
                self.b.gelu_backward(&x, &dy, &out)
            });
            self.time(c, "dropout", dtype, &case, n, || {
                self.b.dropout(&x, 0.1, &key, &out)
            });
            self.time(c, "bias_grad", dtype, &case, n, || {
                self.b.bias_grad(&dy, &db)
            });
        }
    }

    /// Mean pool forward and backward over the model's clips.
    fn mean_pool(&mut self, c: &mut Criterion, cfg: &ModelConfig, batch: usize) {
        let (t, d) = (cfg.max_seq_len, cfg.d_model);
        let case = format!("b{batch}_t{t}_d{d}");
        let mask = self.filled(&[batch, t], DType::F32, 1.0);
        let n = (batch * t * d) as f64;
        for dtype in DType::ALL {
            let (h, dout) = (
                self.random(&[batch, t, d], dtype),
                self.random(&[batch, d], dtype),
            );
            let (out, dh) = (
                self.out(&[batch, d], dtype),
                self.out(&[batch, t, d], dtype),
            );
            self.time(c, "mean_pool_forward", dtype, &case, n, || {
                self.b.mean_pool(&h, &mask, &out)
            });
            self.time(c, "mean_pool_backward", dtype, &case, n, || {
                self.b.mean_pool_backward(&dout, &mask, &dh)
            });
        }
    }

    /// Cross-entropy forward and backward (label smoothing on): the logits in each dtype,
    /// labels, loss and log-sum-exp f32.
    fn cross_entropy(&mut self, c: &mut Criterion, shapes: &[(usize, usize)]) {
        for &(batch, classes) in shapes {
            let case = format!("b{batch}_c{classes}");
            let labels: Vec<f32> = (0..batch).map(|i| ((i * 7) % classes) as f32).collect();
            let labels = self
                .b
                .upload(&HostTensor::from_f32(&[batch], labels).unwrap())
                .unwrap();
            let (loss, hits, lse) = (
                self.out(&[1], DType::F32),
                self.out(&[2], DType::F32),
                self.out(&[batch], DType::F32),
            );
            let n = (batch * classes) as f64;
            for dtype in DType::ALL {
                let logits = self.random(&[batch, classes], dtype);
                let dlogits = self.out(&[batch, classes], dtype);
                // The forward's first call in `time` has filled `lse` for the backward.
                self.time(c, "cross_entropy_forward", dtype, &case, n, || {
                    self.b
                        .cross_entropy(&logits, &labels, None, 0.1, &loss, &hits, &lse)
                });
                self.time(c, "cross_entropy_backward", dtype, &case, n, || {
                    self.b
                        .cross_entropy_backward(&logits, &labels, None, 0.1, &lse, 0.5, &dlogits)
                });
            }
        }
    }

    /// One AdamW step over `len` parameters. f32 only: master weights, gradients and moments
    /// stay f32 in mixed precision.
    fn adamw(&mut self, c: &mut Criterion, len: usize) {
        let [params, grads, m] = [(); 3].map(|_| self.random(&[len], DType::F32));
        let v = self.filled(&[len], DType::F32, 1e-4);
        let hp = AdamW::default();
        self.time(c, "adamw", DType::F32, &len.to_string(), len as f64, || {
            self.b.adamw(&params, &grads, &m, &v, &hp, 10)
        });
    }

    fn all(&mut self, c: &mut Criterion, square: &[usize]) {
        let cfg = ModelConfig::default();
        let batch = 32;
        let rows = batch * cfg.max_seq_len;
        // The feed-forward layer's first product at batch 32, then square ones.
        let mut sizes = vec![(rows, cfg.ff_dim, cfg.d_model)];
        sizes.extend(square.iter().map(|&s| (s, s, s)));
        self.matmul(c, &sizes);
        self.attention(c, &AttentionSpec::new(32, 64, 8, 32));
        if std::env::var_os("SIGNFLOW_BENCH_LONG").is_some() {
            self.attention(c, &AttentionSpec::new(8, 1024, 16, 64));
        }
        self.layernorm(c);
        self.elementwise(c);
        self.mean_pool(c, &cfg, batch);
        self.cross_entropy(c, &[(batch, cfg.num_classes), (MEMORY_ROWS, 1000)]);
        self.adamw(c, ParamLayout::new(&cfg).count());
    }
}

fn ops(c: &mut Criterion) {
    let cpu = CpuBackend::default();
    Ops {
        b: &cpu,
        label: "cpu".into(),
        inputs: Inputs::new(1),
    }
    .all(c, &[256, 1024]);
    let adapters = Adapters::discover();
    if let Some((adapter, info)) = adapters.adapter(0) {
        let gpu = GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap();
        let square: &[usize] = if info.software { &[256] } else { &[256, 4096] };
        Ops {
            b: &gpu,
            label: info.name.clone(),
            inputs: Inputs::new(1),
        }
        .all(c, square);
    }
}

criterion_group! {
    name = benches;
    // Few, short samples: every family in three precisions on two backends stays within
    // minutes on a small machine; `-- --quick` shortens it further.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = ops
}
criterion_main!(benches);
