//! The optimizer: AdamW over the whole parameter arena in one fused step, after optional
//! gradient clipping by the global norm (as `clip_grad_norm_` then `torch.optim.AdamW`).

use crate::backend::{AdamW, Backend};
use crate::dtype::DType;
use crate::error::Result;
use crate::model::SignTransformer;
use crate::tensor::{HostTensor, Tensor};

/// AdamW's moments (laid out as the parameter arena) and its step count.
pub struct Optimizer<B: Backend> {
    pub(crate) m: Tensor<B>,
    pub(crate) v: Tensor<B>,
    /// Updates taken so far (those the loss scaler skipped not counted).
    pub(crate) step: u64,
    norm: Tensor<B>,
}

impl<B: Backend> Optimizer<B> {
    /// Zero moments for `model`'s parameters.
    pub fn new(backend: &B, model: &SignTransformer<B>) -> Result<Optimizer<B>> {
        let n = model.layout().total;
        Optimizer::from_state(backend, vec![0.0; n], vec![0.0; n], 0)
    }

    /// Moments and step count restored from a training state.
    pub fn from_state(backend: &B, m: Vec<f32>, v: Vec<f32>, step: u64) -> Result<Optimizer<B>> {
        let n = m.len();
        Ok(Optimizer {
            m: backend.upload(&HostTensor::from_f32(&[n], m)?)?,
            v: backend.upload(&HostTensor::from_f32(&[n], v)?)?,
            step,
            norm: backend.alloc(&[1], DType::F32)?,
        })
    }

    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update of `model`'s weights from `grads` (the model's own gradients, or an
    /// accumulation of several): clipped to a global norm of `max_norm` when it is positive.
    /// The half-precision copies the products read (mixed precision) are refreshed from the
    /// updated weights in the same recording.
    pub fn step(
        &mut self,
        backend: &B,
        model: &SignTransformer<B>,
        grads: &Tensor<B>,
        hp: &AdamW,
        max_norm: f32,
    ) -> Result<()> {
        if max_norm > 0.0 {
            backend.grad_norm(grads, &self.norm)?;
            backend.clip_grads(grads, &self.norm, max_norm)?;
        }
        self.step += 1;
        backend.adamw(&model.weights().all, grads, &self.m, &self.v, hp, self.step)?;
        model.refresh_half_weights(backend)
    }

    /// The moments on the host, for a training state file.
    pub fn moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.m.to_f32_vec()?, self.v.to_f32_vec()?))
    }
}
