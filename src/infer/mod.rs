//! `InferencePipeline`: a checkpoint on a device that turns raw frames or ready features into
//! class probabilities, one clip or a batch.

mod model_file;
mod optimized;
pub mod stream;

use std::path::Path;

use crate::backend::Backend;
use crate::data::features::{preprocess, NUM_FEATURES};
use crate::data::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::model::{Checkpoint, Preprocessing, SignTransformer, Workspace};
pub use model_file::load_model;
pub use optimized::MAX_PLANS;
pub use stream::{Segment, StreamSettings, StreamingRecognizer};

/// One clip's most likely classes, best first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// False when the model's logits for the clip hold a NaN or an infinity (weights or inputs
    /// beyond f32's range): no class can be ranked then, and `top` is empty.
    pub finite: bool,
    /// True when the best class's probability is below the confidence threshold asked for
    /// ([`Prediction::with_min_prob`]): the answer is "unknown", `top` still ranks the classes.
    pub unknown: bool,
    pub top: Vec<ClassScore>,
}

impl Prediction {
    /// Marks the prediction unknown when its best class is less likely than `min_prob`.
    pub fn with_min_prob(mut self, min_prob: f32) -> Prediction {
        self.unknown = self.finite && self.top.first().is_none_or(|s| s.probability < min_prob);
        self
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassScore {
    pub index: usize,
    pub class: String,
    pub probability: f32,
}

/// A model ready to predict on one backend.
pub struct InferencePipeline<'b, B: Backend> {
    backend: &'b B,
    model: SignTransformer<B>,
    classes: Vec<String>,
    preprocessing: Preprocessing,
    /// Present once [`InferencePipeline::optimize_for_inference`] was called.
    plans: Option<optimized::Plans<B>>,
}

impl<'b, B: Backend> InferencePipeline<'b, B> {
    /// Loads a safetensors checkpoint, or an ONNX file that `signflow export` wrote, onto
    /// `backend`.
    pub fn load(backend: &'b B, path: &Path) -> Result<InferencePipeline<'b, B>> {
        let ckpt = load_model(path)?;
        for what in &ckpt.defaults_used {
            tracing::warn!(
                "{}: no {what} in the file; using the default",
                path.display()
            );
        }
        Self::from_checkpoint(backend, &ckpt)
    }

    pub fn from_checkpoint(backend: &'b B, ckpt: &Checkpoint) -> Result<InferencePipeline<'b, B>> {
        let mut model = ckpt.to_model(backend)?;
        model.pack_weights(backend)?;
        Ok(InferencePipeline {
            backend,
            model,
            classes: ckpt.classes.clone(),
            preprocessing: ckpt.preprocessing.clone(),
            plans: None,
        })
    }

    /// Makes later predictions as cheap as the device allows: the weights stay in the layout
    /// the device's products read fastest (packed on the CPU, as loading already packs them);
    /// and the first prediction at each (batch, seq) shape plans its workspace and captures
    /// the device work of its forward pass ([`Backend::capture`]), which every later
    /// prediction of that shape replays: its inputs written into the same buffers, the
    /// recorded dispatches encoded again without the ops' checks, allocations and lookups, the
    /// logits read back from the same buffer. On the CPU, whose ops run as they are called,
    /// the plan is the workspace alone. The last [`MAX_PLANS`] shapes are kept (their
    /// activations' memory stays held). Predictions are the same to the bit as without it.
    /// Plans are made in the model's precision ([`InferencePipeline::with_precision`] drops
    /// them).
    pub fn optimize_for_inference(mut self) -> Result<InferencePipeline<'b, B>> {
        self.plans.get_or_insert_with(optimized::Plans::new);
        Ok(self)
    }

    /// The (batch, seq) shapes an optimized pipeline has planned, least recently used first;
    /// empty when it is not optimized.
    pub fn optimized_shapes(&self) -> Vec<(usize, usize)> {
        self.plans.as_ref().map_or_else(Vec::new, |p| p.shapes())
    }

    /// Preprocesses raw frames to `seq_len` frames instead of the checkpoint's length: at
    /// least 1 and at most the model's `max_seq_len` (ready features keep their own length).
    pub fn with_seq_len(mut self, seq_len: usize) -> Result<InferencePipeline<'b, B>> {
        self.model.config().check_seq_len(seq_len)?;
        self.preprocessing.seq_len = seq_len;
        Ok(self)
    }

