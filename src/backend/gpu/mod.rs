//! The wgpu backend: hand-written WGSL kernels recorded into one command encoder.

mod context;
#[doc(hidden)]
pub mod kernel_config;
mod operand;
mod ops;
#[doc(hidden)]
pub mod shaders;

use std::sync::Arc;

use context::GpuContext;
pub use context::Replay as GpuReplay;
use kernel_config::KernelConfig;
pub use ops::matmul_coop::{product as coop_matrix_product, CoopProduct};
use ops::{
    attention, cast, column_sums, cross_entropy, dropout, elementwise, f16_needs_shader_f16,
    layernorm, matmul, optim, pool,
};

use super::{
    AdamW, AttentionSpec, Backend, DropoutKey, Elementwise, KernelTime, MatmulSpec, Storage,
};
use crate::config::{CoopMatrix, GpuConfig};
use crate::device::DeviceInfo;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{BlockAllocator, MemoryGuard, MemoryPool, MemoryStats, PooledBlock};
use crate::tensor::{byte_len, HostTensor, Tensor};

/// Device buffers for the pool: storage buffers that can also be copied from and to.
pub struct GpuAllocator {
    ctx: Arc<GpuContext>,
    /// The largest buffer a kernel can bind on this adapter.
    max_buffer_bytes: u64,
}

impl BlockAllocator for GpuAllocator {
    type Block = wgpu::Buffer;

    fn max_block_bytes(&self) -> u64 {
        self.max_buffer_bytes
    }

    fn free(&self, blocks: Vec<wgpu::Buffer>) {
        // Cached bind groups hold the buffers they bind; without them the memory goes now.
        self.ctx.forget_buffers(&blocks);
    }

    fn allocate(&self, bytes: u64, what: &str) -> Result<wgpu::Buffer> {
        let refused = |reason: String| Error::AllocationRefused {
            request: what.to_string(),
            requested_bytes: bytes,
            reason,
        };
        if bytes > self.max_buffer_bytes {
            return Err(refused(format!(
                "one buffer on {} holds at most {} bytes; split the work into smaller batches",
                self.ctx.adapter_name, self.max_buffer_bytes
            )));
        }
        let scope = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Ok(buffer),
            Some(e) => Err(refused(format!("the device is out of memory ({e})"))),
        }
    }
}

/// A GPU tensor's memory: a pooled storage buffer.
pub struct GpuStorage {
    block: PooledBlock<GpuAllocator>,
    ctx: Arc<GpuContext>,
}

impl GpuStorage {
    fn buffer(&self) -> &wgpu::Buffer {
        &self.block
    }
}

impl Storage for GpuStorage {
    fn size_bytes(&self) -> u64 {
        self.block.size_bytes()
    }

    fn read(&self, byte_offset: u64, bytes: u64) -> Result<Vec<u8>> {
        self.ctx.read(self.buffer(), byte_offset, bytes)
    }
}

/// The wgpu backend on one adapter.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    info: DeviceInfo,
    kernels: KernelConfig,
    pool: MemoryPool<GpuAllocator>,
}

/// Features SignFlow's kernels use where the adapter has them; cooperative matrices only
/// where the f16 products will run on them.
fn wanted_features(coop_matrix: bool) -> wgpu::Features {
    let features = wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
    if coop_matrix {
        features | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
    } else {
        features
    }
}

/// The first adapter with the default configuration, for unit tests (the software Vulkan
/// adapter where no GPU is present).
#[cfg(test)]
pub(crate) fn test_gpu() -> GpuBackend {
    let adapters = crate::device::Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter (install mesa-vulkan-drivers)");
    GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).expect("the adapter opens")
}

impl GpuBackend {
    /// Opens `adapter` with its real limits and the compute features it offers.
    pub fn new(
        adapter: &wgpu::Adapter,
        info: DeviceInfo,
        config: &GpuConfig,
    ) -> Result<GpuBackend> {
        let limits = adapter.limits();
        let coop_matrix = config.cooperative_matrix == CoopMatrix::Auto
            && kernel_config::coop_matrix_usable(adapter.features(), &info, &limits);
        let required_features = adapter.features() & wanted_features(coop_matrix);
        let experimental_features =
            if required_features.intersects(wgpu::Features::all_experimental_mask()) {
                // SAFETY: wgpu marks cooperative matrices experimental (its implementation
                // may have bugs); the product that uses them is checked against the tiled one
                // before any model runs on it (`check_coop_matrix_with`), and they are
                // requested only where that product will run (never with `--coop-matrix off`).
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("signflow"),
            required_features,
            required_limits: limits.clone(),
            experimental_features,
            ..Default::default()
        }))
        .map_err(|e| Error::DeviceOpen {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let ctx = GpuContext::new(device, queue, info.name.clone());
        let allocator = GpuAllocator {
            ctx: ctx.clone(),
            max_buffer_bytes: limits
                .max_buffer_size
                .min(limits.max_storage_buffer_binding_size),
        };
        let mut kernels = KernelConfig::for_limits(&limits);
        kernels.coop_matrix = coop_matrix;
        let mut gpu = GpuBackend {
            pool: MemoryPool::new(allocator, config.budget_bytes(info.memory_bytes)),
            kernels,
            ctx,
            info,
        };
        if gpu.kernels.coop_matrix {
            gpu.check_coop_matrix_with(&ops::matmul_coop::product);
        }
        Ok(gpu)
    }

    /// A guard that empties this backend's buffer cache when dropped.
    pub fn memory_guard(&self) -> MemoryGuard<GpuAllocator> {
        self.pool.guard()
    }

    pub fn kernel_config(&self) -> &KernelConfig {
        &self.kernels
    }

    pub fn kernel_config_mut(&mut self) -> &mut KernelConfig {
        &mut self.kernels
    }
}

