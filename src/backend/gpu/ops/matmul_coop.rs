//! Matrix products on cooperative matrices (matmul_coop.wgsl): f16 operands, f32 accumulators,
//! C in f16 or f32, the bias and GELU epilogues, any layout and batch. The tiled product's
//! launcher hands f16 products here where the kernel configuration says so; the check that
//! decides it when the adapter is opened is [`GpuBackend::check_coop_matrix_with`].

use rand::{Rng, SeedableRng};

use super::matmul::{kept, MatmulParams, STORE, STORE_GELU};
use super::{index_u32, GpuTensor};
use crate::backend::gpu::kernel_config::{
    COOP_BK, COOP_BM, COOP_BN, COOP_SM, COOP_SN, COOP_WORKGROUP,
};
use crate::backend::gpu::operand::{declare, Operand};
use crate::backend::gpu::shaders::{gelu_source, Entry, EntryPoint, KernelFamily};
use crate::backend::gpu::GpuBackend;
use crate::backend::{Backend, MatmulSpec};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;
use crate::tolerance::{tolerance_for, Deviation, OpClass};

const SOURCE: &str = include_str!("../../../../shaders/matmul_coop.wgsl");

// The kernel names its four accumulators: a subgroup's block is 2×2 matrices of 16×16.
const _: () = assert!(COOP_SM == 32 && COOP_SN == 32 && COOP_BK % 16 == 0);
const _: () = assert!(COOP_BM % COOP_SM == 0 && COOP_BN % COOP_SN == 0);

/// matmul_coop.wgsl for a layout, C's and the bias's element types, with or without the GELU
/// epilogue (whose pre-activation has C's type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulCoopKernel {
    pub trans_a: bool,
    pub trans_b: bool,
    pub out: DType,
    pub bias: DType,
    pub gelu: bool,
}

/// A, B, the bias (a placeholder without one) and C.
const MATMUL: Entry<MatmulCoopKernel, 4> = Entry::new("matmul", [1, 2, 3, 4]);
/// With the GELU epilogue: also the pre-activation.
const MATMUL_GELU: Entry<MatmulCoopKernel, 5> = Entry::new("matmul", [1, 2, 3, 4, 5]);
const PLAIN_ENTRIES: &[EntryPoint] = &[MATMUL.point()];
const GELU_ENTRIES: &[EntryPoint] = &[MATMUL_GELU.point()];

/// The element types C and the bias can have: the matrix product's dtype rule with f16
/// operands.
const OUTPUT_DTYPES: [DType; 2] = [DType::F16, DType::F32];

impl KernelFamily for MatmulCoopKernel {
    type Params = MatmulParams;

    fn name(&self) -> String {
        format!(
            "matmul_coop_{}{}_{}_bias{}{}",
            if self.trans_a { 't' } else { 'n' },
            if self.trans_b { 't' } else { 'n' },
            self.out,
            self.bias,
            if self.gelu { "_gelu" } else { "" }
        )
    }

