//! Masked mean pool over time and its gradient (pool.wgsl): the frames and the pooled rows in
//! f32, f16 or bf16, the mask f32.

use super::pairs::declare_paired;
use super::{index_u32, GpuTensor};
use crate::backend::gpu::operand::{per_word, Operand};
use crate::backend::gpu::shaders::{storage_family, wgsl_params, Entry, EntryPoint};
use crate::backend::gpu::GpuBackend;
use crate::dtype::DType;
use crate::error::Result;

const SOURCE: &str = include_str!("../../../../shaders/pool.wgsl");

wgsl_params! {
    pub struct PoolParams {
        batch: u32,
        t: u32,
        d: u32,
        groups_x: u32,
        h_offset: u32,
        mask_offset: u32,
        pooled_offset: u32,
        _pad: u32,
    }
}

storage_family! {
    PoolKernel, "pool", PoolParams, ENTRIES, |d| {
        let operands = declare_paired(
            d,
            &[
                Operand::read("h", 1, d),
                Operand::write("pooled", 3, d),
                Operand::read("dpooled", 4, d),
                Operand::write("dh", 5, d),
            ],
            &[Operand::read("mask", 2, DType::F32)],
        );
        SOURCE.replace("//!OPERANDS", &operands)
    }
}

const FORWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_fwd", [1, 2, 3]);
/// What each pass reads and writes has its own binding, so that reads of a written 16-bit
/// operand never go through its atomic words.
const BACKWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_bwd", [5, 2, 4]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), BACKWARD.point()];

/// `out[b, j]`: the mean of `h[b, s, j]` over the real frames s of clip b.
pub(crate) fn forward(
    gpu: &GpuBackend,
    h: &GpuTensor,
    mask: &GpuTensor,
    out: &GpuTensor,
    dims: (usize, usize, usize),
) -> Result<()> {
    let (batch, _, d) = dims;
    run(gpu, &FORWARD, dims, [h, mask, out], batch * d)
}

/// `dh[b, s, j] = mask[b, s]·dout[b, j] / count[b]`.
pub(crate) fn backward(
    gpu: &GpuBackend,
    dout: &GpuTensor,
    mask: &GpuTensor,
    dh: &GpuTensor,
    dims: (usize, usize, usize),
) -> Result<()> {
    let (batch, t, d) = dims;
    run(gpu, &BACKWARD, dims, [dh, mask, dout], batch * t * d)
}

/// One dispatch of `entry` over the words of its `items` output elements, with the frames
/// `h`, the `mask` and the pooled rows bound in that order.
fn run(
    gpu: &GpuBackend,
    entry: &Entry<PoolKernel, 3>,
    (batch, t, d): (usize, usize, usize),
    [h, mask, pooled]: [&GpuTensor; 3],
    items: usize,
) -> Result<()> {
    let op = entry.name;
    let grid = gpu.grid(items.div_ceil(per_word(h.dtype()) as usize));
    let params = PoolParams {
        batch: index_u32(op, batch)?,
        t: index_u32(op, t)?,
        d: index_u32(op, d)?,
        groups_x: grid[0],
        h_offset: index_u32(op, h.offset())?,
        mask_offset: index_u32(op, mask.offset())?,
        pooled_offset: index_u32(op, pooled.offset())?,
        ..PoolParams::default()
    };
    let kernel = PoolKernel {
        dtype: h.dtype(),
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    gpu.launch(kernel, entry, &params, [h, mask, pooled], grid)
}
