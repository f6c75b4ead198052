//! The op set as a trait (DESIGN.md, The op set), its shape rules, and the two backends.
//!
//! Model code is written once against [`Backend`]; the CPU backend and the wgpu backend
//! implement it, and `crate::reference` is the f64 oracle both are checked against.

mod check;
pub mod cpu;
pub mod gpu;
pub(crate) mod math;
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

/// The elementwise ops: one kernel family on each backend, `out[i] = f(inputs[..][i])`. A new
/// one is a variant here, its reference, its CPU arm, its WGSL entry point and its GPU entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Elementwise {
    /// `a + b`.
    Add,
    /// `alpha · x`.
    Scale(f32),
    /// The exact (erf) GELU.
    Gelu,
    /// `dy · gelu'(x)`, from inputs `[x, dy]`.
    GeluBackward,
}

impl Elementwise {
    /// The op's name in errors (as the [`Backend`] method is called).
    pub fn name(self) -> &'static str {
        match self {
            Elementwise::Add => "add",
            Elementwise::Scale(_) => "scale",
            Elementwise::Gelu => "gelu",
            Elementwise::GeluBackward => "gelu_backward",
        }
    }

    /// How many input tensors the op reads.
    pub fn inputs(self) -> usize {
        match self {
            Elementwise::Add | Elementwise::GeluBackward => 2,
            Elementwise::Scale(_) | Elementwise::Gelu => 1,
        }
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
///
/// Every op is a provided method that checks its operands (dtypes, lengths, overlaps, specs)
/// and then calls the backend's `<op>_unchecked` implementation with what the checks derived,
/// so that no backend skips a check and all reject the same inputs with the same messages.
/// An implementation checks only its own limits (such as the GPU's 32-bit indices).
///
/// Dtypes (DESIGN.md, Precision): each op computes in f32 and stores its activation operands
/// in one storage dtype S, f32, f16 or bf16 (rounding to nearest even on store; beyond f16's
/// range a result is ±∞); statistics, parameters, their gradients and losses stay f32. Each
/// method says which operand is which; `check.rs` holds the rule, and a breach is an
/// [`Error::OperandDtype`](crate::Error::OperandDtype) naming the operand.
pub trait Backend: Send + Sync + Sized + 'static {
    type Storage: Storage;
    /// Recorded device work that [`Backend::replay`] runs again ([`Backend::capture`]).
    type Replay: Send + Sync;

    /// The device this backend runs on.
    fn info(&self) -> &DeviceInfo;

    /// Runs `f`, a sequence of ops (a forward or backward pass), where this backend runs one
    /// fastest. The CPU runs it on a thread of its pool, so that an op that shares its work
    /// hands part to the pool's other threads, which stay awake for a moment between ops,
    /// rather than waking them, and waiting for them, at every op. Elsewhere it calls `f`.
    fn run_ops<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// Linear layer weight `w` [out, in] (the right-hand side of `x·wᵀ`) in the layout this
    /// backend's products read fastest, for a model whose weights no longer change: products
    /// name it with [`MatmulSpec::packed`]. None where the products read `w` as it is at full
    /// speed (the GPU's kernels read either layout). The CPU packs it into its kernel's panels,
    /// in f32 whatever `w`'s dtype (it computes in f32), so that no product packs it again.
    fn pack_weight(&self, w: &Tensor<Self>) -> Result<Option<Tensor<Self>>> {
        if w.shape().len() != 2 {
            return Err(Error::shape(
                "pack_weight",
                format!("a weight is [out, in], not {:?}", w.shape()),
            ));
        }
        self.pack_weight_unchecked(w)
    }

    fn pack_weight_unchecked(&self, _w: &Tensor<Self>) -> Result<Option<Tensor<Self>>> {
        Ok(None)
    }

    /// A tensor whose contents are unspecified.
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>>;

    /// Writes host data into an existing tensor (or view) of the same shape and dtype.
    fn write(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        check::write(dst, src)?;
        self.write_unchecked(dst, src)
    }

    /// A new tensor holding `src`.
    fn upload(&self, src: &HostTensor) -> Result<Tensor<Self>> {
        let t = self.alloc(src.shape(), src.dtype())?;
        self.write(&t, src)?;
        Ok(t)
    }

    /// `out[b] = op(a[b]) · op(b[b]) (+ bias)` for every batch item, summed in f32. `a` and `b`
    /// in the storage dtype S; `out` and `bias` in S or f32 (a weight gradient `xᵀ·dy` reads
    /// half-precision activations and writes an f32 gradient).
    fn matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        spec.check(a, b, bias, out)?;
        self.matmul_unchecked(a, b, bias, out, spec)
    }

    /// The feed-forward layer's first product in one pass: `pre = a·b + bias` (as
    /// [`Backend::matmul`]) and `out = gelu(pre)`; `pre` is kept for the backward pass. `a`,
    /// `b`, `pre` and `out` in S, `bias` in S or f32; GELU reads `pre` as stored.
    fn matmul_bias_gelu(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()> {
        check::matmul_bias_gelu(a, b, bias, spec, pre, out)?;
        self.matmul_bias_gelu_unchecked(a, b, bias, spec, pre, out)
    }

    /// `out = a + b`, elementwise; every operand in S.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        self.elementwise(Elementwise::Add, &[a, b], out)
    }

    /// `out = alpha · x`, elementwise; every operand in S.
    fn scale(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()> {
        self.elementwise(Elementwise::Scale(alpha), &[x], out)
    }

    /// `out = x` converted to `out`'s dtype (round to nearest even), any pair of dtypes.
    fn cast(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        check::conversion("cast", x, out)?;
        self.cast_unchecked(x, out)
    }

    /// `dst = src`, same shape and dtype: the backend's cast between equal dtypes (on the GPU
    /// the cast kernel outruns the copy engine; BENCHMARKS.md).
    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()> {
        check::copy(src, dst)?;
        self.cast_unchecked(src, dst)
    }

    /// `out = gelu(x)`, the exact (erf) GELU; every operand in S.
    fn gelu(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        self.elementwise(Elementwise::Gelu, &[x], out)
    }

    /// `dx = dy · gelu'(x)`; every operand in S.
    fn gelu_backward(&self, x: &Tensor<Self>, dy: &Tensor<Self>, dx: &Tensor<Self>) -> Result<()> {
        self.elementwise(Elementwise::GeluBackward, &[x, dy], dx)
    }

    /// Any [`Elementwise`] op: `inputs` as [`Elementwise::inputs`] counts them, each as long
    /// as `out`, all in S.
    fn elementwise(
        &self,
        op: Elementwise,
        inputs: &[&Tensor<Self>],
        out: &Tensor<Self>,
    ) -> Result<()> {
        check::elementwise_op(op, inputs, out)?;
        self.elementwise_unchecked(op, inputs, out)
    }

    /// `db[j] = Σ_i dy[i, j]` over the rows of `dy` viewed as `[rows, db.len()]`, summed in a
    /// fixed order (the same bits on every run). `dy` in S, `db` f32.
    fn bias_grad(&self, dy: &Tensor<Self>, db: &Tensor<Self>) -> Result<()> {
        let rows = check::bias_grad(dy, db)?;
        self.bias_grad_unchecked(dy, db, rows)
    }

    /// Layer norm over the last dimension: `x` is `[rows, w.len()]`;
    /// `y = (x − mean)·rstd·w + b`, and the per-row `mean` and `rstd = 1/√(var + eps)` are
    /// saved for the backward pass. `x` and `y` in S; `w`, `b`, `mean` and `rstd` f32.
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
    ) -> Result<()> {
        let rows = check::layernorm(x, w, b, y, mean, rstd)?;
        self.layernorm_unchecked(x, w, b, eps, y, mean, rstd, rows)
    }

    /// Gradients of [`Backend::layernorm`] from its saved statistics: `dx`, and `dw`, `db`
    /// (overwritten, summed over rows in a fixed order). `x`, `dy` and `dx` in S; `w`, `mean`,
    /// `rstd`, `dw` and `db` f32.
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
    ) -> Result<()> {
        let rows = check::layernorm_backward(x, w, mean, rstd, dy, dx, dw, db)?;
        self.layernorm_backward_unchecked(x, w, mean, rstd, dy, dx, dw, db, rows)
    }

    /// Mean over real frames: `h` is `[batch, t, d]`, `mask` `[batch, t]` (1.0 = real frame,
    /// 0.0 = padding), `out` `[batch, d]`. A clip without real frames pools to zeros. `h` and
    /// `out` in S, `mask` f32.
    fn mean_pool(&self, h: &Tensor<Self>, mask: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        const OP: &str = "mean_pool";
        let dims = check::mean_pool(OP, h, mask, out)?;
        check::outputs_apart(OP, &[h, mask], &[out])?;
        self.mean_pool_unchecked(h, mask, out, dims)
    }

    /// Gradient of [`Backend::mean_pool`]: `dh[b, s, :] = mask[b, s]·dout[b, :]/count[b]`.
    /// `dout` and `dh` in S, `mask` f32.
    fn mean_pool_backward(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "mean_pool_backward";
        let dims = check::mean_pool(OP, dh, mask, dout)?;
        check::outputs_apart(OP, &[dout, mask], &[dh])?;
        self.mean_pool_backward_unchecked(dout, mask, dh, dims)
    }

    /// Cross-entropy of `logits` `[batch, classes]` against `labels` `[batch]` (class
    /// indices stored as f32), as `torch.nn.functional.cross_entropy` with optional class
    /// `weights` and label smoothing: `loss` `[1]` (the mean), `hits` `[2]` (rows whose label
    /// is the top-1 class, and among the top min(5, classes)), and `lse` `[batch]`
    /// (log-sum-exp per row, for the backward pass). A label that is not a class index makes
    /// the loss NaN. `logits` in S; everything else f32.
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
    ) -> Result<()> {
        const OP: &str = "cross_entropy";
        let (batch, classes) = check::cross_entropy(OP, logits, labels, weights, label_smoothing)?;
        check::cross_entropy_outputs(OP, (loss, hits, lse), batch)?;
        let mut inputs = vec![logits, labels];
        inputs.extend(weights);
        check::outputs_apart(OP, &inputs, &[loss, hits, lse])?;
        self.cross_entropy_unchecked(
            logits,
            labels,
            weights,
            label_smoothing,
            loss,
            hits,
            lse,
            (batch, classes),
        )
    }

    /// `dlogits = scale · d(loss)/d(logits)` from the forward pass's `lse`. `logits` and
    /// `dlogits` in S; `labels`, `weights` and `lse` f32.
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
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let (batch, classes) = check::cross_entropy(OP, logits, labels, weights, label_smoothing)?;
        check::cross_entropy_backward_outputs(
            OP,
            logits,
            labels,
            weights,
            lse,
            dlogits,
            batch * classes,
        )?;
        self.cross_entropy_backward_unchecked(
            logits,
            labels,
            weights,
            label_smoothing,
            lse,
            scale,
            dlogits,
            (batch, classes),
        )
    }

    /// One fused AdamW step over every parameter (all four tensors of one length, typically
    /// whole arenas); `step` counts from 1. All f32: the master weights and their moments.
    fn adamw(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()> {
        check::optimizer("adamw", &[params, grads, m, v])?;
        check::optimizer_step(step)?;
        self.adamw_unchecked(params, grads, m, v, hp, step)
    }

    /// `norm[0] = ‖grads‖₂`, summed in a fixed order. All f32.
    fn grad_norm(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()> {
        const OP: &str = "grad_norm";
        check::f32_lens(OP, &[(grads, grads.len()), (norm, 1)])?;
        check::outputs_apart(OP, &[grads], &[norm])?;
        self.grad_norm_unchecked(grads, norm)
    }

    /// `grads *= min(1, max_norm / (norm[0] + 1e-6))`, with `norm` from
    /// [`Backend::grad_norm`] (read on the device: no wait). All f32.
    fn clip_grads(&self, grads: &Tensor<Self>, norm: &Tensor<Self>, max_norm: f32) -> Result<()> {
        const OP: &str = "clip_grads";
        check::f32_lens(OP, &[(grads, grads.len()), (norm, 1)])?;
        check::outputs_apart(OP, &[norm], &[grads])?;
        self.clip_grads_unchecked(grads, norm, max_norm)
    }

    /// `grads *= inv_scale`, and `found_inf[0]` = 1.0 if any gradient was not finite, else
    /// 0.0 (for dynamic loss scaling). All f32.
    fn unscale_check(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()> {
        const OP: &str = "unscale_check";
        check::f32_lens(OP, &[(grads, grads.len()), (found_inf, 1)])?;
        check::outputs_apart(OP, &[], &[grads, found_inf])?;
        self.unscale_check_unchecked(grads, inv_scale, found_inf)
    }

    /// `out = x · keep / (1 − p)` with the counter-based mask of [`crate::rng`] (element e of
    /// the tensor draws element e of `key`'s stream); all zeros when p = 1. The backward pass
    /// is the same op on the gradient with the same key. `x` and `out` in S.
    fn dropout(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()> {
        check::dropout_p(p)?;
        check::elementwise("dropout", &[x], out)?;
        self.dropout_unchecked(x, p, key, out)
    }

    /// Fused multi-head self-attention (see [`AttentionSpec`]): `qkv` `[batch, t, 3·d_model]`
    /// packed q | k | v, `key_mask` `[batch, t]` (1.0 = real frame), `out`
    /// `[batch, t, d_model]`, and `lse` `[batch, heads, t]` saved for the backward pass. A query
    /// with no real key gets a zero output (and lse = [`NO_KEYS_LSE`]), never NaN; the model rejects such
    /// clips before they get here. `qkv` and `out` in S; `key_mask` and `lse` f32.
    fn attention(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        check::attention_forward(spec, qkv, key_mask, out, lse)?;
        self.attention_unchecked(qkv, key_mask, spec, out, lse)
    }

    /// Gradient of [`Backend::attention`] with respect to `qkv`, recomputing the scores from
    /// `qkv` and the saved `lse` (and `out` as stored, for rowsum(dO∘O)); writes all of `dqkv`.
    /// `qkv`, `out`, `dout` and `dqkv` in S; `key_mask` and `lse` f32.
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
    ) -> Result<()> {
        check::attention_backward(spec, qkv, key_mask, out, lse, dout, dqkv)?;
        self.attention_backward_unchecked(qkv, key_mask, spec, out, lse, dout, dqkv)
    }

    // The implementations. Each is called by the provided method of the same name after its
    // checks, and receives what they derived; never call one directly.

    /// [`Backend::write`] after its checks; never call it directly.
    #[doc(hidden)]
    fn write_unchecked(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()>;

    /// [`Backend::matmul`] after its checks; never call it directly.
    #[doc(hidden)]
    fn matmul_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()>;

    /// [`Backend::matmul_bias_gelu`] after its checks; never call it directly.
    #[doc(hidden)]
    fn matmul_bias_gelu_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::elementwise`] (and so [`Backend::add`], [`Backend::scale`], [`Backend::gelu`],
    /// [`Backend::gelu_backward`]) after its checks; never call it directly.
    #[doc(hidden)]
    fn elementwise_unchecked(
        &self,
        op: Elementwise,
        inputs: &[&Tensor<Self>],
        out: &Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::cast`] and [`Backend::copy`] after their checks; never call it directly.
    #[doc(hidden)]
    fn cast_unchecked(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()>;

    /// [`Backend::bias_grad`] after its checks (`dy` holds `rows` rows); never call it
    /// directly.
    #[doc(hidden)]
    fn bias_grad_unchecked(&self, dy: &Tensor<Self>, db: &Tensor<Self>, rows: usize) -> Result<()>;

    /// [`Backend::layernorm`] after its checks (`x` holds `rows` rows); never call it
    /// directly.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn layernorm_unchecked(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: &Tensor<Self>,
        eps: f32,
        y: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        rows: usize,
    ) -> Result<()>;

    /// [`Backend::layernorm_backward`] after its checks (`x` holds `rows` rows); never call it
    /// directly.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward_unchecked(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        mean: &Tensor<Self>,
        rstd: &Tensor<Self>,
        dy: &Tensor<Self>,
        dx: &Tensor<Self>,
        dw: &Tensor<Self>,
        db: &Tensor<Self>,
        rows: usize,
    ) -> Result<()>;

    /// [`Backend::mean_pool`] after its checks, with `(batch, t, d)`; never call it directly.
    #[doc(hidden)]
    fn mean_pool_unchecked(
        &self,
        h: &Tensor<Self>,
        mask: &Tensor<Self>,
        out: &Tensor<Self>,
        dims: (usize, usize, usize),
    ) -> Result<()>;

    /// [`Backend::mean_pool_backward`] after its checks, with `(batch, t, d)`; never call it
    /// directly.
    #[doc(hidden)]
    fn mean_pool_backward_unchecked(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
        dims: (usize, usize, usize),
    ) -> Result<()>;

    /// [`Backend::cross_entropy`] after its checks, with `(batch, classes)`; never call it
    /// directly.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        loss: &Tensor<Self>,
        hits: &Tensor<Self>,
        lse: &Tensor<Self>,
        shape: (usize, usize),
    ) -> Result<()>;

    /// [`Backend::cross_entropy_backward`] after its checks, with `(batch, classes)`; never
    /// call it directly.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_backward_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
        scale: f32,
        dlogits: &Tensor<Self>,
        shape: (usize, usize),
    ) -> Result<()>;

    /// [`Backend::adamw`] after its checks; never call it directly.
    #[doc(hidden)]
    fn adamw_unchecked(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()>;

    /// [`Backend::grad_norm`] after its checks; never call it directly.
    #[doc(hidden)]
    fn grad_norm_unchecked(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()>;

    /// [`Backend::clip_grads`] after its checks; never call it directly.
    #[doc(hidden)]
    fn clip_grads_unchecked(
        &self,
        grads: &Tensor<Self>,
        norm: &Tensor<Self>,
        max_norm: f32,
    ) -> Result<()>;

    /// [`Backend::unscale_check`] after its checks; never call it directly.
    #[doc(hidden)]
    fn unscale_check_unchecked(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::dropout`] after its checks; never call it directly.
    #[doc(hidden)]
    fn dropout_unchecked(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::attention`] after its checks; never call it directly.
    #[doc(hidden)]
    fn attention_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()>;

    /// [`Backend::attention_backward`] after its checks; never call it directly.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    fn attention_backward_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        dout: &Tensor<Self>,
        dqkv: &Tensor<Self>,
    ) -> Result<()>;

    /// Runs `f`, which records ops, and keeps the device work the calling thread recorded so
    /// that [`Backend::replay`] can record it again without the ops' checks, allocations and
    /// lookups. A replay binds the buffers `f`'s ops bound (their pool scratch is kept with
    /// it): it reads the inputs those tensors hold when it runs and writes the same outputs, so
    /// the caller keeps every tensor `f` used alive and unchanged in shape while it replays.
    /// None where there is nothing to keep: ops that run as they are called (the CPU), work
    /// other than dispatches, or another thread capturing at the same time; the caller then
    /// calls `f` again instead of replaying.
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Self::Replay>> {
        f()?;
        Ok(None)
    }

    /// Records the work of a [`Backend::capture`] again, after the work recorded so far.
    fn replay(&self, replay: &Self::Replay) -> Result<()>;

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

    /// A guard that empties the device's memory cache when dropped, whichever backend this is
    /// (the counterpart of the replaced system's `gpu_memory_guard`): a long-running service
    /// holds one around a burst of work to hand the cache back after it.
    pub fn memory_guard(&self) -> AnyMemoryGuard<'_> {
        AnyMemoryGuard(self)
    }
}

/// Empties the cache of an [`AnyBackend`]'s memory pool when dropped
/// ([`AnyBackend::memory_guard`]).
pub struct AnyMemoryGuard<'a>(&'a AnyBackend);

impl Drop for AnyMemoryGuard<'_> {
    fn drop(&mut self) {
        with_backend!(self.0, b => b.empty_cache());
    }
}
