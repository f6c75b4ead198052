//! The oracle: every op in plain f64 loops, short and obviously correct. Used by tests and
//! `selftest` only; never fast, never clever.
//!
//! Half precision: an op whose operands are stored in f16 or bf16 is checked against the
//! f64 op fed the same rounded inputs, its results rounded with [`cast`] where the kernels
//! store them: each output in half storage, and each stored intermediate that a later step
//! reads back (the `*_in` functions), so that parity measures the kernel, not the format.

use crate::backend::MatmulSpec;
use crate::dtype::DType;

/// `C = op(A)·op(B) (+ bias)` for every batch item, per [`MatmulSpec`]. Returns C with
/// `spec.c_len()` elements; elements between items (when `stride_c > M·N`) are 0.
pub fn matmul(a: &[f64], b: &[f64], bias: Option<&[f64]>, spec: &MatmulSpec) -> Vec<f64> {
    assert!(!spec.packed_b, "the reference reads B as it is, unpacked");
    let MatmulSpec { m, n, k, .. } = *spec;
    let mut c = vec![0.0; spec.c_len()];
    for item in 0..spec.batch {
        let (a0, b0, c0) = (
            item * spec.stride_a,
            item * spec.stride_b,
            item * spec.stride_c,
        );
        for i in 0..m {
            for j in 0..n {
                let mut sum = bias.map_or(0.0, |bias| bias[j]);
                for p in 0..k {
                    let a_ip = if spec.trans_a {
                        a[a0 + p * m + i]
                    } else {
                        a[a0 + i * k + p]
                    };
                    let b_pj = if spec.trans_b {
                        b[b0 + j * k + p]
                    } else {
                        b[b0 + p * n + j]
                    };
                    sum += a_ip * b_pj;
                }
                c[c0 + i * n + j] = sum;
            }
        }
    }
    c
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn scale(x: &[f64], alpha: f64) -> Vec<f64> {
    x.iter().map(|v| v * alpha).collect()
}

/// Values of `x` rounded to `to` (round to nearest even), as f64: also what a kernel's store
/// into `to` does to a result (beyond the format's range: ±∞).
pub fn cast(x: &[f64], to: DType) -> Vec<f64> {
    x.iter().map(|&v| to.round_f64(v)).collect()
}

/// `Backend::matmul_bias_gelu` with `pre` and `out` stored in `dtype`: `pre = a·b + bias`
/// rounded, and `out` = GELU of that stored `pre` (what the backward pass reads), rounded.
pub fn matmul_bias_gelu_in(
    dtype: DType,
    a: &[f64],
    b: &[f64],
    bias: &[f64],
    spec: &MatmulSpec,
) -> (Vec<f64>, Vec<f64>) {
    let pre = cast(&matmul(a, b, Some(bias), spec), dtype);
    let out = cast(&gelu(&pre), dtype);
    (pre, out)
}

/// The standard normal CDF, Φ(v) = erfc(−v/√2)/2: through erfc, not 1 + erf, so that it
/// keeps its relative accuracy far into the lower tail (1 + erf(v/√2) is 0 below v ≈ −8.3).
fn normal_cdf(v: f64) -> f64 {
    0.5 * libm::erfc(-v / std::f64::consts::SQRT_2)
}

/// Exact GELU, `x·Φ(x)` = `0.5·x·(1 + erf(x/√2))`.
pub fn gelu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v * normal_cdf(v)).collect()
}

/// `dx = dy · gelu'(x)`, with `gelu'(x) = Φ(x) + x·φ(x)`.
pub fn gelu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &g)| {
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            g * (normal_cdf(v) + v * pdf)
        })
        .collect()
}

/// Column sums of a row-major `[rows, cols]` matrix.
pub fn bias_grad(dy: &[f64], cols: usize) -> Vec<f64> {
    let mut db = vec![0.0; cols];
    for row in dy.chunks_exact(cols) {
        for (d, g) in db.iter_mut().zip(row) {
            *d += g;
        }
    }
    db
}

/// Layer norm over the last dimension of `[rows, cols]`: returns (y, mean, rstd).
pub fn layernorm(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let cols = w.len();
    let (mut y, mut means, mut rstds) = (Vec::new(), Vec::new(), Vec::new());
    for row in x.chunks_exact(cols) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        y.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| (v - mean) * rstd * w[j] + b[j]),
        );
        means.push(mean);
        rstds.push(rstd);
    }
    (y, means, rstds)
}

