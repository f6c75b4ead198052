//! The CPU backend: f32 on every core, matrix products by the `gemm` crate (runtime-selected
//! SIMD kernels), elementwise ops in parallel chunks with rayon.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use half::{bf16, f16};
use rayon::prelude::*;

mod attention;
mod half_convert;
mod norm;
pub(crate) mod simd;

use simd::{Simd, WithSimd};

use super::{math, AdamW, AttentionSpec, Backend, DropoutKey, MatmulSpec, Storage};
use crate::config::GpuConfig;
use crate::device::DeviceInfo;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{BlockAllocator, MemoryGuard, MemoryPool, MemoryStats, PooledBlock};
use crate::rng;
use crate::tensor::{HostData, HostTensor, Tensor};

/// Column sums (bias and layer norm gradients) add up partial sums over blocks of this many
/// rows, in block order: parallel, yet the same bits on every run.
const ROW_BLOCK: usize = 64;

/// Elementwise work is split into chunks of this many elements, large enough that rayon's
/// scheduling cost vanishes and small enough to spread over every core.
const CHUNK: usize = 1 << 15;

/// Rows of `cols` elements that one parallel task takes: about a [`CHUNK`], so that
/// row-wise ops on narrow rows do not pay rayon's cost per row.
fn rows_per_task(cols: usize) -> usize {
    (CHUNK / cols.max(1)).max(1)
}

/// Host memory in 32-bit words, so that f32 views are aligned and 16-bit views at even
/// offsets are too, starting on a cache line: the allocator's own alignment (16 bytes past a
/// page for large blocks) split every 512-bit access, and every other 256-bit one, across
/// two lines.
pub struct HostAllocator;

/// One cache line of words: the unit a [`HostBlock`] is allocated in.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// A host block: whole cache lines, seen as the first `words` of their words.
pub struct HostBlock {
    lines: Vec<Line>,
    words: usize,
}

impl std::ops::Deref for HostBlock {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &bytemuck::cast_slice(&self.lines)[..self.words]
    }
}

impl std::ops::DerefMut for HostBlock {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.words]
    }
}

impl HostBlock {
    /// The lines that hold `words` words.
    fn lines_for(words: usize) -> usize {
        words.div_ceil(std::mem::size_of::<Line>() / 4)
    }

    /// `words` zeros: scratch for a vector loop that loads and stores it over and over (the
    /// column sums), which a plain `Vec<f32>`, 16 bytes past a line, would split across lines.
    fn zeroed(words: usize) -> HostBlock {
        let lines = vec![Line([0; 16]); HostBlock::lines_for(words)];
        HostBlock { lines, words }
    }

    fn as_f32s(&self) -> &[f32] {
        bytemuck::cast_slice(self)
    }

    fn as_f32s_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(self)
    }
}

impl BlockAllocator for HostAllocator {
    type Block = RwLock<HostBlock>;
    fn allocate(&self, bytes: u64, what: &str) -> Result<Self::Block> {
        let words = bytes.div_ceil(4) as usize;
        let mut lines = Vec::new();
        lines
            .try_reserve_exact(HostBlock::lines_for(words))
            .map_err(|_| Error::AllocationRefused {
                request: what.to_string(),
                requested_bytes: bytes,
                reason: "the host has not enough free memory".into(),
            })?;
        lines.resize(HostBlock::lines_for(words), Line([0; 16]));
        Ok(RwLock::new(HostBlock { lines, words }))
    }
}

/// A CPU tensor's memory: a pooled block of words.
pub struct CpuStorage(PooledBlock<HostAllocator>);

impl CpuStorage {
    fn words(&self) -> RwLockReadGuard<'_, HostBlock> {
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

impl CpuBackend {
    /// Writes `values` into an f32 tensor.
    fn store(&self, t: &Tensor<Self>, values: impl Iterator<Item = f32>) -> Result<()> {
        with_io(&[], &[t], |_, outs| {
            let words = &mut *outs[0];
            for (o, v) in f32s_mut(words, t).iter_mut().zip(values) {
                *o = v;
            }
        })?;
        Ok(())
    }
}

/// One row of a cross-entropy: its share of the loss numerator, its weight, its label's rank
/// among the logits, and its log-sum-exp.
struct XentRow {
    loss: f32,
    weight: f32,
    rank: f32,
    lse: f32,
}

/// A label as a class index, if it is one.
fn class_index(label: f32, classes: usize) -> Option<usize> {
    (label >= 0.0 && label < classes as f32 && label.fract() == 0.0).then_some(label as usize)
}

fn xent_row(z: &[f32], label: f32, w: Option<&[f32]>, smoothing: f32) -> XentRow {
    let classes = z.len();
    let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + z.iter().map(|v| math::exp(v - max)).sum::<f32>().ln();
    let Some(y) = class_index(label, classes) else {
        return XentRow {
            loss: f32::NAN,
            weight: f32::NAN,
            rank: f32::NAN,
            lse,
        };
    };
    let weight = |c: usize| w.map_or(1.0, |w| w[c]);
    let smooth: f32 = (0..classes).map(|c| weight(c) * (lse - z[c])).sum();
    let rank = (0..classes)
        .filter(|&c| z[c] > z[y] || (z[c] == z[y] && c < y))
        .count();
    XentRow {
        loss: (1.0 - smoothing) * weight(y) * (lse - z[y]) + smoothing / classes as f32 * smooth,
        weight: weight(y),
        rank: rank as f32,
        lse,
    }
}

/// The elementwise ops that [`map_chunks`] runs, each in explicit vectors.
#[derive(Clone, Copy)]
enum Elementwise {
    Add,
    Scale(f32),
    Gelu,
    /// `dy · gelu'(x)`, from inputs `[x, dy]`.
    GeluBackward,
}

/// Vectors per step in GELU: two, not [`simd::WIDTH`]'s four. GELU's temporaries for four
/// vectors outgrow AVX2's sixteen registers and spill; two measured about 10% faster, forward
/// and backward, on a 2-vCPU EPYC (medians of five alternating rounds), and one slower.
const GELU_WIDTH: usize = 2;

/// One chunk of an [`Elementwise`] op.
struct ElementwiseChunk<'a> {
    op: Elementwise,
    ins: &'a [&'a [f32]],
    out: &'a mut [f32],
}

impl WithSimd for ElementwiseChunk<'_> {
    type Output = ();
    // The closures are `#[inline(always)]` (even around a plain function) so that the SIMD
    // copies inline them rather than call them per block.
    #[allow(clippy::redundant_closure)]
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (ins, out) = (self.ins, self.out);
        match self.op {
            // Memory-bound: plain loops, which the compiler vectorises itself.
            Elementwise::Add => {
                for ((o, a), b) in out.iter_mut().zip(ins[0]).zip(ins[1]) {
                    *o = a + b;
                }
            }
            Elementwise::Scale(alpha) => {
                for (o, x) in out.iter_mut().zip(ins[0]) {
                    *o = alpha * x;
                }
            }
            Elementwise::Gelu => simd::map1::<S, GELU_WIDTH>(
                s,
                ins[0],
                out,
                #[inline(always)]
                |x| math::gelu(x),
            ),
            Elementwise::GeluBackward => simd::map2::<S, GELU_WIDTH>(
                s,
                ins[0],
                ins[1],
                out,
                #[inline(always)]
                |x, dy| dy * math::gelu_grad(x),
            ),
        }
    }
}

