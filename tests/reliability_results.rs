//! Results, checkpoints, messages and flags through the command line (issue 22): a non-finite
//! result is never scored as correct, a checkpoint is checked beyond its bytes, every refusal
//! names the file and what it is, and no flag is accepted without effect.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{signflow, succeeds, TINY_MODEL};
use signflow::data::FeaturePack;
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::train::state::TrainingState;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed; its standard output and error.
fn ok(args: &[&str]) -> (String, String) {
    let out = succeeds(args);
    let err = stderr(&out);
    (String::from_utf8(out.stdout).unwrap(), err)
}

/// Runs a command that must fail without a panic; its standard output and error.
fn fails(args: &[&str]) -> (String, String) {
    let out = signflow(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "signflow {args:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const FEATURES: usize = 8;
const FRAMES: usize = 8;
const CLASSES: [&str; 3] = ["apple", "banana", "cherry"];

fn names(classes: &[&str]) -> Vec<String> {
    classes.iter().map(|c| c.to_string()).collect()
}

fn tiny_config(classes: usize) -> ModelConfig {
    ModelConfig {
        num_features: FEATURES,
        num_classes: classes,
        d_model: 16,
        num_heads: 2,
        num_layers: 1,
        ff_dim: 32,
        max_seq_len: FRAMES,
        dropout: 0.1,
        layer_norm_eps: 1e-5,
    }
}

/// A freshly initialised tiny model for ready features.
fn tiny_checkpoint(classes: &[&str]) -> Checkpoint {
    let preprocessing = Preprocessing {
        seq_len: FRAMES,
        layout: "features".into(),
    };
    Checkpoint::initial(tiny_config(classes.len()), names(classes), preprocessing, 7).unwrap()
}

/// A feature pack of `n` clips of `frames` frames whose values come from `value(i)`.
fn feature_pack(
    path: &Path,
    classes: &[&str],
    n: usize,
    frames: usize,
    value: impl Fn(usize) -> f32,
) {
    FeaturePack {
        features: (0..n * frames * FEATURES).map(value).collect(),
        mask: vec![true; n * frames],
        labels: (0..n).map(|i| i % classes.len()).collect(),
        n,
        t: frames,
        num_features: FEATURES,
        classes: names(classes),
    }
    .save(path)
    .unwrap();
}

/// Varied, modest values.
fn plain(i: usize) -> f32 {
    ((i * 7919) % 101) as f32 / 50.0 - 1.0
}

/// Finite features that overflow the model's arithmetic: its logits are not finite.
fn huge(_: usize) -> f32 {
    3e38
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Files { _dir: dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// A tiny checkpoint, a plain feature pack and a huge one, all of [`CLASSES`].
    fn model_and_packs(&self) -> (PathBuf, PathBuf, PathBuf) {
        let model = self.path("model.safetensors");
        tiny_checkpoint(&CLASSES).save(&model).unwrap();
        let plain_pack = self.path("plain.safetensors");
        feature_pack(&plain_pack, &CLASSES, 6, FRAMES, plain);
        let huge_pack = self.path("huge.safetensors");
        feature_pack(&huge_pack, &CLASSES, 6, FRAMES, huge);
        (model, plain_pack, huge_pack)
    }
}

// 1. A non-finite result is scored as correct.

#[test]
fn non_finite_logits_are_never_hits_in_eval() {
    let f = Files::new();
    let (model, _, huge_pack) = f.model_and_packs();
    for device in ["cpu", "gpu:0"] {
        let args = [
            "eval",
            "--model",
            s(&model),
            "--data",
            s(&huge_pack),
            "--device",
            device,
        ];
        let (out, err) = fails(&[&args[..], &["--json"]].concat());
        let report: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
        assert_eq!(
            report["loss"],
            serde_json::Value::Null,
            "{device}: {report}"
        );
        assert_eq!(report["top1"], 0.0, "{device}: {report}");
        assert_eq!(report["topk"], 0.0, "{device}: {report}");
        assert_eq!(report["non_finite_clips"], 6, "{device}: {report}");
        for row in report["per_class"].as_array().unwrap() {
            assert_eq!(row["correct"], 0, "{device}: {report}");
        }
        assert!(err.contains("non-finite"), "{device}: {err}");
        let (out, _) = fails(&args);
        assert!(out.contains("loss NaN (non-finite"), "{device}: {out}");
        assert!(out.contains("top-1 0.00%"), "{device}: {out}");
    }
}

#[test]
fn predict_never_prints_a_non_finite_probability() {
    let f = Files::new();
    let (model, plain_pack, huge_pack) = f.model_and_packs();
    let args = ["predict", "--model", s(&model), "--device", "cpu"];
    let (out, err) = fails(&[&args[..], &["--input", s(&huge_pack)]].concat());
    assert!(!out.to_lowercase().contains("nan"), "{out}");
    assert!(out.contains("not finite"), "{out}");
    assert!(err.contains("6 of 6 clips"), "{err}");
    let (out, _) = fails(&[&args[..], &["--input", s(&huge_pack), "--json"]].concat());
    let clips: serde_json::Value = serde_json::from_str(&out).unwrap();
    for clip in clips.as_array().unwrap() {
        assert_eq!(clip["finite"], false, "{clip}");
        assert_eq!(clip["top"].as_array().unwrap().len(), 0, "{clip}");
    }
    let (out, _) = ok(&[&args[..], &["--input", s(&plain_pack)]].concat());
    assert!(!out.contains("not finite"), "{out}");
}

#[test]
fn a_non_finite_validation_never_becomes_the_best_epoch() {
    let f = Files::new();
    let (_, plain_pack, huge_pack) = f.model_and_packs();
    let run = f.path("run");
    let mut args = vec![
        "train",
        "--data",
        s(&plain_pack),
        "--val",
        s(&huge_pack),
        "--out",
        s(&run),
        "--device",
        "cpu",
        "--epochs",
        "3",
        "--batch-size",
        "3",
        "--patience",
        "2",
    ];
    args.extend(TINY_MODEL);
    let (_, err) = ok(&args);
    assert!(err.contains("non-finite"), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "epoch")
        .collect();
    // Two epochs without an improvement stop the run: the first counts as none either.
    assert_eq!(epochs.len(), 2, "{metrics}");
    for e in &epochs {
        assert_eq!(e["val_loss"], serde_json::Value::Null, "{e}");
        assert_eq!(e["val_top1"], 0.0, "{e}");
    }
    assert!(!run.join("best.safetensors").exists());
}

// 2. Checkpoint validation.

#[test]
fn a_checkpoint_with_a_non_finite_weight_is_refused_naming_the_tensor() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let mut ckpt = tiny_checkpoint(&CLASSES);
    let name = "encoder.layers.0.linear1.weight";
    ckpt.tensors.get_mut(name).unwrap().1[3] = f32::NAN;
    ckpt.tensors.get_mut("classifier.bias").unwrap().1[0] = f32::INFINITY;
    let bad = f.path("nan.safetensors");
    ckpt.save(&bad).unwrap();
    for command in ["eval", "predict"] {
        let input = if command == "eval" {
            "--data"
        } else {
            "--input"
        };
        let (_, err) = fails(&[
            command,
            "--model",
            s(&bad),
            input,
            s(&plain_pack),
            "--device",
            "cpu",
        ]);
        assert!(err.contains("nan.safetensors"), "{err}");
        assert!(err.contains(name) && err.contains("NaN"), "{err}");
        assert!(
            err.contains("classifier.bias") && err.contains("inf"),
            "{err}"
        );
    }
}

#[test]
fn a_checkpoint_of_an_unknown_layout_is_refused() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let mut ckpt = tiny_checkpoint(&CLASSES);
    ckpt.preprocessing.layout = "mediapipe-pose-99".into();
    let bad = f.path("layout.safetensors");
    ckpt.save(&bad).unwrap();
    let (_, err) = fails(&[
        "eval",
        "--model",
        s(&bad),
        "--data",
        s(&plain_pack),
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("layout") && err.contains("mediapipe-pose-99"),
        "{err}"
    );
    assert!(err.contains("features"), "{err}");
}

/// A finished tiny run on the plain pack of [`Files::model_and_packs`].
fn finished_run(f: &Files, plain_pack: &Path) -> PathBuf {
    let run = f.path("run");
    let mut args = vec![
        "train",
        "--data",
        s(plain_pack),
        "--out",
        s(&run),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        "3",
    ];
    args.extend(TINY_MODEL);
    ok(&args);
    run
}

#[test]
fn packs_and_states_given_as_a_model_say_what_they_are() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let clips = f.path("clips.safetensors");
    ok(&[
        "data",
        "synth",
        "--classes",
        "3",
        "--clips",
        "2",
        "--frames",
        "8",
        "--output",
        s(&clips),
    ]);
    let run = finished_run(&f, &plain_pack);
    let state = run.join("state.safetensors");
    for (file, what) in [
        (&clips, "a clip pack"),
        (&plain_pack, "a feature pack"),
        (&state, "a training state"),
    ] {
        let (_, err) = fails(&[
            "predict",
            "--model",
            s(file),
            "--input",
            s(&plain_pack),
            "--device",
            "cpu",
        ]);
        assert!(err.contains(s(file)), "{err}");
        assert!(
            err.contains(&format!("{what}, not a model checkpoint")),
            "{err}"
        );
        assert!(!err.contains("out of range"), "{err}");
    }
}

#[test]
fn a_corrupted_optimizer_state_is_refused_at_resume() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let run = finished_run(&f, &plain_pack);
    let path = run.join("state.safetensors");
    let mut state = TrainingState::load(&path).unwrap();
    state.exp_avg_sq[5] = f32::NAN;
    state.save(&path).unwrap();
    let (_, err) = fails(&["train", "--resume", s(&run), "--device", "cpu"]);
    assert!(err.contains("state.safetensors"), "{err}");
    assert!(err.contains("exp_avg_sq") && err.contains("NaN"), "{err}");
    assert!(!err.contains("diverged"), "{err}");
}

