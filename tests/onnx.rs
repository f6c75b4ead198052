//! ONNX export checked by an independent runtime: every exported graph runs in tract (a pure
//! Rust ONNX runtime) and gives the f64 reference's logits within 1e-4 relative, for fresh
//! models of several shapes, ragged masks and batches of 1 and 7; export then load gives
//! bit-identical logits on the CPU and on the GPU adapter (lavapipe without a GPU); files
//! that are not SignFlow's are refused with what differs; and `signflow predict` gives the
//! same logits from the `.onnx` as from the `.safetensors`.

mod cli_support;
use cli_support::{signflow, succeeds};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use prost::Message;
use rand::{Rng, SeedableRng};
use signflow::data::Batch;
use signflow::export::onnx_proto::{ModelProto, NodeProto};
use signflow::export::{from_onnx_bytes, to_onnx, ExportOptions, Precision, OPSETS};
use signflow::infer::InferencePipeline;
use signflow::model::checkpoint::FEATURES_LAYOUT;
use signflow::model::{Checkpoint, ModelConfig, Preprocessing, SignTransformer};
use signflow::reference;
use signflow::tolerance::Deviation;
use signflow::{Adapters, Backend, CpuBackend, DropoutKey, GpuBackend, GpuConfig, MatmulSpec};
use tract_onnx::prelude::*;

/// Tract's logits against the f64 reference's, relative to their largest magnitude.
const TRACT_REL: f64 = 1e-4;

fn config(
    d_model: usize,
    num_heads: usize,
    num_layers: usize,
    ff_dim: usize,
    num_classes: usize,
    num_features: usize,
    max_seq_len: usize,
) -> ModelConfig {
    ModelConfig {
        num_features,
        num_classes,
        d_model,
        num_heads,
        num_layers,
        ff_dim,
        max_seq_len,
        dropout: 0.1,
        layer_norm_eps: 1e-5,
    }
}

/// A fresh model whose every parameter is moved off its initial value (biases start at 0 and
/// norms at 1, which would hide a missing bias or a swapped norm).
fn checkpoint(cfg: ModelConfig, seq_len: usize, seed: u64) -> Checkpoint {
    let cpu = CpuBackend::new(&GpuConfig::default()).unwrap();
    let model = SignTransformer::new(&cpu, cfg.clone(), seed).unwrap();
    let classes = (0..cfg.num_classes).map(|i| format!("sign {i}")).collect();
    let preprocessing = Preprocessing {
        seq_len,
        layout: FEATURES_LAYOUT.into(),
    };
    let mut ckpt = Checkpoint::from_model(&model, classes, preprocessing).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    for (_, values) in ckpt.tensors.values_mut() {
        values
            .iter_mut()
            .for_each(|v| *v += rng.random_range(-0.1..0.1));
    }
    ckpt
}

/// Random features; clip `i` has `lengths[i]` real frames, at the start except for the last
/// clip of a batch of several, whose real frames alternate with padding. Padded frames hold
/// values too, which must not reach the logits.
fn batch(cfg: &ModelConfig, seq: usize, lengths: &[usize], seed: u64) -> Batch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = lengths.len();
    let features = (0..n * seq * cfg.num_features)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let mut mask = vec![0.0; n * seq];
    for (i, &len) in lengths.iter().enumerate() {
        let row = &mut mask[i * seq..(i + 1) * seq];
        if n > 1 && i == n - 1 {
            row.iter_mut().step_by(2).for_each(|m| *m = 1.0);
        } else {
            row[..len].iter_mut().for_each(|m| *m = 1.0);
        }
    }
    Batch {
        features,
        mask,
        labels: vec![0; n],
        batch: n,
        seq,
        num_features: cfg.num_features,
    }
}

