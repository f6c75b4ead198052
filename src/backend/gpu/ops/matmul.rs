//! Matrix products (matmul.wgsl): register-tiled, generated per tile, layout, loader,
//! epilogue and operand dtypes (A and B in f32, f16 or bf16; C and the bias in that dtype or
//! f32; f32 arithmetic); and the second pass of a product split over K (matmul_splits.wgsl).

use super::{index_u32, matmul_coop, GpuTensor};
use crate::backend::gpu::kernel_config::{self, MatmulTile};
use crate::backend::gpu::operand::{declare, per_word, Operand};
use crate::backend::gpu::shaders::{
    gelu_source, repeat_marked_lines, wgsl_params, workgroup_constant, Entry, EntryPoint,
    KernelFamily, CHECKED_WORKGROUP,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::{Backend, MatmulSpec};
use crate::dtype::DType;
use crate::error::{Error, Result};

const SOURCE: &str = include_str!("../../../../shaders/matmul.wgsl");
const LOAD_SCALAR: &str = include_str!("../../../../shaders/matmul_load_scalar.wgsl");
const LOAD_VEC4: &str = include_str!("../../../../shaders/matmul_load_vec4.wgsl");
pub(crate) const STORE: &str = include_str!("../../../../shaders/matmul_store.wgsl");
pub(crate) const STORE_GELU: &str = include_str!("../../../../shaders/matmul_store_gelu.wgsl");
const SPLITS: &str = include_str!("../../../../shaders/matmul_splits.wgsl");

wgsl_params! {
    pub struct MatmulParams {
        m: u32,
        n: u32,
        k: u32,
        has_bias: u32,
        a_offset: u32,
        b_offset: u32,
        c_offset: u32,
        bias_offset: u32,
        stride_a: u32,
        stride_b: u32,
        stride_c: u32,
        batch_base: u32,
        /// Where the GELU epilogue writes the pre-activation (element c_offset of C maps to it).
        pre_offset: u32,
        /// The K extent of each slice of a split product; 0 when not split.
        k_split: u32,
        _pad: [u32; 2],
    }
}

wgsl_params! {
    pub struct MatmulSplitsParams {
        m: u32,
        n: u32,
        slices: u32,
        has_bias: u32,
        c_offset: u32,
        bias_offset: u32,
        groups_x: u32,
        _pad: u32,
    }
}

/// matmul.wgsl for a tile and layout, with vec4 or scalar loads, with or without the bias +
/// GELU epilogue, for one combination of operand dtypes the dtype rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulKernel {
    pub tile: MatmulTile,
    pub trans_a: bool,
    pub trans_b: bool,
    pub vec4: bool,
    pub gelu: bool,
    /// A's and B's storage dtype.
    pub dtype: DType,
    /// C's (and the pre-activation's): `dtype` or f32.
    pub out: DType,
    /// The bias's: `dtype` or f32 (f32 where there is none).
    pub bias: DType,
}

/// A, B, the bias (a placeholder without one) and C.
const MATMUL: Entry<MatmulKernel, 4> = Entry::new("matmul", [1, 2, 3, 4]);
/// With the GELU epilogue: also the pre-activation.
const MATMUL_GELU: Entry<MatmulKernel, 5> = Entry::new("matmul", [1, 2, 3, 4, 5]);
const PLAIN_ENTRIES: &[EntryPoint] = &[MATMUL.point()];
const GELU_ENTRIES: &[EntryPoint] = &[MATMUL_GELU.point()];

impl KernelFamily for MatmulKernel {
    type Params = MatmulParams;

