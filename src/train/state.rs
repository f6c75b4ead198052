//! The training state file (`state.safetensors`): AdamW's moments, the step and the position
//! in the run, the early-stopping record and the training configuration, beside the model
//! file, and with mixed precision the loss scaler's, so that `--resume DIR` continues exactly
//! where the run stopped.

use std::collections::HashMap;
use std::path::Path;

use safetensors::SafeTensors;

use super::config::{resolve_amp_shorthand, TrainingConfig};
use super::scaler::ScalerState;
use crate::error::{Error, Result};
use crate::fsio::read::read_safetensors;
use crate::fsio::write_atomic;
use crate::model::checkpoint::{serialize_f32, to_f32, TRAINING_STATE_FORMAT as FORMAT};

/// Where a run stands, between two updates.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// Updates taken.
    pub step: u64,
    /// The epoch in progress (from 1), and its micro-batches already done.
    pub epoch: usize,
    pub batches_done: usize,
    /// The epoch's training loss so far: sum over micro-batches and their count.
    pub epoch_loss_sum: f64,
    pub epoch_loss_count: usize,
    /// Best validation top-1 so far, its epoch, and epochs since it improved.
    pub best_top1: Option<f64>,
    pub best_epoch: usize,
    pub bad_epochs: usize,
    /// True once early stopping or the last epoch ended the run.
    pub finished: bool,
}

/// AdamW's moments and the run's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// The parameter arena the moments belong to (final.safetensors holds the same values,
    /// but the two files are renamed one after the other: a crash between them must not pair
    /// one epoch's weights with another's moments).
    pub weights: Vec<f32>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub progress: Progress,
    pub config: TrainingConfig,
    /// The loss scaler's state, with mixed precision.
    pub scaler: Option<ScalerState>,
}

impl TrainingState {
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.exp_avg.len();
        let json = |e: serde_json::Error| Error::checkpoint(path, format!("cannot record: {e}"));
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert(
            "progress".to_string(),
            serde_json::to_string(&self.progress).map_err(json)?,
        );
        meta.insert(
            "training_config".to_string(),
            serde_json::to_string(&self.config).map_err(json)?,
        );
        if let Some(scaler) = &self.scaler {
            meta.insert(
                "loss_scaler".to_string(),
                serde_json::to_string(scaler).map_err(json)?,
            );
        }
        let tensors = [
            ("weights", [n], self.weights.as_slice()),
            ("exp_avg", [n], self.exp_avg.as_slice()),
            ("exp_avg_sq", [n], self.exp_avg_sq.as_slice()),
        ];
        let bytes = serialize_f32(
            tensors
                .iter()
                .map(|(name, shape, v)| (*name, shape.as_slice(), *v)),
            meta,
        )
        .map_err(|e| Error::checkpoint(path, e))?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<TrainingState> {
        let bytes = read_safetensors(path, "training state")?;
        let err = |detail: String| Error::checkpoint(path, detail);
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a readable training state ({e})")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a readable training state ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(err(match meta.get("format") {
                Some(other) => format!(
                    "format is `{}`, not `{FORMAT}`: not a SignFlow training state",
                    other.escape_debug()
                ),
                None => {
                    format!("has no `format` metadata (`{FORMAT}`): not a SignFlow training state")
                }
            }));
        }
        let json = |key: &str| {
            meta.get(key)
                .ok_or_else(|| err(format!("metadata `{key}` is missing")))
        };
        let progress: Progress = serde_json::from_str(json("progress")?)
            .map_err(|e| err(format!("metadata `progress` is malformed: {e}")))?;
        let malformed = |e: String| err(format!("metadata `training_config` is malformed: {e}"));
        // A state from before mixed precision records `amp`, which the shorthand resolves.
        let mut settings = serde_json::from_str(json("training_config")?)
            .map_err(|e: serde_json::Error| malformed(e.to_string()))?;
        resolve_amp_shorthand(&mut settings).map_err(malformed)?;
        let config = serde_json::from_value(settings.into())
            .map_err(|e: serde_json::Error| malformed(e.to_string()))?;
        let scaler = meta
            .get("loss_scaler")
            .map(|text| serde_json::from_str(text))
            .transpose()
            .map_err(|e| err(format!("metadata `loss_scaler` is malformed: {e}")))?;
        let read = |name: &str| {
            let t = st
                .tensor(name)
                .map_err(|_| err(format!("tensor {name} is missing")))?;
            to_f32(t.dtype(), t.data()).ok_or_else(|| err(format!("tensor {name} is not f32")))
        };
        if progress.epoch == 0 {
            return Err(err(
                "metadata `progress` has epoch 0; epochs count from 1".into()
            ));
        }
        Ok(TrainingState {
            weights: read("weights")?,
            exp_avg: read("exp_avg")?,
            exp_avg_sq: read("exp_avg_sq")?,
            progress,
            config,
            scaler,
        })
    }
}
