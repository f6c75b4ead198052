//! The model's forward pass in half precision (f16, bf16) on the CPU backend: against the f64
//! reference model fed the same rounded weights and inputs and rounding where the kernels
//! store, deterministic, through `InferencePipeline` and `signflow predict/eval --precision`,
//! on real signing next to f32, and refused on the GPU until its f16 kernels exist.

mod cli_support;

use cli_support::{ok, signflow, TINY_MODEL};
use signflow::backend::MatmulSpec;
use signflow::data::Batch;
use signflow::model::transformer::NamedTensor;
use signflow::model::{Checkpoint, ModelConfig, Preprocessing, SignTransformer, Workspace};
use signflow::reference as r;
use signflow::rng::DropoutKey;
use signflow::tolerance::{tolerance_for, Deviation, OpClass};
use signflow::{CpuBackend, DType, GpuConfig};

use signflow::selftest::HALVES;

/// Awkward sizes: nothing a multiple of a tile or a vector width.
fn config() -> ModelConfig {
    ModelConfig {
        num_features: 37,
        num_classes: 7,
        d_model: 24,
        num_heads: 3,
        num_layers: 2,
        ff_dim: 40,
        max_seq_len: 13,
        dropout: 0.1,
        layer_norm_eps: 1e-5,
    }
}