    fn name(&self) -> String {
        format!(
            "matmul_{}_{}_{}{}_{}{}",
            dtypes_name(self.dtype, self.out, self.bias),
            self.tile.name(),
            if self.trans_a { 't' } else { 'n' },
            if self.trans_b { 't' } else { 'n' },
            if self.vec4 { "vec4" } else { "scalar" },
            if self.gelu { "_gelu" } else { "" }
        )
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn body(&self) -> String {
        let MatmulKernel {
            tile: MatmulTile { bm, bn, bk, tm, tn },
            trans_a,
            trans_b,
            vec4,
            gelu,
            dtype,
            out,
            bias,
        } = *self;
        let pairs = per_word(out) == 2;
        let consts = format!(
            "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
             const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n\
             const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\n\
             const PAIRS: bool = {pairs};"
        );
        let mut operands = vec![
            Operand::read_only("bias", 3, bias),
            Operand::write("c", 4, out),
        ];
        operands.extend(gelu.then_some(Operand::write("pre", 5, out)));
        let operands = if vec4 {
            format!("{}{}", declare(&operands), vec4_operands(dtype))
        } else {
            operands.push(Operand::read_only("a", 1, dtype));
            operands.push(Operand::read_only("b", 2, dtype));
            declare(&operands)
        };
        let loader = if vec4 { LOAD_VEC4 } else { LOAD_SCALAR };
        let body = SOURCE
            .replace("//!CONSTS", &consts)
            .replace("//!OPERANDS", &operands)
            .replace("//!LOADER", loader);
        // A thread's share of a slice's loader slots (four elements or one each).
        let slot_width = if vec4 { 4 } else { 1 };
        let threads = (bm / tm) * (bn / tn);
        let slots = |elements: u32| (elements / slot_width).div_ceil(threads);
        let body = repeat_marked_lines(&body, 'u', slots(bm * bk));
        let body = repeat_marked_lines(&body, 'w', slots(bk * bn));
        let body = repeat_marked_lines(&body, 'a', tm / 4);
        let body = repeat_marked_lines(&body, 'i', tm);
        let body = repeat_marked_lines(&body, 'j', tn / 4);
        if gelu {
            format!(
                "{}\n{}\n{}",
                gelu_source(),
                kept(out),
                body.replace("//!EPILOGUE", STORE_GELU)
            )
        } else {
            body.replace("//!EPILOGUE", STORE)
        }
    }

    fn entries(&self) -> &'static [EntryPoint] {
        if self.gelu {
            GELU_ENTRIES
        } else {
            PLAIN_ENTRIES
        }
    }

    fn all() -> Vec<Self> {
        let mut all = Vec::new();
        for (dtype, out, bias) in dtype_combinations() {
            for tile in MatmulTile::CANDIDATES {
                for (trans_a, trans_b) in
                    [(false, false), (false, true), (true, false), (true, true)]
                {
                    for vec4 in [false, true] {
                        // GELU's outputs are activations: in the storage dtype.
                        for gelu in [false, true].into_iter().filter(|&g| !g || out == dtype) {
                            all.push(MatmulKernel {
                                tile,
                                trans_a,
                                trans_b,
                                vec4,
                                gelu,
                                dtype,
                                out,
                                bias,
                            });
                        }
                    }
                }
            }
        }
        all
    }
}

/// Every (A and B, C, bias) dtype combination the dtype rule allows: C and the bias in the
/// storage dtype or f32.
fn dtype_combinations() -> Vec<(DType, DType, DType)> {
    let mut all = Vec::new();
    for dtype in DType::ALL {
        let either = if dtype == DType::F32 {
            vec![dtype]
        } else {
            vec![dtype, DType::F32]
        };
        for &out in &either {
            for &bias in &either {
                all.push((dtype, out, bias));
            }
        }
    }
    all
}

/// A variant's dtypes in its name: the storage dtype, then C's and the bias's where f32 in a
/// half-precision product.
fn dtypes_name(dtype: DType, out: DType, bias: DType) -> String {
    let mut name = dtype.to_string();
    if out != dtype {
        name.push_str(&format!("_c{out}"));
    }
    if bias != dtype {
        name.push_str(&format!("_bias{bias}"));
    }
    name
}

