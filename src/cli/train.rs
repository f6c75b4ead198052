//! `signflow train` and `signflow eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Args;
use signflow::data::{split, Dataset, Source, SplitSpec};
use signflow::fsio::fingerprint::Fingerprint;
use signflow::fsio::guard::check_writes;
use signflow::fsio::lock::{DirLock, LOCK_FILE};
use signflow::infer::{load_model, InferencePipeline};
use signflow::model::{Checkpoint, ModelConfig, ParamLayout};
use signflow::profile::optimal_batch_size;
use signflow::train::trainer::{
    BEST_FILE, CONFIG_FILE, CURVES_FILE, FINAL_FILE, METRICS_FILE, STATE_FILE,
};
use signflow::train::{evaluate, initial_model, Augment, EvalReport, Trainer, TrainingConfig};
use signflow::{with_backend, AnyBackend, Backend, DType, Error, Result};

use super::train_args::Chosen;
pub use super::train_args::{flag_defaults, TrainArgs};

fn open_device(t: &TrainingConfig) -> Result<AnyBackend> {
    let device = AnyBackend::open(&super::with_coop_matrix(t.gpu_config()))?;
    tracing::info!("device: {} ({})", device.info().name, device.info().backend);
    Ok(device)
}

/// Refuses a run whose output files would replace a file it reads (--data, --val, --init,
/// --config); a resumed run rewrites its own files, as it should.
fn check_run_writes(args: &TrainArgs, t: &TrainingConfig) -> Result<()> {
    let Some(dir) = &t.out_dir else {
        return Ok(());
    };
    let given = [
        ("--data", t.data.as_deref()),
        ("--val", t.val.as_deref()),
        ("--init", args.init.as_deref()),
        ("--config", args.config.as_deref()),
    ];
    let reads: Vec<(&str, &Path)> = given
        .iter()
        .filter_map(|&(flag, path)| Some((flag, path?)))
        .collect();
    let files = [
        BEST_FILE,
        FINAL_FILE,
        STATE_FILE,
        METRICS_FILE,
        CURVES_FILE,
        CONFIG_FILE,
        LOCK_FILE,
    ]
    .map(|f| dir.join(f));
    let writes: Vec<(&str, &Path)> = files.iter().map(|f| ("--out", f.as_path())).collect();
    check_writes(&reads, &writes)
}

/// The training and validation sources: `val`, `split`, or no validation.
fn sources(t: &TrainingConfig) -> Result<(Source, Option<Source>, Vec<String>)> {
    let path = t.data.as_deref().ok_or(Error::InvalidConfig {
        field: "data",
        value: "unset".into(),
        allowed: "a clip pack or feature pack: --data PACK (or `data` in --config)",
    })?;
    let data = Arc::new(Dataset::load(path)?);
    say_if_generated(path, &data);
    let classes = data.classes().to_vec();
    if let Some(path) = &t.val {
        let val = Arc::new(Dataset::load(path)?);
        if val.classes() != classes.as_slice() {
            return Err(Error::data(
                path,
                format!(
                    "its classes differ from the training data's ({}); validation needs the same \
                     class list, in the same order",
                    super::class_difference(
                        "the validation data",
                        val.classes(),
                        "the training data",
                        &classes
                    )
                ),
            ));
        }
        return Ok((Source::all(data)?, Some(Source::all(val)?), classes));
    }
    if let Some(spec) = &t.split {
        let spec: SplitSpec = spec.parse()?;
        let s = split(&data, &spec, t.seed)?;
        eprintln!("split {spec}: {}", super::printable(&s.note));
        return Ok((
            Source::new(data.clone(), s.train)?,
            Some(Source::new(data, s.val)?),
            classes,
        ));
    }
    Ok((Source::all(data)?, None, classes))
}

