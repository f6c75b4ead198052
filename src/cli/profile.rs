//! `signflow profile`: the time and memory of one prediction or one training step of a model
//! on a device.

use std::path::PathBuf;

use clap::Args;
use signflow::infer::load_model;
use signflow::model::ModelConfig;
use signflow::profile::{profile_model, Profile, ProfileSettings};
use signflow::{with_backend, Result};

#[derive(Args)]
pub struct ProfileArgs {
    /// The model to profile (safetensors, or ONNX from signflow export); without it, the
    /// default model.
    #[arg(long)]
    pub model: Option<PathBuf>,
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
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    pub device: String,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, help = super::JSON_HELP)]
    pub json: bool,
}

pub fn profile(args: ProfileArgs) -> Result<()> {
    let config = match &args.model {
        Some(path) => load_model(path)?.config,
        None => ModelConfig::default(),
    };
    let settings = ProfileSettings {
        batch_size: args.batch_size,
        seq_len: args.seq_len.unwrap_or(config.max_seq_len),
        iterations: args.iterations,
        warmup: args.warmup,
        train: args.train,
    };
    let device = super::open_device(&args.device)?;
    let p = with_backend!(&device, b => profile_model(b, &config, &settings, args.seed))?;
    if args.json {
        super::print_json(&p);
    } else {
        print_profile(&p);
    }
    Ok(())
}

fn print_profile(p: &Profile) {
    let what = if p.train {
        "training step"
    } else {
        "prediction"
    };
    println!(
        "{what} of {} clips × {} frames on {} ({}), {} iterations:",
        p.batch_size, p.seq_len, p.device, p.backend, p.iterations
    );
    println!(
        "  wall    mean {:.3} ms  median {:.3} ms  p95 {:.3} ms",
        p.mean_ms, p.median_ms, p.p95_ms
    );
    if let Some(ms) = p.device_mean_ms {
        println!("  device  mean {ms:.3} ms");
    }
    println!(
        "  {:.1} clips/s at the median; peak memory {:.1} MiB",
        p.samples_per_s, p.peak_memory_mb
    );
}