/// How far ahead of the elements it draws for dropout prefetches its input: four tiles, the
/// most [`rng::for_each_tile`] draws at once.
const PREFETCH_AHEAD: usize = 4 * rng::TILE as usize;

/// One chunk of dropout: `x · scale` where the element's draw is at least `p`, else 0 (also
/// attention's dropout factors, as the dropout of a row of ones).
struct DropoutChunk<'a> {
    key: &'a DropoutKey,
    /// The element index of `x[0]`, which keys its draw.
    first_element: u64,
    p: f32,
    scale: f32,
    x: &'a [f32],
    out: &'a mut [f32],
}

impl WithSimd for DropoutChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let DropoutChunk {
            key,
            first_element,
            p,
            scale,
            x,
            out,
        } = self;
        // draw ≥ threshold as draw > threshold − 1, in signed lanes: draws and thresholds
        // are at most 2^16 (SSE and AVX2 compare only signed integers).
        let below = s.splat_u32s(rng::keep_threshold(p).wrapping_sub(1));
        let (scale, zero) = (s.splat_f32s(scale), s.splat_f32s(0.0));
        const TILE: usize = rng::TILE as usize;
        rng::for_each_tile(
            s,
            key,
            first_element,
            out.len(),
            #[inline(always)]
            |range, tile| {
                // The input a group of calls ahead, in the cache by the time Philox, which
                // does not hide under the loads by itself, is done with the calls before it:
                // 0.162 -> 0.151 ms at 2048 x 1024 on a Zen 5 (six alternating rounds; half or
                // twice as far, no better).
                simd::prefetch_lines(x, range.start + PREFETCH_AHEAD..range.end + PREFETCH_AHEAD);
                let (x, out) = (&x[range.clone()], &mut out[range]);
                // A select, not `x · 0`, so that a dropped NaN or infinity becomes 0.
                let apply = |out: &mut [f32], x: &[f32], draws: S::u32s| {
                    let kept = s.greater_than_i32s(
                        s.transmute_i32s_u32s(draws),
                        s.transmute_i32s_u32s(below),
                    );
                    let kept_x = s.select_f32s(kept, s.mul_f32s(simd::load(s, x), scale), zero);
                    simd::store(s, out, kept_x);
                };
                // Whole tiles (one, or a pair) as arrays, so that the runs' bounds are known.
                if !runs_over::<S, TILE>(s, &tile, out, x, apply)
                    && !runs_over::<S, { 2 * TILE }>(s, &tile, out, x, apply)
                {
                    tile.for_each_run(
                        s,
                        #[inline(always)]
                        |run, draws| apply(&mut out[run.clone()], &x[run], draws),
                    );
                }
            },
        );
    }
}

/// `apply(out, x, draws)` for each run of `tile` if `out` and `x` are `N` long, as arrays so
/// that the runs' bounds are known where the loop is unrolled; false, doing nothing, if not.
#[inline(always)]
fn runs_over<S: Simd, const N: usize>(
    s: S,
    tile: &rng::Tile<'_, S>,
    out: &mut [f32],
    x: &[f32],
    apply: impl Fn(&mut [f32], &[f32], S::u32s),
) -> bool {
    let (Ok(out), Ok(x)) = (<&mut [f32; N]>::try_from(out), <&[f32; N]>::try_from(x)) else {
        return false;
    };
    tile.for_each_run(
        s,
        #[inline(always)]
        |run, draws| apply(&mut out[run.clone()], &x[run], draws),
    );
    true
}

/// An elementwise op over f32 inputs as long as `out`, in parallel chunks.
fn map_chunks(
    op: Elementwise,
    inputs: &[&Tensor<CpuBackend>],
    out: &Tensor<CpuBackend>,
) -> Result<()> {
    with_io(inputs, &[out], |ins, outs| {
        let words = &mut *outs[0];
        let xs: Vec<&[f32]> = ins.iter().zip(inputs).map(|(i, t)| f32s(*i, t)).collect();
        f32s_mut(words, out)
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, out)| {
                let start = c * CHUNK;
                let ins: Vec<&[f32]> = xs.iter().map(|x| &x[start..start + out.len()]).collect();
                simd::run(ElementwiseChunk { op, ins: &ins, out });
            });
    })
}

/// Sums rows of `m` (rows of `cols`) into `cols` accumulators: partial sums over blocks of
/// [`ROW_BLOCK`] rows in parallel, then the partials in block order.
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let partials = m
        .par_chunks(ROW_BLOCK * cols)
        .map(|rows| {
            let mut sums = HostBlock::zeroed(cols);
            simd::run(ColumnSums {
                rows,
                sums: sums.as_f32s_mut(),
            });
            sums
        })
        .collect();
    sum_in_block_order(partials, cols)
}

/// The column sums of a block of rows, each column's rows added one after another in row
/// order, whichever way the block is walked (so the same bits).
struct ColumnSums<'a> {
    rows: &'a [f32],
    /// One sum a column, that the rows are added to.
    sums: &'a mut [f32],
}

/// The vectors of one strip of columns that [`ColumnSums`] walks down the rows under
/// AVX-512: 512 bytes of each row, summed in registers.
type Strip<S> = simd::Block<S, 8>;

impl WithSimd for ColumnSums<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let ColumnSums { rows, sums } = self;
        let cols = sums.len();
        if Strip::<S>::len() >= 128 {
            // Under AVX-512 (32 registers), a strip of columns at a time down all the rows,
            // its sums in registers: 0.086 -> 0.071 ms at 2048 x 1024 on a Zen 5 (five
            // alternating rounds against the four-row passes). Under AVX2, strips of 512
            // bytes (16 registers, spilled) or 256 measured no faster than the four-row
            // passes below, and of 128 bytes much slower.
            simd::for_each_block(
                Strip::<S>::len(),
                cols,
                #[inline(always)]
                |c| {
                    let mut sum = Strip::<S>::load(s, &sums[c.clone()]);
                    for row in rows.chunks_exact(cols) {
                        sum = sum + Strip::load(s, &row[c.clone()]);
                    }
                    sum.store(&mut sums[c]);
                },
            );
            return;
        }
        // Four rows to a pass over `sums`, added one after another as row by row would (the
        // same bits), so that `sums` is read and written a quarter as often.
        let mut quads = rows.chunks_exact(4 * cols);
        for quad in &mut quads {
            let (r01, r23) = quad.split_at(2 * cols);
            let ((r0, r1), (r2, r3)) = (r01.split_at(cols), r23.split_at(cols));
            let rows = r0.iter().zip(r1).zip(r2.iter().zip(r3));
            for (a, ((g0, g1), (g2, g3))) in sums.iter_mut().zip(rows) {
                *a = *a + g0 + g1 + g2 + g3;
            }
        }
        for row in quads.remainder().chunks_exact(cols) {
            sums.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
    }
}

