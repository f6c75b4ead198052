//! Conversions between f32, f16 and bf16 (rounding to nearest even), and copies, in
//! parallel chunks.

use half::{bf16, f16};
use rayon::prelude::*;

use super::half_convert;
use super::storage::{f32s, f32s_mut, halves, halves_mut, with_io, Input};
use super::{CpuBackend, CHUNK};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// `out = x` in `out`'s dtype.
pub(super) fn cast(x: &Tensor<CpuBackend>, out: &Tensor<CpuBackend>) -> Result<()> {
    with_io(&[x], &[out], |ins, outs| {
        let words = &mut *outs[0];
        cast_words(ins[0], x, words, out);
    })?;
    Ok(())
}

/// `dst = src`, in chunks on every core (one core cannot saturate the memory bus).
fn parallel_copy<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Converts `x` into `out`'s dtype, in parallel chunks, through [`half_convert`] (rounding to
/// nearest even).
fn cast_words(src: Input<'_>, x: &Tensor<CpuBackend>, dst: &mut [u32], out: &Tensor<CpuBackend>) {
    use DType::*;
    match (x.dtype(), out.dtype()) {
        (F32, F32) => parallel_copy(f32s_mut(dst, out), f32s(src, x)),
        (F16, F16) | (Bf16, Bf16) => parallel_copy(halves_mut(dst, out), halves(src, x)),
        (F32, to) => {
            let (from, into) = (f32s(src, x), halves_mut(dst, out));
            into.par_chunks_mut(CHUNK)
                .zip(from.par_chunks(CHUNK))
                .for_each(|(o, i)| match to {
                    F16 => half_convert::f32_to_f16(i, bytemuck::cast_slice_mut(o)),
                    _ => half_convert::f32_to_bf16(i, bytemuck::cast_slice_mut(o)),
                });
        }
        (from_dtype, F32) => {
            let (from, into) = (halves(src, x), f32s_mut(dst, out));
            into.par_chunks_mut(CHUNK)
                .zip(from.par_chunks(CHUNK))
                .for_each(|(o, i)| match from_dtype {
                    F16 => half_convert::f16_to_f32(bytemuck::cast_slice(i), o),
                    _ => half_convert::bf16_to_f32(bytemuck::cast_slice(i), o),
                });
        }
        (from_dtype, _) => {
            // f16 <-> bf16 goes through f32, which holds both exactly.
            let (from, into) = (halves(src, x), halves_mut(dst, out));
            into.par_chunks_mut(CHUNK)
                .zip(from.par_chunks(CHUNK))
                .for_each(|(o, i)| {
                    for (o, &i) in o.iter_mut().zip(i) {
                        *o = if from_dtype == F16 {
                            bf16::from_f32(f16::from_bits(i).to_f32()).to_bits()
                        } else {
                            f16::from_f32(bf16::from_bits(i).to_f32()).to_bits()
                        };
                    }
                });
        }
    }
}
