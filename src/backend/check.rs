//! Shape and dtype rules for the operands of every op. The provided methods of
//! [`Backend`] run them before calling a backend's implementation, so that every backend
//! rejects the same inputs with the same messages.
//!
//! The dtype rule (DESIGN.md, Precision), for every op in the same terms: an op has one
//! *storage dtype* S (f32, f16 or bf16) for its activation operands ([`Role::Storage`]: the
//! inputs it reads and outputs it writes along the model's data path), which must all be S;
//! operands that accumulate or hold statistics, parameters, their gradients and the loss are
//! f32 whatever S is ([`Role::F32`]); a few may be either ([`Role::StorageOrF32`]: a
//! product's output and bias, so that a weight gradient `xᵀ·dy` reads S and writes f32).
//! Arithmetic is f32 in every case: S says only how values are stored, and a backend rounds
//! (to nearest even) where it stores into S.

use super::{AttentionSpec, Backend, Elementwise, MatmulSpec};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{HostTensor, Tensor};

/// What an operand is to its op's dtype rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An activation: the op's storage dtype S, which the first such operand sets.
    Storage,
    /// Statistics, parameters, gradients of parameters, losses: always f32.
    F32,
    /// S or f32.
    StorageOrF32,
}

/// Checks `operands` (name, tensor, role) against the dtype rule and returns the op's
/// storage dtype S (f32 where no operand is an activation).
pub fn dtypes<B: Backend>(
    op: &'static str,
    operands: &[(&'static str, &Tensor<B>, Role)],
) -> Result<DType> {
    let anchor = operands.iter().find(|(_, _, role)| *role == Role::Storage);
    let storage = anchor.map_or(DType::F32, |(_, t, _)| t.dtype());
    for &(operand, t, role) in operands {
        let fits = match role {
            Role::Storage => t.dtype() == storage,
            Role::F32 => t.dtype() == DType::F32,
            Role::StorageOrF32 => t.dtype() == storage || t.dtype() == DType::F32,
        };
        if fits {
            continue;
        }
        let from = anchor.map_or("", |(name, _, _)| name);
        let rule = match role {
            Role::Storage => format!("it must be {storage} as {from} is: mixed storage dtypes"),
            Role::F32 => "it must be f32: statistics, parameters, gradients of parameters and \
                          losses stay f32 in mixed precision"
                .to_string(),
            Role::StorageOrF32 => format!("it must be {storage} (as {from}) or f32"),
        };
        return Err(Error::OperandDtype {
            op,
            operand,
            dtype: t.dtype(),
            rule,
        });
    }
    Ok(storage)
}

/// `t` in dtype `want` (ops that are f32 throughout: the optimizer's).
pub fn dtype<B: Backend>(op: &'static str, t: &Tensor<B>, want: DType) -> Result<()> {
    if t.dtype() != want {
        return Err(Error::UnsupportedDtype {
            op,
            dtype: t.dtype(),
            hint: "this op computes on f32 operands only (master weights, their gradients and \
                   statistics stay f32 in mixed precision); cast the operands first",
        });
    }
    Ok(())
}

pub fn same_len<B: Backend>(op: &'static str, a: &Tensor<B>, b: &Tensor<B>) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::shape(
            op,
            format!(
                "operands have {} ({:?}) and {} ({:?}) elements",
                a.len(),
                a.shape(),
                b.len(),
                b.shape()
            ),
        ));
    }
    Ok(())
}

pub fn matmul_bias_gelu<B: Backend>(
    a: &Tensor<B>,
    b: &Tensor<B>,
    bias: &Tensor<B>,
    spec: &MatmulSpec,
    pre: &Tensor<B>,
    out: &Tensor<B>,
) -> Result<()> {
    const OP: &str = "matmul_bias_gelu";
    spec.check(a, b, Some(bias), out)?;
    spec.check(a, b, Some(bias), pre)?;
    // The product's output rule allows f32; GELU's (elementwise) wants both in S.
    dtypes(
        OP,
        &[
            ("a", a, Role::Storage),
            ("pre", pre, Role::Storage),
            ("out", out, Role::Storage),
        ],
    )?;
    outputs_apart(OP, &[a, b, bias], &[pre, out])
}

