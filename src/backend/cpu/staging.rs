//! Half-precision storage for kernels that compute in f32: every op reads its operands as
//! [`Src`] and writes them as [`Dst`], whatever their dtype (the rule: `check.rs`). An f32
//! operand is handed to the kernel as it is; an f16 or bf16 one is widened a piece at a time
//! (a chunk, a block of rows, a clip) into scratch, and the kernel's f32 results are rounded
//! to nearest even as they are stored ([`half_convert`], the cast's own conversions), so that
//! the kernels exist once and half storage costs a conversion, not a copy of the op.

use std::cell::RefCell;
use std::ops::Range;

use half::{bf16, f16};

use super::half_convert;
use super::storage::{f32s, f32s_mut, halves, halves_mut, Input};
use super::CpuBackend;
use crate::dtype::DType;
use crate::tensor::Tensor;

/// An input's elements in their storage dtype.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> Src<'a> {
    /// `t`'s elements in the words [`super::storage::with_io`] gave it.
    pub fn of(x: Input<'a>, t: &Tensor<CpuBackend>) -> Src<'a> {
        match t.dtype() {
            DType::F32 => Src::F32(f32s(x, t)),
            DType::F16 => Src::F16(bytemuck::cast_slice(halves(x, t))),
            DType::Bf16 => Src::Bf16(bytemuck::cast_slice(halves(x, t))),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Src::F32(x) => x.len(),
            Src::F16(x) => x.len(),
            Src::Bf16(x) => x.len(),
        }
    }

    pub fn slice(&self, range: Range<usize>) -> Src<'a> {
        match *self {
            Src::F32(x) => Src::F32(&x[range]),
            Src::F16(x) => Src::F16(&x[range]),
            Src::Bf16(x) => Src::Bf16(&x[range]),
        }
    }

    /// The elements as f32: themselves, or widened (exactly) into `scratch`.
    pub fn f32s<'s>(&self, scratch: &'s mut Scratch) -> &'s [f32]
    where
        'a: 's,
    {
        match *self {
            Src::F32(x) => x,
            Src::F16(x) => {
                let buf = scratch.get(x.len());
                half_convert::f16_to_f32(x, buf);
                buf
            }
            Src::Bf16(x) => {
                let buf = scratch.get(x.len());
                half_convert::bf16_to_f32(x, buf);
                buf
            }
        }
    }
}

/// An output's elements in their storage dtype.
pub(super) enum Dst<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

impl<'a> Dst<'a> {
    /// `t`'s elements in the words [`super::storage::with_io`] gave it.
    pub fn of(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> Dst<'a> {
        match t.dtype() {
            DType::F32 => Dst::F32(f32s_mut(words, t)),
            DType::F16 => Dst::F16(bytemuck::cast_slice_mut(halves_mut(words, t))),
            DType::Bf16 => Dst::Bf16(bytemuck::cast_slice_mut(halves_mut(words, t))),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Dst::F32(x) => x.len(),
            Dst::F16(x) => x.len(),
            Dst::Bf16(x) => x.len(),
        }
    }

    /// Pieces of `len` elements (the last may be shorter), for parallel tasks.
    pub fn chunks(self, len: usize) -> Vec<Dst<'a>> {
        match self {
            Dst::F32(x) => x.chunks_mut(len).map(Dst::F32).collect(),
            Dst::F16(x) => x.chunks_mut(len).map(Dst::F16).collect(),
            Dst::Bf16(x) => x.chunks_mut(len).map(Dst::Bf16).collect(),
        }
    }

    /// The elements in `range`.
    pub fn part(&mut self, range: Range<usize>) -> Dst<'_> {
        match self {
            Dst::F32(x) => Dst::F32(&mut x[range]),
            Dst::F16(x) => Dst::F16(&mut x[range]),
            Dst::Bf16(x) => Dst::Bf16(&mut x[range]),
        }
    }

    /// Runs `f` on the elements as f32, which it must all write: on themselves, or on
    /// `scratch`, then rounded into them.
    pub fn store<R>(&mut self, scratch: &mut Scratch, f: impl FnOnce(&mut [f32]) -> R) -> R {
        match self {
            Dst::F32(x) => f(x),
            Dst::F16(x) => {
                let buf = scratch.get(x.len());
                let r = f(buf);
                half_convert::f32_to_f16(buf, x);
                r
            }
            Dst::Bf16(x) => {
                let buf = scratch.get(x.len());
                let r = f(buf);
                half_convert::f32_to_bf16(buf, x);
                r
            }
        }
    }
}

/// The most floats a thread keeps in one spare scratch buffer: more than any one piece of an
/// op takes at the model's sizes (a clip's qkv), less than a large product's operands.
const MAX_KEPT: usize = 1 << 20;

/// The most spare buffers a thread keeps: as many as one piece of an op uses at once (a
/// product's A, B, C and bias).
const MAX_SPARES: usize = 4;

thread_local! {
    /// Scratch buffers handed back by this thread's finished pieces, for the next ones.
    static SPARE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// f32 room for one operand of one piece of work: taken from the thread's spares on first
/// use (f32 operands never use it) and handed back when dropped. (Taken and handed back
/// rather than borrowed, so that a rayon task that steals work on this thread meanwhile finds
/// the pool free.)
#[derive(Default)]
pub(super) struct Scratch(Option<Vec<f32>>);

impl Scratch {
    /// `len` floats, their contents unspecified.
    fn get(&mut self, len: usize) -> &mut [f32] {
        let buf = self
            .0
            .get_or_insert_with(|| SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default());
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        &mut buf[..len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            SPARE.with(|s| {
                let mut spares = s.borrow_mut();
                if buf.capacity() <= MAX_KEPT && spares.len() < MAX_SPARES {
                    spares.push(buf);
                }
            });
        }
    }
}