/// The model's forward in f64 from the reference's ops (evaluation: no dropout).
fn reference_logits(ckpt: &Checkpoint, batch: &Batch) -> Vec<f64> {
    let cfg = &ckpt.config;
    let p = |name: &str| -> Vec<f64> { ckpt.tensors[name].1.iter().map(|&v| v as f64).collect() };
    let (t, d) = (batch.seq, cfg.d_model);
    let bt = batch.batch * t;
    let linear = |x: &[f64], rows: usize, w: &str, b: &str, inputs: usize, outputs: usize| {
        let spec = MatmulSpec::new(rows, outputs, inputs).transpose(false, true);
        reference::matmul(x, &p(w), Some(&p(b)), &spec)
    };
    let norm = |x: &[f64], prefix: &str| {
        let (w, b) = (p(&format!("{prefix}.weight")), p(&format!("{prefix}.bias")));
        reference::layernorm(x, &w, &b, cfg.layer_norm_eps as f64).0
    };
    let x: Vec<f64> = batch.features.iter().map(|&v| v as f64).collect();
    let mask: Vec<f64> = batch.mask.iter().map(|&v| v as f64).collect();
    let mut h = linear(
        &x,
        bt,
        "input_proj.weight",
        "input_proj.bias",
        cfg.num_features,
        d,
    );
    let pos = p("pos_embedding");
    for (i, v) in h.iter_mut().enumerate() {
        *v += pos[(i / d % t) * d + i % d];
    }
    let key = DropoutKey {
        seed: 0,
        step: 0,
        site: 0,
    };
    for l in 0..cfg.num_layers {
        let pre = format!("encoder.layers.{l}");
        let a1 = norm(&h, &format!("{pre}.norm1"));
        let w = format!("{pre}.self_attn.in_proj_weight");
        let qkv = linear(
            &a1,
            bt,
            &w,
            &format!("{pre}.self_attn.in_proj_bias"),
            d,
            3 * d,
        );
        let (attn, _) = reference::attention(
            &qkv,
            &mask,
            batch.batch,
            t,
            cfg.num_heads,
            cfg.head_dim(),
            0.0,
            &key,
        );
        let (w, b) = (
            format!("{pre}.self_attn.out_proj.weight"),
            format!("{pre}.self_attn.out_proj.bias"),
        );
        h = reference::add(&h, &linear(&attn, bt, &w, &b, d, d));
        let a2 = norm(&h, &format!("{pre}.norm2"));
        let (w, b) = (
            format!("{pre}.linear1.weight"),
            format!("{pre}.linear1.bias"),
        );
        let f = reference::gelu(&linear(&a2, bt, &w, &b, d, cfg.ff_dim));
        let (w, b) = (
            format!("{pre}.linear2.weight"),
            format!("{pre}.linear2.bias"),
        );
        h = reference::add(&h, &linear(&f, bt, &w, &b, cfg.ff_dim, d));
    }
    let hf = norm(&h, "encoder.norm");
    let pooled = reference::mean_pool(&hf, &mask, batch.batch, d);
    let (w, b) = ("classifier.weight", "classifier.bias");
    linear(&pooled, batch.batch, w, b, d, cfg.num_classes)
}

