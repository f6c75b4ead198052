//! Optimizer ops over whole arenas (optim.wgsl): the AdamW step, the gradient norm, clipping,
//! and unscaling with a finite check; the reductions sum per-workgroup partials in order.

use crate::backend::gpu::kernel_config::REDUCE_ITEMS;
use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_reduce_source, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};

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

pub const ADAMW: Entry<OptimKernel, 4> = Entry::new("adamw", [1, 2, 3, 4]);
pub const SUMSQ_PARTIALS: Entry<OptimKernel, 2> = Entry::new("sumsq_partials", [1, 5]);
pub const NONFINITE_PARTIALS: Entry<OptimKernel, 2> = Entry::new("nonfinite_partials", [1, 5]);
pub const FINISH_NORM: Entry<OptimKernel, 2> = Entry::new("finish_norm", [5, 6]);
pub const FINISH_ANY: Entry<OptimKernel, 2> = Entry::new("finish_any", [5, 6]);
/// The norm is bound at binding 2, where adamw reads gradients.
pub const CLIP: Entry<OptimKernel, 2> = Entry::new("clip", [1, 2]);
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
