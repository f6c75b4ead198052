//! `TrainingConfig`: every setting of a training run, the counterpart of the PyTorch system's
//! `TrainingConfig`. A config file (`--config FILE`) is a JSON object whose keys are the field
//! names below, plus an optional `model` object that the model's own configuration reads.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{AmpDtype, GpuConfig};
use crate::error::{Error, Result};
use crate::fsio::fingerprint::Fingerprint;
use crate::fsio::read::read_text_file;

/// What the learning rate does after the linear warmup (see [`crate::train::LrSchedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the base rate down to 0 at the last step.
    #[default]
    Cosine,
    /// The base rate until the end.
    Constant,
}

/// Which augmentation the training loader applies to raw clips (feature packs are never
/// augmented; see DESIGN.md's Data section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// Clips as they are.
    #[default]
    None,
    /// The data layer's default set of random transforms.
    Default,
}

/// Every setting of a training run. Missing keys take the defaults shown on each field;
/// unknown keys are errors, so that a misspelt setting never silently does nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// The training data, a clip pack or a feature pack (`--data`); recorded (as an absolute
    /// path) so that a run can be resumed or repeated. Default unset.
    #[serde(with = "crate::fsio::path_json")]
    pub data: Option<PathBuf>,
    /// Validation data with the same classes (`--val`). Default unset.
    #[serde(with = "crate::fsio::path_json")]
    pub val: Option<PathBuf>,
    /// What `data` held when the run started, so that a resume refuses data that changed.
    /// Recorded by the run, never read from a config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<Fingerprint>,
    /// The same for `val`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fingerprint: Option<Fingerprint>,
    /// Part of `data` held out for validation, `random:FRACTION` or `group:NAME` (`--split`).
    /// Default unset.
    pub split: Option<String>,
    /// A device request as DESIGN.md's Devices section reads (`auto`, `cpu`, `gpu:1`, ...).
    /// Default `auto`.
    pub device: String,
    /// Mixed-precision training (DESIGN.md, Precision; the replaced system's `use_amp`):
    /// activations and the products' weight copies in `amp_dtype`, master weights, moments,
    /// statistics and the loss f32. A config file may say `"amp": "none" | "f16" | "bf16"`
    /// instead, as the command line's `--amp` does. Default false.
    pub use_amp: bool,
    /// The half-precision format of `use_amp`: `f16` (`float16`) or `bf16` (`bfloat16`).
    /// Default `f16`.
    pub amp_dtype: AmpDtype,
    /// The f16 loss scale the run starts from (PyTorch's `GradScaler(init_scale)`); bf16 needs
    /// no scaling. Default 65536.
    pub amp_init_scale: f64,
    /// Clean f16 updates in a row after which the loss scale doubles (`growth_interval`).
    /// Default 2000.
    pub amp_growth_interval: u32,
    /// Clips per micro-batch. Default 32.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer update. Default 1.
    pub gradient_accumulation_steps: usize,
    /// Loader threads preparing batches beside the training loop. Default 2.
    pub num_workers: usize,
    /// Passes over the training set. Default 30.
    pub num_epochs: usize,
    /// The peak (base) learning rate of AdamW. Default 3e-4.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay, applied to every parameter as
    /// `torch.optim.AdamW(model.parameters())` does. Default 0.05.
    pub weight_decay: f64,
    /// Update steps of linear warmup from 0; when above 0 it takes precedence over
    /// `warmup_ratio`. Default 0.
    pub warmup_steps: usize,
    /// Warmup as a share of all update steps, used when `warmup_steps` is 0. Default 0.05.
    pub warmup_ratio: f64,
    /// What the rate does after warmup. Default `cosine`.
    pub schedule: Schedule,
    /// Cross-entropy label smoothing, in [0, 1). Default 0.1.
    pub label_smoothing: f64,
    /// Maximum global gradient norm (0 = no clipping). DESIGN.md calls it
    /// `gradient_clip_max_norm`; a config file may use either name. Default 1.0.
    #[serde(alias = "gradient_clip_max_norm")]
    pub grad_clip: f64,
    /// Early stopping: epochs without a better validation top-1 before stopping (0 = never
    /// stop early; without a validation set it never stops). Default 0.
    pub patience: usize,
    /// The smallest rise of the validation top-1 (a fraction) that counts as an improvement.
    /// Default 0.
    pub min_delta: f64,
    /// Seed of parameter initialisation, shuffling, augmentation and dropout. Default 0.
    pub seed: u64,
    /// Shuffle the training set each epoch. Default true.
    pub shuffle: bool,
    /// Augmentation of raw training clips. Default `none`.
    pub augment: Augment,
    /// With `augment: default`, also mirror half the training clips at random (left and right
    /// swapped); ignored otherwise. Default false.
    pub mirror: bool,
    /// Report the running loss every this many update steps. Default 10.
    pub log_every: usize,
    /// Empty the buffer pool's cache every this many update steps (0 = never). Default 0.
    pub empty_cache_interval: u32,
    /// Where checkpoints, `metrics.jsonl`, `curves.svg` and `config.json` go; when unset,
    /// nothing is written and the model lives only in the `Trainer`. Default unset.
    #[serde(with = "crate::fsio::path_json")]
    pub out_dir: Option<PathBuf>,
    /// Share of the device's memory the buffer pool may hold, in (0, 1]. Default 0.9.
    pub memory_fraction: f64,
    /// An absolute memory budget in MiB; takes precedence over `memory_fraction`. Default unset.
    pub memory_limit_mb: Option<u64>,
    /// AdamW's first-moment decay, in [0, 1). Default 0.9.
    pub beta1: f64,
    /// AdamW's second-moment decay, in [0, 1). Default 0.999.
    pub beta2: f64,
    /// AdamW's denominator epsilon, greater than 0. Default 1e-8.
    pub eps: f64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            data: None,
            val: None,
            data_fingerprint: None,
            val_fingerprint: None,
            split: None,
            device: "auto".into(),
            use_amp: false,
            amp_dtype: AmpDtype::F16,
            amp_init_scale: 65536.0,
            amp_growth_interval: 2000,
            batch_size: 32,
            gradient_accumulation_steps: 1,
            num_workers: 2,
            num_epochs: 30,
            learning_rate: 3e-4,
            weight_decay: 0.05,
            warmup_steps: 0,
            warmup_ratio: 0.05,
            schedule: Schedule::Cosine,
            label_smoothing: 0.1,
            grad_clip: 1.0,
            patience: 0,
            min_delta: 0.0,
            seed: 0,
            shuffle: true,
            augment: Augment::None,
            mirror: false,
            log_every: 10,
            empty_cache_interval: 0,
            out_dir: None,
            memory_fraction: 0.9,
            memory_limit_mb: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// An [`Error::InvalidConfig`] for `field`, whose value is shown with `Display`.