// 3. Unclear messages.

#[test]
fn a_feature_pack_longer_than_the_model_is_named() {
    let f = Files::new();
    let (model, _, _) = f.model_and_packs();
    let long = f.path("long.safetensors");
    feature_pack(&long, &CLASSES, 3, FRAMES + 4, plain);
    for command in ["eval", "predict"] {
        let input = if command == "eval" {
            "--data"
        } else {
            "--input"
        };
        let (_, err) = fails(&[
            command,
            "--model",
            s(&model),
            input,
            s(&long),
            "--device",
            "cpu",
        ]);
        assert!(err.contains("long.safetensors"), "{err}");
        assert!(err.contains("feature pack has 12 frames"), "{err}");
        assert!(err.contains("max_seq_len 8"), "{err}");
        assert!(!err.contains("workspace"), "{err}");
    }
}

#[test]
fn a_validation_pack_of_other_classes_names_them() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let other = f.path("other.safetensors");
    feature_pack(&other, &["apple", "banana", "durian"], 3, FRAMES, plain);
    let mut args = vec![
        "train",
        "--data",
        s(&plain_pack),
        "--val",
        s(&other),
        "--device",
        "cpu",
        "--epochs",
        "1",
    ];
    args.extend(TINY_MODEL);
    let (_, err) = fails(&args);
    assert!(err.contains("other.safetensors"), "{err}");
    assert!(err.contains("durian") && err.contains("cherry"), "{err}");
}

