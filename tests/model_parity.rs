//! The model against PyTorch: `shared/fixtures/golden-small` (copied into tests/fixtures)
//! holds float64 values of the reference for one batch: logits, loss, every parameter's
//! gradient, and five AdamW steps. Checked on the CPU backend and on the GPU backend (the
//! best adapter; lavapipe on a machine without a GPU).

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use signflow::backend::AdamW;
use signflow::data::Batch;
use signflow::model::{Checkpoint, DropoutStep, SignTransformer, Workspace};
use signflow::tolerance::{pytorch, Deviation};
use signflow::{Adapters, Backend, CpuBackend, GpuBackend, GpuConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/golden-small")
        .join(name)
}

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn read(name: &str) -> Golden {
        Golden {
            bytes: std::fs::read(fixture(name)).expect("fixture present"),
        }
    }

    fn tensor(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{name} in fixture"));
        match t.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(t.data())
                .into_iter()
                .map(f64::from)
                .collect(),
            Dtype::I64 => bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            Dtype::U8 => t.data().iter().map(|&v| v as f64).collect(),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }

    fn adamw(&self) -> AdamW {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        let hp: serde_json::Value =
            serde_json::from_str(&meta.metadata().as_ref().unwrap()["adamw"]).unwrap();
        let f = |k: &str| hp[k].as_f64().unwrap() as f32;
        AdamW {
            lr: f("lr"),
            beta1: f("beta1"),
            beta2: f("beta2"),
            eps: f("eps"),
            weight_decay: f("weight_decay"),
        }
    }
}

fn golden_batch() -> Batch {
    let g = Golden::read("batch.safetensors");
    let labels = g.tensor("labels");
    let mask = g.tensor("mask");
    let features = g.tensor("features");
    let batch = labels.len();
    let seq = mask.len() / batch;
    Batch {
        features: features.iter().map(|&v| v as f32).collect(),
        mask: mask.iter().map(|&v| v as f32).collect(),
        labels: labels.iter().map(|&v| v as usize).collect(),
        batch,
        seq,
        num_features: features.len() / (batch * seq),
    }
}

fn check(what: &str, got: &[f32], want: &[f64], tol: f64) -> Deviation {
    let dev = Deviation::measure(got, want);
    assert!(
        dev.within(tol),
        "{what}: max abs err {:.3e}, rel {:.3e} > {tol:.0e}",
        dev.max_abs_err,
        dev.max_rel_err
    );
    dev
}