fn invalid(field: &'static str, value: impl ToString, allowed: &'static str) -> Error {
    Error::InvalidConfig {
        field,
        value: value.to_string(),
        allowed,
    }
}

/// Checks that a count is at least 1.
fn at_least_one(field: &'static str, value: usize, allowed: &'static str) -> Result<()> {
    if value == 0 {
        return Err(invalid(field, value, allowed));
    }
    Ok(())
}

/// Checks `value` against a predicate; NaN fails every predicate used here, since each is
/// written as a comparison that NaN makes false.
fn check_f64(
    field: &'static str,
    value: f64,
    ok: impl Fn(f64) -> bool,
    allowed: &'static str,
) -> Result<()> {
    if !(value.is_finite() && ok(value)) {
        return Err(invalid(field, value, allowed));
    }
    Ok(())
}

impl TrainingConfig {
    /// Checks every setting; the first one out of range comes back as
    /// [`Error::InvalidConfig`] (or the device parser's error for `device`).
    pub fn validate(&self) -> Result<()> {
        if self.val.is_some() && self.split.is_some() {
            return Err(invalid(
                "split",
                self.split.as_deref().unwrap_or_default(),
                "unset when a validation pack (val) is given: one or the other",
            ));
        }
        check_f64(
            "amp_init_scale",
            self.amp_init_scale,
            // f32 holds the scale, as PyTorch's does.
            |v| v > 0.0 && v <= f32::MAX as f64,
            "a finite f32 scale greater than 0, such as 65536",
        )?;
        if self.amp_growth_interval == 0 {
            return Err(invalid(
                "amp_growth_interval",
                0,
                "at least 1 clean update before the loss scale doubles",
            ));
        }
        at_least_one("batch_size", self.batch_size, "at least 1 clip per batch")?;
        at_least_one(
            "gradient_accumulation_steps",
            self.gradient_accumulation_steps,
            "at least 1 micro-batch per update (1 = no accumulation)",
        )?;
        at_least_one("num_epochs", self.num_epochs, "at least 1 epoch")?;
        at_least_one(
            "log_every",
            self.log_every,
            "at least 1 update step between loss reports",
        )?;
        check_f64(
            "learning_rate",
            self.learning_rate,
            |v| v > 0.0,
            "a finite rate greater than 0, such as 3e-4",
        )?;
        check_f64(
            "weight_decay",
            self.weight_decay,
            |v| v >= 0.0,
            "a finite decay of at least 0 (0 = none)",
        )?;
        check_f64(
            "warmup_ratio",
            self.warmup_ratio,
            |v| (0.0..=1.0).contains(&v),
            "a share of all update steps between 0 and 1",
        )?;
        check_f64(
            "label_smoothing",
            self.label_smoothing,
            // 1 would make every target uniform, leaving nothing to learn.
            |v| (0.0..1.0).contains(&v),
            "at least 0 and less than 1",
        )?;
        check_f64(
            "grad_clip",
            self.grad_clip,
            |v| v >= 0.0,
            "a finite maximum gradient norm of at least 0 (0 = no clipping)",
        )?;
        check_f64(
            "min_delta",
            self.min_delta,
            |v| v >= 0.0,
            "a finite improvement of at least 0",
        )?;
        check_f64(
            "beta1",
            self.beta1,
            |v| (0.0..1.0).contains(&v),
            "at least 0 and less than 1, such as 0.9",
        )?;
        check_f64(
            "beta2",
            self.beta2,
            |v| (0.0..1.0).contains(&v),
            "at least 0 and less than 1, such as 0.999",
        )?;
        check_f64(
            "eps",
            self.eps,
            |v| v > 0.0,
            "a finite epsilon greater than 0, such as 1e-8",
        )?;
        if let Some(dir) = &self.out_dir {
            if dir.as_os_str().is_empty() {
                return Err(invalid(
                    "out_dir",
                    "\"\"",
                    "a folder path, or unset to let the trainer choose one",
                ));
            }
        }
        // Device, memory_fraction and memory_limit_mb are GpuConfig's settings: one check.
        self.gpu_config().validate()
    }

