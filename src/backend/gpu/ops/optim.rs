//! Optimizer ops over whole arenas (optim.wgsl): the AdamW step, the gradient norm, clipping,
//! and unscaling with a finite check; the reductions sum per-workgroup partials in order.

use super::{index_u32, GpuTensor};
use crate::backend::gpu::kernel_config::REDUCE_ITEMS;
use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_reduce_source, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::{AdamW, Backend};
use crate::dtype::DType;
use crate::error::Result;

const SOURCE: &str = include_str!("../../../../shaders/optim.wgsl");

wgsl_params! {
    pub struct OptimParams {
        n: u32,
        groups_x: u32,
        partials_count: u32,
        x_offset: u32,
        g_offset: u32,
        m_offset: u32,
        v_offset: u32,
        out_offset: u32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        decay: f32,
        step_size: f32,
        bc2_sqrt: f32,
        scale: f32,
        max_norm: f32,
    }
}

/// A power-of-two workgroup (partials are reduced down a tree), `items` elements per
/// invocation of the partials passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OptimKernel {
    pub workgroup: u32,
    pub items: u32,
}

const ADAMW: Entry<OptimKernel, 4> = Entry::new("adamw", [1, 2, 3, 4]);
const SUMSQ_PARTIALS: Entry<OptimKernel, 2> = Entry::new("sumsq_partials", [1, 5]);
const NONFINITE_PARTIALS: Entry<OptimKernel, 2> = Entry::new("nonfinite_partials", [1, 5]);
const FINISH_NORM: Entry<OptimKernel, 2> = Entry::new("finish_norm", [5, 6]);
const FINISH_ANY: Entry<OptimKernel, 2> = Entry::new("finish_any", [5, 6]);
/// The norm is bound at binding 2, where adamw reads gradients.
const CLIP: Entry<OptimKernel, 2> = Entry::new("clip", [1, 2]);
const ENTRIES: &[EntryPoint] = &[
    ADAMW.point(),
    SUMSQ_PARTIALS.point(),
    NONFINITE_PARTIALS.point(),
    FINISH_NORM.point(),
    FINISH_ANY.point(),
    CLIP.point(),
];

impl KernelFamily for OptimKernel {
    type Params = OptimParams;

    fn name(&self) -> String {
        format!("optim_wg{}_items{}", self.workgroup, self.items)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        vec![("WG", self.workgroup as f64), ("ITEMS", self.items as f64)]
    }

    fn body(&self) -> String {
        format!("{}\n{SOURCE}", workgroup_reduce_source())
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![OptimKernel {
            workgroup: CHECKED_WORKGROUP,
            items: REDUCE_ITEMS,
        }]
    }
}

/// One AdamW step over whole arenas.
pub(crate) fn adamw(
    gpu: &GpuBackend,
    params: &GpuTensor,
    grads: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    hp: &AdamW,
    step: u64,
) -> Result<()> {
    const OP: &str = "adamw";
    let (decay, step_size, bc2_sqrt) = hp.step_scalars(step);
    let grid = gpu.grid(params.len());
    let p = OptimParams {
        n: index_u32(OP, params.len())?,
        groups_x: grid[0],
        x_offset: index_u32(OP, params.offset())?,
        g_offset: index_u32(OP, grads.offset())?,
        m_offset: index_u32(OP, m.offset())?,
        v_offset: index_u32(OP, v.offset())?,
        beta1: hp.beta1,
        beta2: hp.beta2,
        eps: hp.eps,
        decay,
        step_size,
        bc2_sqrt,
        ..OptimParams::default()
    };
    gpu.launch(kernel(gpu), &ADAMW, &p, [params, grads, m, v], grid)
}

/// `norm[0] = ‖grads‖₂`.
pub(crate) fn grad_norm(gpu: &GpuBackend, grads: &GpuTensor, norm: &GpuTensor) -> Result<()> {
    let entries = (&SUMSQ_PARTIALS, &FINISH_NORM);
    reduce(gpu, "grad_norm", grads, entries, 1.0, norm)
}

/// `grads *= min(1, max_norm / (norm[0] + 1e-6))`, the norm read on the device.
pub(crate) fn clip_grads(
    gpu: &GpuBackend,
    grads: &GpuTensor,
    norm: &GpuTensor,
    max_norm: f32,
) -> Result<()> {
    const OP: &str = "clip_grads";
    let grid = gpu.grid(grads.len());
    let p = OptimParams {
        n: index_u32(OP, grads.len())?,
        groups_x: grid[0],
        x_offset: index_u32(OP, grads.offset())?,
        g_offset: index_u32(OP, norm.offset())?,
        max_norm,
        ..OptimParams::default()
    };
    gpu.launch(kernel(gpu), &CLIP, &p, [grads, norm], grid)
}

/// `grads *= inv_scale`, and `found_inf[0]` = 1 when any of them is not finite, else 0.
pub(crate) fn unscale_check(
    gpu: &GpuBackend,
    grads: &GpuTensor,
    inv_scale: f32,
    found_inf: &GpuTensor,
) -> Result<()> {
    let entries = (&NONFINITE_PARTIALS, &FINISH_ANY);
    reduce(gpu, "unscale_check", grads, entries, inv_scale, found_inf)
}

fn kernel(gpu: &GpuBackend) -> OptimKernel {
    OptimKernel {
        workgroup: gpu.kernels.elementwise_workgroup,
        items: REDUCE_ITEMS,
    }
}

/// A whole-arena reduction of `x` into `out[0]`: per-workgroup partials (the first entry,
/// which may also scale `x`), then the second entry over them in order.
fn reduce(
    gpu: &GpuBackend,
    op: &'static str,
    x: &GpuTensor,
    (partials_entry, finish_entry): (&Entry<OptimKernel, 2>, &Entry<OptimKernel, 2>),
    scale: f32,
    out: &GpuTensor,
) -> Result<()> {
    let per_group = (gpu.kernels.elementwise_workgroup * REDUCE_ITEMS) as usize;
    let groups = x.len().div_ceil(per_group).max(1);
    let partials = gpu.alloc(&[groups], DType::F32)?;
    let grid = gpu.workgroup_grid(groups);
    let params = OptimParams {
        n: index_u32(op, x.len())?,
        groups_x: grid[0],
        partials_count: groups as u32,
        x_offset: index_u32(op, x.offset())?,
        out_offset: index_u32(op, out.offset())?,
        scale,
        ..OptimParams::default()
    };
    gpu.launch(kernel(gpu), partials_entry, &params, [x, &partials], grid)?;
    gpu.launch(
        kernel(gpu),
        finish_entry,
        &params,
        [&partials, out],
        [1, 1, 1],
    )
}