/// The logits tract computes from an exported file.
fn tract_logits(onnx: &[u8], batch: &Batch) -> Vec<f32> {
    let (n, t, f) = (batch.batch, batch.seq, batch.num_features);
    let model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .expect("tract reads the file")
        .with_input_fact(0, f32::fact([n, t, f]).into())
        .unwrap()
        .with_input_fact(1, bool::fact([n, t]).into())
        .unwrap()
        .into_optimized()
        .expect("tract optimises the graph")
        .into_runnable()
        .unwrap();
    let features = Tensor::from_shape(&[n, t, f], &batch.features).unwrap();
    let mask: Vec<bool> = batch.mask.iter().map(|&m| m != 0.0).collect();
    let mask = Tensor::from_shape(&[n, t], &mask).unwrap();
    let out = model
        .run(tvec!(features.into(), mask.into()))
        .expect("tract runs the graph");
    assert_eq!(out[0].shape(), &[n, batch_classes(onnx)]);
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn batch_classes(onnx: &[u8]) -> usize {
    from_onnx_bytes(onnx, Path::new("x.onnx"))
        .unwrap()
        .config
        .num_classes
}

fn logits<B: Backend>(b: &B, ckpt: &Checkpoint, batch: &Batch) -> Vec<f32> {
    let ids: Vec<usize> = (0..batch.batch).collect();
    InferencePipeline::from_checkpoint(b, ckpt)
        .unwrap()
        .logits(batch, &ids)
        .unwrap()
}

fn cpu() -> CpuBackend {
    CpuBackend::new(&GpuConfig::default()).unwrap()
}

#[test]
fn tract_matches_the_reference_for_fresh_shapes_masks_and_batches() {
    // (config, seq_len): one head and one layer; seq_len below max_seq_len (positions
    // sliced); features other than 469; several layers and heads.
    let cases = [
        (config(8, 1, 1, 16, 3, 469, 5), 5),
        (config(24, 3, 2, 40, 7, 469, 12), 9),
        (config(32, 4, 3, 64, 10, 33, 16), 16),
    ];
    for (i, (cfg, seq)) in cases.into_iter().enumerate() {
        let ckpt = checkpoint(cfg.clone(), seq, 11 + i as u64);
        let onnx = to_onnx(&ckpt, &ExportOptions::default()).unwrap();
        let batches = [
            vec![seq / 2 + 1],
            vec![seq, 1, 2, seq - 1, 1, seq / 2 + 1, seq],
        ];
        for (j, lengths) in batches.iter().enumerate() {
            let batch = batch(&cfg, seq, lengths, 100 * i as u64 + j as u64);
            let want = reference_logits(&ckpt, &batch);
            let got = tract_logits(&onnx, &batch);
            let dev = Deviation::measure(&got, &want);
            assert!(
                dev.within(TRACT_REL),
                "case {i}, batch {}: tract vs reference rel err {:.2e}",
                batch.batch,
                dev.max_rel_err
            );
            // The crate itself, for scale: its CPU logits against the same reference.
            let crate_dev = Deviation::measure(&logits(&cpu(), &ckpt, &batch), &want);
            eprintln!(
                "case {i}, batch {}: tract rel err {:.1e}, crate CPU {:.1e}",
                batch.batch, dev.max_rel_err, crate_dev.max_rel_err
            );
        }
    }
}

#[test]
fn every_supported_opset_runs_in_tract() {
    let cfg = config(16, 2, 1, 32, 4, 469, 6);
    let ckpt = checkpoint(cfg.clone(), 6, 3);
    let batch = batch(&cfg, 6, &[6, 1, 4], 5);
    let want = reference_logits(&ckpt, &batch);
    for opset in OPSETS {
        let options = ExportOptions {
            opset,
            ..ExportOptions::default()
        };
        let onnx = to_onnx(&ckpt, &options).unwrap();
        let model = ModelProto::decode(&onnx[..]).unwrap();
        assert_eq!(model.opset_import[0].version, opset);
        let dev = Deviation::measure(&tract_logits(&onnx, &batch), &want);
        assert!(
            dev.within(TRACT_REL),
            "opset {opset}: {:.2e}",
            dev.max_rel_err
        );
    }
    let refused = |opset, precision| {
        let options = ExportOptions { opset, precision };
        to_onnx(&ckpt, &options).unwrap_err().to_string()
    };
    let e = refused(16, Precision::F32);
    assert!(e.contains("opset 16") && e.contains("17 to"), "{e}");
    let e = refused(17, Precision::F16);
    assert!(
        e.contains("f16 export needs mixed precision, not yet available"),
        "{e}"
    );
}

#[test]
fn the_file_says_what_it_holds() {
    let cfg = config(16, 2, 2, 32, 4, 469, 10);
    let ckpt = checkpoint(cfg, 8, 4);
    let model =
        ModelProto::decode(&to_onnx(&ckpt, &ExportOptions::default()).unwrap()[..]).unwrap();
    let meta: BTreeMap<_, _> = model
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        meta["signflow.classes"],
        r#"["sign 0","sign 1","sign 2","sign 3"]"#
    );
    assert_eq!(meta["signflow.seq_len"], "8");
    assert_eq!(meta["signflow.layout"], "features");
    assert_eq!(meta["signflow.num_heads"], "2");
    assert_eq!(meta["signflow.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(model.producer_name, "signflow");
    let graph = model.graph.unwrap();
    let names: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let want: Vec<&str> = ckpt.tensors.keys().map(String::as_str).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted, want,
        "initializers named exactly as the checkpoint's tensors"
    );
    let io: Vec<&str> = graph
        .input
        .iter()
        .chain(&graph.output)
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(io, ["features", "mask", "logits"]);
}

#[test]
fn export_then_load_gives_identical_logits_on_the_cpu() {
    let cfg = config(24, 3, 2, 40, 7, 469, 12);
    let ckpt = checkpoint(cfg.clone(), 12, 21);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    signflow::export::write_onnx(&ckpt, &path, &ExportOptions::default()).unwrap();
    let back = signflow::infer::load_model(&path).unwrap();
    assert_eq!(
        back, ckpt,
        "every tensor, the configuration, classes and preprocessing"
    );
    let batch = batch(&cfg, 12, &[12, 1, 5, 7, 1, 3, 12], 8);
    let cpu = cpu();
    let from_file = InferencePipeline::load(&cpu, &path).unwrap();
    let ids: Vec<usize> = (0..7).collect();
    let got = from_file.logits(&batch, &ids).unwrap();
    assert_eq!(got, logits(&cpu, &ckpt, &batch), "bit-identical");
}

#[test]
fn export_then_load_gives_identical_logits_on_the_gpu() {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters.adapter(0).expect(
        "no GPU adapter at all: the GPU tests need one (on a machine without a GPU, install \
         Mesa's software Vulkan driver: apt-get install -y mesa-vulkan-drivers)",
    );
    eprintln!("adapter: {} ({})", info.name, info.backend);
    let gpu = GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap();
    let cfg = config(16, 2, 2, 32, 5, 469, 8);
    let ckpt = checkpoint(cfg.clone(), 8, 31);
    let onnx = to_onnx(&ckpt, &ExportOptions::default()).unwrap();
    let back = from_onnx_bytes(&onnx, Path::new("model.onnx")).unwrap();
    let batch = batch(&cfg, 8, &[8, 1, 3, 6, 2, 8, 5], 9);
    assert_eq!(logits(&gpu, &back, &batch), logits(&gpu, &ckpt, &batch));
}

fn refusal(bytes: &[u8]) -> String {
    from_onnx_bytes(bytes, Path::new("model.onnx"))
        .unwrap_err()
        .to_string()
}

#[test]
fn truncated_and_foreign_files_are_refused_with_what_differs() {
    let cfg = config(8, 2, 1, 16, 3, 469, 4);
    let ckpt = checkpoint(cfg, 4, 41);
    let good = to_onnx(&ckpt, &ExportOptions::default()).unwrap();
    for cut in [0, 1, 10, good.len() / 3, good.len() / 2, good.len() - 1] {
        let e = refusal(&good[..cut]);
        assert!(e.starts_with("model.onnx: "), "cut at {cut}: {e}");
    }
    let e = refusal(&good[..good.len() / 2]);
    assert!(e.contains("truncated"), "{e}");

    // Another tool's model: one Relu, no SignFlow metadata.
    let foreign = ModelProto {
        ir_version: 8,
        producer_name: "pytorch".into(),
        graph: Some(signflow::export::onnx_proto::GraphProto {
            node: vec![NodeProto {
                input: vec!["x".into()],
                output: vec!["y".into()],
                op_type: "Relu".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = refusal(&foreign.encode_to_vec());
    assert!(
        e.contains("is an ONNX model but not one written by signflow export (its producer is `pytorch`): no `signflow.classes` metadata"),
        "{e}"
    );

    // SignFlow's file, edited: a node, an initializer, the metadata.
    let edit = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = ModelProto::decode(&good[..]).unwrap();
        f(&mut m);
        refusal(&m.encode_to_vec())
    };
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        let softmax = g.node.iter_mut().find(|n| n.op_type == "Softmax").unwrap();
        softmax.op_type = "LogSoftmax".into();
    });
    assert!(
        e.contains("graph differs") && e.contains("LogSoftmax"),
        "{e}"
    );
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "classifier.bias");
        g.initializer[0].name = "renamed".into();
    });
    assert!(
        e.contains("missing classifier.bias") && e.contains("unexpected initializer `renamed`"),
        "{e}"
    );
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "input_proj.bias")
            .unwrap();
        t.dims = vec![9];
    });
    assert!(e.contains("input_proj.bias has shape [9]"), "{e}");
    let e = edit(&|m| {
        m.metadata_props.retain(|p| p.key != "signflow.num_heads");
    });
    assert!(e.contains("no `signflow.num_heads` metadata"), "{e}");
    let e = edit(&|m| {
        let p = m
            .metadata_props
            .iter_mut()
            .find(|p| p.key == "signflow.num_heads")
            .unwrap();
        p.value = "4".into();
    });
    assert!(e.contains("graph differs"), "{e}");
    let e = edit(&|m| {
        let p = m
            .metadata_props
            .iter_mut()
            .find(|p| p.key == "signflow.layout")
            .unwrap();
        p.value = "kinect-v2".into();
    });
    assert!(e.contains("kinect-v2") && e.contains("layout"), "{e}");
    assert!(refusal(b"not an onnx file at all").starts_with("model.onnx: "));

    // A model whose weights are not all finite, as a checkpoint holding one is.
    let mut nan = ckpt.clone();
    nan.tensors.get_mut("classifier.bias").unwrap().1[1] = f32::NAN;
    let e = refusal(&to_onnx(&nan, &ExportOptions::default()).unwrap());
    assert!(
        e.contains("classifier.bias") && e.contains("not finite"),
        "{e}"
    );
}

