//! Every activation of one step, planned for a fixed (batch, seq) and allocated once, then
//! reused step after step (DESIGN.md, Layers).

use super::config::ModelConfig;
use crate::backend::Backend;
use crate::data::Batch;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, Tensor};

/// What one encoder layer keeps from forward for backward.
pub(crate) struct LayerActs<B: Backend> {
    pub mean1: Tensor<B>,
    pub rstd1: Tensor<B>,
    /// norm1's output, the attention's input.
    pub a1: Tensor<B>,
    pub qkv: Tensor<B>,
    pub attn: Tensor<B>,
    pub lse: Tensor<B>,
    /// The residual stream after the attention block (a copy in the activations' dtype where
    /// the stream itself is [`Workspace::stream`]).
    pub hmid: Tensor<B>,
    pub mean2: Tensor<B>,
    pub rstd2: Tensor<B>,
    pub a2: Tensor<B>,
    /// linear1's output before GELU.
    pub fpre: Tensor<B>,
    /// GELU's output after dropout: linear2's input.
    pub f: Tensor<B>,
}

/// Buffers used only by the backward pass: the activations' gradients, stored in the
/// activations' dtype, but for the loss's and the residual stream's (f32, as the loss and the
/// stream).
pub(crate) struct Grads<B: Backend> {
    pub dlogits: Tensor<B>,
    /// `dlogits` rounded to the activations' half-precision dtype for the products; None in f32.
    pub dlogits_half: Option<Tensor<B>>,
    pub dpooled: Tensor<B>,
    /// The residual stream's gradient, f32.
    pub dh: Tensor<B>,
    pub dhmid: Tensor<B>,
    pub dff: Tensor<B>,
    pub dff2: Tensor<B>,
    pub dqkv: Tensor<B>,
    pub dattn: Tensor<B>,
}

/// Inputs, activations and (when planned for training) backward buffers for `batch` clips of
/// `seq` frames.
pub struct Workspace<B: Backend> {
    pub batch: usize,
    pub seq: usize,
    /// The activations' storage dtype (the model's [`super::SignTransformer::precision`]).
    pub dtype: DType,
    pub(crate) x: Tensor<B>,
    pub(crate) mask: Tensor<B>,
    pub(crate) labels: Tensor<B>,
    /// The residual stream entering each layer, and after the last one (`num_layers + 1`), in
    /// the activations' dtype: what the layer norms read.
    pub(crate) hin: Vec<Tensor<B>>,
    /// In half precision, the residual stream itself, in f32 (as PyTorch's autocast keeps it):
    /// the blocks' outputs are added to it in f32, and `hin`, `hmid` are its rounded copies.
    /// None in f32, where `hin` and `hmid` are the stream.
    pub(crate) stream: Option<Tensor<B>>,
    pub(crate) layers: Vec<LayerActs<B>>,
    /// Scratch for the attention block's and the feed-forward block's outputs (in backward:
    /// their gradients, then the layer norms' dx), f32 as the stream they are added to.
    pub(crate) o: Tensor<B>,
    pub(crate) meanf: Tensor<B>,
    pub(crate) rstdf: Tensor<B>,
    /// The final norm's output; in a half-precision backward pass, scratch for residual
    /// gradients rounded to the activations' dtype.
    pub(crate) hf: Tensor<B>,
    pub(crate) pooled: Tensor<B>,
    pub(crate) logits: Tensor<B>,
    pub(crate) loss: Tensor<B>,
    pub(crate) hits: Tensor<B>,
    pub(crate) ce_lse: Tensor<B>,
    pub(crate) grads: Option<Grads<B>>,
}

impl<B: Backend> Workspace<B> {
    /// Allocates every buffer of a step in f32; `training` adds the backward pass's.
    pub fn new(
        backend: &B,
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        training: bool,
    ) -> Result<Workspace<B>> {
        Workspace::new_in(backend, cfg, batch, seq, training, DType::F32)
    }

