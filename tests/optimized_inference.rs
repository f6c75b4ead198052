//! `InferencePipeline::optimize_for_inference`: predictions the same to the bit as the plain
//! pipeline's, at several batch sizes and with ragged masks, each from its own inputs, with a
//! bounded number of planned shapes, and from several threads at once; and the profile of a
//! whole pipeline call.

use signflow::data::Batch;
use signflow::infer::{InferencePipeline, MAX_PLANS};
use signflow::model::{Checkpoint, ModelConfig, Preprocessing};
use signflow::profile::{profile_pipeline, ProfileSettings};
use signflow::{Adapters, Backend, CpuBackend, DType, Error, GpuBackend, GpuConfig};

const SEQ: usize = 10;
const FEATURES: usize = 7;

fn checkpoint() -> Checkpoint {
    let config = ModelConfig {
        num_features: FEATURES,
        num_classes: 5,
        d_model: 16,
        num_heads: 2,
        num_layers: 2,
        ff_dim: 24,
        max_seq_len: SEQ,
        ..ModelConfig::default()
    };
    let preprocessing = Preprocessing {
        seq_len: SEQ,
        layout: "features".into(),
    };
    let classes = (0..5).map(|i| i.to_string()).collect();
    Checkpoint::initial(config, classes, preprocessing, 3).unwrap()
}

fn gpu() -> GpuBackend {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter (install mesa-vulkan-drivers)");
    GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap()
}

/// `batch` clips of `seq` frames drawn from `seed`, clip i with `seq - (i + seed) % seq` real
/// frames (ragged masks, never empty).
fn clips(batch: usize, seq: usize, seed: u64) -> Batch {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let features = (0..batch * seq * FEATURES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    let mask = (0..batch)
        .flat_map(|i| {
            let real = seq - (i + seed as usize) % seq;
            (0..seq).map(move |s| if s < real { 1.0 } else { 0.0 })
        })
        .collect();
    Batch {
        features,
        mask,
        labels: vec![0; batch],
        batch,
        seq,
        num_features: FEATURES,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn logits<B: Backend>(p: &InferencePipeline<'_, B>, batch: &Batch) -> Vec<u32> {
    let ids: Vec<usize> = (0..batch.batch).collect();
    bits(&p.logits(batch, &ids).unwrap())
}

/// Two different inputs in turn at each batch size, three times over: the optimized pipeline
/// answers each with the plain pipeline's bits, so a replay that kept an earlier input, an
/// earlier output, or another shape's buffers would show. The optimized pipeline is made
/// before its precision is set, so plans of another precision would show too.
fn same_bits_as_the_plain_pipeline<B: Backend>(b: &B, dtype: DType) {
    let ckpt = checkpoint();
    let plain = InferencePipeline::from_checkpoint(b, &ckpt)
        .unwrap()
        .with_precision(dtype)
        .unwrap();
    let fast = InferencePipeline::from_checkpoint(b, &ckpt)
        .unwrap()
        .optimize_for_inference()
        .unwrap();
    logits(&fast, &clips(1, SEQ, 3));
    let fast = fast.with_precision(dtype).unwrap();
    for (batch, seq) in [(1, SEQ), (3, SEQ), (2, 4), (1, SEQ)] {
        let inputs = [clips(batch, seq, 1), clips(batch, seq, 2)];
        let expected = inputs.each_ref().map(|x| logits(&plain, x));
        assert_ne!(expected[0], expected[1], "the two inputs differ");
        for round in 0..3 {
            for (x, want) in inputs.iter().zip(&expected) {
                assert_eq!(
                    &logits(&fast, x),
                    want,
                    "batch {batch} × {seq}, round {round}"
                );
            }
        }
    }
    assert_eq!(fast.optimized_shapes(), [(3, SEQ), (2, 4), (1, SEQ)]);
    assert!(plain.optimized_shapes().is_empty());
}

#[test]
fn optimized_predictions_are_the_plain_ones_to_the_bit_on_the_cpu() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    for dtype in DType::ALL {
        same_bits_as_the_plain_pipeline(&b, dtype);
    }
}

#[test]
fn optimized_predictions_are_the_plain_ones_to_the_bit_on_the_gpu() {
    same_bits_as_the_plain_pipeline(&gpu(), DType::F32);
}

#[test]
fn the_least_recently_used_shape_is_forgotten_past_the_bound() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let ckpt = checkpoint();
    let plain = InferencePipeline::from_checkpoint(&b, &ckpt).unwrap();
    let fast = InferencePipeline::from_checkpoint(&b, &ckpt)
        .unwrap()
        .optimize_for_inference()
        .unwrap();
    let sizes: Vec<usize> = (1..=MAX_PLANS + 2).collect();
    for &batch in &sizes {
        logits(&fast, &clips(batch, SEQ, 4));
    }
    let kept: Vec<(usize, usize)> = sizes[2..].iter().map(|&n| (n, SEQ)).collect();
    assert_eq!(fast.optimized_shapes(), kept);
    // A forgotten shape is planned again, now the most recent.
    let x = clips(1, SEQ, 5);
    assert_eq!(logits(&fast, &x), logits(&plain, &x));
    assert_eq!(fast.optimized_shapes().last(), Some(&(1, SEQ)));
    assert_eq!(fast.optimized_shapes().len(), MAX_PLANS);
}

/// Threads that share an optimized pipeline each get their own clips' answers, whether they
/// find a shape's plan free (a replay) or busy (the plain path).
fn shared_by_threads<B: Backend>(b: &B) {
    let ckpt = checkpoint();
    let plain = InferencePipeline::from_checkpoint(b, &ckpt).unwrap();
    let fast = InferencePipeline::from_checkpoint(b, &ckpt)
        .unwrap()
        .optimize_for_inference()
        .unwrap();
    let inputs: Vec<Batch> = (0..4).map(|seed| clips(2, SEQ, seed)).collect();
    let expected: Vec<Vec<u32>> = inputs.iter().map(|x| logits(&plain, x)).collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (fast, inputs, expected) = (&fast, &inputs, &expected);
            scope.spawn(move || {
                for i in 0..8 {
                    let k = (t + i) % inputs.len();
                    assert_eq!(
                        logits(fast, &inputs[k]),
                        expected[k],
                        "thread {t}, call {i}"
                    );
                }
            });
        }
    });
}

