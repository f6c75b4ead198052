//! `signflow bench`: median times and throughput of the ops on one device
//! (DESIGN.md, Benchmarks and measuring). Inputs are random, never all zeros; work is warmed
//! up first; each sample times enough calls to dwarf the cost of waiting for the device.

pub mod seed;

use std::time::{Duration, Instant};

use crate::backend::{AdamW, AttentionSpec, Backend, DropoutKey, KernelTime, MatmulSpec};
use crate::data::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::{DropoutStep, ModelConfig, SignTransformer, Workspace};
use crate::ops::Op;
use crate::selftest::{Inputs, HALVES};
use crate::tensor::{HostTensor, Tensor};
use crate::train::{LossScaler, Optimizer, TrainingConfig};
use seed::{PredictionMode, SeedPlan, PRECISIONS};

/// One line of `signflow bench --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub op: Op,
    pub dtype: DType,
    /// Adapter name, or the CPU's.
    pub device: String,
    /// `cpu`, or the graphics API.
    pub backend: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Bytes read plus bytes written by one call (memory-bound ops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// `bytes` per second, in units of 10^9.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gbps: Option<f64>,
    /// Memory-bound ops: this op's time over a copy's of the same number of bytes, the median
    /// of the ratios of samples taken in alternation with a copy (1 is the memory's speed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_copy: Option<f64>,
    /// Device time by kernel for one call, largest first, where [`BenchBudget::kernel_times`]
    /// asked for it and the device can time its kernels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<KernelTime>,
    /// [`Op::HostRecord`] rows: the work whose recording was timed (`train_step`, `predict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case: Option<Op>,
    /// [`Op::HostRecord`] rows: the median host time, as `median_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ms: Option<f64>,
    /// [`Op::Predictions1000`] rows: one clip at a time, or in batches of `batch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<PredictionMode>,
    /// [`Op::Predictions1000`] rows: the clips predicted (1,000 from `signflow bench`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clips: Option<usize>,
    /// [`Op::Predictions1000`] rows: the wall-clock time of all the predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// [`Op::Predictions1000`] rows: the median and the 99th percentile time per prediction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// [`Op::Train50x10k`] rows: the median training step, and 50 epochs of
    /// ⌈10,000 / batch⌉ of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected_s: Option<f64>,
    /// [`Op::Train50x10k`] rows: the time per step of a short real training run, which the
    /// projection from `step_ms` is checked against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_step_ms: Option<f64>,
    /// Peak memory allocated while the case ran, in MiB.
    pub peak_mb: f64,
    pub timer: Timer,
}

/// How long to measure each case.
#[derive(Debug, Clone, Copy)]
pub struct BenchBudget {
    /// Samples to take (the median of these is reported).
    pub samples: usize,
    /// Each sample repeats the op until it lasts at least this long.
    pub min_sample: Duration,
    /// Stop taking samples (after at least three) once a case has run this long.
    pub max_case: Duration,
    /// Also time each kernel by the device's clock ([`BenchRow::kernels`]); the rows' own
    /// times are then taken with that timing on.
    pub kernel_times: bool,
}

impl Default for BenchBudget {
    fn default() -> Self {
        BenchBudget {
            samples: 9,
            min_sample: Duration::from_millis(20),
            max_case: Duration::from_secs(4),
            kernel_times: false,
        }
    }
}

/// How a bench row was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// The device's own clock (GPU timestamp queries around the recorded work).
    DeviceTimestamps,
    /// The wall clock around the work and a wait for the device.
    WallClock,
}

/// One case's samples: per-call times in ms, how they were timed, and the kernels of one call.
struct Samples {
    times: Vec<f64>,
    timer: Timer,
    kernels: Vec<KernelTime>,
}

