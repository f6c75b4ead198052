//! Column sums in a fixed order (column_sums.wgsl): bias gradients, and layer norm's dw and db,
//! as per-block partial sums and then a pass that adds the blocks in order. The rows summed
//! (dy, and layer norm's x) are stored in f32, f16 or bf16; the sums are f32.

use super::pairs::declare_paired;
use super::{index_u32, GpuTensor};
use crate::backend::gpu::kernel_config::COLUMN_ROW_BLOCK;
use crate::backend::gpu::operand::{per_word, Operand};
use crate::backend::gpu::shaders::{
    wgsl_params, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::dtype::DType;
use crate::error::Result;

const SOURCE: &str = include_str!("../../../../shaders/column_sums.wgsl");

wgsl_params! {
    pub struct ColumnSumParams {
        rows: u32,
        cols: u32,
        /// Columns of `partials` (cols, or 2·cols for layer norm).
        width: u32,
        blocks: u32,
        groups_x: u32,
        dy_offset: u32,
        x_offset: u32,
        mean_offset: u32,
        rstd_offset: u32,
        /// finish_columns: the first partials column to sum, how many, and where they go.
        first: u32,
        count: u32,
        out_offset: u32,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColumnSumsKernel {
    /// The storage dtype of the rows summed.
    pub dtype: DType,
    pub workgroup: u32,
    /// Rows each invocation of the partials passes adds up.
    pub row_block: u32,
}

const BIAS_PARTIALS: Entry<ColumnSumsKernel, 2> = Entry::new("bias_partials", [1, 5]);
const LAYERNORM_PARTIALS: Entry<ColumnSumsKernel, 5> =
    Entry::new("layernorm_partials", [1, 2, 3, 4, 5]);
const FINISH_COLUMNS: Entry<ColumnSumsKernel, 2> = Entry::new("finish_columns", [5, 6]);
const ENTRIES: &[EntryPoint] = &[
    BIAS_PARTIALS.point(),
    LAYERNORM_PARTIALS.point(),
    FINISH_COLUMNS.point(),
];

impl KernelFamily for ColumnSumsKernel {
    type Params = ColumnSumParams;

    fn name(&self) -> String {
        format!(
            "column_sums_{}_wg{}_rows{}",
            self.dtype, self.workgroup, self.row_block
        )
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("WG", self.workgroup as f64),
            ("ROW_BLOCK", self.row_block as f64),
        ]
    }

    fn body(&self) -> String {
        let (d, f) = (self.dtype, DType::F32);
        let operands = declare_paired(
            d,
            &[Operand::read("dy", 1, d), Operand::read("x", 2, d)],
            &[
                Operand::read("mean", 3, f),
                Operand::read("rstd", 4, f),
                Operand::write("partials", 5, f),
                Operand::write("out", 6, f),
            ],
        );
        SOURCE.replace("//!OPERANDS", &operands)
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        DType::ALL
            .into_iter()
            .map(|dtype| ColumnSumsKernel {
                dtype,
                workgroup: CHECKED_WORKGROUP,
                row_block: COLUMN_ROW_BLOCK,
            })
            .collect()
    }
}

/// `db[j] = Σ_i dy[i, j]` over `rows` rows of `db.len()` columns.
pub(crate) fn bias_grad(
    gpu: &GpuBackend,
    dy: &GpuTensor,
    db: &GpuTensor,
    rows: usize,
) -> Result<()> {
    const OP: &str = "bias_grad";
    let cols = db.len() as u32;
    let base = ColumnSumParams {
        rows: index_u32(OP, rows)?,
        cols,
        width: cols,
        dy_offset: index_u32(OP, dy.offset())?,
        ..ColumnSumParams::default()
    };
    let (partials, base, grid) = partials(gpu, base, dy.dtype())?;
    let params = ColumnSumParams {
        groups_x: grid[0],
        ..base
    };
    let kernel = kernel(gpu, dy.dtype());
    gpu.launch(kernel, &BIAS_PARTIALS, &params, [dy, &partials], grid)?;
    finish(gpu, &partials, base, 0, db)
}

/// Layer norm's `dw` and `db` over `rows` rows: column sums of dy·xhat and of dy, side by side
/// in one partials matrix.
pub(crate) fn layernorm_grads(
    gpu: &GpuBackend,
    [dy, x, mean, rstd]: [&GpuTensor; 4],
    dw: &GpuTensor,
    db: &GpuTensor,
    rows: usize,
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    let cols = dw.len();
    let base = ColumnSumParams {
        rows: index_u32(OP, rows)?,
        cols: cols as u32,
        width: 2 * cols as u32,
        dy_offset: index_u32(OP, dy.offset())?,
        x_offset: index_u32(OP, x.offset())?,
        mean_offset: index_u32(OP, mean.offset())?,
        rstd_offset: index_u32(OP, rstd.offset())?,
        ..ColumnSumParams::default()
    };
    let (partials, base, grid) = partials(gpu, base, dy.dtype())?;
    let params = ColumnSumParams {
        groups_x: grid[0],
        ..base
    };
    let bound = [dy, x, mean, rstd, &partials];
    let kernel = kernel(gpu, dy.dtype());
    gpu.launch(kernel, &LAYERNORM_PARTIALS, &params, bound, grid)?;
    finish(gpu, &partials, base, 0, dw)?;
    finish(gpu, &partials, base, cols, db)
}

fn kernel(gpu: &GpuBackend, dtype: DType) -> ColumnSumsKernel {
    ColumnSumsKernel {
        dtype,
        workgroup: gpu.kernels.elementwise_workgroup,
        row_block: COLUMN_ROW_BLOCK,
    }
}

/// For the first pass: a new `[blocks, base.width]` matrix, one row of partial sums per block
/// of rows; `base` with the block count; the grid of one invocation per (block, column), or per
/// (block, pair of columns) when the rows are in 16-bit `dtype`.
fn partials(
    gpu: &GpuBackend,
    base: ColumnSumParams,
    dtype: DType,
) -> Result<(GpuTensor, ColumnSumParams, [u32; 3])> {
    let blocks = (base.rows as usize)
        .div_ceil(COLUMN_ROW_BLOCK as usize)
        .max(1);
    let matrix = gpu.alloc(&[blocks, base.width as usize], DType::F32)?;
    let slots = (base.cols as usize).div_ceil(per_word(dtype) as usize);
    let grid = gpu.grid(blocks * slots);
    let base = ColumnSumParams {
        blocks: blocks as u32,
        ..base
    };
    Ok((matrix, base, grid))
}

/// `out[j] = Σ_blk partials[blk, first + j]` for `j < out.len()`, blocks in order.
fn finish(
    gpu: &GpuBackend,
    partials: &GpuTensor,
    base: ColumnSumParams,
    first: usize,
    out: &GpuTensor,
) -> Result<()> {
    let grid = gpu.grid(out.len());
    let params = ColumnSumParams {
        first: first as u32,
        count: index_u32("column sums", out.len())?,
        out_offset: index_u32("column sums", out.offset())?,
        groups_x: grid[0],
        ..base
    };
    // The partials are f32 whatever the rows were.
    let kernel = kernel(gpu, DType::F32);
    gpu.launch(kernel, &FINISH_COLUMNS, &params, [partials, out], grid)
}
