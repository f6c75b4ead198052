//! Masked mean pool over time and its gradient (pool.wgsl).

use super::{index_u32, GpuTensor};
use crate::backend::gpu::shaders::{wgsl_params, workgroup_family, Entry, EntryPoint};
use crate::backend::gpu::GpuBackend;
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

workgroup_family! {
    PoolKernel, "pool", PoolParams, ENTRIES, SOURCE.into()
}

const FORWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_fwd", [1, 2, 3]);
const BACKWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_bwd", [1, 2, 3]);
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

/// One dispatch of `entry` over `items` invocations, with the frames `h`, the `mask` and the
/// pooled rows bound in that order.
fn run(
    gpu: &GpuBackend,
    entry: &Entry<PoolKernel, 3>,
    (batch, t, d): (usize, usize, usize),
    [h, mask, pooled]: [&GpuTensor; 3],
    items: usize,
) -> Result<()> {
    let op = entry.name;
    let grid = gpu.grid(items);
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
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    gpu.launch(kernel, entry, &params, [h, mask, pooled], grid)
}