/// Three clips of 11 frames, the second padded after 6 and the third after 9.
fn batch(cfg: &ModelConfig) -> Batch {
    let (batch, seq) = (3, 11);
    let features = (0..batch * seq * cfg.num_features)
        .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
        .collect();
    let real = [seq, 6, 9];
    let mask = (0..batch * seq)
        .map(|i| if i % seq < real[i / seq] { 1.0 } else { 0.0 })
        .collect();
    Batch {
        features,
        mask,
        labels: vec![0, 3, 6],
        batch,
        seq,
        num_features: cfg.num_features,
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::new(&GpuConfig::default()).unwrap()
}

/// The logits of `model` run in `dtype`, with or without its weights packed.
fn logits(model: &mut SignTransformer<CpuBackend>, b: &CpuBackend, dtype: DType) -> Vec<f32> {
    let cfg = model.config().clone();
    model.set_precision(b, dtype).unwrap();
    let batch = batch(&cfg);
    let ws = Workspace::new_in(b, &cfg, batch.batch, batch.seq, false, dtype).unwrap();
    ws.load_inputs(b, &cfg, &batch, &[0, 1, 2]).unwrap();
    model.forward(b, &ws, None).unwrap();
    assert_eq!(ws.logits().dtype(), DType::F32, "logits stay f32");
    ws.logits().to_f32_vec().unwrap()
}

/// The f64 model in storage dtype `s`: products read weights and inputs rounded to `s`;
/// biases, positions and layer norms' parameters are f32; every activation the kernels store
/// in `s` is rounded there; the residual stream is f32 and rounded to `s` where the layer
/// norms read it; the logits are f32.
fn reference_logits(
    cfg: &ModelConfig,
    params: &[NamedTensor],
    batch: &Batch,
    s: DType,
) -> Vec<f64> {
    let get = |name: &str| -> Vec<f64> {
        let (_, _, v) = params.iter().find(|(n, _, _)| n == name).unwrap();
        v.iter().map(|&x| x as f64).collect()
    };
    let half = |name: &str| r::cast(&get(name), s);
    let (bt, d) = (batch.batch * batch.seq, cfg.d_model);
    let linear = |x: &[f64], w: &str, b: &str, rows: usize, ins: usize, outs: usize| {
        let spec = MatmulSpec::new(rows, outs, ins).transpose(false, true);
        r::matmul(x, &half(w), Some(&get(b)), &spec)
    };
    let eps = cfg.layer_norm_eps as f64;
    let f32 = |x: &[f64]| r::cast(x, DType::F32);
    let norm = |h: &[f64], p: &str| {
        r::cast(
            &r::layernorm(
                &r::cast(h, s),
                &get(&format!("{p}.weight")),
                &get(&format!("{p}.bias")),
                eps,
            )
            .0,
            s,
        )
    };
    let features: Vec<f64> = batch.features.iter().map(|&x| x as f64).collect();
    let mask: Vec<f64> = batch.mask.iter().map(|&x| x as f64).collect();
    let x = r::cast(&features, s);
    let proj = f32(&linear(
        &x,
        "input_proj.weight",
        "input_proj.bias",
        bt,
        cfg.num_features,
        d,
    ));
    let pos = get("pos_embedding");
    let seq_d = batch.seq * d;
    let mut h: Vec<f64> = proj
        .chunks(seq_d)
        .flat_map(|item| f32(&r::add(item, &pos[..seq_d])))
        .collect();
    for l in 0..cfg.num_layers {
        let p = format!("encoder.layers.{l}");
        let a1 = norm(&h, &format!("{p}.norm1"));
        let w = format!("{p}.self_attn.in_proj_weight");
        let qkv = r::cast(
            &linear(
                &a1,
                &w,
                &format!("{p}.self_attn.in_proj_bias"),
                bt,
                d,
                3 * d,
            ),
            s,
        );
        let key = DropoutKey {
            seed: 0,
            step: 0,
            site: 0,
        };
        let (attn, _) = r::attention(
            &qkv,
            &mask,
            batch.batch,
            batch.seq,
            cfg.num_heads,
            cfg.head_dim(),
            0.0,
            &key,
        );
        let attn = r::cast(&attn, s);
        let o = linear(
            &attn,
            &format!("{p}.self_attn.out_proj.weight"),
            &format!("{p}.self_attn.out_proj.bias"),
            bt,
            d,
            d,
        );
        let hmid = f32(&r::add(&h, &f32(&o)));
        let a2 = norm(&hmid, &format!("{p}.norm2"));
        let spec = MatmulSpec::new(bt, cfg.ff_dim, d).transpose(false, true);
        let w1 = half(&format!("{p}.linear1.weight"));
        let (_, f) = r::matmul_bias_gelu_in(s, &a2, &w1, &get(&format!("{p}.linear1.bias")), &spec);
        let o = linear(
            &f,
            &format!("{p}.linear2.weight"),
            &format!("{p}.linear2.bias"),
            bt,
            cfg.ff_dim,
            d,
        );
        h = f32(&r::add(&hmid, &f32(&o)));
    }
    let hf = norm(&h, "encoder.norm");
    let pooled = r::cast(&r::mean_pool(&hf, &mask, batch.batch, d), s);
    r::cast(
        &linear(
            &pooled,
            "classifier.weight",
            "classifier.bias",
            batch.batch,
            d,
            cfg.num_classes,
        ),
        DType::F32,
    )
}

/// The whole forward's bound: one product's at the model's longest reduction. The reference
/// rounds where the kernels store, so the two agree at each store but for values next to a
/// rounding boundary, whose one-unit differences stay within an op's bound.
fn forward_tolerance(cfg: &ModelConfig, dtype: DType) -> f64 {
    let longest = cfg.num_features.max(cfg.ff_dim);
    tolerance_for(OpClass::Reduction, dtype, longest)
}

#[test]
fn half_forward_matches_the_rounding_reference() {
    let b = cpu();
    let cfg = config();
    for packed in [false, true] {
        let mut model = SignTransformer::new(&b, cfg.clone(), 11).unwrap();
        if packed {
            model.pack_weights(&b).unwrap();
        }
        let params = model.named_parameters().unwrap();
        for dtype in HALVES {
            let got = logits(&mut model, &b, dtype);
            assert!(got.iter().all(|v| v.is_finite()), "{dtype}: {got:?}");
            let want = reference_logits(&cfg, &params, &batch(&cfg), dtype);
            let dev = Deviation::measure(&got, &want);
            let tol = forward_tolerance(&cfg, dtype);
            assert!(
                dev.within(tol),
                "{dtype} (packed: {packed}): rel err {:.3e} > {tol:.3e}",
                dev.max_rel_err
            );
            // The rounding is what the reference models: the f32 model is farther away.
            let f32_want = reference_logits(&cfg, &params, &batch(&cfg), DType::F32);
            let f32_dev = Deviation::measure(&got, &f32_want);
            assert!(
                dev.max_rel_err < f32_dev.max_rel_err,
                "{dtype}: {dev:?} {f32_dev:?}"
            );
        }
        // Back to f32: the f32 forward is unchanged by a half-precision detour.
        let back = logits(&mut model, &b, DType::F32);
        let want = reference_logits(&cfg, &params, &batch(&cfg), DType::F32);
        let dev = Deviation::measure(&back, &want);
        assert!(dev.within(forward_tolerance(&cfg, DType::F32)), "{dev:?}");
    }
}

#[test]
fn half_forward_is_deterministic() {
    let b = cpu();
    for dtype in HALVES {
        let mut model = SignTransformer::new(&b, config(), 3).unwrap();
        model.pack_weights(&b).unwrap();
        let first = logits(&mut model, &b, dtype);
        let second = logits(&mut model, &b, dtype);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&first), bits(&second), "{dtype}");
    }
}

