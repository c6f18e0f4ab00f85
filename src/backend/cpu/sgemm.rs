//! Kiln's own f32 GEMM for x86-64 with AVX-512, single-threaded (callers split products
//! into blocks per thread, as matmul.rs does for the `gemm` crate).
//!
//! Why it exists: `gemm` 0.18 compiles its AVX-512 kernels only with its `nightly` feature,
//! so a stable build multiplies with 256-bit AVX2 kernels. On an AMD Zen 4 that costs nothing
//! (its 512-bit FMA is two 256-bit halves), but an Intel Xeon with two 512-bit FMA ports
//! then runs at half its peak: on the project's Xeon (Emerald Rapids) VMs `gemm` gave 75-80
//! GFLOP/s per core where PyTorch's oneDNN gave 150-166 (BENCHMARKS.md, session 11).
//!
//! The method is BLIS's: B is packed into panels of NR = 32 columns (two zmm registers; a
//! row-major B by copies, a transposed one by AVX-512 gathers) and k runs in blocks of KC; a
//! 12 x 32 micro-kernel keeps its tile in 24 zmm accumulators, and per k step loads two
//! vectors of B, broadcasts 12 values of A and issues 24 FMAs. A row-major A is read where it
//! is (12 row streams); other layouts, and the last partial panel of rows, are packed into
//! panels of MR = 12 rows. Edges are zero-padded and written back with masked stores.
//!
//! Rounding: every element of C is Σ over k in the order k = 0, 1, ..., with one FMA per term,
//! in blocks of KC added to C in turn. That order depends on neither m nor n, so any split of
//! a product into row or column blocks (threads) gives the same bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

const MR: usize = 12;
const NR: usize = 32;
/// k per block: the 32-column B micro-panel (KC x 32 x 4 B = 32 KiB) stays in L1 while the
/// 12-row A panels stream past it.
const KC: usize = 384;
/// Rows of A packed at a time (MC x KC x 4 B = 192 KiB, in L2).
const MC: usize = 192;

/// Whether this CPU runs the kernel (AVX-512F; checked once).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A strided f32 matrix: element (r, c) at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

// SAFETY: a View is only read through, and `sgemm`'s callers guarantee the memory outlives
// the call; threads sharing one read the same operand.
unsafe impl Send for View {}
unsafe impl Sync for View {}