#[test]
fn an_unknown_model_field_in_a_config_is_named() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let config = f.path("config.json");
    std::fs::write(&config, r#"{"num_epochs": 1, "model": {"d_modle": 16}}"#).unwrap();
    let (_, err) = fails(&[
        "train",
        "--data",
        s(&plain_pack),
        "--config",
        s(&config),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("`model`") && err.contains("d_modle"), "{err}");
    assert!(!err.contains("out of range"), "{err}");
}

#[test]
fn messages_hold_no_rust_debug_text() {
    let f = Files::new();
    let (_, plain_pack, _) = f.model_and_packs();
    let run = finished_run(&f, &plain_pack);
    let other = f.path("other.safetensors");
    feature_pack(&other, &CLASSES, 3, FRAMES, plain);
    let (_, err) = fails(&[
        "train",
        "--resume",
        s(&run),
        "--data",
        s(&other),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("other.safetensors"), "{err}");
    assert!(!err.contains("Some("), "{err}");
    std::fs::copy(&plain_pack, run.join("state.safetensors")).unwrap();
    let (_, err) = fails(&["train", "--resume", s(&run), "--device", "cpu"]);
    assert!(err.contains("signflow-features/1"), "{err}");
    assert!(!err.contains("Some(") && !err.contains("None"), "{err}");
}

#[test]
fn class_names_reach_the_terminal_escaped() {
    let f = Files::new();
    let classes = ["\x1b[31mred\x1b[0m", "line\nbreak", "plain"];
    let model = f.path("model.safetensors");
    tiny_checkpoint(&classes).save(&model).unwrap();
    let pack = f.path("pack.safetensors");
    feature_pack(&pack, &classes, 3, FRAMES, plain);
    let (eval, _) = ok(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&pack),
        "--device",
        "cpu",
    ]);
    let (predict, _) = ok(&[
        "predict",
        "--model",
        s(&model),
        "--input",
        s(&pack),
        "--device",
        "cpu",
    ]);
    for out in [eval, predict] {
        assert!(
            !out.contains('\x1b') && !out.contains("line\nbreak"),
            "{out:?}"
        );
        assert!(out.contains(r"\u{1b}[31mred"), "{out}");
    }
    let other = f.path("other.safetensors");
    feature_pack(&other, &["\x1b[2Jwipe", "b", "c"], 3, FRAMES, plain);
    let (_, err) = fails(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&other),
        "--device",
        "cpu",
    ]);
    assert!(!err.contains('\x1b'), "{err:?}");
}

