//! The wgpu backend: hand-written WGSL kernels recorded into one command encoder.

mod context;
pub mod kernel_config;
pub mod shaders;

use std::sync::Arc;

use context::{Binding, GpuContext};
use kernel_config::KernelConfig;
use shaders::Kernel;

use super::{check, Backend, MatmulSpec, Storage};
use crate::config::GpuConfig;
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

/// Features SignFlow's kernels use where the adapter has them.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulParams {
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
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ElementwiseParams {
    n: u32,
    a_offset: u32,
    b_offset: u32,
    out_offset: u32,
    alpha: f32,
    groups_x: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CastParams {
    n: u32,
    src_offset: u32,
    dst_offset: u32,
    groups_x: u32,
}

/// Kernel indices are u32; refuse what does not fit rather than wrap.
fn index_u32(op: &'static str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::shape(
            op,
            format!("{value} elements exceed the kernels' 32-bit indexing"),
        )
    })
}

impl GpuBackend {
    /// Opens `adapter` with its real limits and the compute features it offers.
    pub fn new(
        adapter: &wgpu::Adapter,
        info: DeviceInfo,
        config: &GpuConfig,
    ) -> Result<GpuBackend> {
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("signflow"),
            required_features: adapter.features() & wanted_features(),
            required_limits: limits.clone(),
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
        Ok(GpuBackend {
            pool: MemoryPool::new(allocator, config.budget_bytes(info.memory_bytes)),
            kernels: KernelConfig::for_limits(&limits),
            ctx,
            info,
        })
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

    /// A 1-D grid of `items` invocations folded into two dimensions when it exceeds the
    /// per-dimension limit; returns the workgroup counts (the kernels get x as `groups_x`).
    fn grid(&self, items: usize) -> [u32; 3] {
        let groups = items
            .div_ceil(self.kernels.elementwise_workgroup as usize)
            .max(1);
        let max = self.kernels.max_workgroups_per_dimension as usize;
        let x = groups.min(max);
        [x as u32, groups.div_ceil(x) as u32, 1]
    }

    fn elementwise(
        &self,
        entry: &'static str,
        a: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        alpha: f32,
        out: &Tensor<Self>,
    ) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let kernel = Kernel::Elementwise {
            workgroup: self.kernels.elementwise_workgroup,
        };
        let pipeline = self.ctx.pipeline(kernel, entry)?;
        let grid = self.grid(out.len());
        let params = ElementwiseParams {
            n: index_u32(entry, out.len())?,
            a_offset: index_u32(entry, a.offset())?,
            b_offset: index_u32(entry, b.map_or(0, |b| b.offset()))?,
            out_offset: index_u32(entry, out.offset())?,
            alpha,
            groups_x: grid[0],
            _pad: [0; 2],
        };
        let mut bindings: Vec<Binding> =
            vec![(1, a.storage().buffer()), (3, out.storage().buffer())];
        if let Some(b) = b {
            bindings.push((2, b.storage().buffer()));
        }
        self.ctx
            .dispatch(&pipeline, bytemuck::bytes_of(&params), &bindings, grid);
        Ok(())
    }

    /// `x` itself, or a copy of it when it lives in `out`'s buffer: the matrix product binds
    /// its inputs read-only, and one buffer cannot be read-only and writable in one dispatch.
    fn apart_from(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<Tensor<Self>> {
        if !x.shares_storage(out) {
            return Ok(x.clone());
        }
        let copy = self.alloc(x.shape(), x.dtype())?;
        self.cast(x, &copy)?;
        Ok(copy)
    }
}

/// True when a matrix stored with rows of `ld` elements, starting at `offset`, with items
/// `stride` apart, can be read as whole vec4s.
fn vec4_aligned(ld: usize, offset: usize, stride: usize, batch: usize) -> bool {
    ld % 4 == 0 && offset % 4 == 0 && (batch <= 1 || stride % 4 == 0)
}

impl Backend for GpuBackend {
    type Storage = GpuStorage;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let bytes = byte_len(shape, dtype);
        let block = self
            .pool
            .allocate(bytes, &format!("a {dtype} tensor of shape {shape:?}"))?;
        let storage = GpuStorage {
            block,
            ctx: self.ctx.clone(),
        };
        Ok(Tensor::from_storage(Arc::new(storage), shape, dtype))
    }