/// Per-call times in ms of `f`: one warm-up call, then samples of as many calls as make a
/// sample last `min_sample`, each timed by the device's clock where it has one, else by the
/// wall clock up to the end of a wait for the device.
fn time<B: Backend>(
    b: &B,
    budget: &BenchBudget,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Samples> {
    let [samples] = time_alternating(b, budget, [&mut f])?;
    Ok(samples)
}

/// [`time`] for several functions at once, their samples taken in turn (one of each, then
/// again), so that all of them see the machine in the same states: on a shared machine whose
/// memory speed drifts, the ratio of two such series is steadier than either.
fn time_alternating<B: Backend, const N: usize>(
    b: &B,
    budget: &BenchBudget,
    mut fs: [&mut dyn FnMut() -> Result<()>; N],
) -> Result<[Samples; N]> {
    let mut reps = [0usize; N];
    for (f, reps) in fs.iter_mut().zip(&mut reps) {
        let start = Instant::now();
        f()?;
        b.synchronize()?;
        let first = start.elapsed().max(Duration::from_micros(1));
        *reps = (budget.min_sample.as_secs_f64() / first.as_secs_f64())
            .ceil()
            .clamp(1.0, 1000.0) as usize;
    }
    let timing_kernels = budget.kernel_times && b.time_kernels(true);
    let mut out: [Samples; N] = std::array::from_fn(|_| Samples {
        times: Vec::new(),
        timer: Timer::WallClock,
        kernels: Vec::new(),
    });
    let mut calls = [0usize; N];
    let case_start = Instant::now();
    let mut taken = 0;
    while taken < budget.samples.max(1) && (taken < 3 || case_start.elapsed() < budget.max_case) {
        for (i, (f, &reps)) in fs.iter_mut().zip(&reps).enumerate() {
            if timing_kernels {
                b.take_kernel_times()?; // the warm-up's, or another function's
            }
            let t = Instant::now();
            let device_ms = b.device_time_ms(&mut || (0..reps).try_for_each(|_| f()))?;
            b.synchronize()?;
            let ms = match device_ms {
                Some(ms) => {
                    out[i].timer = Timer::DeviceTimestamps;
                    ms
                }
                None => t.elapsed().as_secs_f64() * 1e3,
            };
            out[i].times.push(ms / reps as f64);
            if timing_kernels {
                add_kernel_times(&mut out[i].kernels, b.take_kernel_times()?);
                calls[i] += reps;
            }
        }
        taken += 1;
    }
    if timing_kernels {
        b.time_kernels(false);
        for (samples, &calls) in out.iter_mut().zip(&calls) {
            for k in &mut samples.kernels {
                k.calls /= calls as f64;
                k.ms /= calls as f64;
            }
            samples.kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        }
    }
    Ok(out)
}

fn add_kernel_times(sums: &mut Vec<KernelTime>, more: Vec<KernelTime>) {
    for k in more {
        match sums.iter_mut().find(|s| s.kernel == k.kernel) {
            Some(s) => {
                s.calls += k.calls;
                s.ms += k.ms;
            }
            None => sums.push(k),
        }
    }
}

/// The value at fraction `q` of the sorted values (nearest rank).
pub(crate) fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median of `values` (not empty).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn row<B: Backend>(
    b: &B,
    op: Op,
    dtype: DType,
    Samples {
        times,
        timer,
        kernels,
    }: Samples,
) -> BenchRow {
    BenchRow {
        op,
        dtype,
        device: b.info().name.clone(),
        backend: b.info().backend.clone(),
        median_ms: median(&times),
        min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
        max_ms: times.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        m: None,
        n: None,
        k: None,
        batch: None,
        seq: None,
        heads: None,
        head_dim: None,
        bytes: None,
        gflops: None,
        gbps: None,
        vs_copy: None,
        case: None,
        host_ms: None,
        mode: None,
        clips: None,
        total_ms: None,
        p50_ms: None,
        p99_ms: None,
        step_ms: None,
        projected_s: None,
        run_step_ms: None,
        peak_mb: b.memory_stats().peak_allocated_bytes as f64 / (1024.0 * 1024.0),
        timer,
        kernels,
    }
}

fn random<B: Backend>(b: &B, inputs: &mut Inputs, shape: &[usize]) -> Result<Tensor<B>> {
    random_in(b, inputs, shape, DType::F32)
}

fn random_in<B: Backend>(
    b: &B,
    inputs: &mut Inputs,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor<B>> {
    let n = shape.iter().product();
    b.upload(&HostTensor::from_f32_as(shape, &inputs.uniform(n), dtype)?)
}

/// The matrix product sizes: squares (4096³ only on hardware GPUs, where it takes
/// milliseconds rather than minutes), then the model's shapes (M = batch 32 × 64 frames).
pub fn matmul_sizes<B: Backend>(b: &B) -> Vec<(usize, usize, usize)> {
    let info = b.info();
    let mut sizes: Vec<_> = [256, 512, 1024, 2048].iter().map(|&s| (s, s, s)).collect();
    if info.backend != "cpu" && !info.software {
        sizes.push((4096, 4096, 4096));
    }
    sizes.extend(MODEL_MATMULS);
    sizes
}

/// The model's products (M = batch 32 × 64 frames), also timed in each half precision.
const MODEL_MATMULS: [(usize, usize, usize); 4] = [
    (2048, 256, 469),
    (2048, 768, 256),
    (2048, 1024, 256),
    (2048, 256, 1024),
];

/// A product with its operands and result stored in `dtype`.
pub fn bench_matmul<B: Backend>(
    b: &B,
    (m, n, k): (usize, usize, usize),
    dtype: DType,
    budget: &BenchBudget,
    inputs: &mut Inputs,
) -> Result<BenchRow> {
    b.empty_cache();
    b.reset_peak_memory_stats();
    let x = random_in(b, inputs, &[m, k], dtype)?;
    let w = random_in(b, inputs, &[k, n], dtype)?;
    let out = b.alloc(&[m, n], dtype)?;
    let spec = MatmulSpec::new(m, n, k);
    let times = time(b, budget, || b.matmul(&x, &w, None, &out, &spec))?;
    let mut r = row(b, Op::Matmul, dtype, times);
    r.m = Some(m);
    r.n = Some(n);
    r.k = Some(k);
    r.gflops = Some(spec.flops() / (r.median_ms * 1e-3) / 1e9);
    Ok(r)
}

/// The model at the reference's default configuration (100 classes), ready to run the work
/// of one training step or one prediction, as `shared/peers/torch_cpu.py` times PyTorch: a
/// training step at batch 32 × 64 frames (forward with dropout, loss, backward, clipping,
/// AdamW; peak memory counts the parameters, gradients, moments and every activation), and a
/// single clip's prediction. A training step in f16 or bf16 is a mixed-precision step, as
/// `signflow train --amp` takes it (in f16 with its loss scaling).
pub(crate) struct ModelCase<B: Backend> {
    model: SignTransformer<B>,
    ws: Workspace<B>,
    /// Present for a training step.
    optimizer: Option<(Optimizer<B>, LossScaler<B>)>,
    step: u64,
    batch: usize,
    seq: usize,
    dtype: DType,
}

impl<B: Backend> ModelCase<B> {
    /// The benchmark's case: the default model, a training step at batch 32 or one clip's
    /// prediction, at its full length, in `dtype`.
    fn standard(b: &B, training: bool, dtype: DType, inputs: &mut Inputs) -> Result<ModelCase<B>> {
        let cfg = ModelConfig::default();
        let (batch, seq) = (if training { 32 } else { 1 }, cfg.max_seq_len);
        Self::new(b, cfg, batch, seq, training, dtype, inputs)
    }

    /// A fresh model of `cfg` on `b` with a random batch of `batch` clips of `seq` frames
    /// loaded, and an optimizer when `training`.
    pub(crate) fn new(
        b: &B,
        cfg: ModelConfig,
        batch: usize,
        seq: usize,
        training: bool,
        dtype: DType,
        inputs: &mut Inputs,
    ) -> Result<ModelCase<B>> {
        let mut model = SignTransformer::new(b, cfg.clone(), 0)?;
        if !training {
            // As InferencePipeline predicts.
            model.pack_weights(b)?;
        }
        model.set_precision(b, dtype)?;
        let ws = Workspace::new_in(b, &cfg, batch, seq, training, dtype)?;
        let input = Batch {
            features: inputs.uniform(batch * seq * cfg.num_features),
            mask: vec![1.0; batch * seq],
            labels: (0..batch).map(|i| i % cfg.num_classes).collect(),
            batch,
            seq,
            num_features: cfg.num_features,
        };
        let ids: Vec<usize> = (0..batch).collect();
        ws.load(b, &cfg, &input, &ids)?;
        let optimizer = training
            .then(|| {
                let amp = TrainingConfig::default();
                let scaler =
                    LossScaler::new(b, dtype, amp.amp_init_scale as f32, amp.amp_growth_interval)?;
                Ok::<_, Error>((Optimizer::new(b, &model)?, scaler))
            })
            .transpose()?;
        Ok(ModelCase {
            model,
            ws,
            optimizer,
            step: 0,
            batch,
            seq,
            dtype,
        })
    }

    /// Records one training step, or one prediction.
    pub(crate) fn run(&mut self, b: &B) -> Result<()> {
        let Some((optimizer, scaler)) = &mut self.optimizer else {
            return self.model.forward(b, &self.ws, None);
        };
        self.step += 1;
        let dropout = Some(DropoutStep {
            seed: 0,
            step: self.step,
        });
        self.model.forward(b, &self.ws, dropout)?;
        self.model.loss(b, &self.ws, 0.0)?;
        self.model
            .backward(b, &self.ws, 0.0, scaler.scale(), dropout)?;
        scaler.unscale(b, &self.model.grads().all)?;
        if scaler.update()? {
            return Ok(());
        }
        optimizer.step(
            b,
            &self.model,
            &self.model.grads().all,
            &AdamW::default(),
            1.0,
        )
    }

    /// A row of `op` for this case, its sizes filled in.
    fn row(&self, b: &B, op: Op, samples: Samples) -> BenchRow {
        let cfg = self.model.config();
        let mut r = row(b, op, self.dtype, samples);
        r.batch = Some(self.batch);
        r.seq = Some(self.seq);
        r.heads = Some(cfg.num_heads);
        r.head_dim = Some(cfg.head_dim());
        r
    }
}

/// A training step ([`Op::TrainStep`]) or a prediction ([`Op::Predict`]) of [`ModelCase`] in
/// `dtype`.
pub fn bench_model<B: Backend>(
    b: &B,
    op: Op,
    dtype: DType,
    budget: &BenchBudget,
    inputs: &mut Inputs,
) -> Result<BenchRow> {
    b.empty_cache();
    b.reset_peak_memory_stats();
    let mut case = ModelCase::standard(b, op == Op::TrainStep, dtype, inputs)?;
    let times = time(b, budget, || case.run(b))?;
    Ok(case.row(b, op, times))
}

/// The host's side of `op` ([`Op::TrainStep`] or [`Op::Predict`]): the wall-clock time to
/// record one call's device work and submit it, without waiting for the device, which is idle
/// when each sample starts. Warmed up first (kernels compiled, buffers pooled).
pub fn bench_host_record<B: Backend>(
    b: &B,
    op: Op,
    budget: &BenchBudget,
    inputs: &mut Inputs,
) -> Result<BenchRow> {
    const WARM_UP: usize = 2;
    b.empty_cache();
    b.reset_peak_memory_stats();
    let mut case = ModelCase::standard(b, op == Op::TrainStep, DType::F32, inputs)?;
    for _ in 0..WARM_UP {
        case.run(b)?;
        b.synchronize()?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < budget.samples.max(1)
        && (times.len() < 3 || start.elapsed() < budget.max_case)
    {
        let t = Instant::now();
        case.run(b)?;
        b.flush();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        b.synchronize()?;
    }
    let samples = Samples {
        times,
        timer: Timer::WallClock,
        kernels: Vec::new(),
    };
    let mut r = case.row(b, Op::HostRecord, samples);
    r.case = Some(op);
    r.host_ms = Some(r.median_ms);
    Ok(r)
}

/// A call to time.
type Timed<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// An op, its dtype, the bytes one call moves, and the call.
type MemoryCase<'a> = (Op, DType, u64, Timed<'a>);

/// Memory-bound ops on `elements` f32 values (the activations' elementwise ones also in each
/// half precision), those that `wanted`: copy (the ceiling), then each op timed in alternation
/// with a copy of as many bytes ([`BenchRow::vs_copy`]).
pub fn bench_memory_ops<B: Backend>(
    b: &B,
    elements: usize,
    budget: &BenchBudget,
    inputs: &mut Inputs,
    wanted: impl Fn(Op) -> bool,
) -> Result<Vec<BenchRow>> {
    b.empty_cache();
    b.reset_peak_memory_stats();
    let x = random(b, inputs, &[elements])?;
    let y = random(b, inputs, &[elements])?;
    let out = b.alloc(&[elements], DType::F32)?;
    let half = b.alloc(&[elements], DType::F16)?;
    let f32_bytes = 4 * elements as u64;
    // The row-wise ops see the tensors as [rows, MODEL_WIDTH].
    let cols = MODEL_WIDTH.min(elements);
    let rows = elements / cols;
    let (x2, y2, out2) = (
        x.reshape(&[rows, cols])?,
        y.reshape(&[rows, cols])?,
        out.reshape(&[rows, cols])?,
    );
    let (w, bias) = (random(b, inputs, &[cols])?, random(b, inputs, &[cols])?);
    let (mean, rstd) = (b.alloc(&[rows], DType::F32)?, b.alloc(&[rows], DType::F32)?);
    let (dw, db) = (b.alloc(&[cols], DType::F32)?, b.alloc(&[cols], DType::F32)?);
    b.layernorm(&x2, &w, &bias, 1e-5, &out2, &mean, &rstd)?;
    let (m, v) = (
        random(b, inputs, &[elements])?,
        random(b, inputs, &[elements])?,
    );
    b.scale(&v, 0.0, &v)?; // second moments start at zero, so that √v stays real
    let norm = b.alloc(&[1], DType::F32)?;
    let key = DropoutKey {
        seed: 1,
        step: 1,
        site: 0,
    };
    let hp = AdamW::default();
    // The elementwise ops on activations also in each half precision: x, y and out.
    let halves = HALVES
        .iter()
        .map(|&dtype| {
            let x = random_in(b, inputs, &[elements], dtype)?;
            let y = random_in(b, inputs, &[elements], dtype)?;
            Ok((dtype, [x, y, b.alloc(&[elements], dtype)?]))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cases: Vec<MemoryCase> = vec![
        (
            Op::Add,
            DType::F32,
            3 * f32_bytes,
            Box::new(|| b.add(&x, &y, &out)),
        ),
        (
            Op::Scale,
            DType::F32,
            2 * f32_bytes,
            Box::new(|| b.scale(&x, 0.5, &out)),
        ),
        (
            Op::Cast,
            DType::F16,
            f32_bytes + f32_bytes / 2,
            Box::new(|| b.cast(&x, &half)),
        ),
        (
            Op::GeluFwd,
            DType::F32,
            2 * f32_bytes,
            Box::new(|| b.gelu(&x, &out)),
        ),
        (
            Op::GeluBwd,
            DType::F32,
            3 * f32_bytes,
            Box::new(|| b.gelu_backward(&x, &y, &out)),
        ),
        (
            Op::LayernormFwd,
            DType::F32,
            2 * f32_bytes,
            Box::new(|| b.layernorm(&x2, &w, &bias, 1e-5, &out2, &mean, &rstd)),
        ),
        (
            Op::LayernormBwd,
            DType::F32,
            3 * f32_bytes,
            Box::new(|| b.layernorm_backward(&x2, &w, &mean, &rstd, &y2, &out2, &dw, &db)),
        ),
        (
            Op::BiasGrad,
            DType::F32,
            f32_bytes,
            Box::new(|| b.bias_grad(&y2, &db)),
        ),
        (
            Op::Dropout,
            DType::F32,
            2 * f32_bytes,
            Box::new(|| b.dropout(&x, 0.1, &key, &out)),
        ),
        (
            Op::Adamw,
            DType::F32,
            7 * f32_bytes,
            Box::new(|| b.adamw(&out, &y, &m, &v, &hp, 1)),
        ),
        (
            Op::GradNorm,
            DType::F32,
            f32_bytes,
            Box::new(|| b.grad_norm(&y, &norm)),
        ),
    ];
    for (dtype, [x, y, out]) in &halves {
        let bytes = (dtype.size_bytes() * elements) as u64;
        cases.extend([
            (
                Op::Add,
                *dtype,
                3 * bytes,
                Box::new(|| b.add(x, y, out)) as Timed,
            ),
            (
                Op::Scale,
                *dtype,
                2 * bytes,
                Box::new(|| b.scale(x, 0.5, out)),
            ),
            (Op::GeluFwd, *dtype, 2 * bytes, Box::new(|| b.gelu(x, out))),
            (
                Op::GeluBwd,
                *dtype,
                3 * bytes,
                Box::new(|| b.gelu_backward(x, y, out)),
            ),
        ]);
    }
    let mut rows = Vec::new();
    if wanted(Op::Copy) {
        let times = time(b, budget, &mut || b.copy(&x, &out))?;
        rows.push(memory_row(b, Op::Copy, DType::F32, 2 * f32_bytes, times));
    }
    let cases: Vec<MemoryCase> = cases.into_iter().filter(|case| wanted(case.0)).collect();
    // Each op's yardstick is a copy that moves as many bytes as the op reads and writes (for
    // an op whose outputs are not its inputs, the same working set too). Against a copy of
    // another size the ratio would also measure where each size sits in the caches
    // (BENCHMARKS.md, the `vs copy` column).
    let copy_len = |bytes: u64| (bytes / 8) as usize; // f32 values each way
    let longest = cases.iter().map(|c| copy_len(c.2)).max().unwrap_or(0);
    // A copy's time does not depend on the values it moves: no random fill.
    let (copy_src, copy_dst) = (
        b.alloc(&[longest], DType::F32)?,
        b.alloc(&[longest], DType::F32)?,
    );
    for (op, dtype, bytes, f) in cases {
        let n = copy_len(bytes);
        let (src, dst) = (copy_src.view(0, &[n])?, copy_dst.view(0, &[n])?);
        let copy_bytes = 8 * n as u64;
        let timed = time_alternating(b, budget, [&mut || f(), &mut || b.copy(&src, &dst)]);
        let Some([times, copies]) = unless_refused(&format!("{op} {dtype}"), timed)? else {
            continue;
        };
        let ratios: Vec<f64> = times
            .times
            .iter()
            .zip(&copies.times)
            .map(|(t, c)| (t / bytes as f64) / (c / copy_bytes as f64))
            .collect();
        let mut r = memory_row(b, op, dtype, bytes, times);
        r.vs_copy = Some(median(&ratios));
        rows.push(r);
    }
    Ok(rows)
}

/// A memory-bound op's row: its times, and its bytes per second.
fn memory_row<B: Backend>(b: &B, op: Op, dtype: DType, bytes: u64, times: Samples) -> BenchRow {
    let mut r = row(b, op, dtype, times);
    r.bytes = Some(bytes);
    r.gbps = Some(bytes as f64 / (r.median_ms * 1e-3) / 1e9);
    r
}

/// Rows of the memory-bound cases by default: 2048 × [`MODEL_WIDTH`] f32, 8 MiB a tensor.
/// Speeds depend on the size through the caches: where the bytes moved fit the CPU's last
/// level cache, they run faster than from memory (BENCHMARKS.md).
pub const MEMORY_ROWS: usize = 2048;

/// Row width of the memory-bound cases (the row-wise ones: layer norm, bias gradient).
pub const MODEL_WIDTH: usize = 1024;

/// The attention shapes: the model's (batch 32, 8 heads, 64 frames, heads of 32) and a long
/// one (batch 8, 16 heads, 1024 frames, heads of 64); the long one only where it takes
/// milliseconds rather than minutes (not on software adapters).
pub fn attention_shapes<B: Backend>(b: &B) -> Vec<AttentionSpec> {
    let mut shapes = vec![AttentionSpec::new(32, 64, 8, 32)];
    if !b.info().software {
        shapes.push(AttentionSpec::new(8, 1024, 16, 64));
    }
    shapes
}

/// Attention forward, and forward + backward, at one shape (no dropout, every frame real).
pub fn bench_attention<B: Backend>(
    b: &B,
    spec: &AttentionSpec,
    budget: &BenchBudget,
    inputs: &mut Inputs,
) -> Result<Vec<BenchRow>> {
    b.empty_cache();
    b.reset_peak_memory_stats();
    let (batch, t, heads, dm) = (spec.batch, spec.seq, spec.heads, spec.d_model());
    let qkv = random(b, inputs, &[batch, t, 3 * dm])?;
    let mask = b.upload(&HostTensor::filled(&[batch, t], DType::F32, 1.0))?;
    let (out, lse) = (
        b.alloc(&[batch, t, dm], DType::F32)?,
        b.alloc(&[batch, heads, t], DType::F32)?,
    );
    let dout = random(b, inputs, &[batch, t, dm])?;
    let dqkv = b.alloc(&[batch, t, 3 * dm], DType::F32)?;
    let forward = || b.attention(&qkv, &mask, spec, &out, &lse);
    // Each case: the op, its FLOPs as a multiple of the forward's, and the call.
    let cases: [(Op, f64, Timed<'_>); 2] = [
        (Op::AttentionFwd, 1.0, Box::new(forward)),
        (
            Op::AttentionFwdBwd,
            3.5,
            Box::new(|| {
                forward()?;
                b.attention_backward(&qkv, &mask, spec, &out, &lse, &dout, &dqkv)
            }),
        ),
    ];
    let mut rows = Vec::new();
    for (op, flop_factor, f) in cases {
        let mut r = row(b, op, DType::F32, time(b, budget, f)?);
        r.batch = Some(batch);
        r.seq = Some(t);
        r.heads = Some(heads);
        r.head_dim = Some(spec.head_dim);
        r.gflops = Some(flop_factor * spec.forward_flops() / (r.median_ms * 1e-3) / 1e9);
        rows.push(r);
    }
    Ok(rows)
}

/// A case's result, or nothing where the backend refuses its dtype (logged): its row appears
/// once the backend runs that dtype.
fn unless_refused<T>(case: &str, result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(rows) => Ok(Some(rows)),
        Err(Error::UnsupportedDtype { op, hint, .. }) => {
            tracing::info!("{case}: skipped, {op}: {hint}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every case whose name contains `filter`, or one of its comma-separated parts (all when
/// None), as `signflow bench` runs them, the memory-bound ones on `memory_rows` rows of
/// [`MODEL_WIDTH`]; `progress` hears of each case before it runs.
pub fn run_all<B: Backend>(
    b: &B,
    budget: &BenchBudget,
    filter: Option<&str>,
    memory_rows: usize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BenchRow>> {
    let wanted = |name: &str| filter.is_none_or(|f| f.split(',').any(|f| name.contains(f)));
    let mut inputs = Inputs::new(Inputs::fresh_seed());
    let mut rows = Vec::new();
    let half_matmuls = HALVES
        .iter()
        .flat_map(|&dtype| MODEL_MATMULS.map(|size| (size, dtype)));
    let matmuls = matmul_sizes(b).into_iter().map(|size| (size, DType::F32));
    for (size, dtype) in matmuls.chain(half_matmuls) {
        let name = format!("matmul {}x{}x{} {dtype}", size.0, size.1, size.2);
        if wanted(&name) {
            progress(&name);
            let result = bench_matmul(b, size, dtype, budget, &mut inputs);
            rows.extend(unless_refused(&name, result)?);
        }
    }
    let memory_ops = [
        Op::Copy,
        Op::Add,
        Op::Scale,
        Op::Cast,
        Op::GeluFwd,
        Op::GeluBwd,
        Op::LayernormFwd,
        Op::LayernormBwd,
        Op::BiasGrad,
        Op::Dropout,
        Op::Adamw,
        Op::GradNorm,
    ];
    for spec in attention_shapes(b) {
        let name = format!(
            "attention b{} t{} h{} d{}",
            spec.batch, spec.seq, spec.heads, spec.head_dim
        );
        if wanted(&name) {
            progress(&name);
            rows.extend(bench_attention(b, &spec, budget, &mut inputs)?);
        }
    }
    // A training step (mixed precision in f16 and bf16) and a prediction in every precision
    // the backend takes.
    let model_cases = [(Op::TrainStep, &PRECISIONS), (Op::Predict, &PRECISIONS)];
    for (op, dtypes) in model_cases {
        for &dtype in dtypes {
            let name = format!("{op} {dtype}");
            if wanted(&name) {
                progress(&name);
                rows.extend(unless_refused(
                    &name,
                    bench_model(b, op, dtype, budget, &mut inputs),
                )?);
            }
        }
    }
    for op in [Op::TrainStep, Op::Predict] {
        let name = format!("{} {}", Op::HostRecord, op);
        if wanted(&name) {
            progress(&name);
            rows.push(bench_host_record(b, op, budget, &mut inputs)?);
        }
    }
    if memory_ops.iter().any(|op| wanted(op.name())) {
        progress("memory-bound ops");
        rows.extend(bench_memory_ops(
            b,
            memory_rows.max(1) * MODEL_WIDTH,
            budget,
            &mut inputs,
            |op| wanted(op.name()),
        )?);
    }
    // Minutes rather than seconds on a software adapter, as the long attention shape.
    let seed_cases = (wanted(seed::PREDICTIONS_CASE), wanted(seed::TRAINING_CASE));
    if (seed_cases.0 || seed_cases.1) && !b.info().software {
        let plan = SeedPlan::default();
        rows.extend(seed::run_seed(
            b,
            &plan,
            budget,
            &mut inputs,
            seed_cases,
            &mut progress,
        )?);
    }
    Ok(rows)
}