/// Adds up per-block partial sums in block order: blocks of a fixed size (not one per
/// thread), so that the result is the same on every run and any number of threads.
fn sum_in_block_order(partials: Vec<HostBlock>, len: usize) -> Vec<f32> {
    let mut partials = partials.into_iter();
    // No blocks (no rows): zeros.
    let mut total = partials
        .next()
        .map_or_else(|| vec![0.0; len], |first| first.as_f32s().to_vec());
    for partial in partials {
        total
            .iter_mut()
            .zip(partial.as_f32s())
            .for_each(|(t, p)| *t += p);
    }
    total
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

/// An output's elements in the words [`with_io`] gave it.
fn f32s_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [f32] {
    &mut bytemuck::cast_slice_mut(words)[..t.len()]
}

fn halves_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [u16] {
    &mut bytemuck::cast_slice_mut(words)[..t.len()]
}

/// The words holding `t`'s elements, copied.
fn copy_words(t: &Tensor<CpuBackend>) -> Vec<u32> {
    let size = t.dtype().size_bytes();
    let (start, end) = (t.offset() * size / 4, (t.offset() + t.len()) * size);
    t.storage().words()[start..end.div_ceil(4)].to_vec()
}

enum Guard<'a> {
    Read(RwLockReadGuard<'a, HostBlock>),
    Write(RwLockWriteGuard<'a, HostBlock>),
}

/// The words holding `t`'s elements (f32 tensors and 16-bit ones at even offsets start on a
/// word boundary).
fn word_range(t: &Tensor<CpuBackend>) -> std::ops::Range<usize> {
    let size = t.dtype().size_bytes();
    t.offset() * size / 4..((t.offset() + t.len()) * size).div_ceil(4)
}

/// Runs `f` with the words of every input and, for each output, the words it may write (its
/// own range, so that several outputs may live in one arena). An input in an output's
/// storage (an in-place op, or another view of the same arena) is read from a copy of its own
/// words, taken first. Every other storage is locked once, and all in address order, so that
/// ops running on several threads cannot deadlock.
fn with_io<R>(
    inputs: &[&Tensor<CpuBackend>],
    outputs: &[&Tensor<CpuBackend>],
    f: impl FnOnce(&[Input<'_>], &mut [&mut [u32]]) -> R,
) -> Result<R> {
    let written = |t: &Tensor<CpuBackend>| outputs.iter().any(|o| o.shares_storage(t));
    let copies: Vec<Option<Vec<u32>>> = inputs
        .iter()
        .map(|t| written(t).then(|| copy_words(t)))
        .collect();
    let mut storages: Vec<&Arc<CpuStorage>> = inputs
        .iter()
        .zip(&copies)
        .filter(|(_, copy)| copy.is_none())
        .map(|(t, _)| t.storage())
        .chain(outputs.iter().map(|t| t.storage()))
        .collect();
    storages.sort_by_key(|s| Arc::as_ptr(s));
    storages.dedup_by_key(|s| Arc::as_ptr(s));
    let mut guards: Vec<(*const CpuStorage, Guard<'_>)> = storages
        .iter()
        .map(|s| {
            let guard = if outputs.iter().any(|o| Arc::ptr_eq(s, o.storage())) {
                Guard::Write(s.0.write().unwrap_or_else(|e| e.into_inner()))
            } else {
                Guard::Read(s.words())
            };
            (Arc::as_ptr(s), guard)
        })
        .collect();
    let mut read: Vec<(*const CpuStorage, &[u32])> = Vec::new();
    let mut out_words: Vec<Option<&mut [u32]>> = outputs.iter().map(|_| None).collect();
    for (ptr, guard) in guards.iter_mut() {
        match guard {
            Guard::Read(r) => read.push((*ptr, &r[..])),
            Guard::Write(w) => {
                // Hand each output in this storage its own words, in address order.
                let mut mine: Vec<usize> = (0..outputs.len())
                    .filter(|&i| Arc::as_ptr(outputs[i].storage()) == *ptr)
                    .collect();
                mine.sort_by_key(|&i| word_range(outputs[i]).start);
                let mut rest: &mut [u32] = &mut w[..];
                let mut consumed = 0;
                for i in mine {
                    let range = word_range(outputs[i]);
                    if range.start < consumed {
                        return Err(Error::shape("write", "two outputs share memory"));
                    }
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - consumed);
                    let (own, tail) = tail.split_at_mut(range.len());
                    out_words[i] = Some(own);
                    rest = tail;
                    consumed = range.end;
                }
            }
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
    let mut outs: Vec<&mut [u32]> = out_words
        .into_iter()
        .map(|w| w.expect("every output was locked"))
        .collect();
    Ok(f(&ins, &mut outs))
}

impl Backend for CpuBackend {
    type Storage = CpuStorage;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// gemm_by_rows copies a right-hand side stored by columns into rows first.
    fn copies_transposed_rhs(&self) -> bool {
        true
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

    fn write_unchecked(&self, dst: &Tensor<Self>, src: &HostTensor) -> Result<()> {
        with_io(&[], &[dst], |_, outs| match src.data() {
            HostData::F32(v) => f32s_mut(outs[0], dst).copy_from_slice(v),
            HostData::F16(v) => halves_mut(outs[0], dst).copy_from_slice(bytemuck::cast_slice(v)),
            HostData::Bf16(v) => halves_mut(outs[0], dst).copy_from_slice(bytemuck::cast_slice(v)),
        })?;
        Ok(())
    }

    fn matmul_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: Option<&Tensor<Self>>,
        out: &Tensor<Self>,
        spec: &MatmulSpec,
    ) -> Result<()> {
        let mut inputs = vec![a, b];
        inputs.extend(bias);
        with_io(&inputs, &[out], |ins, outs| {
            let out_words = &mut *outs[0];
            let (a, b) = (f32s(ins[0], a), f32s(ins[1], b));
            let bias = bias.map(|t| f32s(ins[2], t));
            let c = f32s_mut(out_words, out);
            for item in 0..spec.batch {
                let a = &a[item * spec.stride_a..];
                let b = &b[item * spec.stride_b..];
                let c = &mut c[item * spec.stride_c..][..spec.m * spec.n];
                gemm_item(a, b, bias, c, spec);
            }
        })?;
        Ok(())
    }

    fn matmul_bias_gelu_unchecked(
        &self,
        a: &Tensor<Self>,
        b: &Tensor<Self>,
        bias: &Tensor<Self>,
        spec: &MatmulSpec,
        pre: &Tensor<Self>,
        out: &Tensor<Self>,
    ) -> Result<()> {
        self.matmul(a, b, Some(bias), pre, spec)?;
        // Only the items' elements: strided items leave gaps that the product does not write.
        for item in 0..spec.batch {
            let at = item * spec.stride_c;
            let len = spec.m * spec.n;
            self.gelu(&pre.view(at, &[len])?, &out.view(at, &[len])?)?;
        }
        Ok(())
    }

    fn add_unchecked(&self, a: &Tensor<Self>, b: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        map_chunks(Elementwise::Add, &[a, b], out)
    }

    fn scale_unchecked(&self, x: &Tensor<Self>, alpha: f32, out: &Tensor<Self>) -> Result<()> {
        map_chunks(Elementwise::Scale(alpha), &[x], out)
    }

    fn cast_unchecked(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        with_io(&[x], &[out], |ins, outs| {
            let words = &mut *outs[0];
            cast_words(ins[0], x, words, out);
        })?;
        Ok(())
    }

    fn gelu_unchecked(&self, x: &Tensor<Self>, out: &Tensor<Self>) -> Result<()> {
        map_chunks(Elementwise::Gelu, &[x], out)
    }

    fn gelu_backward_unchecked(
        &self,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
        dx: &Tensor<Self>,
    ) -> Result<()> {
        map_chunks(Elementwise::GeluBackward, &[x, dy], dx)
    }

    fn bias_grad_unchecked(&self, dy: &Tensor<Self>, db: &Tensor<Self>, _: usize) -> Result<()> {
        let cols = db.len();
        with_io(&[dy], &[db], |ins, outs| {
            let words = &mut *outs[0];
            let sums = column_sums(f32s(ins[0], dy), cols);
            f32s_mut(words, db).copy_from_slice(&sums);
        })?;
        Ok(())
    }

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
    ) -> Result<()> {
        let cols = w.len();
        let mut stats = vec![(0.0f32, 0.0f32); rows];
        with_io(&[x, w, b], &[y], |ins, outs| {
            let words = &mut *outs[0];
            let (x, w, b) = (f32s(ins[0], x), f32s(ins[1], w), f32s(ins[2], b));
            let rows_per_task = rows_per_task(cols);
            f32s_mut(words, y)
                .par_chunks_mut(rows_per_task * cols)
                .zip(x.par_chunks(rows_per_task * cols))
                .zip(stats.par_chunks_mut(rows_per_task))
                .for_each(|((y, x), stats)| {
                    simd::run(norm::Forward {
                        x,
                        w,
                        b,
                        eps,
                        y,
                        stats,
                    });
                });
        })?;
        self.store(mean, stats.iter().map(|s| s.0))?;
        self.store(rstd, stats.iter().map(|s| s.1))
    }

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
        _: usize,
    ) -> Result<()> {
        let cols = w.len();
        let mut param_grads = Vec::new();
        with_io(&[x, w, mean, rstd, dy], &[dx], |ins, outs| {
            let words = &mut *outs[0];
            let (x, w) = (f32s(ins[0], x), f32s(ins[1], w));
            let (mean, rstd, dy) = (f32s(ins[2], mean), f32s(ins[3], rstd), f32s(ins[4], dy));
            // One pass over the rows: dx row by row, and dw, db as partial sums over blocks
            // of rows (added up in block order afterwards), so that x and dy are read once.
            let partials = f32s_mut(words, dx)
                .par_chunks_mut(ROW_BLOCK * cols)
                .enumerate()
                .map(|(block, dx)| {
                    let rows = block * ROW_BLOCK..block * ROW_BLOCK + dx.len() / cols;
                    let elements = rows.start * cols..rows.end * cols;
                    let mut acc = HostBlock::zeroed(2 * cols);
                    simd::run(norm::Backward {
                        x: &x[elements.clone()],
                        dy: &dy[elements],
                        w,
                        mean: &mean[rows.clone()],
                        rstd: &rstd[rows],
                        dx,
                        acc: acc.as_f32s_mut(),
                    });
                    acc
                })
                .collect();
            param_grads = sum_in_block_order(partials, 2 * cols);
        })?;
        self.store(dw, param_grads[..cols].iter().copied())?;
        self.store(db, param_grads[cols..].iter().copied())
    }

    fn mean_pool_unchecked(
        &self,
        h: &Tensor<Self>,
        mask: &Tensor<Self>,
        out: &Tensor<Self>,
        (_, t, d): (usize, usize, usize),
    ) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        with_io(&[h, mask], &[out], |ins, outs| {
            let (h, mask) = (f32s(ins[0], h), f32s(ins[1], mask));
            f32s_mut(outs[0], out)
                .par_chunks_mut(d)
                .enumerate()
                .for_each(|(b, o)| {
                    o.fill(0.0);
                    let m = &mask[b * t..(b + 1) * t];
                    for (s, &weight) in m.iter().enumerate() {
                        if weight != 0.0 {
                            let row = &h[(b * t + s) * d..(b * t + s + 1) * d];
                            o.iter_mut().zip(row).for_each(|(o, x)| *o += weight * x);
                        }
                    }
                    let count: f32 = m.iter().sum();
                    if count > 0.0 {
                        o.iter_mut().for_each(|o| *o /= count);
                    }
                });
        })
    }

    fn mean_pool_backward_unchecked(
        &self,
        dout: &Tensor<Self>,
        mask: &Tensor<Self>,
        dh: &Tensor<Self>,
        (_, t, d): (usize, usize, usize),
    ) -> Result<()> {
        if dh.is_empty() {
            return Ok(());
        }
        with_io(&[dout, mask], &[dh], |ins, outs| {
            let (dout, mask) = (f32s(ins[0], dout), f32s(ins[1], mask));
            f32s_mut(outs[0], dh)
                .par_chunks_mut(t * d)
                .enumerate()
                .for_each(|(b, clip)| {
                    let m = &mask[b * t..(b + 1) * t];
                    let count: f32 = m.iter().sum();
                    for (s, row) in clip.chunks_exact_mut(d).enumerate() {
                        let weight = if count > 0.0 { m[s] / count } else { 0.0 };
                        row.iter_mut()
                            .zip(&dout[b * d..(b + 1) * d])
                            .for_each(|(o, g)| *o = weight * g);
                    }
                });
        })
    }

    fn cross_entropy_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        loss: &Tensor<Self>,
        hits: &Tensor<Self>,
        lse: &Tensor<Self>,
        (_, classes): (usize, usize),
    ) -> Result<()> {
        let mut inputs = vec![logits, labels];
        inputs.extend(weights);
        with_io(&inputs, &[loss, hits, lse], |ins, outs| {
            let (z, y) = (f32s(ins[0], logits), f32s(ins[1], labels));
            let w = weights.map(|t| f32s(ins[2], t));
            let rows: Vec<XentRow> = z
                .par_chunks(classes)
                .zip(y.par_iter())
                .map(|(z, &y)| xent_row(z, y, w, label_smoothing))
                .collect();
            // The batch sums in row order: the same bits on every run.
            let (mut total, mut weight_sum, mut top1, mut top5) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            let k = classes.min(5) as f32;
            for r in &rows {
                total += r.loss;
                weight_sum += r.weight;
                top1 += (r.rank < 1.0) as u8 as f32;
                top5 += (r.rank < k) as u8 as f32;
            }
            f32s_mut(outs[0], loss)[0] = total / weight_sum;
            f32s_mut(outs[1], hits).copy_from_slice(&[top1, top5]);
            for (o, r) in f32s_mut(outs[2], lse).iter_mut().zip(&rows) {
                *o = r.lse;
            }
        })
    }

    fn cross_entropy_backward_unchecked(
        &self,
        logits: &Tensor<Self>,
        labels: &Tensor<Self>,
        weights: Option<&Tensor<Self>>,
        label_smoothing: f32,
        lse: &Tensor<Self>,
        scale: f32,
        dlogits: &Tensor<Self>,
        (_, classes): (usize, usize),
    ) -> Result<()> {
        let mut inputs = vec![logits, labels, lse];
        inputs.extend(weights);
        with_io(&inputs, &[dlogits], |ins, outs| {
            let (z, y, lse) = (
                f32s(ins[0], logits),
                f32s(ins[1], labels),
                f32s(ins[2], lse),
            );
            let w = weights.map(|t| f32s(ins[3], t));
            let weight = |c: usize| w.map_or(1.0, |w| w[c]);
            let weight_sum: f32 = y
                .iter()
                .map(|&y| class_index(y, classes).map_or(f32::NAN, weight))
                .sum();
            let class_weight_sum: f32 = w.map_or(classes as f32, |w| w.iter().sum());
            let smooth = label_smoothing / classes as f32;
            f32s_mut(outs[0], dlogits)
                .par_chunks_mut(classes)
                .zip(z.par_chunks(classes))
                .enumerate()
                .for_each(|(i, (d, z))| {
                    let label = class_index(y[i], classes);
                    let wy = label.map_or(f32::NAN, weight);
                    for (j, (d, &zj)) in d.iter_mut().zip(z).enumerate() {
                        let p = math::exp(zj - lse[i]);
                        let onehot = (label == Some(j)) as u8 as f32;
                        let hard = (1.0 - label_smoothing) * wy * (p - onehot);
                        let soft = smooth * (class_weight_sum * p - weight(j));
                        *d = scale * (hard + soft) / weight_sum;
                    }
                });
        })
    }

    fn adamw_unchecked(
        &self,
        params: &Tensor<Self>,
        grads: &Tensor<Self>,
        m: &Tensor<Self>,
        v: &Tensor<Self>,
        hp: &AdamW,
        step: u64,
    ) -> Result<()> {
        let (decay, step_size, bc2_sqrt) = hp.step_scalars(step);
        with_io(&[grads], &[params, m, v], |ins, outs| {
            let g = f32s(ins[0], grads);
            let [p_words, m_words, v_words] = outs else {
                unreachable!("three outputs")
            };
            let p = f32s_mut(p_words, params);
            let mm = f32s_mut(m_words, m);
            let vv = f32s_mut(v_words, v);
            p.par_chunks_mut(CHUNK)
                .zip(mm.par_chunks_mut(CHUNK))
                .zip(vv.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| {
                    // Zipped slices (no bounds checks), so that the compiler vectorises the
                    // step, square root and division included, for AVX2.
                    simd::run(
                        #[inline(always)]
                        || {
                            let pmv = p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut());
                            for (((p, m), v), &g) in pmv.zip(g) {
                                *m = hp.beta1 * *m + (1.0 - hp.beta1) * g;
                                *v = hp.beta2 * *v + (1.0 - hp.beta2) * g * g;
                                let denom = v.sqrt() / bc2_sqrt + hp.eps;
                                *p = *p * decay - step_size * *m / denom;
                            }
                        },
                    )
                });
        })
    }

    fn grad_norm_unchecked(&self, grads: &Tensor<Self>, norm: &Tensor<Self>) -> Result<()> {
        with_io(&[grads], &[norm], |ins, outs| {
            let g = f32s(ins[0], grads);
            let partials: Vec<f32> = g
                .par_chunks(CHUNK)
                .map(|c| simd::run(simd::Dot(c, c)))
                .collect();
            f32s_mut(outs[0], norm)[0] = partials.iter().sum::<f32>().sqrt();
        })
    }

    fn clip_grads_unchecked(
        &self,
        grads: &Tensor<Self>,
        norm: &Tensor<Self>,
        max_norm: f32,
    ) -> Result<()> {
        let coef = max_norm / (norm.to_f32_vec()?[0] + 1e-6);
        // A NaN norm makes the gradients NaN, as PyTorch's clip_grad_norm_ does.
        if coef < 1.0 || coef.is_nan() {
            self.scale(grads, coef, grads)?;
        }
        Ok(())
    }

    fn unscale_check_unchecked(
        &self,
        grads: &Tensor<Self>,
        inv_scale: f32,
        found_inf: &Tensor<Self>,
    ) -> Result<()> {
        with_io(&[], &[grads, found_inf], |_, outs| {
            let [g_words, flag_words] = outs else {
                unreachable!("two outputs")
            };
            let found = f32s_mut(g_words, grads)
                .par_chunks_mut(CHUNK)
                .map(|c| {
                    let bad = c.iter().any(|x| !x.is_finite());
                    c.iter_mut().for_each(|x| *x *= inv_scale);
                    bad
                })
                .reduce(|| false, |a, b| a || b);
            f32s_mut(flag_words, found_inf)[0] = found as u8 as f32;
        })
    }

    fn dropout_unchecked(
        &self,
        x: &Tensor<Self>,
        p: f32,
        key: &DropoutKey,
        out: &Tensor<Self>,
    ) -> Result<()> {
        let scale = rng::keep_scale(p);
        with_io(&[x], &[out], |ins, outs| {
            let x = f32s(ins[0], x);
            f32s_mut(outs[0], out)
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, o)| {
                    let start = c * CHUNK;
                    simd::run(DropoutChunk {
                        key,
                        first_element: start as u64,
                        p,
                        scale,
                        x: &x[start..start + o.len()],
                        out: o,
                    });
                });
        })
    }

    fn attention_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
    ) -> Result<()> {
        let AttentionSpec { seq: t, heads, .. } = *spec;
        let dm = spec.d_model();
        if out.is_empty() {
            return Ok(());
        }
        with_io(&[qkv, key_mask], &[out, lse], |ins, outs| {
            let (qkv, mask) = (f32s(ins[0], qkv), f32s(ins[1], key_mask));
            let [out_words, lse_words] = outs else {
                unreachable!("two outputs")
            };
            let (o, l) = (f32s_mut(out_words, out), f32s_mut(lse_words, lse));
            o.par_chunks_mut(t * dm)
                .zip(l.par_chunks_mut(heads * t))
                .enumerate()
                .for_each(|(b, (o, l))| {
                    simd::run(attention::Forward {
                        spec,
                        b,
                        qkv: &qkv[b * t * 3 * dm..(b + 1) * t * 3 * dm],
                        mask: &mask[b * t..(b + 1) * t],
                        out: o,
                        lse: l,
                    });
                });
        })
    }

    fn attention_backward_unchecked(
        &self,
        qkv: &Tensor<Self>,
        key_mask: &Tensor<Self>,
        spec: &AttentionSpec,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        dout: &Tensor<Self>,
        dqkv: &Tensor<Self>,
    ) -> Result<()> {
        let AttentionSpec { seq: t, heads, .. } = *spec;
        let dm = spec.d_model();
        if dqkv.is_empty() {
            return Ok(());
        }
        with_io(&[qkv, key_mask, out, lse, dout], &[dqkv], |ins, outs| {
            let (qkv, mask, o) = (f32s(ins[0], qkv), f32s(ins[1], key_mask), f32s(ins[2], out));
            let (lse, dout) = (f32s(ins[3], lse), f32s(ins[4], dout));
            f32s_mut(outs[0], dqkv)
                .par_chunks_mut(t * 3 * dm)
                .enumerate()
                .for_each(|(b, d)| {
                    fn clip(x: &[f32], b: usize, rows: usize) -> &[f32] {
                        &x[b * rows..(b + 1) * rows]
                    }
                    simd::run(attention::Backward {
                        spec,
                        b,
                        qkv: clip(qkv, b, t * 3 * dm),
                        mask: clip(mask, b, t),
                        out: clip(o, b, t * dm),
                        lse: clip(lse, b, heads * t),
                        dout: clip(dout, b, t * dm),
                        dqkv: d,
                    });
                });
        })
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

/// One item of a matrix product through [`gemm_by_rows`], which takes any row and column
/// strides. The bias is written to C first and accumulated onto (`read_dst`).
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
        gemm_by_rows(
            (m, n, k),
            (c.as_mut_ptr(), n, bias.is_some()),
            (a.as_ptr(), a_rs, a_cs),
            (b.as_ptr(), b_rs, b_cs),
            (1.0, 1.0),
            parallelism,
        );
    }
}