/// A workspace of another dtype is refused; in half precision the backward pass (mixed-precision
/// training's) gives f32 gradients near the f32 pass's.
#[test]
fn a_workspace_in_another_dtype_is_refused_and_half_backward_follows_f32() {
    let b = cpu();
    let cfg = config();
    let batch = batch(&cfg);
    let grads = |dtype: DType| {
        let mut model = SignTransformer::new(&b, cfg.clone(), 1).unwrap();
        model.set_precision(&b, dtype).unwrap();
        let ws = Workspace::new_in(&b, &cfg, batch.batch, batch.seq, true, dtype).unwrap();
        ws.load(&b, &cfg, &batch, &[0, 1, 2]).unwrap();
        model.forward(&b, &ws, None).unwrap();
        model.loss(&b, &ws, 0.0).unwrap();
        model.backward(&b, &ws, 0.0, 1.0, None).unwrap();
        model.named_grads().unwrap()
    };
    let mut model = SignTransformer::new(&b, cfg.clone(), 1).unwrap();
    model.set_precision(&b, DType::F16).unwrap();
    let ws = Workspace::new(&b, &cfg, batch.batch, batch.seq, true).unwrap();
    ws.load(&b, &cfg, &batch, &[0, 1, 2]).unwrap();
    let err = model.forward(&b, &ws, None).unwrap_err().to_string();
    assert!(
        err.contains("f32 activations") && err.contains("f16"),
        "{err}"
    );
    let err = model
        .backward(&b, &ws, 0.0, 1.0, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backward") && err.contains("f16"), "{err}");

    let want = grads(DType::F32);
    for (dtype, tol) in [(DType::F16, 5e-3), (DType::Bf16, 5e-2)] {
        for ((name, _, w), (_, _, g)) in want.iter().zip(&grads(dtype)) {
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = w
                .iter()
                .zip(g)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= tol * scale, "{dtype} {name}: {err} of {scale}");
        }
    }
}

fn top1(predictions: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(predictions).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["top"][0]["index"].as_u64().unwrap())
        .collect()
}

#[test]
fn predict_and_eval_take_a_precision() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pack = d.join("synth.safetensors");
    let run = d.join("run");
    let (pack_s, run_s) = (pack.to_str().unwrap(), run.to_str().unwrap());
    ok(&[
        "data",
        "synth",
        "--classes",
        "3",
        "--clips",
        "6",
        "--frames",
        "8",
        "-o",
        pack_s,
    ]);
    let mut args = vec![
        "train",
        "--data",
        pack_s,
        "--split",
        "random:0.25",
        "--out",
        run_s,
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    ];
    args.extend(TINY_MODEL);
    ok(&args);
    let model = run.join("final.safetensors");
    let model_s = model.to_str().unwrap();
    let predict = |precision: &str| {
        ok(&[
            "predict",
            "--model",
            model_s,
            "--input",
            pack_s,
            "--device",
            "cpu",
            "--json",
            "--precision",
            precision,
        ])
    };
    let f32_top = top1(&predict("f32"));
    let f16_top = top1(&predict("f16"));
    assert_eq!(f16_top.len(), f32_top.len());
    assert_eq!(top1(&predict("float16")), f16_top, "the alias names f16");

    let eval = |precision: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "eval",
            "--model",
            model_s,
            "--data",
            pack_s,
            "--device",
            "cpu",
            "--json",
            "--precision",
            precision,
        ]))
        .unwrap()
    };
    let (full, bf16) = (eval("f32"), eval("bf16"));
    assert_eq!(bf16["clips"], full["clips"]);
    let (l32, l16) = (
        full["loss"].as_f64().unwrap(),
        bf16["loss"].as_f64().unwrap(),
    );
    assert!(
        l16 != l32 && (l16 - l32).abs() < 0.05 * l32.abs().max(1.0),
        "{l32} vs {l16}"
    );

    let out = signflow(&[
        "predict",
        "--model",
        model_s,
        "--input",
        pack_s,
        "--precision",
        "f8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("f32, f16 or bf16"),
        "{err}"
    );
    // The GPU runs the same precisions: its f16 loss is as close to f32's.
    let on_gpu: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "--model",
        model_s,
        "--data",
        pack_s,
        "--device",
        "gpu:0",
        "--json",
        "--precision",
        "f16",
    ]))
    .unwrap();
    let l_gpu = on_gpu["loss"].as_f64().unwrap();
    assert!(
        (l_gpu - l32).abs() < 0.05 * l32.abs().max(1.0),
        "{l32} vs {l_gpu} on the GPU in f16"
    );
}

