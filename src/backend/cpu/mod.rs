//! The CPU backend: f32 on every core, matrix products by the `gemm` crate (runtime-selected
//! SIMD kernels) or, with a weight packed for inference, by our own kernel; elementwise ops
//! in parallel chunks with rayon.
//!
//! This file holds the backend and its `Backend` implementation, which hands each op to the
//! file of its job: `storage` (host memory and locking), `elementwise`, `reductions`,
//! `norm`, `attention`, `cross_entropy`, `optim`, `gemm` (products and transposes),
//! `packed` (products with a packed weight) and `cast`; `simd`, `philox` (dropout's draws)
//! and `half_convert` are the vector layers they share.

use std::sync::Arc;

mod attention;
mod cast;
mod cross_entropy;
mod elementwise;
mod gemm;
mod half_convert;
mod norm;
mod optim;
mod packed;
mod philox;
mod reductions;
mod simd;
mod staging;
mod storage;
#[cfg(test)]
mod tests;

use elementwise::map_chunks;
pub use storage::{CpuStorage, HostAllocator, HostBlock};

use super::{AdamW, AttentionSpec, Backend, DropoutKey, Elementwise, MatmulSpec};
use crate::config::GpuConfig;
use crate::device::DeviceInfo;
use crate::dtype::DType;
use crate::error::Result;
use crate::memory::{MemoryGuard, MemoryPool, MemoryStats};
use crate::tensor::{HostTensor, Tensor};

/// Elementwise work is split into chunks of this many elements, large enough that rayon's
/// scheduling cost vanishes and small enough to spread over every core.
const CHUNK: usize = 1 << 15;

/// A matrix product: by our kernel when B is a packed weight, else by gemm.
fn product(
    a: &Tensor<CpuBackend>,
    b: &Tensor<CpuBackend>,
    bias: Option<&Tensor<CpuBackend>>,
    out: &Tensor<CpuBackend>,
    spec: &MatmulSpec,
) -> Result<()> {
    match spec.packed_b {
        true => packed::matmul(a, b, bias, out, spec),
        false => gemm::matmul(a, b, bias, out, spec),
    }
}

/// The CPU backend.
pub struct CpuBackend {
    info: DeviceInfo,
    pool: MemoryPool<HostAllocator>,
}

impl CpuBackend {
    pub fn new(config: &GpuConfig) -> Result<CpuBackend> {
        let info = DeviceInfo::cpu();
        Ok(CpuBackend {
            pool: MemoryPool::new(HostAllocator, config.budget_bytes(info.memory_bytes)),
            info,
        })
    }

    /// A guard that empties this backend's buffer cache when dropped.
    pub fn memory_guard(&self) -> MemoryGuard<HostAllocator> {
        self.pool.guard()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new(&GpuConfig::default()).expect("the default config is valid")
    }
}