/// True when two tensors share storage and some of their elements.
pub fn overlap<B: Backend>(x: &Tensor<B>, y: &Tensor<B>) -> bool {
    x.shares_storage(y) && x.offset() < y.offset() + y.len() && y.offset() < x.offset() + x.len()
}

/// An elementwise op may write in place (an input and the output the same elements) but
/// not into an input shifted against the output, whose result would depend on the order
/// in which elements are written.
pub fn in_place_or_apart<B: Backend>(
    op: &'static str,
    input: &Tensor<B>,
    out: &Tensor<B>,
) -> Result<()> {
    if overlap(input, out) && input.offset() != out.offset() {
        return Err(Error::shape(
            op,
            "the output partly overlaps an input; write in place (the same view) or to separate elements",
        ));
    }
    Ok(())
}

/// Elementwise ops: every operand an activation as long as the output.
pub fn elementwise<B: Backend>(
    op: &'static str,
    inputs: &[&Tensor<B>],
    out: &Tensor<B>,
) -> Result<()> {
    const NAMES: [&str; 2] = ["input 0", "input 1"];
    let mut operands: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                NAMES.get(i).copied().unwrap_or("an input"),
                *t,
                Role::Storage,
            )
        })
        .collect();
    operands.push(("out", out, Role::Storage));
    dtypes(op, &operands)?;
    for t in inputs {
        same_len(op, t, out)?;
        in_place_or_apart(op, t, out)?;
    }
    Ok(())
}

/// An [`Elementwise`] op: as many inputs as it reads, then [`elementwise`]'s rules.
pub fn elementwise_op<B: Backend>(
    op: Elementwise,
    inputs: &[&Tensor<B>],
    out: &Tensor<B>,
) -> Result<()> {
    if inputs.len() != op.inputs() {
        return Err(Error::shape(
            op.name(),
            format!("takes {} inputs, not {}", op.inputs(), inputs.len()),
        ));
    }
    elementwise(op.name(), inputs, out)
}

/// Host data written into a tensor: the same dtype and number of elements.
pub fn write<B: Backend>(dst: &Tensor<B>, src: &HostTensor) -> Result<()> {
    if src.dtype() != dst.dtype() || src.len() != dst.len() {
        return Err(Error::shape(
            "write",
            format!(
                "cannot write {} {:?} into {} {:?}",
                src.dtype(),
                src.shape(),
                dst.dtype(),
                dst.shape()
            ),
        ));
    }
    Ok(())
}

/// Copies: a conversion between equal dtypes.
pub fn copy<B: Backend>(src: &Tensor<B>, dst: &Tensor<B>) -> Result<()> {
    if src.dtype() != dst.dtype() {
        return Err(Error::shape(
            "copy",
            format!(
                "dtypes differ ({} to {}); use cast",
                src.dtype(),
                dst.dtype()
            ),
        ));
    }
    conversion("copy", src, dst)
}

/// `x` viewed as rows of `cols`: the number of rows.
pub fn rows<B: Backend>(op: &'static str, x: &Tensor<B>, cols: usize) -> Result<usize> {
    if cols == 0 || x.len() % cols != 0 {
        return Err(Error::shape(
            op,
            format!(
                "{} elements ({:?}) are not rows of {cols}",
                x.len(),
                x.shape()
            ),
        ));
    }
    Ok(x.len() / cols)
}

/// Every tensor f32 and of the given length.
pub fn f32_lens<B: Backend>(op: &'static str, tensors: &[(&Tensor<B>, usize)]) -> Result<()> {
    for (t, _) in tensors {
        dtype(op, t, DType::F32)?;
    }
    lens(op, tensors)
}

