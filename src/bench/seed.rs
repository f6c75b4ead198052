//! The replaced system's published benchmarks, measured here (DESIGN.md, Machine-readable
//! outputs): 1,000 predictions through [`InferencePipeline`], one clip at a time and in
//! batches, and the time of 50 epochs over 10,000 clips projected from measured training
//! steps and held against a short real [`Trainer`] run.

use std::sync::Arc;
use std::time::Instant;

use super::{
    median, percentile, row, time, unless_refused, BenchBudget, BenchRow, ModelCase, Samples, Timer,
};
use crate::backend::Backend;
use crate::config::AmpDtype;
use crate::data::{synth_clips, Batch, Dataset, Source};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::infer::top_k;
use crate::model::{ModelConfig, SignTransformer};
use crate::ops::Op;
use crate::profile::untrained_pipeline;
use crate::selftest::Inputs;
use crate::train::{Trainer, TrainingConfig};

/// The precisions the model's rows are measured in, where the backend runs the case in them
/// (training in half precision is mixed-precision training).
pub const PRECISIONS: [DType; 3] = [DType::F32, DType::F16, DType::Bf16];

/// The case names that `--filter` matches (`seed` selects both). They avoid the other cases'
/// names, so that `--filter predict` or `train_step` does not run them.
pub const PREDICTIONS_CASE: &str = "seed_1000";
pub const TRAINING_CASE: &str = "seed_50x10k";

/// Clips per batch, for the batched predictions and for training.
pub const BATCH: usize = 32;
/// The replaced system's training benchmark: epochs over a set of clips.
pub const PROJECTED_EPOCHS: usize = 50;
pub const PROJECTED_CLIPS: usize = 10_000;

/// Whether predictions ran one clip at a time or in batches of [`BATCH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionMode {
    Single,
    Batched,
}

/// The sizes of the seed cases: the model, how many clips to predict, and the real training
/// run that checks the projection.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub model: ModelConfig,
    /// Clips to predict; 1,000 in the rows that `signflow bench` reports.
    pub predictions: usize,
    /// Clips of the real training run (whole batches of [`BATCH`] keep its steps alike).
    pub run_clips: usize,
    /// Epochs of the real run; the first warms up and is not counted.
    pub run_epochs: usize,
}

impl Default for SeedPlan {
    /// The replaced system's case: the default model (100 classes, 64 frames), 1,000 clips;
    /// a real run of ten steps an epoch.
    fn default() -> Self {
        SeedPlan {
            model: ModelConfig::default(),
            predictions: 1000,
            run_clips: 10 * BATCH,
            run_epochs: 2,
        }
    }
}

/// [`Op::Predictions1000`] rows: `plan.predictions` clips of random ready features (never
/// zero) through an [`InferencePipeline`] of a freshly initialised model, one after another
/// ([`PredictionMode::Single`]), then the same clips in batches of [`BATCH`]
/// ([`PredictionMode::Batched`], a batch's time shared among its clips). A prediction is the
/// pipeline's logits, optimized for inference as `predict` runs it, and their top 5 classes.
/// Warmed up first.
pub fn bench_predictions<B: Backend>(
    b: &B,
    plan: &SeedPlan,
    dtype: DType,
    inputs: &mut Inputs,
) -> Result<Vec<BenchRow>> {
    const WARM_UP: usize = 5;
    const TOP: usize = 5;
    if plan.predictions == 0 {
        return Err(Error::InvalidConfig {
            field: "predictions",
            value: "0".into(),
            allowed: "at least one clip to predict",
        });
    }
    b.empty_cache();
    b.reset_peak_memory_stats();
    let cfg = &plan.model;
    let pipeline = untrained_pipeline(b, cfg, cfg.max_seq_len, dtype, true)?;
    let seq = cfg.max_seq_len;
    let clip_len = seq * cfg.num_features;
    // A batch's worth of distinct clips; clip i is clip i mod BATCH of these (the time of a
    // prediction does not depend on the values).
    let pool = inputs.uniform(BATCH * clip_len);
    let clips = |first: usize, n: usize| Batch {
        features: (first..first + n)
            .flat_map(|i| {
                let c = i % BATCH;
                pool[c * clip_len..(c + 1) * clip_len].iter().copied()
            })
            .collect(),
        mask: vec![1.0; n * seq],
        labels: vec![0; n],
        batch: n,
        seq,
        num_features: cfg.num_features,
    };
    let predict = |batch: &Batch, ids: &[usize]| -> Result<()> {
        let logits = pipeline.logits(batch, ids)?;
        for row in logits.chunks(cfg.num_classes) {
            std::hint::black_box(top_k(row, pipeline.classes(), TOP));
        }
        Ok(())
    };

    let singles: Vec<Batch> = (0..BATCH.min(plan.predictions))
        .map(|i| clips(i, 1))
        .collect();
    let mut rows = Vec::new();
    for mode in [PredictionMode::Single, PredictionMode::Batched] {
        let size = match mode {
            PredictionMode::Single => 1,
            PredictionMode::Batched => BATCH,
        };
        let batches: Vec<(Vec<usize>, Batch)> = match mode {
            PredictionMode::Single => Vec::new(),
            PredictionMode::Batched => (0..plan.predictions)
                .step_by(BATCH)
                .map(|first| {
                    let n = BATCH.min(plan.predictions - first);
                    ((first..first + n).collect(), clips(first, n))
                })
                .collect(),
        };
        let run = |first: usize| -> Result<usize> {
            match mode {
                PredictionMode::Single => {
                    predict(&singles[first % singles.len()], &[first])?;
                    Ok(1)
                }
                PredictionMode::Batched => {
                    let (ids, batch) = &batches[first / BATCH];
                    predict(batch, ids)?;
                    Ok(batch.batch)
                }
            }
        };
        for i in 0..WARM_UP {
            run((i * size) % plan.predictions)?;
        }
        // A last, shorter batch is a shape of its own: plan it before the clock runs.
        if let Some((ids, _)) = batches.last() {
            run(ids[0])?;
        }
        b.synchronize()?;
        let mut per_clip = Vec::with_capacity(plan.predictions);
        let start = Instant::now();
        let mut done = 0;
        while done < plan.predictions {
            let t = Instant::now();
            let n = run(done)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            per_clip.extend(std::iter::repeat_n(ms / n as f64, n));
            done += n;
        }
        b.synchronize()?;
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        let p99_ms = percentile(&per_clip, 0.99);
        let mut r = row(
            b,
            Op::Predictions1000,
            dtype,
            Samples {
                times: per_clip,
                timer: Timer::WallClock,
                kernels: Vec::new(),
            },
        );
        r.batch = Some(size);
        r.seq = Some(seq);
        r.heads = Some(cfg.num_heads);
        r.head_dim = Some(cfg.head_dim());
        r.mode = Some(mode);
        r.clips = Some(plan.predictions);
        r.total_ms = Some(total_ms);
        r.p50_ms = Some(r.median_ms);
        r.p99_ms = Some(p99_ms);
        rows.push(r);
    }
    Ok(rows)
}

