//! Matrix multiplication: f32 on Kiln's AVX-512 kernel (sgemm.rs) where it is faster than
//! the `gemm` crate on this CPU (measured once, see `own_kernel`), everything else on `gemm`
//! (AVX2/FMA in a stable build, NEON). Operands keep their strides: a transposed view is
//! multiplied without a copy.

use super::strided::Walk;
use super::{float_view, from_f32, CpuData, CpuStorage, FloatView};
use crate::{Layout, Result};
use gemm::Parallelism;
use rayon::prelude::*;

/// Below this many multiply-adds one GEMM stays on one thread.
pub(crate) const PAR_GEMM_MACS: usize = 1 << 20;

/// `a @ b` over the last two dims; the batch dims of both layouts are already broadcast
/// to the same shape. Result: contiguous [batch.., m, n].
pub fn matmul(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<CpuStorage> {
    Ok(match (float_view(a, la, "matmul")?, float_view(b, lb, "matmul")?) {
        (FloatView::F32(x, lx), FloatView::F32(y, ly)) => from_f32(gemm_batched(&x, &lx, &y, &ly), a.dtype()),
        (FloatView::F64(x, lx), FloatView::F64(y, ly)) => CpuStorage::new(CpuData::F64(gemm_batched(x, &lx, y, &ly))),
        _ => unreachable!("matmul: the caller checks that dtypes match"),
    })
}

fn gemm_batched<T: super::Float>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let r = la.dims().len();
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let batch_dims = &la.dims()[..r - 2];
    let batch: usize = batch_dims.iter().product();
    let mut out = super::zeroed::<T>(batch * m * n);
    if m * n == 0 || k == 0 || batch == 0 {
        return out;
    }
    // Element offsets of each batch's matrices (broadcast batch dims have stride 0).
    let mut offs = Vec::with_capacity(batch);
    let walk = Walk::new(batch_dims, [&la.strides()[..r - 2], &lb.strides()[..r - 2]], [la.offset(), lb.offset()]);
    let (inner, [sa, sb]) = (walk.inner_len, walk.inner_strides);
    walk.for_rows(0, walk.rows(), |_, [oa, ob]| {
        for i in 0..inner {
            offs.push((oa + i * sa, ob + i * sb));
        }
    });
    let (a_rs, a_cs) = (la.strides()[r - 2] as isize, la.strides()[r - 1] as isize);
    let (b_rs, b_cs) = (lb.strides()[r - 2] as isize, lb.strides()[r - 1] as isize);
    // dst[.. rows x cols, row stride n] = a[oa..] (rows x k) @ b[ob..] (k x cols).
    let block_gemm = |dst: *mut T, rows: usize, cols: usize, oa: usize, ob: usize, par: Parallelism| {
        // SAFETY: callers pass `dst` pointing at a rows x cols block of this product's
        // result (row stride n, column stride 1) and operand offsets whose rows x k and
        // k x cols views the layouts describe, inside the storages (the tensor layer only
        // builds in-bounds layouts). gemm reads lhs/rhs and writes dst only through these.
        unsafe {
            let (pa, pb) = (a.as_ptr().add(oa), b.as_ptr().add(ob));
            if own_f32(rows, cols, k, dst, n, false, (pa, a_rs, a_cs), (pb, b_rs, b_cs), par) {
                return;
            }
            gemm::gemm(
                rows,
                cols,
                k,
                dst,
                1,
                n as isize,
                false,
                a.as_ptr().add(oa),
                a_cs,
                a_rs,
                b.as_ptr().add(ob),
                b_cs,
                b_rs,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                par,
            )
        }
    };
    // dst (rows x n, a whole band of rows) = a[oa..] (rows x k) @ b[ob..] (k x n).
    let one_gemm = |dst: &mut [T], rows: usize, (oa, ob): (usize, usize), par: Parallelism| {
        debug_assert!(dst.len() >= rows * n);
        block_gemm(dst.as_mut_ptr(), rows, n, oa, ob, par)
    };
    let macs = m * n * k;
    let threads = super::threads();
    if threads == 1 || macs * batch < PAR_GEMM_MACS {
        for (dst, &o) in out.chunks_mut(m * n).zip(&offs) {
            one_gemm(dst, m, o, Parallelism::None);
        }
    } else if batch >= threads {
        // Enough products to keep every thread busy (conv2d: one per image): one task each.
        out.par_chunks_mut(m * n).zip(offs.par_iter()).for_each(|(dst, &o)| one_gemm(dst, m, o, Parallelism::None));
    } else if macs < PAR_GEMM_MACS * 64 {
        // Mid-size products (every GEMM of a small MLP step): one single-threaded GEMM per
        // thread on a block of the result (gemm's own threading gains little at these sizes:
        // ~85 -> ~90 GFLOP/s on 2 cores for transposed operands). Blocks of result columns
        // when B is a transposed view (Linear's forward, x @ Wᵀ): each block then reads and
        // packs only its own rows of W (a row block packs all of W, once per thread) and,
        // like Adam's split, the same half of W stays with the same core step after step.
        // Otherwise blocks of rows (a weight gradient's rows are W's rows). Kiln's own f32
        // kernel takes column blocks whenever there are columns enough: each thread then packs
        // only its own columns of B (a row split packs all of B on every thread: for a weight
        // gradient that is x, 128 x 784), while A is read in place when row-major and is the
        // smaller operand otherwise (gᵀ, 256 x 128).
        let own = T::DTYPE == crate::DType::F32 && own_kernel();
        let by_cols = if own { n >= 64 * threads } else { b_rs == 1 && b_cs != 1 };
        let (len, align) = if by_cols { (n, if own { 32 } else { 16 }) } else { (m, 8) };
        let block = len.div_ceil(threads).next_multiple_of(align).min(len);
        let (block_m, block_n) = if by_cols { (m, block) } else { (block, n) };
        if !same_blocking(m, n, k, block_m, block_n) {
            // This split would change how gemm blocks k, and with it the rounding: let gemm
            // thread the whole product itself (same blocking as on one thread).
            for (dst, &o) in out.chunks_mut(m * n).zip(&offs) {
                one_gemm(dst, m, o, Parallelism::Rayon(0));
            }
            return out;
        }
        for (dst, &(oa, ob)) in out.chunks_mut(m * n).zip(&offs) {
            let dst = SendPtr(dst.as_mut_ptr());
            (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
                let (start, size) = (i * block, block.min(len - i * block));
                let dst = &dst;
                // SAFETY: block i writes only rows (or columns) [start, start + size) of this
                // product, disjoint from every other block; operand offsets stay inside them.
                unsafe {
                    if by_cols {
                        block_gemm(dst.0.add(start), m, size, oa, ob + start * b_cs as usize, Parallelism::None)
                    } else {
                        block_gemm(dst.0.add(start * n), size, n, oa + start * a_rs as usize, ob, Parallelism::None)
                    }
                }
            });
        }
    } else {
        // Large products: gemm's own blocking and threading reach the machine's peak.
        for (dst, &o) in out.chunks_mut(m * n).zip(&offs) {
            one_gemm(dst, m, o, Parallelism::Rayon(0));
        }
    }
    out
}