fn ok(args: &[&str]) -> String {
    String::from_utf8_lossy(&succeeds(args).stderr).into_owned()
}

fn logits_file(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor("logits").unwrap().data())
}

#[test]
fn predict_gives_the_same_logits_from_the_onnx_as_from_the_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let pack = d.join("synth.safetensors");
    ok(&[
        "data",
        "synth",
        "--classes",
        "3",
        "--clips",
        "2",
        "--frames",
        "10",
        "-o",
        &s(&pack),
    ]);
    let mut ckpt = checkpoint(config(16, 2, 1, 32, 3, 469, 8), 8, 51);
    ckpt.preprocessing.layout = signflow::data::packs::LAYOUT_258.into();
    let st = d.join("model.safetensors");
    ckpt.save(&st).unwrap();
    let onnx = d.join("model.onnx");
    let said = ok(&["export", "--model", &s(&st), "-o", &s(&onnx)]);
    assert!(said.contains("opset 17"), "{said}");
    // Content, not the name, says what a file is.
    let misnamed = d.join("model.bin");
    std::fs::copy(&onnx, &misnamed).unwrap();
    let mut outputs = Vec::new();
    for model in [&st, &onnx, &misnamed] {
        let out = d.join(format!("pred-{}.safetensors", outputs.len()));
        let args = ["predict", "--model", &s(model), "--input", &s(&pack)];
        ok(&[&args[..], &["--device", "cpu", "--output", &s(&out)]].concat());
        outputs.push(logits_file(&out));
    }
    assert_eq!(outputs[0].len(), 6 * 3);
    assert_eq!(outputs[1], outputs[0]);
    assert_eq!(outputs[2], outputs[0]);

    let out = signflow(&[
        "export",
        "--model",
        &s(&st),
        "-o",
        &s(&onnx),
        "--precision",
        "f16",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("f16 export needs mixed precision"),
        "{err}"
    );
    let cut = d.join("cut.onnx");
    std::fs::write(&cut, &std::fs::read(&onnx).unwrap()[..500]).unwrap();
    let out = signflow(&[
        "predict",
        "--model",
        &s(&cut),
        "--input",
        &s(&pack),
        "--device",
        "cpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cut.onnx"), "{err}");
}

