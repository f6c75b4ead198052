//! `signflow train` and `signflow eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Args;
use signflow::data::{split, Dataset, Source, SplitSpec};
use signflow::infer::InferencePipeline;
use signflow::model::{Checkpoint, ModelConfig};
use signflow::train::state::TrainingState;
use signflow::train::trainer::STATE_FILE;
use signflow::train::{
    evaluate, initial_model, Augment, EvalReport, Schedule, Trainer, TrainingConfig,
};
use signflow::{with_backend, AnyBackend, Backend, Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// Training data: a clip pack or a feature pack (or `data` in --config; with --resume, the
    /// run's own).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation data (a pack with the same classes); default: none, or --split.
    #[arg(long, conflicts_with = "split")]
    pub val: Option<PathBuf>,
    /// Hold out part of --data for validation: `random:0.2` (that share of each class) or
    /// `group:NAME` (one signer's clips); default: no validation.
    #[arg(long)]
    pub split: Option<SplitSpec>,
    /// Output directory: best/final checkpoints, training state, metrics.jsonl, curves.svg;
    /// default: none, and nothing is saved.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start from this model checkpoint (fine-tuning).
    #[arg(long, conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Continue the run saved in this output directory, with its configuration.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// A JSON file of TrainingConfig fields (and an optional `model` object); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, help = super::DEVICE_HELP)]
    pub device: Option<String>,
    /// Passes over the training data.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Clips per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches whose gradients are summed into one optimizer update.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Loader threads preparing batches beside training.
    #[arg(long)]
    pub num_workers: Option<usize>,
    /// Peak learning rate of AdamW, reached after the warmup.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW's decoupled weight decay, applied to every parameter.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear warmup from 0, in update steps; above 0 it takes precedence over --warmup-ratio.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Linear warmup from 0, as a share of all update steps (when --warmup-steps is 0).
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// The learning rate after warmup: `cosine` (down to 0 at the last step) or `constant`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Cross-entropy label smoothing, in [0, 1).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Clip gradients to this global norm (0 = off).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Stop after this many epochs without a better validation top-1 (0 = off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// The smallest rise of the validation top-1, as a fraction, that counts as better (for
    /// --patience).
    #[arg(long)]
    pub min_delta: Option<f64>,
    /// Augmentation of raw training clips: `none`, or `default` (a random time stretch,
    /// scale, rotation, shift and frozen spans per clip).
    #[arg(long)]
    pub augment: Option<String>,
    /// With --augment default: also mirror clips (left/right swap) at random.
    #[arg(long)]
    pub mirror: bool,
    /// Keep the data's order (no shuffling).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the initialisation, shuffling, augmentation and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a step record to metrics.jsonl every this many updates.
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Mixed precision: only `none` until it lands.
    #[arg(long)]
    pub amp: Option<String>,
    /// Share of the device's memory the buffer pool may hold, in (0, 1].
    #[arg(long)]
    pub memory_fraction: Option<f64>,
    /// Absolute memory budget in MiB (overrides --memory-fraction); default: none.
    #[arg(long)]
    pub memory_limit_mb: Option<u64>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The model's size (ignored with --init and --resume, whose checkpoint fixes it, except dropout).
#[derive(Args)]
pub struct ModelArgs {
    /// Width of the model: the size of each frame's embedding.
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Attention heads per layer (they split --d-model evenly).
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// Transformer encoder layers.
    #[arg(long)]
    pub num_layers: Option<usize>,
    /// Width of each layer's feed-forward block.
    #[arg(long)]
    pub ff_dim: Option<usize>,
    /// Length of the model's input, in frames: clips are resampled to it.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Dropout probability, in [0, 1).
    #[arg(long)]
    pub dropout: Option<f32>,
}

/// The default of each `train` flag that has one, by argument id, for `--help`. These flags
/// are options rather than clap defaults because a `--config` file sits between a flag and
/// the default; the values are `TrainingConfig::default()`'s and `ModelConfig::default()`'s.
pub fn flag_defaults() -> Vec<(&'static str, String)> {
    let t = TrainingConfig::default();
    let m = ModelConfig::default();
    let name = |v: serde_json::Result<serde_json::Value>| match v {
        Ok(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    };
    vec![
        ("device", t.device),
        ("epochs", t.num_epochs.to_string()),
        ("batch_size", t.batch_size.to_string()),
        ("grad_accum", t.gradient_accumulation_steps.to_string()),
        ("num_workers", t.num_workers.to_string()),
        ("lr", t.learning_rate.to_string()),
        ("weight_decay", t.weight_decay.to_string()),
        ("warmup_steps", t.warmup_steps.to_string()),
        ("warmup_ratio", t.warmup_ratio.to_string()),
        ("schedule", name(serde_json::to_value(t.schedule))),
        ("label_smoothing", t.label_smoothing.to_string()),
        ("grad_clip", t.grad_clip.to_string()),
        ("patience", t.patience.to_string()),
        ("min_delta", t.min_delta.to_string()),
        ("augment", name(serde_json::to_value(t.augment))),
        ("seed", t.seed.to_string()),
        ("log_every", t.log_every.to_string()),
        ("amp", t.amp),
        ("memory_fraction", t.memory_fraction.to_string()),
        ("d_model", m.d_model.to_string()),
        ("num_heads", m.num_heads.to_string()),
        ("num_layers", m.num_layers.to_string()),
        ("ff_dim", m.ff_dim.to_string()),
        ("max_seq_len", m.max_seq_len.to_string()),
        ("dropout", m.dropout.to_string()),
    ]
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    field: &'static str,
    text: &str,
    allowed: &'static str,
) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        Error::InvalidConfig {
            field,
            value: text.to_string(),
            allowed,
        }
    })
}

