//! What [`super::InferencePipeline::optimize_for_inference`] keeps: per (batch, seq) shape, a
//! workspace planned once and the forward pass's device work captured once
//! ([`Backend::capture`]), replayed by every later prediction of that shape.
//!
//! Nothing a plan captured can go stale: the workspace belongs to the plan, a plan serves one
//! shape, and the model's weights are immutable after load (a replay reads them in place, so
//! it binds the buffers the capture bound). Inputs are written into the plan's input tensors
//! before each replay and the logits read back from its output tensor after it.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::Backend;
use crate::data::Batch;
use crate::error::Result;
use crate::model::{SignTransformer, Workspace};

/// Shapes kept at most; the least recently used goes first. A service predicts one clip at a
/// time, a batch job at its batch size and a last, shorter batch: a few cover them.
pub const MAX_PLANS: usize = 4;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shape's workspace and captured forward pass.
struct Plan<B: Backend> {
    ws: Workspace<B>,
    /// None until a capture succeeds, and always on a backend that runs ops as they are called
    /// (the CPU, where the plan's gain is the workspace).
    replay: Option<B::Replay>,
}

/// A plan as the list and the threads predicting with it hold it.
type Shared<B> = Arc<Mutex<Plan<B>>>;

/// A (batch, seq) shape.
type Shape = (usize, usize);

/// The plans of an optimized pipeline, least recently used first.
pub(super) struct Plans<B: Backend> {
    plans: Mutex<Vec<(Shape, Shared<B>)>>,
}

impl<B: Backend> Plans<B> {
    pub fn new() -> Plans<B> {
        Plans {
            plans: Mutex::new(Vec::new()),
        }
    }

    /// The shapes planned so far, least recently used first.
    pub fn shapes(&self) -> Vec<Shape> {
        lock(&self.plans).iter().map(|(shape, _)| *shape).collect()
    }

    /// The logits of `batch` through its shape's plan, made on first use. None when another
    /// thread is predicting with that plan: the caller takes the unplanned path then, rather
    /// than wait.
    pub fn logits(
        &self,
        backend: &B,
        model: &SignTransformer<B>,
        batch: &Batch,
        ids: &[usize],
    ) -> Result<Option<Vec<f32>>> {
        let plan = self.plan(backend, model, (batch.batch, batch.seq))?;
        let Ok(mut plan) = plan.try_lock() else {
            return Ok(None);
        };
        let plan = &mut *plan;
        plan.ws.load_inputs(backend, model.config(), batch, ids)?;
        match &plan.replay {
            Some(replay) => backend.replay(replay)?,
            None => {
                let ws = &plan.ws;
                plan.replay = backend.capture(&mut || model.forward(backend, ws, None))?;
            }
        }
        plan.ws.logits().to_f32_vec().map(Some)
    }

    /// The plan of `shape`, now the most recently used, made if there is none.
    fn plan(&self, backend: &B, model: &SignTransformer<B>, shape: Shape) -> Result<Shared<B>> {
        let mut plans = lock(&self.plans);
        let plan = match plans.iter().position(|(s, _)| *s == shape) {
            Some(i) => plans.remove(i).1,
            None => {
                let ws = Workspace::new_in(
                    backend,
                    model.config(),
                    shape.0,
                    shape.1,
                    false,
                    model.precision(),
                )?;
                if plans.len() == MAX_PLANS {
                    plans.remove(0);
                }
                Arc::new(Mutex::new(Plan { ws, replay: None }))
            }
        };
        plans.push((shape, plan.clone()));
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::{lock, Plans};
    use crate::backend::{Backend, CpuBackend};
    use crate::config::GpuConfig;
    use crate::data::Batch;
    use crate::dtype::DType;
    use crate::model::{ModelConfig, SignTransformer, Workspace};
    use crate::tensor::{HostTensor, Tensor};

    /// Every activation of the workspace set to NaN: a step that leaves one unwritten shows.
    fn poison<B: Backend>(b: &B, ws: &Workspace<B>) {
        let layers = ws
            .layers
            .iter()
            .flat_map(|l| [&l.a1, &l.qkv, &l.attn, &l.hmid, &l.a2, &l.f]);
        let rest = [&ws.o, &ws.hf, &ws.pooled, &ws.logits];
        for t in ws.hin.iter().chain(layers).chain(rest).chain(&ws.stream) {
            let t: &Tensor<B> = t;
            b.write(t, &HostTensor::filled(t.shape(), DType::F32, f32::NAN))
                .unwrap();
        }
    }

    /// The second prediction of a shape goes through the plan (a replay where the backend
    /// captures), and computes every activation again.
    fn replays_write_every_activation<B: Backend>(b: &B, replays: bool) {
        let cfg = ModelConfig {
            num_features: 6,
            num_classes: 3,
            d_model: 8,
            num_heads: 2,
            num_layers: 2,
            ff_dim: 12,
            max_seq_len: 5,
            ..ModelConfig::default()
        };
        let model = SignTransformer::new(b, cfg, 1).unwrap();
        let batch = |shift: f32| Batch {
            features: (0..2 * 5 * 6)
                .map(|i| (i as f32 * 0.37 + shift).sin())
                .collect(),
            mask: [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0].to_vec(),
            labels: vec![0, 0],
            batch: 2,
            seq: 5,
            num_features: 6,
        };
        let plans = Plans::new();
        let logits = |x: &Batch| plans.logits(b, &model, x, &[0, 1]).unwrap().unwrap();
        let (first, second) = (logits(&batch(0.0)), logits(&batch(1.0)));
        assert_ne!(first, second);
        let plan = plans.plan(b, &model, (2, 5)).unwrap();
        assert_eq!(lock(&plan).replay.is_some(), replays);
        for (x, want) in [(batch(0.0), &first), (batch(1.0), &second)] {
            poison(b, &lock(&plan).ws);
            assert_eq!(&logits(&x), want);
        }
    }

    #[test]
    fn cpu_plans_compute_every_activation_again() {
        replays_write_every_activation(&CpuBackend::new(&GpuConfig::default()).unwrap(), false);
    }

    #[test]
    fn gpu_replays_compute_every_activation_again() {
        replays_write_every_activation(&crate::backend::gpu::test_gpu(), true);
    }
}
