//! Cross-entropy with label smoothing and class weights (cross_entropy.wgsl): per-row passes,
//! one that sums the rows in order, and the gradient.

use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, workgroup_reduce_source, Entry, EntryPoint, KernelFamily,
    CHECKED_WORKGROUP,
};

const SOURCE: &str = include_str!("../../../../shaders/cross_entropy.wgsl");

wgsl_params! {
    pub struct CrossEntropyParams {
        batch: u32,
        classes: u32,
        smoothing: f32,
        has_weights: u32,
        groups_x: u32,
        scale: f32,
        logits_offset: u32,
        labels_offset: u32,
        weights_offset: u32,
        lse_offset: u32,
        loss_offset: u32,
        hits_offset: u32,
        out_offset: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

/// A power-of-two workgroup: rows are reduced down a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrossEntropyKernel {
    pub workgroup: u32,
}

/// Without class weights, the labels stand in for them at binding 3.
pub const ROWS: Entry<CrossEntropyKernel, 5> = Entry::new("xent_rows", [1, 2, 3, 4, 5]);
pub const FINISH: Entry<CrossEntropyKernel, 3> = Entry::new("xent_finish", [5, 6, 7]);
pub const BACKWARD: Entry<CrossEntropyKernel, 5> = Entry::new("xent_bwd", [1, 2, 3, 4, 8]);
const ENTRIES: &[EntryPoint] = &[ROWS.point(), FINISH.point(), BACKWARD.point()];

impl KernelFamily for CrossEntropyKernel {
    type Params = CrossEntropyParams;

    fn name(&self) -> String {
        format!("cross_entropy_wg{}", self.workgroup)
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
        vec![CrossEntropyKernel {
            workgroup: CHECKED_WORKGROUP,
        }]
    }
}
