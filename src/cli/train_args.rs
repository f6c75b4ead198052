//! `signflow train`'s flags and how they resolve into the run's configuration: defaults, then
//! `--config`, then flags; or, with `--resume`, the run's saved configuration.

use std::path::{Path, PathBuf};

use clap::Args;
use signflow::data::SplitSpec;
use signflow::fsio::fingerprint::Fingerprint;
use signflow::fsio::guard::{resolve, same_file};
use signflow::model::ModelConfig;
use signflow::train::state::TrainingState;
use signflow::train::trainer::STATE_FILE;
use signflow::train::{Augment, Schedule, TrainingConfig};
use signflow::{AmpDtype, Error, Result};

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
    /// Start from this model checkpoint, safetensors or ONNX from `signflow export` (fine-tuning).
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
    /// Mixed-precision training: `none`, `f16` (with dynamic loss scaling) or `bf16`.
    /// Activations and the products' weight copies are stored in that format; master weights,
    /// AdamW's moments, layer-norm statistics and the loss stay f32 (`use_amp`, `amp_dtype`).
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

/// The model's size (with --init and --resume, the checkpoint's: flags that differ from it are
/// refused, except dropout).
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

impl ModelArgs {
    /// Each size flag: the field of `ModelConfig::sizes` it sets, its name, and whether it
    /// was given.
    fn size_flags(&self) -> [(&'static str, &'static str, bool); 5] {
        [
            ("d_model", "--d-model", self.d_model.is_some()),
            ("num_heads", "--num-heads", self.num_heads.is_some()),
            ("num_layers", "--num-layers", self.num_layers.is_some()),
            ("ff_dim", "--ff-dim", self.ff_dim.is_some()),
            ("max_seq_len", "--max-seq-len", self.max_seq_len.is_some()),
        ]
    }
}