// 4. Silently ignored flags.

#[test]
fn model_size_flags_that_differ_from_the_init_checkpoint_are_refused() {
    let f = Files::new();
    let (model, plain_pack, _) = f.model_and_packs();
    let base = [
        "train",
        "--data",
        s(&plain_pack),
        "--init",
        s(&model),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        "3",
    ];
    for (flag, value) in [
        ("--d-model", "64"),
        ("--num-heads", "4"),
        ("--num-layers", "2"),
        ("--ff-dim", "64"),
        ("--max-seq-len", "16"),
    ] {
        let (_, err) = fails(&[&base[..], &[flag, value]].concat());
        assert!(err.contains(flag) && err.contains(value), "{err}");
        assert!(err.contains("model.safetensors"), "{err}");
    }
    // The checkpoint's own sizes are no change; dropout may change, and says so.
    let (_, err) = ok(&[&base[..], &TINY_MODEL[..], &["--dropout", "0.25"]].concat());
    assert!(err.contains("dropout 0.25"), "{err}");
    assert!(err.contains("0.1"), "{err}");
}

#[test]
fn flags_without_effect_are_refused() {
    let f = Files::new();
    let (model, plain_pack, _) = f.model_and_packs();
    let m = s(&model);
    let p = s(&plain_pack);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["predict", "--model", m, "--input", p, "--top-k", "0"],
            "--top-k",
        ),
        (
            vec!["predict", "--model", m, "--input", p, "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec!["eval", "--model", m, "--data", p, "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec!["bench", "--device", "cpu", "--filter", "no-such-case"],
            "no-such-case",
        ),
        (
            vec!["bench", "--device", "cpu", "--samples", "0"],
            "--samples",
        ),
    ];
    for (args, named) in cases {
        let out = signflow(&args);
        let err = stderr(&out);
        // clap refuses with status 2, the commands themselves with 1.
        assert!(matches!(out.status.code(), Some(1 | 2)), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
    let mut train = vec!["train", "--data", p, "--device", "cpu", "--epochs", "1"];
    train.extend(TINY_MODEL);
    let (_, err) = fails(&[&train[..], &["--mirror"]].concat());
    assert!(
        err.contains("--mirror") && err.contains("--augment"),
        "{err}"
    );
    let (_, err) = fails(&[&train[..], &["--augment", "default"]].concat());
    assert!(
        err.contains("feature pack") && err.contains("--augment"),
        "{err}"
    );
    let warmup = ["--warmup-steps", "5", "--warmup-ratio", "0.1"];
    let (_, err) = fails(&[&train[..], &warmup[..]].concat());
    assert!(
        err.contains("--warmup-ratio") && err.contains("--warmup-steps"),
        "{err}"
    );
    // Settings the data decides, or that need a validation set, say that they have no effect.
    let config = f.path("config.json");
    std::fs::write(&config, r#"{"model": {"num_classes": 7}}"#).unwrap();
    let said = [&train[..], &["--config", s(&config), "--min-delta", "0.1"]].concat();
    let (_, err) = ok(&said);
    assert!(
        err.contains("`model.num_classes` 7") && err.contains("data's 3"),
        "{err}"
    );
    assert!(err.contains("--min-delta"), "{err}");
}
