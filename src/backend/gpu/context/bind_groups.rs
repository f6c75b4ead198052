//! Bind groups and uniform buffers made once and reused (DESIGN.md, Layers: "Bind groups and
//! uniform data for a fixed (batch, seq_len) are built once and reused").
//!
//! A dispatch is known by its pipeline, its params bytes and the buffers it binds. The tensors
//! of a planned step keep their buffers, and the pool hands transient scratch back in the
//! same order step after step, so a step recorded a second time finds every dispatch here;
//! only params that change with the step (a dropout step, AdamW's bias corrections) make new
//! ones. Buffers are identified by wgpu's handle identity, which is never reused.

use std::collections::{HashMap, HashSet};

use wgpu::util::DeviceExt;

use super::{Binding, Pipeline};

/// Bind groups kept at most; past it the least recently used half is dropped, so that a run
/// over many shapes cannot grow the cache without bound. A training step of the default
/// model uses a few hundred.
const MAX_BIND_GROUPS: usize = 4096;

/// What makes two dispatches' bind groups the same.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    pipeline: wgpu::ComputePipeline,
    params: Box<[u8]>,
    buffers: Vec<(u32, wgpu::Buffer)>,
}

struct Cached {
    group: wgpu::BindGroup,
    /// The dispatch count when this group was last used.
    last_used: u64,
}

/// A uniform buffer holding one params content, and how many cached groups bind it.
struct Uniform {
    buffer: wgpu::Buffer,
    users: usize,
}

/// The cache (the context keeps it behind a lock). Its entries hold clones of the buffers they
/// bind, which keep those buffers alive: every block the pool really frees comes to
/// [`BindGroups::forget`] first, through the GPU allocator's `free`.
#[derive(Default)]
pub(super) struct BindGroups {
    groups: HashMap<Key, Cached>,
    uniforms: HashMap<Box<[u8]>, Uniform>,
    /// Dispatches looked up so far.
    clock: u64,
}

