//! Op names shared by `selftest`, `bench` and their JSON (DESIGN.md, Machine-readable
//! outputs). The list grows as ops land; names never change.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Matmul,
    Add,
    Scale,
    Cast,
    Copy,
    GeluFwd,
    GeluBwd,
    BiasGrad,
    LayernormFwd,
    LayernormBwd,
    MeanPoolFwd,
    MeanPoolBwd,
    SoftmaxXentFwd,
    SoftmaxXentBwd,
    Adamw,
    GradNorm,
    UnscaleCheck,
    Dropout,
    AttentionFwd,
    AttentionBwd,
    /// Bench only: a forward and a backward pass.
    AttentionFwdBwd,
    /// Bench only: one training step of the model (forward, loss, backward, clipping, AdamW).
    TrainStep,
    /// Bench only: one clip's prediction (the model's forward pass at batch 1).
    Predict,
    /// Bench only: the host time to record and submit a training step's or a prediction's
    /// device work, without waiting for it.
    HostRecord,
    /// Bench only: 1,000 predictions one clip at a time or in batches (the replaced system's
    /// benchmark).
    #[serde(rename = "predictions_1000")]
    Predictions1000,
    /// Bench only: 50 epochs over 10,000 clips, projected from measured training steps.
    #[serde(rename = "train_50x10k")]
    Train50x10k,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Matmul => "matmul",
            Op::Add => "add",
            Op::Scale => "scale",
            Op::Cast => "cast",
            Op::Copy => "copy",
            Op::GeluFwd => "gelu_fwd",
            Op::GeluBwd => "gelu_bwd",
            Op::BiasGrad => "bias_grad",
            Op::LayernormFwd => "layernorm_fwd",
            Op::LayernormBwd => "layernorm_bwd",
            Op::MeanPoolFwd => "mean_pool_fwd",
            Op::MeanPoolBwd => "mean_pool_bwd",
            Op::SoftmaxXentFwd => "softmax_xent_fwd",
            Op::SoftmaxXentBwd => "softmax_xent_bwd",
            Op::Adamw => "adamw",
            Op::GradNorm => "grad_norm",
            Op::UnscaleCheck => "unscale_check",
            Op::Dropout => "dropout",
            Op::AttentionFwd => "attention_fwd",
            Op::AttentionBwd => "attention_bwd",
            Op::AttentionFwdBwd => "attention_fwd_bwd",
            Op::TrainStep => "train_step",
            Op::Predict => "predict",
            Op::HostRecord => "host_record",
            Op::Predictions1000 => "predictions_1000",
            Op::Train50x10k => "train_50x10k",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