/// `gemm::gemm`: dst (m×n, row stride dst.1) = alpha·dst (where dst.2 says to read it) +
/// beta·lhs·rhs, each operand a (pointer, row stride, column stride) view. A right-hand side
/// stored by columns (a linear layer's Wᵀ, attention's Kᵀ and Vᵀ) is first copied into rows:
/// gemm packs such an operand one element at a time, which under its AVX-512 kernels cost more
/// than the product (64 × 1024 × 256: 540–591 against 78–80 µs).
///
/// # Safety
/// As `gemm::gemm`: each view's elements lie inside one allocation, and dst overlaps no other.
#[allow(clippy::type_complexity)]
unsafe fn gemm_by_rows(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, read_dst): (*mut f32, usize, bool),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    (alpha, beta): (f32, f32),
    parallelism: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let mut scratch = RHS_SCRATCH.take();
    let (rhs, rhs_rs, rhs_cs) = if rhs_rs == 1 && rhs_cs != 1 && k > 0 {
        // Column j of the k×n right-hand side is row j of an n×k matrix of row stride rhs_cs.
        // SAFETY: those n rows are the view the caller vouches for.
        let columns = unsafe { std::slice::from_raw_parts(rhs, (n - 1) * rhs_cs + k) };
        transpose_into(columns, n, k, rhs_cs, &mut scratch);
        (scratch.as_ptr(), n, 1)
    } else {
        (rhs, rhs_rs, rhs_cs)
    };
    // SAFETY: the caller's views, or the scratch's k×n rows.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        );
    }
    // A weight's worth is kept for the next product; an outsized one is let go.
    if scratch.capacity() <= MAX_KEPT_SCRATCH {
        RHS_SCRATCH.set(scratch);
    }
}

