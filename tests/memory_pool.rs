//! The buffer pool's statistics, size classes, budget and guard, with a counting allocator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use signflow::memory::{size_class, BlockAllocator, MemoryPool};
use signflow::{Error, Result};

#[derive(Default)]
struct Counting {
    live: Arc<AtomicU64>,
}

struct Block(u64, Arc<AtomicU64>);

impl Drop for Block {
    fn drop(&mut self) {
        self.1.fetch_sub(self.0, Ordering::SeqCst);
    }
}

impl BlockAllocator for Counting {
    type Block = Block;
    fn allocate(&self, bytes: u64, _what: &str) -> Result<Block> {
        self.live.fetch_add(bytes, Ordering::SeqCst);
        Ok(Block(bytes, self.live.clone()))
    }
}

#[test]
fn size_classes_cover_requests_with_bounded_waste() {
    let mut previous = 0;
    for bytes in (1..10_000_000u64).step_by(9_973) {
        let class = size_class(bytes);
        assert!(class >= bytes && class % 256 == 0, "{bytes} -> {class}");
        assert!(class >= previous, "classes grow with the request");
        if bytes > 1 << 20 {
            assert!(class as f64 <= bytes as f64 * 1.25, "{bytes} -> {class}");
        }
        previous = class;
    }
}

#[test]
fn statistics_follow_allocations_and_the_cache() {
    let allocator = Counting::default();
    let live = allocator.live.clone();
    let pool = MemoryPool::new(allocator, None);
    let a = pool.allocate(1000, "a").unwrap();
    let b = pool.allocate(3000, "b").unwrap();
    let s = pool.stats();
    assert_eq!(s.allocated_bytes, 1024 + 4096);
    assert_eq!(s.reserved_bytes, 1024 + 4096);
    assert_eq!(s.allocation_count, 2);
    drop(b);
    let s = pool.stats();
    assert_eq!(s.allocated_bytes, 1024);
    assert_eq!(s.reserved_bytes, 1024 + 4096, "a freed block stays cached");
    assert_eq!(s.peak_allocated_bytes, 1024 + 4096);
    // Same class: served from the cache, no new memory.
    let c = pool.allocate(4000, "c").unwrap();
    assert_eq!(live.load(Ordering::SeqCst), 1024 + 4096);
    drop(c);
    pool.reset_peak_memory_stats();
    assert_eq!(pool.stats().peak_allocated_bytes, 1024);
    pool.empty_cache();
    assert_eq!(pool.stats().reserved_bytes, 1024);
    assert_eq!(
        live.load(Ordering::SeqCst),
        1024,
        "emptying the cache frees memory"
    );
    drop(a);
}

#[test]
fn budget_is_enforced_after_emptying_the_cache() {
    let pool = MemoryPool::new(Counting::default(), Some(10_000));
    let a = pool.allocate(4096, "a").unwrap();
    drop(pool.allocate(2048, "cached").unwrap());
    // 4096 live + 2048 cached + 4096 new > 10000: the cache is emptied, then it fits.
    let b = pool.allocate(4096, "b").unwrap();
    assert_eq!(pool.stats().reserved_bytes, 8192);
    match pool.allocate(4096, "a 4 KiB activation") {
        Err(Error::OutOfMemory {
            request,
            requested_bytes,
            budget_bytes,
            ..
        }) => {
            assert_eq!(request, "a 4 KiB activation");
            assert_eq!(requested_bytes, 4096);
            assert_eq!(budget_bytes, 10_000);
        }
        other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
    }
    drop((a, b));
}

/// Fails when the memory it holds would exceed `capacity`, as a device does.
struct Bounded {
    inner: Counting,
    capacity: u64,
}

impl BlockAllocator for Bounded {
    type Block = Block;
    fn allocate(&self, bytes: u64, what: &str) -> Result<Block> {
        if self.inner.live.load(Ordering::SeqCst) + bytes > self.capacity {
            return Err(Error::AllocationRefused {
                request: what.into(),
                requested_bytes: bytes,
                reason: "full".into(),
            });
        }
        self.inner.allocate(bytes, what)
    }
}

#[test]
fn a_refused_allocation_is_retried_after_emptying_the_cache() {
    let pool = MemoryPool::new(
        Bounded {
            inner: Counting::default(),
            capacity: 8192,
        },
        None,
    );
    drop(pool.allocate(4096, "cached").unwrap());
    let big = pool
        .allocate(8192, "big")
        .expect("fits once the cache is emptied");
    assert_eq!(pool.stats().reserved_bytes, 8192);
    let err = pool
        .allocate(256, "more")
        .err()
        .expect("the device is full")
        .to_string();
    assert!(err.contains("cannot allocate more"), "{err}");
    drop(big);
}

#[test]
fn guard_empties_the_cache_when_dropped() {
    let allocator = Counting::default();
    let live = allocator.live.clone();
    let pool = MemoryPool::new(allocator, None);
    {
        let _guard = pool.guard();
        drop(pool.allocate(1 << 20, "x").unwrap());
        assert_eq!(live.load(Ordering::SeqCst), 1 << 20);
    }
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(pool.stats().reserved_bytes, 0);
}

/// Counts the bytes of the blocks the pool hands to [`BlockAllocator::free`].
struct Freeing {
    inner: Counting,
    freed: Arc<AtomicU64>,
}

impl BlockAllocator for Freeing {
    type Block = Block;
    fn allocate(&self, bytes: u64, what: &str) -> Result<Block> {
        self.inner.allocate(bytes, what)
    }
    fn free(&self, blocks: Vec<Block>) {
        let bytes: u64 = blocks.iter().map(|b| b.0).sum();
        self.freed.fetch_add(bytes, Ordering::SeqCst);
    }
}

/// Every block the pool really frees goes through the allocator's `free` (where the GPU
/// backend drops the cached bind groups that bind it): on `empty_cache`, and when a request
/// over the budget empties the cache. Blocks in use are never freed.
#[test]
fn blocks_the_pool_frees_go_through_the_allocator() {
    let freed = Arc::new(AtomicU64::new(0));
    let allocator = Freeing {
        inner: Counting::default(),
        freed: freed.clone(),
    };
    let live = allocator.inner.live.clone();
    let pool = MemoryPool::new(allocator, Some(24_576));
    let in_use = pool.allocate(4096, "in use").unwrap();
    drop(pool.allocate(2048, "cached").unwrap());
    pool.empty_cache();
    assert_eq!(freed.load(Ordering::SeqCst), 2048);
    drop(pool.allocate(8192, "cached").unwrap());
    // 4096 in use + 8192 cached + 16384 > 24576: the cache is emptied first.
    let big = pool.allocate(16_384, "big").unwrap();
    assert_eq!(freed.load(Ordering::SeqCst), 2048 + 8192);
    assert_eq!(live.load(Ordering::SeqCst), 4096 + 16_384);
    drop((in_use, big));
}
