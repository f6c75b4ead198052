//! `metrics.jsonl`: one JSON object a line, as DESIGN.md's Machine-readable outputs section
//! reads:
//!
//! - `{"kind": "step", "step", "epoch", "loss", "lr"}`: step and epoch count from 1; loss is the
//!   mean over the micro-batches of that update, computed before it; lr is the rate it used.
//!   With mixed precision also `loss_scale` and `skipped` (true when the loss scaler skipped
//!   the update).
//! - `{"kind": "epoch", "epoch", "train_loss", "val_loss", "val_top1", "val_top5",
//!   "samples_per_s", "peak_mb", "seconds"}`: accuracies as fractions; the `val_` fields are
//!   null when there is no validation set.
//!
//! JSON has no NaN or infinity: a number that is not finite (a diverged loss) is written as
//! null, and read back as NaN (or as `None` in an optional field).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::fsio::read::{read_text_file, NO_CAP};
use crate::fsio::write_atomic;

/// One optimizer update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The update's number, from 1.
    pub step: usize,
    /// The epoch it belongs to, from 1.
    pub epoch: usize,
    /// Mean loss over the update's micro-batches, before the update.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// The learning rate the update used.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// With mixed precision: the loss scale the update's gradients were computed with (1 in
    /// bf16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// With mixed precision: whether the loss scaler skipped the update (a non-finite
    /// gradient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch's number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Mean validation loss; `None` without a validation set.
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy as a fraction; `None` without a validation set.
    pub val_top1: Option<f64>,
    /// Validation top-min(5, classes) accuracy as a fraction; `None` without a validation set.
    pub val_top5: Option<f64>,
    /// Training throughput over the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_s: f64,
    /// Peak device memory during the epoch, in MiB.
    #[serde(deserialize_with = "nan_if_null")]
    pub peak_mb: f64,
    /// Wall-clock time of the epoch, validation included.
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
}

/// One line of `metrics.jsonl`, told apart by its `kind` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Step(StepRecord),
    Epoch(EpochRecord),
}

impl From<StepRecord> for Record {
    fn from(r: StepRecord) -> Self {
        Record::Step(r)
    }
}

impl From<EpochRecord> for Record {
    fn from(r: EpochRecord) -> Self {
        Record::Epoch(r)
    }
}

/// Splits records into their step and epoch records, in order, as [`crate::train::write_curves_svg`]
/// takes them.
pub fn split_records(records: Vec<Record>) -> (Vec<StepRecord>, Vec<EpochRecord>) {
    let mut steps = Vec::new();
    let mut epochs = Vec::new();
    for record in records {
        match record {
            Record::Step(s) => steps.push(s),
            Record::Epoch(e) => epochs.push(e),
        }
    }
    (steps, epochs)
}

/// serde_json writes a non-finite f64 as null; reading it back as NaN keeps a diverged run's
/// log readable instead of failing on its first bad line.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// An open `metrics.jsonl`, appended to one line per record.
///
/// Lines are appended rather than the file rewritten, as befits a log; each line goes out in
/// one unbuffered write, so a crash loses at most the line being written, and
/// [`MetricsLog::read`] drops such a torn last line.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Starts a fresh log at `path`, replacing any earlier one.
    pub fn create(path: &Path) -> Result<Self> {
        Self::start(path, &[])
    }

    /// Continues the log of a run resumed after `step` update steps and `epoch` finished
    /// epochs: the log is rewritten (atomically) keeping only the step records up to `step`
    /// and the epoch records up to `epoch`, so that records the interrupted run wrote after
    /// its saved state do not appear twice. A missing log starts empty, with a warning.
    pub fn resume(path: &Path, step: usize, epoch: usize) -> Result<Self> {
        let records = if path.exists() {
            Self::read(path)?
        } else {
            tracing::warn!(
                "{}: no metrics log to resume; starting an empty one",
                path.display()
            );
            Vec::new()
        };
        let kept: Vec<Record> = records
            .into_iter()
            .filter(|r| match r {
                Record::Step(s) => s.step <= step,
                Record::Epoch(e) => e.epoch <= epoch,
            })
            .collect();
        Self::start(path, &kept)
    }

    /// Writes `records` as the whole log (atomically), then opens it for appending.
    fn start(path: &Path, records: &[Record]) -> Result<Self> {
        let mut text = String::new();
        for record in records {
            text.push_str(&to_line(path, record)?);
        }
        write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record as one line.
    pub fn append(&mut self, record: impl Into<Record>) -> Result<()> {
        let line = to_line(&self.path, &record.into())?;
        // One write of the whole line on an unbuffered file: nothing is held back in memory,
        // so there is nothing for a flush to push out.
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record of the log at `path`. A last line without its newline that does not
    /// parse (a write cut short by a crash) is dropped with a warning; any other line that
    /// does not parse is an error naming its line number.
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let text = read_text_file(path, NO_CAP, "metrics log")?;
        let torn_tail = !text.is_empty() && !text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let mut records = Vec::with_capacity(lines.len());
        for (n, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(record) => records.push(record),
                Err(e) if torn_tail && n + 1 == lines.len() => {
                    tracing::warn!(
                        "{}: dropping the unfinished last line {} ({e})",
                        path.display(),
                        n + 1
                    );
                }
                Err(e) => {
                    return Err(Error::data(
                        path,
                        format!(
                            "line {}: {e}; each line must be one JSON object with \"kind\" \
                             \"step\" or \"epoch\" (see DESIGN.md, metrics.jsonl)",
                            n + 1
                        ),
                    ))
                }
            }
        }
        Ok(records)
    }
}

/// One record as a JSON line, newline included.
fn to_line(path: &Path, record: &Record) -> Result<String> {
    let mut line = serde_json::to_string(record)
        .map_err(|e| Error::data(path, format!("cannot encode a metrics record: {e}")))?;
    line.push('\n');
    Ok(line)
}