/// Gradients of layer norm: returns (dx, dw, db).
pub fn layernorm_backward(
    x: &[f64],
    w: &[f64],
    mean: &[f64],
    rstd: &[f64],
    dy: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let cols = w.len();
    let (mut dx, mut dw, mut db) = (Vec::new(), vec![0.0; cols], vec![0.0; cols]);
    for (r, (row, dyr)) in x.chunks_exact(cols).zip(dy.chunks_exact(cols)).enumerate() {
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean[r]) * rstd[r]).collect();
        let dxhat: Vec<f64> = dyr.iter().zip(w).map(|(g, w)| g * w).collect();
        let mean_dxhat = dxhat.iter().sum::<f64>() / cols as f64;
        let mean_dxhat_xhat =
            dxhat.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for j in 0..cols {
            dx.push(rstd[r] * (dxhat[j] - mean_dxhat - xhat[j] * mean_dxhat_xhat));
            dw[j] += dyr[j] * xhat[j];
            db[j] += dyr[j];
        }
    }
    (dx, dw, db)
}

/// Mean over the real frames: `h` is `[batch, t, d]`, `mask` `[batch, t]` (1 = real frame,
/// 0 = padding); a clip with no real frame pools to zeros.
pub fn mean_pool(h: &[f64], mask: &[f64], batch: usize, d: usize) -> Vec<f64> {
    let t = mask.len() / batch;
    let mut out = vec![0.0; batch * d];
    for b in 0..batch {
        let count: f64 = mask[b * t..(b + 1) * t].iter().sum();
        for s in 0..t {
            for j in 0..d {
                out[b * d + j] += mask[b * t + s] * h[(b * t + s) * d + j];
            }
        }
        if count > 0.0 {
            out[b * d..(b + 1) * d].iter_mut().for_each(|v| *v /= count);
        }
    }
    out
}

/// Gradient of [`mean_pool`]: `dh[b, s, j] = mask[b, s]·dout[b, j] / count[b]`.
pub fn mean_pool_backward(dout: &[f64], mask: &[f64], batch: usize, d: usize) -> Vec<f64> {
    let t = mask.len() / batch;
    let mut dh = vec![0.0; batch * t * d];
    for b in 0..batch {
        let count: f64 = mask[b * t..(b + 1) * t].iter().sum();
        for s in 0..t {
            for j in 0..d {
                if count > 0.0 {
                    dh[(b * t + s) * d + j] = mask[b * t + s] * dout[b * d + j] / count;
                }
            }
        }
    }
    dh
}

/// Cross-entropy of one batch, as `torch.nn.functional.cross_entropy` computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropy {
    /// Mean loss (weighted mean where class weights are given).
    pub loss: f64,
    /// Rows whose label is the top-1 class, and among the top min(5, classes). Ties go to the
    /// lower class index, as `argmax` breaks them; a row with a non-finite logit is no hit.
    pub top1: f64,
    pub top5: f64,
    /// log Σ_c exp(logit) per row, kept for the backward pass.
    pub lse: Vec<f64>,
}

/// `logits` is `[batch, classes]`; `labels` holds class indices. A label that is not a class
/// index makes the loss NaN.
pub fn cross_entropy(
    logits: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
    smoothing: f64,
) -> CrossEntropy {
    let batch = labels.len();
    let classes = logits.len() / batch;
    let w = |c: usize| weights.map_or(1.0, |w| w[c]);
    let k = classes.min(5);
    let (mut total, mut weight_sum, mut top1, mut top5) = (0.0, 0.0, 0.0, 0.0);
    let mut lses = Vec::new();
    for (i, z) in logits.chunks_exact(classes).enumerate() {
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        lses.push(lse);
        let y = labels[i];
        if !(y >= 0.0 && y < classes as f64 && y.fract() == 0.0) {
            total = f64::NAN;
            continue;
        }
        let y = y as usize;
        let smooth: f64 = (0..classes).map(|c| w(c) * (lse - z[c])).sum();
        total += (1.0 - smoothing) * w(y) * (lse - z[y]) + smoothing / classes as f64 * smooth;
        weight_sum += w(y);
        // A row with a NaN or an infinity ranks nothing: its label is put past every class.
        let rank = if z.iter().all(|v| v.is_finite()) {
            (0..classes)
                .filter(|&c| z[c] > z[y] || (z[c] == z[y] && c < y))
                .count()
        } else {
            classes
        };
        top1 += (rank < 1) as u8 as f64;
        top5 += (rank < k) as u8 as f64;
    }
    CrossEntropy {
        loss: total / weight_sum,
        top1,
        top5,
        lse: lses,
    }
}

