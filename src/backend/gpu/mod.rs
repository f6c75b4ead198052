//! The wgpu backend: hand-written WGSL kernels recorded into one command encoder.

mod context;
pub mod kernel_config;
pub mod shaders;

use std::sync::Arc;

use context::{Binding, GpuContext, Pipeline};
use kernel_config::KernelConfig;
use shaders::Kernel;

use super::{check, AdamW, AttentionSpec, Backend, DropoutKey, KernelTime, MatmulSpec, Storage};
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
    pre_offset: u32,
    k_split: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MatmulSplitsParams {
    m: u32,
    n: u32,
    slices: u32,
    has_bias: u32,
    c_offset: u32,
    bias_offset: u32,
    groups_x: u32,
    _pad: u32,
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
struct LayerNormParams {
    rows: u32,
    cols: u32,
    eps: f32,
    groups_x: u32,
    x_offset: u32,
    w_offset: u32,
    b_offset: u32,
    y_offset: u32,
    mean_offset: u32,
    rstd_offset: u32,
    dy_offset: u32,
    dx_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct ColumnSumParams {
    rows: u32,
    cols: u32,
    width: u32,
    blocks: u32,
    groups_x: u32,
    dy_offset: u32,
    x_offset: u32,
    mean_offset: u32,
    rstd_offset: u32,
    first: u32,
    count: u32,
    out_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PoolParams {
    batch: u32,
    t: u32,
    d: u32,
    groups_x: u32,
    h_offset: u32,
    mask_offset: u32,
    pooled_offset: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct CrossEntropyParams {
    batch: u32,
    classes: u32,
    smoothing: f32,
    has_weights: u32,
    groups_x: u32,
    scale: f32,
    logits_offset: u32,
    labels_offset: u32,
    weights_offset: u32,
    lse_offset: u32,
    loss_offset: u32,
    hits_offset: u32,
    out_offset: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct OptimParams {
    n: u32,
    groups_x: u32,
    partials_count: u32,
    x_offset: u32,
    g_offset: u32,
    m_offset: u32,
    v_offset: u32,
    out_offset: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    scale: f32,
    max_norm: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DropoutParams {
    n: u32,
    groups_x: u32,
    x_offset: u32,
    out_offset: u32,
    p: f32,
    keep_scale: f32,
    site: u32,
    _pad: u32,
    seed: [u32; 2],
    step: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct AttentionParams {
    batch: u32,
    t: u32,
    heads: u32,
    d: u32,
    groups_x: u32,
    scale: f32,
    p: f32,
    keep_scale: f32,
    seed: [u32; 2],
    step: [u32; 2],
    site: u32,
    qkv_offset: u32,
    mask_offset: u32,
    out_offset: u32,
    lse_offset: u32,
    dout_offset: u32,
    dqkv_offset: u32,
    _pad: [u32; 3],
}

/// A u64 as the (low, high) words WGSL takes.
fn words(x: u64) -> [u32; 2] {
    [x as u32, (x >> 32) as u32]
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
        self.workgroup_grid(items.div_ceil(self.kernels.elementwise_workgroup as usize))
    }

    /// `groups` workgroups, folded into two dimensions like [`GpuBackend::grid`].
    fn workgroup_grid(&self, groups: usize) -> [u32; 3] {
        let groups = groups.max(1);
        let max = self.kernels.max_workgroups_per_dimension as usize;
        let x = groups.min(max);
        [x as u32, groups.div_ceil(x) as u32, 1]
    }

    /// Compiles (once) and records one dispatch of `entry` with `params` and tensors bound
    /// at the given binding indices.
    fn run(
        &self,
        kernel: Kernel,
        entry: &'static str,
        params: &[u8],
        tensors: &[(u32, &Tensor<Self>)],
        grid: [u32; 3],
    ) -> Result<()> {
        let pipeline = self.ctx.pipeline(kernel, entry)?;
        let bindings: Vec<Binding> = tensors
            .iter()
            .map(|(binding, t)| (*binding, t.storage().buffer()))
            .collect();
        self.ctx.dispatch(&pipeline, params, &bindings, grid);
        Ok(())
    }

    fn optim_kernel(&self) -> Kernel {
        Kernel::Optim {
            workgroup: self.kernels.elementwise_workgroup,
            items: kernel_config::REDUCE_ITEMS,
        }
    }

    /// A whole-arena reduction of `x` into `out[0]`: per-workgroup partials by `partials_entry`
    /// (which may also scale `x`), then `finish_entry` over them in order.
    fn reduce(
        &self,
        op: &'static str,
        x: &Tensor<Self>,
        partials_entry: &'static str,
        finish_entry: &'static str,
        scale: f32,
        out: &Tensor<Self>,
    ) -> Result<()> {
        let per_group = (self.kernels.elementwise_workgroup * kernel_config::REDUCE_ITEMS) as usize;
        let groups = x.len().div_ceil(per_group).max(1);
        let partials = self.alloc(&[groups], DType::F32)?;
        let grid = self.workgroup_grid(groups);
        let params = OptimParams {
            n: index_u32(op, x.len())?,
            groups_x: grid[0],
            partials_count: groups as u32,
            x_offset: index_u32(op, x.offset())?,
            out_offset: index_u32(op, out.offset())?,
            scale,
            ..OptimParams::default()
        };
        let bytes = bytemuck::bytes_of(&params);
        self.run(
            self.optim_kernel(),
            partials_entry,
            bytes,
            &[(1, x), (5, &partials)],
            grid,
        )?;
        self.run(
            self.optim_kernel(),
            finish_entry,
            bytes,
            &[(5, &partials), (6, out)],
            [1, 1, 1],
        )
    }

    fn column_sums_kernel(&self) -> Kernel {
        Kernel::ColumnSums {
            workgroup: self.kernels.elementwise_workgroup,
            row_block: kernel_config::COLUMN_ROW_BLOCK,
        }
    }

    /// The first pass of a column sum: `entry` writes one row of partial sums per block of
    /// rows into a new `[blocks, base.width]` matrix. Returns it, and `base` with the block
    /// count filled in, for [`GpuBackend::finish_columns`].
    fn column_partials(
        &self,
        entry: &'static str,
        base: ColumnSumParams,
        inputs: &[(u32, &Tensor<Self>)],
    ) -> Result<(Tensor<Self>, ColumnSumParams)> {
        let blocks = (base.rows as usize)
            .div_ceil(kernel_config::COLUMN_ROW_BLOCK as usize)
            .max(1);
        let partials = self.alloc(&[blocks, base.width as usize], DType::F32)?;
        let base = ColumnSumParams {
            blocks: blocks as u32,
            ..base
        };
        let grid = self.grid(blocks * base.cols as usize);
        let params = ColumnSumParams {
            groups_x: grid[0],
            ..base
        };
        let mut bindings = inputs.to_vec();
        bindings.push((5, &partials));
        self.run(
            self.column_sums_kernel(),
            entry,
            bytemuck::bytes_of(&params),
            &bindings,
            grid,
        )?;
        Ok((partials, base))
    }

    /// `out[j] = Σ_blk partials[blk, first + j]` for `j < out.len()`, blocks in order.
    fn finish_columns(
        &self,
        partials: &Tensor<Self>,
        base: ColumnSumParams,
        first: usize,
        out: &Tensor<Self>,
    ) -> Result<()> {
        let grid = self.grid(out.len());
        let params = ColumnSumParams {
            first: first as u32,
            count: index_u32("column sums", out.len())?,
            out_offset: index_u32("column sums", out.offset())?,
            groups_x: grid[0],
            ..base
        };
        self.run(
            self.column_sums_kernel(),
            "finish_columns",
            bytemuck::bytes_of(&params),
            &[(5, partials), (6, out)],
            grid,
        )
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

    /// `x` itself, or a copy of it when it lives in an output's buffer: the matrix product
    /// binds its inputs read-only, and one buffer cannot be read-only and writable in one
    /// dispatch.
    fn apart_from(&self, x: &Tensor<Self>, outputs: &[&Tensor<Self>]) -> Result<Tensor<Self>> {
        if !outputs.iter().any(|out| x.shares_storage(out)) {
            return Ok(x.clone());
        }
        let copy = self.alloc(x.shape(), x.dtype())?;
        self.cast(x, &copy)?;
        Ok(copy)
    }
}

impl GpuBackend {
    /// One dispatch of a pool.wgsl entry over `items` invocations.
    fn pool(
        &self,
        entry: &'static str,
        (batch, t, d): (usize, usize, usize),
        h: &Tensor<Self>,
        mask: &Tensor<Self>,
        pooled: &Tensor<Self>,
        items: usize,
    ) -> Result<()> {
        let grid = self.grid(items);
        let params = PoolParams {
            batch: index_u32(entry, batch)?,
            t: index_u32(entry, t)?,
            d: index_u32(entry, d)?,
            groups_x: grid[0],
            h_offset: index_u32(entry, h.offset())?,
            mask_offset: index_u32(entry, mask.offset())?,
            pooled_offset: index_u32(entry, pooled.offset())?,
            _pad: 0,
        };
        let kernel = Kernel::Pool {
            workgroup: self.kernels.elementwise_workgroup,
        };
        self.run(
            kernel,
            entry,
            bytemuck::bytes_of(&params),
            &[(1, h), (2, mask), (3, pooled)],
            grid,
        )
    }

    /// Records a checked matrix product; with `pre`, the GELU epilogue writes the
    /// pre-activation there and GELU of it to `out`.
    fn record_matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        pre: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        const OP: &str = "matmul";
        if spec.m == 0 || spec.n == 0 || spec.batch == 0 {
            return Ok(());
        }
        let outputs: Vec<&Tensor<Self>> = std::iter::once(out).chain(pre).collect();
        let a = self.apart_from(a, &outputs)?;
        let b = self.apart_from(b, &outputs)?;
        let bias = bias.map(|t| self.apart_from(t, &outputs)).transpose()?;
        let vec4 = vec4_aligned(spec.lda(), a.offset(), spec.stride_a, spec.batch)
            && vec4_aligned(spec.ldb(), b.offset(), spec.stride_b, spec.batch);
        let tile = self.kernels.matmul_tile(spec.m, spec.n, spec.batch);
        let kernel = Kernel::Matmul {
            tile,
            trans_a: spec.trans_a,
            trans_b: spec.trans_b,
            vec4,
            gelu: pre.is_some(),
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
            pre_offset: index_u32(OP, pre.map_or(0, |t| t.offset()))?,
            k_split: 0,
            _pad: [0; 2],
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
                return self.record_split_matmul(
                    &pipeline,
                    params,
                    [&a, &b],
                    bias.as_ref(),
                    out,
                    [
                        groups_x as u32,
                        groups_y as u32,
                        spec.k.div_ceil(k_split) as u32,
                    ],
                );
            }
        }
        // Batches beyond the per-dimension limit go in several dispatches.
        for base in (0..spec.batch).step_by(max) {
            params.batch_base = base as u32;
            let items = (spec.batch - base).min(max) as u32;
            let mut bindings = vec![
                (1, a.storage().buffer()),
                (2, b.storage().buffer()),
                (3, bias_buffer),
                (4, out.storage().buffer()),
            ];
            if let Some(pre) = pre {
                bindings.push((5, pre.storage().buffer()));
            }
            self.ctx.dispatch(
                &pipeline,
                bytemuck::bytes_of(&params),
                &bindings,
                [groups_x as u32, groups_y as u32, items],
            );
        }
        Ok(())
    }

    /// One product split over K (`params.k_split`): each of the grid's z slices stores its
    /// partial product into a scratch tensor, then `sum_slices` adds them in slice order, and
    /// the bias, into `out`.
    fn record_split_matmul(
        &self,
        pipeline: &Pipeline,
        mut params: MatmulParams,
        [a, b]: [&Tensor<Self>; 2],
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        grid: [u32; 3],
    ) -> Result<()> {
        const OP: &str = "matmul";
        let len = params.m as usize * params.n as usize;
        let slices = grid[2];
        let partials = self.alloc(&[slices as usize * len], DType::F32)?;
        index_u32(OP, partials.offset().saturating_add(slices as usize * len))?;
        let (has_bias, bias_offset) = (params.has_bias, params.bias_offset);
        params.c_offset = index_u32(OP, partials.offset())?;
        params.has_bias = 0;
        self.ctx.dispatch(
            pipeline,
            bytemuck::bytes_of(&params),
            &[
                (1, a.storage().buffer()),
                (2, b.storage().buffer()),
                (3, &self.ctx.placeholder),
                (4, partials.storage().buffer()),
            ],
            grid,
        );
        let sum_grid = self.grid(len);
        let sum = MatmulSplitsParams {
            m: params.m,
            n: params.n,
            slices,
            has_bias,
            c_offset: index_u32(OP, out.offset())?,
            bias_offset,
            groups_x: sum_grid[0],
            _pad: 0,
        };
        let sum_pipeline = self.ctx.pipeline(
            Kernel::MatmulSplits {
                workgroup: self.kernels.elementwise_workgroup,
            },
            "sum_slices",
        )?;
        self.ctx.dispatch(
            &sum_pipeline,
            bytemuck::bytes_of(&sum),
            &[
                (1, partials.storage().buffer()),
                (
                    2,
                    bias.map_or(&self.ctx.placeholder, |t| t.storage().buffer()),
                ),
                (3, out.storage().buffer()),
            ],
            sum_grid,
        );
        Ok(())
    }

    /// The kernel, the parameters every attention pass shares, and the grid of one workgroup
    /// per block of queries (or keys) of each head of each clip.
    fn attention_params(
        &self,
        op: &'static str,
        spec: &AttentionSpec,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<(Kernel, AttentionParams, [u32; 3])> {
        let variant = kernel_config::attention_variant(
            spec.head_dim,
            spec.seq,
            self.kernels.workgroup_storage_bytes,
        );
        let blocks = spec.seq.div_ceil(variant.bq as usize);
        let grid = self.workgroup_grid(spec.batch * spec.heads * blocks);
        let params = AttentionParams {
            batch: index_u32(op, spec.batch)?,
            t: index_u32(op, spec.seq)?,
            heads: index_u32(op, spec.heads)?,
            d: index_u32(op, spec.head_dim)?,
            groups_x: grid[0],
            scale: 1.0 / (spec.head_dim as f32).sqrt(),
            p: spec.dropout,
            keep_scale: crate::rng::keep_scale(spec.dropout),
            seed: words(spec.key.seed),
            step: words(spec.key.step),
            site: spec.key.site,
            qkv_offset: index_u32(op, qkv.offset())?,
            mask_offset: index_u32(op, key_mask.offset())?,
            out_offset: index_u32(op, out.offset())?,
            lse_offset: index_u32(op, lse.offset())?,
            ..AttentionParams::default()
        };
        Ok((Kernel::Attention(variant), params, grid))
    }

    /// The kernel, the parameters both cross-entropy passes share, and the grid of one
    /// workgroup per row.
    fn xent_params(
        &self,
        op: &'static str,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
    ) -> Result<(Kernel, CrossEntropyParams, [u32; 3])> {
        let (batch, classes) = (labels.len(), logits.len() / labels.len());
        let grid = self.workgroup_grid(batch);
        let params = CrossEntropyParams {
            batch: index_u32(op, batch)?,
            classes: index_u32(op, classes)?,
            smoothing: label_smoothing,
            has_weights: weights.is_some() as u32,
            groups_x: grid[0],
            logits_offset: index_u32(op, logits.offset())?,
            labels_offset: index_u32(op, labels.offset())?,
            weights_offset: index_u32(op, weights.map_or(0, |w| w.offset()))?,
            lse_offset: index_u32(op, lse.offset())?,
            ..CrossEntropyParams::default()
        };
        let kernel = Kernel::CrossEntropy {
            workgroup: self.kernels.elementwise_workgroup,
        };
        Ok((kernel, params, grid))
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
        spec.check(a, b, bias, out)?;
        self.record_matmul(a, b, bias, None, out, spec)
    }

    fn matmul_bias_gelu(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()> {
        check::matmul_bias_gelu(a, b, bias, spec, pre, out)?;
        self.record_matmul(a, b, Some(bias), Some(pre), out, spec)
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
        // The cast kernel, not the copy engine: on an H100 copy_buffer_to_buffer moved 16 MiB
        // at 762 GB/s, while one-word-per-invocation kernels ran at 1250 GB/s and more.
        self.cast(src, dst)
    }

    fn gelu(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        check::elementwise("gelu", &[x], out)?;
        self.elementwise("gelu_fwd", x, None, 0.0, out)
    }

    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &Tensor<Self>) -> Result<()> {
        check::elementwise("gelu_backward", &[x, dy], dx)?;
        self.elementwise("gelu_bwd", x, Some(dy), 0.0, dx)
    }

    fn bias_grad(&self, dy: &Tensor<Self>, db: &Tensor<Self>) -> Result<()> {
        const OP: &str = "bias_grad";
        let cols = db.len();
        let rows = check::rows(OP, dy, cols)?;
        check::f32_lens(OP, &[(dy, dy.len()), (db, cols)])?;
        check::outputs_apart(OP, &[dy], &[db])?;
        let base = ColumnSumParams {
            rows: index_u32(OP, rows)?,
            cols: cols as u32,
            width: cols as u32,
            dy_offset: index_u32(OP, dy.offset())?,
            ..ColumnSumParams::default()
        };
        let (partials, base) = self.column_partials("bias_partials", base, &[(1, dy)])?;
        self.finish_columns(&partials, base, 0, db)
    }

    fn layernorm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
        y: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "layernorm";
        let rows = check::layernorm(x, w, b, y, mean, rstd)?;
        let grid = self.workgroup_grid(rows);
        let params = LayerNormParams {
            rows: index_u32(OP, rows)?,
            cols: index_u32(OP, w.len())?,
            eps,
            groups_x: grid[0],
            x_offset: index_u32(OP, x.offset())?,
            w_offset: index_u32(OP, w.offset())?,
            b_offset: index_u32(OP, b.offset())?,
            y_offset: index_u32(OP, y.offset())?,
            mean_offset: index_u32(OP, mean.offset())?,
            rstd_offset: index_u32(OP, rstd.offset())?,
            dy_offset: 0,
            dx_offset: 0,
        };
        let kernel = Kernel::LayerNorm {
            workgroup: self.kernels.elementwise_workgroup,
        };
        self.run(
            kernel,
            "layernorm_fwd",
            bytemuck::bytes_of(&params),
            &[(1, x), (2, w), (3, b), (4, y), (5, mean), (6, rstd)],
            grid,
        )
    }

    fn layernorm_backward(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dy: &Tensor<Self>,
        dx: &Tensor<Self>,
        dw: &Tensor<Self>,
        db: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "layernorm_backward";
        let rows = check::layernorm_backward(x, w, mean, rstd, dy, dx, dw, db)?;
        let cols = w.len();
        let grid = self.workgroup_grid(rows);
        let params = LayerNormParams {
            rows: index_u32(OP, rows)?,
            cols: index_u32(OP, cols)?,
            eps: 0.0,
            groups_x: grid[0],
            x_offset: index_u32(OP, x.offset())?,
            w_offset: index_u32(OP, w.offset())?,
            b_offset: 0,
            y_offset: 0,
            mean_offset: index_u32(OP, mean.offset())?,
            rstd_offset: index_u32(OP, rstd.offset())?,
            dy_offset: index_u32(OP, dy.offset())?,
            dx_offset: index_u32(OP, dx.offset())?,
        };
        let kernel = Kernel::LayerNorm {
            workgroup: self.kernels.elementwise_workgroup,
        };
        self.run(
            kernel,
            "layernorm_bwd",
            bytemuck::bytes_of(&params),
            &[(1, x), (2, w), (4, dx), (5, mean), (6, rstd), (7, dy)],
            grid,
        )?;
        // dw and db: column sums of dy·xhat and dy, side by side in one partials matrix.
        let base = ColumnSumParams {
            rows: rows as u32,
            cols: cols as u32,
            width: 2 * cols as u32,
            dy_offset: params.dy_offset,
            x_offset: params.x_offset,
            mean_offset: params.mean_offset,
            rstd_offset: params.rstd_offset,
            ..ColumnSumParams::default()
        };
        let inputs = [(1, dy), (2, x), (3, mean), (4, rstd)];
        let (partials, base) = self.column_partials("layernorm_partials", base, &inputs)?;
        self.finish_columns(&partials, base, 0, dw)?;
        self.finish_columns(&partials, base, cols, db)
    }

    fn mean_pool(&self, h: &Tensor<Self>, mask: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        const OP: &str = "mean_pool";
        let (batch, t, d) = check::mean_pool(OP, h, mask, out)?;
        check::outputs_apart(OP, &[h, mask], &[out])?;
        self.pool("mean_pool_fwd", (batch, t, d), h, mask, out, batch * d)
    }

    fn mean_pool_backward(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "mean_pool_backward";
        let (batch, t, d) = check::mean_pool(OP, dh, mask, dout)?;
        check::outputs_apart(OP, &[dout, mask], &[dh])?;
        self.pool(
            "mean_pool_bwd",
            (batch, t, d),
            dh,
            mask,
            dout,
            batch * t * d,
        )
    }

    fn cross_entropy(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        loss: &Tensor<Self>,
        hits: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy";
        let (batch, _) = check::cross_entropy(OP, logits, labels, weights, label_smoothing)?;
        check::f32_lens(OP, &[(loss, 1), (hits, 2), (lse, batch)])?;
        let mut inputs = vec![logits, labels];
        inputs.extend(weights);
        check::outputs_apart(OP, &inputs, &[loss, hits, lse])?;
        let rows = self.alloc(&[batch, 3], DType::F32)?;
        let (kernel, params, grid) =
            self.xent_params(OP, logits, labels, weights, label_smoothing, lse)?;
        let params = CrossEntropyParams {
            loss_offset: index_u32(OP, loss.offset())?,
            hits_offset: index_u32(OP, hits.offset())?,
            ..params
        };
        let bytes = bytemuck::bytes_of(&params);
        let weights = weights.unwrap_or(labels);
        self.run(
            kernel,
            "xent_rows",
            bytes,
            &[(1, logits), (2, labels), (3, weights), (4, lse), (5, &rows)],
            grid,
        )?;
        self.run(
            kernel,
            "xent_finish",
            bytes,
            &[(5, &rows), (6, loss), (7, hits)],
            [1, 1, 1],
        )
    }

    fn cross_entropy_backward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
        scale: f32,
        dlogits: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let (batch, classes) = check::cross_entropy(OP, logits, labels, weights, label_smoothing)?;
        check::cross_entropy_backward_outputs(
            OP,
            logits,
            labels,
            weights,
            lse,
            dlogits,
            batch * classes,
        )?;
        let mut inputs = vec![logits, labels, lse];
        inputs.extend(weights);
        let (kernel, params, grid) =
            self.xent_params(OP, logits, labels, weights, label_smoothing, lse)?;
        let params = CrossEntropyParams {
            scale,
            out_offset: index_u32(OP, dlogits.offset())?,
            ..params
        };
        let weights = weights.unwrap_or(labels);
        self.run(
            kernel,
            "xent_bwd",
            bytemuck::bytes_of(&params),
            &[
                (1, logits),
                (2, labels),
                (3, weights),
                (4, lse),
                (8, dlogits),
            ],
            grid,
        )
    }

    fn adamw(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()> {
        const OP: &str = "adamw";
        check::optimizer(OP, &[params, grads, m, v])?;
        check::optimizer_step(step)?;
        let (decay, step_size, bc2_sqrt) = hp.step_scalars(step);
        let grid = self.grid(params.len());
        let p = OptimParams {
            n: index_u32(OP, params.len())?,
            groups_x: grid[0],
            x_offset: index_u32(OP, params.offset())?,
            g_offset: index_u32(OP, grads.offset())?,
            m_offset: index_u32(OP, m.offset())?,
            v_offset: index_u32(OP, v.offset())?,
            beta1: hp.beta1,
            beta2: hp.beta2,
            eps: hp.eps,
            decay,
            step_size,
            bc2_sqrt,
            ..OptimParams::default()
        };
        self.run(
            self.optim_kernel(),
            "adamw",
            bytemuck::bytes_of(&p),
            &[(1, params), (2, grads), (3, m), (4, v)],
            grid,
        )
    }

    fn grad_norm(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()> {
        check::f32_lens("grad_norm", &[(grads, grads.len()), (norm, 1)])?;
        check::outputs_apart("grad_norm", &[grads], &[norm])?;
        self.reduce(
            "grad_norm",
            grads,
            "sumsq_partials",
            "finish_norm",
            1.0,
            norm,
        )
    }

    fn clip_grads(&self, grads: &Tensor<Self>, norm: &Tensor<Self>, max_norm: f32) -> Result<()> {
        const OP: &str = "clip_grads";
        check::f32_lens(OP, &[(grads, grads.len()), (norm, 1)])?;
        check::outputs_apart(OP, &[norm], &[grads])?;
        let grid = self.grid(grads.len());
        let p = OptimParams {
            n: index_u32(OP, grads.len())?,
            groups_x: grid[0],
            x_offset: index_u32(OP, grads.offset())?,
            g_offset: index_u32(OP, norm.offset())?,
            max_norm,
            ..OptimParams::default()
        };
        self.run(
            self.optim_kernel(),
            "clip",
            bytemuck::bytes_of(&p),
            &[(1, grads), (2, norm)],
            grid,
        )
    }

    fn unscale_check(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()> {
        check::f32_lens("unscale_check", &[(grads, grads.len()), (found_inf, 1)])?;
        check::outputs_apart("unscale_check", &[], &[grads, found_inf])?;
        self.reduce(
            "unscale_check",
            grads,
            "nonfinite_partials",
            "finish_any",
            inv_scale,
            found_inf,
        )
    }

    fn dropout(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "dropout";
        check::dropout_p(p)?;
        check::elementwise(OP, &[x], out)?;
        // One invocation per Philox call, all the calls of every tile the elements touch.
        let tiles = out.len().div_ceil(crate::rng::TILE as usize);
        let calls = tiles * crate::rng::CALLS_PER_TILE as usize;
        let grid = self.grid(calls);
        let params = DropoutParams {
            n: index_u32(OP, out.len())?,
            groups_x: grid[0],
            x_offset: index_u32(OP, x.offset())?,
            out_offset: index_u32(OP, out.offset())?,
            p,
            keep_scale: crate::rng::keep_scale(p),
            site: key.site,
            _pad: 0,
            seed: words(key.seed),
            step: words(key.step),
        };
        let kernel = Kernel::Dropout {
            workgroup: self.kernels.elementwise_workgroup,
        };
        self.run(
            kernel,
            "dropout",
            bytemuck::bytes_of(&params),
            &[(1, x), (2, out)],
            grid,
        )
    }

    fn attention(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "attention";
        check::attention_forward(spec, qkv, key_mask, out, lse)?;
        let (kernel, params, grid) = self.attention_params(OP, spec, qkv, key_mask, out, lse)?;
        self.run(
            kernel,
            "attention_fwd",
            bytemuck::bytes_of(&params),
            // The shared tile loader also reads dout in the backward pass; out stands in.
            &[(1, qkv), (2, key_mask), (3, out), (4, lse), (5, out)],
            grid,
        )
    }

    fn attention_backward(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        dout: &Tensor<Self>,
        dqkv: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        let AttentionSpec {
            batch,
            seq: t,
            heads,
            ..
        } = *spec;
        check::attention_backward(spec, qkv, key_mask, out, lse, dout, dqkv)?;
        let (kernel, params, grid) = self.attention_params(OP, spec, qkv, key_mask, out, lse)?;
        let params = AttentionParams {
            dout_offset: index_u32(OP, dout.offset())?,
            dqkv_offset: index_u32(OP, dqkv.offset())?,
            ..params
        };
        let bytes = bytemuck::bytes_of(&params);
        let delta = self.alloc(&[batch, heads, t], DType::F32)?;
        self.run(
            kernel,
            "attention_delta",
            bytes,
            &[(3, out), (5, dout), (6, &delta)],
            grid,
        )?;
        let bindings = [
            (1, qkv),
            (2, key_mask),
            (4, lse),
            (5, dout),
            (6, &delta),
            (7, dqkv),
        ];
        self.run(kernel, "attention_dq", bytes, &bindings, grid)?;
        self.run(kernel, "attention_dkv", bytes, &bindings, grid)
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