    /// Runs the model in `dtype` (default f32): its weights are rounded once, here, and its
    /// activations stored in `dtype` (f32 arithmetic; DESIGN.md, Precision). f16 on an
    /// adapter without SHADER_F16 runs bf16 ([`crate::device::precision_that_runs`]).
    pub fn with_precision(mut self, dtype: DType) -> Result<InferencePipeline<'b, B>> {
        let dtype = crate::device::precision_that_runs(dtype, self.backend.info());
        self.model.set_precision(self.backend, dtype)?;
        // Plans hold workspaces and captured work of the previous precision's buffers.
        self.plans = self.plans.take().map(|_| optimized::Plans::new());
        Ok(self)
    }

    pub fn model(&self) -> &SignTransformer<B> {
        &self.model
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Logits `[batch, classes]` of a batch of ready features (`ids` name its clips in errors).
    pub fn logits(&self, batch: &Batch, ids: &[usize]) -> Result<Vec<f32>> {
        let cfg = self.model.config();
        cfg.check_frames("the batch", "it", batch.seq, batch.num_features)?;
        if let Some(plans) = &self.plans {
            if let Some(logits) = plans.logits(self.backend, &self.model, batch, ids)? {
                return Ok(logits);
            }
        }
        let ws = Workspace::new_in(
            self.backend,
            cfg,
            batch.batch,
            batch.seq,
            false,
            self.model.precision(),
        )?;
        ws.load_inputs(self.backend, cfg, batch, ids)?;
        self.model.forward(self.backend, &ws, None)?;
        ws.logits().to_f32_vec()
    }

    /// Logits of one clip of raw MediaPipe frames (`width` 258 or 1662 values per frame),
    /// preprocessed as the model was trained.
    pub fn frames_logits(&self, frames: &[f32], width: usize) -> Result<Vec<f32>> {
        let cfg = self.model.config();
        if cfg.num_features != NUM_FEATURES {
            return Err(Error::shape(
                "predict",
                format!(
                    "this model takes {} features per frame, not the {NUM_FEATURES} that raw \
                     frames are preprocessed to; give it ready features",
                    cfg.num_features
                ),
            ));
        }
        let seq = self.preprocessing.seq_len;
        let batch = Batch {
            features: preprocess(frames, width, seq)?,
            mask: vec![1.0; seq],
            labels: vec![0],
            batch: 1,
            seq,
            num_features: NUM_FEATURES,
        };
        self.logits(&batch, &[0])
    }

    /// The top `k` classes of one clip of raw frames.
    pub fn predict_frames(&self, frames: &[f32], width: usize, k: usize) -> Result<Prediction> {
        let logits = self.frames_logits(frames, width)?;
        Ok(top_k(&logits, &self.classes, k))
    }
}

/// The top `k` classes of one row of logits, best first; none when a logit is not finite.
pub fn top_k(logits: &[f32], classes: &[String], k: usize) -> Prediction {
    if logits.iter().any(|v| !v.is_finite()) {
        return Prediction {
            finite: false,
            unknown: false,
            top: Vec::new(),
        };
    }
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    Prediction {
        finite: true,
        unknown: false,
        top: order
            .into_iter()
            .take(k)
            .map(|i| ClassScore {
                index: i,
                class: classes[i].clone(),
                probability: probs[i],
            })
            .collect(),
    }
}

/// Softmax of one row, computed in f64 so that tiny probabilities keep their digits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}
