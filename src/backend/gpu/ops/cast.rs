//! Casts between f32, f16 and bf16 (cast.wgsl), one invocation per output word; also every
//! plain copy of the GPU backend.

use super::{index_u32, GpuTensor};
use crate::backend::gpu::operand::HALF;
use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};
use crate::backend::gpu::GpuBackend;
use crate::dtype::DType;
use crate::error::Result;

const SOURCE: &str = include_str!("../../../../shaders/cast.wgsl");

wgsl_params! {
    pub struct CastParams {
        n: u32,
        src_offset: u32,
        dst_offset: u32,
        groups_x: u32,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CastKernel {
    pub from: DType,
    pub to: DType,
    pub workgroup: u32,
}

const CONVERT: Entry<CastKernel, 2> = Entry::new("convert", [1, 2]);
const ENTRIES: &[EntryPoint] = &[CONVERT.point()];

/// Code of a dtype in cast.wgsl.
fn dtype_code(d: DType) -> u32 {
    match d {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Bf16 => 2,
    }
}

impl KernelFamily for CastKernel {
    type Params = CastParams;

    fn name(&self) -> String {
        format!("cast_{}_{}_wg{}", self.from, self.to, self.workgroup)
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        let consts = format!(
            "const SRC: u32 = {}u;\nconst DST: u32 = {}u;",
            dtype_code(self.from),
            dtype_code(self.to)
        );
        format!("{HALF}\n{}", SOURCE.replace("//!CONSTS", &consts))
    }

    fn entries(&self) -> &'static [EntryPoint] {
        ENTRIES
    }

    fn all() -> Vec<Self> {
        let mut all = Vec::new();
        for from in DType::ALL {
            for to in DType::ALL {
                all.push(CastKernel {
                    from,
                    to,
                    workgroup: CHECKED_WORKGROUP,
                });
            }
        }
        all
    }
}

/// `out = x` converted to `out`'s dtype (a copy between equal ones).
pub(crate) fn cast(gpu: &GpuBackend, x: &GpuTensor, out: &GpuTensor) -> Result<()> {
    const OP: &str = "cast";
    if out.is_empty() {
        return Ok(());
    }
    // One invocation per output word.
    let words = if out.dtype() == DType::F32 {
        out.len()
    } else {
        out.len().div_ceil(2)
    };
    let grid = gpu.grid(words);
    let params = CastParams {
        n: index_u32(OP, out.len())?,
        src_offset: index_u32(OP, x.offset())?,
        dst_offset: index_u32(OP, out.offset())?,
        groups_x: grid[0],
    };
    let kernel = CastKernel {
        from: x.dtype(),
        to: out.dtype(),
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    gpu.launch(kernel, &CONVERT, &params, [x, out], grid)
}
