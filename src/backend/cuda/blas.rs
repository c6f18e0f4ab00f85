//! Matrix products on the CUDA backend through cuBLAS's strided-batched GEMM.
//!
//! Kiln tensors are row-major views; cuBLAS is column-major. The memory of a row-major
//! [r, c] matrix with row stride `ld` is the column-major [c, r] matrix (its transpose) with
//! leading dimension `ld`, so row-major `C = A·B` is computed as column-major `Cᵀ = Bᵀ·Aᵀ`:
//! cuBLAS's `A` operand is Kiln's `b`, its `B` operand is Kiln's `a`, and its `m`/`n` are
//! Kiln's `n`/`m`. A view whose last dim has stride 1 is a row-major matrix (no transpose in
//! cuBLAS terms); a view whose second-to-last dim has stride 1 is column-major (a transpose
//! flag, never a copy); any other view (both strides ≠ 1, or rows that overlap) is first
//! copied to contiguous scratch memory with the strided `copy` kernel.
//!
//! [`HostBlas`] runs the same calls on host memory, so the mapping is tested without a GPU;
//! [`check_call`] holds cuBLAS's argument checks and both implementations apply it.

use super::kernels;
use super::launch::{arg, Launcher};
use super::probe;
use crate::{DType, Device, Error, Layout, Result, Shape};
use std::sync::Arc;

/// cuBLAS's strided-batched GEMM in its own (column-major) terms:
/// for each i in 0..batch: C_i = alpha * op(A_i) * op(B_i) + beta * C_i, where X_i = X + i*stride_x
/// elements. op(A_i) is m×k, op(B_i) is k×n, C_i is m×n; `trans_x` means op(X) = Xᵀ.
/// As in BLAS, when `beta == 0` C is not read (it may hold NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmCall {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: u64,
    pub lda: usize,
    pub stride_a: i64,
    pub b: u64,
    pub ldb: usize,
    pub stride_b: i64,
    pub beta: f32,
    pub c: u64,
    pub ldc: usize,
    pub stride_c: i64,
    pub batch: usize,
}

/// A BLAS that runs [`GemmCall`]s on some device's memory.
pub trait Blas: Send + Sync {
    /// dtype F32 (optionally TF32 math), F16/BF16 via GemmEx with f32 accumulation.
    /// The addresses must point to live buffers of the implementation's device that hold
    /// every element the call addresses.
    fn gemm_strided_batched(&self, dtype: DType, call: &GemmCall) -> Result<()>;
}

fn invalid(msg: String) -> Error {
    Error::invalid("gemm_strided_batched", msg)
}

fn dtype_ok(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        _ => {
            Err(Error::UnsupportedDType { op: "gemm_strided_batched", dtype, msg: "cuBLAS GEMM takes F32, F16, BF16" })
        }
    }
}

/// The checks cuBLAS makes before it runs a GEMM (it answers CUBLAS_STATUS_INVALID_VALUE):
/// sizes and leading dimensions fit a C `int`, `lda >= max(1, rows of A as stored)` (m, or
/// k when transposed), likewise `ldb` (k, or n) and `ldc >= max(1, m)`. Kiln adds one that
/// cuBLAS leaves to the caller: the C matrices of a batch must not overlap (on a GPU that
/// is a race between the batch's products), and null pointers are refused when the call
/// would touch memory.
pub fn check_call(dtype: DType, c: &GemmCall) -> Result<()> {
    dtype_ok(dtype)?;
    let int = i32::MAX as usize;
    for (name, v) in
        [("m", c.m), ("n", c.n), ("k", c.k), ("lda", c.lda), ("ldb", c.ldb), ("ldc", c.ldc), ("batch", c.batch)]
    {
        if v > int {
            return Err(invalid(format!("{name} = {v} does not fit cuBLAS's int")));
        }
    }
    let rows_a = if c.trans_a { c.k } else { c.m };
    let rows_b = if c.trans_b { c.n } else { c.k };
    for (name, ld, rows) in [("lda", c.lda, rows_a), ("ldb", c.ldb, rows_b), ("ldc", c.ldc, c.m)] {
        if ld < rows.max(1) {
            return Err(invalid(format!("{name} = {ld} is less than max(1, {rows}), the rows of its matrix")));
        }
    }
    if c.m == 0 || c.n == 0 || c.batch == 0 {
        return Ok(());
    }
    if c.batch > 1 && (c.stride_c.unsigned_abs() as u128) < (c.ldc as u128 * (c.n as u128 - 1) + c.m as u128) {
        return Err(invalid(format!(
            "stride_c = {} makes the {} C matrices of {}x{} (ldc {}) overlap",
            c.stride_c, c.batch, c.m, c.n, c.ldc
        )));
    }
    if c.c == 0 || (c.k > 0 && (c.a == 0 || c.b == 0)) {
        return Err(invalid("null matrix pointer".into()));
    }
    Ok(())
}