    fn constants(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    fn body(&self) -> String {
        let MatmulCoopKernel {
            trans_a,
            trans_b,
            out,
            bias,
            gelu,
        } = *self;
        let consts = format!(
            "const BM: u32 = {COOP_BM}u;\nconst BN: u32 = {COOP_BN}u;\nconst BK: u32 = {COOP_BK}u;\n\
             const SM: u32 = {COOP_SM}u;\nconst SN: u32 = {COOP_SN}u;\n\
             const WG: u32 = {COOP_WORKGROUP}u;\n\
             const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};"
        );
        // The tiled product's operands and epilogue: its rounding of C, and GELU of the
        // pre-activation as stored.
        let mut operands = vec![
            Operand::read_only("a", 1, DType::F16),
            Operand::read_only("b", 2, DType::F16),
            Operand::read_only("bias", 3, bias),
            Operand::write("c", 4, out),
        ];
        if gelu {
            operands.push(Operand::write("pre", 5, out));
        }
        let body = SOURCE
            .replace("//!CONSTS", &consts)
            .replace("//!OPERANDS", &declare(&operands));
        if gelu {
            format!(
                "{}\n{}\n{}",
                body.replace("//!EPILOGUE", STORE_GELU),
                kept(out),
                gelu_source()
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
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            for out in OUTPUT_DTYPES {
                for bias in OUTPUT_DTYPES {
                    for gelu in [false, true] {
                        // GELU's output and pre-activation are in the operands' dtype.
                        if !gelu || out == DType::F16 {
                            all.push(MatmulCoopKernel {
                                trans_a,
                                trans_b,
                                out,
                                bias,
                                gelu,
                            });
                        }
                    }
                }
            }
        }
        all
    }
}

/// Whether the cooperative-matrix kernel takes a product: the kernel configuration says so
/// (the switch, the adapter, the check), A and B are f16, and its grid fits the adapter. The
/// rest runs on the tiled kernels.
pub(crate) fn takes(gpu: &GpuBackend, a: &GpuTensor, b: &GpuTensor, spec: &MatmulSpec) -> bool {
    let max = gpu.kernels.max_workgroups_per_dimension as usize;
    gpu.kernels.coop_matrix
        && a.dtype() == DType::F16
        && b.dtype() == DType::F16
        && spec.n.div_ceil(COOP_BN as usize) <= max
        && spec.m.div_ceil(COOP_BM as usize) <= max
}

/// `out = op(a)·op(b) (+ bias)`, with `pre` the GELU epilogue, on cooperative matrices: what
/// [`takes`] accepted, operands checked by the trait and apart from the outputs.
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
    let kernel = MatmulCoopKernel {
        trans_a: spec.trans_a,
        trans_b: spec.trans_b,
        out: out.dtype(),
        bias: bias.map_or(out.dtype(), |t| t.dtype()),
        gelu: pre.is_some(),
    };
    let mut params = MatmulParams {
        m: index_u32(OP, spec.m)?,
        n: index_u32(OP, spec.n)?,
        k: index_u32(OP, spec.k)?,
        has_bias: bias.is_some() as u32,
        a_offset: index_u32(OP, a.offset())?,
        b_offset: index_u32(OP, b.offset())?,
        c_offset: index_u32(OP, out.offset())?,
        bias_offset: index_u32(OP, bias.map_or(0, |t| t.offset()))?,
        stride_a: index_u32(OP, spec.stride_a)?,
        stride_b: index_u32(OP, spec.stride_b)?,
        stride_c: index_u32(OP, spec.stride_c)?,
        pre_offset: index_u32(OP, pre.map_or(0, |t| t.offset()))?,
        ..MatmulParams::default()
    };
    // Every index the kernel computes must fit its 32-bit arithmetic.
    index_u32(OP, a.offset().saturating_add(spec.a_len()))?;
    index_u32(OP, b.offset().saturating_add(spec.b_len()))?;
    index_u32(OP, out.offset().saturating_add(spec.c_len()))?;
    if let Some(pre) = pre {
        index_u32(OP, pre.offset().saturating_add(spec.c_len()))?;
    }
    let groups_x = spec.n.div_ceil(COOP_BN as usize) as u32;
    let groups_y = spec.m.div_ceil(COOP_BM as usize) as u32;
    let bias = bias.map_or(&gpu.ctx.placeholder, |t| t.storage().buffer());
    let bound = [
        a.storage().buffer(),
        b.storage().buffer(),
        bias,
        out.storage().buffer(),
    ];
    // Batches beyond the per-dimension limit go in several dispatches.
    let max = gpu.kernels.max_workgroups_per_dimension as usize;
    for base in (0..spec.batch).step_by(max) {
        params.batch_base = base as u32;
        let grid = [groups_x, groups_y, (spec.batch - base).min(max) as u32];
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

/// A product of f16 `a` and `b` into the f32 `out` that the check on opening an adapter
/// compares with the tiled kernels: [`product`], or a stand-in where tests force the check.
pub type CoopProduct =
    dyn Fn(&GpuBackend, &GpuTensor, &GpuTensor, &GpuTensor, &MatmulSpec) -> Result<()>;

/// The cooperative-matrix product, as the check runs it.
pub fn product(
    gpu: &GpuBackend,
    a: &GpuTensor,
    b: &GpuTensor,
    out: &GpuTensor,
    spec: &MatmulSpec,
) -> Result<()> {
    matmul(gpu, a, b, None, None, out, spec)
}

/// The check's product: sizes that are multiples of no tile, and B stored transposed as a
/// linear layer's weights are.
const CHECK_M: usize = 37;
const CHECK_N: usize = 29;
const CHECK_K: usize = 45;
const CHECK_SEED: u64 = 0x5eed;

/// Whether `product` lands within the f16 product tolerance of the tiled f16 product (f32
/// accumulation) of the same operands, on random values; else what went wrong. The caller
/// routes `gpu`'s products to the tiled kernels meanwhile.
fn compare_with_tiled(gpu: &GpuBackend, product: &CoopProduct) -> std::result::Result<(), String> {
    let text = |e: Error| e.to_string();
    let spec = MatmulSpec::new(CHECK_M, CHECK_N, CHECK_K).transpose(false, true);
    let mut rng = rand::rngs::StdRng::seed_from_u64(CHECK_SEED);
    let mut random = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| half::f16::from_f32(rng.random_range(-1.0f32..1.0)).to_f32())
            .collect()
    };
    let (a, b) = (random(CHECK_M * CHECK_K), random(CHECK_N * CHECK_K));
    let (a_shape, b_shape, c_shape) = ([CHECK_M, CHECK_K], [CHECK_N, CHECK_K], [CHECK_M, CHECK_N]);
    let upload = |t: Result<HostTensor>| t.and_then(|t| gpu.upload(&t)).map_err(text);
    let a16 = upload(HostTensor::from_f32_as(&a_shape, &a, DType::F16))?;
    let b16 = upload(HostTensor::from_f32_as(&b_shape, &b, DType::F16))?;
    // NaN wherever the product writes nothing.
    let got = upload(Ok(HostTensor::filled(&c_shape, DType::F32, f32::NAN)))?;
    let want = upload(Ok(HostTensor::filled(&c_shape, DType::F32, 0.0)))?;
    gpu.matmul(&a16, &b16, None, &want, &spec).map_err(text)?;
    product(gpu, &a16, &b16, &got, &spec).map_err(text)?;
    let got = got.to_f32_vec().map_err(text)?;
    let want: Vec<f64> = want
        .to_f32_vec()
        .map_err(text)?
        .into_iter()
        .map(f64::from)
        .collect();
    let deviation = Deviation::measure(&got, &want);
    let tol = tolerance_for(OpClass::Reduction, DType::F16, CHECK_K);
    if deviation.within(tol) {
        return Ok(());
    }
    Err(format!(
        "a {CHECK_M}×{CHECK_N}×{CHECK_K} product is off by {:.2e} relative to its largest value, \
         beyond the f16 tolerance {tol:.1e}",
        deviation.max_rel_err
    ))
}

impl GpuBackend {
    /// The check on opening an adapter whose f16 products would run on cooperative matrices:
    /// `product` (the real one, [`product`], or a stand-in where tests force the check) on a
    /// small random case against the tiled kernels. On a mismatch, or a failure to compile or
    /// run, the products go back to the tiled kernels and the adapter and the error are
    /// named in one warning. Returns whether cooperative matrices stay on.
    #[doc(hidden)]
    pub fn check_coop_matrix_with(&mut self, product: &CoopProduct) -> bool {
        let on = std::mem::replace(&mut self.kernels.coop_matrix, false);
        let checked = compare_with_tiled(self, product);
        self.kernels.coop_matrix = on;
        if let Err(error) = checked {
            tracing::warn!(
                "cooperative matrices on {} are off (the tiled kernels run instead): {error}",
                self.info.name
            );
            self.kernels.coop_matrix = false;
        }
        // The backend's memory statistics start from an untouched device.
        self.pool.empty_cache();
        self.pool.reset_peak_memory_stats();
        self.kernels.coop_matrix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::test_gpu;

    #[test]
    fn only_f16_products_go_to_cooperative_matrices_and_only_when_configured() {
        let mut gpu = test_gpu();
        let spec = MatmulSpec::new(4, 4, 4);
        let operand = |dtype| gpu.alloc(&[4, 4], dtype).unwrap();
        let (f16, f32, bf16) = (
            operand(DType::F16),
            operand(DType::F32),
            operand(DType::Bf16),
        );
        // The software adapter has no cooperative matrices: `auto` leaves them off.
        assert!(!gpu.kernels.coop_matrix);
        assert!(!takes(&gpu, &f16, &f16, &spec));
        gpu.kernels.coop_matrix = true;
        assert!(takes(&gpu, &f16, &f16, &spec));
        assert!(!takes(&gpu, &f32, &f32, &spec));
        assert!(!takes(&gpu, &bf16, &bf16, &spec));
    }
}
