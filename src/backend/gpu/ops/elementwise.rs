//! Elementwise ops (elementwise.wgsl): add, scale, GELU and its gradient, one invocation per
//! element.

use crate::backend::gpu::shaders::{
    gelu_source, wgsl_params, workgroup_constant, Entry, EntryPoint, KernelFamily,
    CHECKED_WORKGROUP,
};

const SOURCE: &str = include_str!("../../../../shaders/elementwise.wgsl");

wgsl_params! {
    pub struct ElementwiseParams {
        n: u32,
        a_offset: u32,
        b_offset: u32,
        out_offset: u32,
        alpha: f32,
        groups_x: u32,
        _pad: [u32; 2],
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ElementwiseKernel {
    pub workgroup: u32,
}

pub const ADD: Entry<ElementwiseKernel, 3> = Entry::new("add", [1, 2, 3]);
pub const SCALE: Entry<ElementwiseKernel, 2> = Entry::new("scale", [1, 3]);
pub const GELU_FWD: Entry<ElementwiseKernel, 2> = Entry::new("gelu_fwd", [1, 3]);
pub const GELU_BWD: Entry<ElementwiseKernel, 3> = Entry::new("gelu_bwd", [1, 2, 3]);
const ENTRIES: &[EntryPoint] = &[
    ADD.point(),
    SCALE.point(),
    GELU_FWD.point(),
    GELU_BWD.point(),
];

impl KernelFamily for ElementwiseKernel {
    type Params = ElementwiseParams;

    fn name(&self) -> String {
        format!("elementwise_wg{}", self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        format!("{}\n{SOURCE}", gelu_source())
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![ElementwiseKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
