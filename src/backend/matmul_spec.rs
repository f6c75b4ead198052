//! The matrix product's contract: sizes, layouts, batching, and the checks on its operands.

use super::check::{self, Role};
use super::Backend;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `C[M,N] = op(A)·op(B) (+ bias[N])` for `batch` items. Matrices are row-major and
/// contiguous within an item: A is `[M,K]` (or `[K,M]` when `trans_a`), B is `[K,N]` (or
/// `[N,K]` when `trans_b`), C is `[M,N]`. Item `i` starts `i·stride` elements into each
/// operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// B is a weight packed by [`Backend::pack_weight`](super::Backend::pack_weight): a
    /// tensor [⌈n/NR⌉, k, NR] of the backend's panel width NR ([`MatmulSpec::packed`]).
    pub packed_b: bool,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl MatmulSpec {
    /// One product, no transposes.
    pub fn new(m: usize, n: usize, k: usize) -> MatmulSpec {
        MatmulSpec {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            packed_b: false,
            batch: 1,
            stride_a: m.saturating_mul(k),
            stride_b: k.saturating_mul(n),
            stride_c: m.saturating_mul(n),
        }
    }

    pub fn transpose(mut self, trans_a: bool, trans_b: bool) -> MatmulSpec {
        self.trans_a = trans_a;
        self.trans_b = trans_b;
        self
    }

    /// B is a packed weight (one item, A in rows): `x·Wᵀ` for a linear layer's W [n, k]
    /// that [`Backend::pack_weight`](super::Backend::pack_weight) packed.
    pub fn packed(mut self) -> MatmulSpec {
        self.packed_b = true;
        self
    }

    /// `batch` items laid out back to back.
    pub fn batched(mut self, batch: usize) -> MatmulSpec {
        self.batch = batch;
        self
    }

    /// `batch` items at the given strides (a stride of 0 shares one operand across the batch).
    pub fn strided(
        mut self,
        batch: usize,
        stride_a: usize,
        stride_b: usize,
        stride_c: usize,
    ) -> MatmulSpec {
        self.batch = batch;
        self.stride_a = stride_a;
        self.stride_b = stride_b;
        self.stride_c = stride_c;
        self
    }

    /// The layout's short name: `nn`, `nt`, `tn` or `tt` (A's then B's).
    pub fn layout(&self) -> &'static str {
        match (self.trans_a, self.trans_b) {
            (false, false) => "nn",
            (false, true) => "nt",
            (true, false) => "tn",
            (true, true) => "tt",
        }
    }

    /// Leading dimension (row length) of A and B as stored.
    pub fn lda(&self) -> usize {
        if self.trans_a {
            self.m
        } else {
            self.k
        }
    }

    pub fn ldb(&self) -> usize {
        if self.trans_b {
            self.k
        } else {
            self.n
        }
    }

    /// Elements an operand must hold: the last item's start plus one item. Sizes too large
    /// for memory saturate at `usize::MAX`, which no tensor holds, so they fail the checks
    /// instead of wrapping.
    fn extent(&self, stride: usize, rows: usize, cols: usize) -> usize {
        if self.batch == 0 {
            0
        } else {
            (self.batch - 1)
                .saturating_mul(stride)
                .saturating_add(rows.saturating_mul(cols))
        }
    }

    pub fn a_len(&self) -> usize {
        self.extent(self.stride_a, self.m, self.k)
    }

    pub fn b_len(&self) -> usize {
        self.extent(self.stride_b, self.k, self.n)
    }

    pub fn c_len(&self) -> usize {
        self.extent(self.stride_c, self.m, self.n)
    }

    /// Floating-point operations: 2·M·N·K per item.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }

    /// Checks operands against the spec: the dtype rule (A and B in one storage dtype S, C and
    /// the bias in S or f32), long enough, and items of C that do not overlap (they are
    /// written in parallel).
    pub fn check<B: Backend>(
        &self,
        a: &Tensor<B>,
        b: &Tensor<B>,
        bias: Option<&Tensor<B>>,
        out: &Tensor<B>,
    ) -> Result<()> {
        const OP: &str = "matmul";
        // A packed B is in the dtype its backend packs in (the CPU's: f32).
        let b_role = if self.packed_b {
            self.check_packed(b)?;
            Role::StorageOrF32
        } else {
            Role::Storage
        };
        let mut operands = vec![
            ("A", a, Role::Storage),
            ("B", b, b_role),
            ("C", out, Role::StorageOrF32),
        ];
        operands.extend(bias.map(|t| ("bias", t, Role::StorageOrF32)));
        check::dtypes(OP, &operands)?;
        let b_len = if self.packed_b { b.len() } else { self.b_len() };
        for (name, t, need) in [
            ("A", a, self.a_len()),
            ("B", b, b_len),
            ("C", out, self.c_len()),
        ] {
            if t.len() < need {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{name} has {} elements ({:?}) but {}×{}×{} {} with batch {} needs {need}",
                        t.len(),
                        t.shape(),
                        self.m,
                        self.n,
                        self.k,
                        self.layout(),
                        self.batch
                    ),
                ));
            }
        }
        if let Some(bias) = bias {
            if bias.len() != self.n {
                return Err(Error::shape(
                    OP,
                    format!("bias has {} elements, N is {}", bias.len(), self.n),
                ));
            }
        }
        if self.batch > 1 && self.stride_c < self.m.saturating_mul(self.n) {
            return Err(Error::shape(
                OP,
                format!(
                    "output items overlap: stride_c {} is less than M·N = {}",
                    self.stride_c,
                    self.m * self.n
                ),
            ));
        }
        for input in [a, b].into_iter().chain(bias) {
            if check::overlap(input, out) {
                return Err(Error::shape(OP, "the output overlaps an input"));
            }
        }
        Ok(())
    }

    /// A packed B ([`MatmulSpec::packed`]): one item, A in rows, B [⌈n/NR⌉, k, NR].
    fn check_packed<B: Backend>(&self, b: &Tensor<B>) -> Result<()> {
        let fits = match *b.shape() {
            [panels, k, nr] => nr > 0 && k == self.k && panels == self.n.div_ceil(nr),
            _ => false,
        };
        if fits && !self.trans_a && !self.trans_b && self.batch == 1 {
            return Ok(());
        }
        Err(Error::shape(
            "matmul",
            format!(
                "a packed B of shape {:?} does not fit {}×{}×{} {} with batch {}: it takes one \
                 item, A in rows, and B [⌈N/NR⌉, K, NR] as Backend::pack_weight packs it",
                b.shape(),
                self.m,
                self.n,
                self.k,
                self.layout(),
                self.batch
            ),
        ))
    }
}