/// Every tensor of the given length.
pub fn lens<B: Backend>(op: &'static str, tensors: &[(&Tensor<B>, usize)]) -> Result<()> {
    for (t, len) in tensors {
        if t.len() != *len {
            return Err(Error::shape(
                op,
                format!(
                    "an operand has {} elements ({:?}), {len} expected",
                    t.len(),
                    t.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// Outputs must not overlap any input or each other.
pub fn outputs_apart<B: Backend>(
    op: &'static str,
    inputs: &[&Tensor<B>],
    outputs: &[&Tensor<B>],
) -> Result<()> {
    for (i, out) in outputs.iter().enumerate() {
        if inputs.iter().chain(&outputs[..i]).any(|t| overlap(t, out)) {
            return Err(Error::shape(
                op,
                "an output overlaps an input or another output",
            ));
        }
    }
    Ok(())
}

pub fn layernorm<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: &Tensor<B>,
    y: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
) -> Result<usize> {
    const OP: &str = "layernorm";
    let cols = w.len();
    let rows = rows(OP, x, cols)?;
    dtypes(
        OP,
        &[
            ("x", x, Role::Storage),
            ("y", y, Role::Storage),
            ("w", w, Role::F32),
            ("b", b, Role::F32),
            ("mean", mean, Role::F32),
            ("rstd", rstd, Role::F32),
        ],
    )?;
    lens(
        OP,
        &[
            (x, x.len()),
            (w, cols),
            (b, cols),
            (y, x.len()),
            (mean, rows),
            (rstd, rows),
        ],
    )?;
    outputs_apart(OP, &[x, w, b], &[y, mean, rstd])?;
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<B: Backend>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    mean: &Tensor<B>,
    rstd: &Tensor<B>,
    dy: &Tensor<B>,
    dx: &Tensor<B>,
    dw: &Tensor<B>,
    db: &Tensor<B>,
) -> Result<usize> {
    const OP: &str = "layernorm_backward";
    let cols = w.len();
    let rows = rows(OP, x, cols)?;
    dtypes(
        OP,
        &[
            ("x", x, Role::Storage),
            ("dy", dy, Role::Storage),
            ("dx", dx, Role::Storage),
            ("w", w, Role::F32),
            ("mean", mean, Role::F32),
            ("rstd", rstd, Role::F32),
            ("dw", dw, Role::F32),
            ("db", db, Role::F32),
        ],
    )?;
    lens(
        OP,
        &[
            (x, x.len()),
            (w, cols),
            (mean, rows),
            (rstd, rows),
            (dy, x.len()),
            (dx, x.len()),
            (dw, cols),
            (db, cols),
        ],
    )?;
    outputs_apart(OP, &[x, w, mean, rstd, dy], &[dx, dw, db])?;
    Ok(rows)
}

/// (batch, t, d) of a mean pool's operands: `h` `[batch, t, d]`, `mask` `[batch, t]`,
/// `pooled` `[batch, d]`.
pub fn mean_pool<B: Backend>(
    op: &'static str,
    h: &Tensor<B>,
    mask: &Tensor<B>,
    pooled: &Tensor<B>,
) -> Result<(usize, usize, usize)> {
    let (&[batch, t, d], &[mb, mt], &[pb, pd]) = (h.shape(), mask.shape(), pooled.shape()) else {
        return Err(Error::shape(
            op,
            format!(
                "expected h [batch, t, d], mask [batch, t], pooled [batch, d]; got {:?}, {:?}, {:?}",
                h.shape(),
                mask.shape(),
                pooled.shape()
            ),
        ));
    };
    if (mb, mt, pb, pd) != (batch, t, batch, d) {
        return Err(Error::shape(
            op,
            format!(
                "h {:?}, mask {:?} and pooled {:?} disagree",
                h.shape(),
                mask.shape(),
                pooled.shape()
            ),
        ));
    }
    dtypes(
        op,
        &[
            ("the [batch, t, d] operand", h, Role::Storage),
            ("the [batch, d] operand", pooled, Role::Storage),
            ("mask", mask, Role::F32),
        ],
    )?;
    Ok((batch, t, d))
}

/// (batch, classes) of a cross-entropy's operands.
pub fn cross_entropy<B: Backend>(
    op: &'static str,
    logits: &Tensor<B>,
    labels: &Tensor<B>,
    weights: Option<&Tensor<B>>,
    label_smoothing: f32,
) -> Result<(usize, usize)> {
    let &[batch, classes] = logits.shape() else {
        return Err(Error::shape(
            op,
            format!("logits must be [batch, classes], not {:?}", logits.shape()),
        ));
    };
    if batch == 0 || classes == 0 {
        return Err(Error::shape(op, "an empty batch has no mean loss"));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::InvalidConfig {
            field: "label_smoothing",
            value: label_smoothing.to_string(),
            allowed: "from 0 to 1",
        });
    }
    let mut operands = vec![
        ("logits", logits, Role::Storage),
        ("labels", labels, Role::F32),
    ];
    operands.extend(weights.map(|w| ("weights", w, Role::F32)));
    dtypes(op, &operands)?;
    lens(op, &[(logits, batch * classes), (labels, batch)])?;
    if let Some(w) = weights {
        lens(op, &[(w, classes)])?;
    }
    Ok((batch, classes))
}

/// The outputs of a cross-entropy: the loss, the hits and the log-sum-exps, f32.
pub fn cross_entropy_outputs<B: Backend>(
    op: &'static str,
    (loss, hits, lse): (&Tensor<B>, &Tensor<B>, &Tensor<B>),
    batch: usize,
) -> Result<()> {
    dtypes(
        op,
        &[
            ("loss", loss, Role::F32),
            ("hits", hits, Role::F32),
            ("lse", lse, Role::F32),
        ],
    )?;
    lens(op, &[(loss, 1), (hits, 2), (lse, batch)])
}

/// The gradient of a cross-entropy may overwrite the logits (each row reads only its own
/// logits before writing them) but nothing else: every row reads all labels.
pub fn cross_entropy_backward_outputs<B: Backend>(
    op: &'static str,
    logits: &Tensor<B>,
    labels: &Tensor<B>,
    weights: Option<&Tensor<B>>,
    lse: &Tensor<B>,
    dlogits: &Tensor<B>,
    len: usize,
) -> Result<()> {
    dtypes(
        op,
        &[
            ("logits", logits, Role::Storage),
            ("dlogits", dlogits, Role::Storage),
            ("lse", lse, Role::F32),
        ],
    )?;
    lens(op, &[(lse, labels.len()), (dlogits, len)])?;
    in_place_or_apart(op, logits, dlogits)?;
    let mut others = vec![labels, lse];
    others.extend(weights);
    outputs_apart(op, &others, &[dlogits])
}

/// The operands of a bias gradient: `dy` (an activation gradient) viewed as rows of
/// `db.len()`, summed into f32 `db`; returns the number of rows.
pub fn bias_grad<B: Backend>(dy: &Tensor<B>, db: &Tensor<B>) -> Result<usize> {
    const OP: &str = "bias_grad";
    let cols = db.len();
    let rows = rows(OP, dy, cols)?;
    dtypes(OP, &[("dy", dy, Role::Storage), ("db", db, Role::F32)])?;
    outputs_apart(OP, &[dy], &[db])?;
    Ok(rows)
}

/// Adam's bias corrections divide by 1 − β^step: steps count from 1.
pub fn optimizer_step(step: u64) -> Result<()> {
    if step == 0 {
        return Err(Error::InvalidConfig {
            field: "step",
            value: "0".into(),
            allowed: "1 or more (steps count from 1)",
        });
    }
    Ok(())
}

/// The four tensors of an optimizer step: f32, one length, none overlapping another.
pub fn optimizer<B: Backend>(op: &'static str, tensors: &[&Tensor<B>]) -> Result<()> {
    let n = tensors[0].len();
    for (i, t) in tensors.iter().enumerate() {
        f32_lens(op, &[(t, n)])?;
        if tensors[..i].iter().any(|u| overlap(t, u)) {
            return Err(Error::shape(op, "optimizer tensors overlap"));
        }
    }
    Ok(())
}

pub fn dropout_p(p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::InvalidConfig {
            field: "dropout",
            value: p.to_string(),
            allowed: "a probability from 0 to 1",
        });
    }
    Ok(())
}

/// An attention's operand: its name, the tensor, its role in the dtype rule and its length.
type AttentionOperand<'t, B> = (&'static str, &'t Tensor<B>, Role, usize);

/// The operands of an attention: shapes from the spec, the dtype rule, outputs apart from
/// inputs.
pub fn attention<B: Backend>(
    op: &'static str,
    spec: &AttentionSpec,
    inputs: &[AttentionOperand<'_, B>],
    outputs: &[AttentionOperand<'_, B>],
) -> Result<()> {
    if spec.head_dim == 0 || spec.head_dim > AttentionSpec::MAX_HEAD_DIM || spec.heads == 0 {
        return Err(Error::shape(
            op,
            format!(
                "{} heads of size {}: sizes from 1 to {} are supported",
                spec.heads,
                spec.head_dim,
                AttentionSpec::MAX_HEAD_DIM
            ),
        ));
    }
    let elements = spec
        .batch
        .saturating_mul(spec.heads)
        .saturating_mul(spec.seq)
        .saturating_mul(spec.seq);
    if elements > u32::MAX as usize {
        return Err(Error::shape(
            op,
            format!(
                "batch·heads·seq² = {elements} exceeds the dropout mask's 32-bit element index"
            ),
        ));
    }
    dropout_p(spec.dropout)?;
    let all = || inputs.iter().chain(outputs);
    let roles: Vec<_> = all().map(|&(name, t, role, _)| (name, t, role)).collect();
    dtypes(op, &roles)?;
    let sizes: Vec<_> = all().map(|&(_, t, _, len)| (t, len)).collect();
    lens(op, &sizes)?;
    let ins: Vec<&Tensor<B>> = inputs.iter().map(|&(_, t, _, _)| t).collect();
    let outs: Vec<&Tensor<B>> = outputs.iter().map(|&(_, t, _, _)| t).collect();
    outputs_apart(op, &ins, &outs)
}

/// The operands of [`Backend::attention`].
pub fn attention_forward<B: Backend>(
    spec: &AttentionSpec,
    qkv: &Tensor<B>,
    key_mask: &Tensor<B>,
    out: &Tensor<B>,
    lse: &Tensor<B>,
) -> Result<()> {
    let (b, t, h, dm) = (spec.batch, spec.seq, spec.heads, spec.d_model());
    attention(
        "attention",
        spec,
        &[
            ("qkv", qkv, Role::Storage, b * t * 3 * dm),
            ("key_mask", key_mask, Role::F32, b * t),
        ],
        &[
            ("out", out, Role::Storage, b * t * dm),
            ("lse", lse, Role::F32, b * h * t),
        ],
    )
}

/// The operands of [`Backend::attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Backend>(
    spec: &AttentionSpec,
    qkv: &Tensor<B>,
    key_mask: &Tensor<B>,
    out: &Tensor<B>,
    lse: &Tensor<B>,
    dout: &Tensor<B>,
    dqkv: &Tensor<B>,
) -> Result<()> {
    let (b, t, h, dm) = (spec.batch, spec.seq, spec.heads, spec.d_model());
    attention(
        "attention_backward",
        spec,
        &[
            ("qkv", qkv, Role::Storage, b * t * 3 * dm),
            ("key_mask", key_mask, Role::F32, b * t),
            ("out", out, Role::Storage, b * t * dm),
            ("lse", lse, Role::F32, b * h * t),
            ("dout", dout, Role::Storage, b * t * dm),
        ],
        &[("dqkv", dqkv, Role::Storage, b * t * 3 * dm)],
    )
}

/// Casts and copies: the same length; in place only between equal dtypes.
pub fn conversion<B: Backend>(op: &'static str, x: &Tensor<B>, out: &Tensor<B>) -> Result<()> {
    same_len(op, x, out)?;
    if x.dtype() != out.dtype() && overlap(x, out) {
        return Err(Error::shape(
            op,
            "a conversion between dtypes cannot write over its input",
        ));
    }
    in_place_or_apart(op, x, out)
}