    /// The device and memory settings, as the backend takes them.
    pub fn gpu_config(&self) -> GpuConfig {
        GpuConfig {
            device: self.device.clone(),
            memory_fraction: self.memory_fraction,
            memory_limit_mb: self.memory_limit_mb,
            empty_cache_interval: self.empty_cache_interval,
            enable_amp: self.use_amp,
            amp_dtype: self.amp_dtype,
            ..GpuConfig::default()
        }
    }

    /// The storage dtype of the run's activations: f32, or `amp_dtype` with AMP.
    pub fn precision(&self) -> crate::DType {
        match self.use_amp {
            true => self.amp_dtype.dtype(),
            false => crate::DType::F32,
        }
    }

    /// Reads a config file: a JSON object whose keys are this struct's field names, and
    /// optionally a `model` object, returned untouched for the model's configuration to read.
    /// The settings are validated. Every error names the file, and the setting when one is
    /// at fault.
    pub fn from_file(path: &Path) -> Result<(TrainingConfig, Option<serde_json::Value>)> {
        let text = read_text_file(path, MAX_CONFIG_BYTES, "config file")?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not valid JSON: {e}")))?;
        let serde_json::Value::Object(mut settings) = value else {
            return Err(Error::data(
                path,
                "a config file must be a JSON object of training settings, \
                 such as {\"batch_size\": 32, \"model\": {...}}",
            ));
        };
        let model = settings.remove("model");
        // A run's own config.json also records what the run was, not how to train: skip it.
        for key in RUN_RECORD_KEYS {
            settings.remove(*key);
        }
        resolve_amp_shorthand(&mut settings).map_err(|e| Error::data(path, e))?;
        if let Some(m) = &model {
            if !m.is_object() {
                return Err(Error::data(
                    path,
                    format!("`model` must be a JSON object of model settings, not {m}"),
                ));
            }
        }
        let config = match serde_json::from_value::<TrainingConfig>(settings.clone().into()) {
            Ok(config) => config,
            Err(whole) => return Err(Error::data(path, name_bad_setting(settings, whole))),
        };
        config
            .validate()
            .map_err(|e| Error::data(path, e.to_string()))?;
        Ok((config, model))
    }
}

