//! The training run's supporting pieces, none of which needs a device: `TrainingConfig` and its
//! config file, the learning-rate schedule against PyTorch's formula, `metrics.jsonl` against
//! DESIGN.md's keys, and `curves.svg`.

use std::collections::BTreeSet;
use std::path::Path;

use signflow::train::{
    split_records, write_curves_svg, Augment, EpochRecord, LrSchedule, MetricsLog, Record,
    Schedule, StepRecord, TrainingConfig,
};
use signflow::{AmpDtype, Error};

// ---------------------------------------------------------------------------------------------
// TrainingConfig

#[test]
fn defaults_validate_and_match_the_design() {
    let c = TrainingConfig::default();
    c.validate().unwrap();
    assert_eq!(c.device, "auto");
    assert!(!c.use_amp);
    assert_eq!(c.amp_dtype, AmpDtype::F16);
    assert_eq!((c.amp_init_scale, c.amp_growth_interval), (65536.0, 2000));
    assert_eq!((c.batch_size, c.gradient_accumulation_steps), (32, 1));
    assert_eq!((c.num_workers, c.num_epochs), (2, 30));
    assert_eq!((c.learning_rate, c.weight_decay), (3e-4, 0.05));
    assert_eq!((c.warmup_steps, c.warmup_ratio), (0, 0.05));
    assert_eq!(c.schedule, Schedule::Cosine);
    assert_eq!((c.label_smoothing, c.grad_clip), (0.1, 1.0));
    assert_eq!((c.patience, c.min_delta, c.seed), (0, 0.0, 0));
    assert!(c.shuffle && !c.mirror);
    assert_eq!(c.augment, Augment::None);
    assert_eq!((c.log_every, c.empty_cache_interval), (10, 0));
    assert_eq!(c.out_dir, None);
    assert_eq!((c.memory_fraction, c.memory_limit_mb), (0.9, None));
    assert_eq!((c.beta1, c.beta2, c.eps), (0.9, 0.999, 1e-8));
}

/// Each bad setting is rejected as InvalidConfig naming that field, with a message that names
/// it too.
#[test]
fn bad_values_are_rejected_naming_the_field() {
    type Mutate = fn(&mut TrainingConfig);
    let cases: &[(&str, Mutate)] = &[
        ("batch_size", |c| c.batch_size = 0),
        ("gradient_accumulation_steps", |c| {
            c.gradient_accumulation_steps = 0
        }),
        ("num_epochs", |c| c.num_epochs = 0),
        ("log_every", |c| c.log_every = 0),
        ("learning_rate", |c| c.learning_rate = 0.0),
        ("learning_rate", |c| c.learning_rate = -1e-3),
        ("learning_rate", |c| c.learning_rate = f64::NAN),
        ("learning_rate", |c| c.learning_rate = f64::INFINITY),
        ("weight_decay", |c| c.weight_decay = -0.1),
        ("warmup_ratio", |c| c.warmup_ratio = 1.5),
        ("warmup_ratio", |c| c.warmup_ratio = -0.1),
        ("label_smoothing", |c| c.label_smoothing = 1.0),
        ("label_smoothing", |c| c.label_smoothing = -0.1),
        ("grad_clip", |c| c.grad_clip = -1.0),
        ("grad_clip", |c| c.grad_clip = f64::NAN),
        ("min_delta", |c| c.min_delta = -1e-3),
        ("beta1", |c| c.beta1 = 1.0),
        ("beta2", |c| c.beta2 = -0.5),
        ("eps", |c| c.eps = 0.0),
        ("out_dir", |c| c.out_dir = Some("".into())),
        ("memory_fraction", |c| c.memory_fraction = 0.0),
        ("memory_fraction", |c| c.memory_fraction = 1.5),
        ("memory_limit_mb", |c| c.memory_limit_mb = Some(0)),
    ];
    for (field, mutate) in cases {
        let mut c = TrainingConfig::default();
        mutate(&mut c);
        let err = c.validate().unwrap_err();
        match &err {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field, "{err}"),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
        assert!(err.to_string().contains(field), "{err}");
    }
}

