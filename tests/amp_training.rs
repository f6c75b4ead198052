//! Mixed-precision training on the CPU backend: the f16 loss scaler skips an update whose
//! gradients overflow (weights, moments and AdamW's step count untouched, the scale halved)
//! and grows the scale after clean updates. (Resuming an AMP run: tests/training.rs.)

use std::path::Path;
use std::sync::Arc;

use signflow::data::{synth_clips, Dataset, Source};
use signflow::model::ModelConfig;
use signflow::train::state::TrainingState;
use signflow::train::{initial_model, split_records, MetricsLog, ScalerState, Trainer};
use signflow::train::{StepRecord, TrainingConfig};
use signflow::{AmpDtype, CpuBackend, GpuConfig};

fn tiny() -> ModelConfig {
    ModelConfig {
        d_model: 16,
        num_heads: 2,
        num_layers: 1,
        ff_dim: 32,
        max_seq_len: 8,
        dropout: 0.1,
        ..ModelConfig::default()
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::new(&GpuConfig {
        device: "cpu".into(),
        ..GpuConfig::default()
    })
    .unwrap()
}

/// 24 generated clips of 3 classes.
fn pack() -> Arc<Dataset> {
    Arc::new(Dataset::Clips(synth_clips(3, 8, 12, 1)))
}

fn f16_config(
    out: &Path,
    init_scale: f64,
    growth_interval: u32,
    batch_size: usize,
) -> TrainingConfig {
    TrainingConfig {
        num_epochs: 1,
        batch_size,
        num_workers: 1,
        learning_rate: 3e-3,
        warmup_ratio: 0.0,
        seed: 3,
        log_every: 1,
        out_dir: Some(out.to_path_buf()),
        use_amp: true,
        amp_dtype: AmpDtype::F16,
        amp_init_scale: init_scale,
        amp_growth_interval: growth_interval,
        ..TrainingConfig::default()
    }
}

fn steps(dir: &Path) -> Vec<StepRecord> {
    split_records(MetricsLog::read(&dir.join("metrics.jsonl")).unwrap()).0
}

#[test]
fn an_overflowing_update_is_skipped_untouched_and_the_scale_halves() {
    let b = cpu();
    let data = pack();
    let classes = data.classes().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = initial_model(&b, &tiny(), &classes, None, 7).unwrap();
    let before = model.named_parameters().unwrap();
    // A scale no f16 gradient survives: the one update (one batch of all 24 clips) overflows.
    let cfg = f16_config(dir.path(), 1e30, 2000, 24);
    let mut trainer = Trainer::new(&b, model, cfg, classes).unwrap();
    trainer.fit(Source::all(data).unwrap(), None).unwrap();
    assert_eq!(trainer.model().named_parameters().unwrap(), before);

    let state = TrainingState::load(&dir.path().join("state.safetensors")).unwrap();
    assert_eq!(state.progress.step, 1);
    assert!(state
        .exp_avg
        .iter()
        .chain(&state.exp_avg_sq)
        .all(|&m| m == 0.0));
    assert_eq!(
        state.scaler,
        Some(ScalerState {
            scale: 0.5e30,
            growth_tracker: 0,
            skipped: 1,
        })
    );
    let rows = steps(dir.path());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].loss_scale, Some(1e30f32 as f64));
    assert_eq!(rows[0].skipped, Some(true));
}

#[test]
fn clean_updates_grow_the_scale_every_growth_interval() {
    let b = cpu();
    let data = pack();
    let classes = data.classes().to_vec();
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = initial_model(&b, &tiny(), &classes, None, 7).unwrap();
    let before = model.named_parameters().unwrap();
    // Four updates of 6 clips, doubling after every second.
    let cfg = f16_config(dir.path(), 1024.0, 2, 6);
    let mut trainer = Trainer::new(&b, model, cfg, classes).unwrap();
    trainer.fit(Source::all(data).unwrap(), None).unwrap();
    assert_ne!(trainer.model().named_parameters().unwrap(), before);

    let rows = steps(dir.path());
    let scales: Vec<Option<f64>> = rows.iter().map(|r| r.loss_scale).collect();
    assert_eq!(scales, [1024.0, 1024.0, 2048.0, 2048.0].map(Some));
    assert!(rows.iter().all(|r| r.skipped == Some(false)), "{rows:?}");
    let state = TrainingState::load(&dir.path().join("state.safetensors")).unwrap();
    assert_eq!(
        state.scaler,
        Some(ScalerState {
            scale: 4096.0,
            growth_tracker: 0,
            skipped: 0,
        })
    );
}
