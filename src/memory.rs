//! The buffer pool: size classes, exact statistics, a budget, and an RAII guard
//! (DESIGN.md, Memory). Generic over the allocator, so the CPU backend, the GPU backend and the
//! tests share one implementation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Allocates raw blocks of memory for a [`MemoryPool`].
pub trait BlockAllocator: Send + Sync + 'static {
    type Block: Send + Sync;
    /// A block of at least `bytes` bytes; `what` names the request in errors.
    fn allocate(&self, bytes: u64, what: &str) -> Result<Self::Block>;

    /// The largest block this allocator can make (size classes are capped at it).
    fn max_block_bytes(&self) -> u64 {
        u64::MAX
    }

    /// Frees blocks the pool gives up (emptying its cache), so that nothing else keeps them
    /// alive. Called with the pool locked.
    fn free(&self, blocks: Vec<Self::Block>) {
        drop(blocks);
    }
}

/// Memory statistics of a pool, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MemoryStats {
    /// Held by live tensors (size-class bytes).
    pub allocated_bytes: u64,
    /// Held by the pool: live tensors plus cached free blocks.
    pub reserved_bytes: u64,
    /// The most `allocated_bytes` has been since creation or the last peak reset.
    pub peak_allocated_bytes: u64,
    /// Blocks handed out since creation (from the cache or new).
    pub allocation_count: u64,
    /// The budget, where one is set or the device's memory is known.
    pub budget_bytes: Option<u64>,
}

/// Smallest block the pool hands out; also the alignment of every block size.
const MIN_BLOCK_BYTES: u64 = 256;

/// The size class a request of `bytes` is served from: powers of two up to 1 MiB, above that
/// quarter steps between powers of two, so that no block wastes more than a quarter.
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(MIN_BLOCK_BYTES);
    let Some(pow) = bytes.checked_next_power_of_two() else {
        return bytes; // beyond any memory; the allocator refuses it
    };
    if pow <= 1 << 20 {
        return pow;
    }
    let step = pow / 8;
    bytes.div_ceil(step) * step
}

struct PoolState<B> {
    free: BTreeMap<u64, Vec<B>>,
    stats: MemoryStats,
}

struct PoolShared<A: BlockAllocator> {
    allocator: A,
    state: Mutex<PoolState<A::Block>>,
}

impl<A: BlockAllocator> PoolShared<A> {
    fn lock(&self) -> MutexGuard<'_, PoolState<A::Block>> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters more than losing the pool; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees every cached block (`state` is this pool's, locked).
    fn release_cache(&self, state: &mut PoolState<A::Block>) {
        let mut freed = Vec::new();
        for (class, blocks) in std::mem::take(&mut state.free) {
            state.stats.reserved_bytes -= class * blocks.len() as u64;
            freed.extend(blocks);
        }
        self.allocator.free(freed);
    }
}

/// A pool of blocks in size classes with exact statistics and an optional budget.
pub struct MemoryPool<A: BlockAllocator> {
    shared: Arc<PoolShared<A>>,
}

impl<A: BlockAllocator> Clone for MemoryPool<A> {
    fn clone(&self) -> Self {
        MemoryPool {
            shared: self.shared.clone(),
        }
    }
}

impl<A: BlockAllocator> MemoryPool<A> {
    pub fn new(allocator: A, budget_bytes: Option<u64>) -> Self {
        MemoryPool {
            shared: Arc::new(PoolShared {
                allocator,
                state: Mutex::new(PoolState {
                    free: BTreeMap::new(),
                    stats: MemoryStats {
                        budget_bytes,
                        ..MemoryStats::default()
                    },
                }),
            }),
        }
    }

    /// A block of at least `bytes` bytes, from the cache when one of its class is free.
    /// Over budget, the cache is emptied first; if that is not enough, an `OutOfMemory` error
    /// names `what`, the request and the budget. A block the allocator refuses is retried
    /// once after emptying the cache.
    pub fn allocate(&self, bytes: u64, what: &str) -> Result<PooledBlock<A>> {
        let max = self.shared.allocator.max_block_bytes();
        let class = if bytes <= max {
            size_class(bytes).min(max)
        } else {
            bytes
        };
        let mut state = self.shared.lock();
        let cached = state.free.get_mut(&class).and_then(Vec::pop);
        let block = match cached {
            Some(block) => block,
            None => {
                if let Some(budget) = state.stats.budget_bytes {
                    let over = |s: &MemoryStats| s.reserved_bytes.saturating_add(class) > budget;
                    if over(&state.stats) {
                        self.shared.release_cache(&mut state);
                    }
                    if over(&state.stats) {
                        return Err(Error::OutOfMemory {
                            request: what.to_string(),
                            requested_bytes: bytes,
                            in_use_bytes: state.stats.allocated_bytes,
                            budget_bytes: budget,
                            hint: String::new(),
                        });
                    }
                }
                let block = match self.shared.allocator.allocate(class, what) {
                    Ok(block) => block,
                    Err(_) if !state.free.is_empty() => {
                        self.shared.release_cache(&mut state);
                        self.shared.allocator.allocate(class, what)?
                    }
                    Err(e) => return Err(e),
                };
                state.stats.reserved_bytes += class;
                block
            }
        };
        let stats = &mut state.stats;
        stats.allocated_bytes += class;
        stats.peak_allocated_bytes = stats.peak_allocated_bytes.max(stats.allocated_bytes);
        stats.allocation_count += 1;
        Ok(PooledBlock {
            block: Some(block),
            class_bytes: class,
            pool: self.shared.clone(),
        })
    }

    pub fn stats(&self) -> MemoryStats {
        self.shared.lock().stats
    }

    /// Sets the peak to what is allocated now.
    pub fn reset_peak_memory_stats(&self) {
        let mut state = self.shared.lock();
        state.stats.peak_allocated_bytes = state.stats.allocated_bytes;
    }

    /// Frees every cached block that no tensor holds.
    pub fn empty_cache(&self) {
        self.shared.release_cache(&mut self.shared.lock());
    }

    /// A guard that empties the cache when it is dropped.
    pub fn guard(&self) -> MemoryGuard<A> {
        MemoryGuard { pool: self.clone() }
    }
}

/// A block lent by a pool; it returns to the pool's cache when dropped.
pub struct PooledBlock<A: BlockAllocator> {
    block: Option<A::Block>,
    class_bytes: u64,
    pool: Arc<PoolShared<A>>,
}

impl<A: BlockAllocator> PooledBlock<A> {
    /// The usable size of the block (its size class).
    pub fn size_bytes(&self) -> u64 {
        self.class_bytes
    }
}

impl<A: BlockAllocator> std::ops::Deref for PooledBlock<A> {
    type Target = A::Block;
    fn deref(&self) -> &A::Block {
        self.block.as_ref().expect("block present until drop")
    }
}

impl<A: BlockAllocator> Drop for PooledBlock<A> {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            let mut state = self.pool.lock();
            state.stats.allocated_bytes -= self.class_bytes;
            state.free.entry(self.class_bytes).or_default().push(block);
        }
    }
}

/// Empties the pool's cache when dropped: the counterpart of the memory guard of the system
/// SignFlow replaces. Hold one around work whose buffers should not outlive it.
pub struct MemoryGuard<A: BlockAllocator> {
    pool: MemoryPool<A>,
}

impl<A: BlockAllocator> Drop for MemoryGuard<A> {
    fn drop(&mut self) {
        self.pool.empty_cache();
    }
}