/// The vec4 loader's bindings of A and B for a storage dtype: arrays of four elements a load
/// (`Staged`), and `widen` to f32. bf16 words hold two elements, low half first (operand.rs);
/// a bf16 is the upper half of the f32 of the same value.
fn vec4_operands(dtype: DType) -> String {
    let (enable, staged, widen) = match dtype {
        DType::F32 => ("", "vec4<f32>", "v"),
        DType::F16 => ("enable f16;\n", "vec4<f16>", "vec4<f32>(v)"),
        DType::Bf16 => (
            "",
            "vec2<u32>",
            "vec4<f32>(bitcast<f32>(v.x << 16u), bitcast<f32>(v.x & 0xffff0000u), \
             bitcast<f32>(v.y << 16u), bitcast<f32>(v.y & 0xffff0000u))",
        ),
    };
    format!(
        "{enable}@group(0) @binding(1) var<storage, read> a: array<{staged}>;\n\
         @group(0) @binding(2) var<storage, read> b: array<{staged}>;\n\
         alias Staged = {staged};\n\
         fn widen(v: Staged) -> vec4<f32> {{\n    return {widen};\n}}\n"
    )
}

/// `kept(v)`: what a tensor of `dtype` keeps of v, for the GELU epilogue, which computes GELU
/// of the pre-activation as stored (half.wgsl's rounding, which the stores use).
pub(crate) fn kept(dtype: DType) -> String {
    let kept = match dtype {
        DType::F32 => "v",
        DType::F16 => "f16_to_f32(f32_to_f16(v))",
        DType::Bf16 => "bf16_to_f32(f32_to_bf16(v))",
    };
    format!("fn kept(v: f32) -> f32 {{\n    return {kept};\n}}\n")
}

/// matmul_splits.wgsl: the slices' f32 partial products added in order, and the bias, stored
/// into C of `out` (f32 or a storage dtype) with a bias of `bias` (f32 or C's storage dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulSplitsKernel {
    pub out: DType,
    pub bias: DType,
    pub workgroup: u32,
}

impl KernelFamily for MatmulSplitsKernel {
    type Params = MatmulSplitsParams;

    fn name(&self) -> String {
        format!(
            "matmul_splits_c{}_bias{}_wg{}",
            self.out, self.bias, self.workgroup
        )
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        workgroup_constant(self.workgroup)
    }

    fn body(&self) -> String {
        let operands = declare(&[
            Operand::read_only("partials", 1, DType::F32),
            Operand::read_only("bias", 2, self.bias),
            Operand::write("c", 3, self.out),
        ]);
        let operands = format!("const PER: u32 = {}u;\n{operands}", per_word(self.out));
        SPLITS.replace("//!OPERANDS", &operands)
    }

    fn entries(&self) -> &'static [EntryPoint] {
        SPLITS_ENTRIES
    }

    fn all() -> Vec<Self> {
        let mut all: Vec<Self> = dtype_combinations()
            .into_iter()
            .map(|(_, out, bias)| MatmulSplitsKernel {
                out,
                bias,
                workgroup: CHECKED_WORKGROUP,
            })
            .collect();
        all.sort_by_key(|k| (k.out as u8, k.bias as u8));
        all.dedup();
        all
    }
}

/// The partial products, the bias (a placeholder without one) and C.
const SUM_SLICES: Entry<MatmulSplitsKernel, 3> = Entry::new("sum_slices", [1, 2, 3]);
const SPLITS_ENTRIES: &[EntryPoint] = &[SUM_SLICES.point()];

