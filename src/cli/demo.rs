//! `signflow demo`: a one-command tour on a fresh machine. Picks the device, runs the
//! self-test, generates a small clip pack (saying so), trains a small model for a minute or
//! two, evaluates it and predicts a few clips.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use signflow::data::packs::FRAME_WIDTH;
use signflow::data::{split, synth_clips, Dataset, Loader, LoaderConfig, Source, SplitSpec};
use signflow::infer::InferencePipeline;
use signflow::model::{Checkpoint, ModelConfig};
use signflow::train::trainer::BEST_FILE;
use signflow::train::{evaluate, initial_model, Trainer, TrainingConfig};
use signflow::{with_backend, AnyBackend, Backend, GpuConfig, Result};

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Where the generated pack and the run's files go.
    #[arg(long, default_value = "signflow-demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the self-test step.
    #[arg(long)]
    pub skip_selftest: bool,
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let device = AnyBackend::open(&GpuConfig {
        device: args.device.clone(),
        ..GpuConfig::default()
    })?;
    eprintln!(
        "1/5 device: {} ({}{})",
        device.info().name,
        device.info().backend,
        if device.info().software {
            ", software"
        } else {
            ""
        }
    );
    if !args.skip_selftest {
        let rows = with_backend!(&device, b => signflow::selftest::run_all(b, args.seed, |_| {}))?;
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| !r.pass)
            .map(|r| format!("{} {}", r.op.name(), r.shape))
            .collect();
        eprintln!(
            "2/5 self-test: {} of {} op checks against the f64 reference pass{}",
            rows.len() - failed.len(),
            rows.len(),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; FAILED: {}", failed.join(", "))
            }
        );
    }
    std::fs::create_dir_all(&args.out).map_err(|e| signflow::Error::io(&args.out, e))?;
    let pack_path = args.out.join("generated-clips.safetensors");
    let pack = synth_clips(8, 50, 30, args.seed);
    pack.save(&pack_path)?;
    eprintln!(
        "3/5 wrote {} GENERATED clips of {} classes to {} (synthetic motion, not real signing)",
        pack.len(),
        pack.classes.len(),
        pack_path.display()
    );
    let data = Arc::new(Dataset::Clips(pack));
    let s = split(&data, &SplitSpec::Random { fraction: 0.2 }, args.seed)?;
    let classes = data.classes().to_vec();
    let (train, val) = (
        Source::new(data.clone(), s.train)?,
        Source::new(data.clone(), s.val)?,
    );
    let model_cfg = ModelConfig {
        d_model: 128,
        num_heads: 4,
        num_layers: 2,
        ff_dim: 256,
        max_seq_len: 32,
        dropout: 0.1,
        ..ModelConfig::default()
    };
    let run_dir = args.out.join("run");
    let config = TrainingConfig {
        num_epochs: args.epochs,
        batch_size: 16,
        learning_rate: 1e-3,
        weight_decay: 0.01,
        seed: args.seed,
        out_dir: Some(run_dir.clone()),
        log_every: 5,
        ..TrainingConfig::default()
    };
    eprintln!(
        "4/5 training a small model ({} epochs) into {} ...",
        config.num_epochs,
        run_dir.display()
    );
    with_backend!(&device, b => tour(b, &model_cfg, config, classes, train, val))?;
    let best = Checkpoint::load(&run_dir.join(BEST_FILE))?;
    with_backend!(&device, b => predict_some(b, &best, &data))?;
    eprintln!(
        "demo done in {:.0} s; curves in {}",
        started.elapsed().as_secs_f64(),
        run_dir.join("curves.svg").display()
    );
    Ok(())
}

fn tour<B: Backend>(
    b: &B,
    model_cfg: &ModelConfig,
    config: TrainingConfig,
    classes: Vec<String>,
    train: Source,
    val: Source,
) -> Result<()> {
    let (model, _) = initial_model(b, model_cfg, &classes, None, config.seed)?;
    let mut trainer = Trainer::new(b, model, config, classes)?;
    let epochs = trainer.fit(train, Some(val.clone()))?;
    let loader = Loader::new(
        val,
        LoaderConfig {
            batch_size: 32,
            seq_len: model_cfg.max_seq_len,
            shuffle: false,
            ..LoaderConfig::default()
        },
    )?;
    let report = evaluate(b, trainer.model(), &loader)?;
    eprintln!(
        "5/5 after {} epochs: validation loss {:.4}, top-1 {:.1}%, top-{} {:.1}% on {} held-out generated clips",
        epochs.len(),
        report.loss,
        100.0 * report.top1,
        report.k,
        100.0 * report.topk,
        report.clips
    );
    Ok(())
}

fn predict_some<B: Backend>(b: &B, ckpt: &Checkpoint, data: &Dataset) -> Result<()> {
    let Dataset::Clips(pack) = data else {
        return Ok(());
    };
    let pipeline = InferencePipeline::from_checkpoint(b, ckpt)?;
    for i in [0, pack.len() / 2, pack.len() - 1] {
        let p = pipeline.predict_frames(pack.clip(i), FRAME_WIDTH, 3)?;
        let top: Vec<String> = p
            .top
            .iter()
            .map(|s| format!("{} {:.1}%", s.class, 100.0 * s.probability))
            .collect();
        println!(
            "clip {i} (true class {}): {}",
            pack.classes[pack.labels[i]],
            top.join(", ")
        );
    }
    Ok(())
}
