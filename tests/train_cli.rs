//! The training path through the command line: synth, import, train, eval, predict, on the
//! CPU and on the GPU adapter (lavapipe without a GPU).

mod cli_support;

use cli_support::{ok, signflow, TINY_MODEL};
use std::path::Path;

fn fails(args: &[&str]) -> String {
    let out = signflow(args);
    assert!(!out.status.success(), "signflow {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn train(dir: &Path, device: &str, extra: &[&str]) {
    let pack = dir.join("synth.safetensors");
    let out = dir.join(format!("run-{device}"));
    let mut args = vec![
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--split",
        "random:0.25",
        "--out",
        out.to_str().unwrap(),
        "--device",
        device,
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--log-every",
        "1",
    ];
    args.extend(TINY_MODEL);
    args.extend(extra);
    ok(&args);
}

#[test]
fn synth_train_eval_predict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pack = d.join("synth.safetensors");
    ok(&[
        "data",
        "synth",
        "--classes",
        "3",
        "--clips",
        "8",
        "--frames",
        "12",
        "-o",
        pack.to_str().unwrap(),
    ]);
    train(d, "cpu", &[]);
    let run = d.join("run-cpu");
    for f in [
        "best.safetensors",
        "final.safetensors",
        "state.safetensors",
        "metrics.jsonl",
        "curves.svg",
        "config.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2);
    for key in [
        "train_loss",
        "val_loss",
        "val_top1",
        "val_top5",
        "samples_per_s",
        "peak_mb",
        "seconds",
    ] {
        assert!(epochs[1][key].is_number(), "{key} in {}", epochs[1]);
    }

    let model = run.join("best.safetensors");
    let eval: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        pack.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]))
    .unwrap();
    assert_eq!(eval["clips"], 24);
    assert_eq!(eval["per_class"].as_array().unwrap().len(), 3);

    let probs = d.join("pred.safetensors");
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        pack.to_str().unwrap(),
        "--device",
        "cpu",
        "--top-k",
        "2",
        "--json",
        "--output",
        probs.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 24);
    assert_eq!(json[0]["top"].as_array().unwrap().len(), 2);
    let bytes = std::fs::read(&probs).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("logits").unwrap().shape(), &[24, 3]);
    let p: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("probs").unwrap().data());
    assert!((p[..3].iter().sum::<f32>() - 1.0).abs() < 1e-5);

    // A pack of other classes is refused rather than scored.
    let other = d.join("other.safetensors");
    ok(&[
        "data",
        "synth",
        "--classes",
        "4",
        "--clips",
        "2",
        "-o",
        other.to_str().unwrap(),
    ]);
    let err = fails(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("not the model's"), "{err}");

    // A finished run resumes to nothing new; flags that would change it, or a fresh run into
    // its directory, are refused.
    let run_s = run.to_str().unwrap();
    ok(&["train", "--resume", run_s, "--device", "cpu"]);
    let err = fails(&["train", "--resume", run_s, "--epochs", "5"]);
    assert!(err.contains("--epochs"), "{err}");
    let err = fails(&["train", "--resume", run_s, "--split", "random:0.5"]);
    assert!(err.contains("split"), "{err}");
    let err = fails(&[
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--out",
        run_s,
        "--device",
        "cpu",
    ]);
    assert!(err.contains("--resume"), "{err}");

    // Fine-tuning from the checkpoint on the GPU adapter.
    train(d, "gpu:0", &["--init", model.to_str().unwrap()]);
    assert!(d.join("run-gpu:0").join("final.safetensors").exists());
}

#[test]
fn import_mp_data_then_predict_a_sequence_folder() {
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mp_data_sample/MP_Data");
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("mp.safetensors");
    ok(&[
        "data",
        "import",
        sample.to_str().unwrap(),
        "-o",
        pack.to_str().unwrap(),
        "--group",
        "sample",
    ]);
    let out = dir.path().join("run");
    let mut args = vec![
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ];
    args.extend(TINY_MODEL);
    ok(&args);
    let model = out.join("final.safetensors");
    let text = ok(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        "--input",
        sample.join("water/1").to_str().unwrap(),
        "--device",
        "cpu",
        "--top-k",
        "3",
    ]);
    assert!(
        text.starts_with("clip 0: ") && text.contains("hello"),
        "{text}"
    );
}

#[test]
fn bad_requests_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("p.safetensors");
    ok(&[
        "data",
        "synth",
        "--classes",
        "2",
        "--clips",
        "3",
        "-o",
        pack.to_str().unwrap(),
    ]);
    let err = fails(&[
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--amp",
        "fp16",
        "--device",
        "cpu",
    ]);
    assert!(
        err.contains("amp = fp16") && err.contains("none, f16"),
        "{err}"
    );
    let err = fails(&[
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--split",
        "group:nobody",
        "--device",
        "cpu",
    ]);
    assert!(err.contains("nobody"), "{err}");
    let err = fails(&[
        "train",
        "--data",
        pack.to_str().unwrap(),
        "--num-heads",
        "3",
        "--d-model",
        "16",
        "--device",
        "cpu",
        "--epochs",
        "1",
    ]);
    assert!(err.contains("num_heads"), "{err}");
    let err = fails(&[
        "predict",
        "--model",
        pack.to_str().unwrap(),
        "--input",
        pack.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(err.contains("checkpoint"), "{err}");
}