/// `scale · d(loss)/d(logits)` of [`cross_entropy`].
pub fn cross_entropy_backward(
    logits: &[f64],
    labels: &[f64],
    weights: Option<&[f64]>,
    smoothing: f64,
    scale: f64,
) -> Vec<f64> {
    let batch = labels.len();
    let classes = logits.len() / batch;
    let w = |c: usize| weights.map_or(1.0, |w| w[c]);
    let weight_sum: f64 = labels.iter().map(|&y| w(y as usize)).sum();
    let class_weight_sum: f64 = (0..classes).map(w).sum();
    let lse = cross_entropy(logits, labels, weights, smoothing).lse;
    let mut d = Vec::with_capacity(logits.len());
    for (i, z) in logits.chunks_exact(classes).enumerate() {
        let y = labels[i] as usize;
        for (j, &zj) in z.iter().enumerate() {
            let p = (zj - lse[i]).exp();
            let hard = (1.0 - smoothing) * w(y) * (p - (j == y) as u8 as f64);
            let soft = smoothing / classes as f64 * (class_weight_sum * p - w(j));
            d.push(scale * (hard + soft) / weight_sum);
        }
    }
    d
}

/// AdamW's hyper-parameters, as `torch.optim.AdamW` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One AdamW step (`step` counts from 1) in place, as `torch.optim.AdamW` takes it:
/// decoupled weight decay, then the bias-corrected Adam update.
pub fn adamw(
    params: &mut [f64],
    grads: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    hp: &AdamWParams,
    step: u64,
) {
    let bc1 = 1.0 - hp.beta1.powi(step as i32);
    let bc2 = 1.0 - hp.beta2.powi(step as i32);
    for i in 0..params.len() {
        params[i] *= 1.0 - hp.lr * hp.weight_decay;
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * grads[i];
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * grads[i] * grads[i];
        let denom = (v[i] / bc2).sqrt() + hp.eps;
        params[i] -= hp.lr / bc1 * m[i] / denom;
    }
}

/// The L2 norm of all gradients.
pub fn grad_norm(grads: &[f64]) -> f64 {
    grads.iter().map(|g| g * g).sum::<f64>().sqrt()
}

/// Gradients scaled as `clip_grad_norm_` does: by `max_norm / (norm + 1e-6)` when that is
/// below 1.
pub fn clip_grads(grads: &[f64], max_norm: f64) -> Vec<f64> {
    let ratio = max_norm / (grad_norm(grads) + 1e-6);
    let coef = if ratio >= 1.0 { 1.0 } else { ratio };
    grads.iter().map(|g| g * coef).collect()
}

/// Gradients times `inv_scale`, and whether any was not finite.
pub fn unscale_check(grads: &[f64], inv_scale: f64) -> (Vec<f64>, bool) {
    let found = grads.iter().any(|g| !g.is_finite());
    (grads.iter().map(|g| g * inv_scale).collect(), found)
}

/// Dropout with the counter-based mask of `crate::rng`: kept elements scaled by 1/(1−p),
/// dropped ones 0 (all of them when p = 1).
pub fn dropout(x: &[f64], p: f64, key: &crate::rng::DropoutKey) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(e, &v)| {
            if p < 1.0 && crate::rng::keep(key, e as u64, p as f32) {
                v / (1.0 - p)
            } else {
                0.0
            }
        })
        .collect()
}