/// The emulated device's BLAS: exactly the semantics of [`GemmCall`] on host memory
/// (addresses are host addresses), as a plain loop accumulating in f32 like cuBLAS's
/// CUBLAS_COMPUTE_32F. F16/BF16 results are rounded once, to nearest even.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostBlas;

/// Reads element `i` (from the base address) of a host buffer of `dtype` as f32.
///
/// # Safety
/// `base + i * size` must be a readable, aligned element of that dtype.
unsafe fn load(dtype: DType, base: u64, i: i64) -> f32 {
    // SAFETY: the caller guarantees the element lies in a live buffer of `dtype`.
    unsafe {
        match dtype {
            DType::F32 => *(base as *const f32).offset(i as isize),
            DType::F16 => half::f16::from_bits(*(base as *const u16).offset(i as isize)).to_f32(),
            _ => half::bf16::from_bits(*(base as *const u16).offset(i as isize)).to_f32(),
        }
    }
}

/// # Safety
/// As [`load`], and writable.
unsafe fn store(dtype: DType, base: u64, i: i64, v: f32) {
    // SAFETY: the caller guarantees the element lies in a live, writable buffer of `dtype`.
    unsafe {
        match dtype {
            DType::F32 => *(base as *mut f32).offset(i as isize) = v,
            DType::F16 => *(base as *mut u16).offset(i as isize) = half::f16::from_f32(v).to_bits(),
            _ => *(base as *mut u16).offset(i as isize) = half::bf16::from_f32(v).to_bits(),
        }
    }
}

impl Blas for HostBlas {
    fn gemm_strided_batched(&self, dtype: DType, c: &GemmCall) -> Result<()> {
        check_call(dtype, c)?;
        let (lda, ldb, ldc) = (c.lda as i64, c.ldb as i64, c.ldc as i64);
        // Column-major element (row, col) of op(X).
        let a_at = |r: i64, p: i64| if c.trans_a { p + r * lda } else { r + p * lda };
        let b_at = |p: i64, j: i64| if c.trans_b { j + p * ldb } else { p + j * ldb };
        for i in 0..c.batch as i64 {
            let (oa, ob, oc) = (i * c.stride_a, i * c.stride_b, i * c.stride_c);
            for j in 0..c.n as i64 {
                for r in 0..c.m as i64 {
                    let mut acc = 0f32;
                    // As in BLAS, alpha = 0 reads neither A nor B.
                    for p in 0..if c.alpha == 0.0 { 0 } else { c.k as i64 } {
                        // SAFETY: the `Blas` contract: the addresses are live host buffers holding
                        // every element the call addresses; check_call validated the shape.
                        acc += unsafe { load(dtype, c.a, oa + a_at(r, p)) * load(dtype, c.b, ob + b_at(p, j)) };
                    }
                    let at = oc + r + j * ldc;
                    let mut v = c.alpha * acc;
                    if c.beta != 0.0 {
                        // SAFETY: as above, C_i's elements lie in the buffer.
                        v += c.beta * unsafe { load(dtype, c.c, at) };
                    }
                    // SAFETY: as above; C is writable.
                    unsafe { store(dtype, c.c, at, v) };
                }
            }
        }
        Ok(())
    }
}