/// Whether gemm sums over k in the same chunks for an m x n product and for its m_b x n_b
/// blocks, so that splitting the product among threads cannot change a bit of it. gemm 0.18
/// takes kc = min(k, 512) when both dims are <= 64, and a cache-derived kc (>= 512, or all of
/// k) otherwise; for k <= 512 both are all of k.
fn same_blocking(m: usize, n: usize, k: usize, m_b: usize, n_b: usize) -> bool {
    let small = |m: usize, n: usize| m <= 64 && n <= 64;
    k <= 512 || small(m, n) == small(m_b, n_b)
}

/// The result's base pointer, shared by the tasks that write its disjoint blocks.
struct SendPtr<T>(*mut T);
// SAFETY: each task writes only its own block (see the mid-size branch).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// A row-major or strided matrix operand: `data[r * rs + c * cs]` is element (r, c).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns (a view, nothing is copied).
    pub fn transposed(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }
    fn check(&self, rows: usize, cols: usize) {
        let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
        assert!(last < self.data.len(), "gemm operand out of bounds");
    }
}

/// `dst (m x n, row-major) = a (m x k) @ b (k x n)`, or `dst += a @ b` when `accumulate`;
/// one GEMM on slices for kernels that own their loops (conv2d runs one per image).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into<T: super::Float>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    accumulate: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n, "gemm destination too small");
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    a.check(m, k);
    b.check(k, n);
    // SAFETY: the asserts above keep every element gemm reads (a, b) or writes (dst, row
    // stride n) inside its slice; dst is borrowed mutably, so it aliases neither operand.
    unsafe {
        let (pa, pb) =
            ((a.data.as_ptr(), a.rs as isize, a.cs as isize), (b.data.as_ptr(), b.rs as isize, b.cs as isize));
        if own_f32(m, n, k, dst.as_mut_ptr(), n, accumulate, pa, pb, par) {
            return;
        }
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// Whether f32 products go to Kiln's AVX-512 kernel (sgemm.rs) instead of `gemm`:
/// `KILN_CPU_GEMM=kiln` or `=gemm` decides; by default the kernel must be available and, timed
/// once on an MLP-sized product against `gemm`, clearly faster (on a Xeon with two 512-bit
/// FMA ports it is about twice as fast; on a Zen 4, whose AVX-512 is two 256-bit halves,
/// `gemm`'s AVX2 kernels are as fast, and keep the figures measured with them).
fn own_kernel() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        let choice = std::env::var("KILN_CPU_GEMM").unwrap_or_default();
        let own = match choice.as_str() {
            "gemm" => false,
            "kiln" => super::sgemm::available(),
            _ => super::sgemm::available() && own_is_faster(),
        };
        tracing::debug!(own, choice, "f32 GEMM: {}", if own { "Kiln's AVX-512 kernel" } else { "the gemm crate" });
        own
    })
}

