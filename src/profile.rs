//! Profiling a model on a device (`signflow profile`, the counterpart of the replaced
//! system's `profile_model`): the time and memory of one prediction, or one whole training
//! step, at a chosen batch size and clip length, over many iterations after a warm-up.

use std::time::Instant;

use crate::backend::Backend;
use crate::bench::{percentile, ModelCase};
use crate::data::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::infer::InferencePipeline;
use crate::model::checkpoint::FEATURES_LAYOUT;
use crate::model::{Checkpoint, ModelConfig, Preprocessing};
use crate::selftest::Inputs;

/// What to profile.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    /// Clips per call. At least 1.
    pub batch_size: usize,
    /// Frames per clip, from 1 to the model's `max_seq_len`.
    pub seq_len: usize,
    /// Timed calls. At least 1.
    pub iterations: usize,
    /// Untimed calls first (kernels compiled, buffers pooled).
    pub warmup: usize,
    /// A whole training step (forward with dropout, loss, backward, clipping, AdamW) rather
    /// than a prediction.
    pub train: bool,
    /// Storage of the weights and activations (DESIGN.md, Precision); a training step in
    /// half precision is a mixed-precision step (`signflow train --amp`).
    pub precision: DType,
}

/// One profile (`signflow profile --json`, DESIGN.md's Machine-readable outputs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Profile {
    /// `predict` or `train_step`.
    pub mode: &'static str,
    pub dtype: DType,
    /// Adapter name, or the CPU's.
    pub device: String,
    /// `cpu`, or the graphics API.
    pub backend: String,
    pub batch: usize,
    pub seq: usize,
    pub iterations: usize,
    /// Time per call in ms by `timer`'s clock: mean, median and 95th percentile.
    pub mean_ms: f64,
    pub median_ms: f64,
    pub p95_ms: f64,
    /// Clips per second at the median time.
    pub samples_per_s: f64,
    /// The most memory the calls held on the device at once, in MiB.
    pub peak_mb: f64,
    /// `device` where the device timed its own work (timestamp queries), else `wall_clock`.
    pub timer: &'static str,
    /// Wall-clock time per call in ms, each call waited for (mean, median), whatever `timer`.
    pub wall_mean_ms: f64,
    pub wall_median_ms: f64,
}

impl Profile {
    /// `mode`'s value for a training step or a prediction.
    pub fn mode_name(train: bool) -> &'static str {
        if train {
            "train_step"
        } else {
            "predict"
        }
    }
}

/// Profiles a fresh model of `config` (its weights do not change the time) on `b`: random
/// inputs from `seed`, `settings.warmup` calls, then `settings.iterations` timed ones.
pub fn profile_model<B: Backend>(
    b: &B,
    config: &ModelConfig,
    settings: &ProfileSettings,
    seed: u64,
) -> Result<Profile> {
    prepare(b, config, settings)?;
    let s = settings;
    let mut inputs = Inputs::new(seed);
    let mut case = ModelCase::new(
        b,
        config.clone(),
        s.batch_size,
        s.seq_len,
        s.train,
        s.precision,
        &mut inputs,
    )?;
    time_calls(b, s, &mut || case.run(b))
}

/// As [`profile_model`] for a prediction, timing a whole [`InferencePipeline::logits`] call
/// (inputs written, forward pass, logits read back), through a pipeline made
/// [`InferencePipeline::optimize_for_inference`] when `optimized`.
pub fn profile_pipeline<B: Backend>(
    b: &B,
    config: &ModelConfig,
    settings: &ProfileSettings,
    optimized: bool,
    seed: u64,
) -> Result<Profile> {
    prepare(b, config, settings)?;
    let s = settings;
    if s.train {
        return Err(Error::InvalidConfig {
            field: "train",
            value: "true".into(),
            allowed: "false: an inference pipeline predicts, it does not train",
        });
    }
    let pipeline = untrained_pipeline(b, config, s.seq_len, s.precision, optimized)?;
    let (batch, seq) = (s.batch_size, s.seq_len);
    let clips = Batch {
        features: Inputs::new(seed).uniform(batch * seq * config.num_features),
        mask: vec![1.0; batch * seq],
        labels: vec![0; batch],
        batch,
        seq,
        num_features: config.num_features,
    };
    let ids: Vec<usize> = (0..batch).collect();
    time_calls(b, s, &mut || pipeline.logits(&clips, &ids).map(drop))
}

/// A pipeline of a freshly initialised model of `config` (numbered classes, ready features
/// of `seq_len` frames) in `dtype`, made [`InferencePipeline::optimize_for_inference`] when
/// `optimized`: what the time of a prediction is measured on.
pub(crate) fn untrained_pipeline<'b, B: Backend>(
    b: &'b B,
    config: &ModelConfig,
    seq_len: usize,
    dtype: DType,
    optimized: bool,
) -> Result<InferencePipeline<'b, B>> {
    let classes = (0..config.num_classes).map(|i| i.to_string()).collect();
    let preprocessing = Preprocessing {
        seq_len,
        layout: FEATURES_LAYOUT.into(),
    };
    let ckpt = Checkpoint::initial(config.clone(), classes, preprocessing, 0)?;
    let pipeline = InferencePipeline::from_checkpoint(b, &ckpt)?.with_precision(dtype)?;
    if optimized {
        return pipeline.optimize_for_inference();
    }
    Ok(pipeline)
}

