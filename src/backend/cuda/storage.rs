//! Tensors on a CUDA device: one device buffer per storage, and each op family's CUDA side
//! (the CPU side is in backend/cpu; `Storage` in backend/mod.rs dispatches between them).
//!
//! Families with kernels launch them (elementwise unary/binary with broadcast by strides,
//! copies and casts, sum/max/min/argmax/argmin reductions, softmax, fused cross-entropy, fused Adam,
//! index_select/gather/index_add/scatter_add, where; I64 binary ops), matmul goes to cuBLAS,
//! and conv2d (cuDNN, or im2col + cuBLAS) with its fused epilogues, im2col/col2im and max
//! pooling are in conv.rs. The others still
//! take the host path: copy to the CPU, run the CPU reference, copy back. That is correct
//! (it IS the reference) but slow on a GPU; `HOST_PATH` names them and the profiler shows
//! them as `host:<op>`.

use super::alloc::DeviceBuf;
use super::device::CudaDev;
use super::{blas, kernels, kernels_nn, kernels_train};
use crate::backend::cpu::{CpuData, CpuStorage};
use crate::backend::{AdamStep, BinaryOp, ReduceOp, UnaryOp};
use crate::{DType, Device, Error, Layout, Result};
use half::{bf16, f16};
use std::sync::Arc;

/// The families that still compute on the host (see the module docs).
pub const HOST_PATH: &[&str] = &[
    "index_add, scatter_add (f16/bf16: no half atomics)",
    "copy_into (strided destination, or a strided source of another dtype than f32/f16/bf16)",
    "f64 arithmetic (conv2d included), i64 unary ops and reductions (i64 binary ops have a kernel)",
];

/// A buffer of `len` elements of `dtype` on a CUDA device.
pub struct CudaStorage {
    buf: DeviceBuf,
    dtype: DType,
    len: usize,
    dev: Arc<CudaDev>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({}, {:?} x {})", self.dev.device(), self.dtype, self.len)
    }
}