/// The [`Op::Train50x10k`] row: the median training step at batch [`BATCH`] (as the
/// `train_step` row times it), projected to [`PROJECTED_EPOCHS`] epochs of
/// ⌈[`PROJECTED_CLIPS`] / [`BATCH`]⌉ steps, beside the time per step of a real [`Trainer`] run
/// over generated clips ([`BenchRow::run_step_ms`]): its loader, loss read-back and schedule
/// are in that time and not in the step's.
pub fn bench_training<B: Backend>(
    b: &B,
    plan: &SeedPlan,
    dtype: DType,
    budget: &BenchBudget,
    inputs: &mut Inputs,
) -> Result<BenchRow> {
    b.empty_cache();
    b.reset_peak_memory_stats();
    let seq = plan.model.max_seq_len;
    let mut case = ModelCase::new(b, plan.model.clone(), BATCH, seq, true, dtype, inputs)?;
    let times = time(b, budget, || case.run(b))?;
    let mut r = case.row(b, Op::Train50x10k, times);
    drop(case);
    r.step_ms = Some(r.median_ms);
    let steps = PROJECTED_CLIPS.div_ceil(BATCH) * PROJECTED_EPOCHS;
    r.projected_s = Some(r.median_ms * steps as f64 / 1e3);
    r.run_step_ms = Some(real_run_step_ms(b, plan, dtype)?);
    Ok(r)
}

/// The time per step of the epochs after the first of a real [`Trainer`] run of
/// `plan.run_clips` generated clips at batch [`BATCH`], no validation, nothing written; in
/// f16 or bf16 a mixed-precision run.
fn real_run_step_ms<B: Backend>(b: &B, plan: &SeedPlan, dtype: DType) -> Result<f64> {
    const SEED: u64 = 0;
    let classes = plan.model.num_classes;
    let pack = synth_clips(
        classes,
        plan.run_clips.div_ceil(classes).max(1),
        plan.model.max_seq_len,
        SEED,
    );
    let names = pack.classes.clone();
    let dataset = Arc::new(Dataset::Clips(pack));
    let train = Source::new(dataset, (0..plan.run_clips).collect())?;
    let model = SignTransformer::new(b, plan.model.clone(), SEED)?;
    let epochs = plan.run_epochs.max(2);
    let config = TrainingConfig {
        batch_size: BATCH,
        num_epochs: epochs,
        seed: SEED,
        use_amp: AmpDtype::of(dtype).is_some(),
        amp_dtype: AmpDtype::of(dtype).unwrap_or_default(),
        ..TrainingConfig::default()
    };
    let mut trainer = Trainer::new(b, model, config, names)?;
    let records = trainer.fit(train, None)?;
    let seconds: Vec<f64> = records.iter().skip(1).map(|r| r.seconds).collect();
    let steps = plan.run_clips.div_ceil(BATCH);
    Ok(median(&seconds) * 1e3 / steps as f64)
}

/// The seed rows of every precision in [`PRECISIONS`]: the predictions when `predictions`,
/// the training projection when `training`; `progress` hears of each case before it runs.
pub fn run_seed<B: Backend>(
    b: &B,
    plan: &SeedPlan,
    budget: &BenchBudget,
    inputs: &mut Inputs,
    (predictions, training): (bool, bool),
    mut progress: impl FnMut(&str),
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for dtype in PRECISIONS {
        if predictions {
            let name = format!("{PREDICTIONS_CASE} {dtype}");
            progress(&name);
            let result = bench_predictions(b, plan, dtype, inputs);
            rows.extend(unless_refused(&name, result)?.into_iter().flatten());
        }
        if training {
            let name = format!("{TRAINING_CASE} {dtype}");
            progress(&name);
            let result = bench_training(b, plan, dtype, budget, inputs);
            rows.extend(unless_refused(&name, result)?);
        }
    }
    Ok(rows)
}