pub fn train(args: TrainArgs) -> Result<()> {
    let (mut t, mut m, chosen) = match &args.resume {
        Some(dir) => (
            args.resumed(dir)?,
            ModelConfig::default(),
            Chosen::default(),
        ),
        None => args.resolve()?,
    };
    if t.out_dir.is_none() {
        eprintln!("note: no --out directory: the trained model will not be saved");
    }
    check_run_writes(&args, &t)?;
    let device = open_device(&t)?;
    let (train, val, classes) = sources(&t)?;
    if args.resume.is_none() {
        t.data_fingerprint = t.data.as_deref().map(Fingerprint::of_file).transpose()?;
        t.val_fingerprint = t.val.as_deref().map(Fingerprint::of_file).transpose()?;
    }
    if let Dataset::Features(p) = train.dataset() {
        // A feature pack fixes the input width (an --init checkpoint brings its own).
        m.num_features = p.num_features;
        if args.resume.is_none() && t.augment != Augment::None {
            return Err(Error::InvalidFlags {
                flags: "--augment default".into(),
                reason: format!(
                    "augmentation transforms raw clips, and {} is a feature pack, taken as it \
                     is: leave --augment out (or set `augment` to `none`)",
                    t.data.as_deref().unwrap_or(Path::new("")).display()
                ),
            });
        }
    }
    for (field, value) in &chosen.data_sizes {
        let data = match *field {
            "num_classes" => classes.len(),
            _ => m.num_features,
        };
        if *value != data {
            eprintln!(
                "note: `model.{field}` {value} in the config is replaced by the data's {data}"
            );
        }
    }
    eprintln!(
        "training on {} clips, validating on {}",
        train.indices().len(),
        val.as_ref().map_or(0, |v| v.indices().len())
    );
    // Held until the run ends, however it ends.
    let _lock = t.out_dir.as_deref().map(DirLock::acquire).transpose()?;
    with_backend!(&device, b => run_training(b, &args, t, m, chosen, classes, train, val))
}

#[allow(clippy::too_many_arguments)]
fn run_training<B: Backend>(
    b: &B,
    args: &TrainArgs,
    t: TrainingConfig,
    mut m: ModelConfig,
    chosen: Chosen,
    classes: Vec<String>,
    train: Source,
    val: Option<Source>,
) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            let mut trainer = Trainer::resume(b, dir)?;
            if trainer.classes() != classes.as_slice() {
                return Err(Error::data(
                    t.data.as_deref().unwrap_or(Path::new("the training data")),
                    format!(
                        "its classes differ from the run being resumed ({})",
                        super::class_difference("the data", &classes, "the run", trainer.classes())
                    ),
                ));
            }
            trainer.relocate(t)?;
            trainer
        }
        None => {
            let init = args.init.as_deref().map(load_model).transpose()?;
            if let (Some(ckpt), Some(path)) = (&init, &args.init) {
                check_init_sizes(path, ckpt, &m, &chosen)?;
                if !chosen.dropout {
                    m.dropout = ckpt.config.dropout;
                } else if m.dropout != ckpt.config.dropout {
                    eprintln!(
                        "dropout {} (this run's) overrides the checkpoint's {}",
                        m.dropout, ckpt.config.dropout
                    );
                }
            }
            let (model, notes) = initial_model(b, &m, &classes, init.as_ref(), t.seed)?;
            for n in notes {
                eprintln!("{n}");
            }
            eprintln!(
                "model: {} parameters (d_model {}, {} layers, {} heads, ff_dim {}, max_seq_len {})",
                model.layout().count(),
                model.config().d_model,
                model.config().num_layers,
                model.config().num_heads,
                model.config().ff_dim,
                model.config().max_seq_len
            );
            Trainer::new(b, model, t, classes)?
        }
    };
    let cfg = trainer.config();
    if let Some(path) = &cfg.data {
        trainer
            .model()
            .config()
            .check_input(path, train.dataset())?;
    }
    if let (Some(path), Some(v)) = (&cfg.val, &val) {
        trainer.model().config().check_input(path, v.dataset())?;
    }
    let flag = trainer.interrupt_flag();
    // Ctrl-C, SIGTERM and SIGHUP alike. A second one while saving would lose nothing either:
    // the files are renamed into place.
    let _ = ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: saving after the current update ...");
        flag.store(true, Ordering::SeqCst);
    });
    let seq_len = trainer.preprocessing_for(train.dataset()).seq_len;
    let epochs = match trainer.fit(train, val) {
        Err(Error::OutOfMemory {
            request,
            requested_bytes,
            in_use_bytes,
            budget_bytes,
            hint,
        }) if hint.is_empty() => {
            let (config, batch, precision) = (
                trainer.model().config().clone(),
                trainer.config().batch_size,
                trainer.model().precision(),
            );
            // The run's own buffers would crowd the search.
            drop(trainer);
            return Err(Error::OutOfMemory {
                request,
                requested_bytes,
                in_use_bytes,
                budget_bytes,
                hint: batch_that_fits(b, &config, seq_len, batch, precision),
            });
        }
        other => other?,
    };
    if let Some(last) = epochs.last() {
        eprintln!(
            "done: {} epochs; last train loss {:.4}{}",
            epochs.len(),
            last.train_loss,
            match last.val_top1 {
                Some(t1) => format!(", val top-1 {:.2}%", 100.0 * t1),
                None => String::new(),
            }
        );
    }
    if let Some(dir) = &trainer.config().out_dir {
        eprintln!("outputs in {}", dir.display());
    }
    Ok(())
}

