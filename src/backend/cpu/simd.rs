//! The CPU kernels' vector instructions. The crate is built for baseline x86-64 (SSE2), so
//! that it runs anywhere; the loops that matter are compiled again for AVX2 + FMA and for
//! AVX-512 (pulp's `x86-v4`: 16 lanes and 32 registers), and chosen at run time by `pulp` (the
//! SIMD layer the `gemm` crate is built on). Code written over `S: Simd` must hold for any
//! lane count; the tests run every body under pulp's emulated 4-, 8- and 16-lane sets too.
//!
//! Two forms: a closure for loops the compiler vectorises by itself ([`run`]), and a
//! [`WithSimd`] body that spells out its vectors (`S::f32s`, [`Block`]) where it would not:
//! long polynomials (GELU), reductions whose lanes must stay in registers, and Philox
//! (`rng`). Left to itself, the compiler turned a 32-lane sum into scalar code in one build
//! and kept a closure out of the AVX2 copy in another; explicit vectors do not depend on that.

use std::ops::{Add, Div, Mul, Neg, Range, Sub};

pub(super) use pulp::{Simd, WithSimd};

use crate::backend::math::{Real, ROUNDER};

/// Runs `op` compiled for the best instruction set this CPU has ([`crate::isa`]).
///
/// A closure given here must be `#[inline(always)]` (and what it calls too), or the compiler
/// may keep it as one baseline function that the AVX2 copy merely calls; a [`WithSimd`]
/// body's `with_simd` must be `#[inline(always)]` for the same reason. Closures only for
/// short loops: one that held a whole attention head was kept out of line even so, and ran
/// as SSE2 (a closure is one function, not one per instruction set as a generic body is).
/// Inside a body, no `array::map` or `array::from_fn` over vectors either: their closures
/// were compiled outside it, and each vector instruction became a call. (`perf record -e
/// cpu-clock` shows both: time in `core_arch` functions, or in `FnOnce::call_once`.)
#[inline(always)]
pub(crate) fn run<Op: WithSimd>(op: Op) -> Op::Output {
    crate::isa::ARCH.dispatch(op)
}

/// Calls `check(simd, name)` under every instruction set a SIMD body may run under: pulp's
/// scalar one (CPUs without AVX2 + FMA), its emulated 4-, 8- and 16-lane ones (the widths of
/// SSE/NEON, AVX2 and AVX-512), and this machine's own AVX2 and AVX-512 where it has them (it
/// dispatches to one only). For tests, here and in `tests/`.
#[doc(hidden)]
#[macro_export]
macro_rules! for_every_instruction_set {
    ($check:ident) => {{
        $check(::pulp::Scalar, "scalar");
        $check(::pulp::Scalar128b, "4 lanes");
        $check(::pulp::Scalar256b, "8 lanes");
        $check(::pulp::Scalar512b, "16 lanes");
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(avx2) = ::pulp::x86::V3::try_new() {
                $check(avx2, "AVX2");
            }
            if let Some(avx512) = ::pulp::x86::V4::try_new() {
                $check(avx512, "AVX-512");
            }
        }
    }};
}

/// Vectors computed side by side by default: each operation is issued for all of them before
/// the next, so that a dependency chain runs in [`WIDTH`] independent copies, and loop overhead
/// is paid once per four vectors.
pub(super) const WIDTH: usize = 4;

/// `W` SIMD vectors of f32 with their instruction set, so that `math`'s functions (written
/// over [`Real`]) compute on them.
#[derive(Clone, Copy)]
pub(super) struct Block<S: Simd, const W: usize = WIDTH> {
    simd: S,
    v: [S::f32s; W],
}

impl<S: Simd, const W: usize> Block<S, W> {
    /// Elements in a block.
    #[inline(always)]
    pub fn len() -> usize {
        W * std::mem::size_of::<S::f32s>() / 4
    }

    /// The first [`Block::len`] elements of `x`, or all of `x` followed by zeros. Called
    /// through [`for_each_block`], the length test folds away in the loop over whole blocks.
    #[inline(always)]
    pub fn load(simd: S, x: &[f32]) -> Self {
        if x.len() >= Self::len() {
            // SAFETY: `x` holds at least a block's worth of f32, and `S::f32s` is plain f32
            // lanes (pulp's vectors are `Pod`); the read is unaligned. (One typed read: a
            // copy through a slice left the vectors on the stack.)
            let v = unsafe { std::ptr::read_unaligned(x.as_ptr() as *const [S::f32s; W]) };
            return Block { simd, v };
        }
        let lanes = Self::len() / W;
        let mut v = [simd.splat_f32s(0.0); W];
        for (i, v) in v.iter_mut().enumerate() {
            let part = &x[(i * lanes).min(x.len())..((i + 1) * lanes).min(x.len())];
            *v = simd.partial_load_f32s(part);
        }
        Block { simd, v }
    }