/// Times both kernels on one thread, alternating, on a 128 x 256 x 256 product (an MLP
/// layer at batch 128): best of 15 calls each after a warm-up, ~10 ms in all.
fn own_is_faster() -> bool {
    let (m, k, n) = (128, 256, 256);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 13) as f32 * 0.5).collect();
    let mut c = vec![0f32; m * n];
    let (va, vb) = (
        super::sgemm::View { ptr: a.as_ptr(), rs: k as isize, cs: 1 },
        super::sgemm::View { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
    );
    let mut best = [f64::INFINITY; 2];
    for round in 0..18 {
        for (which, best) in best.iter_mut().enumerate() {
            let t = std::time::Instant::now();
            // SAFETY: row-major operands and result of exactly these sizes, all distinct.
            unsafe {
                if which == 0 {
                    super::sgemm::sgemm(m, n, k, c.as_mut_ptr(), n, false, va, vb);
                } else {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            if round >= 3 {
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    tracing::debug!(kiln_us = best[0] * 1e6, gemm_us = best[1] * 1e6, "f32 GEMM kernels timed");
    best[0] < 0.9 * best[1]
}

/// `dst (rows x cols, row stride ldc) = a @ b` (or `+=`) on Kiln's f32 kernel, split among
/// the pool's threads when `par` asks for threads (any split gives the same bits); false,
/// nothing done: not f32, or `gemm` is the kernel here.
///
/// # Safety
/// As `gemm::gemm` with these operands: every element named is inside a live allocation and
/// dst overlaps neither operand.
#[allow(clippy::too_many_arguments)]
unsafe fn own_f32<T: super::Float>(
    rows: usize,
    cols: usize,
    k: usize,
    dst: *mut T,
    ldc: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (*const T, isize, isize),
    (b, b_rs, b_cs): (*const T, isize, isize),
    par: Parallelism,
) -> bool {
    use super::sgemm::{sgemm, View};
    if T::DTYPE != crate::DType::F32 || !own_kernel() {
        return false;
    }
    let va = View { ptr: a as *const f32, rs: a_rs, cs: a_cs };
    let vb = View { ptr: b as *const f32, rs: b_rs, cs: b_cs };
    let c = dst as *mut f32;
    let threads = super::threads();
    if matches!(par, Parallelism::None) || threads == 1 || rows * cols * k < PAR_GEMM_MACS {
        sgemm(rows, cols, k, c, ldc, accumulate, va, vb);
        return true;
    }
    // Row blocks (multiples of the kernel's 12 rows) when there are enough rows, else column
    // blocks (multiples of its 32 columns).
    let by_rows = rows >= 24 * threads;
    let (len, align) = if by_rows { (rows, 12) } else { (cols, 32) };
    let block = len.div_ceil(threads).next_multiple_of(align).min(len);
    let c = SendPtr(c);
    (0..len.div_ceil(block)).into_par_iter().for_each(|i| {
        let (start, size) = (i * block, block.min(len - i * block));
        let c = &c;
        // SAFETY: block i writes only its own rows or columns of dst; operands as above.
        unsafe {
            if by_rows {
                let a = View { ptr: va.ptr.offset(start as isize * a_rs), ..va };
                sgemm(size, cols, k, c.0.add(start * ldc), ldc, accumulate, a, vb);
            } else {
                let b = View { ptr: vb.ptr.offset(start as isize * b_cs), ..vb };
                sgemm(rows, size, k, c.0.add(start), ldc, accumulate, va, b);
            }
        }
    });
    true
}