/// `amp` in a config file is the command line's shorthand for `use_amp` and `amp_dtype`; the
/// dtype takes PyTorch's names too; a conflict names both keys.
#[test]
fn amp_settings_resolve_from_either_form_and_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"amp": "f16"}"#, true, AmpDtype::F16),
        (r#"{"amp": "bfloat16"}"#, true, AmpDtype::Bf16),
        (
            r#"{"amp": "none", "amp_dtype": "bf16"}"#,
            false,
            AmpDtype::Bf16,
        ),
        (
            r#"{"use_amp": true, "amp_dtype": "float16"}"#,
            true,
            AmpDtype::F16,
        ),
        (
            r#"{"use_amp": true, "amp_dtype": "bf16", "amp": "bf16"}"#,
            true,
            AmpDtype::Bf16,
        ),
        (r#"{"amp_dtype": "bf16"}"#, false, AmpDtype::Bf16),
    ];
    for (k, (text, use_amp, dtype)) in cases.into_iter().enumerate() {
        let path = write(dir.path(), &format!("amp{k}.json"), text);
        let (c, _) = TrainingConfig::from_file(&path).unwrap();
        assert_eq!((c.use_amp, c.amp_dtype), (use_amp, dtype), "{text}");
    }
    let refused = [
        (r#"{"amp": "fp16"}"#, ["amp", "none, f16"]),
        (r#"{"amp": true}"#, ["amp", "none, f16"]),
        (r#"{"amp_dtype": "f8"}"#, ["amp_dtype", "f16"]),
        (
            r#"{"amp": "none", "use_amp": true}"#,
            ["`amp` none", "`use_amp` true"],
        ),
        (
            r#"{"amp": "f16", "amp_dtype": "bf16"}"#,
            ["`amp` f16", "`amp_dtype` \"bf16\""],
        ),
        (
            r#"{"amp_init_scale": 0}"#,
            ["amp_init_scale", "greater than 0"],
        ),
        (
            r#"{"amp_growth_interval": 0}"#,
            ["amp_growth_interval", "at least 1"],
        ),
    ];
    for (k, (text, named)) in refused.into_iter().enumerate() {
        let path = write(dir.path(), &format!("bad_amp{k}.json"), text);
        let msg = TrainingConfig::from_file(&path).unwrap_err().to_string();
        for n in named {
            assert!(msg.contains(n), "{text}: {msg}");
        }
    }
}

#[test]
fn a_bad_device_request_is_rejected() {
    let c = TrainingConfig {
        device: "".into(),
        ..TrainingConfig::default()
    };
    assert!(c.validate().is_err());
}

#[test]
fn gpu_config_carries_the_device_memory_and_amp_settings() {
    let c = TrainingConfig {
        device: "cpu".into(),
        memory_fraction: 0.5,
        memory_limit_mb: Some(512),
        empty_cache_interval: 7,
        use_amp: true,
        amp_dtype: AmpDtype::Bf16,
        ..TrainingConfig::default()
    };
    let g = c.gpu_config();
    assert!(g.enable_amp);
    assert_eq!(g.amp_dtype, AmpDtype::Bf16);
    assert_eq!(g.device, "cpu");
    assert_eq!(g.memory_fraction, 0.5);
    assert_eq!(g.memory_limit_mb, Some(512));
    assert_eq!(g.empty_cache_interval, 7);
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn from_file_reads_settings_and_returns_the_model_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "run.json",
        r#"{
            "batch_size": 8,
            "learning_rate": 1e-3,
            "schedule": "constant",
            "augment": "default",
            "gradient_clip_max_norm": 0.5,
            "out_dir": "runs/a",
            "model": {"d_model": 128, "layers": 2, "anything": [1, 2]}
        }"#,
    );
    let (c, model) = TrainingConfig::from_file(&path).unwrap();
    assert_eq!(c.batch_size, 8);
    assert_eq!(c.learning_rate, 1e-3);
    assert_eq!(c.schedule, Schedule::Constant);
    assert_eq!(c.augment, Augment::Default);
    // DESIGN.md's name for the setting is accepted as an alias.
    assert_eq!(c.grad_clip, 0.5);
    assert_eq!(c.out_dir.as_deref(), Some(Path::new("runs/a")));
    // Everything not in the file keeps its default.
    assert_eq!(c.num_epochs, 30);
    assert_eq!(
        model.unwrap(),
        serde_json::json!({"d_model": 128, "layers": 2, "anything": [1, 2]})
    );

    let path = write(dir.path(), "bare.json", r#"{"seed": 7}"#);
    let (c, model) = TrainingConfig::from_file(&path).unwrap();
    assert_eq!(c.seed, 7);
    assert!(model.is_none());
}

/// Every error from a config file names the file; those about one setting name it too.
#[test]
fn from_file_errors_name_the_file_and_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // An unknown (misspelt) key.
        (r#"{"batch_size": 8, "learnig_rate": 0.1}"#, "learnig_rate"),
        // A value of the wrong type.
        (r#"{"batch_size": "big", "seed": 1}"#, "batch_size"),
        (r#"{"seed": 1, "num_epochs": -3}"#, "num_epochs"),
        (r#"{"schedule": "linear"}"#, "schedule"),
        // A value of the right type, out of range.
        (r#"{"learning_rate": -0.5}"#, "learning_rate"),
        (r#"{"amp": "fp8"}"#, "amp = fp8"),
        // Not a config at all.
        (r#"[1, 2, 3]"#, "JSON object"),
        (r#"{"model": 3}"#, "`model` must be a JSON object"),
        (r#"{"batch_size": 8"#, "not valid JSON"),
    ];
    for (k, (text, named)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("bad{k}.json"), text);
        let msg = TrainingConfig::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{text}: {msg}");
        assert!(msg.contains(named), "{text}: {msg}");
    }
}

#[test]
fn from_file_on_a_missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.json");
    match TrainingConfig::from_file(&path) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path.display().to_string()),
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn config_round_trips_through_json() {
    let c = TrainingConfig {
        device: "gpu:1".into(),
        batch_size: 4,
        gradient_accumulation_steps: 3,
        learning_rate: 1.25e-4,
        warmup_steps: 17,
        schedule: Schedule::Constant,
        augment: Augment::Default,
        mirror: true,
        shuffle: false,
        patience: 5,
        min_delta: 1e-3,
        seed: u64::MAX,
        out_dir: Some("out/run".into()),
        memory_limit_mb: Some(2048),
        beta2: 0.98,
        ..TrainingConfig::default()
    };
    let text = serde_json::to_string_pretty(&c).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["schedule"], "constant");
    assert_eq!(value["augment"], "default");
    assert_eq!(value["grad_clip"], 1.0);
    assert_eq!(serde_json::from_str::<TrainingConfig>(&text).unwrap(), c);

    // And through a file, the way `config.json` is read back.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.json", &text);
    assert_eq!(TrainingConfig::from_file(&path).unwrap().0, c);
}

// ---------------------------------------------------------------------------------------------
// LrSchedule

/// Base 3e-4, 3 warmup steps of 10. The expected values are Hugging Face's
/// `get_cosine_schedule_with_warmup` lambda times the base rate, printed by Python:
///
/// ```python
/// def lam(i, w, t):
///     if i < w: return i / max(1, w)
///     p = (i - w) / max(1, t - w)
///     return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * p)))
/// [3e-4 * lam(i, 3, 10) for i in range(10)]
/// ```
const PYTORCH_COSINE: [f64; 10] = [
    0.0,
    9.999999999999999e-05,
    0.00019999999999999998,
    0.0003,
    0.0002851453301853628,
    0.00024352347027881003,
    0.00018337814009344714,
    0.00011662185990655284,
    5.6476529721189974e-05,
    1.4854669814637143e-05,
];

fn config(lr: f64, warmup_steps: usize, warmup_ratio: f64, schedule: Schedule) -> TrainingConfig {
    TrainingConfig {
        learning_rate: lr,
        warmup_steps,
        warmup_ratio,
        schedule,
        ..TrainingConfig::default()
    }
}

#[test]
fn cosine_with_warmup_matches_pytorch() {
    let s = LrSchedule::new(&config(3e-4, 3, 0.0, Schedule::Cosine), 10);
    for (k, expected) in PYTORCH_COSINE.iter().enumerate() {
        let got = s.lr(k + 1);
        assert!(
            (got - expected).abs() <= 1e-15 * 3e-4,
            "step {}: {got} vs PyTorch {expected}",
            k + 1
        );
    }
}

#[test]
fn schedule_by_hand() {
    // Base 1, 4 warmup steps of 12 (ratio 1/3 of 12): 0, 1/4, 2/4, 3/4, then cosine over 8.
    let s = LrSchedule::new(&config(1.0, 0, 1.0 / 3.0, Schedule::Cosine), 12);
    assert_eq!(s.warmup_steps, 4);
    let expected = [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        0.5 * (1.0 + (std::f64::consts::PI / 8.0).cos()),
        0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos()),
        0.5 * (1.0 + (3.0 * std::f64::consts::PI / 8.0).cos()),
        0.5,
    ];
    for (k, e) in expected.iter().enumerate() {
        assert!((s.lr(k + 1) - e).abs() < 1e-12, "step {}", k + 1);
    }
    // The last step, i = 11 of 12: 0.5·(1 + cos(7π/8)), near but above 0.
    let last = s.lr(12);
    assert!((last - 0.5 * (1.0 + (7.0 * std::f64::consts::PI / 8.0).cos())).abs() < 1e-12);
    assert!(last > 0.0);
    assert_eq!(s.lr(13), 0.0);
    assert_eq!(s.lr(100), 0.0);

    // Constant: the same warmup, then the base rate for good.
    let c = LrSchedule::new(&config(2.0, 0, 1.0 / 3.0, Schedule::Constant), 12);
    assert_eq!(c.lr(3), 1.0);
    assert_eq!(c.lr(5), 2.0);
    assert_eq!(c.lr(12), 2.0);
    assert_eq!(c.lr(1000), 2.0);
}

#[test]
fn warmup_steps_take_precedence_over_the_ratio() {
    let s = LrSchedule::new(&config(1.0, 7, 0.5, Schedule::Cosine), 100);
    assert_eq!(s.warmup_steps, 7);
    let s = LrSchedule::new(&config(1.0, 0, 0.05, Schedule::Cosine), 100);
    assert_eq!(s.warmup_steps, 5);
    // The ratio rounds to the nearest step: 0.05 · 30 = 1.5 → 2.
    let s = LrSchedule::new(&config(1.0, 0, 0.05, Schedule::Cosine), 30);
    assert_eq!(s.warmup_steps, 2);
    assert_eq!(
        (s.base_lr, s.total_steps, s.kind),
        (1.0, 30, Schedule::Cosine)
    );
}

#[test]
fn no_warmup_and_warmup_as_long_as_the_run() {
    let s = LrSchedule::new(&config(1.0, 0, 0.0, Schedule::Cosine), 4);
    assert_eq!(s.warmup_steps, 0);
    assert_eq!(s.lr(1), 1.0);
    assert!((s.lr(3) - 0.5).abs() < 1e-12);

    let s = LrSchedule::new(&config(1.0, 4, 0.0, Schedule::Cosine), 4);
    let lrs: Vec<f64> = (1..=5).map(|step| s.lr(step)).collect();
    assert_eq!(lrs, vec![0.0, 0.25, 0.5, 0.75, 0.0]);
}

// ---------------------------------------------------------------------------------------------
// metrics.jsonl

fn step(step: usize, epoch: usize, loss: f64) -> StepRecord {
    StepRecord {
        step,
        epoch,
        loss,
        lr: 1e-4 * step as f64,
        loss_scale: None,
        skipped: None,
    }
}

fn epoch(epoch: usize, train_loss: f64, val: Option<(f64, f64, f64)>) -> EpochRecord {
    EpochRecord {
        epoch,
        train_loss,
        val_loss: val.map(|v| v.0),
        val_top1: val.map(|v| v.1),
        val_top5: val.map(|v| v.2),
        samples_per_s: 1234.5,
        peak_mb: 256.25,
        seconds: 12.5,
    }
}

fn keys(value: &serde_json::Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn metrics_lines_have_exactly_the_design_keys_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::create(&path).unwrap();
    assert_eq!(log.path(), path);
    let records: Vec<Record> = vec![
        step(1, 1, 2.5).into(),
        step(2, 1, 2.25).into(),
        epoch(1, 2.4, Some((2.3, 0.25, 0.75))).into(),
        step(3, 2, 2.0).into(),
        epoch(2, 2.0, None).into(),
    ];
    for r in &records {
        log.append(r.clone()).unwrap();
    }

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let step_keys = set(&["kind", "step", "epoch", "loss", "lr"]);
    let epoch_keys = set(&[
        "kind",
        "epoch",
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "samples_per_s",
        "peak_mb",
        "seconds",
    ]);
    assert_eq!(keys(&lines[0]), step_keys);
    assert_eq!(lines[0]["kind"], "step");
    assert_eq!(lines[0]["step"], 1);
    assert!(lines[0]["step"].is_u64(), "steps are JSON integers");
    assert_eq!(keys(&lines[2]), epoch_keys);
    assert_eq!(lines[2]["kind"], "epoch");
    assert_eq!(lines[2]["val_top1"], 0.25);
    // Without validation the val fields are there, as null.
    assert_eq!(keys(&lines[4]), epoch_keys);
    assert!(lines[4]["val_loss"].is_null() && lines[4]["val_top5"].is_null());

    assert_eq!(MetricsLog::read(&path).unwrap(), records);
    let (steps, epochs) = split_records(records);
    assert_eq!(steps.len(), 3);
    assert_eq!(epochs.len(), 2);
}

#[test]
fn a_diverged_loss_is_written_as_null_and_read_back_as_nan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::create(&path).unwrap();
    log.append(step(1, 1, f64::NAN)).unwrap();
    log.append(epoch(1, f64::INFINITY, Some((f64::NAN, 0.0, 0.0))))
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.lines().next().unwrap().contains(r#""loss":null"#),
        "{text}"
    );
    let records = MetricsLog::read(&path).unwrap();
    match &records[..] {
        [Record::Step(s), Record::Epoch(e)] => {
            assert!(s.loss.is_nan());
            assert!(e.train_loss.is_nan());
            assert_eq!(e.val_loss, None);
            assert_eq!(e.val_top1, Some(0.0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_replaces_an_earlier_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "metrics.jsonl", "left over from another run\n");
    let mut log = MetricsLog::create(&path).unwrap();
    log.append(step(1, 1, 1.0)).unwrap();
    assert_eq!(
        MetricsLog::read(&path).unwrap(),
        vec![Record::from(step(1, 1, 1.0))]
    );
}

#[test]
fn resume_keeps_only_records_up_to_the_saved_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::create(&path).unwrap();
    for s in 1..=4 {
        log.append(step(s, 1, 3.0 - s as f64 * 0.1)).unwrap();
    }
    log.append(epoch(1, 2.8, None)).unwrap();
    for s in 5..=7 {
        log.append(step(s, 2, 2.5)).unwrap();
    }
    drop(log);
    // The saved state: 5 steps, 1 whole epoch; steps 6 and 7 were run after it and are redone.
    let mut log = MetricsLog::resume(&path, 5, 1).unwrap();
    log.append(step(6, 2, 2.4)).unwrap();
    let steps: Vec<usize> = MetricsLog::read(&path)
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Record::Step(s) => Some(s.step),
            Record::Epoch(_) => None,
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    let (_, epochs) = split_records(MetricsLog::read(&path).unwrap());
    assert_eq!(epochs.len(), 1);

    // A missing log resumes as an empty one.
    let other = dir.path().join("none.jsonl");
    MetricsLog::resume(&other, 10, 2).unwrap();
    assert!(MetricsLog::read(&other).unwrap().is_empty());
}

#[test]
fn a_torn_last_line_is_dropped_but_a_bad_middle_line_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = serde_json::to_string(&Record::from(step(1, 1, 1.0))).unwrap();
    let path = write(
        dir.path(),
        "torn.jsonl",
        &format!("{good}\n{{\"kind\": \"step\", \"st"),
    );
    assert_eq!(MetricsLog::read(&path).unwrap().len(), 1);
    // Resuming rewrites the log without the torn line, so appends start on a fresh line.
    let mut log = MetricsLog::resume(&path, 10, 10).unwrap();
    log.append(step(2, 1, 0.5)).unwrap();
    assert_eq!(MetricsLog::read(&path).unwrap().len(), 2);

    let path = write(
        dir.path(),
        "bad.jsonl",
        &format!("{good}\nnot json\n{good}\n"),
    );
    let msg = MetricsLog::read(&path).unwrap_err().to_string();
    assert!(msg.contains("bad.jsonl") && msg.contains("line 2"), "{msg}");
    let path = write(dir.path(), "kind.jsonl", "{\"kind\": \"batch\"}\n");
    let msg = MetricsLog::read(&path).unwrap_err().to_string();
    assert!(msg.contains("line 1"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// curves.svg

/// The checks a reader of the file relies on: one root element, every text closed, no number
/// that is not one, and nothing left beside it from the atomic write.
fn check_svg(dir: &Path, path: &Path) -> String {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    for bad in ["NaN", "inf", "undefined"] {
        assert!(!svg.contains(bad), "{bad} in the SVG");
    }
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
    svg
}

#[test]
fn curves_svg_has_both_panels_lines_and_legends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.svg");
    // An earlier file is replaced whole.
    std::fs::write(&path, "old").unwrap();
    let steps: Vec<StepRecord> = (1..=40)
        .map(|s| step(s, (s - 1) / 10 + 1, 3.0 / s as f64))
        .collect();
    let epochs: Vec<EpochRecord> = (1..=4)
        .map(|e| {
            let acc = 0.2 * e as f64;
            epoch(e, 2.0 / e as f64, Some((2.2 / e as f64, acc, acc + 0.1)))
        })
        .collect();
    write_curves_svg(&path, &steps, &epochs).unwrap();
    let svg = check_svg(dir.path(), &path);
    // Step loss, epoch train loss, val loss, top-1, top-5.
    assert_eq!(svg.matches("<path").count(), 5);
    for text in [
        "Loss",
        "Validation accuracy",
        "update step",
        "epoch",
        "accuracy (%)",
        "train loss (step)",
        "train loss (epoch)",
        "val loss (epoch)",
        "val top-1",
        "val top-5",
    ] {
        assert!(svg.contains(&format!(">{text}<")), "no label {text}");
    }
    // Tick labels: accuracy from 0 to 100, steps up to 40.
    assert!(svg.contains(">100<") && svg.contains(">40<"));
}

#[test]
fn curves_svg_without_validation_or_data_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.svg");
    write_curves_svg(&path, &[step(1, 1, 1.0)], &[epoch(1, 1.0, None)]).unwrap();
    let svg = check_svg(dir.path(), &path);
    assert!(svg.contains("no validation set"));
    assert!(!svg.contains("val loss"));

    write_curves_svg(&path, &[], &[]).unwrap();
    let svg = check_svg(dir.path(), &path);
    assert!(svg.contains("no losses recorded yet"));
    assert!(svg.contains("no epoch finished yet"));
    assert!(!svg.contains("<path"));
}

#[test]
fn curves_svg_leaves_gaps_for_nan_and_thins_long_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.svg");
    let mut steps: Vec<StepRecord> = (1..=10).map(|s| step(s, 1, 1.0)).collect();
    steps[4].loss = f64::NAN;
    write_curves_svg(&path, &steps, &[]).unwrap();
    let svg = check_svg(dir.path(), &path);
    let line = svg.lines().find(|l| l.starts_with("<path")).unwrap();
    assert_eq!(line.matches('M').count(), 2, "{line}");

    let steps: Vec<StepRecord> = (1..=10_000)
        .map(|s| step(s, 1, 1.0 + (s % 7) as f64))
        .collect();
    write_curves_svg(&path, &steps, &[]).unwrap();
    let svg = check_svg(dir.path(), &path);
    let line = svg.lines().find(|l| l.starts_with("<path")).unwrap();
    assert!(line.matches('L').count() < 2000, "{} points", line.len());
    assert!(svg.contains("mean of 5 steps"));
}
