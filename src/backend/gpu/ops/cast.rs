//! Casts between f32, f16 and bf16 (cast.wgsl), one invocation per output word; also every
//! plain copy of the GPU backend.

use crate::backend::gpu::shaders::{
    wgsl_params, workgroup_constant, Entry, EntryPoint, KernelFamily, CHECKED_WORKGROUP,
};
use crate::dtype::DType;

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

pub const CONVERT: Entry<CastKernel, 2> = Entry::new("convert", [1, 2]);
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
        SOURCE.replace(
            "//!CONSTS",
            &format!(
                "const SRC: u32 = {}u;\nconst DST: u32 = {}u;",
                dtype_code(self.from),
                dtype_code(self.to)
            ),
        )
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
