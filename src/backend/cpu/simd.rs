//! The CPU kernels' vector instructions. The crate is built for baseline x86-64 (SSE2), so
//! that it runs anywhere; the loops that matter are compiled again for AVX2 + FMA and chosen
//! at run time by `pulp` (the SIMD layer the `gemm` crate is built on).
//!
//! Two forms: a closure for loops the compiler vectorises by itself ([`run`]), and a
//! [`WithSimd`] body that spells out its vectors (`S::f32s`, [`F32s`]) where it would not:
//! long polynomials (GELU), reductions whose lanes must stay in registers, and Philox.

use std::ops::{Add, Div, Mul, Neg, Sub};
use std::sync::LazyLock;

pub(super) use pulp::{Simd, WithSimd};

use crate::backend::math::{Real, ROUNDER};

static ARCH: LazyLock<pulp::Arch> = LazyLock::new(pulp::Arch::new);

/// Runs `op` compiled for the best instruction set this CPU has.
///
/// A closure given here must be `#[inline(always)]` (and what it calls too), or the compiler
/// may keep it as one baseline function that the AVX2 copy merely calls; a [`WithSimd`]
/// body's `with_simd` must be `#[inline(always)]` for the same reason.
#[inline(always)]
pub(super) fn run<Op: WithSimd>(op: Op) -> Op::Output {
    ARCH.dispatch(op)
}

/// Vectors computed side by side: each operation is issued for all of them before the next,
/// so that a long dependency chain (GELU's polynomials and division) runs in [`WIDTH`]
/// independent copies that the CPU overlaps, rather than one at a time.
pub(super) const WIDTH: usize = 4;

/// [`WIDTH`] SIMD vectors of f32 with their instruction set, so that `math`'s functions
/// (written over [`Real`]) compute on them.
#[derive(Clone, Copy)]
pub(super) struct Block<S: Simd> {
    simd: S,
    v: [S::f32s; WIDTH],
}

impl<S: Simd> Block<S> {
    /// Elements in a block.
    #[inline(always)]
    pub fn len() -> usize {
        WIDTH * std::mem::size_of::<S::f32s>() / 4
    }

    /// The first [`Block::len`] elements of `x`, or all of `x` followed by zeros.
    #[inline(always)]
    pub fn load(simd: S, x: &[f32]) -> Self {
        let lanes = Self::len() / WIDTH;
        let mut v = [simd.splat_f32s(0.0); WIDTH];
        if x.len() >= Self::len() {
            let (vectors, _) = S::as_simd_f32s(&x[..Self::len()]);
            v.copy_from_slice(vectors);
        } else {
            for (i, v) in v.iter_mut().enumerate() {
                let part = &x[(i * lanes).min(x.len())..((i + 1) * lanes).min(x.len())];
                *v = simd.partial_load_f32s(part);
            }
        }
        Block { simd, v }
    }

    /// Writes the block's first `out.len()` elements (at most [`Block::len`]) to `out`.
    #[inline(always)]
    pub fn store(self, out: &mut [f32]) {
        let lanes = Self::len() / WIDTH;
        if out.len() >= Self::len() {
            let (vectors, _) = S::as_mut_simd_f32s(&mut out[..Self::len()]);
            vectors.copy_from_slice(&self.v);
        } else {
            let n = out.len();
            for (i, v) in self.v.iter().enumerate() {
                let part = &mut out[(i * lanes).min(n)..((i + 1) * lanes).min(n)];
                self.simd.partial_store_f32s(part, *v);
            }
        }
    }

    /// `f` applied to each vector.
    #[inline(always)]
    fn each(self, f: impl Fn(S, S::f32s) -> S::f32s) -> Self {
        let mut v = self.v;
        for v in v.iter_mut() {
            *v = f(self.simd, *v);
        }
        Block { simd: self.simd, v }
    }

    /// `f` applied to each pair of vectors.
    #[inline(always)]
    fn zip(self, other: Self, f: impl Fn(S, S::f32s, S::f32s) -> S::f32s) -> Self {
        let mut v = self.v;
        for (v, o) in v.iter_mut().zip(other.v) {
            *v = f(self.simd, *v, o);
        }
        Block { simd: self.simd, v }
    }
}

macro_rules! binary_op {
    ($trait:ident, $method:ident, $simd_op:ident) => {
        impl<S: Simd> $trait for Block<S> {
            type Output = Self;
            #[inline(always)]
            fn $method(self, other: Self) -> Self {
                self.zip(
                    other,
                    #[inline(always)]
                    |s, a, b| s.$simd_op(a, b),
                )
            }
        }
    };
}
binary_op!(Add, add, add_f32s);
binary_op!(Sub, sub, sub_f32s);
binary_op!(Mul, mul, mul_f32s);
binary_op!(Div, div, div_f32s);

impl<S: Simd> Neg for Block<S> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        self.each(
            #[inline(always)]
            |s, a| s.neg_f32s(a),
        )
    }
}

impl<S: Simd> Real for Block<S> {
    #[inline(always)]
    fn constant(self, c: f32) -> Self {
        self.each(
            #[inline(always)]
            |s, _| s.splat_f32s(c),
        )
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        let mut v = self.v;
        for ((v, a), b) in v.iter_mut().zip(a.v).zip(b.v) {
            *v = self.simd.mul_add_f32s(*v, a, b);
        }
        Block { simd: self.simd, v }
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.each(
            #[inline(always)]
            |s, a| s.abs_f32s(a),
        )
    }
    #[inline(always)]
    fn clamp_to(self, lo: f32, hi: f32) -> Self {
        self.each(
            #[inline(always)]
            |s, a| s.min_f32s(s.max_f32s(a, s.splat_f32s(lo)), s.splat_f32s(hi)),
        )
    }
    #[inline(always)]
    fn select_nonneg(self, if_nonneg: Self, otherwise: Self) -> Self {
        let s = self.simd;
        let mut v = otherwise.v;
        for ((v, x), a) in v.iter_mut().zip(self.v).zip(if_nonneg.v) {
            let nonneg = s.greater_than_or_equal_f32s(x, s.splat_f32s(0.0));
            *v = s.select_f32s(nonneg, a, *v);
        }
        Block { simd: s, v }
    }
    #[inline(always)]
    fn pow2_of_rounded(self) -> Self {
        self.each(
            #[inline(always)]
            |s, a| {
                let k = s.sub_u32s(s.transmute_u32s_f32s(a), s.splat_u32s(ROUNDER.to_bits()));
                let biased = s.add_u32s(k, s.splat_u32s(127));
                s.transmute_f32s_u32s(s.wrapping_dyn_shl_u32s(biased, s.splat_u32s(23)))
            },
        )
    }
}

/// Applies `f` to every element of `x` into `out` (equal lengths), a [`Block`] at a time; the
/// tail goes through a partial block, so that every element gets the same arithmetic.
#[inline(always)]
pub(super) fn map1<S: Simd>(simd: S, x: &[f32], out: &mut [f32], f: impl Fn(Block<S>) -> Block<S>) {
    let n = Block::<S>::len();
    for (o, x) in out.chunks_mut(n).zip(x.chunks(n)) {
        f(Block::load(simd, x)).store(o);
    }
}

/// [`map1`] for a function of two inputs.
#[inline(always)]
pub(super) fn map2<S: Simd>(
    simd: S,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Block<S>, Block<S>) -> Block<S>,
) {
    let n = Block::<S>::len();
    for ((o, a), b) in out.chunks_mut(n).zip(a.chunks(n)).zip(b.chunks(n)) {
        f(Block::load(simd, a), Block::load(simd, b)).store(o);
    }
}
