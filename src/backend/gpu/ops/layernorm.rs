//! Layer norm over the last dimension (layernorm.wgsl): the forward pass and the dx part of
//! the backward pass, one workgroup per row; dw and db are column sums (column_sums.rs). x, y,
//! dy and dx are stored in f32, f16 or bf16; w, b, mean and rstd are f32.

use super::pairs::{declare_paired, ROW_SLOTS};
use super::{column_sums, index_u32, GpuTensor};
use crate::backend::gpu::operand::Operand;
use crate::backend::gpu::shaders::{
    storage_family, wgsl_params, workgroup_reduce_source, Entry, EntryPoint,
};
use crate::backend::gpu::GpuBackend;
use crate::dtype::DType;
use crate::error::Result;

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

storage_family! {
    /// A power-of-two workgroup: rows are reduced down a tree.
    LayerNormKernel, "layernorm", LayerNormParams, ENTRIES, |d| {
        let f = DType::F32;
        let operands = declare_paired(
            d,
            &[
                Operand::read("x", 1, d),
                Operand::read("w", 2, f),
                Operand::read("b", 3, f),
                Operand::write("y", 4, d),
                Operand::read("dy", 7, d),
            ],
            &[Operand::write("mean", 5, f), Operand::write("rstd", 6, f)],
        );
        let operands = format!("{operands}{ROW_SLOTS}");
        format!(
            "{}\n{}",
            workgroup_reduce_source(),
            SOURCE.replace("//!OPERANDS", &operands)
        )
    }
}

const FORWARD: Entry<LayerNormKernel, 6> = Entry::new("layernorm_fwd", [1, 2, 3, 4, 5, 6]);
/// dx is bound where the forward pass writes y.
const BACKWARD: Entry<LayerNormKernel, 6> = Entry::new("layernorm_bwd", [1, 2, 4, 5, 6, 7]);
const ENTRIES: &[EntryPoint] = &[FORWARD.point(), BACKWARD.point()];

/// `y = (x − mean)·rstd·w + b` over `rows` rows, saving `mean` and `rstd`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    gpu: &GpuBackend,
    x: &GpuTensor,
    w: &GpuTensor,
    b: &GpuTensor,
    eps: f32,
    y: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    rows: usize,
) -> Result<()> {
    const OP: &str = "layernorm";
    let grid = gpu.workgroup_grid(rows);
    let params = LayerNormParams {
        rows: index_u32(OP, rows)?,
        cols: index_u32(OP, w.len())?,
        eps,
        groups_x: grid[0],
        x_offset: index_u32(OP, x.offset())?,
        w_offset: index_u32(OP, w.offset())?,
        b_offset: index_u32(OP, b.offset())?,
        y_offset: index_u32(OP, y.offset())?,
        mean_offset: index_u32(OP, mean.offset())?,
        rstd_offset: index_u32(OP, rstd.offset())?,
        ..LayerNormParams::default()
    };
    let bound = [x, w, b, y, mean, rstd];
    gpu.launch(kernel(gpu, x.dtype()), &FORWARD, &params, bound, grid)
}

/// dx by rows here, then dw and db by column sums.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    gpu: &GpuBackend,
    x: &GpuTensor,
    w: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    dw: &GpuTensor,
    db: &GpuTensor,
    rows: usize,
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    let grid = gpu.workgroup_grid(rows);
    let params = LayerNormParams {
        rows: index_u32(OP, rows)?,
        cols: index_u32(OP, w.len())?,
        groups_x: grid[0],
        x_offset: index_u32(OP, x.offset())?,
        w_offset: index_u32(OP, w.offset())?,
        mean_offset: index_u32(OP, mean.offset())?,
        rstd_offset: index_u32(OP, rstd.offset())?,
        dy_offset: index_u32(OP, dy.offset())?,
        dx_offset: index_u32(OP, dx.offset())?,
        ..LayerNormParams::default()
    };
    let bound = [x, w, dx, mean, rstd, dy];
    gpu.launch(kernel(gpu, x.dtype()), &BACKWARD, &params, bound, grid)?;
    column_sums::layernorm_grads(gpu, [dy, x, mean, rstd], dw, db, rows)
}

fn kernel(gpu: &GpuBackend, dtype: DType) -> LayerNormKernel {
    LayerNormKernel {
        dtype,
        workgroup: gpu.kernels.elementwise_workgroup,
    }
}
