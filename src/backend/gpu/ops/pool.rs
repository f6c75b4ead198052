//! Masked mean pool over time and its gradient (pool.wgsl).

use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKernel {
    pub workgroup: u32,
}

pub const FORWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_fwd", [1, 2, 3]);
pub const BACKWARD: Entry<PoolKernel, 3> = Entry::new("mean_pool_bwd", [1, 2, 3]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), BACKWARD.point()];

impl KernelFamily for PoolKernel {
    type Params = PoolParams;

    fn name(&self) -> String {
        format!("pool_wg{}", self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        SOURCE.into()
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![PoolKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
