//! Runs a loop body compiled for the widest vector instructions the CPU has: the crate is
//! built for baseline x86-64 (SSE2), so that it runs anywhere, and the loops that are compute
//! bound (GELU's erfc, dropout's Philox) get an AVX2 + FMA copy chosen at run time.

/// Calls `body`, inlined into a copy compiled with AVX2 and FMA where the CPU has them.
#[inline(always)]
pub(super) fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the copy is compiled for were just detected.
            return unsafe { with_avx2_fma(body) };
        }
    }
    body()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2_fma<R>(body: impl FnOnce() -> R) -> R {
    body()
}
