//! Dropout with the counter-based Philox mask (philox.wgsl + dropout.wgsl), in f32, f16 or
//! bf16 storage.

use super::{index_u32, words, GpuTensor};
use crate::backend::gpu::operand::{declare, Operand};
use crate::backend::gpu::shaders::{storage_family, wgsl_params, Entry, EntryPoint, PHILOX};
use crate::backend::gpu::GpuBackend;
use crate::backend::DropoutKey;
use crate::error::Result;
use crate::rng;

const SOURCE: &str = include_str!("../../../../shaders/dropout.wgsl");

wgsl_params! {
    pub struct DropoutParams {
        n: u32,
        groups_x: u32,
        x_offset: u32,
        out_offset: u32,
        p: f32,
        keep_scale: f32,
        site: u32,
        _pad: u32,
        /// The u64 seed and step as (low, high) words.
        seed: [u32; 2],
        step: [u32; 2],
    }
}

storage_family! {
    DropoutKernel, "dropout", DropoutParams, ENTRIES, |d| {
        let operands = declare(&[Operand::read("x", 1, d), Operand::write("out", 2, d)]);
        format!("{PHILOX}\n{}", SOURCE.replace("//!OPERANDS", &operands))
    }
}

const DROPOUT: Entry<DropoutKernel, 2> = Entry::new("dropout", [1, 2]);
const ENTRIES: &[EntryPoint] = &[DROPOUT.point()];

/// `out = x·keep_scale` where the element's draw under `key` is at least `p`, else 0.
pub(crate) fn dropout(
    gpu: &GpuBackend,
    x: &GpuTensor,
    p: f32,
    key: &DropoutKey,
    out: &GpuTensor,
) -> Result<()> {
    const OP: &str = "dropout";
    // One invocation per Philox call, all the calls of every tile the elements touch.
    let tiles = out.len().div_ceil(rng::TILE as usize);
    let calls = tiles * rng::CALLS_PER_TILE as usize;
    let grid = gpu.grid(calls);
    let params = DropoutParams {
        n: index_u32(OP, out.len())?,
        groups_x: grid[0],
        x_offset: index_u32(OP, x.offset())?,
        out_offset: index_u32(OP, out.offset())?,
        p,
        keep_scale: rng::keep_scale(p),
        site: key.site,
        seed: words(key.seed),
        step: words(key.step),
        ..DropoutParams::default()
    };
    let kernel = DropoutKernel {
        dtype: out.dtype(),
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    gpu.launch(kernel, &DROPOUT, &params, [x, out], grid)
}