#[test]
fn threads_share_an_optimized_pipeline_on_the_cpu() {
    shared_by_threads(&CpuBackend::new(&GpuConfig::default()).unwrap());
}

#[test]
fn threads_share_an_optimized_pipeline_on_the_gpu() {
    shared_by_threads(&gpu());
}

/// `signflow profile --pipeline` and `--optimized` time whole pipeline calls; neither profiles
/// a training step.
#[test]
fn profile_times_a_whole_pipeline_call_plain_or_optimized() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    checkpoint().save(&model).unwrap();
    let profile = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_signflow"))
            .args(["profile", "--device", "cpu", "--iterations", "2", "--json"])
            .arg("--model")
            .arg(&model)
            .args(extra)
            .output()
            .unwrap()
    };
    for flag in ["--pipeline", "--optimized"] {
        let out = profile(&[flag, "--batch-size", "2"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{flag}: {err}");
        let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(p["batch"].as_u64(), Some(2), "{p}");
        assert_eq!(p["mode"], "predict", "{p}");
        assert!(p["median_ms"].as_f64().unwrap() > 0.0, "{p}");
    }
    let out = profile(&["--optimized", "--train"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && err.contains("--train"),
        "{err}"
    );
}

#[test]
fn profile_pipeline_refuses_a_training_step() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let settings = ProfileSettings {
        batch_size: 1,
        seq_len: SEQ,
        iterations: 1,
        warmup: 0,
        train: true,
        precision: DType::F32,
    };
    let config = checkpoint().config;
    for optimized in [false, true] {
        assert!(matches!(
            profile_pipeline(&b, &config, &settings, optimized, 0),
            Err(Error::InvalidConfig { field: "train", .. })
        ));
    }
}
