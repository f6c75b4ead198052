//! Dropout with the counter-based Philox mask (philox.wgsl + dropout.wgsl).

use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP, PHILOX,
};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropoutKernel {
    pub workgroup: u32,
}

pub const DROPOUT: Entry<DropoutKernel, 2> = Entry::new("dropout", [1, 2]);
const ENTRIES: &[EntryPoint] = &[DROPOUT.point()];

impl KernelFamily for DropoutKernel {
    type Params = DropoutParams;

    fn name(&self) -> String {
        format!("dropout_wg{}", self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        format!("{PHILOX}\n{SOURCE}")
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![DropoutKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
