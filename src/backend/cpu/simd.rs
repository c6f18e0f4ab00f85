//! Wider vectors for the plain loops of the CPU kernels, chosen at run time.
//!
//! Kiln's binaries are built for baseline x86-64 (they must run on any x86-64 host, the GPU
//! machines included), so the compiler vectorises loops with 4-lane SSE only. `vectorize`
//! runs a closure inside a function compiled for AVX2 + FMA when the CPU has them: the
//! closure is inlined there and its loops get 8-lane vectors. Results are bit-identical to
//! the SSE build: Rust never contracts `a * b + c` into an FMA, and +, *, /, sqrt are
//! correctly rounded at any width.

/// Whether this CPU runs AVX2 and FMA (detected once; false off x86-64).
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f`, compiled for AVX2 + FMA when the CPU has them. Mark `f` `#[inline(always)]`
/// (closures take the attribute) so its loops are compiled inside the AVX2 function.
#[inline(always)]
pub(crate) fn vectorize<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx2() {
            // SAFETY: `avx2` is only called after the CPU was checked for AVX2 and FMA.
            return unsafe { avx2(f) };
        }
    }
    f()
}