impl TrainArgs {
    /// The training and model configurations: defaults, then --config, then flags.
    /// The third value says whether dropout was set (else `--init` keeps its checkpoint's).
    fn resolve(&self) -> Result<(TrainingConfig, ModelConfig, bool)> {
        let (mut t, model_json) = match &self.config {
            Some(path) => TrainingConfig::from_file(path)?,
            None => (TrainingConfig::default(), None),
        };
        let dropout_set = self.model.dropout.is_some()
            || model_json
                .as_ref()
                .is_some_and(|v| v.get("dropout").is_some());
        let mut m: ModelConfig = match model_json {
            Some(v) => serde_json::from_value(v).map_err(|e| Error::InvalidConfig {
                field: "model",
                value: e.to_string(),
                allowed: "an object of ModelConfig fields (d_model, num_heads, num_layers, ff_dim, max_seq_len, dropout, ...)",
            })?,
            None => ModelConfig::default(),
        };
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src.clone() {
                    $dst = v;
                }
            };
        }
        set!(t.device, self.device);
        set!(t.num_epochs, self.epochs);
        set!(t.batch_size, self.batch_size);
        set!(t.gradient_accumulation_steps, self.grad_accum);
        set!(t.num_workers, self.num_workers);
        set!(t.learning_rate, self.lr);
        set!(t.weight_decay, self.weight_decay);
        set!(t.warmup_steps, self.warmup_steps);
        set!(t.warmup_ratio, self.warmup_ratio);
        set!(t.label_smoothing, self.label_smoothing);
        set!(t.grad_clip, self.grad_clip);
        set!(t.patience, self.patience);
        set!(t.min_delta, self.min_delta);
        set!(t.seed, self.seed);
        set!(t.log_every, self.log_every);
        set!(t.amp, self.amp);
        set!(t.memory_fraction, self.memory_fraction);
        if self.memory_limit_mb.is_some() {
            t.memory_limit_mb = self.memory_limit_mb;
        }
        if let Some(s) = &self.schedule {
            t.schedule = parse_enum::<Schedule>("schedule", s, "cosine or constant")?;
        }
        if let Some(a) = &self.augment {
            t.augment = parse_enum::<Augment>("augment", a, "none or default")?;
        }
        t.mirror |= self.mirror;
        if self.no_shuffle {
            t.shuffle = false;
        }
        if self.out.is_some() {
            t.out_dir = self.out.clone();
        }
        if self.data.is_some() {
            t.data = self.data.clone();
        }
        if self.val.is_some() {
            (t.val, t.split) = (self.val.clone(), None);
        }
        if let Some(s) = &self.split {
            (t.split, t.val) = (Some(s.to_string()), None);
        }
        set!(m.d_model, self.model.d_model);
        set!(m.num_heads, self.model.num_heads);
        set!(m.num_layers, self.model.num_layers);
        set!(m.ff_dim, self.model.ff_dim);
        set!(m.max_seq_len, self.model.max_seq_len);
        set!(m.dropout, self.model.dropout);
        t.validate()?;
        Ok((t, m, dropout_set))
    }
}

