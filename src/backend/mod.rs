//! The op set as a trait (DESIGN.md, The op set), its shape rules, and the two backends.
//!
//! Model code is written once against [`Backend`]; the CPU backend and the wgpu backend
//! implement it, and `crate::reference` is the f64 oracle both are checked against.

pub mod cpu;
pub mod gpu;
pub mod math;
mod matmul_spec;

pub use cpu::CpuBackend;
pub use gpu::GpuBackend;
pub use matmul_spec::MatmulSpec;

use crate::config::GpuConfig;
use crate::device::{Adapters, DeviceInfo, DeviceRequest, Selection};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::MemoryStats;
pub use crate::rng::DropoutKey;
use crate::tensor::{HostTensor, Tensor};

/// AdamW's hyper-parameters, as `torch.optim.AdamW` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// The step's scalars, computed once in f64: decay factor `1 − lr·wd`, step size
    /// `lr / (1 − β1^t)` and `√(1 − β2^t)`.
    pub fn step_scalars(&self, step: u64) -> (f32, f32, f32) {
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        (
            (1.0 - self.lr as f64 * self.weight_decay as f64) as f32,
            (self.lr as f64 / bc1) as f32,
            bc2.sqrt() as f32,
        )
    }
}

/// The log-sum-exp stored for a query with no real key: the largest finite f32 rather than
/// +∞, which shader compilers may assume never occurs. exp(score − it) is 0.
pub const NO_KEYS_LSE: f32 = f32::MAX;

/// The shape of a fused attention and its dropout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    /// Any size from 1 to [`AttentionSpec::MAX_HEAD_DIM`].
    pub head_dim: usize,
    /// Dropout probability on the attention probabilities (0 = off).
    pub dropout: f32,
    /// Keys the dropout mask: element `((b·heads + h)·seq + query)·seq + key`.
    pub key: DropoutKey,
}

impl AttentionSpec {
    pub const MAX_HEAD_DIM: usize = 128;

    pub fn new(batch: usize, seq: usize, heads: usize, head_dim: usize) -> AttentionSpec {
        AttentionSpec {
            batch,
            seq,
            heads,
            head_dim,
            dropout: 0.0,
            key: DropoutKey {
                seed: 0,
                step: 0,
                site: 0,
            },
        }
    }

    pub fn d_model(&self) -> usize {
        self.heads * self.head_dim
    }

    /// FLOPs of the forward pass, as DESIGN.md counts them: 4·b·h·t²·d.
    pub fn forward_flops(&self) -> f64 {
        4.0 * (self.batch * self.heads) as f64 * (self.seq * self.seq) as f64 * self.head_dim as f64
    }
}

/// Memory a tensor lives in. It can read itself back, so that a tensor alone can be brought to
/// the host.
pub trait Storage: Send + Sync + 'static {
    fn size_bytes(&self) -> u64;
    /// `bytes` bytes from `byte_offset`, after all work recorded so far has finished.
    fn read(&self, byte_offset: u64, bytes: u64) -> Result<Vec<u8>>;
}

