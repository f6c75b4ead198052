//! The inference pipeline as a service uses it: one pipeline shared by several threads, a
//! chosen preprocessing length, a confidence threshold, and the memory guard of `AnyBackend`.

use std::process::Command;

use signflow::data::packs::{FRAME_WIDTH, LAYOUT_258};
use signflow::data::synth_clips;
use signflow::infer::{InferencePipeline, Prediction};
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::{Adapters, AnyBackend, Backend, CpuBackend, DType, Error, GpuBackend, GpuConfig};

const SEQ_LEN: usize = 12;

fn checkpoint() -> Checkpoint {
    let config = ModelConfig {
        num_classes: 4,
        d_model: 16,
        num_heads: 2,
        num_layers: 1,
        ff_dim: 32,
        max_seq_len: SEQ_LEN,
        ..ModelConfig::default()
    };
    let preprocessing = Preprocessing {
        seq_len: SEQ_LEN,
        layout: LAYOUT_258.into(),
    };
    let classes = ["a", "b", "c", "d"].map(String::from).to_vec();
    Checkpoint::initial(config, classes, preprocessing, 5).unwrap()
}

/// Raw clips of several lengths.
fn clips() -> Vec<Vec<f32>> {
    let pack = synth_clips(4, 3, 20, 9);
    (0..pack.len()).map(|i| pack.clip(i).to_vec()).collect()
}

fn predict_all<B: Backend>(
    pipeline: &InferencePipeline<'_, B>,
    clips: &[Vec<f32>],
) -> Vec<Prediction> {
    clips
        .iter()
        .map(|c| pipeline.predict_frames(c, FRAME_WIDTH, 3).unwrap())
        .collect()
}

/// Four threads predicting with one pipeline get what one thread gets.
fn shared_by_threads<B: Backend + Sync>(b: &B) {
    let pipeline = InferencePipeline::from_checkpoint(b, &checkpoint()).unwrap();
    let clips = clips();
    let alone = predict_all(&pipeline, &clips);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| predict_all(&pipeline, &clips)))
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), alone);
        }
    });
}

#[test]
fn one_pipeline_serves_four_threads_on_the_cpu() {
    shared_by_threads(&CpuBackend::new(&GpuConfig::default()).unwrap());
}

#[test]
fn one_pipeline_serves_four_threads_on_the_gpu() {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter (install mesa-vulkan-drivers)");
    shared_by_threads(&GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap());
}

#[test]
fn the_preprocessing_length_is_chosen_within_the_model() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let clip = &clips()[0];
    let full = InferencePipeline::from_checkpoint(&b, &checkpoint()).unwrap();
    let short = InferencePipeline::from_checkpoint(&b, &checkpoint())
        .unwrap()
        .with_seq_len(5)
        .unwrap();
    assert_eq!(short.preprocessing().seq_len, 5);
    assert_ne!(
        short.frames_logits(clip, FRAME_WIDTH).unwrap(),
        full.frames_logits(clip, FRAME_WIDTH).unwrap()
    );
    for bad in [0, SEQ_LEN + 1] {
        let pipeline = InferencePipeline::from_checkpoint(&b, &checkpoint()).unwrap();
        assert!(matches!(
            pipeline.with_seq_len(bad),
            Err(Error::InvalidConfig {
                field: "seq_len",
                ..
            })
        ));
    }
}

#[test]
fn a_low_confidence_answer_is_unknown() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let pipeline = InferencePipeline::from_checkpoint(&b, &checkpoint()).unwrap();
    let p = pipeline
        .predict_frames(&clips()[0], FRAME_WIDTH, 2)
        .unwrap();
    let best = p.top[0].probability;
    assert!(!p.clone().with_min_prob(best).unknown);
    let unsure = p.clone().with_min_prob(best + 1e-3);
    assert!(unsure.unknown);
    assert_eq!(
        unsure.top, p.top,
        "an unknown answer still ranks the classes"
    );
}

#[test]
fn the_memory_guard_of_any_backend_empties_its_cache() {
    for device in ["cpu", "gpu:0"] {
        let backend = AnyBackend::open(&GpuConfig {
            device: device.into(),
            ..GpuConfig::default()
        })
        .unwrap();
        let reserved = || signflow::with_backend!(&backend, b => b.memory_stats().reserved_bytes);
        {
            let _guard = backend.memory_guard();
            signflow::with_backend!(&backend, b => {
                drop(b.alloc(&[1 << 16], DType::F32).unwrap());
            });
            assert!(reserved() > 0, "{device}: the freed block stays cached");
        }
        assert_eq!(reserved(), 0, "{device}: the guard handed the cache back");
    }
}