    /// As [`Workspace::new`], with the activations (inputs, attention and feed-forward values,
    /// pooled features, the layer norms' inputs) and their gradients stored in `dtype`;
    /// statistics, the mask, labels, logits, losses and the loss's gradient stay f32, as the
    /// dtype rule wants, and so do the residual stream and its gradient, which sum many small
    /// updates.
    pub fn new_in(
        backend: &B,
        cfg: &ModelConfig,
        batch: usize,
        seq: usize,
        training: bool,
        dtype: DType,
    ) -> Result<Workspace<B>> {
        if batch == 0 || seq == 0 || seq > cfg.max_seq_len {
            return Err(Error::shape(
                "workspace",
                format!(
                    "a batch of {batch} clips of {seq} frames: the model takes at least one clip \
                     of 1 to max_seq_len = {} frames",
                    cfg.max_seq_len
                ),
            ));
        }
        let f32 = |shape: &[usize]| backend.alloc(shape, DType::F32);
        let act = |shape: &[usize]| backend.alloc(shape, dtype);
        let (bt, d, ff) = (batch * seq, cfg.d_model, cfg.ff_dim);
        // Buffers only half precision has.
        let halved = dtype != DType::F32;
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok(LayerActs {
                    mean1: f32(&[bt])?,
                    rstd1: f32(&[bt])?,
                    a1: act(&[bt, d])?,
                    qkv: act(&[bt, 3 * d])?,
                    attn: act(&[bt, d])?,
                    lse: f32(&[batch, cfg.num_heads, seq])?,
                    hmid: act(&[bt, d])?,
                    mean2: f32(&[bt])?,
                    rstd2: f32(&[bt])?,
                    a2: act(&[bt, d])?,
                    fpre: act(&[bt, ff])?,
                    f: act(&[bt, ff])?,
                })
            })
            .collect::<Result<_>>()?;
        let grads = if training {
            Some(Grads {
                dlogits: f32(&[batch, cfg.num_classes])?,
                dlogits_half: halved.then(|| act(&[batch, cfg.num_classes])).transpose()?,
                dpooled: act(&[batch, d])?,
                dh: f32(&[bt, d])?,
                dhmid: f32(&[bt, d])?,
                dff: act(&[bt, ff])?,
                dff2: act(&[bt, ff])?,
                dqkv: act(&[bt, 3 * d])?,
                dattn: act(&[bt, d])?,
            })
        } else {
            None
        };
        Ok(Workspace {
            batch,
            seq,
            dtype,
            x: act(&[batch, seq, cfg.num_features])?,
            mask: f32(&[batch, seq])?,
            labels: f32(&[batch])?,
            hin: (0..=cfg.num_layers)
                .map(|_| act(&[bt, d]))
                .collect::<Result<_>>()?,
            stream: halved.then(|| f32(&[bt, d])).transpose()?,
            layers,
            o: f32(&[bt, d])?,
            meanf: f32(&[bt])?,
            rstdf: f32(&[bt])?,
            hf: act(&[bt, d])?,
            pooled: act(&[batch, d])?,
            logits: f32(&[batch, cfg.num_classes])?,
            loss: f32(&[1])?,
            hits: f32(&[2])?,
            ce_lse: f32(&[batch])?,
            grads,
        })
    }

    /// Writes a batch's features, mask and labels into the workspace, after checking that it
    /// fits the model (sizes, labels, a real frame in every clip, finite values). `ids` name
    /// the clips in errors.
    pub fn load(&self, backend: &B, cfg: &ModelConfig, batch: &Batch, ids: &[usize]) -> Result<()> {
        if let Some((i, &l)) = batch
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= cfg.num_classes)
        {
            return Err(Error::data(
                format!("clip {}", ids.get(i).copied().unwrap_or(i)),
                format!(
                    "label {l} is not a class of the model ({} classes)",
                    cfg.num_classes
                ),
            ));
        }
        self.load_inputs(backend, cfg, batch, ids)?;
        let labels: Vec<f32> = batch.labels.iter().map(|&l| l as f32).collect();
        backend.write(&self.labels, &HostTensor::from_f32(&[self.batch], labels)?)
    }

    /// As [`Workspace::load`] without the labels: for prediction, which needs none (the loss
    /// is then not defined).
    pub fn load_inputs(
        &self,
        backend: &B,
        cfg: &ModelConfig,
        batch: &Batch,
        ids: &[usize],
    ) -> Result<()> {
        if batch.batch != self.batch || batch.seq != self.seq {
            return Err(Error::shape(
                "workspace",
                format!(
                    "planned for {} clips of {} frames, given {} of {}",
                    self.batch, self.seq, batch.batch, batch.seq
                ),
            ));
        }
        if batch.num_features != cfg.num_features {
            return Err(Error::shape(
                "model input",
                format!(
                    "the model takes {} features per frame, the data has {}; preprocess raw \
                     frames to the 469 features or use a model configured for this data",
                    cfg.num_features, batch.num_features
                ),
            ));
        }
        batch.validate(ids)?;
        // Rounded to the activations' dtype on the host (the `half` crate, nearest even).
        backend.write(
            &self.x,
            &HostTensor::from_f32_as(self.x.shape(), &batch.features, self.dtype)?,
        )?;
        backend.write(
            &self.mask,
            &HostTensor::from_f32(self.mask.shape(), batch.mask.clone())?,
        )
    }

    /// The logits of the last forward pass, `[batch, num_classes]`.
    pub fn logits(&self) -> &Tensor<B> {
        &self.logits
    }

    /// Where the residual stream saved as `saved` (an entry of `hin`, or a `hmid`) is summed:
    /// the f32 stream in half precision, `saved` itself in f32.
    pub(crate) fn stream_at<'t>(&'t self, saved: &'t Tensor<B>) -> &'t Tensor<B> {
        self.stream.as_ref().unwrap_or(saved)
    }

    /// Rounds the f32 stream into `saved`, its copy in the activations' dtype; nothing to do
    /// in f32.
    pub(crate) fn save_stream(&self, backend: &B, saved: &Tensor<B>) -> Result<()> {
        match &self.stream {
            Some(stream) => backend.cast(stream, saved),
            None => Ok(()),
        }
    }

    /// `[loss, top-1 hits, top-5 hits]` of the last [`super::SignTransformer::loss`].
    pub fn loss_and_hits(&self) -> Result<(f32, usize, usize)> {
        let loss = self.loss.to_f32_vec()?[0];
        let hits = self.hits.to_f32_vec()?;
        Ok((loss, hits[0] as usize, hits[1] as usize))
    }
}