/// The op set. Output tensors are written in place; ops may be recorded and run later, so
/// results are only certain to be there when read back or after [`Backend::synchronize`].
pub trait Backend: Send + Sync + Sized + 'static {
    type Storage: Storage;

    /// The device this backend runs on.
    fn info(&self) -> &DeviceInfo;

    /// Whether a product whose right-hand side is stored transposed (a linear layer's `Wᵀ`)
    /// costs this backend a copy of that operand into rows at every call, so that an operand of
    /// many products is better kept in rows ([`crate::model::SignTransformer::keep_weight_rows`]).
    /// The CPU copies it; the GPU's kernels read either layout.
    fn copies_transposed_rhs(&self) -> bool {
        false
    }

    /// A tensor whose contents are unspecified.
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>>;

    /// Writes host data into an existing tensor (or view) of the same shape and dtype.
    fn write(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()>;

    /// A new tensor holding `src`.
    fn upload(&self, src: &HostTensor) -> Result<Tensor<Self>> {
        let t = self.alloc(src.shape(), src.dtype())?;
        self.write(&t, src)?;
        Ok(t)
    }

    /// `out[b] = op(a[b]) · op(b[b]) (+ bias)` for every batch item, in f32.
    fn matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()>;

    /// The feed-forward layer's first product in one pass: `pre = a·b + bias` (as
    /// [`Backend::matmul`]) and `out = gelu(pre)`; `pre` is kept for the backward pass.
    fn matmul_bias_gelu(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()>;

    /// `out = a + b`, elementwise, f32.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// `out = alpha · x`, elementwise, f32.
    fn scale(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()>;

    /// `out = x` converted to `out`'s dtype (round to nearest even), any pair of dtypes.
    fn cast(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// `dst = src`, same shape and dtype.
    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()>;

    /// `out = gelu(x)`, the exact (erf) GELU, f32.
    fn gelu(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// `dx = dy · gelu'(x)`, f32.
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &Tensor<Self>) -> Result<()>;

    /// `db[j] = Σ_i dy[i, j]` over the rows of `dy` viewed as `[rows, db.len()]`, summed in a
    /// fixed order (the same bits on every run).
    fn bias_grad(&self, dy: &Tensor<Self>, db: &Tensor<Self>) -> Result<()>;

    /// Layer norm over the last dimension: `x` is `[rows, w.len()]`;
    /// `y = (x − mean)·rstd·w + b`, and the per-row `mean` and `rstd = 1/√(var + eps)` are
    /// saved for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn layernorm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
        y: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
    ) -> Result<()>;

    /// Gradients of [`Backend::layernorm`] from its saved statistics: `dx`, and `dw`, `db`
    /// (overwritten, summed over rows in a fixed order).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dy: &Tensor<Self>,
        dx: &Tensor<Self>,
        dw: &Tensor<Self>,
        db: &Tensor<Self>,
    ) -> Result<()>;

    /// Mean over real frames: `h` is `[batch, t, d]`, `mask` `[batch, t]` (1.0 = real frame,
    /// 0.0 = padding), `out` `[batch, d]`. A clip without real frames pools to zeros.
    fn mean_pool(&self, h: &Tensor<Self>, mask: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// Gradient of [`Backend::mean_pool`]: `dh[b, s, :] = mask[b, s]·dout[b, :]/count[b]`.
    fn mean_pool_backward(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
    ) -> Result<()>;

    /// Cross-entropy of `logits` `[batch, classes]` against `labels` `[batch]` (class
    /// indices stored as f32), as `torch.nn.functional.cross_entropy` with optional class
    /// `weights` and label smoothing: `loss` `[1]` (the mean), `hits` `[2]` (rows whose label
    /// is the top-1 class, and among the top min(5, classes)), and `lse` `[batch]`
    /// (log-sum-exp per row, for the backward pass). A label that is not a class index makes
    /// the loss NaN.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        loss: &Tensor<Self>,
        hits: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()>;

    /// `dlogits = scale · d(loss)/d(logits)` from the forward pass's `lse`.
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
        scale: f32,
        dlogits: &Tensor<Self>,
    ) -> Result<()>;

    /// One fused AdamW step over every parameter (all four tensors of one length, typically
    /// whole arenas); `step` counts from 1.
    fn adamw(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()>;

    /// `norm[0] = ‖grads‖₂`, summed in a fixed order.
    fn grad_norm(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()>;

    /// `grads *= min(1, max_norm / (norm[0] + 1e-6))`, with `norm` from
    /// [`Backend::grad_norm`] (read on the device: no wait).
    fn clip_grads(&self, grads: &Tensor<Self>, norm: &Tensor<Self>, max_norm: f32) -> Result<()>;

    /// `grads *= inv_scale`, and `found_inf[0]` = 1.0 if any gradient was not finite, else
    /// 0.0 (for dynamic loss scaling).
    fn unscale_check(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()>;

    /// `out = x · keep / (1 − p)` with the counter-based mask of [`crate::rng`] (element e of
    /// the tensor draws element e of `key`'s stream); all zeros when p = 1. The backward pass
    /// is the same op on the gradient with the same key.
    fn dropout(&self, x: &Tensor<Self>, p: f32, key: &DropoutKey, out: &Tensor<Self>)
        -> Result<()>;

    /// Fused multi-head self-attention (see [`AttentionSpec`]): `qkv` `[batch, t, 3·d_model]`
    /// packed q | k | v, `key_mask` `[batch, t]` (1.0 = real frame), `out`
    /// `[batch, t, d_model]`, and `lse` `[batch, heads, t]` saved for the backward pass. A query
    /// with no real key gets a zero output (and lse = [`NO_KEYS_LSE`]), never NaN; the model rejects such
    /// clips before they get here.
    fn attention(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()>;

    /// Gradient of [`Backend::attention`] with respect to `qkv`, recomputing the scores from
    /// `qkv` and the saved `lse` (and `out`, for rowsum(dO∘O)); writes all of `dqkv`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        dout: &Tensor<Self>,
        dqkv: &Tensor<Self>,
    ) -> Result<()>;

    /// Waits until every op recorded so far has finished.
    fn synchronize(&self) -> Result<()>;

    /// Hands the ops recorded so far to the device without waiting for them (nothing to do
    /// where ops run as they are called).
    fn flush(&self) {}

    /// Runs `f` (which records ops) and returns the device time of that work in ms, measured
    /// by the device's own clock where it has one (GPU timestamp queries); None where it has
    /// not, and the caller times the wall clock around [`Backend::synchronize`] instead.
    fn device_time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<f64>> {
        f()?;
        Ok(None)
    }

    /// Starts or stops timing each kernel by the device's own clock (slows every op a
    /// little); false where there is nothing to time that way (the CPU backend).
    fn time_kernels(&self, _on: bool) -> bool {
        false
    }

    /// Device time by kernel since the last call while timing is on, largest first; waits for
    /// the recorded work.
    fn take_kernel_times(&self) -> Result<Vec<KernelTime>> {
        Ok(Vec::new())
    }

    fn memory_stats(&self) -> MemoryStats;
    fn reset_peak_memory_stats(&self);
    /// Frees cached blocks that no tensor holds.
    fn empty_cache(&self);
}

/// Shape and dtype rules shared by both backends, so that they reject the same inputs with
/// the same messages.
pub(crate) mod check {
    use super::*;

    pub fn dtype<B: Backend>(op: &'static str, t: &Tensor<B>, want: DType) -> Result<()> {
        if t.dtype() != want {
            return Err(Error::UnsupportedDtype {
                op,
                dtype: t.dtype(),
                hint: "this op computes in f32; cast the operands first (f16/bf16 operands arrive \
                       with mixed precision)",
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
        spec.check(a, b, Some(bias), out)?;
        spec.check(a, b, Some(bias), pre)?;
        outputs_apart("matmul_bias_gelu", &[a, b, bias], &[pre, out])
    }

    /// True when two tensors share storage and some of their elements.
    pub fn overlap<B: Backend>(x: &Tensor<B>, y: &Tensor<B>) -> bool {
        x.shares_storage(y)
            && x.offset() < y.offset() + y.len()
            && y.offset() < x.offset() + x.len()
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

    /// Elementwise ops on f32: every operand as long as the output.
    pub fn elementwise<B: Backend>(
        op: &'static str,
        inputs: &[&Tensor<B>],
        out: &Tensor<B>,
    ) -> Result<()> {
        dtype(op, out, DType::F32)?;
        for t in inputs {
            dtype(op, t, DType::F32)?;
            same_len(op, t, out)?;
            in_place_or_apart(op, t, out)?;
        }
        Ok(())
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
        for (t, len) in tensors {
            dtype(op, t, DType::F32)?;
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
        f32_lens(
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
        f32_lens(
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
        let (&[batch, t, d], &[mb, mt], &[pb, pd]) = (h.shape(), mask.shape(), pooled.shape())
        else {
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
        f32_lens(
            op,
            &[(h, h.len()), (mask, mask.len()), (pooled, pooled.len())],
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
        f32_lens(op, &[(logits, batch * classes), (labels, batch)])?;
        if let Some(w) = weights {
            f32_lens(op, &[(w, classes)])?;
        }
        Ok((batch, classes))
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
        f32_lens(op, &[(lse, labels.len()), (dlogits, len)])?;
        in_place_or_apart(op, logits, dlogits)?;
        let mut others = vec![labels, lse];
        others.extend(weights);
        outputs_apart(op, &others, &[dlogits])
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

    /// The operands of an attention: shapes from the spec, f32, outputs apart from inputs.
    pub fn attention<B: Backend>(
        op: &'static str,
        spec: &AttentionSpec,
        inputs: &[(&Tensor<B>, usize)],
        outputs: &[(&Tensor<B>, usize)],
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
        f32_lens(op, inputs)?;
        f32_lens(op, outputs)?;
        let ins: Vec<&Tensor<B>> = inputs.iter().map(|(t, _)| *t).collect();
        let outs: Vec<&Tensor<B>> = outputs.iter().map(|(t, _)| *t).collect();
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
            &[(qkv, b * t * 3 * dm), (key_mask, b * t)],
            &[(out, b * t * dm), (lse, b * h * t)],
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
                (qkv, b * t * 3 * dm),
                (key_mask, b * t),
                (out, b * t * dm),
                (lse, b * h * t),
                (dout, b * t * dm),
            ],
            &[(dqkv, b * t * 3 * dm)],
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
}

/// The device time one kernel took (all its dispatches), from [`Backend::take_kernel_times`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KernelTime {
    /// `variant::entry point`, as the pipeline is labelled.
    pub kernel: String,
    pub calls: f64,
    pub ms: f64,
}

/// A backend chosen at run time: the CPU or a wgpu adapter.
pub enum AnyBackend {
    Cpu(CpuBackend),
    Gpu(GpuBackend),
}

/// Runs `$body` with `$b` bound to the concrete backend inside an [`AnyBackend`].
#[macro_export]
macro_rules! with_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::backend::AnyBackend::Cpu($b) => $body,
            $crate::backend::AnyBackend::Gpu($b) => $body,
        }
    };
}

impl AnyBackend {
    /// Opens the device that `config.device` requests (DESIGN.md, Devices).
    pub fn open(config: &GpuConfig) -> Result<AnyBackend> {
        config.validate()?;
        // Asking the drivers for adapters takes a moment and may log; the CPU needs none.
        if DeviceRequest::parse(&config.device)? == DeviceRequest::Cpu {
            return Ok(AnyBackend::Cpu(CpuBackend::new(config)?));
        }
        let adapters = Adapters::discover();
        match adapters.select(&config.device)? {
            Selection::Cpu => Ok(AnyBackend::Cpu(CpuBackend::new(config)?)),
            Selection::Adapter(i) => {
                let (adapter, info) = adapters.adapter(i).expect("selection is in range");
                Ok(AnyBackend::Gpu(GpuBackend::new(
                    adapter,
                    info.clone(),
                    config,
                )?))
            }
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        with_backend!(self, b => b.info())
    }
}
