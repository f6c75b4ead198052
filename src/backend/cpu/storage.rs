//! Host memory for CPU tensors, and the locking that hands an op its inputs' words and its
//! outputs' words at once.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::CpuBackend;
use crate::backend::Storage;
use crate::error::{Error, Result};
use crate::memory::{BlockAllocator, PooledBlock};
use crate::tensor::{HostData, HostTensor, Tensor};

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
    pub(super) fn zeroed(words: usize) -> HostBlock {
        let lines = vec![Line([0; 16]); HostBlock::lines_for(words)];
        HostBlock { lines, words }
    }

    pub(super) fn as_f32s(&self) -> &[f32] {
        bytemuck::cast_slice(self)
    }

    pub(super) fn as_f32s_mut(&mut self) -> &mut [f32] {
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
pub struct CpuStorage(pub(super) PooledBlock<HostAllocator>);

impl CpuStorage {
    pub(super) fn words(&self) -> RwLockReadGuard<'_, HostBlock> {
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

/// An input's words: all of its storage, or a copy of just its own words, and where the
/// tensor's first element is in them.
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    words: &'a [u32],
    first: usize,
}

pub(super) fn f32s<'a>(x: Input<'a>, t: &Tensor<CpuBackend>) -> &'a [f32] {
    &bytemuck::cast_slice(x.words)[x.first..x.first + t.len()]
}

pub(super) fn halves<'a>(x: Input<'a>, t: &Tensor<CpuBackend>) -> &'a [u16] {
    &bytemuck::cast_slice(x.words)[x.first..x.first + t.len()]
}

/// An output's elements in the words [`with_io`] gave it.
pub(super) fn f32s_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [f32] {
    &mut bytemuck::cast_slice_mut(words)[..t.len()]
}

pub(super) fn halves_mut<'a>(words: &'a mut [u32], t: &Tensor<CpuBackend>) -> &'a mut [u16] {
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
pub(super) fn with_io<R>(
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

/// Writes `values` into an f32 tensor.
pub(super) fn store(t: &Tensor<CpuBackend>, values: impl Iterator<Item = f32>) -> Result<()> {
    with_io(&[], &[t], |_, outs| {
        let words = &mut *outs[0];
        for (o, v) in f32s_mut(words, t).iter_mut().zip(values) {
            *o = v;
        }
    })?;
    Ok(())
}

/// Host data into a tensor of its dtype and length.
pub(super) fn write(dst: &Tensor<CpuBackend>, src: &HostTensor) -> Result<()> {
    with_io(&[], &[dst], |_, outs| match src.data() {
        HostData::F32(v) => f32s_mut(outs[0], dst).copy_from_slice(v),
        HostData::F16(v) => halves_mut(outs[0], dst).copy_from_slice(bytemuck::cast_slice(v)),
        HostData::Bf16(v) => halves_mut(outs[0], dst).copy_from_slice(bytemuck::cast_slice(v)),
    })?;
    Ok(())
}
