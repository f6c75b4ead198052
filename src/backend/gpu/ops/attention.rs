//! Fused, streaming multi-head attention (philox.wgsl + attention.wgsl): the forward pass and
//! the three passes of the backward, for the variant kernel_config chooses per storage dtype,
//! head size, sequence length and workgroup memory.

use super::{index_u32, words, GpuTensor};
use crate::backend::gpu::kernel_config::{
    self, AttentionVariant, ATTENTION_DQ_KEYS, ATTENTION_FORWARD_KEYS,
};
use crate::backend::gpu::operand::{declare, Operand};
use crate::backend::gpu::shaders::{
    repeat_marked_lines, wgsl_params, Entry, EntryPoint, KernelFamily, PHILOX,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::{AttentionSpec, Backend};
use crate::dtype::DType;
use crate::error::Result;

const SOURCE: &str = include_str!("../../../../shaders/attention.wgsl");

wgsl_params! {
    pub struct AttentionParams {
        batch: u32,
        t: u32,
        heads: u32,
        d: u32,
        groups_x: u32,
        scale: f32,
        p: f32,
        keep_scale: f32,
        /// The dropout key's u64 seed and step as (low, high) words.
        seed: [u32; 2],
        step: [u32; 2],
        site: u32,
        qkv_offset: u32,
        mask_offset: u32,
        out_offset: u32,
        lse_offset: u32,
        dout_offset: u32,
        dqkv_offset: u32,
        _pad: u32,
    }
}

/// The shared tile loader also reads dout (binding 5), which the forward pass binds to out.
const FORWARD: Entry<AttentionVariant, 5> = Entry::new("attention_fwd", [1, 2, 3, 4, 5]);
const DELTA: Entry<AttentionVariant, 3> = Entry::new("attention_delta", [3, 5, 6]);
const DQ: Entry<AttentionVariant, 6> = Entry::new("attention_dq", [1, 2, 4, 5, 6, 7]);
const DKV: Entry<AttentionVariant, 6> = Entry::new("attention_dkv", [1, 2, 4, 5, 6, 7]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), DELTA.point(), DQ.point(), DKV.point()];

impl KernelFamily for AttentionVariant {
    type Params = AttentionParams;

    fn name(&self) -> String {
        let AttentionVariant {
            dtype,
            head_dim,
            bq,
            bk,
        } = self;
        format!("attention_{dtype}_d{head_dim}_bq{bq}_bk{bk}")
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn body(&self) -> String {
        let AttentionVariant {
            dtype,
            head_dim,
            bq,
            bk,
        } = *self;
        let f32 = DType::F32;
        let operands = declare(&[
            Operand::read("qkv", 1, dtype),
            Operand::read("key_mask", 2, f32),
            Operand::write("out", 3, dtype),
            Operand::write("lse", 4, f32),
            Operand::read("dout", 5, dtype),
            Operand::write("delta", 6, f32),
            Operand::write("dqkv", 7, dtype),
        ]);
        let consts = format!(
            "const HEAD_DIM: u32 = {head_dim}u;\nconst HD4: u32 = {}u;\n\
             const BK: u32 = {bk}u;\nconst BQ: u32 = {bq}u;\n\
             const FWD_KEYS: u32 = {ATTENTION_FORWARD_KEYS}u;\n\
             const DQ_KEYS: u32 = {ATTENTION_DQ_KEYS}u;\nconst NO_KEYS: f32 = {:e};\n\
             const PAIRS: bool = {};",
            head_dim / 4,
            crate::backend::NO_KEYS_LSE,
            dtype != f32,
        );
        let body = SOURCE
            .replace("//!CONSTS", &consts)
            .replace("//!OPERANDS", &operands);
        let body = repeat_marked_lines(&body, 'j', head_dim / 4);
        let body = repeat_marked_lines(&body, 'f', ATTENTION_FORWARD_KEYS);
        let body = repeat_marked_lines(&body, 'q', ATTENTION_DQ_KEYS);
        format!("{PHILOX}\n{body}")
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        kernel_config::attention_variants()
    }
}

/// `out` and the log-sum-exp `lse` of every query row.
pub(crate) fn forward(
    gpu: &GpuBackend,
    qkv: &GpuTensor,
    key_mask: &GpuTensor,
    spec: &AttentionSpec,
    out: &GpuTensor,
    lse: &GpuTensor,
) -> Result<()> {
    let (variant, params, grid) = shared(gpu, "attention", spec, [qkv, key_mask, out, lse])?;
    let bound = [qkv, key_mask, out, lse, out];
    gpu.launch(variant, &FORWARD, &params, bound, grid)
}

/// `dqkv` from `dout`: delta = rowsum(dout ∘ out), then dq by queries and dk, dv by keys.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    gpu: &GpuBackend,
    qkv: &GpuTensor,
    key_mask: &GpuTensor,
    spec: &AttentionSpec,
    out: &GpuTensor,
    lse: &GpuTensor,
    dout: &GpuTensor,
    dqkv: &GpuTensor,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let (variant, params, grid) = shared(gpu, OP, spec, [qkv, key_mask, out, lse])?;
    let params = AttentionParams {
        dout_offset: index_u32(OP, dout.offset())?,
        dqkv_offset: index_u32(OP, dqkv.offset())?,
        ..params
    };
    let delta = gpu.alloc(&[spec.batch, spec.heads, spec.seq], DType::F32)?;
    gpu.launch(variant, &DELTA, &params, [out, dout, &delta], grid)?;
    let bound = [qkv, key_mask, lse, dout, &delta, dqkv];
    gpu.launch(variant, &DQ, &params, bound, grid)?;
    gpu.launch(variant, &DKV, &params, bound, grid)
}

/// The variant, the parameters every pass shares, and the grid of one workgroup per block of
/// queries (or keys) of each head of each clip.
fn shared(
    gpu: &GpuBackend,
    op: &'static str,
    spec: &AttentionSpec,
    [qkv, key_mask, out, lse]: [&GpuTensor; 4],
) -> Result<(AttentionVariant, AttentionParams, [u32; 3])> {
    let variant = kernel_config::attention_variant(
        qkv.dtype(),
        spec.head_dim,
        spec.seq,
        gpu.kernels.workgroup_storage_bytes,
    );
    let blocks = spec.seq.div_ceil(variant.bq as usize);
    let grid = gpu.workgroup_grid(spec.batch * spec.heads * blocks);
    let params = AttentionParams {
        batch: index_u32(op, spec.batch)?,
        t: index_u32(op, spec.seq)?,
        heads: index_u32(op, spec.heads)?,
        d: index_u32(op, spec.head_dim)?,
        groups_x: grid[0],
        scale: 1.0 / (spec.head_dim as f32).sqrt(),
        p: spec.dropout,
        keep_scale: crate::rng::keep_scale(spec.dropout),
        seed: words(spec.key.seed),
        step: words(spec.key.step),
        site: spec.key.site,
        qkv_offset: index_u32(op, qkv.offset())?,
        mask_offset: index_u32(op, key_mask.offset())?,
        out_offset: index_u32(op, out.offset())?,
        lse_offset: index_u32(op, lse.offset())?,
        ..AttentionParams::default()
    };
    Ok((variant, params, grid))
}