fn open_device(t: &TrainingConfig) -> Result<AnyBackend> {
    let device = AnyBackend::open(&t.gpu_config())?;
    tracing::info!("device: {} ({})", device.info().name, device.info().backend);
    Ok(device)
}

impl TrainArgs {
    /// The saved configuration of the run in `dir`, which `--resume` continues unchanged: flags
    /// that would change it are refused (only the device and loader threads may differ).
    fn resumed(&self, dir: &Path) -> Result<TrainingConfig> {
        let state = TrainingState::load(&dir.join(STATE_FILE))?;
        let mut t = state.config;
        t.out_dir = Some(dir.to_path_buf());
        let m = &self.model;
        let changing: Vec<&str> = [
            ("--config", self.config.is_some()),
            ("--out", self.out.is_some()),
            ("--epochs", self.epochs.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--grad-accum", self.grad_accum.is_some()),
            ("--lr", self.lr.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--warmup-steps", self.warmup_steps.is_some()),
            ("--warmup-ratio", self.warmup_ratio.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--label-smoothing", self.label_smoothing.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--patience", self.patience.is_some()),
            ("--min-delta", self.min_delta.is_some()),
            ("--augment", self.augment.is_some()),
            ("--mirror", self.mirror),
            ("--no-shuffle", self.no_shuffle),
            ("--seed", self.seed.is_some()),
            ("--log-every", self.log_every.is_some()),
            ("--amp", self.amp.is_some()),
            ("--memory-fraction", self.memory_fraction.is_some()),
            ("--memory-limit-mb", self.memory_limit_mb.is_some()),
            ("--d-model", m.d_model.is_some()),
            ("--num-heads", m.num_heads.is_some()),
            ("--num-layers", m.num_layers.is_some()),
            ("--ff-dim", m.ff_dim.is_some()),
            ("--max-seq-len", m.max_seq_len.is_some()),
            ("--dropout", m.dropout.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !changing.is_empty() {
            return Err(Error::InvalidConfig {
                field: "resume",
                value: changing.join(" "),
                allowed: "no flags that change the run: --resume continues it with its saved \
                          configuration (only --device and --num-workers may differ)",
            });
        }
        let same_file = |a: &Path, b: &Path| {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        };
        for (flag, given, saved) in [
            ("--data", &self.data, &t.data),
            ("--val", &self.val, &t.val),
        ] {
            if let Some(g) = given {
                if !saved.as_deref().is_some_and(|s| same_file(g, s)) {
                    return Err(Error::data(
                        g,
                        format!("{flag} differs from the run being resumed ({saved:?}); leave it out to use the run's"),
                    ));
                }
            }
        }
        if let Some(s) = &self.split {
            if t.split.as_deref() != Some(s.to_string().as_str()) {
                return Err(Error::InvalidConfig {
                    field: "split",
                    value: s.to_string(),
                    allowed: "the run's own split when resuming (leave --split out to use it)",
                });
            }
        }
        if let Some(d) = &self.device {
            t.device = d.clone();
        }
        if let Some(n) = self.num_workers {
            t.num_workers = n;
        }
        Ok(t)
    }
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
                    "its classes differ from the training data's ({} vs {}); validation needs the same class list",
                    val.classes().len(),
                    classes.len()
                ),
            ));
        }
        return Ok((Source::all(data)?, Some(Source::all(val)?), classes));
    }
    if let Some(spec) = &t.split {
        let spec: SplitSpec = spec.parse()?;
        let s = split(&data, &spec, t.seed)?;
        eprintln!("split {spec}: {}", s.note);
        return Ok((
            Source::new(data.clone(), s.train)?,
            Some(Source::new(data, s.val)?),
            classes,
        ));
    }
    Ok((Source::all(data)?, None, classes))
}

