//! Fused attention forward (output and log-sum-exp) and backward, with key-padding masks and
//! dropout on the probabilities.

use super::{narrow, poisoned, ragged_mask, upload, widen, Check, Inputs, ParityRow, Push, Scope};
use crate::backend::Backend;
use crate::backend::{AttentionSpec, DropoutKey};
use crate::dtype::DType;
use crate::error::Result;
use crate::ops::Op;
use crate::reference;
use crate::tolerance::OpClass;

/// An attention case: its spec (dropout on or off) and a ragged key mask.
fn attention_case(
    batch: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
    dropout: f32,
) -> (AttentionSpec, Vec<f32>) {
    let mut spec = AttentionSpec::new(batch, t, heads, head_dim);
    spec.dropout = dropout;
    spec.key = DropoutKey {
        seed: 42,
        step: 3,
        site: 1,
    };
    (spec, ragged_mask(batch, t, false))
}

fn attention_shape(spec: &AttentionSpec) -> String {
    format!(
        "b{} t{} h{} d{}{}",
        spec.batch,
        spec.seq,
        spec.heads,
        spec.head_dim,
        if spec.dropout > 0.0 {
            format!(" p {}", spec.dropout)
        } else {
            String::new()
        }
    )
}

pub fn check_attention<B: Backend>(
    b: &B,
    (batch, t, heads, head_dim, dropout): AttentionCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (spec, mask) = attention_case(batch, t, heads, head_dim, dropout);
    let dm = spec.d_model();
    let qkv = inputs.uniform(batch * t * 3 * dm);
    let (out, lse) = (
        poisoned(b, &[batch, t, dm], DType::F32)?,
        poisoned(b, &[batch, heads, t], DType::F32)?,
    );
    b.attention(
        &upload(b, &[batch, t, 3 * dm], &qkv)?,
        &upload(b, &[batch, t], &mask)?,
        &spec,
        &out,
        &lse,
    )?;
    let (want_out, want_lse) = reference::attention(
        &widen(&qkv),
        &widen(&mask),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    let got = [out.to_f32_vec()?, lse.to_f32_vec()?];
    Ok(ParityRow::of_scaled_parts(
        Op::AttentionFwd,
        DType::F32,
        attention_shape(&spec),
        OpClass::Reduction,
        &[(&got[0], &want_out, 0.0), (&got[1], &want_lse, 1.0)],
    ))
}

pub fn check_attention_backward<B: Backend>(
    b: &B,
    (batch, t, heads, head_dim, dropout): AttentionCase,
    inputs: &mut Inputs,
) -> Result<ParityRow> {
    let (spec, mask) = attention_case(batch, t, heads, head_dim, dropout);
    let dm = spec.d_model();
    let qkv = inputs.uniform(batch * t * 3 * dm);
    let dout = inputs.uniform(batch * t * dm);
    // The saved forward results come from the reference, so that only the backward is judged.
    let (out, lse) = reference::attention(
        &widen(&qkv),
        &widen(&mask),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    let dqkv = poisoned(b, &[batch, t, 3 * dm], DType::F32)?;
    b.attention_backward(
        &upload(b, &[batch, t, 3 * dm], &qkv)?,
        &upload(b, &[batch, t], &mask)?,
        &spec,
        &upload(b, &[batch, t, dm], &narrow(&out))?,
        &upload(b, &[batch, heads, t], &narrow(&lse))?,
        &upload(b, &[batch, t, dm], &dout)?,
        &dqkv,
    )?;
    let want = reference::attention_backward(
        &widen(&qkv),
        &widen(&mask),
        &widen(&dout),
        batch,
        t,
        heads,
        head_dim,
        dropout as f64,
        &spec.key,
    );
    Ok(ParityRow::new(
        Op::AttentionBwd,
        DType::F32,
        attention_shape(&spec),
        OpClass::Reduction,
        &dqkv.to_f32_vec()?,
        &want,
    ))
}

/// (batch, t, heads, head_dim, dropout) of an attention check.
pub type AttentionCase = (usize, usize, usize, usize, f32);

/// Attention checks: sequence lengths that cut the tiles (1, 2, 7, 63, 64, 65, 200, 300) and
/// take every GPU query block (64, 128, 256), the head sizes the model uses and odd ones,
/// ragged masks, with and without dropout.
const ATTENTION_CASES: [AttentionCase; 10] = [
    (1, 1, 1, 16, 0.0),
    (2, 2, 2, 32, 0.0),
    (3, 7, 2, 64, 0.1),
    (2, 63, 2, 16, 0.0),
    (2, 64, 1, 32, 0.2),
    (2, 65, 2, 64, 0.0),
    (1, 200, 1, 24, 0.1),
    (1, 17, 2, 128, 0.0),
    (2, 33, 3, 5, 0.5),
    (2, 300, 2, 64, 0.1),
];
/// The tests' further cases: a long clip (T past 1024, cutting the tiles), more round sizes,
/// and single clips whose heads the CPU shares among threads (unevenly, and a prediction's).
const MORE_ATTENTION_CASES: [AttentionCase; 5] = [
    (2, 64, 2, 64, 0.0),
    (1, 130, 2, 32, 0.1),
    (1, 1030, 1, 16, 0.1),
    (1, 9, 3, 8, 0.2),
    (1, 64, 8, 32, 0.1),
];

pub(super) fn run<B: Backend>(b: &B, scope: Scope, inputs: &mut Inputs, push: Push) -> Result<()> {
    let checks: [Check<B, AttentionCase>; 2] = [check_attention, check_attention_backward];
    for case in scope.cases(&ATTENTION_CASES, &MORE_ATTENTION_CASES) {
        for check in checks {
            push(check(b, case, inputs)?);
        }
    }
    Ok(())
}
