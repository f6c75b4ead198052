//! The f64 reference against hand-computed cases: the oracle must be right before it judges.

use signflow::reference;
use signflow::selftest::Inputs;

/// Central difference of `f` at `x` along element `i`.
fn numeric_grad(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize) -> f64 {
    let h = 1e-6;
    let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
    plus[i] += h;
    minus[i] -= h;
    (f(&plus) - f(&minus)) / (2.0 * h)
}

fn assert_grads_match(analytic: &[f64], f: &dyn Fn(&[f64]) -> f64, x: &[f64], what: &str) {
    let scale = analytic.iter().fold(1e-3f64, |m, g| m.max(g.abs()));
    for (i, &a) in analytic.iter().enumerate() {
        let numeric = numeric_grad(f, x, i);
        assert!(
            (numeric - a).abs() <= 1e-6 * scale.max(1.0),
            "{what}[{i}]: analytic {a} vs numeric {numeric}"
        );
    }
}

fn random(inputs: &mut Inputs, n: usize, scale: f64) -> Vec<f64> {
    inputs
        .uniform(n)
        .iter()
        .map(|&v| v as f64 * scale)
        .collect()
}

/// The backward ops of the reference against central finite differences of its forward ops,
/// through a random linear read-out `L = Σ y·r` (so that dL/dy = r).
#[test]
fn reference_backward_ops_match_finite_differences() {
    let mut inputs = Inputs::new(7);
    let x = random(&mut inputs, 40, 4.0);
    let r = random(&mut inputs, 40, 1.0);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let gelu_loss = |x: &[f64]| dot(&reference::gelu(x), &r);
    assert_grads_match(&reference::gelu_backward(&x, &r), &gelu_loss, &x, "gelu dx");

    let (rows, cols) = (5, 8);
    let x = random(&mut inputs, rows * cols, 2.0);
    let w = random(&mut inputs, cols, 1.0);
    let b = random(&mut inputs, cols, 1.0);
    let r = random(&mut inputs, rows * cols, 1.0);
    let eps = 1e-5;
    let (_, mean, rstd) = reference::layernorm(&x, &w, &b, eps);
    let (dx, dw, db) = reference::layernorm_backward(&x, &w, &mean, &rstd, &r);
    assert_grads_match(
        &dx,
        &|x| dot(&reference::layernorm(x, &w, &b, eps).0, &r),
        &x,
        "layernorm dx",
    );
    assert_grads_match(
        &dw,
        &|w| dot(&reference::layernorm(&x, w, &b, eps).0, &r),
        &w,
        "layernorm dw",
    );
    assert_grads_match(
        &db,
        &|b| dot(&reference::layernorm(&x, &w, b, eps).0, &r),
        &b,
        "layernorm db",
    );

    // The bias gradient is the gradient of adding a bias to every row.
    let add_bias = |b: &[f64]| {
        (0..rows * cols)
            .map(|i| x[i] + b[i % cols])
            .collect::<Vec<_>>()
    };
    assert_grads_match(
        &reference::bias_grad(&r, cols),
        &|b| dot(&add_bias(b), &r),
        &b,
        "bias",
    );
}

#[test]
fn reference_pool_and_loss_gradients_match_finite_differences() {
    let mut inputs = Inputs::new(11);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (batch, t, d) = (3, 4, 2);
    let h = random(&mut inputs, batch * t * d, 1.0);
    let mask = vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let r = random(&mut inputs, batch * d, 1.0);
    let dh = reference::mean_pool_backward(&r, &mask, batch, d);
    assert_grads_match(
        &dh,
        &|h| dot(&reference::mean_pool(h, &mask, batch, d), &r),
        &h,
        "mean pool dh",
    );

    let (batch, classes) = (4, 5);
    let logits = random(&mut inputs, batch * classes, 3.0);
    let labels = [0.0, 4.0, 2.0, 2.0];
    let weights = [1.0, 0.5, 2.0, 1.5, 0.75];
    for (w, smoothing) in [
        (None, 0.0),
        (Some(&weights[..]), 0.0),
        (None, 0.2),
        (Some(&weights[..]), 0.1),
    ] {
        let d = reference::cross_entropy_backward(&logits, &labels, w, smoothing, 1.0);
        let loss = |z: &[f64]| reference::cross_entropy(z, &labels, w, smoothing).loss;
        assert_grads_match(&d, &loss, &logits, "cross-entropy dlogits");
    }
}

#[test]
fn reference_attention_backward_matches_finite_differences() {
    let mut inputs = Inputs::new(13);
    let (batch, t, heads, head_dim) = (2, 5, 2, 3);
    let dm = heads * head_dim;
    let qkv = random(&mut inputs, batch * t * 3 * dm, 1.5);
    // Ragged: the second clip has 3 real frames.
    let mask: Vec<f64> = (0..batch * t)
        .map(|i| if i >= t && i % t >= 3 { 0.0 } else { 1.0 })
        .collect();
    let r = random(&mut inputs, batch * t * dm, 1.0);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for p in [0.0, 0.3] {
        let key = signflow::DropoutKey {
            seed: 5,
            step: 1,
            site: 2,
        };
        let d = reference::attention_backward(&qkv, &mask, &r, batch, t, heads, head_dim, p, &key);
        let loss = |qkv: &[f64]| {
            dot(
                &reference::attention(qkv, &mask, batch, t, heads, head_dim, p, &key).0,
                &r,
            )
        };
        assert_grads_match(&d, &loss, &qkv, "attention dqkv");
    }
}