static ALLOW_TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets f32 matmuls on GPUs use TF32 tensor cores (inputs rounded to a 10-bit mantissa,
/// f32 accumulation; ~8x the f32 rate on an A100/H100), as PyTorch's
/// `torch.backends.cuda.matmul.allow_tf32 = True`. Off by default: results then match the
/// CPU to f32 rounding. Read at every GEMM, so it may be switched at any time; the CPU
/// backend and the emulated device ignore it.
pub fn allow_tf32(on: bool) {
    ALLOW_TF32.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`allow_tf32`] is on.
pub fn tf32_allowed() -> bool {
    ALLOW_TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// cuBLAS through cudarc on one stream. F32 runs with CUBLAS_COMPUTE_32F, or with
/// CUBLAS_COMPUTE_32F_FAST_TF32 (tensor cores, 10-bit mantissa inputs) when built with
/// `tf32` or while [`allow_tf32`] is on; F16/BF16 always accumulate in f32.
#[derive(Debug)]
pub struct Cublas {
    blas: cudarc::cublas::CudaBlas,
    stream: Arc<cudarc::driver::CudaStream>,
    tf32: bool,
}

impl Cublas {
    /// cuBLAS on the default stream of GPU `ordinal`, or why not (no driver, no cuBLAS, no GPU).
    pub fn new(ordinal: usize, tf32: bool) -> Result<Cublas> {
        let device = Device::Cuda(ordinal);
        if probe::probe().driver.found.is_none() {
            return Err(Error::DeviceUnavailable { device, msg: "no CUDA driver (libcuda.so.1) found".into() });
        }
        Self::check_cublas(ordinal)?;
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| Error::DeviceUnavailable { device, msg: format!("CUDA driver: {e}") })?;
        Self::on_stream(ctx.default_stream(), tf32)
    }

    /// cuBLAS issuing its work on `stream` (ordered with the kernels launched there).
    pub fn on_stream(stream: Arc<cudarc::driver::CudaStream>, tf32: bool) -> Result<Cublas> {
        let ordinal = stream.context().ordinal();
        Self::check_cublas(ordinal)?;
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| Error::DeviceUnavailable { device: Device::Cuda(ordinal), msg: format!("cuBLAS: {e:?}") })?;
        Ok(Cublas { blas, stream, tf32 })
    }

    /// cudarc panics when libcublas is missing: refuse before touching it.
    fn check_cublas(ordinal: usize) -> Result<()> {
        if probe::probe().cublas.found.is_none() {
            return Err(Error::DeviceUnavailable {
                device: Device::Cuda(ordinal),
                msg: "cuBLAS (libcublas.so.13 / .12) not found".into(),
            });
        }
        Ok(())
    }

    pub fn stream(&self) -> &Arc<cudarc::driver::CudaStream> {
        &self.stream
    }

    pub fn tf32(&self) -> bool {
        self.tf32
    }
}

