//! The trainer: a resumed run ends exactly where an unbroken one does, gradient accumulation
//! equals the larger batch, and `--init` keeps or replaces the classifier as the classes say.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use signflow::data::{split, synth_clips, Dataset, Source, SplitSpec};
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::train::state::TrainingState;
use signflow::train::TrainingConfig;
use signflow::train::{initial_model, split_records, MetricsLog, StepRecord, Trainer};
use signflow::{AmpDtype, CpuBackend, Error, GpuConfig};
use std::path::Path;

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

fn data() -> (Source, Source, Vec<String>) {
    let pack = Arc::new(Dataset::Clips(synth_clips(3, 8, 12, 1)));
    let s = split(&pack, &SplitSpec::Random { fraction: 0.25 }, 0).unwrap();
    let classes = pack.classes().to_vec();
    (
        Source::new(pack.clone(), s.train).unwrap(),
        Source::new(pack, s.val).unwrap(),
        classes,
    )
}

fn config(out: &std::path::Path) -> TrainingConfig {
    TrainingConfig {
        num_epochs: 2,
        batch_size: 5,
        num_workers: 1,
        learning_rate: 3e-3,
        seed: 3,
        log_every: 1,
        out_dir: Some(out.to_path_buf()),
        ..TrainingConfig::default()
    }
}

#[test]
fn resumed_run_matches_unbroken_run() {
    let state = resumes_to_the_unbroken_run(config);
    assert_eq!(state.scaler, None);
}

/// With `--amp f16` the scale starts where the first updates overflow and doubles after every
/// clean one, so that a scaler state or a skipped count not carried over would show; bf16
/// neither scales nor skips.
#[test]
fn resumed_amp_runs_match_unbroken_runs() {
    for amp_dtype in [AmpDtype::F16, AmpDtype::Bf16] {
        let state = resumes_to_the_unbroken_run(|out| TrainingConfig {
            use_amp: true,
            amp_dtype,
            amp_init_scale: 1048576.0,
            amp_growth_interval: 1,
            ..config(out)
        });
        let scaler = state.scaler.unwrap();
        match amp_dtype {
            AmpDtype::F16 => {
                assert!(scaler.skipped > 0, "no update overflowed: {scaler:?}");
                assert!(
                    scaler.skipped < state.progress.step,
                    "every update overflowed"
                );
            }
            AmpDtype::Bf16 => assert_eq!((scaler.scale, scaler.skipped), (1.0, 0)),
        }
    }
}

/// Trains a run of `config` unbroken, and again interrupted after its first update (mid-epoch)
/// then resumed from its directory: the same parameters, losses, step rows, moments and loss
/// scaler. Returns the unbroken run's final state.
fn resumes_to_the_unbroken_run(config: impl Fn(&Path) -> TrainingConfig) -> TrainingState {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let (train, val, classes) = data();
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let (model, _) = initial_model(&b, &tiny(), &classes, None, 7).unwrap();
    let mut unbroken = Trainer::new(&b, model, config(dirs.0.path()), classes.clone()).unwrap();
    let epochs = unbroken.fit(train.clone(), Some(val.clone())).unwrap();
    assert_eq!(epochs.len(), 2);
    let want = unbroken.model().named_parameters().unwrap();

    let (model, _) = initial_model(&b, &tiny(), &classes, None, 7).unwrap();
    let mut broken = Trainer::new(&b, model, config(dirs.1.path()), classes.clone()).unwrap();
    broken.interrupt_flag().store(true, Ordering::SeqCst);
    let err = broken.fit(train.clone(), Some(val.clone())).unwrap_err();
    assert!(matches!(err, Error::Interrupted(_)), "{err}");
    drop(broken);
    let mut resumed = Trainer::resume(&b, dirs.1.path()).unwrap();
    let epochs_resumed = resumed.fit(train, Some(val)).unwrap();
    let got = resumed.model().named_parameters().unwrap();
    assert!(got == want, "the resumed run ends at other parameters");
    assert_eq!(epochs_resumed.len(), 2);
    for (a, b) in epochs.iter().zip(&epochs_resumed) {
        assert_eq!(a.train_loss, b.train_loss);
        assert_eq!(a.val_top1, b.val_top1);
    }
    // One step record per update, the same in both.
    let steps = |d: &Path| {
        let (steps, _) = split_records(MetricsLog::read(&d.join("metrics.jsonl")).unwrap());
        let row = |s: &StepRecord| (s.step, s.loss.to_bits(), s.lr, s.loss_scale, s.skipped);
        steps.iter().map(row).collect::<Vec<_>>()
    };
    assert_eq!(steps(dirs.0.path()), steps(dirs.1.path()));
    for f in [
        "best.safetensors",
        "final.safetensors",
        "state.safetensors",
        "curves.svg",
        "config.json",
    ] {
        assert!(dirs.1.path().join(f).exists(), "{f} missing");
    }
    let state = |d: &Path| TrainingState::load(&d.join("state.safetensors")).unwrap();
    let (a, z) = (state(dirs.0.path()), state(dirs.1.path()));
    assert!(a.exp_avg == z.exp_avg && a.exp_avg_sq == z.exp_avg_sq);
    assert_eq!((&a.progress, &a.scaler), (&z.progress, &z.scaler));
    // The run's config.json repeats the run through --config.
    let (again, model) = TrainingConfig::from_file(&dirs.0.path().join("config.json")).unwrap();
    assert_eq!(again, config(dirs.0.path()));
    assert_eq!(model.unwrap()["d_model"], 16);
    a
}