pub fn train(args: TrainArgs) -> Result<()> {
    let (t, mut m, dropout_set) = match &args.resume {
        Some(dir) => (args.resumed(dir)?, ModelConfig::default(), false),
        None => args.resolve()?,
    };
    if t.out_dir.is_none() {
        eprintln!("note: no --out directory: the trained model will not be saved");
    }
    let device = open_device(&t)?;
    let (train, val, classes) = sources(&t)?;
    if let Dataset::Features(p) = train.dataset() {
        // A feature pack fixes the input width (an --init checkpoint brings its own).
        m.num_features = p.num_features;
    }
    eprintln!(
        "training on {} clips, validating on {}",
        train.indices().len(),
        val.as_ref().map_or(0, |v| v.indices().len())
    );
    with_backend!(&device, b => run_training(b, &args, t, m, dropout_set, classes, train, val))
}

#[allow(clippy::too_many_arguments)]
fn run_training<B: Backend>(
    b: &B,
    args: &TrainArgs,
    t: TrainingConfig,
    mut m: ModelConfig,
    dropout_set: bool,
    classes: Vec<String>,
    train: Source,
    val: Option<Source>,
) -> Result<()> {
    let mut trainer = match &args.resume {
        Some(dir) => {
            let trainer = Trainer::resume(b, dir)?;
            if trainer.classes() != classes.as_slice() {
                return Err(Error::data(
                    "the training data",
                    "its classes differ from the run being resumed",
                ));
            }
            trainer
        }
        None => {
            let init = args.init.as_deref().map(Checkpoint::load).transpose()?;
            if let (Some(ckpt), false) = (&init, dropout_set) {
                m.dropout = ckpt.config.dropout;
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
    let flag = trainer.interrupt_flag();
    // A second Ctrl-C while saving would lose nothing either: the files are renamed into place.
    let _ = ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: saving after the current update ...");
        flag.store(true, Ordering::SeqCst);
    });
    let epochs = trainer.fit(train, val)?;
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
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, help = super::JSON_HELP)]
    pub json: bool,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let ckpt = signflow::infer::load_model(&args.model)?;
    let data = Arc::new(Dataset::load(&args.data)?);
    say_if_generated(&args.data, &data);
    check_classes(&args.model, &ckpt, &args.data, data.classes())?;
    let device = super::open_device(&args.device)?;
    let loader = super::inference_loader(data, ckpt.preprocessing.seq_len, args.batch_size)?;
    let report = with_backend!(&device, b => {
        evaluate(b, InferencePipeline::from_checkpoint(b, &ckpt)?.model(), &loader)
    })?;
    if args.json {
        super::print_json(&serde_json::json!({
            "clips": report.clips, "loss": report.loss, "top1": report.top1,
            "topk": report.topk, "k": report.k,
            "per_class": ckpt.classes.iter().zip(&report.per_class).map(|(c, (ok, n))| serde_json::json!({"class": c, "correct": ok, "clips": n, "accuracy": if *n > 0 { Some(*ok as f64 / *n as f64) } else { None }})).collect::<Vec<_>>(),
        }));
    } else {
        print_report(&report, &ckpt.classes);
    }
    Ok(())
}

/// Generated packs are for benchmarks and tests; a result on one says nothing about signing.
pub fn say_if_generated(path: &Path, data: &Dataset) {
    if let Dataset::Clips(p) = data {
        if p.source.contains("generated") {
            eprintln!(
                "note: {} holds GENERATED clips ({}), not real signing",
                path.display(),
                p.source
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
                "its {} classes ({}) are not the model's {} ({}) in {}; evaluate with a pack of the model's classes",
                classes.len(),
                preview(classes),
                ckpt.classes.len(),
                preview(&ckpt.classes),
                model.display()
            ),
        ));
    }
    Ok(())
}

fn preview(names: &[String]) -> String {
    let mut s = names.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 6 {
        s += ", ...";
    }
    s
}

fn print_report(r: &EvalReport, classes: &[String]) {
    println!(
        "clips {}  loss {:.4}  top-1 {:.2}%  top-{} {:.2}%",
        r.clips,
        r.loss,
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
        println!("{c:<24} {ok:>8} {n:>8} {acc:>9}");
    }
}