/// `C (m x n, row stride ldc, column stride 1) = A (m x k) @ B (k x n)`, or `C += A @ B` when
/// `accumulate`.
///
/// # Safety
/// `available()` is true; every element the views name for (m x k) and (k x n), and the m x n
/// block of C, is inside a live allocation; C overlaps neither operand.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(m: usize, n: usize, k: usize, c: *mut f32, ldc: usize, accumulate: bool, a: View, b: View) {
    #[cfg(target_arch = "x86_64")]
    {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for i in 0..m {
                    std::ptr::write_bytes(c.add(i * ldc), 0, n);
                }
            }
            return;
        }
        PACKS.with(|packs| {
            let mut packs = packs.borrow_mut();
            let (ap, bp) = &mut *packs;
            let kc_max = KC.min(k);
            ap.resize(MC.min(m.next_multiple_of(MR)) * kc_max, 0.0);
            bp.resize(n.next_multiple_of(NR) * kc_max, 0.0);
            let direct = a.cs == 1 && a.rs > 0;
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                pack_b(bp, b, pc, kc, n);
                let mut ic = 0;
                while ic < m {
                    let mc = MC.min(m - ic);
                    if direct {
                        // Only the last, partial panel (zero-padded rows) is packed.
                        let whole = mc / MR * MR;
                        if whole < mc {
                            let tail = View { ptr: a.ptr.offset(whole as isize * a.rs), ..a };
                            pack_a(&mut ap[whole * kc..], tail, ic, mc - whole, pc, kc);
                        }
                    } else {
                        pack_a(ap, a, ic, mc, pc, kc);
                    }
                    let first = pc == 0 && !accumulate;
                    for jp in 0..n.div_ceil(NR) {
                        let cols = NR.min(n - jp * NR);
                        let b_panel = bp.as_ptr().add(jp * NR * kc);
                        for ip in 0..mc.div_ceil(MR) {
                            let rows = MR.min(mc - ip * MR);
                            let tile = c.add((ic + ip * MR) * ldc + jp * NR);
                            if direct && rows == MR {
                                // Whole panels of a row-major A are read where they are.
                                let a0 = a.ptr.offset((ic + ip * MR) as isize * a.rs + pc as isize);
                                kernel(kc, a0, (a.rs as usize, 1), b_panel, tile, ldc, rows, cols, first);
                            } else {
                                kernel(
                                    kc,
                                    ap.as_ptr().add(ip * MR * kc),
                                    (1, MR),
                                    b_panel,
                                    tile,
                                    ldc,
                                    rows,
                                    cols,
                                    first,
                                );
                            }
                        }
                    }
                    ic += mc;
                }
                pc += kc;
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, k, c, ldc, accumulate, a, b);
        unreachable!("sgemm: available() is false off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Per-thread pack buffers, kept between calls (a training step makes the same products).
    static PACKS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Packs rows [ic, ic + mc) x columns [pc, pc + kc) of A into panels of MR rows, each stored
/// k-major (`panel[p * MR + r]`), the last panel's missing rows as zeros.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_a(ap: &mut [f32], a: View, ic: usize, mc: usize, pc: usize, kc: usize) {
    for ip in 0..mc.div_ceil(MR) {
        let panel = &mut ap[ip * MR * kc..(ip + 1) * MR * kc];
        let rows = MR.min(mc - ip * MR);
        if a.rs == 1 && rows == MR {
            // A transposed view (a weight gradient's gᵀ): the panel's 12 rows at each k are
            // contiguous.
            for p in 0..kc {
                let src = a.ptr.offset((ic + ip * MR) as isize + (pc + p) as isize * a.cs);
                std::ptr::copy_nonoverlapping(src, panel.as_mut_ptr().add(p * MR), MR);
            }
            continue;
        }
        let first = a.ptr.offset((ic + ip * MR) as isize * a.rs + pc as isize * a.cs);
        pack_strided(panel, MR, rows, first, a.rs, a.cs, kc);
    }
}

/// panel[p * width + lane] = src[lane * lane_stride + p * k_stride] for p < kc and lane <
/// lanes, zeros for the other lanes: the element-by-element pack, in chunks of 16 k so that
/// the panel's writes stay within a few cache lines while each lane is read along k.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_strided(
    panel: &mut [f32],
    width: usize,
    lanes: usize,
    src: *const f32,
    lane_stride: isize,
    k_stride: isize,
    kc: usize,
) {
    for p0 in (0..kc).step_by(16) {
        let q_end = 16.min(kc - p0);
        for lane in 0..width {
            if lane >= lanes {
                for q in 0..q_end {
                    panel[(p0 + q) * width + lane] = 0.0;
                }
                continue;
            }
            let from = src.offset(lane as isize * lane_stride + p0 as isize * k_stride);
            for q in 0..q_end {
                panel[(p0 + q) * width + lane] = *from.offset(q as isize * k_stride);
            }
        }
    }
}

/// Packs rows [pc, pc + kc) x all n columns of B into panels of NR columns, each stored
/// k-major (`panel[p * NR + c]`), the last panel's missing columns as zeros.
#[cfg(target_arch = "x86_64")]
unsafe fn pack_b(bp: &mut [f32], b: View, pc: usize, kc: usize, n: usize) {
    for jp in 0..n.div_ceil(NR) {
        let panel = &mut bp[jp * NR * kc..(jp + 1) * NR * kc];
        let cols = NR.min(n - jp * NR);
        if b.cs == 1 {
            // Row-major B: each k row of the panel is one contiguous run.
            for p in 0..kc {
                let src = b.ptr.offset((pc + p) as isize * b.rs + (jp * NR) as isize);
                let dst = &mut panel[p * NR..(p + 1) * NR];
                std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), cols);
                dst[cols..].fill(0.0);
            }
        } else if b.cs.unsigned_abs() * NR < i32::MAX as usize {
            // A transposed view (Linear's Wᵀ): each k row of the panel gathers 32 elements
            // `cs` apart (two AVX-512 gathers; the 32 columns' cache lines serve 16 k each).
            gather_rows(panel.as_mut_ptr(), b.ptr.offset(pc as isize * b.rs + (jp * NR) as isize * b.cs), b, kc, cols);
        } else {
            // Columns too far apart for 32-bit gather offsets: element by element.
            let first = b.ptr.offset(pc as isize * b.rs + (jp * NR) as isize * b.cs);
            pack_strided(panel, NR, cols, first, b.cs, b.rs, kc);
        }
    }
}

/// The lanes of the 16 columns from `lo` that are among the first `cols`.
#[cfg(target_arch = "x86_64")]
fn col_mask(cols: usize, lo: usize) -> u16 {
    let k = cols.saturating_sub(lo).min(16);
    if k == 16 {
        0xffff
    } else {
        ((1u32 << k) - 1) as u16
    }
}

