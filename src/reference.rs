//! The oracle: every op in plain f64 loops, short and obviously correct. Used by tests and
//! `selftest` only; never fast, never clever.

use crate::backend::MatmulSpec;
use crate::dtype::DType;

/// `C = op(A)·op(B) (+ bias)` for every batch item, per [`MatmulSpec`]. Returns C with
/// `spec.c_len()` elements; elements between items (when `stride_c > M·N`) are 0.
pub fn matmul(a: &[f64], b: &[f64], bias: Option<&[f64]>, spec: &MatmulSpec) -> Vec<f64> {
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

/// Values of `x` rounded to `to` (round to nearest even), as f64.
pub fn cast(x: &[f64], to: DType) -> Vec<f64> {
    x.iter().map(|&v| to.round_f64(v)).collect()
}