/// `out = op(a)·op(b) (+ bias)`; with `pre`, the GELU epilogue writes the pre-activation there
/// and GELU of it to `out`.
pub(crate) fn matmul(
    gpu: &GpuBackend,
    a: &GpuTensor,
    b: &GpuTensor,
    bias: Option<&GpuTensor>,
    pre: Option<&GpuTensor>,
    out: &GpuTensor,
    spec: &MatmulSpec,
) -> Result<()> {
    const OP: &str = "matmul";
    if spec.packed_b {
        return Err(Error::shape(
            OP,
            "the GPU packs no weights (its pack_weight returns None): pass the weight as it is",
        ));
    }
    if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
        return Ok(());
    }
    let outputs: Vec<&GpuTensor> = std::iter::once(out).chain(pre).collect();
    let a = apart_from(gpu, a, &outputs)?;
    let b = apart_from(gpu, b, &outputs)?;
    let bias = bias.map(|t| apart_from(gpu, t, &outputs)).transpose()?;
    if matmul_coop::takes(gpu, &a, &b, spec) {
        return matmul_coop::matmul(gpu, &a, &b, bias.as_ref(), pre, out, spec);
    }
    let vec4 = vec4_aligned(spec.lda(), a.offset(), spec.stride_a, spec.batch)
        && vec4_aligned(spec.ldb(), b.offset(), spec.stride_b, spec.batch);
    let tile = gpu.kernels.matmul_tile(spec.m, spec.n, spec.batch);
    let kernel = MatmulKernel {
        tile,
        trans_a: spec.trans_a,
        trans_b: spec.trans_b,
        vec4,
        gelu: pre.is_some(),
        dtype: a.dtype(),
        out: out.dtype(),
        bias: bias.as_ref().map_or(DType::F32, |t| t.dtype()),
    };
    let groups_x = spec.n.div_ceil(tile.bn as usize);
    let groups_y = spec.m.div_ceil(tile.bm as usize);
    let max = gpu.kernels.max_workgroups_per_dimension as usize;
    if groups_x > max || groups_y > max {
        return Err(Error::shape(
            OP,
            format!(
                "{}×{} needs {groups_y}×{groups_x} workgroups, more than the adapter's {max} per dimension",
                spec.m, spec.n
            ),
        ));
    }
    let mut params = MatmulParams {
        m: index_u32(OP, spec.m)?,
        n: index_u32(OP, spec.n)?,
        k: index_u32(OP, spec.k)?,
        has_bias: bias.is_some() as u32,
        a_offset: index_u32(OP, a.offset())?,
        b_offset: index_u32(OP, b.offset())?,
        c_offset: index_u32(OP, out.offset())?,
        bias_offset: index_u32(OP, bias.as_ref().map_or(0, |t| t.offset()))?,
        stride_a: index_u32(OP, spec.stride_a)?,
        stride_b: index_u32(OP, spec.stride_b)?,
        stride_c: index_u32(OP, spec.stride_c)?,
        pre_offset: index_u32(OP, pre.map_or(0, |t| t.offset()))?,
        ..MatmulParams::default()
    };
    // Every index a kernel computes must fit its 32-bit arithmetic.
    index_u32(OP, a.offset().saturating_add(spec.a_len()))?;
    index_u32(OP, b.offset().saturating_add(spec.b_len()))?;
    index_u32(OP, out.offset().saturating_add(spec.c_len()))?;
    if let Some(pre) = pre {
        index_u32(OP, pre.offset().saturating_add(spec.c_len()))?;
    }
    let workgroups = kernel_config::matmul_workgroups(&tile, spec.m, spec.n, spec.batch);
    if spec.batch == 1 && pre.is_none() {
        if let Some(k_split) = kernel_config::matmul_k_split(workgroups, spec.k) {
            params.k_split = index_u32(OP, k_split)?;
            let slices = spec.k.div_ceil(k_split) as u32;
            let grid = [groups_x as u32, groups_y as u32, slices];
            return split_over_k(gpu, kernel, params, [&a, &b], bias.as_ref(), out, grid);
        }
    }
    let bias = bias
        .as_ref()
        .map_or(&gpu.ctx.placeholder, |t| t.storage().buffer());
    let bound = [
        a.storage().buffer(),
        b.storage().buffer(),
        bias,
        out.storage().buffer(),
    ];
    // Batches beyond the per-dimension limit go in several dispatches.
    for base in (0..spec.batch).step_by(max) {
        params.batch_base = base as u32;
        let items = (spec.batch - base).min(max) as u32;
        let grid = [groups_x as u32, groups_y as u32, items];
        match pre {
            Some(pre) => {
                let [a, b, bias, c] = bound;
                let bound = [a, b, bias, c, pre.storage().buffer()];
                gpu.launch_buffers(kernel, &MATMUL_GELU, &params, bound, grid)?;
            }
            None => gpu.launch_buffers(kernel, &MATMUL, &params, bound, grid)?,
        }
    }
    Ok(())
}