/// Checks the settings, then starts from an empty cache and a fresh peak.
fn prepare<B: Backend>(b: &B, config: &ModelConfig, s: &ProfileSettings) -> Result<()> {
    let invalid = |field, value: usize, allowed| Error::InvalidConfig {
        field,
        value: value.to_string(),
        allowed,
    };
    if s.batch_size == 0 {
        return Err(invalid("batch_size", 0, "at least 1 clip"));
    }
    if s.iterations == 0 {
        return Err(invalid("iterations", 0, "at least 1 timed call"));
    }
    config.check_seq_len(s.seq_len)?;
    b.empty_cache();
    b.reset_peak_memory_stats();
    Ok(())
}

/// `s.warmup` calls of `run`, then `s.iterations` timed ones, each waited for.
fn time_calls<B: Backend>(
    b: &B,
    s: &ProfileSettings,
    run: &mut dyn FnMut() -> Result<()>,
) -> Result<Profile> {
    for _ in 0..s.warmup {
        run()?;
    }
    b.synchronize()?;
    let (mut wall, mut device) = (Vec::new(), Vec::new());
    for _ in 0..s.iterations {
        let start = Instant::now();
        let device_ms = b.device_time_ms(run)?;
        b.synchronize()?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        device.extend(device_ms);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (times, timer) = if device.len() == wall.len() {
        (&device, "device")
    } else {
        (&wall, "wall_clock")
    };
    let median_ms = percentile(times, 0.5);
    Ok(Profile {
        mode: Profile::mode_name(s.train),
        dtype: s.precision,
        device: b.info().name.clone(),
        backend: b.info().backend.clone(),
        batch: s.batch_size,
        seq: s.seq_len,
        iterations: s.iterations,
        mean_ms: mean(times),
        median_ms,
        p95_ms: percentile(times, 0.95),
        samples_per_s: s.batch_size as f64 / (median_ms / 1e3),
        peak_mb: b.memory_stats().peak_allocated_bytes as f64 / (1024.0 * 1024.0),
        timer,
        wall_mean_ms: mean(&wall),
        wall_median_ms: percentile(&wall, 0.5),
    })
}

/// The outcome of [`optimal_batch_size`] (`signflow profile --find-batch-size --json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchSearch {
    /// `predict` or `train_step`.
    pub mode: &'static str,
    pub dtype: DType,
    /// The largest batch that ran within the budget.
    pub batch_size: usize,
    pub seq: usize,
    /// The memory the step at `batch_size` held at its peak when run, in MiB.
    pub planned_mb: f64,
    /// The device memory budget searched within, in MiB (None where it is not known).
    pub budget_mb: Option<f64>,
}

/// The largest batch from `min_batch` to `max_batch` clips of `seq_len` frames whose
/// prediction (or training step, with `train`) of a model of `config` runs within `b`'s memory
/// budget (the counterpart of the replaced system's `get_optimal_batch_size`; the budget is
/// the one `b` was opened with: a share of the device's memory, or an absolute limit). Each
/// candidate is tried by making the step's workspace and running it once, so the answer is
/// what ran, not an estimate.
pub fn optimal_batch_size<B: Backend>(
    b: &B,
    config: &ModelConfig,
    seq_len: usize,
    train: bool,
    dtype: DType,
    (min_batch, max_batch): (usize, usize),
) -> Result<BatchSearch> {
    if min_batch == 0 || min_batch > max_batch {
        return Err(Error::InvalidConfig {
            field: "batch sizes",
            value: format!("{min_batch} to {max_batch}"),
            allowed: "a smallest batch of at least 1, no larger than the largest",
        });
    }
    config.check_seq_len(seq_len)?;
    let fits = |batch: usize| -> Result<Option<f64>> {
        b.empty_cache();
        b.reset_peak_memory_stats();
        let mut inputs = Inputs::new(0);
        let ran = ModelCase::new(b, config.clone(), batch, seq_len, train, dtype, &mut inputs)
            .and_then(|mut case| case.run(b).and_then(|()| b.synchronize()));
        let peak = b.memory_stats().peak_allocated_bytes as f64 / (1024.0 * 1024.0);
        b.empty_cache();
        match ran {
            Ok(()) => Ok(Some(peak)),
            Err(Error::OutOfMemory { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let budget_mb = b
        .memory_stats()
        .budget_bytes
        .map(|v| v as f64 / (1024.0 * 1024.0));
    let Some(mut peak) = fits(min_batch)? else {
        return Err(Error::InvalidConfig {
            field: "min_batch_size",
            value: min_batch.to_string(),
            allowed: "a batch that fits in the memory budget: not even the smallest does; \
                      raise the budget or shorten the clips",
        });
    };
    // The largest batch known to fit, and the smallest known not to.
    let (mut good, mut bad) = (min_batch, max_batch + 1);
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        match fits(mid)? {
            Some(p) => (good, peak) = (mid, p),
            None => bad = mid,
        }
    }
    Ok(BatchSearch {
        mode: Profile::mode_name(train),
        dtype,
        batch_size: good,
        seq: seq_len,
        planned_mb: peak,
        budget_mb,
    })
}

#[cfg(test)]
mod tests {
    use crate::bench::percentile;

    #[test]
    fn percentiles_are_nearest_ranks() {
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 10.0);
        assert_eq!(percentile(&v, 0.95), 19.0);
        assert_eq!(percentile(&[3.0], 0.95), 3.0);
    }
}