/// A config file is a page of settings; anything larger is not one.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Keys of a run's `config.json` that describe the run (the crate's version, the data it saw)
/// rather than set it, so that `--config OUT/config.json` repeats a run.
pub const RUN_RECORD_KEYS: &[&str] = &[
    "signflow_version",
    "dataset",
    "data_fingerprint",
    "val_fingerprint",
];

/// A config file may set mixed precision as the command line does, `"amp": "none" | "f16" |
/// "bf16"` (or `float16`, `bfloat16`), instead of `use_amp` and `amp_dtype`: the shorthand is
/// rewritten here into those two. Beside either of them it must agree with it; a conflict is
/// an error naming both keys.
pub(crate) fn resolve_amp_shorthand(
    settings: &mut serde_json::Map<String, serde_json::Value>,
) -> std::result::Result<(), String> {
    let Some(amp) = settings.remove("amp") else {
        return Ok(());
    };
    let amp = match amp.as_str() {
        Some(text) => AmpDtype::parse_amp(text).map_err(|e| e.to_string())?,
        None => return Err(format!("amp = {amp} is not one of none, f16 or bf16")),
    };
    let use_amp = serde_json::Value::Bool(amp.is_some());
    if let Some(given) = settings.get("use_amp") {
        if *given != use_amp {
            return Err(format!(
                "`amp` {} and `use_amp` {given} disagree: give one of them (or make them agree)",
                amp.map_or("none".into(), |d| d.to_string())
            ));
        }
    }
    settings.insert("use_amp".into(), use_amp);
    if let Some(dtype) = amp {
        let named = serde_json::to_value(dtype).expect("a unit variant serialises");
        if let Some(given) = settings.get("amp_dtype") {
            let same = serde_json::from_value::<AmpDtype>(given.clone()).is_ok_and(|g| g == dtype);
            if !same {
                return Err(format!(
                    "`amp` {dtype} and `amp_dtype` {given} disagree: give one of them (or make \
                     them agree)"
                ));
            }
        }
        settings.insert("amp_dtype".into(), named);
    }
    Ok(())
}

/// serde's message for a bad value ("invalid type: string, expected usize") does not say which
/// key held it. Deserializing the keys one at a time (the others take their defaults) finds
/// the first one at fault so the message can name it.
fn name_bad_setting(
    settings: serde_json::Map<String, serde_json::Value>,
    whole: serde_json::Error,
) -> String {
    for (key, value) in settings {
        let single = serde_json::Map::from_iter([(key.clone(), value)]);
        if let Err(e) = serde_json::from_value::<TrainingConfig>(single.into()) {
            return format!("setting `{key}`: {e}");
        }
    }
    whole.to_string()
}
