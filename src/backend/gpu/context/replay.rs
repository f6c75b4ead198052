//! Dispatches captured once and encoded again ([`crate::backend::Backend::capture`]).
//!
//! wgpu command buffers cannot be submitted twice, so a replay keeps what each captured
//! dispatch bound (its pipeline, its bind group, its workgroup counts) and encodes that list
//! again into the current compute pass: the op's checks, variant choice, pool allocations,
//! params serialisation and bind group lookup are all skipped. The bind groups bind the very
//! buffers the captured ops bound, so a replay reads and writes where they did; the scratch
//! the ops took from the pool is kept with the replay, so that no other tensor is handed those
//! buffers while a replay may still write them.

use std::sync::Arc;
use std::thread::ThreadId;

/// One captured dispatch.
struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    workgroups: [u32; 3],
}

/// Dispatches to encode again, in the order they were captured.
pub struct Replay {
    dispatches: Vec<Dispatch>,
    /// Pool blocks that the captured ops allocated (and meant to drop): held so that the pool
    /// cannot give them to another tensor.
    _scratch: Vec<Arc<dyn Send + Sync>>,
}

impl Replay {
    /// Dispatches a replay encodes.
    pub fn dispatches(&self) -> usize {
        self.dispatches.len()
    }
}

/// What the thread that began a capture has recorded since. Other threads go on recording
/// into the same encoder; their work is not captured.
pub(super) struct Capture {
    thread: ThreadId,
    dispatches: Vec<Dispatch>,
    scratch: Vec<Arc<dyn Send + Sync>>,
    /// False once the thread recorded something other than a dispatch (a copy, a readback):
    /// a replay would leave it out, so none is made.
    replayable: bool,
}

impl Capture {
    pub fn new() -> Capture {
        Capture {
            thread: std::thread::current().id(),
            dispatches: Vec::new(),
            scratch: Vec::new(),
            replayable: true,
        }
    }

    /// Whether this capture is the calling thread's.
    pub fn is_mine(&self) -> bool {
        self.thread == std::thread::current().id()
    }

    pub fn push(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        wg: [u32; 3],
    ) {
        self.dispatches.push(Dispatch {
            pipeline: pipeline.clone(),
            group: group.clone(),
            workgroups: wg,
        });
    }

    pub fn keep(&mut self, block: Arc<dyn Send + Sync>) {
        self.scratch.push(block);
    }

    pub fn not_replayable(&mut self) {
        self.replayable = false;
    }

    /// The replay, where everything captured was a dispatch.
    pub fn finish(self) -> Option<Replay> {
        self.replayable.then_some(Replay {
            dispatches: self.dispatches,
            _scratch: self.scratch,
        })
    }
}

/// Encodes `replay`'s dispatches into `pass`.
pub(super) fn encode(pass: &mut wgpu::ComputePass<'_>, replay: &Replay) {
    for d in &replay.dispatches {
        let [x, y, z] = d.workgroups;
        pass.set_pipeline(&d.pipeline);
        pass.set_bind_group(0, &d.group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::gpu::{test_gpu as gpu, GpuBackend};
    use crate::backend::{Backend, MatmulSpec};
    use crate::dtype::DType;
    use crate::error::Result;
    use crate::tensor::HostTensor;

    fn fill(b: &GpuBackend, t: &crate::tensor::Tensor<GpuBackend>, value: f32) -> Result<()> {
        b.write(t, &HostTensor::filled(t.shape(), DType::F32, value))
    }

    /// A replay computes from what its inputs hold when it runs, and writes its outputs again
    /// (poisoned before each run, so that a replay that wrote nothing would show).
    #[test]
    fn a_replay_reads_its_inputs_afresh_and_writes_its_outputs() -> Result<()> {
        let b = gpu();
        let x = b.alloc(&[40], DType::F32)?;
        let (y, out) = (b.alloc(&[40], DType::F32)?, b.alloc(&[40], DType::F32)?);
        fill(&b, &x, 1.0)?;
        let replay = b
            .capture(&mut || {
                b.scale(&x, 2.0, &y)?;
                b.add(&y, &x, &out)
            })?
            .expect("dispatches alone are captured");
        assert_eq!(replay.dispatches(), 2);
        assert_eq!(out.to_f32_vec()?, vec![3.0; 40]);
        for value in [5.0, -0.5] {
            fill(&b, &x, value)?;
            fill(&b, &out, f32::NAN)?;
            b.replay(&replay)?;
            assert_eq!(out.to_f32_vec()?, vec![3.0 * value; 40]);
        }
        Ok(())
    }

    #[test]
    fn work_other_than_dispatches_is_not_captured() -> Result<()> {
        let b = gpu();
        let x = b.alloc(&[4], DType::F32)?;
        assert!(b.capture(&mut || fill(&b, &x, 1.0))?.is_none());
        // The capture ended: the next one is made.
        assert!(b.capture(&mut || b.scale(&x, 2.0, &x))?.is_some());
        Ok(())
    }

    /// A product split over K takes its partial sums from the pool and frees them at once;
    /// its replay writes them again, so it keeps them from the pool while it lives.
    #[test]
    fn a_replay_keeps_the_scratch_its_ops_took_from_the_pool() -> Result<()> {
        let b = gpu();
        let (m, n, k) = (32, 32, 1024);
        let a = b.alloc(&[m, k], DType::F32)?;
        let w = b.alloc(&[k, n], DType::F32)?;
        let out = b.alloc(&[m, n], DType::F32)?;
        fill(&b, &a, 0.5)?;
        fill(&b, &w, 0.25)?;
        let held = || b.memory_stats().allocated_bytes;
        let before = held();
        let spec = MatmulSpec::new(m, n, k);
        b.matmul(&a, &w, None, &out, &spec)?;
        assert_eq!(
            held(),
            before,
            "the product's scratch went back to the pool"
        );
        let replay = b
            .capture(&mut || b.matmul(&a, &w, None, &out, &spec))?
            .expect("captured");
        assert!(held() > before, "the replay holds the product's scratch");
        fill(&b, &out, f32::NAN)?;
        b.replay(&replay)?;
        assert_eq!(out.to_f32_vec()?, vec![0.125 * k as f32; m * n]);
        drop(replay);
        assert_eq!(held(), before);
        Ok(())
    }
}