fn golden(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden-small")
        .join(name)
}

/// A fixture tensor as f64 (f32, i64 or u8 in the file).
fn golden_tensor(file: &str, name: &str) -> Vec<f64> {
    let bytes = std::fs::read(golden(file)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    match t.dtype() {
        safetensors::Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data())
            .into_iter()
            .map(f64::from)
            .collect(),
        safetensors::Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        safetensors::Dtype::U8 => t.data().iter().map(|&v| v as f64).collect(),
        other => panic!("{name}: unexpected {other:?}"),
    }
}

/// The golden fixture's model (made by PyTorch from the reference, without dropout) exported
/// and run in tract gives PyTorch's logits for the fixture's batch.
#[test]
fn tract_matches_pytorch_on_the_golden_model() {
    let mut ckpt = Checkpoint::load(&golden("model.safetensors")).unwrap();
    let mask = golden_tensor("batch.safetensors", "mask");
    let features = golden_tensor("batch.safetensors", "features");
    let n = golden_tensor("batch.safetensors", "labels").len();
    let seq = mask.len() / n;
    ckpt.preprocessing.seq_len = seq;
    let batch = Batch {
        features: features.iter().map(|&v| v as f32).collect(),
        mask: mask.iter().map(|&v| v as f32).collect(),
        labels: vec![0; n],
        batch: n,
        seq,
        num_features: ckpt.config.num_features,
    };
    let onnx = to_onnx(&ckpt, &ExportOptions::default()).unwrap();
    let want = golden_tensor("expected.safetensors", "logits");
    let dev = Deviation::measure(&tract_logits(&onnx, &batch), &want);
    eprintln!("tract vs PyTorch: rel err {:.2e}", dev.max_rel_err);
    assert!(dev.within(TRACT_REL), "rel err {:.2e}", dev.max_rel_err);
}

