//! The `Trainer`: `fit(train, val)` over epochs of batches, with AdamW, the learning-rate
//! schedule, gradient accumulation and clipping, validation, the best checkpoint, early
//! stopping, metrics files, Ctrl-C saving and resuming.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::config::{Augment, TrainingConfig};
use super::curves::write_curves_svg;
use super::evaluate::{evaluate, planned, EvalReport};
use super::metrics::{split_records, EpochRecord, MetricsLog, StepRecord};
use super::optimizer::Optimizer;
use super::scaler::{LossScaler, ScalerState};
use super::schedule::LrSchedule;
use super::state::{Progress, TrainingState};
use crate::backend::{AdamW, Backend};
use crate::data::augment::AugmentConfig;
use crate::data::loader::{Loader, LoaderConfig, Source};
use crate::data::packs::{Dataset, LAYOUT_258};
use crate::error::{Error, Result};
use crate::fsio::write_atomic;
use crate::model::checkpoint::{non_finite, FEATURES_LAYOUT};
use crate::model::{Checkpoint, DropoutStep, ModelConfig, ParamLayout, Preprocessing};
use crate::model::{SignTransformer, Workspace};
use crate::tensor::Tensor;

/// The files of an output directory (DESIGN.md, Training).
pub const BEST_FILE: &str = "best.safetensors";
pub const FINAL_FILE: &str = "final.safetensors";
pub const STATE_FILE: &str = "state.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.svg";
pub const CONFIG_FILE: &str = "config.json";

/// A model being trained on one backend.
pub struct Trainer<'b, B: Backend> {
    backend: &'b B,
    config: TrainingConfig,
    model: SignTransformer<B>,
    optimizer: Optimizer<B>,
    scaler: LossScaler<B>,
    classes: Vec<String>,
    progress: Progress,
    interrupt: Arc<AtomicBool>,
    /// Gradients summed over the micro-batches of one update (with accumulation only).
    accumulated: Option<Tensor<B>>,
}

/// The model to train: fresh from `seed`, or from an `--init` checkpoint. A checkpoint whose
/// class names differ from `classes` (and are not just numbered defaults of the same count)
/// gets a fresh classifier; the returned notes say so.
pub fn initial_model<B: Backend>(
    backend: &B,
    config: &ModelConfig,
    classes: &[String],
    init: Option<&Checkpoint>,
    seed: u64,
) -> Result<(SignTransformer<B>, Vec<String>)> {
    let Some(ckpt) = init else {
        let config = ModelConfig {
            num_classes: classes.len(),
            ..config.clone()
        };
        return Ok((SignTransformer::new(backend, config, seed)?, Vec::new()));
    };
    let mut ckpt = ckpt.clone();
    let mut notes = Vec::new();
    // The checkpoint fixes the sizes; dropout is the run's.
    ckpt.config.dropout = config.dropout;
    let numbered = ckpt
        .classes
        .iter()
        .enumerate()
        .all(|(i, c)| *c == i.to_string());
    let same = ckpt.classes == classes || (numbered && ckpt.classes.len() == classes.len());
    if !same {
        notes.push(format!(
            "the checkpoint's {} classes differ from the data's {}: the classifier starts afresh",
            ckpt.classes.len(),
            classes.len()
        ));
        ckpt.config.num_classes = classes.len();
        let layout = ParamLayout::new(&ckpt.config);
        let fresh = layout.initial_values(seed);
        for e in layout
            .entries
            .iter()
            .filter(|e| e.name.starts_with("classifier."))
        {
            let values = fresh[e.offset..e.offset + e.len()].to_vec();
            ckpt.tensors
                .insert(e.name.clone(), (e.shape.clone(), values));
        }
    }
    Ok((ckpt.to_model(backend)?, notes))
}