/// The parts of the model's configuration the user chose, by flag or in --config's `model`:
/// an --init checkpoint must have the same sizes, and keeps its dropout unless one was chosen.
#[derive(Default)]
pub(super) struct Chosen {
    /// Size fields set, each with where it was set (`--d-model`, or the config file).
    pub sizes: Vec<(&'static str, String)>,
    pub dropout: bool,
    /// `num_classes` and `num_features` given in the config file, which the data decides.
    pub data_sizes: Vec<(&'static str, usize)>,
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
        ("amp", "none".into()),
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
    /// The training and model configurations: defaults, then --config, then flags; and what
    /// of the model the user chose.
    pub(super) fn resolve(&self) -> Result<(TrainingConfig, ModelConfig, Chosen)> {
        let (mut t, model_json) = match &self.config {
            Some(path) => TrainingConfig::from_file(path)?,
            None => (TrainingConfig::default(), None),
        };
        let in_file = |field: &str| model_json.as_ref().is_some_and(|v| v.get(field).is_some());
        let config_name = self
            .config
            .as_deref()
            .map_or(String::new(), |p| p.display().to_string());
        let mut chosen = Chosen {
            sizes: self
                .model
                .size_flags()
                .into_iter()
                .filter_map(|(field, flag, given)| match given {
                    true => Some((field, flag.to_string())),
                    false if in_file(field) => {
                        Some((field, format!("`model.{field}` in {config_name}")))
                    }
                    false => None,
                })
                .collect(),
            dropout: self.model.dropout.is_some() || in_file("dropout"),
            data_sizes: Vec::new(),
        };
        let mut m = match &model_json {
            Some(v) => ModelConfig::from_json(&config_name, v)?,
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
        if let Some(amp) = &self.amp {
            // Flags override the file: `none` turns AMP off whatever its dtype says.
            match AmpDtype::parse_amp(amp)? {
                Some(dtype) => (t.use_amp, t.amp_dtype) = (true, dtype),
                None => t.use_amp = false,
            }
        }
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
        // Recorded absolute, so that the run resumes from any working directory.
        t.data = t.data.as_deref().map(resolve);
        t.val = t.val.as_deref().map(resolve);
        if let Some(s) = &self.split {
            (t.split, t.val) = (Some(s.to_string()), None);
        }
        for (field, value) in [
            ("num_classes", m.num_classes),
            ("num_features", m.num_features),
        ] {
            if in_file(field) {
                chosen.data_sizes.push((field, value));
            }
        }
        set!(m.d_model, self.model.d_model);
        set!(m.num_heads, self.model.num_heads);
        set!(m.num_layers, self.model.num_layers);
        set!(m.ff_dim, self.model.ff_dim);
        set!(m.max_seq_len, self.model.max_seq_len);
        set!(m.dropout, self.model.dropout);
        t.validate()?;
        if t.mirror && t.augment == Augment::None {
            return Err(Error::InvalidFlags {
                flags: "--mirror".into(),
                reason: "mirroring is part of the augmentation: give --augment default with it \
                         (or leave --mirror out)"
                    .into(),
            });
        }
        if self.warmup_ratio.is_some() && self.warmup_steps.is_some_and(|s| s > 0) {
            return Err(Error::InvalidFlags {
                flags: "--warmup-ratio with --warmup-steps".into(),
                reason: "--warmup-steps above 0 takes precedence, so --warmup-ratio would have no \
                         effect: give one of them"
                    .into(),
            });
        }
        Ok((t, m, chosen))
    }
}

impl TrainArgs {
    /// The saved configuration of the run in `dir`, which `--resume` continues unchanged: flags
    /// that would change it are refused (only the device and loader threads may differ).
    pub(super) fn resumed(&self, dir: &Path) -> Result<TrainingConfig> {
        if !dir.join(STATE_FILE).is_file() {
            return Err(Error::data(
                dir,
                format!(
                    "is not a run directory (a folder that `signflow train --out` wrote, holding \
                     {STATE_FILE}); give --resume the --out of the run to continue"
                ),
            ));
        }
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
        (t.data, t.data_fingerprint) =
            resumed_input("--data", self.data.as_deref(), &t.data, &t.data_fingerprint)?.unzip();
        (t.val, t.val_fingerprint) =
            resumed_input("--val", self.val.as_deref(), &t.val, &t.val_fingerprint)?.unzip();
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

/// The data file a resumed run reads for `flag`, and its fingerprint: the run's own
/// (`saved`), or the path given when it is the same file or a copy with the recorded
/// fingerprint. Refused when the file changed since the run started; a run from before
/// fingerprints is resumed unchecked, says so, and records the fingerprint from now on.
fn resumed_input(
    flag: &str,
    given: Option<&Path>,
    saved: &Option<PathBuf>,
    recorded: &Option<Fingerprint>,
) -> Result<Option<(PathBuf, Fingerprint)>> {
    let Some(saved) = saved.as_deref() else {
        return match given {
            Some(g) => Err(Error::data(
                g,
                format!("{flag} was not part of the run being resumed; leave it out"),
            )),
            None => Ok(None),
        };
    };
    let mut now = None;
    let path = match given {
        None if !saved.exists() => {
            return Err(Error::data(
                saved,
                format!(
                    "the run's {flag} is not there (seen from {}); give its new place with {flag}",
                    std::env::current_dir().map_or("here".into(), |d| d.display().to_string())
                ),
            ))
        }
        None => saved,
        Some(g) if same_file(g, saved) => g,
        Some(g) => {
            let copy = match recorded {
                Some(r) => {
                    let fingerprint = Fingerprint::of_file(g)?;
                    let same = r.change(&fingerprint).is_none();
                    now = Some(fingerprint);
                    same
                }
                None => !saved.exists(),
            };
            if !copy {
                return Err(Error::data(
                    g,
                    format!(
                        "{flag} is not the data of the run being resumed ({}); leave it out to \
                         use the run's",
                        saved.display()
                    ),
                ));
            }
            eprintln!(
                "note: {flag} {} stands for the run's {}, {}",
                g.display(),
                saved.display(),
                if recorded.is_some() {
                    "with the same contents"
                } else {
                    "which is gone"
                }
            );
            g
        }
    };
    let fingerprint = match now {
        Some(f) => f,
        None => Fingerprint::of_file(path)?,
    };
    match recorded {
        Some(r) => {
            if let Some(change) = r.change(&fingerprint) {
                return Err(Error::data(
                    path,
                    format!(
                        "changed since the run started ({change}); resuming would continue on \
                         other data: restore the run's data, or start a new run on this file \
                         with another --out"
                    ),
                ));
            }
        }
        None => eprintln!(
            "note: this run predates data fingerprints: {} is not checked for changes since the \
             run started (its fingerprint is recorded from now on)",
            path.display()
        ),
    }
    Ok(Some((resolve(path), fingerprint)))
}