    /// Writes the block's first `out.len()` elements (at most [`Block::len`]) to `out`.
    #[inline(always)]
    pub fn store(self, out: &mut [f32]) {
        if out.len() >= Self::len() {
            // SAFETY: as in `load`, for a write.
            unsafe { std::ptr::write_unaligned(out.as_mut_ptr() as *mut [S::f32s; W], self.v) };
            return;
        }
        let lanes = Self::len() / W;
        let n = out.len();
        for (i, v) in self.v.iter().enumerate() {
            let part = &mut out[(i * lanes).min(n)..((i + 1) * lanes).min(n)];
            self.simd.partial_store_f32s(part, *v);
        }
    }

    /// `c` in every element.
    #[inline(always)]
    pub fn splat(simd: S, c: f32) -> Self {
        Block {
            simd,
            v: [simd.splat_f32s(c); W],
        }
    }

    /// The sum of the block's elements, in a fixed order.
    #[inline(always)]
    pub fn reduce_sum(self) -> f32 {
        let s = self.simd;
        s.reduce_sum_f32s(self.fold(
            #[inline(always)]
            |s, a, b| s.add_f32s(a, b),
        ))
    }

    /// The largest of the block's elements (a NaN may or may not win).
    #[inline(always)]
    pub fn reduce_max(self) -> f32 {
        let s = self.simd;
        s.reduce_max_f32s(self.fold(
            #[inline(always)]
            |s, a, b| s.max_f32s(a, b),
        ))
    }

    /// The block's vectors combined into one by `f`, first to last.
    #[inline(always)]
    fn fold(self, f: impl Fn(S, S::f32s, S::f32s) -> S::f32s) -> S::f32s {
        let mut acc = self.v[0];
        for v in &self.v[1..] {
            acc = f(self.simd, acc, *v);
        }
        acc
    }

    /// The elementwise maximum of two blocks.
    #[inline(always)]
    pub fn max(self, other: Self) -> Self {
        self.zip(
            other,
            #[inline(always)]
            |s, a, b| s.max_f32s(a, b),
        )
    }