#[test]
fn predict_takes_a_confidence_threshold_and_a_length() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    checkpoint().save(&model).unwrap();
    let pack = dir.path().join("clips.safetensors");
    synth_clips(4, 1, 20, 9).save(&pack).unwrap();
    let predict = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
            .args(["predict", "--device", "cpu", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&pack)
            .args(extra)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = predict(&["--min-prob", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.matches("unknown").count(), 4, "{text}");
    let (code, text) = predict(&["--min-prob", "0"]);
    assert_eq!((code, text.contains("unknown")), (Some(0), false), "{text}");
    let (code, text) = predict(&["--seq-len", "6"]);
    assert_eq!(code, Some(0), "{text}");
    for bad in [
        &["--min-prob", "1.5"][..],
        &["--seq-len", "0"],
        &["--seq-len", "13"],
    ] {
        let (code, text) = predict(bad);
        assert_ne!(code, Some(0), "{bad:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        let flag = &bad[0][2..];
        assert!(
            text.contains(flag) || text.contains(&flag.replace('-', "_")),
            "{bad:?}: {text}"
        );
    }
}

#[test]
fn profile_reports_times_and_memory_of_a_prediction_and_a_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    checkpoint().save(&model).unwrap();
    let profile = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
            .args(["profile", "--iterations", "3", "--model"])
            .arg(&model)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            err,
        )
    };
    for (device, train) in [("cpu", false), ("cpu", true), ("gpu:0", false)] {
        let mut args = vec!["--device", device, "--batch-size", "3", "--json"];
        if train {
            args.push("--train");
        }
        let (code, out, err) = profile(&args);
        assert_eq!(code, Some(0), "{err}");
        let p: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mode = if train { "train_step" } else { "predict" };
        assert_eq!(
            (&p["mode"], &p["dtype"]),
            (&mode.into(), &"f32".into()),
            "{p}"
        );
        assert_eq!(
            (p["batch"].as_u64(), p["seq"].as_u64()),
            (Some(3), Some(12))
        );
        let timer = if device == "cpu" {
            "wall_clock"
        } else {
            "device"
        };
        assert_eq!(p["timer"], timer, "{p}");
        let ms = |k: &str| p[k].as_f64().unwrap();
        assert!(
            0.0 < ms("median_ms") && ms("median_ms") <= ms("p95_ms"),
            "{p}"
        );
        assert!(
            ms("samples_per_s") > 0.0 && ms("peak_mb") > 0.0 && ms("wall_median_ms") > 0.0,
            "{p}"
        );
    }
    // Half precision: the prediction in f16 storage, and a mixed-precision training step.
    let (code, out, err) = profile(&["--device", "cpu", "--precision", "f16", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&p["mode"], &p["dtype"]),
        (&"predict".into(), &"f16".into()),
        "{p}"
    );
    let (code, out, err) = profile(&[
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--train",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&p["mode"], &p["dtype"]),
        (&"train_step".into(), &"bf16".into()),
        "{p}"
    );
    let (code, _, err) = profile(&["--device", "cpu", "--seq-len", "13"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("seq_len = 13"), "{err}");
    // The sizes from a config file's `model` object instead.
    let config = dir.path().join("config.json");
    let sizes = r#"{"model": {"d_model": 16, "num_heads": 2, "num_layers": 1, "max_seq_len": 10}}"#;
    std::fs::write(&config, sizes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_signflow"))
        .args([
            "profile",
            "--device",
            "cpu",
            "--iterations",
            "2",
            "--json",
            "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["seq"].as_u64(), Some(10), "{p}");
}

/// Under a memory limit, the batch found runs and one twice as large does not.
fn the_batch_found_fits<B: Backend>(b: &B) {
    let config = checkpoint().config;
    for train in [false, true] {
        let found = signflow::profile::optimal_batch_size(
            b,
            &config,
            SEQ_LEN,
            train,
            DType::F32,
            (1, 4096),
        )
        .unwrap();
        assert!(found.batch_size > 1 && found.batch_size < 4096, "{found:?}");
        let run = |batch_size| {
            let settings = signflow::profile::ProfileSettings {
                batch_size,
                seq_len: SEQ_LEN,
                iterations: 1,
                warmup: 0,
                train,
                precision: DType::F32,
            };
            signflow::profile::profile_model(b, &config, &settings, 0)
        };
        run(found.batch_size).unwrap();
        assert!(matches!(
            run(2 * found.batch_size),
            Err(Error::OutOfMemory { .. })
        ));
    }
}

#[test]
fn the_batch_size_search_finds_one_that_fits_on_the_cpu_and_the_gpu() {
    let limited = |device: &str| GpuConfig {
        device: device.into(),
        memory_limit_mb: Some(4),
        ..GpuConfig::default()
    };
    the_batch_found_fits(&CpuBackend::new(&limited("cpu")).unwrap());
    let adapters = Adapters::discover();
    let (adapter, info) = adapters.adapter(0).expect("no GPU adapter");
    the_batch_found_fits(&GpuBackend::new(adapter, info.clone(), &limited("gpu:0")).unwrap());
}

#[test]
fn a_training_run_out_of_memory_names_a_batch_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("clips.safetensors");
    synth_clips(3, 4, 20, 2).save(&pack).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_signflow"))
            .args([
                "train",
                "--device",
                "cpu",
                "--epochs",
                "1",
                "--memory-limit-mb",
                "90",
            ])
            .arg("--data")
            .arg(&pack)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), err)
    };
    let (code, err) = train("big", &["--batch-size", "12"]);
    assert_eq!(code, Some(1), "{err}");
    let advice = err
        .split("train with ")
        .nth(1)
        .unwrap_or_else(|| panic!("no advice in: {err}"));
    let words: Vec<&str> = advice.split_whitespace().take(4).collect();
    assert_eq!(
        (words[0], words[2]),
        ("--batch-size", "--grad-accum"),
        "{err}"
    );
    let (code, err) = train("fits", &words);
    assert_eq!(code, Some(0), "the advised {words:?} did not fit: {err}");
}
