//! The [`Elementwise`] ops (elementwise.wgsl) in f32, f16 or bf16, one invocation per output
//! word.

use super::{index_u32, GpuTensor};
use crate::backend::gpu::operand::{declare, per_word, Operand};
use crate::backend::gpu::shaders::{gelu_source, storage_family, wgsl_params, Entry, EntryPoint};
use crate::backend::gpu::GpuBackend;
use crate::backend::Elementwise;
use crate::error::{Error, Result};

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

storage_family! {
    ElementwiseKernel, "elementwise", ElementwiseParams, ENTRIES, |d| {
        let operands = declare(&[
            Operand::read("a", 1, d),
            Operand::read("b", 2, d),
            Operand::write("out", 3, d),
        ]);
        let operands = format!("const PER: u32 = {}u;\n{operands}", per_word(d));
        format!("{}\n{}", gelu_source(), SOURCE.replace("//!OPERANDS", &operands))
    }
}

const ADD: Entry<ElementwiseKernel, 3> = Entry::new("add", [1, 2, 3]);
const SCALE: Entry<ElementwiseKernel, 2> = Entry::new("scale", [1, 3]);
const GELU_FWD: Entry<ElementwiseKernel, 2> = Entry::new("gelu_fwd", [1, 3]);
const GELU_BWD: Entry<ElementwiseKernel, 3> = Entry::new("gelu_bwd", [1, 2, 3]);
const ENTRIES: &[EntryPoint] = &[
    ADD.point(),
    SCALE.point(),
    GELU_FWD.point(),
    GELU_BWD.point(),
];

/// Runs `op` on `inputs` into `out` (the operands checked by the trait).
pub(crate) fn elementwise(
    gpu: &GpuBackend,
    op: Elementwise,
    inputs: &[&GpuTensor],
    out: &GpuTensor,
) -> Result<()> {
    match (op, inputs) {
        (Elementwise::Add, &[a, b]) => run(gpu, &ADD, [a, b, out], 0.0),
        (Elementwise::Scale(alpha), &[x]) => run(gpu, &SCALE, [x, out], alpha),
        (Elementwise::Gelu, &[x]) => run(gpu, &GELU_FWD, [x, out], 0.0),
        (Elementwise::GeluBackward, &[x, dy]) => run(gpu, &GELU_BWD, [x, dy, out], 0.0),
        _ => Err(Error::shape(
            op.name(),
            format!("takes {} inputs, not {}", op.inputs(), inputs.len()),
        )),
    }
}

/// One invocation per word of the output. `operands` are (a, out) or (a, b, out), as the
/// entry binds them.
fn run<const N: usize>(
    gpu: &GpuBackend,
    entry: &Entry<ElementwiseKernel, N>,
    operands: [&GpuTensor; N],
    alpha: f32,
) -> Result<()> {
    let op = entry.name;
    let (a, out) = (operands[0], operands[N - 1]);
    let b_offset = if N == 3 { operands[1].offset() } else { 0 };
    if out.is_empty() {
        return Ok(());
    }
    let grid = gpu.grid(out.len().div_ceil(per_word(out.dtype()) as usize));
    let params = ElementwiseParams {
        n: index_u32(op, out.len())?,
        a_offset: index_u32(op, a.offset())?,
        b_offset: index_u32(op, b_offset)?,
        out_offset: index_u32(op, out.offset())?,
        alpha,
        groups_x: grid[0],
        ..ElementwiseParams::default()
    };
    let kernel = ElementwiseKernel {
        dtype: out.dtype(),
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    gpu.launch(kernel, entry, &params, operands, grid)
}
