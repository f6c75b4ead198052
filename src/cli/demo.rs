//! `signflow demo`: a one-command tour on a fresh machine. Picks the device, runs the
//! self-test, trains a small model on a sample of real signing that ships inside the binary
//! (`data/demo/`), evaluates it on a signer it never trained on and predicts some of that
//! signer's clips.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use safetensors::SafeTensors;
use signflow::data::packs::FRAME_WIDTH;
use signflow::data::{split, ClipPack, Dataset, Loader, LoaderConfig, Source, SplitSpec};
use signflow::fsio::lock::DirLock;
use signflow::fsio::write_atomic;
use signflow::infer::InferencePipeline;
use signflow::model::{Checkpoint, ModelConfig};
use signflow::train::trainer::{FINAL_FILE, STATE_FILE};
use signflow::train::{evaluate, initial_model, EvalReport, Trainer, TrainingConfig};
use signflow::{with_backend, AnyBackend, Backend, Error, GpuConfig, Result};

use super::subset::group_counts;

/// The sample of real signing: a `signflow-clips/1` pack drawn from the traduttore recordings
/// (MIT; `data/demo/README.md` says what it holds and the command that made it).
const SAMPLE: &[u8] = include_bytes!("../../data/demo/clips.safetensors");
/// The recordings' licence, which goes wherever a copy of the sample goes.
const SAMPLE_LICENSE: &str = include_str!("../../data/demo/LICENSE");
/// Where the demo writes the sample (its licence beside it as `LICENSE`), so that it can be
/// trained on again with `signflow train`.
const SAMPLE_FILE: &str = "real-clips.safetensors";

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    pub device: String,
    /// Where the sample pack and the run's files go.
    #[arg(long, default_value = "signflow-demo")]
    pub out: PathBuf,
    /// Passes over the training clips.
    #[arg(long, default_value_t = 15, value_parser = super::positive)]
    pub epochs: usize,
    /// The signer (group of the sample) whose clips are held out: trained on never, evaluated
    /// and predicted on.
    #[arg(long, default_value = "TheCamNelson")]
    pub hold_out: String,
    /// Seed of the self-test's inputs, the model's initialisation, the shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the self-test step.
    #[arg(long)]
    pub skip_selftest: bool,
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    // Every check before anything is written.
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
    config.validate()?;
    check_hold_out(&args.hold_out)?;
    if run_dir.join(STATE_FILE).exists() {
        return Err(Error::data(
            &run_dir,
            "holds a run already (state.safetensors); choose another --out for the demo",
        ));
    }
    let pack_path = args.out.join(SAMPLE_FILE);
    let license_path = args.out.join("LICENSE");
    let files = [
        (&pack_path, SAMPLE),
        (&license_path, SAMPLE_LICENSE.as_bytes()),
    ];
    for (path, bytes) in files {
        if holds_other_than(path, bytes) {
            return Err(Error::data(
                path,
                "is not the demo's own file, and the demo writes its sample there; choose \
                 another --out",
            ));
        }
    }
    let device = AnyBackend::open(&super::with_coop_matrix(GpuConfig {
        device: args.device.clone(),
        ..GpuConfig::default()
    }))?;
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
            .filter(|r| r.failed())
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
    // Creates --out too; held until the demo ends.
    let _lock = DirLock::acquire(&run_dir)?;
    for (path, bytes) in files {
        write_atomic(path, bytes)?;
    }
    let pack = ClipPack::load(&pack_path)?;
    eprintln!(
        "3/5 real signing: {} clips of {} signs ({}) by signers {}, recorded for the \
         traduttore project (github.com/traduttore/traduttore-model, MIT licence); written to {}",
        pack.len(),
        pack.classes.len(),
        pack.classes.join(", "),
        group_counts(&pack),
        pack_path.display()
    );
    let data = Arc::new(Dataset::Clips(pack.clone()));
    let spec = SplitSpec::Group {
        name: args.hold_out.clone(),
    };
    let s = split(&data, &spec, args.seed)?;
    eprintln!("    {}", super::printable(&s.note));
    let classes = data.classes().to_vec();
    let (train, held_out) = (
        Source::new(data.clone(), s.train)?,
        Source::new(data.clone(), s.val.clone())?,
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
    eprintln!(
        "4/5 training a small model ({} epochs) on the other signers' clips, into {} ...",
        config.num_epochs,
        run_dir.display()
    );
    let report = with_backend!(&device, b => train_and_evaluate(b, &model_cfg, config, classes, train, held_out))?;
    eprintln!(
        "5/5 the final model on the held-out signer's {} clips, and one prediction of each sign:",
        s.val.len()
    );
    print_held_out(&report, &args.hold_out, &pack.classes);
    let model = Checkpoint::load(&run_dir.join(FINAL_FILE))?;
    with_backend!(&device, b => predict_some(b, &model, &pack, &s.val))?;
    eprintln!(
        "demo done in {:.0} s; curves in {}; train on the sample yourself with\n    signflow \
         train --data {} --split {spec} --out runs/demo",
        started.elapsed().as_secs_f64(),
        run_dir.join("curves.svg").display(),
        pack_path.display()
    );
    Ok(())
}