fn golden_parity<B: Backend>(b: &B) {
    let ckpt = Checkpoint::load(&fixture("model.safetensors")).expect("golden model loads");
    let model = ckpt.to_model(b).unwrap();
    let cfg = model.config().clone();
    let batch = golden_batch();
    let ids: Vec<usize> = (0..batch.batch).collect();
    let ws = Workspace::new(b, &cfg, batch.batch, batch.seq, true).unwrap();
    ws.load(b, &cfg, &batch, &ids).unwrap();
    let expected = Golden::read("expected.safetensors");
    let dropout = Some(DropoutStep { seed: 1, step: 1 });

    model.forward(b, &ws, dropout).unwrap();
    model.loss(b, &ws, 0.0).unwrap();
    model.backward(b, &ws, 0.0, 1.0, dropout).unwrap();
    let logits = ws.logits().to_f32_vec().unwrap();
    let dev = check(
        "logits",
        &logits,
        &expected.tensor("logits"),
        pytorch::LOGITS_REL,
    );
    eprintln!("logits rel err {:.2e}", dev.max_rel_err);
    let (loss, _, _) = ws.loss_and_hits().unwrap();
    check(
        "loss",
        &[loss],
        &expected.tensor("loss"),
        pytorch::LOGITS_REL,
    );
    let mut worst = 0.0f64;
    for (name, _, grad) in model.named_grads().unwrap() {
        let dev = check(
            &format!("grad.{name}"),
            &grad,
            &expected.tensor(&format!("grad.{name}")),
            pytorch::GRAD_REL,
        );
        worst = worst.max(dev.max_rel_err);
    }
    eprintln!("worst gradient rel err {worst:.2e}");

    // Five AdamW steps on the same batch.
    let hp = expected.adamw();
    let layout = model.layout().clone();
    let m = b
        .upload(&signflow::HostTensor::filled(
            &[layout.total],
            signflow::DType::F32,
            0.0,
        ))
        .unwrap();
    let v = b
        .upload(&signflow::HostTensor::filled(
            &[layout.total],
            signflow::DType::F32,
            0.0,
        ))
        .unwrap();
    let want_losses = expected.tensor("adamw_losses");
    let mut losses = Vec::new();
    for step in 1..=want_losses.len() as u64 {
        model.forward(b, &ws, dropout).unwrap();
        model.loss(b, &ws, 0.0).unwrap();
        model.backward(b, &ws, 0.0, 1.0, dropout).unwrap();
        b.adamw(&model.weights().all, &model.grads().all, &m, &v, &hp, step)
            .unwrap();
        losses.push(ws.loss_and_hits().unwrap().0);
    }
    check(
        "adamw losses",
        &losses,
        &want_losses,
        pytorch::ADAMW_LOSS_REL,
    );
    let d = cfg.d_model;
    let mut worst = 0.0f64;
    for (name, _, mut values) in model.named_parameters().unwrap() {
        let mut want = expected.tensor(&format!("after.{name}"));
        if name.ends_with("in_proj_bias") {
            // The key rows' gradient is zero in exact arithmetic; their update is noise.
            values.drain(d..2 * d);
            want.drain(d..2 * d);
        }
        let dev = Deviation::measure(&values, &want);
        assert!(
            dev.max_abs_err <= pytorch::PARAM_ABS,
            "after.{name}: max abs err {:.3e}",
            dev.max_abs_err
        );
        worst = worst.max(dev.max_abs_err);
    }
    eprintln!(
        "worst parameter abs err after {} steps {worst:.2e}",
        losses.len()
    );
}

#[test]
fn golden_small_on_cpu() {
    golden_parity(&CpuBackend::new(&GpuConfig::default()).unwrap());
}

/// The best GPU adapter (lavapipe on a machine without a GPU).
fn gpu() -> GpuBackend {
    let adapters = Adapters::discover();
    let (adapter, info) = adapters
        .adapter(0)
        .expect("no GPU adapter: install mesa-vulkan-drivers for the software one");
    GpuBackend::new(adapter, info.clone(), &GpuConfig::default()).unwrap()
}

#[test]
fn golden_small_on_gpu() {
    golden_parity(&gpu());
}

/// The model checkpoint round-trips through our writer, and a file whose tensors do not fit
/// is refused with every problem named.
#[test]
fn checkpoint_round_trip_and_mismatch() {
    let ckpt = Checkpoint::load(&fixture("model.safetensors")).unwrap();
    assert!(
        !ckpt.defaults_used.is_empty(),
        "the PyTorch file has no class names"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.tensors, ckpt.tensors);
    assert_eq!(back.config, ckpt.config);
    assert!(back.defaults_used.is_empty());
    // Floats in the metadata as the reference's `str()` writes them.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["layer_norm_eps"], "1e-05");
    assert_eq!(meta["dropout"], "0.0");
    assert_eq!(meta["d_model"], "64");

    let mut bad = ckpt.clone();
    bad.tensors.remove("classifier.bias");
    bad.tensors.insert("extra".into(), (vec![1], vec![0.0]));
    bad.tensors.get_mut("encoder.norm.weight").unwrap().0 = vec![2, 32];
    bad.save(&path).unwrap();
    let err = Checkpoint::load(&path).unwrap_err().to_string();
    for needle in [
        "missing classifier.bias",
        "unexpected tensor extra",
        "encoder.norm.weight has shape [2, 32]",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    std::fs::write(&path, b"torn").unwrap();
    assert!(Checkpoint::load(&path).is_err());
}

#[test]
fn model_rejects_bad_input() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let ckpt = Checkpoint::load(&fixture("model.safetensors")).unwrap();
    let cfg = ckpt.config.clone();
    let mut batch = golden_batch();
    let ws = Workspace::new(&b, &cfg, batch.batch, batch.seq, false).unwrap();
    batch.mask[batch.seq..2 * batch.seq].fill(0.0);
    let err = ws
        .load(&b, &cfg, &batch, &[10, 11, 12, 13])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("clip 11") && err.contains("no real frame"),
        "{err}"
    );
    let mut batch = golden_batch();
    batch.features[5] = f32::NAN;
    assert!(ws
        .load(&b, &cfg, &batch, &[0, 1, 2, 3])
        .unwrap_err()
        .to_string()
        .contains("clip 0"));
    let mut batch = golden_batch();
    batch.labels[2] = cfg.num_classes;
    assert!(ws.load(&b, &cfg, &batch, &[0, 1, 2, 3]).is_err());
    assert!(Workspace::new(&b, &cfg, 2, cfg.max_seq_len + 1, false).is_err());
    let _ = SignTransformer::new(&b, cfg, 0).unwrap();
}