/// Multi-head self-attention over packed `qkv` `[batch, t, 3·d_model]` (q | k | v, each
/// head's `head_dim` columns side by side), with a key mask `[batch, t]` (1 = real frame).
/// Returns the output `[batch, t, d_model]` and the log-sum-exp of each query's scaled scores
/// `[batch, heads, t]` (`NO_KEYS_LSE` for a query with no real key, whose output is zero). Dropout with
/// probability `p` on the attention probabilities uses element
/// `((b·heads + h)·t + query)·t + key` of the mask.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f64],
    mask: &[f64],
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    p: f64,
    key: &crate::rng::DropoutKey,
) -> (Vec<f64>, Vec<f64>) {
    let d_model = heads * head_dim;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let at = |b: usize, s: usize, part: usize, h: usize, i: usize| {
        qkv[(b * t + s) * 3 * d_model + part * d_model + h * head_dim + i]
    };
    let mut out = vec![0.0; batch * t * d_model];
    let mut lse = vec![0.0; batch * heads * t];
    for b in 0..batch {
        for h in 0..heads {
            for q in 0..t {
                let scores: Vec<Option<f64>> = (0..t)
                    .map(|s| {
                        (mask[b * t + s] != 0.0).then(|| {
                            (0..head_dim)
                                .map(|i| at(b, q, 0, h, i) * at(b, s, 1, h, i))
                                .sum::<f64>()
                                * scale
                        })
                    })
                    .collect();
                let max = scores
                    .iter()
                    .flatten()
                    .cloned()
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().flatten().map(|s| (s - max).exp()).sum();
                let row = (b * heads + h) * t + q;
                if sum == 0.0 {
                    lse[row] = crate::backend::NO_KEYS_LSE as f64;
                    continue;
                }
                lse[row] = max + sum.ln();
                for (s, score) in scores.iter().enumerate() {
                    let Some(score) = score else { continue };
                    let mut prob = (score - lse[row]).exp();
                    if p > 0.0 {
                        let keep = p < 1.0 && crate::rng::keep(key, (row * t + s) as u64, p as f32);
                        prob = if keep { prob / (1.0 - p) } else { 0.0 };
                    }
                    for i in 0..head_dim {
                        out[(b * t + q) * d_model + h * head_dim + i] += prob * at(b, s, 2, h, i);
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Gradient of [`attention`] with respect to `qkv`, from the output gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    qkv: &[f64],
    mask: &[f64],
    dout: &[f64],
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    p: f64,
    key: &crate::rng::DropoutKey,
) -> Vec<f64> {
    let (_, lse) = attention(qkv, mask, batch, t, heads, head_dim, p, key);
    let dims = (batch, t, heads, head_dim);
    attention_backward_from(qkv, mask, (None, &lse), dout, dims, p, key)
}

/// [`attention_backward`] as the kernels compute it in `dtype` storage: rowsum(dO∘O) from the
/// forward output as stored (rounded to `dtype`), and the gradient rounded.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_in(
    dtype: DType,
    qkv: &[f64],
    mask: &[f64],
    dout: &[f64],
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    p: f64,
    key: &crate::rng::DropoutKey,
) -> Vec<f64> {
    let (out, lse) = attention(qkv, mask, batch, t, heads, head_dim, p, key);
    let out = cast(&out, dtype);
    let dims = (batch, t, heads, head_dim);
    let d = attention_backward_from(qkv, mask, (Some(&out), &lse), dout, dims, p, key);
    cast(&d, dtype)
}

/// The gradient of [`attention`] given the forward's log-sum-exp, with rowsum(dO∘O) from
/// `out` where given (a stored output), else from the exact probabilities.
fn attention_backward_from(
    qkv: &[f64],
    mask: &[f64],
    (out, lse): (Option<&[f64]>, &[f64]),
    dout: &[f64],
    (batch, t, heads, head_dim): (usize, usize, usize, usize),
    p: f64,
    key: &crate::rng::DropoutKey,
) -> Vec<f64> {
    let d_model = heads * head_dim;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let idx = |b: usize, s: usize, part: usize, h: usize, i: usize| {
        (b * t + s) * 3 * d_model + part * d_model + h * head_dim + i
    };
    let mut d = vec![0.0; qkv.len()];
    for b in 0..batch {
        for h in 0..heads {
            for q in 0..t {
                let row = (b * heads + h) * t + q;
                if lse[row] == crate::backend::NO_KEYS_LSE as f64 {
                    continue;
                }
                let dout_q = |i: usize| dout[(b * t + q) * d_model + h * head_dim + i];
                // P, the dropout factor Z, and dP̃ = dO·V for every real key.
                let mut terms = Vec::new();
                for s in (0..t).filter(|&s| mask[b * t + s] != 0.0) {
                    let score = (0..head_dim)
                        .map(|i| qkv[idx(b, q, 0, h, i)] * qkv[idx(b, s, 1, h, i)])
                        .sum::<f64>()
                        * scale;
                    let prob = (score - lse[row]).exp();
                    let z = if p > 0.0 {
                        if p < 1.0 && crate::rng::keep(key, (row * t + s) as u64, p as f32) {
                            1.0 / (1.0 - p)
                        } else {
                            0.0
                        }
                    } else {
                        1.0
                    };
                    let dp = (0..head_dim)
                        .map(|i| dout_q(i) * qkv[idx(b, s, 2, h, i)])
                        .sum::<f64>();
                    terms.push((s, prob, z, dp));
                }
                let delta: f64 = match out {
                    Some(out) => (0..head_dim)
                        .map(|i| dout_q(i) * out[(b * t + q) * d_model + h * head_dim + i])
                        .sum(),
                    None => terms.iter().map(|&(_, prob, z, dp)| prob * z * dp).sum(),
                };
                for &(s, prob, z, dp) in &terms {
                    let ds = prob * (dp * z - delta);
                    for i in 0..head_dim {
                        d[idx(b, s, 2, h, i)] += prob * z * dout_q(i);
                        d[idx(b, q, 0, h, i)] += ds * qkv[idx(b, s, 1, h, i)] * scale;
                        d[idx(b, s, 1, h, i)] += ds * qkv[idx(b, q, 0, h, i)] * scale;
                    }
                }
            }
        }
    }
    d
}