/// True when something other than `bytes` is at `path` (a file of the user's that the demo
/// must not replace); an earlier demo's identical file is replaced.
fn holds_other_than(path: &Path, bytes: &[u8]) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(_) => false,
        Ok(m) if !m.is_file() || m.len() != bytes.len() as u64 => true,
        Ok(_) => std::fs::read(path).map_or(true, |b| b != bytes),
    }
}

/// Refuses a `--hold-out` signer the sample does not have, from the groups its header lists.
fn check_hold_out(name: &str) -> Result<()> {
    let (_, header) = SafeTensors::read_metadata(SAMPLE)
        .map_err(|e| Error::data(SAMPLE_FILE, format!("the built-in sample: {e}")))?;
    let groups: Vec<String> = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("groups"))
        .and_then(|g| serde_json::from_str(g).ok())
        .unwrap_or_default();
    if groups.iter().any(|g| g == name) {
        return Ok(());
    }
    Err(Error::data(
        "--hold-out",
        format!(
            "the sample has no group `{name}`; its groups are: {}",
            groups.join(", ")
        ),
    ))
}

/// Trains on `train` and evaluates the final model on `held_out`.
fn train_and_evaluate<B: Backend>(
    b: &B,
    model_cfg: &ModelConfig,
    config: TrainingConfig,
    classes: Vec<String>,
    train: Source,
    held_out: Source,
) -> Result<EvalReport> {
    let (model, _) = initial_model(b, model_cfg, &classes, None, config.seed)?;
    let mut trainer = Trainer::new(b, model, config, classes)?;
    trainer.fit(train, None)?;
    let loader = Loader::new(
        held_out,
        LoaderConfig {
            batch_size: 32,
            seq_len: model_cfg.max_seq_len,
            shuffle: false,
            ..LoaderConfig::default()
        },
    )?;
    evaluate(b, trainer.model(), &loader)
}

fn print_held_out(report: &EvalReport, signer: &str, classes: &[String]) {
    // Top-k says something only where k is below the number of signs.
    let topk = if report.k < classes.len() {
        format!(", top-{} {:.1}%", report.k, 100.0 * report.topk)
    } else {
        String::new()
    };
    println!(
        "held-out signer {signer}: top-1 {:.1}%{topk} on {} clips it never trained on (loss {:.4})",
        100.0 * report.top1,
        report.clips,
        report.loss
    );
    let per_sign: Vec<String> = classes
        .iter()
        .zip(&report.per_class)
        .filter(|(_, (_, n))| *n > 0)
        .map(|(c, (ok, n))| format!("{c} {ok}/{n}"))
        .collect();
    println!("  per sign, right at top-1: {}", per_sign.join(", "));
}

/// Predicts one held-out clip of each sign (the middle one of that sign's held-out clips).
fn predict_some<B: Backend>(
    b: &B,
    ckpt: &Checkpoint,
    pack: &ClipPack,
    held_out: &[usize],
) -> Result<()> {
    let pipeline = InferencePipeline::from_checkpoint(b, ckpt)?;
    for class in 0..pack.classes.len() {
        let clips: Vec<usize> = held_out
            .iter()
            .copied()
            .filter(|&i| pack.labels[i] == class)
            .collect();
        let Some(&i) = clips.get(clips.len() / 2) else {
            continue;
        };
        let p = pipeline.predict_frames(pack.clip(i), FRAME_WIDTH, 3)?;
        let top: Vec<String> = match p.finite {
            true => p
                .top
                .iter()
                .map(|s| format!("{} {:.1}%", s.class, 100.0 * s.probability))
                .collect(),
            false => vec!["no prediction: the model's outputs are not finite".into()],
        };
        println!(
            "held-out clip {i} ({} signing {}): {}",
            pack.group_names[pack.groups[i]],
            pack.classes[class],
            top.join(", ")
        );
    }
    Ok(())
}