/// The most floats the transposed right-hand side's scratch keeps between products (16 MiB).
const MAX_KEPT_SCRATCH: usize = 1 << 22;

thread_local! {
    /// A transposed right-hand side's rows (gemm_item), kept between products.
    static RHS_SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `src` [rows, cols] (row stride `src_rs`) into `dst` [cols, rows]: 8×8 blocks transposed in
/// AVX registers where the CPU has AVX, in blocks of rows that stay in L1; the edges one
/// element at a time.
fn transpose_into(src: &[f32], rows: usize, cols: usize, src_rs: usize, dst: &mut Vec<f32>) {
    if dst.len() < rows * cols {
        dst.resize(rows * cols, 0.0);
    }
    let dst = &mut dst[..rows * cols];
    let (rows8, cols8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX; transpose_8x8_blocks stays inside rows8 × cols8.
        unsafe { transpose_8x8_blocks(src, rows, cols, src_rs, rows8, cols8, dst) };
    } else {
        transpose_scalar(src, rows, src_rs, 0..rows8, 0..cols8, dst);
    }
    #[cfg(not(target_arch = "x86_64"))]
    transpose_scalar(src, rows, src_rs, 0..rows8, 0..cols8, dst);
    transpose_scalar(src, rows, src_rs, rows8..rows, 0..cols, dst);
    transpose_scalar(src, rows, src_rs, 0..rows8, cols8..cols, dst);
}

fn transpose_scalar(
    src: &[f32],
    rows: usize,
    src_rs: usize,
    row_range: std::ops::Range<usize>,
    col_range: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    for r in row_range {
        for c in col_range.clone() {
            dst[c * rows + r] = src[r * src_rs + c];
        }
    }
}

/// The 8×8 blocks of `src` [.., cols] (row stride `src_rs`) within rows8 × cols8 (multiples of
/// 8), transposed into `dst` [cols, rows].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8_blocks(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_rs: usize,
    rows8: usize,
    cols8: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(rows8 <= rows && cols8 <= cols && cols <= src_rs);
    assert!(rows == 0 || src.len() >= (rows - 1) * src_rs + cols);
    assert!(dst.len() >= rows * cols);
    // Rows of `src` a sweep covers: their 8-column strips stay in L1 while the sweep moves
    // right, and `dst` is written 32 bytes at a time.
    const ROW_BLOCK: usize = 64;
    for r0 in (0..rows8).step_by(ROW_BLOCK) {
        let r_end = (r0 + ROW_BLOCK).min(rows8);
        for c in (0..cols8).step_by(8) {
            for r in (r0..r_end).step_by(8) {
                // SAFETY (all loads and stores): r + 7 < rows8 ≤ rows and c + 7 < cols8 ≤
                // cols ≤ src_rs, so rows r .. r + 8 of `src` hold columns c .. c + 8, and rows
                // c .. c + 8 of `dst` hold columns r .. r + 8 (lengths asserted above).
                // (A macro, not a closure: a closure would be compiled without AVX.)
                macro_rules! load {
                    ($i:expr) => {
                        _mm256_loadu_ps(src.as_ptr().add((r + $i) * src_rs + c))
                    };
                }
                let (r0v, r1, r2, r3) = (load!(0), load!(1), load!(2), load!(3));
                let (r4, r5, r6, r7) = (load!(4), load!(5), load!(6), load!(7));
                let (t0, t1) = (_mm256_unpacklo_ps(r0v, r1), _mm256_unpackhi_ps(r0v, r1));
                let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                let (u0, u1) = (
                    _mm256_shuffle_ps::<0x44>(t0, t2),
                    _mm256_shuffle_ps::<0xEE>(t0, t2),
                );
                let (u2, u3) = (
                    _mm256_shuffle_ps::<0x44>(t1, t3),
                    _mm256_shuffle_ps::<0xEE>(t1, t3),
                );
                let (u4, u5) = (
                    _mm256_shuffle_ps::<0x44>(t4, t6),
                    _mm256_shuffle_ps::<0xEE>(t4, t6),
                );
                let (u6, u7) = (
                    _mm256_shuffle_ps::<0x44>(t5, t7),
                    _mm256_shuffle_ps::<0xEE>(t5, t7),
                );
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (i, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(dst.as_mut_ptr().add((c + i) * rows + r), v);
                }
            }
        }
    }
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

/// The SIMD bodies under every instruction set ([`crate::for_every_instruction_set`]), each
/// against the f64 reference (dropout against the draws).
#[cfg(test)]
mod simd_paths {
    use super::simd::{self, Simd, WithSimd};
    use super::{attention, norm};
    use super::{Elementwise, ElementwiseChunk};
    use crate::backend::NO_KEYS_LSE;
    use crate::dtype::DType;
    use crate::parity::{self, GeluValueErrors};
    use crate::reference;
    use crate::tolerance::{tolerance, Deviation, OpClass};

    /// Awkward lengths: whole blocks of every width, and tails.
    const COLS: [usize; 4] = [1, 37, 64, 203];

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // A fixed pseudo-random sequence in [-4, 4): enough to reach GELU's and layer norm's
        // interesting ranges.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
            })
            .collect()
    }

    fn wide(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64], class: OpClass) {
        let d = Deviation::measure(got, want);
        assert!(d.within(tolerance(class, DType::F32)), "{what}: {d:?}");
    }

    fn check_all<S: Simd>(s: S, set: &str) {
        for (i, &cols) in COLS.iter().enumerate() {
            let rows = 3;
            let n = rows * cols;
            let (x, dy) = (values(n, i as u64), values(n, 100 + i as u64));
            let (w, b) = (values(cols, 200 + i as u64), values(cols, 300 + i as u64));

            let mut out = vec![f32::NAN; n];
            ElementwiseChunk {
                op: Elementwise::Gelu,
                ins: &[&x],
                out: &mut out,
            }
            .with_simd(s);
            assert_close(
                &format!("{set} gelu {n}"),
                &out,
                &reference::gelu(&wide(&x)),
                OpClass::Elementwise,
            );
            ElementwiseChunk {
                op: Elementwise::GeluBackward,
                ins: &[&x, &dy],
                out: &mut out,
            }
            .with_simd(s);
            let want = reference::gelu_backward(&wide(&x), &wide(&dy));
            assert_close(
                &format!("{set} gelu_backward {n}"),
                &out,
                &want,
                OpClass::Elementwise,
            );

            let dot: f64 = x.iter().zip(&dy).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert_close(
                &format!("{set} dot {n}"),
                &[simd::dot(s, &x, &dy)],
                &[dot],
                OpClass::Reduction,
            );

            let (mut y, mut stats) = (vec![f32::NAN; n], vec![(f32::NAN, f32::NAN); rows]);
            norm::Forward {
                x: &x,
                w: &w,
                b: &b,
                eps: 1e-5,
                y: &mut y,
                stats: &mut stats,
            }
            .with_simd(s);
            let (want_y, want_mean, want_rstd) =
                reference::layernorm(&wide(&x), &wide(&w), &wide(&b), 1e-5);
            assert_close(
                &format!("{set} layernorm {n}"),
                &y,
                &want_y,
                OpClass::Reduction,
            );
            let (mean, rstd): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
            assert_close(
                &format!("{set} layernorm mean {n}"),
                &mean,
                &want_mean,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm rstd {n}"),
                &rstd,
                &want_rstd,
                OpClass::Reduction,
            );
            // A row's bits do not depend on its place among the rows: the first row's sum is
            // taken alone, each later one's in the sweep over the row before it.
            let (mut alone, mut alone_stats) = (vec![f32::NAN; cols], [(f32::NAN, f32::NAN)]);
            norm::Forward {
                x: &x[cols..2 * cols],
                w: &w,
                b: &b,
                eps: 1e-5,
                y: &mut alone,
                stats: &mut alone_stats,
            }
            .with_simd(s);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (bits(&alone), bits(&[alone_stats[0].0, alone_stats[0].1])),
                (bits(&y[cols..2 * cols]), bits(&[mean[1], rstd[1]])),
                "{set} layernorm: row 1 alone and after row 0 ({cols} columns)"
            );

            // A row of attention scores over a ragged key mask (about a quarter of the keys
            // padding), and one whose keys are all padding.
            let ragged = values(cols, 400 + i as u64)
                .iter()
                .map(|&v| if v > -2.0 { 1.0 } else { 0.0 })
                .collect();
            for mask in [ragged, vec![0.0f32; cols]] {
                let mut p = x[..cols].to_vec();
                let lse = attention::SoftmaxRow {
                    row: &mut p,
                    mask: &mask,
                }
                .with_simd(s);
                let real: Vec<usize> = (0..cols).filter(|&k| mask[k] != 0.0).collect();
                if real.is_empty() {
                    assert!(lse == NO_KEYS_LSE && p.iter().all(|&v| v == 0.0), "{set}");
                    continue;
                }
                let max = real.iter().map(|&k| x[k] as f64).fold(f64::MIN, f64::max);
                let sum: f64 = real.iter().map(|&k| (x[k] as f64 - max).exp()).sum();
                let want: Vec<f64> = (0..cols)
                    .map(|k| match mask[k] != 0.0 {
                        true => (x[k] as f64 - max).exp() / sum,
                        false => 0.0,
                    })
                    .collect();
                let what = format!("{set} softmax {cols}");
                assert_close(&what, &p, &want, OpClass::Reduction);
                assert_close(&what, &[lse], &[max + sum.ln()], OpClass::Reduction);
            }

            let (mut dx, mut acc) = (vec![f32::NAN; n], vec![0.0f32; 2 * cols]);
            norm::Backward {
                x: &x,
                dy: &dy,
                w: &w,
                mean: &mean,
                rstd: &rstd,
                dx: &mut dx,
                acc: &mut acc,
            }
            .with_simd(s);
            let (want_dx, want_dw, want_db) = reference::layernorm_backward(
                &wide(&x),
                &wide(&w),
                &wide(&mean),
                &wide(&rstd),
                &wide(&dy),
            );
            assert_close(
                &format!("{set} layernorm dx {n}"),
                &dx,
                &want_dx,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm dw {n}"),
                &acc[..cols],
                &want_dw,
                OpClass::Reduction,
            );
            assert_close(
                &format!("{set} layernorm db {n}"),
                &acc[cols..],
                &want_db,
                OpClass::Reduction,
            );
        }
    }

    /// Dropout element by element against `rng::keep`, over lengths and offsets that take
    /// every path of `rng::for_each_tile`: partial tiles, lone whole tiles, and two or four
    /// at a time (two to a vector under 16 lanes).
    fn check_dropout<S: Simd>(s: S, set: &str) {
        let key = crate::rng::DropoutKey {
            seed: 7,
            step: 3,
            site: 2,
        };
        let p = 0.3;
        let scale = crate::rng::keep_scale(p);
        for (first, n) in [(0, 700), (3, 700), (64, 130), (0, 64)] {
            let x = values(n, 500 + first);
            let mut out = vec![f32::NAN; n];
            super::DropoutChunk {
                key: &key,
                first_element: first,
                p,
                scale,
                x: &x,
                out: &mut out,
            }
            .with_simd(s);
            for (i, (&x, &y)) in x.iter().zip(&out).enumerate() {
                let e = first + i as u64;
                let want = if crate::rng::keep(&key, e, p) {
                    x * scale
                } else {
                    0.0
                };
                assert_eq!(y.to_bits(), want.to_bits(), "{set} dropout, element {e}");
            }
        }
    }

    /// GELU and gelu' value by value under each instruction set (the native one is checked
    /// through the backend, by the parity tests).
    fn check_gelu_sweep<S: Simd>(s: S, set: &str) {
        let x = parity::gelu_sweep();
        let ones = vec![1.0f32; x.len()];
        let (mut y, mut grad) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
        ElementwiseChunk {
            op: Elementwise::Gelu,
            ins: &[&x],
            out: &mut y,
        }
        .with_simd(s);
        ElementwiseChunk {
            op: Elementwise::GeluBackward,
            ins: &[&x, &ones],
            out: &mut grad,
        }
        .with_simd(s);
        let errors = GeluValueErrors::measure(&x, &y, &grad);
        assert!(errors.within(), "{set}: {errors:?}");
    }

    #[test]
    fn transpose_into_every_block_and_edge() {
        let sizes = [
            (1, 1),
            (1, 9),
            (9, 1),
            (8, 8),
            (13, 21),
            (16, 24),
            (67, 130),
        ];
        for ((rows, cols), pad) in sizes.into_iter().zip([0, 3, 0, 8, 1, 0, 29]) {
            // Rows `pad` elements apart beyond their width, as a head's columns of qkv are.
            let src_rs = cols + pad;
            let src: Vec<f32> = (0..rows * src_rs).map(|i| i as f32).collect();
            // A longer, dirty scratch: only its first rows·cols elements are the answer.
            let mut dst = vec![f32::NAN; rows * cols + 5];
            super::transpose_into(&src, rows, cols, src_rs, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    let want = src[r * src_rs + c];
                    assert_eq!(dst[c * rows + r], want, "{rows}x{cols}+{pad} at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn gelu_is_accurate_value_by_value() {
        crate::for_every_instruction_set!(check_gelu_sweep);
    }

    /// The same with subnormal results and operands taken as zero, as NVIDIA's Vulkan driver
    /// takes them (shaders/gelu.wgsl orders its operations as math.rs does): x86's
    /// flush-to-zero and denormals-are-zero modes, on this thread.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(deprecated)] // _mm_getcsr/_mm_setcsr: Rust has no other way to reach MXCSR.
    fn gelu_is_accurate_with_subnormals_flushed() {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ_DAZ: u32 = 0x8040;
        // SAFETY: MXCSR's rounding and exception bits are kept; it is restored before return.
        let saved = unsafe { _mm_getcsr() };
        unsafe { _mm_setcsr(saved | FTZ_DAZ) };
        let checked =
            std::panic::catch_unwind(|| crate::for_every_instruction_set!(check_gelu_sweep));
        unsafe { _mm_setcsr(saved) };
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    }

    #[test]
    fn every_instruction_set_drops_the_same_elements() {
        crate::for_every_instruction_set!(check_dropout);
    }

    #[test]
    fn every_instruction_set_matches_the_reference() {
        crate::for_every_instruction_set!(check_all);
    }
}

#[cfg(test)]
mod column_sums_order {
    use super::simd::{Simd, WithSimd};

    /// Matrices of 5, 37 and 300 columns (whole vectors, whole strips and tails) and rows
    /// that leave 0 to 3 over in a block, each with its blocks' row-by-row sums.
    fn cases() -> Vec<(usize, Vec<f32>, Vec<super::HostBlock>)> {
        [5, 37, 300]
            .into_iter()
            .flat_map(|c| [1, 3, 4, 6, 7, 64, 65, 66, 131].map(|r| (c, r)))
            .map(|(cols, rows)| {
                let m: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 7919 % 1009) as f32 - 504.0) * 1.0e-3 * (1 + i % 3) as f32)
                    .collect();
                let want = m
                    .chunks(super::ROW_BLOCK * cols)
                    .map(|block| {
                        let mut acc = super::HostBlock::zeroed(cols);
                        for row in block.chunks_exact(cols) {
                            acc.as_f32s_mut()
                                .iter_mut()
                                .zip(row)
                                .for_each(|(a, g)| *a += g);
                        }
                        acc
                    })
                    .collect();
                (cols, m, want)
            })
            .collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The column sums take rows four at a time, or strips of columns down the rows: the
    /// same bits as adding the rows one after another, in every block and for every number
    /// of rows left over.
    #[test]
    fn equal_row_by_row_sums() {
        for (cols, m, want) in cases() {
            assert_eq!(
                bits(&super::column_sums(&m, cols)),
                bits(&super::sum_in_block_order(want, cols)),
                "{} rows of {cols}",
                m.len() / cols
            );
        }
    }

    /// Each block under every instruction set: four-row passes, and strips under 16 lanes.
    #[test]
    fn every_instruction_set_sums_in_row_order() {
        fn check<S: Simd>(s: S, set: &str) {
            for (cols, m, want) in cases() {
                for (block, want) in m.chunks(super::ROW_BLOCK * cols).zip(&want) {
                    let mut sums = vec![0.0; cols];
                    super::ColumnSums {
                        rows: block,
                        sums: &mut sums,
                    }
                    .with_simd(s);
                    assert_eq!(
                        bits(&sums),
                        bits(want.as_f32s()),
                        "{set}: {} rows of {cols}",
                        block.len() / cols
                    );
                }
            }
        }
        crate::for_every_instruction_set!(check);
    }
}