/// One product split over K (`params.k_split`): each of the grid's z slices stores its f32
/// partial product into a scratch tensor, then `sum_slices` adds them in slice order, and the
/// bias, into `out`, rounding once.
fn split_over_k(
    gpu: &GpuBackend,
    kernel: MatmulKernel,
    mut params: MatmulParams,
    [a, b]: [&GpuTensor; 2],
    bias: Option<&GpuTensor>,
    out: &GpuTensor,
    grid: [u32; 3],
) -> Result<()> {
    const OP: &str = "matmul";
    let len = params.m as usize * params.n as usize;
    let slices = grid[2];
    let partials = gpu.alloc(&[slices as usize * len], DType::F32)?;
    // The slices store f32 without bias; `sum_slices` adds it and rounds into C's dtype.
    let partial = MatmulKernel {
        out: DType::F32,
        bias: DType::F32,
        ..kernel
    };
    index_u32(OP, partials.offset().saturating_add(slices as usize * len))?;
    let (has_bias, bias_offset) = (params.has_bias, params.bias_offset);
    params.c_offset = index_u32(OP, partials.offset())?;
    params.has_bias = 0;
    let placeholder = &gpu.ctx.placeholder;
    let bound = [
        a.storage().buffer(),
        b.storage().buffer(),
        placeholder,
        partials.storage().buffer(),
    ];
    gpu.launch_buffers(partial, &MATMUL, &params, bound, grid)?;
    let sum_grid = gpu.grid(len.div_ceil(per_word(out.dtype()) as usize));
    let sum = MatmulSplitsParams {
        m: params.m,
        n: params.n,
        slices,
        has_bias,
        c_offset: index_u32(OP, out.offset())?,
        bias_offset,
        groups_x: sum_grid[0],
        ..MatmulSplitsParams::default()
    };
    let sum_kernel = MatmulSplitsKernel {
        out: out.dtype(),
        bias: kernel.bias,
        workgroup: gpu.kernels.elementwise_workgroup,
    };
    let bias = bias.map_or(placeholder, |t| t.storage().buffer());
    let bound = [partials.storage().buffer(), bias, out.storage().buffer()];
    gpu.launch_buffers(sum_kernel, &SUM_SLICES, &sum, bound, sum_grid)
}

/// `x` itself, or a copy of it when it lives in an output's buffer: the matrix product binds
/// its inputs read-only, and one buffer cannot be read-only and writable in one dispatch.
fn apart_from(gpu: &GpuBackend, x: &GpuTensor, outputs: &[&GpuTensor]) -> Result<GpuTensor> {
    if !outputs.iter().any(|out| x.shares_storage(out)) {
        return Ok(x.clone());
    }
    let copy = gpu.alloc(x.shape(), x.dtype())?;
    gpu.copy(x, &copy)?;
    Ok(copy)
}

/// True when a matrix stored with rows of `ld` elements, starting at `offset`, with items
/// `stride` apart, can be read four elements at a time (in any dtype).
fn vec4_aligned(ld: usize, offset: usize, stride: usize, batch: usize) -> bool {
    ld % 4 == 0 && offset % 4 == 0 && (batch <= 1 || stride % 4 == 0)
}