/// What to say after a training step ran out of memory at `batch` clips: the largest batch
/// that runs within the same budget, and the gradient accumulation that keeps the effective
/// batch, in the run's `precision`.
fn batch_that_fits<B: Backend>(
    b: &B,
    config: &ModelConfig,
    seq_len: usize,
    batch: usize,
    precision: DType,
) -> String {
    let below = (1, batch.saturating_sub(1).max(1));
    let nothing_fits = "; not even a batch of 1 fits: lower --max-seq-len or the model's size, or \
                        raise --memory-limit-mb / --memory-fraction";
    // A smaller batch means accumulating gradients, in an arena the size of the parameters:
    // held while searching, so that what is found fits beside it.
    let Ok(_accumulator) = b.alloc(&[ParamLayout::new(config).total], DType::F32) else {
        return nothing_fits.into();
    };
    match optimal_batch_size(b, config, seq_len, true, precision, below) {
        Ok(found) if found.batch_size < batch => {
            let accum = batch.div_ceil(found.batch_size);
            format!(
                "; the largest batch that fits is {}: train with --batch-size {} --grad-accum \
                 {accum} for an effective batch of {}",
                found.batch_size,
                found.batch_size,
                found.batch_size * accum
            )
        }
        _ => nothing_fits.into(),
    }
}

/// An --init checkpoint fixes the model's sizes: a size the user chose that differs from it
/// would be silently ignored, so it is refused.
fn check_init_sizes(
    path: &Path,
    ckpt: &Checkpoint,
    m: &ModelConfig,
    chosen: &Chosen,
) -> Result<()> {
    let differing: Vec<String> = chosen
        .sizes
        .iter()
        .filter_map(|(field, source)| {
            let size = |c: &ModelConfig| c.sizes().into_iter().find(|(f, _)| f == field);
            match (size(m), size(&ckpt.config)) {
                (Some((_, want)), Some((_, have))) if want != have => Some(format!(
                    "{source} {want} (the checkpoint's {field} is {have})"
                )),
                _ => None,
            }
        })
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidFlags {
        flags: differing.join(", "),
        reason: format!(
            "--init {} fixes the model's sizes, which a run cannot change: leave these out to \
             fine-tune it, or leave --init out to train a model of these sizes from scratch",
            path.display()
        ),
    })
}

#[derive(Args)]
pub struct EvalArgs {
    /// A model checkpoint (safetensors, or an ONNX file signflow exported).
    #[arg(long)]
    pub model: PathBuf,
    /// A clip pack or feature pack whose classes are the model's.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "auto", help = super::DEVICE_HELP)]
    pub device: String,
    /// Clips per batch.
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    pub batch_size: usize,
    #[arg(long, default_value = "f32", help = super::predict::PRECISION_HELP)]
    pub precision: DType,
    #[arg(long, help = super::JSON_HELP)]
    pub json: bool,
}