impl<'b, B: Backend> Trainer<'b, B> {
    /// A trainer for `model` (see [`initial_model`]) whose outputs are `classes`; with
    /// `config.use_amp`, the model is set to run in `amp_dtype` (bf16 for f16 on an adapter
    /// without SHADER_F16).
    pub fn new(
        backend: &'b B,
        mut model: SignTransformer<B>,
        config: TrainingConfig,
        classes: Vec<String>,
    ) -> Result<Trainer<'b, B>> {
        config.validate()?;
        if classes.len() != model.config().num_classes {
            return Err(Error::shape(
                "trainer",
                format!(
                    "the model has {} outputs for {} class names",
                    model.config().num_classes,
                    classes.len()
                ),
            ));
        }
        // f16 on an adapter without SHADER_F16 trains in bf16 (and says so).
        let precision = crate::device::precision_that_runs(config.precision(), backend.info());
        model.set_precision(backend, precision)?;
        let optimizer = Optimizer::new(backend, &model)?;
        let scaler = LossScaler::new(
            backend,
            precision,
            config.amp_init_scale as f32,
            config.amp_growth_interval,
        )?;
        Ok(Trainer {
            backend,
            config,
            model,
            optimizer,
            scaler,
            classes,
            progress: Progress {
                step: 0,
                epoch: 1,
                batches_done: 0,
                epoch_loss_sum: 0.0,
                epoch_loss_count: 0,
                best_top1: None,
                best_epoch: 0,
                bad_epochs: 0,
                finished: false,
            },
            interrupt: Arc::new(AtomicBool::new(false)),
            accumulated: None,
        })
    }

    /// A trainer that continues the run saved in `dir` (its `final.safetensors` and
    /// `state.safetensors`), with the configuration it was started with.
    pub fn resume(backend: &'b B, dir: &Path) -> Result<Trainer<'b, B>> {
        let state = TrainingState::load(&dir.join(STATE_FILE))?;
        check_state_values(&dir.join(STATE_FILE), &state)?;
        // final.safetensors gives the configuration, classes and preprocessing (fixed for a
        // run); the weights come from the state file, written with the moments they belong to.
        let ckpt = Checkpoint::load(&dir.join(FINAL_FILE))?;
        let layout = ParamLayout::new(&ckpt.config);
        if [&state.weights, &state.exp_avg, &state.exp_avg_sq]
            .iter()
            .any(|v| v.len() != layout.total)
        {
            return Err(Error::checkpoint(
                dir.join(STATE_FILE),
                "its weights and moments do not fit the model in final.safetensors",
            ));
        }
        let model =
            SignTransformer::from_arena(backend, ckpt.config.clone(), layout, state.weights)?;
        // The directory may have moved since the run started: it is where the run lives now.
        let config = TrainingConfig {
            out_dir: Some(dir.to_path_buf()),
            ..state.config.clone()
        };
        let mut trainer = Trainer::new(backend, model, config, ckpt.classes)?;
        let skipped = state.scaler.as_ref().map_or(0, |s| s.skipped);
        trainer.optimizer = Optimizer::from_state(
            backend,
            state.exp_avg,
            state.exp_avg_sq,
            state.progress.step.saturating_sub(skipped),
        )?;
        if let Some(scaler) = state.scaler {
            trainer.scaler.restore(scaler);
        }
        trainer.progress = state.progress;
        Ok(trainer)
    }

    /// Continues a resumed run with `config`, which may differ from the configuration the run
    /// was started with only where its results do not depend on it: the device, the loader's
    /// threads, and where its data files are now (with their fingerprints). The run records
    /// these from now on.
    pub fn relocate(&mut self, config: TrainingConfig) -> Result<()> {
        let fixed = |c: &TrainingConfig| TrainingConfig {
            device: String::new(),
            num_workers: 0,
            data: None,
            val: None,
            data_fingerprint: None,
            val_fingerprint: None,
            out_dir: None,
            ..c.clone()
        };
        if fixed(&config) != fixed(&self.config) {
            return Err(Error::InvalidConfig {
                field: "resume",
                value: "a configuration that differs from the run's".into(),
                allowed: "the run's own: only the device, the loader's threads and the data's \
                          place may change when resuming",
            });
        }
        self.config = TrainingConfig {
            out_dir: self.config.out_dir.clone(),
            ..config
        };
        Ok(())
    }

    /// Set it (from a Ctrl-C handler) to stop after the current update, saving first.
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    pub fn model(&self) -> &SignTransformer<B> {
        &self.model
    }

    pub fn config(&self) -> &TrainingConfig {
        &self.config
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Trains on `train`, validating on `val` after every epoch, and returns every epoch's
    /// metrics (of this run and, after a resume, of the run it continues). Writes the output
    /// directory's files when `config.out_dir` is set.
    pub fn fit(&mut self, train: Source, val: Option<Source>) -> Result<Vec<EpochRecord>> {
        let cfg = self.config.clone();
        self.check_fits(train.dataset(), "the training data")?;
        if let Some(v) = &val {
            self.check_fits(v.dataset(), "the validation data")?;
        }
        if (cfg.patience > 0 || cfg.min_delta > 0.0) && val.is_none() {
            tracing::warn!(
                "--patience and --min-delta need a validation set (--val or --split): early \
                 stopping is off"
            );
        }
        let preprocessing = self.preprocessing_for(train.dataset());
        let train_loader = Loader::new(
            train,
            LoaderConfig {
                batch_size: cfg.batch_size,
                seq_len: preprocessing.seq_len,
                shuffle: cfg.shuffle,
                seed: cfg.seed,
                augment: match cfg.augment {
                    Augment::None => None,
                    Augment::Default => Some(AugmentConfig {
                        mirror: cfg.mirror,
                        ..AugmentConfig::default()
                    }),
                },
                num_workers: cfg.num_workers,
                drop_last: false,
            },
        )?;
        if train_loader.num_batches() == 0 {
            return Err(Error::data("training set", "has no clips"));
        }
        let val_loader = match val {
            Some(v) if !v.indices().is_empty() => Some(Loader::new(
                v,
                LoaderConfig {
                    batch_size: cfg.batch_size,
                    seq_len: preprocessing.seq_len,
                    shuffle: false,
                    seed: cfg.seed,
                    augment: None,
                    num_workers: cfg.num_workers,
                    drop_last: false,
                },
            )?),
            _ => None,
        };
        let accum = cfg.gradient_accumulation_steps;
        let steps_per_epoch = train_loader.num_batches().div_ceil(accum);
        let schedule = LrSchedule::new(&cfg, steps_per_epoch * cfg.num_epochs);

        let fresh = self.progress.step == 0 && self.progress.epoch == 1;
        let out = cfg.out_dir.clone();
        let mut log = match &out {
            Some(dir) => {
                if fresh && dir.join(STATE_FILE).exists() {
                    return Err(Error::InvalidConfig {
                        field: "out_dir",
                        value: dir.display().to_string(),
                        allowed: "a directory without a run in it (it holds state.safetensors): \
                                  continue that run with --resume, or choose another --out",
                    });
                }
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                self.write_config(dir, &preprocessing)?;
                let path = dir.join(METRICS_FILE);
                Some(if !fresh {
                    MetricsLog::resume(&path, self.progress.step as usize, self.progress.epoch - 1)?
                } else {
                    MetricsLog::create(&path)?
                })
            }
            None => None,
        };
        let mut epochs: Vec<EpochRecord> = match &out {
            Some(dir) => split_records(MetricsLog::read(&dir.join(METRICS_FILE))?).1,
            None => Vec::new(),
        };

        let bars = MultiProgress::new();
        let epoch_bar = bars.add(ProgressBar::new(cfg.num_epochs as u64));
        epoch_bar.set_style(
            ProgressStyle::with_template("epoch {pos}/{len} {bar:30} {elapsed_precise} {msg}")
                .expect("valid template"),
        );
        epoch_bar.set_position(self.progress.epoch as u64 - 1);
        while !self.progress.finished && self.progress.epoch <= cfg.num_epochs {
            let epoch = self.progress.epoch;
            let started = Instant::now();
            self.backend.reset_peak_memory_stats();
            let step_bar = bars.add(ProgressBar::new(train_loader.num_batches() as u64));
            step_bar.set_style(
                ProgressStyle::with_template("  batch {pos}/{len} {bar:30} {per_sec} {msg}")
                    .expect("valid template"),
            );
            let samples = self.train_epoch(&train_loader, &schedule, log.as_mut(), &step_bar)?;
            step_bar.finish_and_clear();
            if self.interrupt.load(Ordering::SeqCst) {
                return Err(self.interrupted(&preprocessing));
            }
            let report = match &val_loader {
                Some(v) => Some(evaluate(self.backend, &self.model, v)?),
                None => None,
            };
            let seconds = started.elapsed().as_secs_f64();
            let record = EpochRecord {
                epoch,
                train_loss: self.progress.epoch_loss_sum
                    / self.progress.epoch_loss_count.max(1) as f64,
                val_loss: report.as_ref().map(|r| r.loss),
                val_top1: report.as_ref().map(|r| r.top1),
                val_top5: report.as_ref().map(|r| r.topk),
                samples_per_s: samples as f64 / seconds,
                peak_mb: self.backend.memory_stats().peak_allocated_bytes as f64
                    / (1024.0 * 1024.0),
                seconds,
            };
            let scaler = cfg.use_amp.then(|| self.scaler.state());
            let message = epoch_message(&record, scaler);
            epoch_bar.set_message(message.clone());
            epoch_bar.inc(1);
            tracing::info!("{message}");
            self.end_epoch(report.as_ref(), &preprocessing)?;
            if let Some(log) = log.as_mut() {
                log.append(record.clone())?;
            }
            epochs.push(record);
            if let Some(dir) = &out {
                self.save(dir, &preprocessing)?;
                let (steps, _) = split_records(MetricsLog::read(&dir.join(METRICS_FILE))?);
                write_curves_svg(&dir.join(CURVES_FILE), &steps, &epochs)?;
            }
        }
        epoch_bar.finish();
        Ok(epochs)
    }

    /// One epoch's updates (resuming after `batches_done` micro-batches); returns the clips
    /// trained on.
    fn train_epoch(
        &mut self,
        loader: &Loader,
        schedule: &LrSchedule,
        mut log: Option<&mut MetricsLog>,
        bar: &ProgressBar,
    ) -> Result<usize> {
        let cfg = self.config.clone();
        let accum = cfg.gradient_accumulation_steps;
        let num_batches = loader.num_batches();
        let skip = self.progress.batches_done;
        bar.set_position(skip as u64);
        let mut ws: Option<Workspace<B>> = None;
        let (mut samples, mut update_loss, mut update_micro) = (0usize, 0.0f64, 0usize);
        let (mut hits, mut seen) = (0usize, 0usize);
        let hp_base = AdamW {
            lr: cfg.learning_rate as f32,
            beta1: cfg.beta1 as f32,
            beta2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            weight_decay: cfg.weight_decay as f32,
        };
        for (i, item) in (skip..).zip(loader.epoch_from(self.progress.epoch, skip)) {
            let (batch, ids) = item?;
            let micro = i % accum;
            // The update's micro-batches: `accum`, or fewer in an epoch's last group.
            let group = accum.min(num_batches - (i - micro));
            let w = planned(
                &mut ws,
                self.backend,
                &self.model,
                batch.batch,
                batch.seq,
                true,
            )?;
            w.load(self.backend, self.model.config(), &batch, &ids)?;
            // Updates are counted with those the loss scaler skipped, so that the schedule and
            // dropout's masks move on past a skipped one.
            let update = self.progress.step + 1;
            let dropout = Some(DropoutStep {
                seed: cfg.seed,
                step: (update - 1) * accum as u64 + micro as u64,
            });
            let smoothing = cfg.label_smoothing as f32;
            let loss_scale = self.scaler.scale();
            self.model.forward(self.backend, w, dropout)?;
            self.model.loss(self.backend, w, smoothing)?;
            self.model.backward(
                self.backend,
                w,
                smoothing,
                loss_scale / group as f32,
                dropout,
            )?;
            let grads = self.accumulate(micro)?;
            let last_of_update = micro + 1 == group;
            if last_of_update {
                self.scaler.unscale(self.backend, &grads)?;
            }
            // Reading the loss waits for the step (and the scaler's check of its gradients);
            // the next batch is already being prepared. The update is recorded after it, into
            // the next step's submission.
            let (loss, top1, _) = w.loss_and_hits()?;
            if !loss.is_finite() {
                return Err(Error::data(
                    format!("batch {} of epoch {}", i + 1, self.progress.epoch),
                    format!(
                        "the loss is {loss}: training diverged; lower --lr or keep --grad-clip on"
                    ),
                ));
            }
            samples += batch.batch;
            hits += top1;
            seen += batch.batch;
            update_loss += loss as f64;
            update_micro += 1;
            self.progress.epoch_loss_sum += loss as f64;
            self.progress.epoch_loss_count += 1;
            self.progress.batches_done = i + 1;
            bar.inc(1);
            if last_of_update {
                let lr = schedule.lr(update as usize);
                let skipped = self.scaler.update()?;
                if !skipped {
                    let hp = AdamW {
                        lr: lr as f32,
                        ..hp_base
                    };
                    self.optimizer.step(
                        self.backend,
                        &self.model,
                        &grads,
                        &hp,
                        cfg.grad_clip as f32,
                    )?;
                }
                if cfg.empty_cache_interval > 0 && update % cfg.empty_cache_interval as u64 == 0 {
                    self.backend.empty_cache();
                }
                let amp = cfg.use_amp;
                let record = StepRecord {
                    step: update as usize,
                    epoch: self.progress.epoch,
                    loss: update_loss / update_micro as f64,
                    lr,
                    loss_scale: amp.then_some(loss_scale as f64),
                    skipped: amp.then_some(skipped),
                };
                self.progress.step = update;
                let mut message = format!(
                    "loss {:.4} acc {:.3} lr {:.2e}",
                    record.loss,
                    hits as f64 / seen.max(1) as f64,
                    record.lr
                );
                if amp {
                    let s = self.scaler.state();
                    message += &format!(" scale {} skipped {}", s.scale, s.skipped);
                }
                bar.set_message(message);
                if let Some(log) = log.as_deref_mut() {
                    if update as usize % cfg.log_every == 0 {
                        log.append(record)?;
                    }
                }
                (update_loss, update_micro) = (0.0, 0);
                if self.interrupt.load(Ordering::SeqCst) {
                    return Ok(samples);
                }
            }
        }
        Ok(samples)
    }

    /// The gradients of the update so far: the model's own without accumulation, else their
    /// running sum.
    fn accumulate(&mut self, micro: usize) -> Result<Tensor<B>> {
        let grads = &self.model.grads().all;
        if self.config.gradient_accumulation_steps == 1 {
            return Ok(grads.clone());
        }
        let acc = match &self.accumulated {
            Some(a) => a.clone(),
            None => {
                let a = self.backend.alloc(grads.shape(), grads.dtype())?;
                self.accumulated = Some(a.clone());
                a
            }
        };
        if micro == 0 {
            self.backend.copy(grads, &acc)?;
        } else {
            self.backend.add(&acc, grads, &acc)?;
        }
        Ok(acc)
    }

    /// Early stopping and the best checkpoint, after an epoch's validation.
    fn end_epoch(
        &mut self,
        report: Option<&EvalReport>,
        preprocessing: &Preprocessing,
    ) -> Result<()> {
        let p = &mut self.progress;
        let epoch = p.epoch;
        let improved = match (report, p.best_top1) {
            // Scores of a model whose outputs overflow say nothing: never the best.
            (Some(r), _) if !r.is_finite() => {
                tracing::warn!(
                    "epoch {epoch}: the validation loss is non-finite ({} of {} clips gave NaN or \
                     infinite logits): not counted as an improvement",
                    r.non_finite,
                    r.clips
                );
                false
            }
            (Some(r), Some(best)) => r.top1 > best + self.config.min_delta,
            _ => true, // the first finite epoch, or no validation set: the latest model is the best
        };
        if improved {
            p.best_top1 = report.map(|r| r.top1);
            p.best_epoch = epoch;
            p.bad_epochs = 0;
        } else {
            p.bad_epochs += 1;
        }
        p.epoch += 1;
        p.batches_done = 0;
        p.epoch_loss_sum = 0.0;
        p.epoch_loss_count = 0;
        if self.config.patience > 0 && p.bad_epochs >= self.config.patience {
            tracing::info!(
                "early stopping: validation top-1 has not improved for {} epochs ({})",
                p.bad_epochs,
                match p.best_top1 {
                    Some(best) => format!("best {best:.4} at epoch {}", p.best_epoch),
                    None => "no epoch had a finite validation loss".into(),
                }
            );
            p.finished = true;
        }
        if p.epoch > self.config.num_epochs {
            p.finished = true;
        }
        if improved {
            if let Some(dir) = &self.config.out_dir {
                self.checkpoint(preprocessing)?.save(&dir.join(BEST_FILE))?;
            }
        }
        Ok(())
    }

    /// Saves the state and the model, and the error that ends the run.
    fn interrupted(&mut self, preprocessing: &Preprocessing) -> Error {
        match &self.config.out_dir.clone() {
            Some(dir) => match self.save(dir, preprocessing) {
                Ok(()) => Error::Interrupted(format!(
                    "state saved in {}; continue with --resume {}",
                    dir.display(),
                    dir.display()
                )),
                Err(e) => Error::Interrupted(format!("saving the state failed: {e}")),
            },
            None => Error::Interrupted("no output directory, nothing saved".into()),
        }
    }

    /// The model as a checkpoint with its classes and preprocessing.
    pub fn checkpoint(&self, preprocessing: &Preprocessing) -> Result<Checkpoint> {
        Checkpoint::from_model(&self.model, self.classes.clone(), preprocessing.clone())
    }

    /// Writes `final.safetensors` and `state.safetensors` (each atomically).
    fn save(&self, dir: &Path, preprocessing: &Preprocessing) -> Result<()> {
        self.checkpoint(preprocessing)?
            .save(&dir.join(FINAL_FILE))?;
        let (exp_avg, exp_avg_sq) = self.optimizer.moments()?;
        TrainingState {
            weights: self.model.weights().to_host()?,
            exp_avg,
            exp_avg_sq,
            progress: self.progress.clone(),
            config: self.config.clone(),
            scaler: self.config.use_amp.then(|| self.scaler.state().clone()),
        }
        .save(&dir.join(STATE_FILE))
    }

    fn write_config(&self, dir: &Path, preprocessing: &Preprocessing) -> Result<()> {
        // The training fields flat, as `--config` reads them, plus the model and the run's record.
        let mut resolved = serde_json::to_value(&self.config).expect("config serialises");
        let fields = resolved
            .as_object_mut()
            .expect("a struct serialises to an object");
        fields.insert("model".into(), serde_json::json!(self.model.config()));
        fields.insert("signflow_version".into(), env!("CARGO_PKG_VERSION").into());
        fields.insert(
            "dataset".into(),
            serde_json::json!({
                "classes": self.classes,
                "seq_len": preprocessing.seq_len,
                "layout": preprocessing.layout,
            }),
        );
        let text = serde_json::to_string_pretty(&resolved).expect("config serialises");
        write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
    }

    /// The data must fit the model (see [`ModelConfig::check_input`]); said before anything is
    /// written rather than at the first batch.
    fn check_fits(&self, dataset: &Dataset, what: &str) -> Result<()> {
        let cfg = self.model.config();
        cfg.check_input(what, dataset)?;
        if dataset.classes().len() != cfg.num_classes {
            return Err(Error::data(
                what,
                format!(
                    "has {} classes, the model {} outputs",
                    dataset.classes().len(),
                    cfg.num_classes
                ),
            ));
        }
        Ok(())
    }

    /// What this model's training inputs from `dataset` are: clip packs are resampled to the
    /// model's max_seq_len; feature packs come as they are.
    pub fn preprocessing_for(&self, dataset: &Dataset) -> Preprocessing {
        match dataset {
            Dataset::Clips(_) => Preprocessing {
                seq_len: self.model.config().max_seq_len,
                layout: LAYOUT_258.into(),
            },
            Dataset::Features(p) => Preprocessing {
                seq_len: p.t,
                layout: FEATURES_LAYOUT.into(),
            },
        }
    }
}

/// A state whose weights or moments are not finite (or whose second moments are negative)
/// would make the first update NaN: it is a corrupt file, not a run that diverged.
fn check_state_values(path: &Path, state: &TrainingState) -> Result<()> {
    let mut bad: Vec<String> = [
        ("weights", &state.weights),
        ("exp_avg", &state.exp_avg),
        ("exp_avg_sq", &state.exp_avg_sq),
    ]
    .into_iter()
    .filter_map(|(name, values)| non_finite(name, values))
    .collect();
    if let Some(i) = state.exp_avg_sq.iter().position(|&v| v < 0.0) {
        bad.push(format!(
            "exp_avg_sq: value {} at index {i} is negative; second moments never are",
            state.exp_avg_sq[i]
        ));
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::checkpoint(
        path,
        format!(
            "the training state is corrupt, its run cannot continue from it:\n  {}",
            bad.join("\n  ")
        ),
    ))
}

/// An epoch's summary; with AMP, the loss scale and the updates skipped so far.
fn epoch_message(r: &EpochRecord, scaler: Option<&ScalerState>) -> String {
    let mut s = format!(
        "epoch {}: train loss {:.4}, {:.0} samples/s, peak {:.0} MB, {:.1} s",
        r.epoch, r.train_loss, r.samples_per_s, r.peak_mb, r.seconds
    );
    if let Some(scaler) = scaler {
        s += &format!(
            ", loss scale {} ({} updates skipped)",
            scaler.scale, scaler.skipped
        );
    }
    if let (Some(l), Some(t1), Some(t5)) = (r.val_loss, r.val_top1, r.val_top5) {
        let l = if l.is_finite() {
            format!("{l:.4}")
        } else {
            format!("{l} (non-finite)")
        };
        s += &format!(
            "; val loss {l}, top-1 {:.2}%, top-5 {:.2}%",
            100.0 * t1,
            100.0 * t5
        );
    }
    s
}