/// Whether the elementwise/reduction kernels take this dtype (they do f32, f16, bf16).
fn has_kernels(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The bytes of a CPU buffer.
fn cpu_bytes(s: &CpuStorage) -> &[u8] {
    fn raw<T>(v: &[T]) -> &[u8] {
        // SAFETY: every CPU element type (f32, f64, f16, bf16, i64) is plain old data
        // without padding; the byte view covers exactly the slice.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }
    match s.data() {
        CpuData::F32(v) => raw(v),
        CpuData::F64(v) => raw(v),
        CpuData::F16(v) => raw(v),
        CpuData::BF16(v) => raw(v),
        CpuData::I64(v) => raw(v),
    }
}

/// A CPU buffer of `n` elements of `dtype` whose bytes `fill` writes.
fn cpu_from_bytes(dtype: DType, n: usize, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<CpuStorage> {
    fn raw<T>(v: &mut [T]) -> &mut [u8] {
        // SAFETY: as in `cpu_bytes`; any bit pattern is a valid value of these types.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, std::mem::size_of_val(v)) }
    }
    Ok(CpuStorage::new(match dtype {
        DType::F32 => {
            let mut v = vec![0f32; n];
            fill(raw(&mut v))?;
            CpuData::F32(v)
        }
        DType::F64 => {
            let mut v = vec![0f64; n];
            fill(raw(&mut v))?;
            CpuData::F64(v)
        }
        DType::F16 => {
            let mut v = vec![f16::ZERO; n];
            fill(raw(&mut v))?;
            CpuData::F16(v)
        }
        DType::BF16 => {
            let mut v = vec![bf16::ZERO; n];
            fill(raw(&mut v))?;
            CpuData::BF16(v)
        }
        DType::I64 => {
            let mut v = vec![0i64; n];
            fill(raw(&mut v))?;
            CpuData::I64(v)
        }
    }))
}

impl CudaStorage {
    /// `len` elements, contents undefined.
    pub fn uninit(dev: &Arc<CudaDev>, dtype: DType, len: usize) -> Result<CudaStorage> {
        let buf = dev.alloc(len * dtype.size_in_bytes())?;
        Ok(CudaStorage { buf, dtype, len, dev: dev.clone() })
    }
    /// A copy of a CPU buffer.
    pub fn from_cpu(dev: &Arc<CudaDev>, s: &CpuStorage) -> Result<CudaStorage> {
        let out = CudaStorage::uninit(dev, s.dtype(), s.len())?;
        dev.htod(out.ptr(), cpu_bytes(s))?;
        Ok(out)
    }
    /// A copy on the CPU.
    pub fn to_cpu(&self) -> Result<CpuStorage> {
        cpu_from_bytes(self.dtype, self.len, |b| self.dev.dtoh(self.ptr(), b))
    }
    pub fn ptr(&self) -> u64 {
        self.buf.ptr()
    }
    /// The device address of element `i`.
    pub fn at(&self, i: usize) -> u64 {
        self.ptr() + (i * self.dtype.size_in_bytes()) as u64
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> Device {
        self.dev.device()
    }
    pub fn dev(&self) -> &Arc<CudaDev> {
        &self.dev
    }
    /// A full copy on the same device.
    pub fn try_clone(&self) -> Result<CudaStorage> {
        let out = CudaStorage::uninit(&self.dev, self.dtype, self.len)?;
        self.dev.dtod(out.ptr(), self.ptr(), self.len * self.dtype.size_in_bytes())?;
        Ok(out)
    }

    /// Overwrites f32 elements `start..start + src.len()` from the host.
    pub fn write_f32(&mut self, start: usize, src: &[f32]) -> Result<()> {
        if self.dtype != DType::F32 || start + src.len() > self.len {
            return Err(Error::invalid(
                "cuda write_f32",
                format!("{} f32s at {start} into a {:?} buffer of {}", src.len(), self.dtype, self.len),
            ));
        }
        let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.htod(self.at(start), &bytes)
    }

    fn new_like(&self, dtype: DType, len: usize) -> Result<CudaStorage> {
        CudaStorage::uninit(&self.dev, dtype, len)
    }

    fn launcher(&self) -> &dyn super::launch::Launcher {
        self.dev.launcher()
    }
}

/// The host path: run the CPU reference on copies and bring the result back.
pub fn host<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let _p = crate::profile::scope(op);
    f()
}

/// `s` on the CPU, for the host path.
pub fn on_cpu(s: &CudaStorage) -> Result<CpuStorage> {
    s.to_cpu()
}

/// A CPU result moved to `like`'s device.
pub fn upload(like: &CudaStorage, s: CpuStorage) -> Result<CudaStorage> {
    CudaStorage::from_cpu(&like.dev, &s)
}

/// Filled with `value`, or from values, on `device`.
pub fn from_cpu_on(device: Device, s: &CpuStorage) -> Result<CudaStorage> {
    CudaStorage::from_cpu(&super::device::get(device)?, s)
}

/// A contiguous copy of the view `l` (converted to `dtype`).
pub fn to_contiguous_as(s: &CudaStorage, l: &Layout, dtype: DType) -> Result<CudaStorage> {
    let out = s.new_like(dtype, l.elem_count())?;
    if l.elem_count() == 0 {
        return Ok(out);
    }
    if (has_kernels(s.dtype) || (s.dtype, dtype) == (DType::I64, DType::F32)) && has_kernels(dtype) {
        kernels::copy(s.launcher(), s.dtype, dtype, s.ptr(), l, out.ptr())?;
        return Ok(out);
    }
    if s.dtype == dtype {
        if let Some(r) = l.contiguous_range() {
            s.dev.dtod(out.ptr(), s.at(r.start), r.len() * dtype.size_in_bytes())?;
            return Ok(out);
        }
    }
    host("host:copy", || upload(s, on_cpu(s)?.cast(l, dtype)))
}

/// Copies `src` (view `sl`) into the region `dl` of `dst`.
pub fn copy_into(dst: &mut CudaStorage, dl: &Layout, src: &CudaStorage, sl: &Layout) -> Result<()> {
    if dl.is_contiguous() && has_kernels(src.dtype) && has_kernels(dst.dtype) {
        // The copy kernel writes a contiguous run; the destination region is one.
        let at = dst.at(dl.offset());
        if dl.elem_count() > 0 {
            kernels::copy(src.launcher(), src.dtype, dst.dtype, src.ptr(), sl, at)?;
        }
        return Ok(());
    }
    if dl.is_contiguous() && sl.is_contiguous() && src.dtype == dst.dtype {
        // Same dtype, both contiguous (an I64 or F64 assign): a device-to-device copy, in
        // stream order like a kernel, where the host path would wait for the GPU.
        let bytes = dl.elem_count() * dst.dtype.size_in_bytes();
        let (to, from) = (dst.at(dl.offset()), src.at(sl.offset()));
        return dst.dev.dtod(to, from, bytes);
    }
    host("host:copy_into", || {
        let mut d = on_cpu(dst)?;
        crate::backend::cpu::copy_into(&mut d, dl, &on_cpu(src)?, sl);
        dst.dev.htod(dst.ptr(), cpu_bytes(&d))
    })
}

pub fn unary(s: &CudaStorage, l: &Layout, op: UnaryOp) -> Result<CudaStorage> {
    if !has_kernels(s.dtype) {
        return host("host:unary", || upload(s, crate::backend::cpu::unary(&on_cpu(s)?, l, op)?));
    }
    let out = s.new_like(s.dtype, l.elem_count())?;
    if l.elem_count() > 0 {
        kernels::unary(s.launcher(), s.dtype, op, s.ptr(), l, out.ptr())?;
    }
    Ok(out)
}

pub fn binary(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout, op: BinaryOp) -> Result<CudaStorage> {
    // I64 runs on its kernel, or is refused there as on the CPU (div, pow).
    if !has_kernels(a.dtype) && a.dtype != DType::I64 {
        return host("host:binary", || upload(a, crate::backend::cpu::binary(&on_cpu(a)?, la, &on_cpu(b)?, lb, op)?));
    }
    let out = a.new_like(a.dtype, la.elem_count())?;
    if la.elem_count() > 0 {
        kernels::binary(a.launcher(), a.dtype, op, a.ptr(), la, b.ptr(), lb, out.ptr())?;
    }
    Ok(out)
}

/// out = cond != 0 ? a : b, elementwise; the three layouts broadcast to the output shape.
/// Every dtype (values are selected as raw bits), any condition dtype.
pub fn where_cond(
    c: &CudaStorage,
    lc: &Layout,
    a: &CudaStorage,
    la: &Layout,
    b: &CudaStorage,
    lb: &Layout,
) -> Result<CudaStorage> {
    let out = a.new_like(a.dtype, lc.elem_count())?;
    if lc.elem_count() > 0 {
        kernels::where_cond(a.launcher(), c.dtype, a.dtype, (c.ptr(), lc), (a.ptr(), la), (b.ptr(), lb), out.ptr())?;
    }
    Ok(out)
}

/// I64 indices on the device, checked first on the host (where they are: a check there is
/// a loop over them, a check by the kernel's status would be a sync), and a zeroed status
/// buffer the kernels need somewhere to write to, never read: with checked indices they
/// have nothing to report.
fn index_buffers(like: &CudaStorage, op: &'static str, idx: &[i64], size: usize) -> Result<(CudaStorage, CudaStorage)> {
    if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as u64 >= size as u64) {
        return Err(Error::IndexOutOfRange { op, index: bad, size });
    }
    let i = from_cpu_on(like.device(), &CpuStorage::from_vec(idx.to_vec()))?;
    let status = from_cpu_on(like.device(), &CpuStorage::from_vec(vec![0i64; kernels_nn::INDEX_STATUS_WORDS]))?;
    Ok((i, status))
}

/// Rows (along `dim`) of `s` picked by `idx`: contiguous, `dim` resized to idx.len().
pub fn index_select(s: &CudaStorage, l: &Layout, dim: usize, idx: &[i64]) -> Result<CudaStorage> {
    let n_out = l.elem_count() / l.dims()[dim].max(1) * idx.len();
    if !(has_kernels(s.dtype) || s.dtype == DType::I64) || n_out == 0 || l.dims()[dim] == 0 {
        return host("host:index_select", || upload(s, crate::backend::cpu::index_select(&on_cpu(s)?, l, dim, idx)?));
    }
    let (i, status) = index_buffers(s, "index_select", idx, l.dims()[dim])?;
    let out = s.new_like(s.dtype, n_out)?;
    kernels_nn::index_select(s.launcher(), s.dtype, s.ptr(), l, dim, i.ptr(), idx.len(), out.ptr(), status.ptr())?;
    Ok(out)
}

/// out[.., j, ..] = s[.., index[.., j, ..], ..] along `dim`; `index` is row-major with the
/// dims of `s` except `n` along `dim`.
pub fn gather(s: &CudaStorage, l: &Layout, dim: usize, index: &[i64], n: usize) -> Result<CudaStorage> {
    if !(has_kernels(s.dtype) || s.dtype == DType::I64) || index.is_empty() || l.dims()[dim] == 0 {
        return host("host:gather", || upload(s, crate::backend::cpu::gather(&on_cpu(s)?, l, dim, index, n)?));
    }
    let mut dims = l.dims().to_vec();
    dims[dim] = n;
    let (i, status) = index_buffers(s, "gather", index, l.dims()[dim])?;
    let out = s.new_like(s.dtype, index.len())?;
    kernels_nn::gather(s.launcher(), s.dtype, s.ptr(), l, dim, i.ptr(), &dims, out.ptr(), status.ptr())?;
    Ok(out)
}

/// A contiguous copy of `base` with `src` added at `idx` along `dim` (f32: the kernel adds
/// with atomics, which exist for f32 only).
pub fn index_add(
    base: &CudaStorage,
    l: &Layout,
    dim: usize,
    idx: &[i64],
    src: &CudaStorage,
    sl: &Layout,
) -> Result<CudaStorage> {
    if base.dtype != DType::F32 || sl.elem_count() == 0 {
        return host("host:index_add", || {
            upload(base, crate::backend::cpu::index_add(&on_cpu(base)?, l, dim, idx, &on_cpu(src)?, sl)?)
        });
    }
    let out = to_contiguous_as(base, l, base.dtype)?;
    let (i, status) = index_buffers(base, "index_add", idx, l.dims()[dim])?;
    kernels_nn::index_add(base.launcher(), base.dtype, out.ptr(), l.dims(), dim, i.ptr(), src.ptr(), sl, status.ptr())?;
    Ok(out)
}

/// A contiguous copy of `base` with `src` added at `index` along `dim` (f32 only, as above).
pub fn scatter_add(
    base: &CudaStorage,
    l: &Layout,
    dim: usize,
    index: &[i64],
    n: usize,
    src: &CudaStorage,
    sl: &Layout,
) -> Result<CudaStorage> {
    if base.dtype != DType::F32 || sl.elem_count() == 0 {
        return host("host:scatter_add", || {
            upload(base, crate::backend::cpu::scatter_add(&on_cpu(base)?, l, dim, index, n, &on_cpu(src)?, sl)?)
        });
    }
    let out = to_contiguous_as(base, l, base.dtype)?;
    let (i, status) = index_buffers(base, "scatter_add", index, l.dims()[dim])?;
    kernels_nn::scatter_add(
        base.launcher(),
        base.dtype,
        out.ptr(),
        l.dims(),
        dim,
        i.ptr(),
        src.ptr(),
        sl,
        status.ptr(),
    )?;
    Ok(out)
}

/// `a @ b` over the last two dims (batch dims already broadcast to the same shape), through
/// cuBLAS (on the emulated device: the same GEMM calls on the host), into a contiguous
/// [batch.., m, n]. Views that cuBLAS cannot read directly are copied into scratch memory,
/// kept until the call returns.
pub fn matmul(a: &CudaStorage, la: &Layout, b: &CudaStorage, lb: &Layout) -> Result<CudaStorage> {
    if !has_kernels(a.dtype) {
        return host("host:matmul", || upload(a, crate::backend::cpu::matmul(&on_cpu(a)?, la, &on_cpu(b)?, lb)?));
    }
    let r = la.dims().len();
    // [batch.., m] of a, times n of b.
    let n_out = la.dims()[..r - 1].iter().product::<usize>() * lb.dims()[r - 1];
    let out = a.new_like(a.dtype, n_out)?;
    let mut keep: Vec<DeviceBuf> = Vec::new();
    let mut scratch = |bytes: usize| -> Result<u64> {
        let buf = a.dev.alloc(bytes)?;
        let p = buf.ptr();
        keep.push(buf);
        Ok(p)
    };
    blas::matmul(a.dev.blas(), a.launcher(), &mut scratch, a.dtype, a.ptr(), la, b.ptr(), lb, out.ptr())?;
    Ok(out)
}

/// Sum / max / min / argmax / argmin over `dims`: the reduced dims are moved last by a
/// strided copy, then one block reduces each row. Other dtypes take the host path.
pub fn reduce(s: &CudaStorage, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<CudaStorage> {
    let rank = l.dims().len();
    let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    let inner: usize = dims.iter().map(|&d| l.dims()[d]).product();
    let outer: usize = kept.iter().map(|&d| l.dims()[d]).product();
    if !has_kernels(s.dtype) || inner == 0 || outer == 0 {
        return host("host:reduce", || upload(s, crate::backend::cpu::reduce(&on_cpu(s)?, l, dims, op)?));
    }
    let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
    let rows = to_contiguous_as(s, &l.permute(&perm), s.dtype)?;
    let out_dtype = if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) { DType::I64 } else { s.dtype };
    let out = s.new_like(out_dtype, outer)?;
    let split = row_split(s.dtype, op, outer, inner);
    if split > 1 {
        // Few long rows (a batch norm's per-channel sums: 64 rows of n·h·w) would leave most
        // of the GPU idle at one block per row: fold each row in `split` equal pieces, then
        // the pieces (f32 only, so the partial results lose nothing).
        let part = s.new_like(DType::F32, outer * split)?;
        kernels::reduce_rows(s.launcher(), DType::F32, op, outer * split, inner / split, rows.ptr(), part.ptr())?;
        kernels::reduce_rows(s.launcher(), DType::F32, op, outer, split, part.ptr(), out.ptr())?;
    } else {
        kernels::reduce_rows(s.launcher(), s.dtype, op, outer, inner, rows.ptr(), out.ptr())?;
    }
    Ok(out)
}

/// Pieces per row for [`reduce`]: a power of two dividing `inner`, as many as keep the
/// grid under ~2048 blocks and each piece at least 4096 elements (16 per thread); 1 for
/// arg-reductions (an index does not fold piecewise this way) and half types.
fn row_split(dtype: DType, op: ReduceOp, outer: usize, inner: usize) -> usize {
    if dtype != DType::F32 || matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
        return 1;
    }
    let mut split = 1;
    while inner.is_multiple_of(split * 2) && inner / (split * 2) >= 4096 && outer * split * 2 <= 2048 {
        split *= 2;
    }
    split
}

pub fn softmax_last_dim(s: &CudaStorage, l: &Layout, log: bool) -> Result<CudaStorage> {
    let cols = l.dims().last().copied().unwrap_or(1);
    let rows = l.elem_count() / cols.max(1);
    if !has_kernels(s.dtype) || rows == 0 || cols == 0 {
        return host("host:softmax", || upload(s, crate::backend::cpu::softmax_last_dim(&on_cpu(s)?, l, log)?));
    }
    let x = to_contiguous_as(s, l, s.dtype)?;
    let out = s.new_like(s.dtype, l.elem_count())?;
    kernels::softmax_rows(s.launcher(), s.dtype, log, rows, cols, x.ptr(), out.ptr())?;
    Ok(out)
}

/// Where cross_entropy's I64 labels are.
pub enum Labels<'a> {
    /// On the host: checked there before the launch, then uploaded (no sync).
    Host(&'a [i64]),
    /// On a device (the logits' own, or they are downloaded): the kernel reads them there and
    /// reports a bad one through the device's deferred check (`CudaDev::deferred_status`),
    /// so the host never waits for the labels.
    Device(&'a CudaStorage, &'a Layout),
}

/// Fused softmax cross-entropy of logits [n, c]: the mean loss (one element on the device,
/// never read here) and, if asked, the gradient of the mean w.r.t. the logits.
pub fn cross_entropy(
    s: &CudaStorage,
    l: &Layout,
    labels: Labels<'_>,
    smoothing: f64,
    want_grad: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let (n, c) = (l.dims()[0], l.dims()[1]);
    let labels = match labels {
        Labels::Device(y, yl) if y.device() != s.device() => {
            let host = on_cpu(y)?.indices(yl, "cross_entropy")?;
            return cross_entropy(s, l, Labels::Host(&host), smoothing, want_grad);
        }
        labels => labels,
    };
    if !has_kernels(s.dtype) || n == 0 || c == 0 {
        let host_labels;
        let labels = match labels {
            Labels::Host(h) => h,
            Labels::Device(y, yl) => {
                host_labels = on_cpu(y)?.indices(yl, "cross_entropy")?;
                &host_labels
            }
        };
        return host("host:cross_entropy", || {
            let (loss, g) = crate::backend::cpu::cross_entropy(&on_cpu(s)?, l, labels, smoothing, want_grad)?;
            let loss = crate::backend::Storage::full(loss, 1, s.dtype, crate::Device::Cpu)?;
            let crate::backend::Storage::Cpu(loss) = loss else {
                return Err(Error::invalid("cross_entropy", "internal: a CPU scalar on another device"));
            };
            Ok((upload(s, loss)?, g.map(|g| upload(s, g)).transpose()?))
        });
    }
    // The labels' device address and the status words the kernel reports a bad label in.
    let (_y, y_ptr, status, _scratch) = match labels {
        Labels::Host(h) => {
            if let Some(&bad) = h.iter().find(|&&y| y < 0 || y as usize >= c) {
                return Err(Error::IndexOutOfRange { op: "cross_entropy (label)", index: bad, size: c });
            }
            // Checked: the kernel's report has no reader, but it needs somewhere to go.
            let y = from_cpu_on(s.device(), &CpuStorage::from_vec(h.to_vec()))?;
            let scratch = from_cpu_on(s.device(), &CpuStorage::from_vec(vec![0i64; kernels_nn::INDEX_STATUS_WORDS]))?;
            let (y_ptr, status) = (y.ptr(), scratch.ptr());
            (Some(y), y_ptr, status, Some(scratch))
        }
        Labels::Device(ys, yl) => {
            if ys.dtype != DType::I64 || yl.elem_count() != n {
                return Err(Error::invalid("cross_entropy", format!("labels must be {n} I64 class indices")));
            }
            let status = s.dev.deferred_status("cross_entropy (label, found at a later sync)")?;
            match yl.contiguous_range() {
                Some(r) => (None, ys.at(r.start), status, None),
                None => {
                    let y = to_contiguous_as(ys, yl, DType::I64)?;
                    let y_ptr = y.ptr();
                    (Some(y), y_ptr, status, None)
                }
            }
        }
    };
    let x = to_contiguous_as(s, l, s.dtype)?;
    let loss = s.new_like(DType::F32, n)?;
    let grad = if want_grad { Some(s.new_like(s.dtype, n * c)?) } else { None };
    kernels_train::cross_entropy(
        s.launcher(),
        s.dtype,
        n,
        c,
        smoothing,
        1.0f32 / n as f32,
        y_ptr,
        x.ptr(),
        loss.ptr(),
        grad.as_ref().map(|g| g.ptr()).unwrap_or(0),
        status,
    )?;
    // The mean of the rows' losses on the device (it was read back and averaged on the host:
    // a sync per step).
    let sum = reduce(&loss, &Layout::contiguous(crate::Shape::new(vec![n])), &[0], ReduceOp::Sum)?;
    let one = Layout::contiguous(crate::Shape::new(vec![1]));
    let mean = unary(&sum, &one, UnaryOp::Affine { mul: 1.0 / n as f64, add: 0.0 })?;
    let mean = if s.dtype == DType::F32 { mean } else { to_contiguous_as(&mean, &one, s.dtype)? };
    Ok((mean, grad))
}

/// The fused Adam/AdamW step for many parameters of one device in one launch: their chunks'
/// addresses go up as a table (an upload that does not wait for the GPU), then
/// `adam_many_f32` runs over it. Ok(false), nothing changed: an item is not f32, or its
/// buffers' lengths differ, or they are on another device.
#[allow(clippy::type_complexity)]
pub fn adam_step_many(
    items: &mut [(&mut CudaStorage, &CudaStorage, &mut CudaStorage, &mut CudaStorage)],
    h: &AdamStep,
) -> Result<bool> {
    let Some(dev) = items.first().map(|i| i.0.dev.clone()) else { return Ok(true) };
    let mut params = Vec::with_capacity(items.len());
    for (p, g, m, v) in items.iter() {
        let f32s = [p.dtype, g.dtype, m.dtype, v.dtype] == [DType::F32; 4];
        let lens = g.len == p.len && m.len == p.len && v.len == p.len;
        let here = [p.device(), g.device(), m.device(), v.device()] == [dev.device(); 4];
        if !(f32s && lens && here) {
            return Ok(false);
        }
        params.push((p.ptr(), g.ptr(), m.ptr(), v.ptr(), p.len));
    }
    let chunks = kernels_train::adam_chunks(&params);
    let words: Vec<i64> = chunks.iter().flat_map(|c| [c.p as i64, c.g as i64, c.m as i64, c.v as i64, c.len]).collect();
    // Freed after the launch is queued: the caching allocator reuses it in stream order.
    let table = from_cpu_on(dev.device(), &CpuStorage::from_vec(words))?;
    kernels_train::adam_many(dev.launcher(), chunks.len(), h, table.ptr())?;
    Ok(true)
}

/// The fused Adam/AdamW step in place; Ok(false) where there is no kernel (non-f32).
pub fn adam_step(
    p: &mut CudaStorage,
    g: &CudaStorage,
    m: &mut CudaStorage,
    v: &mut CudaStorage,
    h: &AdamStep,
) -> Result<bool> {
    if p.dtype != DType::F32 || g.dtype != DType::F32 || m.dtype != DType::F32 || v.dtype != DType::F32 {
        return Ok(false);
    }
    if p.len > 0 {
        kernels_train::adam(p.launcher(), p.dtype, p.len, h, p.ptr(), g.ptr(), m.ptr(), v.ptr())?;
    }
    Ok(true)
}