impl Blas for Cublas {
    fn gemm_strided_batched(&self, dtype: DType, c: &GemmCall) -> Result<()> {
        use cudarc::cublas::sys::{
            cublasComputeType_t as Compute, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
        };
        check_call(dtype, c)?;
        if c.m == 0 || c.n == 0 || c.batch == 0 {
            return Ok(());
        }
        let kernel = |msg: String| Error::Kernel { kernel: "cublasGemmStridedBatchedEx".into(), msg };
        // cuBLAS runs on the calling thread's current context.
        self.stream.context().bind_to_thread().map_err(|e| kernel(format!("binding the context: {e}")))?;
        let (ty, compute) = match dtype {
            DType::F32 if self.tf32 || tf32_allowed() => {
                (cudaDataType_t::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F_FAST_TF32)
            }
            DType::F32 => (cudaDataType_t::CUDA_R_32F, Compute::CUBLAS_COMPUTE_32F),
            DType::F16 => (cudaDataType_t::CUDA_R_16F, Compute::CUBLAS_COMPUTE_32F),
            _ => (cudaDataType_t::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F),
        };
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        // With a 32F compute type alpha and beta are host f32 values (default pointer mode).
        let (alpha, beta) = (c.alpha, c.beta);
        // check_call bounded every size by i32::MAX, so these casts are exact.
        // SAFETY: the handle is live (owned by self.blas) and bound to self.stream; a, b and c are
        // device addresses the caller guarantees (the `Blas` contract) hold every element the
        // call addresses; alpha and beta outlive the call (cuBLAS reads them before returning).
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(c.trans_a),
                op(c.trans_b),
                c.m as i32,
                c.n as i32,
                c.k as i32,
                (&alpha) as *const f32 as *const _,
                c.a as *const _,
                ty,
                c.lda as i32,
                c.stride_a,
                c.b as *const _,
                ty,
                c.ldb as i32,
                c.stride_b,
                (&beta) as *const f32 as *const _,
                c.c as *mut _,
                ty,
                c.ldc as i32,
                c.stride_c,
                c.batch as i32,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| kernel(format!("{e:?}")))
    }
}

/// How a [rows, cols] view sits in memory as a cuBLAS operand.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mat {
    /// Row stride `ld`, column stride 1: column-major, it is the transpose with leading dim `ld`.
    RowMajor(usize),
    /// Row stride 1, column stride `ld`: column-major as it is.
    ColMajor(usize),
}

/// The operand form of a [rows, cols] view with strides (rs, cs), or None when cuBLAS cannot
/// read it (neither stride is 1, or the leading dim is smaller than the rows it must skip,
/// e.g. a row broadcast with stride 0). A stride along a size-1 dim is never used, so it
/// does not count: then the tightest valid leading dim is chosen.
fn classify(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<Mat> {
    if cs == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { rs };
        if ld >= cols.max(1) {
            return Some(Mat::RowMajor(ld));
        }
    }
    if rs == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { cs };
        if ld >= rows.max(1) {
            return Some(Mat::ColMajor(ld));
        }
    }
    None
}

/// One batch dim after merging: extent and the element strides of a, b and c along it.
#[derive(Debug, Clone, Copy)]
struct BatchDim {
    len: usize,
    sa: usize,
    sb: usize,
    sc: usize,
}

/// The batch dims with size-1 dims dropped and neighbours merged where all three operands
/// step through them as one dim (stride_outer == stride_inner * len_inner for each, which
/// holds for two broadcast dims too: 0 == 0 * len). Outermost first.
fn collapse(dims: &[usize], sa: &[usize], sb: &[usize], sc: &[usize]) -> Vec<BatchDim> {
    let mut out: Vec<BatchDim> = Vec::new();
    for i in 0..dims.len() {
        let d = BatchDim { len: dims[i], sa: sa[i], sb: sb[i], sc: sc[i] };
        if d.len == 1 {
            continue;
        }
        match out.last_mut() {
            Some(o) if o.sa == d.sa * d.len && o.sb == d.sb * d.len && o.sc == d.sc * d.len => {
                *o = BatchDim { len: o.len * d.len, ..d };
            }
            _ => out.push(d),
        }
    }
    out
}

fn shape_err(la: &Layout, lb: &Layout) -> Error {
    Error::ShapeMismatch { op: "cuda matmul", lhs: la.shape().clone(), rhs: lb.shape().clone() }
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid("cuda matmul", format!("stride {v} does not fit i64")))
}

/// Copies the view `l` of `x` to fresh scratch memory, contiguous except that broadcast batch
/// dims (stride 0) stay broadcast rather than being materialised. Returns the copy and its
/// layout (same shape as `l`).
fn contiguous_copy(
    k: &dyn Launcher,
    scratch: &mut dyn FnMut(usize) -> Result<u64>,
    dtype: DType,
    x: u64,
    l: &Layout,
) -> Result<(u64, Layout)> {
    let r = l.dims().len();
    let mut dims = l.dims().to_vec();
    for (d, &s) in dims[..r - 2].iter_mut().zip(l.strides()) {
        if s == 0 {
            *d = 1;
        }
    }
    let src = l.with_dims(Shape::new(dims.clone()), l.strides().to_vec());
    let dst = Layout::contiguous(Shape::new(dims));
    let y = scratch(dst.elem_count() * dtype.size_in_bytes())?;
    kernels::copy(k, dtype, dtype, x, &src, y)?;
    Ok((y, dst.broadcast_as(l.shape())))
}

