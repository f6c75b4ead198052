//! Matrix products (matmul.wgsl): register-tiled, generated per tile, layout, loader and
//! epilogue; and the second pass of a product split over K (matmul_splits.wgsl).

use super::{index_u32, matmul_coop, GpuTensor};
use crate::backend::gpu::kernel_config::{self, MatmulTile};
use crate::backend::gpu::shaders::{
    gelu_source, repeat_marked_lines, wgsl_params, workgroup_family, Entry, EntryPoint,
    KernelFamily,
};
use crate::backend::gpu::GpuBackend;
use crate::backend::{Backend, MatmulSpec};
use crate::dtype::DType;
use crate::error::{Error, Result};

const SOURCE: &str = include_str!("../../../../shaders/matmul.wgsl");
const LOAD_SCALAR: &str = include_str!("../../../../shaders/matmul_load_scalar.wgsl");
const LOAD_VEC4: &str = include_str!("../../../../shaders/matmul_load_vec4.wgsl");
const STORE: &str = include_str!("../../../../shaders/matmul_store.wgsl");
const STORE_GELU: &str = include_str!("../../../../shaders/matmul_store_gelu.wgsl");
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

/// matmul.wgsl for a tile and layout, with vec4 or scalar loads, and with or without the bias +
/// GELU epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulKernel {
    pub tile: MatmulTile,
    pub trans_a: bool,
    pub trans_b: bool,
    pub vec4: bool,
    pub gelu: bool,
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
            "matmul_{}_{}{}_{}{}",
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
        } = *self;
        let consts = format!(
            "const BM: u32 = {bm}u;\nconst BN: u32 = {bn}u;\nconst BK: u32 = {bk}u;\n\
             const TM: u32 = {tm}u;\nconst TN: u32 = {tn}u;\n\
             const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};"
        );
        let loader = if vec4 { LOAD_VEC4 } else { LOAD_SCALAR };
        let body = SOURCE
            .replace("//!CONSTS", &consts)
            .replace("//!LOADER", loader);
        // A thread's share of a slice's loader slots (a vec4 or one element each).
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
                "{}\n{}",
                gelu_source(),
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
        for tile in MatmulTile::CANDIDATES {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
                for vec4 in [false, true] {
                    for gelu in [false, true] {
                        all.push(MatmulKernel {
                            tile,
                            trans_a,
                            trans_b,
                            vec4,
                            gelu,
                        });
                    }
                }
            }
        }
        all
    }
}

workgroup_family! {
    /// matmul_splits.wgsl: the slices' partial products added in order, and the bias.
    MatmulSplitsKernel, "matmul_splits", MatmulSplitsParams, SPLITS_ENTRIES, SPLITS.into()
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

/// One product split over K (`params.k_split`): each of the grid's z slices stores its
/// partial product into a scratch tensor, then `sum_slices` adds them in slice order, and the
/// bias, into `out`.
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
    gpu.launch_buffers(kernel, &MATMUL, &params, bound, grid)?;
    let sum_grid = gpu.grid(len);
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
/// `stride` apart, can be read as whole vec4s.
fn vec4_aligned(ld: usize, offset: usize, stride: usize, batch: usize) -> bool {
    ld % 4 == 0 && offset % 4 == 0 && (batch <= 1 || stride % 4 == 0)
}