/// The README's onnxruntime snippet, run for real on an exported golden model when
/// `SIGNFLOW_ORT_PYTHON` names a Python with onnxruntime and numpy
/// (`python3 -m venv /tmp/ort && /tmp/ort/bin/pip install onnxruntime numpy`):
/// `SIGNFLOW_ORT_PYTHON=/tmp/ort/bin/python cargo test --test onnx -- --ignored`.
#[test]
#[ignore = "needs a Python with onnxruntime: set SIGNFLOW_ORT_PYTHON"]
fn onnxruntime_runs_the_exported_file() {
    let python = std::env::var("SIGNFLOW_ORT_PYTHON").expect("SIGNFLOW_ORT_PYTHON");
    let cfg = config(16, 2, 2, 32, 4, 469, 8);
    let ckpt = checkpoint(cfg.clone(), 8, 61);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    signflow::export::write_onnx(&ckpt, &path, &ExportOptions::default()).unwrap();
    let batch = batch(&cfg, 8, &[8, 1, 5], 62);
    let inputs = dir.path().join("inputs.json");
    std::fs::write(
        &inputs,
        serde_json::json!({"features": batch.features, "mask": batch.mask}).to_string(),
    )
    .unwrap();
    let script = format!(
        r#"
import json, numpy as np, onnxruntime as ort
runtime = ort.InferenceSession({path:?})
meta = runtime.get_modelmeta().custom_metadata_map
seq_len = int(meta["signflow.seq_len"])
inp = json.load(open({inputs:?}))
features = np.array(inp["features"], dtype=np.float32).reshape(-1, seq_len, 469)
mask = np.array(inp["mask"]).reshape(-1, seq_len) != 0
(logits,) = runtime.run(["logits"], {{"features": features, "mask": mask}})
print(json.dumps(logits.ravel().tolist()))
"#,
        path = path.to_str().unwrap(),
        inputs = inputs.to_str().unwrap()
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<f32> = serde_json::from_slice(&out.stdout).unwrap();
    let want = reference_logits(&ckpt, &batch);
    let dev = Deviation::measure(&got, &want);
    eprintln!("onnxruntime vs reference: rel err {:.2e}", dev.max_rel_err);
    assert!(dev.within(TRACT_REL), "rel err {:.2e}", dev.max_rel_err);
}
