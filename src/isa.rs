//! Which vector instructions this CPU has, detected once: below the CPU backend, which
//! dispatches its kernels on it, and device information, which names it.

use std::sync::LazyLock;

/// This CPU's instruction sets as `pulp` (the SIMD layer the `gemm` crate is built on) finds
/// them.
pub(crate) static ARCH: LazyLock<pulp::Arch> = LazyLock::new(pulp::Arch::new);

/// The instruction set the CPU backend's kernels run under on this CPU, for people reading
/// timings.
pub(crate) fn instruction_set() -> &'static str {
    match *ARCH {
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V4(_) => "AVX-512",
        #[cfg(target_arch = "x86_64")]
        pulp::Arch::V3(_) => "AVX2 + FMA",
        _ => "baseline SIMD",
    }
}