#[test]
fn accumulation_equals_the_larger_batch() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let pack = Arc::new(Dataset::Clips(synth_clips(2, 8, 10, 2)));
    let classes = pack.classes().to_vec();
    let run = |batch_size, accum| {
        let cfg = TrainingConfig {
            num_epochs: 1,
            batch_size,
            gradient_accumulation_steps: accum,
            shuffle: false,
            num_workers: 0,
            out_dir: None,
            warmup_ratio: 0.0,
            ..TrainingConfig::default()
        };
        let model_cfg = ModelConfig {
            dropout: 0.0,
            ..tiny()
        };
        let (model, _) = initial_model(&b, &model_cfg, &classes, None, 5).unwrap();
        let mut t = Trainer::new(&b, model, cfg, classes.clone()).unwrap();
        t.fit(Source::all(pack.clone()).unwrap(), None).unwrap();
        t.model().named_parameters().unwrap()
    };
    // 16 clips: two updates of 8, or of 4 + 4; then 12 + 4, or 4 + 4 + 4 and a last group
    // of one micro-batch (scaled as a mean of its own).
    for (whole, accumulated) in [(run(8, 1), run(4, 2)), (run(12, 1), run(4, 3))] {
        for ((name, _, a), (_, _, b)) in whole.iter().zip(&accumulated) {
            let err = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-5, "{name}: {err}");
        }
    }
}

#[test]
fn init_keeps_the_classifier_only_for_the_same_classes() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let classes: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let (model, _) = initial_model(&b, &tiny(), &classes, None, 1).unwrap();
    let prep = Preprocessing {
        seq_len: 8,
        layout: "features".into(),
    };
    let ckpt = Checkpoint::from_model(&model, classes.clone(), prep).unwrap();

    let (same, notes) = initial_model(&b, &tiny(), &classes, Some(&ckpt), 9).unwrap();
    assert!(notes.is_empty());
    assert_eq!(
        same.named_parameters().unwrap(),
        model.named_parameters().unwrap()
    );

    let other: Vec<String> = ["x", "y"].map(String::from).to_vec();
    let (fresh, notes) = initial_model(&b, &tiny(), &other, Some(&ckpt), 9).unwrap();
    assert!(notes[0].contains("classifier starts afresh"), "{notes:?}");
    assert_eq!(fresh.config().num_classes, 2);
    let (old, new) = (
        model.named_parameters().unwrap(),
        fresh.named_parameters().unwrap(),
    );
    for ((name, _, a), (_, _, b)) in old.iter().zip(&new) {
        if name.starts_with("classifier.") {
            assert_ne!(a.len(), b.len());
        } else {
            assert_eq!(a, b, "{name} changed");
        }
    }
}

#[test]
fn a_resumed_run_may_move_only_what_its_results_do_not_depend_on() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let (_, _, classes) = data();
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = initial_model(&b, &tiny(), &classes, None, 7).unwrap();
    let mut trainer = Trainer::new(&b, model, config(dir.path()), classes).unwrap();
    let moved = TrainingConfig {
        device: "cpu".into(),
        num_workers: 3,
        data: Some("/elsewhere/pack.safetensors".into()),
        ..config(dir.path())
    };
    trainer.relocate(moved.clone()).unwrap();
    assert_eq!(trainer.config(), &moved);
    let changed = TrainingConfig {
        learning_rate: 1e-3,
        ..moved
    };
    assert!(matches!(
        trainer.relocate(changed),
        Err(Error::InvalidConfig { .. })
    ));
}