impl Backend for GpuBackend {
    type Storage = GpuStorage;
    type Replay = GpuReplay;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let bytes = byte_len(shape, dtype);
        let block = self
            .pool
            .allocate(bytes, &format!("a {dtype} tensor of shape {shape:?}"))?;
        let storage = Arc::new(GpuStorage {
            block,
            ctx: self.ctx.clone(),
        });
        self.ctx.keep_while_capturing(|| storage.clone());
        Ok(Tensor::from_storage(storage, shape, dtype))
    }

    fn write_unchecked(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        let bytes = src.as_bytes();
        let offset = (dst.offset() * dst.dtype().size_bytes()) as u64;
        if bytes.len() % 4 == 0 {
            self.ctx.record_write(dst.storage().buffer(), offset, bytes);
            return Ok(());
        }
        // An odd number of 16-bit elements ends mid-word; the other half of that word may
        // belong to a neighbouring view. Stage in a buffer of our own, then let the cast
        // kernel (which keeps the neighbour's half) copy it into place.
        let staging = self.alloc(dst.shape(), dst.dtype())?;
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        self.ctx
            .record_write(staging.storage().buffer(), 0, &padded);
        self.cast(&staging, dst)
    }

    fn matmul_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        f16_needs_shader_f16(self, "matmul", &[a, out])?;
        matmul::matmul(self, a, b, bias, None, out, spec)
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
        f16_needs_shader_f16(self, "matmul_bias_gelu", &[a])?;
        matmul::matmul(self, a, b, Some(bias), Some(pre), out, spec)
    }

    fn elementwise_unchecked(
        &self,
        op: Elementwise,
        inputs: &[&Tensor<Self>],
        out: &Tensor<Self>,
    ) -> Result<()> {
        f16_needs_shader_f16(self, op.name(), &[out])?;
        elementwise::elementwise(self, op, inputs, out)
    }

    fn cast_unchecked(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        cast::cast(self, x, out)
    }

    fn bias_grad_unchecked(&self, dy: &Tensor<Self>, db: &Tensor<Self>, rows: usize) -> Result<()> {
        f16_needs_shader_f16(self, "bias_grad", &[dy])?;
        column_sums::bias_grad(self, dy, db, rows)
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
        f16_needs_shader_f16(self, "layernorm", &[x])?;
        layernorm::forward(self, x, w, b, eps, y, mean, rstd, rows)
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
        rows: usize,
    ) -> Result<()> {
        f16_needs_shader_f16(self, "layernorm_backward", &[x])?;
        layernorm::backward(self, x, w, mean, rstd, dy, dx, dw, db, rows)
    }

    fn mean_pool_unchecked(
        &self,
        h: &Tensor<Self>,
        mask: &Tensor<Self>,
        out: &Tensor<Self>,
        dims: (usize, usize, usize),
    ) -> Result<()> {
        f16_needs_shader_f16(self, "mean_pool", &[h])?;
        pool::forward(self, h, mask, out, dims)
    }

    fn mean_pool_backward_unchecked(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
        dims: (usize, usize, usize),
    ) -> Result<()> {
        f16_needs_shader_f16(self, "mean_pool_backward", &[dout])?;
        pool::backward(self, dout, mask, dh, dims)
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
        dims: (usize, usize),
    ) -> Result<()> {
        let (w, s) = (weights, label_smoothing);
        f16_needs_shader_f16(self, "cross_entropy", &[logits])?;
        cross_entropy::forward(self, logits, labels, w, s, loss, hits, lse, dims)
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
        dims: (usize, usize),
    ) -> Result<()> {
        let (w, s) = (weights, label_smoothing);
        f16_needs_shader_f16(self, "cross_entropy_backward", &[logits])?;
        cross_entropy::backward(self, logits, labels, w, s, lse, scale, dlogits, dims)
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
        optim::adamw(self, params, grads, m, v, hp, step)
    }

    fn grad_norm_unchecked(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()> {
        optim::grad_norm(self, grads, norm)
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
        optim::unscale_check(self, grads, inv_scale, found_inf)
    }

    fn dropout_unchecked(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()> {
        f16_needs_shader_f16(self, "dropout", &[out])?;
        dropout::dropout(self, x, p, key, out)
    }

    fn attention_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        f16_needs_shader_f16(self, "attention", &[qkv])?;
        attention::forward(self, qkv, key_mask, spec, out, lse)
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
        f16_needs_shader_f16(self, "attention_backward", &[qkv])?;
        attention::backward(self, qkv, key_mask, spec, out, lse, dout, dqkv)
    }

    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<GpuReplay>> {
        if !self.ctx.begin_capture() {
            f()?;
            return Ok(None);
        }
        let ran = f();
        let replay = self.ctx.end_capture();
        ran.map(|()| replay)
    }

    fn replay(&self, replay: &GpuReplay) -> Result<()> {
        self.ctx.replay(replay);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    fn flush(&self) {
        self.ctx.flush()
    }

    fn device_time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        self.ctx.device_time_ms(f)
    }

    fn time_kernels(&self, on: bool) -> bool {
        self.ctx.time_kernels(on)
    }

    fn take_kernel_times(&self) -> Result<Vec<KernelTime>> {
        self.ctx.take_kernel_times()
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