impl Backend for CpuBackend {
    type Storage = CpuStorage;
    /// None: the CPU runs each op as it is called, so there is no recorded work to keep.
    type Replay = std::convert::Infallible;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// From any other thread, each op that shares its work would queue it for the pool and
    /// sleep until a woken thread had done it: at a clip's sizes those hand-offs took a
    /// quarter of a prediction (BENCHMARKS.md). On one of the pool's threads, an op keeps a
    /// part for itself and the other threads, still spinning after the last op, take theirs
    /// at once. (`rayon::scope` runs its body on a pool thread.)
    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        rayon::scope(|_| f())
    }

    fn pack_weight_unchecked(&self, w: &Tensor<Self>) -> Result<Option<Tensor<Self>>> {
        let (n, k, nr) = (w.shape()[0], w.shape()[1], packed::panel_width());
        let panels = packed::pack(&w.to_f32_vec()?, n, k, nr);
        let packed = HostTensor::from_f32(&[n.div_ceil(nr), k, nr], panels)?;
        self.upload(&packed).map(Some)
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let bytes = crate::tensor::byte_len(shape, dtype);
        let block = self
            .pool
            .allocate(bytes, &format!("a {dtype} tensor of shape {shape:?}"))?;
        Ok(Tensor::from_storage(
            Arc::new(CpuStorage(block)),
            shape,
            dtype,
        ))
    }

    fn write_unchecked(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        storage::write(dst, src)
    }

    fn matmul_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        product(a, b, bias, out, spec)
    }

    fn matmul_bias_gelu_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()> {
        product(a, b, Some(bias), pre, spec)?;
        // GELU reads `pre` as stored (rounded, in half precision), as the backward pass will.
        let len = spec.m * spec.n;
        if spec.batch <= 1 || spec.stride_c == len {
            let all = spec.batch * len;
            return map_chunks(
                Elementwise::Gelu,
                &[&pre.view(0, &[all])?],
                &out.view(0, &[all])?,
            );
        }
        // Only the items' elements: strided items leave gaps that the product does not write.
        for item in 0..spec.batch {
            let at = item * spec.stride_c;
            let (pre, out) = (pre.view(at, &[len])?, out.view(at, &[len])?);
            map_chunks(Elementwise::Gelu, &[&pre], &out)?;
        }
        Ok(())
    }

    fn elementwise_unchecked(
        &self,
        op: Elementwise,
        inputs: &[&Tensor<Self>],
        out: &Tensor<Self>,
    ) -> Result<()> {
        map_chunks(op, inputs, out)
    }

    fn cast_unchecked(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        cast::cast(x, out)
    }

    fn bias_grad_unchecked(&self, dy: &Tensor<Self>, db: &Tensor<Self>, _: usize) -> Result<()> {
        reductions::bias_grad(dy, db)
    }

    fn layernorm_unchecked(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
        y: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        rows: usize,
    ) -> Result<()> {
        norm::forward(x, w, b, eps, y, mean, rstd, rows)
    }

    fn layernorm_backward_unchecked(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dy: &Tensor<Self>,
        dx: &Tensor<Self>,
        dw: &Tensor<Self>,
        db: &Tensor<Self>,
        _: usize,
    ) -> Result<()> {
        norm::backward(x, w, mean, rstd, dy, dx, dw, db)
    }

    fn mean_pool_unchecked(
        &self,
        h: &Tensor<Self>,
        mask: &Tensor<Self>,
        out: &Tensor<Self>,
        (_, t, d): (usize, usize, usize),
    ) -> Result<()> {
        reductions::mean_pool(h, mask, out, (t, d))
    }

    fn mean_pool_backward_unchecked(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
        (_, t, d): (usize, usize, usize),
    ) -> Result<()> {
        reductions::mean_pool_backward(dout, mask, dh, (t, d))
    }

    fn cross_entropy_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        loss: &Tensor<Self>,
        hits: &Tensor<Self>,
        lse: &Tensor<Self>,
        (_, classes): (usize, usize),
    ) -> Result<()> {
        cross_entropy::forward(
            logits,
            labels,
            weights,
            label_smoothing,
            loss,
            hits,
            lse,
            classes,
        )
    }

    fn cross_entropy_backward_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
        scale: f32,
        dlogits: &Tensor<Self>,
        (_, classes): (usize, usize),
    ) -> Result<()> {
        cross_entropy::backward(
            logits,
            labels,
            weights,
            label_smoothing,
            lse,
            scale,
            dlogits,
            classes,
        )
    }

    fn adamw_unchecked(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()> {
        optim::adamw(params, grads, m, v, hp, step)
    }

    fn grad_norm_unchecked(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()> {
        optim::grad_norm(grads, norm)
    }

    fn clip_grads_unchecked(
        &self,
        grads: &Tensor<Self>,
        norm: &Tensor<Self>,
        max_norm: f32,
    ) -> Result<()> {
        optim::clip_grads(self, grads, norm, max_norm)
    }

    fn unscale_check_unchecked(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()> {
        optim::unscale_check(grads, inv_scale, found_inf)
    }

    fn dropout_unchecked(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()> {
        elementwise::dropout(x, p, key, out)
    }

    fn attention_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        attention::forward(qkv, key_mask, spec, out, lse)
    }

    fn attention_backward_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        dout: &Tensor<Self>,
        dqkv: &Tensor<Self>,
    ) -> Result<()> {
        attention::backward(qkv, key_mask, spec, out, lse, dout, dqkv)
    }

    fn replay(&self, replay: &Self::Replay) -> Result<()> {
        match *replay {}
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory_stats(&self) -> MemoryStats {
        self.pool.stats()
    }

    fn reset_peak_memory_stats(&self) {
        self.pool.reset_peak_memory_stats()
    }

    fn empty_cache(&self) {
        self.pool.empty_cache()
    }
}