/// panel[p * NR + c] = src[p * rs + c * cs] for p < kc, c < cols (zeros for c >= cols), by
/// masked gathers with 32-bit offsets (the caller checks `cs * NR` fits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_rows(panel: *mut f32, src: *const f32, b: View, kc: usize, cols: usize) {
    let cs = b.cs as i32;
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let idx0 = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(cs));
    let idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(16 * cs));
    let (m0, m1) = (col_mask(cols, 0), col_mask(cols, 16));
    let zero = _mm512_setzero_ps();
    for p in 0..kc {
        let row = src.offset(p as isize * b.rs);
        let v0 = _mm512_mask_i32gather_ps::<4>(zero, m0, idx0, row);
        let v1 = _mm512_mask_i32gather_ps::<4>(zero, m1, idx1, row);
        _mm512_storeu_ps(panel.add(p * NR), v0);
        _mm512_storeu_ps(panel.add(p * NR + 16), v1);
    }
}

/// The 12 x 32 micro-kernel: tile (rows x cols of C, row stride ldc) = (first ? 0 : tile) +
/// Σ_p a[p, r] · b[p, c] over the packed panels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(b.add(p * NR));
        let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
        let ar = a.add(p * a_cs);
        // Unrolled by the compiler: MR is a constant, acc lives in registers.
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*ar.add(r * a_rs));
            acc_r[0] = _mm512_fmadd_ps(x, b0, acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(x, b1, acc_r[1]);
        }
    }
    let (m0, m1) = (col_mask(cols, 0), col_mask(cols, 16));
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        let dst = c.add(r * ldc);
        let (mut v0, mut v1) = (acc_r[0], acc_r[1]);
        if !first {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, dst), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, dst.add(16)), v1);
        }
        _mm512_mask_storeu_ps(dst, m0, v0);
        if m1 != 0 {
            _mm512_mask_storeu_ps(dst.add(16), m1, v1);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Against a naive f64 triple loop, over shapes with every kind of edge (m, n, k not
    /// multiples of MR, NR, KC, MC), row-major and transposed operands, and accumulation.
    #[test]
    fn matches_a_naive_product() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this CPU");
            return;
        }
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, k) in &[(1, 1, 1), (12, 32, 256), (13, 33, 257), (200, 70, 600), (128, 10, 784), (5, 100, 3)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for accumulate in [false, true] {
                    let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
                    let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                    // A stored row-major (m x k) or as the transpose of a (k x m) matrix.
                    let av = if ta {
                        View { ptr: a.as_ptr(), rs: 1, cs: m as isize }
                    } else {
                        View { ptr: a.as_ptr(), rs: k as isize, cs: 1 }
                    };
                    let bv = if tb {
                        View { ptr: b.as_ptr(), rs: 1, cs: k as isize }
                    } else {
                        View { ptr: b.as_ptr(), rs: n as isize, cs: 1 }
                    };
                    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                    let mut c = c0.clone();
                    unsafe { sgemm(m, n, k, c.as_mut_ptr(), n, accumulate, av, bv) };
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>()
                                + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).sqrt().max(1.0),
                                "{m}x{k}x{n} ta {ta} tb {tb} acc {accumulate}: ({i}, {j}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Any split of the product into row or column blocks gives the same bits (threads
    /// split products so).
    #[test]
    fn blocks_give_the_bits_of_the_whole() {
        if !available() {
            return;
        }
        let (m, n, k) = (100, 90, 700);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 333.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 1000) as f32 - 500.0) / 777.0).collect();
        let av = View { ptr: a.as_ptr(), rs: k as isize, cs: 1 };
        let bv = View { ptr: b.as_ptr(), rs: n as isize, cs: 1 };
        let mut whole = vec![0f32; m * n];
        unsafe { sgemm(m, n, k, whole.as_mut_ptr(), n, false, av, bv) };
        let mut parts = vec![0f32; m * n];
        unsafe {
            // Rows 0..37 whole, then rows 37.. in column blocks 0..50 and 50..90.
            sgemm(37, n, k, parts.as_mut_ptr(), n, false, av, bv);
            let a2 = View { ptr: a.as_ptr().add(37 * k), ..av };
            sgemm(m - 37, 50, k, parts.as_mut_ptr().add(37 * n), n, false, a2, bv);
            let b2 = View { ptr: b.as_ptr().add(50), ..bv };
            sgemm(m - 37, n - 50, k, parts.as_mut_ptr().add(37 * n + 50), n, false, a2, b2);
        }
        assert!(whole.iter().zip(&parts).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