/// Prints the report, then refuses a result with non-finite logits (the scores count those
/// clips as wrong, and the loss is null in JSON) with exit status 1.
pub fn eval(args: EvalArgs) -> Result<()> {
    let ckpt = signflow::infer::load_model(&args.model)?;
    let data = Arc::new(Dataset::load(&args.data)?);
    say_if_generated(&args.data, &data);
    check_classes(&args.model, &ckpt, &args.data, data.classes())?;
    ckpt.config.check_input(&args.data, &data)?;
    let device = super::open_device(&args.device)?;
    let loader = super::inference_loader(data, ckpt.preprocessing.seq_len, args.batch_size)?;
    let report = with_backend!(&device, b => {
        let pipeline = InferencePipeline::from_checkpoint(b, &ckpt)?.with_precision(args.precision)?;
        evaluate(b, pipeline.model(), &loader)
    })?;
    if args.json {
        let per_class: Vec<_> = ckpt
            .classes
            .iter()
            .zip(&report.per_class)
            .map(|(c, &(ok, n))| {
                let accuracy = (n > 0).then(|| ok as f64 / n as f64);
                serde_json::json!({"class": c, "correct": ok, "clips": n, "accuracy": accuracy})
            })
            .collect();
        super::print_json(&serde_json::json!({
            "clips": report.clips, "loss": report.loss.is_finite().then_some(report.loss),
            "non_finite_clips": report.non_finite, "top1": report.top1,
            "topk": report.topk, "k": report.k, "per_class": per_class,
        }));
    } else {
        print_report(&report, &ckpt.classes);
    }
    if !report.is_finite() {
        return Err(Error::NonFiniteOutput {
            input: args.data.display().to_string(),
            detail: format!("loss {}; {}", report.loss, report.non_finite_note()),
        });
    }
    Ok(())
}

/// Generated packs are for benchmarks and tests; a result on one says nothing about signing.
pub fn say_if_generated(path: &Path, data: &Dataset) {
    if let Dataset::Clips(p) = data {
        if p.source.contains("generated") {
            eprintln!(
                "note: {} holds GENERATED clips, not real signing (its source: {})",
                path.display(),
                super::printable(&p.source)
            );
        }
    }
}

/// A pack scored against a model with other class names would give a silently wrong score.
pub fn check_classes(
    model: &Path,
    ckpt: &Checkpoint,
    data: &Path,
    classes: &[String],
) -> Result<()> {
    if classes != ckpt.classes.as_slice() {
        return Err(Error::data(
            data,
            format!(
                "its {} classes are not the model's {} in {} ({}); evaluate with a pack of the \
                 model's classes",
                classes.len(),
                ckpt.classes.len(),
                model.display(),
                super::class_difference("the pack", classes, "the model", &ckpt.classes)
            ),
        ));
    }
    Ok(())
}

fn print_report(r: &EvalReport, classes: &[String]) {
    let loss = if r.is_finite() {
        format!("{:.4}", r.loss)
    } else {
        format!("{} (non-finite: {})", r.loss, r.non_finite_note())
    };
    println!(
        "clips {}  loss {loss}  top-1 {:.2}%  top-{} {:.2}%",
        r.clips,
        100.0 * r.top1,
        r.k,
        100.0 * r.topk
    );
    println!(
        "{:<24} {:>8} {:>8} {:>9}",
        "class", "correct", "clips", "accuracy"
    );
    for (c, (ok, n)) in classes.iter().zip(&r.per_class) {
        let acc = if *n > 0 {
            format!("{:.1}%", 100.0 * *ok as f64 / *n as f64)
        } else {
            "-".into()
        };
        println!("{:<24} {ok:>8} {n:>8} {acc:>9}", super::printable(c));
    }
}
