//! `signflow profile`: the time and memory of one prediction or one training step of a model
//! on a device.

use std::path::PathBuf;

use clap::Args;
use signflow::infer::load_model;
use signflow::model::ModelConfig;
use signflow::profile::{
    optimal_batch_size, profile_model, profile_pipeline, Profile, ProfileSettings,
};
use signflow::train::TrainingConfig;
use signflow::{with_backend, AnyBackend, DType, GpuConfig, Result};

#[derive(Args)]
pub struct ProfileArgs {
    /// The model to profile (safetensors, or ONNX from signflow export); without it or
    /// --config, the default model.
    #[arg(long, conflicts_with = "config")]
    pub model: Option<PathBuf>,
    /// A config file (as `train --config` reads) whose `model` object gives the model's sizes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Clips per call.
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub batch_size: usize,
    /// Frames per clip (default: the model's max_seq_len).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Timed calls, after the warm-up.
    #[arg(long, default_value_t = 100, value_parser = super::positive)]
    pub iterations: usize,
    /// Untimed calls first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Profile a whole training step (forward, loss, backward, AdamW) instead of a prediction.
    #[arg(long)]
    pub train: bool,
    /// Time a whole inference pipeline call (inputs written, forward pass, logits read back)
    /// rather than the forward pass alone.
    #[arg(long, conflicts_with = "train")]
    pub pipeline: bool,
    /// As --pipeline, through a pipeline optimized for inference (its forward pass recorded
    /// once and replayed).
    #[arg(long, conflicts_with = "train")]
    pub optimized: bool,
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    pub device: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Instead of timing, find the largest batch whose step runs within the memory budget.
    #[arg(long)]
    pub find_batch_size: bool,
    /// With --find-batch-size: the share of the device's memory the step may use.
    #[arg(long, default_value_t = 0.8)]
    pub max_memory_fraction: f64,
    /// With --find-batch-size: an absolute budget in MiB instead of the share.
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,
    /// With --find-batch-size: the smallest batch to consider.
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub min_batch_size: usize,
    /// With --find-batch-size: the largest batch to consider.
    #[arg(long, default_value_t = 512, value_parser = super::positive)]
    pub max_batch_size: usize,
    #[arg(long, default_value = "f32", help = super::predict::PRECISION_HELP)]
    pub precision: DType,
    #[arg(long, help = super::JSON_HELP)]
    pub json: bool,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let config = match (&args.model, &args.config) {
        (Some(path), _) => load_model(path)?.config,
        (None, Some(path)) => match TrainingConfig::from_file(path)?.1 {
            Some(model) => ModelConfig::from_json(&path.display().to_string(), &model)?,
            None => ModelConfig::default(),
        },
        (None, None) => ModelConfig::default(),
    };
    config.validate()?;
    let settings = ProfileSettings {
        batch_size: args.batch_size,
        seq_len: args.seq_len.unwrap_or(config.max_seq_len),
        iterations: args.iterations,
        warmup: args.warmup,
        train: args.train,
        precision: args.precision,
    };
    if args.find_batch_size {
        return find_batch_size(&args, &config, settings.seq_len);
    }
    let device = super::open_device(&args.device)?;
    let p = if args.pipeline || args.optimized {
        with_backend!(&device, b => profile_pipeline(b, &config, &settings, args.optimized, args.seed))?
    } else {
        with_backend!(&device, b => profile_model(b, &config, &settings, args.seed))?
    };
    if args.json {
        super::print_json(&p);
    } else {
        print_profile(&p);
    }
    Ok(())
}

fn find_batch_size(args: &ProfileArgs, config: &ModelConfig, seq_len: usize) -> Result<()> {
    let device = AnyBackend::open(&super::with_coop_matrix(GpuConfig {
        device: args.device.clone(),
        memory_fraction: args.max_memory_fraction,
        memory_limit_mb: args.memory_limit_mb,
        ..GpuConfig::default()
    }))?;
    let range = (args.min_batch_size, args.max_batch_size);
    let found = with_backend!(&device, b => optimal_batch_size(b, config, seq_len, args.train, args.precision, range))?;
    if args.json {
        super::print_json(&found);
    } else {
        let what = match found.mode {
            "train_step" => "a training step",
            _ => "a prediction",
        };
        let budget = found.budget_mb.map_or("no known budget".into(), |mb| {
            format!("a budget of {mb:.0} MiB")
        });
        println!(
            "batch size {} ({}-frame clips, {}): the largest from {} to {} at which {what} \
             ran within {budget} (peak {:.1} MiB)",
            found.batch_size,
            found.seq,
            found.dtype,
            args.min_batch_size,
            args.max_batch_size,
            found.planned_mb
        );
    }
    Ok(())
}

fn print_profile(p: &Profile) {
    let what = match p.mode {
        "train_step" => "training step",
        _ => "prediction",
    };
    println!(
        "{what} of {} clips × {} frames in {} on {} ({}), {} iterations:",
        p.batch, p.seq, p.dtype, p.device, p.backend, p.iterations
    );
    let clock = match p.timer {
        "device" => "device",
        _ => "wall  ",
    };
    println!(
        "  {clock}  mean {:.3} ms  median {:.3} ms  p95 {:.3} ms",
        p.mean_ms, p.median_ms, p.p95_ms
    );
    if p.timer == "device" {
        println!(
            "  wall    mean {:.3} ms  median {:.3} ms",
            p.wall_mean_ms, p.wall_median_ms
        );
    }
    println!(
        "  {:.1} clips/s at the median; peak memory {:.1} MiB",
        p.samples_per_s, p.peak_mb
    );
}
