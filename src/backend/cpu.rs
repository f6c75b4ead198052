//! The CPU backend: f32 on every core, matrix products by the `gemm` crate (runtime-selected
//! SIMD kernels), elementwise ops in parallel chunks with rayon.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

use super::{check, Backend, MatmulSpec, Storage};
use crate::config::GpuConfig;
use crate::device::DeviceInfo;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{BlockAllocator, MemoryGuard, MemoryPool, MemoryStats, PooledBlock};
use crate::tensor::{HostData, HostTensor, Tensor};

/// Elementwise work is split into chunks of this many elements, large enough that rayon's
/// scheduling cost vanishes and small enough to spread over every core.
const CHUNK: usize = 1 << 15;

/// Host memory in 32-bit words, so that f32 views are aligned and 16-bit views at even
/// offsets are too.
pub struct HostAllocator;

impl BlockAllocator for HostAllocator {
    type Block = RwLock<Vec<u32>>;
    fn allocate(&self, bytes: u64, what: &str) -> Result<Self::Block> {
        let words = bytes.div_ceil(4) as usize;
        let mut v = Vec::new();
        v.try_reserve_exact(words)
            .map_err(|_| Error::AllocationRefused {
                request: what.to_string(),
                requested_bytes: bytes,
                reason: "the host has not enough free memory".into(),
            })?;
        v.resize(words, 0);
        Ok(RwLock::new(v))
    }
}

/// A CPU tensor's memory: a pooled block of words.
pub struct CpuStorage(PooledBlock<HostAllocator>);

impl CpuStorage {
    fn words(&self) -> RwLockReadGuard<'_, Vec<u32>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for CpuStorage {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }

    fn read(&self, byte_offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let words = self.words();
        let all: &[u8] = bytemuck::cast_slice(&words);
        Ok(all[byte_offset as usize..(byte_offset + bytes) as usize].to_vec())
    }
}

/// The CPU backend.
pub struct CpuBackend {
    info: DeviceInfo,
    pool: MemoryPool<HostAllocator>,
}

impl CpuBackend {
    pub fn new(config: &GpuConfig) -> Result<CpuBackend> {
        let info = DeviceInfo::cpu();
        Ok(CpuBackend {
            pool: MemoryPool::new(HostAllocator, config.budget_bytes(info.memory_bytes)),
            info,
        })
    }

    /// A guard that empties this backend's buffer cache when dropped.
    pub fn memory_guard(&self) -> MemoryGuard<HostAllocator> {
        self.pool.guard()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new(&GpuConfig::default()).expect("the default config is valid")
    }
}

/// An input's words: all of its storage, or a copy of just its own words, and where the
/// tensor's first element is in them.
#[derive(Clone, Copy)]
struct Input<'a> {
    words: &'a [u32],
    first: usize,
}

fn f32s<'a>(x: Input<'a>, t: &Tensor<CpuBackend>) -> &'a [f32] {
    &bytemuck::cast_slice(x.words)[x.first..x.first + t.len()]
}

fn halves<'a>(x: Input<'a>, t: &Tensor<CpuBackend>) -> &'a [u16] {
    &bytemuck::cast_slice(x.words)[x.first..x.first + t.len()]
}

fn f32s_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [f32] {
    &mut bytemuck::cast_slice_mut(words)[t.offset()..t.offset() + t.len()]
}

fn halves_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [u16] {
    &mut bytemuck::cast_slice_mut(words)[t.offset()..t.offset() + t.len()]
}

/// The words holding `t`'s elements, copied.
fn copy_words(t: &Tensor<CpuBackend>) -> Vec<u32> {
    let size = t.dtype().size_bytes();
    let (start, end) = (t.offset() * size / 4, (t.offset() + t.len()) * size);
    t.storage().words()[start..end.div_ceil(4)].to_vec()
}

