//! Column sums in a fixed order (column_sums.wgsl): bias gradients, and layer norm's dw and db,
//! as per-block partial sums and then a pass that adds the blocks in order.

use crate::backend::gpu::kernel_config::COLUMN_ROW_BLOCK;
use crate::backend::gpu::shaders::{
    wgsl_params, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};

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
    pub workgroup: u32,
    /// Rows each invocation of the partials passes adds up.
    pub row_block: u32,
}

pub const BIAS_PARTIALS: Entry<ColumnSumsKernel, 2> = Entry::new("bias_partials", [1, 5]);
pub const LAYERNORM_PARTIALS: Entry<ColumnSumsKernel, 5> =
    Entry::new("layernorm_partials", [1, 2, 3, 4, 5]);
pub const FINISH_COLUMNS: Entry<ColumnSumsKernel, 2> = Entry::new("finish_columns", [5, 6]);
const ENTRIES: &[EntryPoint] = &[
    BIAS_PARTIALS.point(),
    LAYERNORM_PARTIALS.point(),
    FINISH_COLUMNS.point(),
];

impl KernelFamily for ColumnSumsKernel {
    type Params = ColumnSumParams;

    fn name(&self) -> String {
        format!("column_sums_wg{}_rows{}", self.workgroup, self.row_block)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("WG", self.workgroup as f64),
            ("ROW_BLOCK", self.row_block as f64),
        ]
    }

    fn body(&self) -> String {
        SOURCE.into()
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        vec![ColumnSumsKernel {
            workgroup: CHECKED_WORKGROUP,
            row_block: COLUMN_ROW_BLOCK,
        }]
    }
}