    /// `if_nonzero` where this block's element is not 0 (a key mask's real frames, NaN
    /// included, as `!= 0.0` has it), `otherwise` elsewhere.
    #[inline(always)]
    pub fn select_nonzero(self, if_nonzero: Self, otherwise: Self) -> Self {
        let s = self.simd;
        let mut v = if_nonzero.v;
        for ((v, x), o) in v.iter_mut().zip(self.v).zip(otherwise.v) {
            let zero = s.equal_f32s(x, s.splat_f32s(0.0));
            *v = s.select_f32s(zero, o, *v);
        }
        Block { simd: s, v }
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
        impl<S: Simd, const W: usize> $trait for Block<S, W> {
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

impl<S: Simd, const W: usize> Neg for Block<S, W> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        self.each(
            #[inline(always)]
            |s, a| s.neg_f32s(a),
        )
    }
}

impl<S: Simd, const W: usize> Real for Block<S, W> {
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
    fn select_positive(self, if_positive: Self, otherwise: Self) -> Self {
        let s = self.simd;
        let mut v = otherwise.v;
        for ((v, x), a) in v.iter_mut().zip(self.v).zip(if_positive.v) {
            let positive = s.greater_than_f32s(x, s.splat_f32s(0.0));
            *v = s.select_f32s(positive, a, *v);
        }
        Block { simd: s, v }
    }
    #[inline(always)]
    fn any_beyond(self, bound: f32) -> bool {
        let s = self.simd;
        let mut max = s.abs_f32s(self.v[0]);
        for v in &self.v[1..] {
            max = s.max_f32s(max, s.abs_f32s(*v));
        }
        s.reduce_max_f32s(max) > bound
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

/// One vector from `x`: its first lanes, or all of a shorter `x` followed by zeros.
#[inline(always)]
pub(crate) fn load<S: Simd>(s: S, x: &[f32]) -> S::f32s {
    if x.len() >= std::mem::size_of::<S::f32s>() / 4 {
        // SAFETY: `x` holds at least one vector of plain f32 lanes (pulp's vectors are
        // `Pod`); the read is unaligned.
        unsafe { std::ptr::read_unaligned(x.as_ptr() as *const S::f32s) }
    } else {
        s.partial_load_f32s(x)
    }
}

/// Writes the first `out.len()` lanes of `v` (at most a vector's) to `out`.
#[inline(always)]
pub(crate) fn store<S: Simd>(s: S, out: &mut [f32], v: S::f32s) {
    if out.len() >= std::mem::size_of::<S::f32s>() / 4 {
        // SAFETY: as in `load`, for a write.
        unsafe { std::ptr::write_unaligned(out.as_mut_ptr() as *mut S::f32s, v) }
    } else {
        s.partial_store_f32s(out, v)
    }
}

/// Asks the CPU to bring the cache lines that hold `x[range]` (where `x` has them) into its
/// L1 cache ahead of use: for a loop whose arithmetic would otherwise wait on each load (the
/// layer norm forward's sweep reads the row after next; dropout its input a few tiles ahead,
/// while Philox runs). Not a rule: the layer norm backward measured faster with none, leaving
/// its rows, read in address order, to the hardware prefetchers. (A hint: no effect on
/// results, and none on other architectures.)
#[inline(always)]
pub(super) fn prefetch_lines(x: &[f32], range: Range<usize>) {
    const LINE: usize = 64 / std::mem::size_of::<f32>();
    for i in range.step_by(LINE) {
        let Some(x) = x.get(i) else {
            return;
        };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint that never faults, and the address is a reference's.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                x as *const f32 as *const i8,
            )
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = x;
    }
}

/// Calls `f` with the range of each block of `block` elements in `0..len`: the whole blocks,
/// then the partial tail if any. Each call site of `f` is inlined on its own, so that in the
/// loop over whole blocks the compiler knows every slice's length and drops the partial-block
/// code.
#[inline(always)]
pub(super) fn for_each_block(block: usize, len: usize, mut f: impl FnMut(Range<usize>)) {
    let whole = len / block * block;
    let mut start = 0;
    while start < whole {
        f(start..start + block);
        start += block;
    }
    if whole < len {
        f(whole..len);
    }
}

/// Applies `f` to every element of `x` into `out` (equal lengths), a [`Block`] at a time; the
/// tail goes through a partial block, so that every element gets the same arithmetic.
#[inline(always)]
pub(super) fn map1<S: Simd, const W: usize>(
    simd: S,
    x: &[f32],
    out: &mut [f32],
    f: impl Fn(Block<S, W>) -> Block<S, W>,
) {
    for_each_block(
        Block::<S, W>::len(),
        out.len(),
        #[inline(always)]
        |r| f(Block::load(simd, &x[r.clone()])).store(&mut out[r]),
    );
}

/// [`map1`] for a function of two inputs.
#[inline(always)]
pub(super) fn map2<S: Simd, const W: usize>(
    simd: S,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(Block<S, W>, Block<S, W>) -> Block<S, W>,
) {
    for_each_block(
        Block::<S, W>::len(),
        out.len(),
        #[inline(always)]
        |r| {
            f(
                Block::load(simd, &a[r.clone()]),
                Block::load(simd, &b[r.clone()]),
            )
            .store(&mut out[r])
        },
    );
}

/// The accumulators of the sums below: [`SUM_WIDTH`] vectors, so that as many add chains
/// run side by side. Four left layer norm's variance sums waiting on each add's latency.
type Acc<S> = Block<S, SUM_WIDTH>;
const SUM_WIDTH: usize = 8;

/// Σ a·b, in [`Acc`] lanes added up at the end: a fixed order (the same bits on every run).
#[inline(always)]
pub(super) fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let mut acc = Acc::<S>::splat(simd, 0.0);
    for_each_block(
        Acc::<S>::len(),
        a.len(),
        #[inline(always)]
        |r| acc = Block::load(simd, &a[r.clone()]).mul_add(Block::load(simd, &b[r]), acc),
    );
    acc.reduce_sum()
}

/// Σ (x − c)², as [`dot`] (the tail in scalar code: padding would add c² per missing lane).
#[inline(always)]
pub(super) fn sum_sq_dev<S: Simd>(simd: S, x: &[f32], c: f32) -> f32 {
    let whole = x.len() / Acc::<S>::len() * Acc::<S>::len();
    let mut acc = Acc::<S>::splat(simd, 0.0);
    for_each_block(
        Acc::<S>::len(),
        whole,
        #[inline(always)]
        |r| {
            let d = Block::load(simd, &x[r]) - Block::splat(simd, c);
            acc = d.mul_add(d, acc);
        },
    );
    acc.reduce_sum() + x[whole..].iter().map(|x| (x - c) * (x - c)).sum::<f32>()
}

/// [`dot`] as an op of its own, for callers outside a SIMD body: `run(Dot(a, b))`.
pub(super) struct Dot<'a>(pub &'a [f32], pub &'a [f32]);

impl WithSimd for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        dot(simd, self.0, self.1)
    }
}
