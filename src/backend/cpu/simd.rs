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

/// `dst[j * ds + i] (+)= src[i * ss + j]` for an 8 x 8 block of f32, transposed in AVX
/// registers (24 shuffles for 64 elements; element by element, a transpose costs a load and
/// a store each plus their index arithmetic). `add`: accumulate into `dst` instead of
/// overwriting it. Returns false, doing nothing, where the CPU lacks AVX2 or either slice
/// is too short for the block.
pub(crate) fn transpose_8x8(src: &[f32], ss: usize, dst: &mut [f32], ds: usize, add: bool) -> bool {
    let fits = |len: usize, stride: usize| len >= 7 * stride + 8;
    if !has_avx2() || !fits(src.len(), ss) || !fits(dst.len(), ds) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: AVX2 is present (checked above), and both slices hold rows 0..8 of 8
        // elements at their strides (`fits`): every load and store below stays inside them.
        unsafe { transpose_8x8_avx(src.as_ptr(), ss, dst.as_mut_ptr(), ds, add) };
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = add;
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_8x8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize, add: bool) {
    use std::arch::x86_64::*;
    // SAFETY (all loads and stores): the caller guarantees 8 rows of 8 elements at these
    // strides in both buffers.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        // Pairs of rows interleaved: [r0_0 r1_0 r0_1 r1_1 | r0_4 r1_4 r0_5 r1_5], ...
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        // Four rows' column j in the low half, column j + 4 in the high half.
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        let cols = [
            _mm256_permute2f128_ps::<0x20>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x20>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x20>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x20>(s[3], s[7]),
            _mm256_permute2f128_ps::<0x31>(s[0], s[4]),
            _mm256_permute2f128_ps::<0x31>(s[1], s[5]),
            _mm256_permute2f128_ps::<0x31>(s[2], s[6]),
            _mm256_permute2f128_ps::<0x31>(s[3], s[7]),
        ];
        for (j, col) in cols.into_iter().enumerate() {
            let at = dst.add(j * ds);
            let v = if add { _mm256_add_ps(_mm256_loadu_ps(at), col) } else { col };
            _mm256_storeu_ps(at, v);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The 8 x 8 register transpose against the index definition, overwriting and adding,
    /// with strides wider than the block.
    #[test]
    fn transpose_8x8_is_the_transpose() {
        let (ss, ds) = (11, 9);
        let src: Vec<f32> = (0..7 * ss + 8).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut dst = vec![1.0f32; 7 * ds + 8];
        if !super::transpose_8x8(&src, ss, &mut dst, ds, false) {
            eprintln!("no AVX2 here: nothing to test");
            return;
        }
        let mut added = vec![1.0f32; 7 * ds + 8];
        assert!(super::transpose_8x8(&src, ss, &mut added, ds, true));
        for i in 0..8 {
            for j in 0..8 {
                assert_eq!(dst[j * ds + i], src[i * ss + j], "({i}, {j})");
                assert_eq!(added[j * ds + i], src[i * ss + j] + 1.0, "({i}, {j}) added");
            }
        }
        // Outside the block nothing was written.
        assert_eq!(dst[8], 1.0);
        assert!(!super::transpose_8x8(&src[..7 * ss + 7], ss, &mut dst, ds, false), "short source");
    }
}
