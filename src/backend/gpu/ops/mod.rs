//! One module per GPU op family: its kernel variants, its uniform Params block, its entry
//! points with the bindings each takes, and its launchers, which the backend's `impl Backend`
//! calls with operands the trait has already checked. What they share is here: the dispatch
//! of an entry point, grids, and the conversions into the kernels' 32-bit words.

pub mod attention;
pub mod cast;
pub mod column_sums;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod layernorm;
pub mod matmul;
pub mod matmul_coop;
pub mod optim;
mod pairs;
pub mod pool;

use super::shaders::{Entry, KernelFamily};
use super::GpuBackend;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A tensor of the GPU backend.
pub(crate) type GpuTensor = Tensor<GpuBackend>;

/// Kernel indices are u32; refuse what does not fit rather than wrap.
pub(crate) fn index_u32(op: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::shape(
            op,
            format!("{value} elements exceed the kernels' 32-bit indexing"),
        )
    })
}

/// f16 kernels declare `array<f16>` operands, which need SHADER_F16: on an adapter without it
/// f16 operands are refused (bf16 runs everywhere).
pub(crate) fn f16_needs_shader_f16(
    gpu: &GpuBackend,
    op: &'static str,
    operands: &[&GpuTensor],
) -> Result<()> {
    let has_f16 = gpu
        .ctx
        .device
        .features()
        .contains(wgpu::Features::SHADER_F16);
    if has_f16 || operands.iter().all(|t| t.dtype() != DType::F16) {
        return Ok(());
    }
    Err(Error::UnsupportedDtype {
        op,
        dtype: DType::F16,
        hint: "this adapter has no f16 shader support (SHADER_F16); use bf16, which runs on \
               every adapter",
    })
}

/// A u64 as the (low, high) words WGSL takes.
pub(crate) fn words(x: u64) -> [u32; 2] {
    [x as u32, (x >> 32) as u32]
}

impl GpuBackend {
    /// A 1-D grid of `items` invocations folded into two dimensions when it exceeds the
    /// per-dimension limit; returns the workgroup counts (the kernels get x as `groups_x`).
    pub(crate) fn grid(&self, items: usize) -> [u32; 3] {
        self.workgroup_grid(items.div_ceil(self.kernels.elementwise_workgroup as usize))
    }

    /// `groups` workgroups, folded into two dimensions like [`GpuBackend::grid`].
    pub(crate) fn workgroup_grid(&self, groups: usize) -> [u32; 3] {
        let groups = groups.max(1);
        let max = self.kernels.max_workgroups_per_dimension as usize;
        let x = groups.min(max);
        [x as u32, groups.div_ceil(x) as u32, 1]
    }

    /// Compiles (once) and records one dispatch of `entry` of `kernel`: `params` at binding 0,
    /// `tensors` at the entry's bindings, in order.
    pub(crate) fn launch<K: KernelFamily, const N: usize>(
        &self,
        kernel: K,
        entry: &Entry<K, N>,
        params: &K::Params,
        tensors: [&Tensor<Self>; N],
        grid: [u32; 3],
    ) -> Result<()> {
        let buffers = tensors.map(|t| t.storage().buffer());
        self.launch_buffers(kernel, entry, params, buffers, grid)
    }

    /// [`GpuBackend::launch`] with buffers, for bindings that may take the placeholder.
    pub(crate) fn launch_buffers<K: KernelFamily, const N: usize>(
        &self,
        kernel: K,
        entry: &Entry<K, N>,
        params: &K::Params,
        buffers: [&wgpu::Buffer; N],
        grid: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.ctx.pipeline(kernel.into(), entry.name)?;
        let bindings: [(u32, &wgpu::Buffer); N] =
            std::array::from_fn(|i| (entry.bindings[i], buffers[i]));
        self.ctx
            .dispatch(&pipeline, bytemuck::bytes_of(params), &bindings, grid);
        Ok(())
    }
}