    fn write(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        check::write(dst, src)?;
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

    fn matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        const OP: &str = "matmul";
        spec.check(a, b, bias, out)?;
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return Ok(());
        }
        let a = self.apart_from(a, out)?;
        let b = self.apart_from(b, out)?;
        let bias = bias.map(|t| self.apart_from(t, out)).transpose()?;
        let vec4 = vec4_aligned(spec.lda(), a.offset(), spec.stride_a, spec.batch)
            && vec4_aligned(spec.ldb(), b.offset(), spec.stride_b, spec.batch);
        let tile = self.kernels.matmul_tile(spec.m, spec.n, spec.batch);
        let kernel = Kernel::Matmul {
            tile,
            trans_a: spec.trans_a,
            trans_b: spec.trans_b,
            vec4,
        };
        let pipeline = self.ctx.pipeline(kernel, "matmul")?;
        let groups_x = spec.n.div_ceil(tile.bn as usize);
        let groups_y = spec.m.div_ceil(tile.bm as usize);
        let max = self.kernels.max_workgroups_per_dimension as usize;
        if groups_x > max || groups_y > max {
            return Err(Error::shape(
                OP,
                format!(
                    "{}×{} needs {groups_y}×{groups_x} workgroups, more than the adapter's {max} per dimension",
                    spec.m, spec.n
                ),
            ));
        }
        let bias_buffer = bias
            .as_ref()
            .map_or(&self.ctx.placeholder, |t| t.storage().buffer());
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
            batch_base: 0,
        };
        // Every index a kernel computes must fit its 32-bit arithmetic.
        index_u32(OP, a.offset().saturating_add(spec.a_len()))?;
        index_u32(OP, b.offset().saturating_add(spec.b_len()))?;
        index_u32(OP, out.offset().saturating_add(spec.c_len()))?;
        // Batches beyond the per-dimension limit go in several dispatches.
        for base in (0..spec.batch).step_by(max) {
            params.batch_base = base as u32;
            let items = (spec.batch - base).min(max) as u32;
            self.ctx.dispatch(
                &pipeline,
                bytemuck::bytes_of(&params),
                &[
                    (1, a.storage().buffer()),
                    (2, b.storage().buffer()),
                    (3, bias_buffer),
                    (4, out.storage().buffer()),
                ],
                [groups_x as u32, groups_y as u32, items],
            );
        }
        Ok(())
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        check::elementwise("add", &[a, b], out)?;
        self.elementwise("add", a, Some(b), 0.0, out)
    }

    fn scale(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()> {
        check::elementwise("scale", &[x], out)?;
        self.elementwise("scale", x, None, alpha, out)
    }

    fn cast(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        const OP: &str = "cast";
        check::conversion(OP, x, out)?;
        if out.is_empty() {
            return Ok(());
        }
        let kernel = Kernel::Cast {
            from: x.dtype(),
            to: out.dtype(),
            workgroup: self.kernels.elementwise_workgroup,
        };
        let pipeline = self.ctx.pipeline(kernel, "convert")?;
        // One invocation per output word.
        let words = if out.dtype() == DType::F32 {
            out.len()
        } else {
            out.len().div_ceil(2)
        };
        let grid = self.grid(words);
        let params = CastParams {
            n: index_u32(OP, out.len())?,
            src_offset: index_u32(OP, x.offset())?,
            dst_offset: index_u32(OP, out.offset())?,
            groups_x: grid[0],
        };
        self.ctx.dispatch(
            &pipeline,
            bytemuck::bytes_of(&params),
            &[(1, x.storage().buffer()), (2, out.storage().buffer())],
            grid,
        );
        Ok(())
    }

    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()> {
        check::copy(src, dst)?;
        let size = src.dtype().size_bytes();
        let (from, to, bytes) = (src.offset() * size, dst.offset() * size, src.len() * size);
        if src.shares_storage(dst) || bytes % 4 != 0 {
            // The copy engine needs two buffers and whole words; the cast kernel does not.
            return self.cast(src, dst);
        }
        if bytes > 0 {
            self.ctx.record(|encoder| {
                encoder.copy_buffer_to_buffer(
                    src.storage().buffer(),
                    from as u64,
                    dst.storage().buffer(),
                    to as u64,
                    bytes as u64,
                )
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    fn device_time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        self.ctx.device_time_ms(f)
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