enum Guard<'a> {
    Read(RwLockReadGuard<'a, Vec<u32>>),
    Write(RwLockWriteGuard<'a, Vec<u32>>),
}

/// Runs `f` with the words of every input and the output's words to write. An input in the
/// output's storage (an in-place op, or another view of the same arena) is read from a copy
/// of its own words, taken first. Every other storage is locked once, and all in address
/// order, so that ops running on several threads cannot deadlock.
fn with_io<R>(
    inputs: &[&Tensor<CpuBackend>],
    out: &Tensor<CpuBackend>,
    f: impl FnOnce(&[Input<'_>], &mut [u32]) -> R,
) -> R {
    let copies: Vec<Option<Vec<u32>>> = inputs
        .iter()
        .map(|t| t.shares_storage(out).then(|| copy_words(t)))
        .collect();
    let mut storages: Vec<&Arc<CpuStorage>> = inputs
        .iter()
        .zip(&copies)
        .filter(|(_, copy)| copy.is_none())
        .map(|(t, _)| t.storage())
        .chain([out.storage()])
        .collect();
    storages.sort_by_key(|s| Arc::as_ptr(s));
    storages.dedup_by_key(|s| Arc::as_ptr(s));
    let mut guards: Vec<(*const CpuStorage, Guard<'_>)> = storages
        .iter()
        .map(|s| {
            let guard = if Arc::ptr_eq(s, out.storage()) {
                Guard::Write(s.0.write().unwrap_or_else(|e| e.into_inner()))
            } else {
                Guard::Read(s.words())
            };
            (Arc::as_ptr(s), guard)
        })
        .collect();
    let mut out_words: Option<&mut [u32]> = None;
    let mut read: Vec<(*const CpuStorage, &[u32])> = Vec::new();
    for (ptr, guard) in guards.iter_mut() {
        match guard {
            Guard::Write(w) => out_words = Some(w.as_mut_slice()),
            Guard::Read(r) => read.push((*ptr, r.as_slice())),
        }
    }
    let ins: Vec<Input<'_>> = inputs
        .iter()
        .zip(&copies)
        .map(|(t, copy)| match copy {
            Some(words) => Input { words, first: 0 },
            None => Input {
                words: read
                    .iter()
                    .find(|(ptr, _)| *ptr == Arc::as_ptr(t.storage()))
                    .expect("every input not copied was locked")
                    .1,
                first: t.offset(),
            },
        })
        .collect();
    f(&ins, out_words.expect("the output was locked"))
}

impl Backend for CpuBackend {
    type Storage = CpuStorage;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor<Self>> {
        let bytes = crate::tensor::byte_len(shape, dtype);
        let block = self
            .pool
            .allocate(bytes, &format!("a {dtype} tensor of shape {shape:?}"))?;
        Ok(Tensor::from_storage(
            Arc::new(CpuStorage(block)),
            shape,
            dtype,
        ))
    }

    fn write(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        check::write(dst, src)?;
        with_io(&[], dst, |_, words| match src.data() {
            HostData::F32(v) => f32s_mut(words, dst).copy_from_slice(v),
            HostData::F16(v) => halves_mut(words, dst).copy_from_slice(bytemuck::cast_slice(v)),
            HostData::Bf16(v) => halves_mut(words, dst).copy_from_slice(bytemuck::cast_slice(v)),
        });
        Ok(())
    }

    fn matmul(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        spec.check(a, b, bias, out)?;
        let mut inputs = vec![a, b];
        inputs.extend(bias);
        with_io(&inputs, out, |ins, out_words| {
            let (a, b) = (f32s(ins[0], a), f32s(ins[1], b));
            let bias = bias.map(|t| f32s(ins[2], t));
            let c = f32s_mut(out_words, out);
            for item in 0..spec.batch {
                let a = &a[item * spec.stride_a..];
                let b = &b[item * spec.stride_b..];
                let c = &mut c[item * spec.stride_c..][..spec.m * spec.n];
                gemm_item(a, b, bias, c, spec);
            }
        });
        Ok(())
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        check::elementwise("add", &[a, b], out)?;
        with_io(&[a, b], out, |ins, words| {
            let (x, y) = (f32s(ins[0], a), f32s(ins[1], b));
            f32s_mut(words, out)
                .par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
                .for_each(|(o, (x, y))| {
                    for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                        *o = x + y;
                    }
                });
        });
        Ok(())
    }

    fn scale(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()> {
        check::elementwise("scale", &[x], out)?;
        with_io(&[x], out, |ins, words| {
            f32s_mut(words, out)
                .par_chunks_mut(CHUNK)
                .zip(f32s(ins[0], x).par_chunks(CHUNK))
                .for_each(|(o, x)| {
                    for (o, x) in o.iter_mut().zip(x) {
                        *o = alpha * x;
                    }
                });
        });
        Ok(())
    }

    fn cast(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        check::conversion("cast", x, out)?;
        with_io(&[x], out, |ins, words| {
            cast_words(ins[0], x, words, out);
        });
        Ok(())
    }

    fn copy(&self, src: &Tensor<Self>, dst: &Tensor<Self>) -> Result<()> {
        check::copy(src, dst)?;
        self.cast(src, dst)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn memory_stats(&self) -> MemoryStats {
        self.pool.stats()
    }

    fn reset_peak_memory_stats(&self) {
        self.pool.reset_peak_memory_stats()
    }

    fn empty_cache(&self) {
        self.pool.empty_cache()
    }
}

/// One item of a matrix product through `gemm`, which takes any row and column strides, so
/// the transposed layouts cost nothing extra. The bias is written to C first and accumulated
/// onto (`read_dst`).
fn gemm_item(a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32], spec: &MatmulSpec) {
    let MatmulSpec { m, n, k, .. } = *spec;
    if m == 0 || n == 0 {
        return;
    }
    if let Some(bias) = bias {
        for row in c.chunks_exact_mut(n) {
            row.copy_from_slice(bias);
        }
    }
    let (a_rs, a_cs) = if spec.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if spec.trans_b { (1, k) } else { (n, 1) };
    let threads = rayon::current_num_threads();
    // Small products lose more to thread hand-off than they gain.
    let parallelism = if (m * n * k) < 64 * 64 * 64 || threads == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(threads)
    };
    // SAFETY: `spec.check` proved that A holds m·k, B k·n and C m·n elements at these strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Converts `x` into `out`'s dtype, in parallel chunks. Conversions use `half`, which rounds to
/// nearest even and uses the F16C instructions where the CPU has them.
fn cast_words(src: Input<'_>, x: &Tensor<CpuBackend>, dst: &mut [u32], out: &Tensor<CpuBackend>) {
    use DType::*;
    match (x.dtype(), out.dtype()) {
        (F32, F32) => f32s_mut(dst, out).copy_from_slice(f32s(src, x)),
        (F16, F16) | (Bf16, Bf16) => halves_mut(dst, out).copy_from_slice(halves(src, x)),
        (F32, to) => {
            let (from, into) = (f32s(src, x), halves_mut(dst, out));
            into.par_chunks_mut(CHUNK)
                .zip(from.par_chunks(CHUNK))
                .for_each(|(o, i)| match to {
                    F16 => bytemuck::cast_slice_mut::<u16, f16>(o).convert_from_f32_slice(i),
                    _ => bytemuck::cast_slice_mut::<u16, bf16>(o).convert_from_f32_slice(i),
                });
        }
        (from_dtype, F32) => {
            let (from, into) = (halves(src, x), f32s_mut(dst, out));
            into.par_chunks_mut(CHUNK)
                .zip(from.par_chunks(CHUNK))
                .for_each(|(o, i)| match from_dtype {
                    F16 => bytemuck::cast_slice::<u16, f16>(i).convert_to_f32_slice(o),
                    _ => bytemuck::cast_slice::<u16, bf16>(i).convert_to_f32_slice(o),
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
