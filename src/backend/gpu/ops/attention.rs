//! Fused, streaming multi-head attention (philox.wgsl + attention.wgsl): the forward pass and
//! the three passes of the backward, for the variant kernel_config chooses per head size,
//! sequence length and workgroup memory.

use crate::backend::gpu::kernel_config::{
    self, AttentionVariant, ATTENTION_DQ_KEYS, ATTENTION_FORWARD_KEYS,
};
use crate::backend::gpu::shaders::{
    repeat_marked_lines, wgsl_params, Entry, EntryPoint, KernelFamily, PHILOX,
};

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
pub const FORWARD: Entry<AttentionVariant, 5> = Entry::new("attention_fwd", [1, 2, 3, 4, 5]);
pub const DELTA: Entry<AttentionVariant, 3> = Entry::new("attention_delta", [3, 5, 6]);
pub const DQ: Entry<AttentionVariant, 6> = Entry::new("attention_dq", [1, 2, 4, 5, 6, 7]);
pub const DKV: Entry<AttentionVariant, 6> = Entry::new("attention_dkv", [1, 2, 4, 5, 6, 7]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), DELTA.point(), DQ.point(), DKV.point()];

impl KernelFamily for AttentionVariant {
    type Params = AttentionParams;

    fn name(&self) -> String {
        let AttentionVariant { head_dim, bq, bk } = self;
        format!("attention_d{head_dim}_bq{bq}_bk{bk}")
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn body(&self) -> String {
        let AttentionVariant { head_dim, bq, bk } = *self;
        let consts = format!(
            "const HEAD_DIM: u32 = {head_dim}u;\nconst HD4: u32 = {}u;\n\
             const BK: u32 = {bk}u;\nconst BQ: u32 = {bq}u;\n\
             const FWD_KEYS: u32 = {ATTENTION_FORWARD_KEYS}u;\n\
             const DQ_KEYS: u32 = {ATTENTION_DQ_KEYS}u;\nconst NO_KEYS: f32 = {:e};",
            head_dim / 4,
            crate::backend::NO_KEYS_LSE
        );
        let body = SOURCE.replace("//!CONSTS", &consts);
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