/// Real signing (the demo's sample, trained as `signflow demo` trains it, one signer held
/// out): f16 and bf16 predictions of the held-out clips against f32's.
#[test]
fn half_precision_predicts_real_signing_as_f32_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("demo");
    ok(&[
        "demo",
        "--device",
        "cpu",
        "--skip-selftest",
        "--out",
        out.to_str().unwrap(),
    ]);
    let held = d.join("held.safetensors");
    let held_s = held.to_str().unwrap();
    let classes = "hello,thank-you,please,no,coffee,tea,water,muffin";
    let sample = out.join("real-clips.safetensors");
    ok(&[
        "data",
        "subset",
        sample.to_str().unwrap(),
        "-o",
        held_s,
        "--classes",
        classes,
        "--groups",
        "TheCamNelson",
    ]);
    let model = out.join("run").join("final.safetensors");
    let model_s = model.to_str().unwrap();
    let run = |precision: &str| {
        let top = top1(&ok(&[
            "predict",
            "--model",
            model_s,
            "--input",
            held_s,
            "--device",
            "cpu",
            "--json",
            "--precision",
            precision,
        ]));
        let eval: serde_json::Value = serde_json::from_str(&ok(&[
            "eval",
            "--model",
            model_s,
            "--data",
            held_s,
            "--device",
            "cpu",
            "--json",
            "--precision",
            precision,
        ]))
        .unwrap();
        (top, eval["top1"].as_f64().unwrap())
    };
    let (f32_top, f32_acc) = run("f32");
    assert!(f32_top.len() >= 100, "{} held-out clips", f32_top.len());
    for precision in ["f16", "bf16"] {
        let (top, acc) = run(precision);
        let agree = top.iter().zip(&f32_top).filter(|(a, b)| a == b).count();
        let share = agree as f64 / top.len() as f64;
        assert!(
            share >= 0.98,
            "{precision}: top-1 agrees with f32 on {share:.3}"
        );
        assert!(
            (acc - f32_acc).abs() <= 0.01,
            "{precision}: top-1 {acc} vs f32 {f32_acc}"
        );
    }
}

/// A checkpoint written in f16 loads, widened to f32, and predicts in any precision.
#[test]
fn an_f16_checkpoint_loads_widened() {
    use safetensors::tensor::{Dtype, SafeTensors, TensorView};
    let dir = tempfile::tempdir().unwrap();
    let (f32_path, f16_path) = (dir.path().join("f32.st"), dir.path().join("f16.st"));
    let classes: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let preprocessing = Preprocessing {
        seq_len: 11,
        layout: "features".into(),
    };
    let ckpt = Checkpoint::initial(config(), classes, preprocessing, 4).unwrap();
    ckpt.save(&f32_path).unwrap();
    let bytes = std::fs::read(&f32_path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(t.data());
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (name, t.shape().to_vec(), bytemuck::cast_slice(&h).to_vec())
        })
        .collect();
    let views = halves.iter().map(|(name, shape, data)| {
        (
            name.clone(),
            TensorView::new(Dtype::F16, shape.clone(), data).unwrap(),
        )
    });
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(&f16_path, out).unwrap();

    let loaded = Checkpoint::load(&f16_path).unwrap();
    for (name, (_, values)) in &ckpt.tensors {
        let rounded: Vec<f32> = values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        assert_eq!(loaded.tensors[name].1, rounded, "{name}");
    }
    let b = cpu();
    let cfg = config();
    let batch = batch(&cfg);
    for dtype in DType::ALL {
        let pipeline = signflow::infer::InferencePipeline::load(&b, &f16_path)
            .unwrap()
            .with_precision(dtype)
            .unwrap();
        let logits = pipeline.logits(&batch, &[0, 1, 2]).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{dtype}");
    }
}
