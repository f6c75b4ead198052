//! Layer norm over the last dimension (layernorm.wgsl): the forward pass and the dx part of
//! the backward pass, one workgroup per row; dw and db are column sums (column_sums.rs).

use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, workgroup_reduce_source, Entry, EntryPoint, KernelFamily,
    CHECKED_WORKGROUP,
};

const SOURCE: &str = include_str!("../../../../shaders/layernorm.wgsl");

wgsl_params! {
    pub struct LayerNormParams {
        rows: u32,
        cols: u32,
        eps: f32,
        groups_x: u32,
        x_offset: u32,
        w_offset: u32,
        b_offset: u32,
        y_offset: u32,
        mean_offset: u32,
        rstd_offset: u32,
        dy_offset: u32,
        dx_offset: u32,
    }
}

/// A power-of-two workgroup: rows are reduced down a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerNormKernel {
    pub workgroup: u32,
}

pub const FORWARD: Entry<LayerNormKernel, 6> = Entry::new("layernorm_fwd", [1, 2, 3, 4, 5, 6]);
/// dx is bound where the forward pass writes y.
pub const BACKWARD: Entry<LayerNormKernel, 6> = Entry::new("layernorm_bwd", [1, 2, 4, 5, 6, 7]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), BACKWARD.point()];

impl KernelFamily for LayerNormKernel {
    type Params = LayerNormParams;

    fn name(&self) -> String {
        format!("layernorm_wg{}", self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        format!("{}\n{SOURCE}", workgroup_reduce_source())
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![LayerNormKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