impl BindGroups {
    /// The bind group of a dispatch of `pipeline` with `params` as its uniform block at
    /// binding 0 and `buffers` at theirs, made on first use.
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        pipeline: &Pipeline,
        params: &[u8],
        buffers: &[Binding<'_>],
    ) -> wgpu::BindGroup {
        self.clock += 1;
        let key = Key {
            pipeline: pipeline.raw.clone(),
            params: params.into(),
            buffers: buffers.iter().map(|&(i, b)| (i, b.clone())).collect(),
        };
        if let Some(cached) = self.groups.get_mut(&key) {
            cached.last_used = self.clock;
            return cached.group.clone();
        }
        if self.groups.len() >= MAX_BIND_GROUPS {
            self.drop_least_recent_half();
        }
        let uniform = self
            .uniforms
            .entry(key.params.clone())
            .or_insert_with(|| Uniform {
                buffer: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: params,
                    usage: wgpu::BufferUsages::UNIFORM,
                }),
                users: 0,
            });
        uniform.users += 1;
        let entries: Vec<wgpu::BindGroupEntry> = std::iter::once((0, &uniform.buffer))
            .chain(buffers.iter().copied())
            .map(|(binding, buffer)| wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            })
            .collect();
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.raw.get_bind_group_layout(0),
            entries: &entries,
        });
        self.groups.insert(
            key,
            Cached {
                group: group.clone(),
                last_used: self.clock,
            },
        );
        group
    }

    /// Drops every group that binds one of `buffers`, so that freeing them frees their memory.
    #[allow(
        clippy::mutable_key_type,
        reason = "wgpu hashes a handle by its id, which never changes"
    )]
    pub fn forget(&mut self, buffers: &[wgpu::Buffer]) {
        let doomed: HashSet<&wgpu::Buffer> = buffers.iter().collect();
        self.remove_where(|key, _| key.buffers.iter().any(|(_, b)| doomed.contains(b)));
    }

    fn drop_least_recent_half(&mut self) {
        let mut ages: Vec<u64> = self.groups.values().map(|c| c.last_used).collect();
        let middle = ages.len() / 2;
        let cutoff = *ages.select_nth_unstable(middle).1;
        self.remove_where(|_, cached| cached.last_used <= cutoff);
    }

    /// Removes the groups `doomed` picks, and the uniform buffers no group binds any more.
    fn remove_where(&mut self, doomed: impl Fn(&Key, &Cached) -> bool) {
        let uniforms = &mut self.uniforms;
        self.groups.retain(|key, cached| {
            if !doomed(key, cached) {
                return true;
            }
            if let Some(uniform) = uniforms.get_mut(&key.params) {
                uniform.users -= 1;
                if uniform.users == 0 {
                    uniforms.remove(&key.params);
                }
            }
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_BIND_GROUPS;
    use crate::backend::gpu::{test_gpu as gpu, GpuBackend};
    use crate::backend::{AttentionSpec, Backend, MatmulSpec};
    use crate::dtype::DType;
    use crate::error::Result;
    use crate::tensor::{HostTensor, Tensor};

    /// Bind groups held: nothing is freed in these tests until they say so, so this grows
    /// exactly when a dispatch makes one.
    fn cached(b: &GpuBackend) -> usize {
        super::super::lock(&b.ctx.bind_groups).groups.len()
    }

    fn filled(b: &GpuBackend, shape: &[usize], value: f32) -> Result<Tensor<GpuBackend>> {
        b.upload(&HostTensor::filled(shape, DType::F32, value))
    }

    /// Ops whose launchers take scratch tensors from the pool for each call (split-K
    /// partials, column sums, a norm's partials, attention's delta, cross-entropy's rows):
    /// recorded again, they find the same buffers, so every dispatch finds its bind group.
    #[test]
    fn recording_the_same_ops_again_makes_no_bind_group() -> Result<()> {
        let b = gpu();
        let (rows, cols, k) = (32, 32, 1024);
        let a = filled(&b, &[rows, k], 0.5)?;
        let w = filled(&b, &[k, cols], 0.25)?;
        let x = b.alloc(&[rows, cols], DType::F32)?;
        let (ones, zeros) = (filled(&b, &[cols], 1.0)?, filled(&b, &[cols], 0.0)?);
        let (y, dx) = (
            b.alloc(&[rows, cols], DType::F32)?,
            b.alloc(&[rows, cols], DType::F32)?,
        );
        let (mean, rstd) = (b.alloc(&[rows], DType::F32)?, b.alloc(&[rows], DType::F32)?);
        let (dw, db) = (b.alloc(&[cols], DType::F32)?, b.alloc(&[cols], DType::F32)?);
        let norm = b.alloc(&[1], DType::F32)?;
        let spec = AttentionSpec::new(2, 8, 2, 8);
        let qkv = filled(&b, &[2, 8, 3 * spec.d_model()], 0.1)?;
        let mask = filled(&b, &[2, 8], 1.0)?;
        let (out, dout) = (
            b.alloc(&[2, 8, spec.d_model()], DType::F32)?,
            filled(&b, &[2, 8, spec.d_model()], 0.1)?,
        );
        let lse = b.alloc(&[2, 2, 8], DType::F32)?;
        let dqkv = b.alloc(qkv.shape(), DType::F32)?;
        let labels = filled(&b, &[rows], 0.0)?;
        let (loss, hits, xent_lse) = (
            b.alloc(&[1], DType::F32)?,
            b.alloc(&[2], DType::F32)?,
            b.alloc(&[rows], DType::F32)?,
        );
        let record = || -> Result<()> {
            b.matmul(&a, &w, Some(&ones), &x, &MatmulSpec::new(rows, cols, k))?;
            b.layernorm(&x, &ones, &zeros, 1e-5, &y, &mean, &rstd)?;
            b.layernorm_backward(&x, &ones, &mean, &rstd, &y, &dx, &dw, &db)?;
            b.grad_norm(&dx, &norm)?;
            b.attention(&qkv, &mask, &spec, &out, &lse)?;
            b.attention_backward(&qkv, &mask, &spec, &out, &lse, &dout, &dqkv)?;
            b.cross_entropy(&y, &labels, None, 0.0, &loss, &hits, &xent_lse)
        };
        record()?;
        b.synchronize()?;
        let first = cached(&b);
        record()?;
        b.synchronize()?;
        assert!(first > 0);
        assert_eq!(
            cached(&b),
            first,
            "the second recording made new bind groups"
        );
        Ok(())
    }

    /// A bind group keeps the buffers it binds alive: emptying the pool's cache must drop the
    /// cached groups that bind its blocks, or their memory would stay taken.
    #[test]
    fn empty_cache_frees_buffers_that_cached_bind_groups_bind() -> Result<()> {
        let b = gpu();
        let device_bytes = || {
            b.ctx
                .device
                .generate_allocator_report()
                .map(|r| r.total_allocated_bytes)
        };
        let n = 1 << 20;
        let x = filled(&b, &[n], 1.0)?;
        let y = b.alloc(&[n], DType::F32)?;
        b.scale(&x, 2.0, &y)?;
        b.synchronize()?;
        let held = cached(&b);
        assert!(held > 0);
        let before = device_bytes();
        drop((x, y));
        b.empty_cache();
        b.synchronize()?;
        assert_eq!(b.memory_stats().reserved_bytes, 0);
        // Where the backend reports its device memory (Vulkan, DX12), both buffers left it.
        if let (Some(before), Some(after)) = (before, device_bytes()) {
            assert!(
                after + 2 * 4 * n as u64 <= before,
                "device memory {before} -> {after} bytes"
            );
        }
        assert!(
            cached(&b) < held,
            "the groups that bound the freed buffers are gone"
        );
        Ok(())
    }

    #[test]
    fn the_cache_stays_within_its_bound() -> Result<()> {
        let b = gpu();
        let x = filled(&b, &[16], 1.0)?;
        let out = b.alloc(&[16], DType::F32)?;
        for i in 0..MAX_BIND_GROUPS + 10 {
            b.scale(&x, i as f32, &out)?; // a new params block every time
        }
        b.synchronize()?;
        {
            let cache = super::super::lock(&b.ctx.bind_groups);
            assert!(cache.groups.len() <= MAX_BIND_GROUPS);
            assert!(
                cache.uniforms.len() <= cache.groups.len(),
                "uniform buffers go with the groups that bound them"
            );
        }
        let last = (MAX_BIND_GROUPS + 9) as f32;
        assert_eq!(out.to_f32_vec()?, vec![last; 16]);
        Ok(())
    }
}