/// A model whose weights are packed for inference (the CPU's prediction path) gives the
/// golden logits, as one that reads them as they are does, and refuses to be trained; on the
/// GPU packing is a no-op.
#[test]
fn packed_weights_predict_the_same_and_refuse_training() {
    let b = CpuBackend::new(&GpuConfig::default()).unwrap();
    let ckpt = Checkpoint::load(&fixture("model.safetensors")).unwrap();
    let batch = golden_batch();
    let ids: Vec<usize> = (0..batch.batch).collect();
    let logits = |model: &SignTransformer<CpuBackend>| {
        let cfg = model.config();
        let ws = Workspace::new(&b, cfg, batch.batch, batch.seq, true).unwrap();
        ws.load(&b, cfg, &batch, &ids).unwrap();
        model.forward(&b, &ws, None).unwrap();
        (ws.logits().to_f32_vec().unwrap(), ws)
    };
    let plain = ckpt.to_model(&b).unwrap();
    let mut packed = ckpt.to_model(&b).unwrap();
    packed.pack_weights(&b).unwrap();
    let (want, ws) = logits(&plain);
    let (got, _) = logits(&packed);
    // Against the plain model's logits, which the golden parity test holds to PyTorch's: the
    // packed products sum in another order than gemm's, so to that tolerance, not the bit.
    let plain_logits: Vec<f64> = want.iter().map(|&v| v.into()).collect();
    check("packed logits", &got, &plain_logits, pytorch::LOGITS_REL);
    plain.backward(&b, &ws, 0.0, 1.0, None).unwrap();
    let err = packed.backward(&b, &ws, 0.0, 1.0, None).unwrap_err();
    assert!(err.to_string().contains("pack_weights"), "{err}");
    // The forward reads the packs, taken when the weights were packed: zeroing the
    // classifier's weight afterwards changes the plain model's logits, not the other's.
    for model in [&plain, &packed] {
        let i = model
            .layout()
            .entries
            .iter()
            .position(|e| e.name == "classifier.weight")
            .unwrap();
        let view = &model.weights().views[i];
        let zeros = signflow::HostTensor::from_f32(view.shape(), vec![0.0; view.len()]).unwrap();
        b.write(view, &zeros).unwrap();
    }
    assert_ne!(logits(&plain).0, want);
    assert_eq!(logits(&packed).0, got);

    let gpu = gpu();
    let mut model = ckpt.to_model(&gpu).unwrap();
    model.pack_weights(&gpu).unwrap();
    let cfg = model.config().clone();
    let ws = Workspace::new(&gpu, &cfg, batch.batch, batch.seq, true).unwrap();
    ws.load(&gpu, &cfg, &batch, &ids).unwrap();
    model.forward(&gpu, &ws, None).unwrap();
    model.backward(&gpu, &ws, 0.0, 1.0, None).unwrap();
}