/// Zeroes `n` elements of `dtype` at `c` (the result of a product with k = 0): `fill_f32`
/// for F32; for F16/BF16 one f32 zero in scratch, copied (converted) through a stride-0 view.
fn zero_fill(
    k: &dyn Launcher,
    scratch: &mut dyn FnMut(usize) -> Result<u64>,
    dtype: DType,
    c: u64,
    n: usize,
) -> Result<()> {
    let fill = |y: u64, n: usize| {
        let (mut n, mut v, mut y) = (n as i64, 0f32, y);
        let mut args = [arg(&mut n), arg(&mut v), arg(&mut y)];
        k.launch("fill_f32", (super::launch::grid_for(n as usize), 1, 1), (super::launch::BLOCK, 1, 1), 0, &mut args)
    };
    if dtype == DType::F32 {
        return fill(c, n);
    }
    let zero = scratch(4)?;
    fill(zero, 1)?;
    kernels::copy(k, DType::F32, dtype, zero, &Layout::new(Shape::new(vec![n]), vec![0], 0), c)
}

/// Kiln's matmul on device buffers: `a` (viewed by `la`, element offset included) @ `b`
/// (viewed by `lb`) into contiguous `c` [batch.., m, n]; batch dims already broadcast to the
/// same shape (as the CPU matmul receives them: both ranks ≥ 2 and equal; the tensor op
/// has already turned vectors into [1, k] / [k, 1] matrices).
///
/// `k` launches Kiln's kernels on the same stream as `blas` (for the copies and zero-fill);
/// `scratch(bytes)` returns device memory of that many bytes, aligned as device allocations
/// are (256 bytes), which the caller keeps alive until the work queued here has finished
/// (a stream-ordered free does that). Scratch is asked for only when an operand has neither
/// last-dim nor second-to-last-dim stride 1 (a copy of it, with broadcast batch dims kept
/// broadcast) and, for F16/BF16, when k = 0 (4 bytes).
///
/// Batch dims become a single strided-batched call when they merge into one stride per
/// operand, broadcast dims included (stride 0 for A or B: cuBLAS allows it and reads the
/// same matrix for every product, as NVIDIA's MatX relies on, NVIDIA/MatX#474; C's stride is
/// never 0 here, and check_call refuses overlapping C matrices). Otherwise the largest merged dim
/// is batched and the others looped over. When b is broadcast over the batch and the batch
/// of `a` is a single tall row-major (or column-major) matrix, the batch is folded into m:
/// one plain GEMM. Empty results do nothing; k = 0 zero-fills c.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    blas: &dyn Blas,
    k: &dyn Launcher,
    scratch: &mut dyn FnMut(usize) -> Result<u64>,
    dtype: DType,
    a: u64,
    la: &Layout,
    b: u64,
    lb: &Layout,
    c: u64,
) -> Result<()> {
    dtype_ok(dtype)?;
    let r = la.dims().len();
    if r < 2 || lb.dims().len() != r || la.dims()[..r - 2] != lb.dims()[..r - 2] || la.dims()[r - 1] != lb.dims()[r - 2]
    {
        return Err(shape_err(la, lb));
    }
    let (m, kk, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let batch_dims = &la.dims()[..r - 2];
    let total = batch_dims.iter().product::<usize>() * m * n;
    if total == 0 {
        return Ok(());
    }
    if kk == 0 {
        return zero_fill(k, scratch, dtype, c, total);
    }
    let operand = |x: u64, l: &Layout, scratch: &mut dyn FnMut(usize) -> Result<u64>| -> Result<(u64, Layout)> {
        let (rows, cols) = (l.dims()[r - 2], l.dims()[r - 1]);
        match classify(rows, cols, l.strides()[r - 2], l.strides()[r - 1]) {
            Some(_) => Ok((x, l.clone())),
            None => contiguous_copy(k, scratch, dtype, x, l),
        }
    };
    let (a, la) = operand(a, la, scratch)?;
    let (b, lb) = operand(b, lb, scratch)?;
    let lc = Layout::contiguous(la.shape().dims()[..r - 2].iter().copied().chain([m, n]).collect::<Vec<_>>().into());
    let mut dims = collapse(batch_dims, &la.strides()[..r - 2], &lb.strides()[..r - 2], &lc.strides()[..r - 2]);

    let (ars, acs) = (la.strides()[r - 2], la.strides()[r - 1]);
    // Both operands are readable now (contiguous_copy makes row-major copies).
    let unreadable = || Error::invalid("cuda matmul", "operand still not a cuBLAS matrix after its copy".to_string());
    let mut ma = classify(m, kk, ars, acs).ok_or_else(unreadable)?;
    let mb = classify(kk, n, lb.strides()[r - 2], lb.strides()[r - 1]).ok_or_else(unreadable)?;
    let mut rows = m;
    // Fold: b shared by every product of the innermost batch dim, whose a matrices stack into
    // one [len*m, k] view (a's batch stride = m * row stride), and c's stack by construction.
    if let Some(d) = dims.last().copied() {
        if d.sb == 0 && d.sc == m * n {
            let tall = if m == 1 { Some((d.sa, acs)) } else { (d.sa == m * ars).then_some((ars, acs)) };
            if let Some(mt) = tall.and_then(|(rs, cs)| classify(d.len * m, kk, rs, cs)) {
                ma = mt;
                rows = d.len * m;
                dims.pop();
            }
        }
    }
    // The batched dim: the largest; the rest are looped over.
    let (inner, outer): (BatchDim, Vec<BatchDim>) = match (0..dims.len()).max_by_key(|&i| dims[i].len) {
        Some(i) => (dims[i], dims.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, d)| *d).collect()),
        None => (BatchDim { len: 1, sa: 0, sb: 0, sc: 0 }, Vec::new()),
    };
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS's A is Kiln's b, its B is a.
    let (trans_a, lda) = match mb {
        Mat::RowMajor(ld) => (false, ld),
        Mat::ColMajor(ld) => (true, ld),
    };
    let (trans_b, ldb) = match ma {
        Mat::RowMajor(ld) => (false, ld),
        Mat::ColMajor(ld) => (true, ld),
    };
    let size = dtype.size_in_bytes() as u64;
    let mut call = GemmCall {
        trans_a,
        trans_b,
        m: n,
        n: rows,
        k: kk,
        alpha: 1.0,
        a: 0,
        lda,
        stride_a: to_i64(inner.sb)?,
        b: 0,
        ldb,
        stride_b: to_i64(inner.sa)?,
        beta: 0.0,
        c: 0,
        ldc: n,
        stride_c: to_i64(inner.sc)?,
        batch: inner.len,
    };
    // Walk the looped dims' multi-index, last fastest.
    let mut idx = vec![0usize; outer.len()];
    loop {
        let (mut oa, mut ob, mut oc) = (la.offset(), lb.offset(), 0);
        for (d, &i) in outer.iter().zip(&idx) {
            oa += i * d.sa;
            ob += i * d.sb;
            oc += i * d.sc;
        }
        call.a = b + ob as u64 * size;
        call.b = a + oa as u64 * size;
        call.c = c + oc as u64 * size;
        blas.gemm_strided_batched(dtype, &call)?;
        let mut j = outer.len();
        loop {
            if j == 0 {
                return Ok(());
            }
            j -= 1;
            idx[j] += 1;
            if idx[j] < outer[j].len {
                break;
            }
            idx[j] = 0;
        }
    }
}