#[test]
fn attention_by_hand() {
    // One head of size 1, two frames: q0 = 1, keys (0, ln 3 / s)... with s = 1/√1 = 1:
    // scores (0, ln 3) give probabilities (1/4, 3/4) over values (4, 8): output 7.
    let ln3 = 3f64.ln();
    let qkv = [1.0, 0.0, 4.0, 0.0, ln3, 8.0];
    let key = signflow::DropoutKey {
        seed: 0,
        step: 0,
        site: 0,
    };
    let (out, lse) = reference::attention(&qkv, &[1.0, 1.0], 1, 2, 1, 1, 0.0, &key);
    assert!((out[0] - 7.0).abs() < 1e-12, "{out:?}");
    assert!((lse[0] - 4f64.ln()).abs() < 1e-12);
    // Masking the second key leaves only the first value.
    let (out, _) = reference::attention(&qkv, &[1.0, 0.0], 1, 2, 1, 1, 0.0, &key);
    assert!((out[0] - 4.0).abs() < 1e-12);
}

#[test]
fn cross_entropy_by_hand() {
    // Two classes, logits (0, ln 3): p = (1/4, 3/4). Label 1: loss = −ln(3/4).
    let r = reference::cross_entropy(&[0.0, 3f64.ln()], &[1.0], None, 0.0);
    assert!((r.loss + (0.75f64).ln()).abs() < 1e-15);
    assert_eq!((r.top1, r.top5), (1.0, 1.0));
    // With smoothing 0.2: 0.8·(−ln 3/4) + 0.2/2·(−ln 1/4 − ln 3/4).
    let s = reference::cross_entropy(&[0.0, 3f64.ln()], &[1.0], None, 0.2);
    let want = 0.8 * -(0.75f64).ln() + 0.1 * (-(0.25f64).ln() - (0.75f64).ln());
    assert!((s.loss - want).abs() < 1e-15);
}

#[test]
fn adamw_by_hand() {
    // First step from zero moments: m̂ = g, v̂ = g², so p moves by lr·g/(|g| + eps) after decay.
    let hp = reference::AdamWParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let (mut p, mut m, mut v) = (vec![2.0], vec![0.0], vec![0.0]);
    reference::adamw(&mut p, &[4.0], &mut m, &mut v, &hp, 1);
    let want = 2.0 * (1.0 - 0.1 * 0.5) - 0.1 * 4.0 / (4.0 + 1e-8);
    assert!((p[0] - want).abs() < 1e-12, "{} vs {want}", p[0]);
}

#[test]
fn gelu_by_hand() {
    let y = reference::gelu(&[0.0, 1.0, -1.0]);
    assert_eq!(y[0], 0.0);
    assert!((y[1] - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((y[2] + 0.158_655_253_931_457_05).abs() < 1e-15);
}
use signflow::{DType, MatmulSpec};

#[test]
fn matmul_by_hand_in_every_layout() {
    // A = [[1, 2, 3], [4, 5, 6]] (2x3), B = [[7, 8], [9, 10], [11, 12]] (3x2).
    let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let a_t = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
    let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
    let b_t = [7.0, 9.0, 11.0, 8.0, 10.0, 12.0];
    let want = [58.0, 64.0, 139.0, 154.0];
    for (ta, tb, a, b) in [
        (false, false, &a, &b),
        (false, true, &a, &b_t),
        (true, false, &a_t, &b),
        (true, true, &a_t, &b_t),
    ] {
        let spec = MatmulSpec::new(2, 2, 3).transpose(ta, tb);
        assert_eq!(
            reference::matmul(a, b, None, &spec),
            want,
            "layout {}",
            spec.layout()
        );
    }
    let spec = MatmulSpec::new(2, 2, 3);
    assert_eq!(
        reference::matmul(&a, &b, Some(&[0.5, -1.0]), &spec),
        [58.5, 63.0, 139.5, 153.0]
    );
}

#[test]
fn batched_strided_matmul_by_hand() {
    // Two 1x1x2 items; B shared (stride 0); C items 3 apart with a gap left at zero.
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [10.0, 100.0];
    let spec = MatmulSpec::new(1, 1, 2).strided(2, 2, 0, 3);
    assert_eq!(
        reference::matmul(&a, &b, None, &spec),
        [210.0, 0.0, 0.0, 430.0]
    );
}

#[test]
fn elementwise_and_casts_by_hand() {
    assert_eq!(reference::add(&[1.0, -2.0], &[0.5, 2.0]), [1.5, 0.0]);
    assert_eq!(reference::scale(&[1.0, -2.0], -0.5), [-0.5, 1.0]);
    // 1 + 2^-11 is halfway between two f16 values: ties to even gives 1.
    let halfway = 1.0 + 2f64.powi(-11);
    assert_eq!(
        reference::cast(&[halfway, 70000.0, 2f64.powi(-24)], DType::F16),
        [1.0, f64::INFINITY, 2f64.powi(-24)]
    );
    // bf16 keeps 8 significant bits: 1 + 2^-8 is halfway, ties to even gives 1.
    assert_eq!(
        reference::cast(&[1.0 + 2f64.powi(-8), 3.0], DType::Bf16),
        [1.0, 3.0]
    );
}
