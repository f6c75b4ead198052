//! Cross-entropy with label smoothing and class weights (cross_entropy.wgsl): per-row passes,
//! one that sums the rows in order, and the gradient. The logits and their gradient are stored
//! in f32, f16 or bf16; labels, weights, the loss, hits and log-sum-exps are f32, and so is
//! the arithmetic.

use super::pairs::{declare_paired, ROW_SLOTS};
use super::{index_u32, GpuTensor};
use crate::backend::gpu::operand::Operand;
use crate::backend::gpu::shaders::{
    storage_family, wgsl_params, workgroup_reduce_source, Entry, EntryPoint,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;

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

storage_family! {
    /// A power-of-two workgroup: rows are reduced down a tree.
    CrossEntropyKernel, "cross_entropy", CrossEntropyParams, ENTRIES, |d| {
        let f = DType::F32;
        let operands = declare_paired(
            d,
            &[Operand::read("logits", 1, d), Operand::write("dlogits", 8, d)],
            &[
                Operand::read("labels", 2, f),
                Operand::read("weights", 3, f),
                Operand::write("lse", 4, f),
                Operand::write("rows", 5, f),
                Operand::write("loss", 6, f),
                Operand::write("hits", 7, f),
            ],
        );
        let operands = format!("{operands}{ROW_SLOTS}");
        format!(
            "{}\n{}",
            workgroup_reduce_source(),
            SOURCE.replace("//!OPERANDS", &operands)
        )
    }
}

/// Without class weights, the labels stand in for them at binding 3.
const ROWS: Entry<CrossEntropyKernel, 5> = Entry::new("xent_rows", [1, 2, 3, 4, 5]);
const FINISH: Entry<CrossEntropyKernel, 3> = Entry::new("xent_finish", [5, 6, 7]);
const BACKWARD: Entry<CrossEntropyKernel, 5> = Entry::new("xent_bwd", [1, 2, 3, 4, 8]);
const ENTRIES: &[EntryPoint] = &[ROWS.point(), FINISH.point(), BACKWARD.point()];

/// The mean loss into `loss[0]`, top-1 and top-5 hits into `hits`, each row's log-sum-exp into
/// `lse`: per-row terms, then one invocation that adds the rows in order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    gpu: &GpuBackend,
    logits: &GpuTensor,
    labels: &GpuTensor,
    weights: Option<&GpuTensor>,
    label_smoothing: f32,
    loss: &GpuTensor,
    hits: &GpuTensor,
    lse: &GpuTensor,
    dims: (usize, usize),
) -> Result<()> {
    const OP: &str = "cross_entropy";
    let rows = gpu.alloc(&[dims.0, 3], DType::F32)?;
    let (params, grid) = shared(
        gpu,
        OP,
        [logits, labels, lse],
        weights,
        label_smoothing,
        dims,
    )?;
    let params = CrossEntropyParams {
        loss_offset: index_u32(OP, loss.offset())?,
        hits_offset: index_u32(OP, hits.offset())?,
        ..params
    };
    let weights = weights.unwrap_or(labels);
    let bound = [logits, labels, weights, lse, &rows];
    gpu.launch(kernel(gpu, logits.dtype()), &ROWS, &params, bound, grid)?;
    // The row terms are f32 whatever the logits were.
    gpu.launch(
        kernel(gpu, DType::F32),
        &FINISH,
        &params,
        [&rows, loss, hits],
        [1, 1, 1],
    )
}

/// `dlogits`, scaled by `scale`, from the forward pass's `lse`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    gpu: &GpuBackend,
    logits: &GpuTensor,
    labels: &GpuTensor,
    weights: Option<&GpuTensor>,
    label_smoothing: f32,
    lse: &GpuTensor,
    scale: f32,
    dlogits: &GpuTensor,
    dims: (usize, usize),
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    let (params, grid) = shared(
        gpu,
        OP,
        [logits, labels, lse],
        weights,
        label_smoothing,
        dims,
    )?;
    let params = CrossEntropyParams {
        scale,
        out_offset: index_u32(OP, dlogits.offset())?,
        ..params
    };
    let weights = weights.unwrap_or(labels);
    let bound = [logits, labels, weights, lse, dlogits];
    gpu.launch(kernel(gpu, logits.dtype()), &BACKWARD, &params, bound, grid)
}

fn kernel(gpu: &GpuBackend, dtype: DType) -> CrossEntropyKernel {
    CrossEntropyKernel {
        dtype,
        workgroup: gpu.kernels.elementwise_workgroup,
    }
}

/// The parameters both passes share, and the grid of one workgroup per row.
fn shared(
    gpu: &GpuBackend,
    op: &'static str,
    [logits, labels, lse]: [&GpuTensor; 3],
    weights: Option<&GpuTensor>,
    label_smoothing: f32,
    (batch, classes): (usize, usize),
) -> Result<(CrossEntropyParams, [u32; 3])> {
    let grid = gpu.workgroup_grid(batch);
    let params = CrossEntropyParams {
        batch: index_u32(op, batch)?,
        classes: index_u32(op, classes)?,
        smoothing: label_smoothing,
        has_weights: weights.is_some() as u32,
        groups_x: grid[0],
        logits_offset: index_u32(op, logits.offset())?,
        labels_offset: index_u32(op, labels.offset())?,
        weights_offset: index_u32(op, weights.map_or(0, |w| w.offset()))?,
        lse_offset: index_u32(op, lse.offset())?,
        ..CrossEntropyParams::default()
    };
    Ok((params, grid))
}
