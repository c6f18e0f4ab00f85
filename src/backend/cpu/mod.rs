//! The CPU backend: the reference every other backend is tested against, and fast enough
//! to train on (rayon over chunks, a tuned GEMM, contiguous fast paths).
//!
//! Every function takes its operands as (storage, layout) pairs and returns new contiguous
//! storage. Half types (F16, BF16) are widened to f32 for the math and narrowed back.

mod conv;
mod conv_direct;
mod conv_winograd;
mod elementwise;
mod index;
mod matmul;
mod norm;
mod optim;
pub mod parallel;
mod pool;
mod reduce;
mod sgemm;
mod simd;
mod softmax;
mod strided;

pub use conv::{col2im, conv2d, conv2d_backward, im2col, ConvGeom, Epilogue, Fused};
pub use elementwise::{binary, unary, where_cond};
pub use index::{gather, index_add, index_select, scatter_add};
pub use matmul::matmul;
pub use norm::{bn_coeffs, bn_running, channel_affine, channel_sums};
pub use optim::adam_step;
pub use parallel::{is_inline, keep_workers_warm, run_inline};
pub(crate) use parallel::{min_len as par_min_len, par_threshold, par_threshold_optim, threads};
pub use pool::{max_pool2d, max_pool2d_backward};
pub use reduce::reduce;
pub(crate) use simd::vectorize;
pub use softmax::{cross_entropy, softmax_last_dim};
pub use strided::{copy_into, to_contiguous};

use crate::{DType, Error, Layout, Result, WithDType};
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};

static BYTES_IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_NET: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

/// Bytes of CPU storage allocated minus bytes freed *on the calling thread*: unlike
/// [`bytes_in_use`], other threads' work does not disturb it (tests run in parallel).
pub fn thread_net_bytes() -> isize {
    THREAD_NET.with(|c| c.get())
}

/// Bytes held by live CPU tensor storage right now.
pub fn bytes_in_use() -> usize {
    BYTES_IN_USE.load(Ordering::Relaxed)
}
/// The most bytes CPU tensor storage has held at once since start (or the last reset).
pub fn peak_bytes() -> usize {
    PEAK_BYTES.load(Ordering::Relaxed)
}
/// Restarts the peak counter from the current use.
pub fn reset_peak_bytes() {
    PEAK_BYTES.store(bytes_in_use(), Ordering::Relaxed);
}

/// The data of one CPU buffer.
#[derive(Debug, Clone)]
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
}

/// A CPU buffer, counted in [`bytes_in_use`] while alive.
#[derive(Debug)]
pub struct CpuStorage {
    data: CpuData,
}

impl Clone for CpuStorage {
    fn clone(&self) -> Self {
        CpuStorage::new(self.data.clone())
    }
}

impl CpuStorage {
    pub fn new(data: CpuData) -> Self {
        let bytes = data_bytes(&data);
        let now = BYTES_IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK_BYTES.fetch_max(now, Ordering::Relaxed);
        THREAD_NET.with(|c| c.set(c.get() + bytes as isize));
        CpuStorage { data }
    }
    pub fn data(&self) -> &CpuData {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut CpuData {
        &mut self.data
    }
    pub fn dtype(&self) -> DType {
        match &self.data {
            CpuData::F32(_) => DType::F32,
            CpuData::F64(_) => DType::F64,
            CpuData::F16(_) => DType::F16,
            CpuData::BF16(_) => DType::BF16,
            CpuData::I64(_) => DType::I64,
        }
    }
    pub fn len(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.len(),
            CpuData::F64(v) => v.len(),
            CpuData::F16(v) => v.len(),
            CpuData::BF16(v) => v.len(),
            CpuData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer of `n` copies of `value` (converted to `dtype`).
    pub fn full(value: f64, n: usize, dtype: DType) -> Self {
        CpuStorage::new(match dtype {
            DType::F32 => CpuData::F32(vec![value as f32; n]),
            DType::F64 => CpuData::F64(vec![value; n]),
            DType::F16 => CpuData::F16(vec![f16::from_f64(value); n]),
            DType::BF16 => CpuData::BF16(vec![bf16::from_f64(value); n]),
            DType::I64 => CpuData::I64(vec![value as i64; n]),
        })
    }

    /// Builds storage of `dtype` from f64 values (creation ops, RNG output).
    pub fn from_f64(values: Vec<f64>, dtype: DType) -> Self {
        CpuStorage::new(match dtype {
            DType::F64 => CpuData::F64(values),
            DType::F32 => CpuData::F32(values.into_iter().map(|v| v as f32).collect()),
            DType::F16 => CpuData::F16(values.into_iter().map(f16::from_f64).collect()),
            DType::BF16 => CpuData::BF16(values.into_iter().map(bf16::from_f64).collect()),
            DType::I64 => CpuData::I64(values.into_iter().map(|v| v as i64).collect()),
        })
    }

    pub fn from_vec<T: WithDType>(values: Vec<T>) -> Self {
        // Dispatch on T's dtype through a cast of the Vec we know has that element type.
        let any: Box<dyn std::any::Any> = Box::new(values);
        let data = match T::DTYPE {
            DType::F32 => CpuData::F32(*any.downcast::<Vec<f32>>().expect("dtype tag matches type")),
            DType::F64 => CpuData::F64(*any.downcast::<Vec<f64>>().expect("dtype tag matches type")),
            DType::F16 => CpuData::F16(*any.downcast::<Vec<f16>>().expect("dtype tag matches type")),
            DType::BF16 => CpuData::BF16(*any.downcast::<Vec<bf16>>().expect("dtype tag matches type")),
            DType::I64 => CpuData::I64(*any.downcast::<Vec<i64>>().expect("dtype tag matches type")),
        };
        CpuStorage::new(data)
    }

    /// The elements of the view `layout`, in row-major order, converted to T.
    pub fn to_vec<T: WithDType>(&self, layout: &Layout) -> Vec<T> {
        fn conv<S: WithDType, T: WithDType>(v: &[S], l: &Layout) -> Vec<T> {
            strided::map(v, l, |x| T::from_f64(x.to_f64()))
        }
        match &self.data {
            CpuData::F32(v) => conv(v, layout),
            CpuData::F64(v) => conv(v, layout),
            CpuData::F16(v) => conv(v, layout),
            CpuData::BF16(v) => conv(v, layout),
            // Integers convert exactly (labels and counters may exceed f64's 53 bits).
            CpuData::I64(v) => strided::map(v, layout, T::from_i64),
        }
    }

    /// Converts the view to a contiguous buffer of another dtype.
    pub fn cast(&self, layout: &Layout, dtype: DType) -> Self {
        if dtype == self.dtype() {
            return to_contiguous(self, layout);
        }
        match dtype {
            DType::F32 => CpuStorage::new(CpuData::F32(self.to_vec(layout))),
            DType::F64 => CpuStorage::new(CpuData::F64(self.to_vec(layout))),
            DType::F16 => CpuStorage::new(CpuData::F16(self.to_vec(layout))),
            DType::BF16 => CpuStorage::new(CpuData::BF16(self.to_vec(layout))),
            DType::I64 => CpuStorage::new(CpuData::I64(self.to_vec(layout))),
        }
    }

    /// The view as i64 indices (labels, index tensors), erroring on a non-I64 dtype.
    pub fn indices(&self, layout: &Layout, op: &'static str) -> Result<Vec<i64>> {
        match &self.data {
            CpuData::I64(v) => Ok(strided::map(v, layout, |x| x)),
            _ => Err(Error::UnsupportedDType { op, dtype: self.dtype(), msg: "indices must be I64" }),
        }
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        let bytes = data_bytes(&self.data);
        BYTES_IN_USE.fetch_sub(bytes, Ordering::Relaxed);
        THREAD_NET.with(|c| c.set(c.get() - bytes as isize));
    }
}

fn data_bytes(d: &CpuData) -> usize {
    match d {
        CpuData::F32(v) => v.len() * 4,
        CpuData::F64(v) => v.len() * 8,
        CpuData::F16(v) => v.len() * 2,
        CpuData::BF16(v) => v.len() * 2,
        CpuData::I64(v) => v.len() * 8,
    }
}

/// A float element the CPU kernels compute in (f32 or f64).
pub(crate) trait Float: num_traits::Float + WithDType + Default + Send + Sync + std::iter::Sum {
    fn erf(self) -> Self;
    /// The elements of a view of this element type, contiguous (panics on the other type:
    /// callers pick `T` from [`FloatView::is_f64`]).
    fn view<'v>(v: &'v FloatView<'_>) -> std::borrow::Cow<'v, [Self]>;
    /// A kernel's result as storage of the caller's `dtype` (half types narrowed again).
    fn into_storage(v: Vec<Self>, dtype: DType) -> CpuStorage;
    /// The slice as f32 when this is f32 (kernels with hand-written f32 SIMD paths).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}
impl Float for f32 {
    fn erf(self) -> f32 {
        libm::erff(self)
    }
    fn view<'v>(v: &'v FloatView<'_>) -> std::borrow::Cow<'v, [f32]> {
        match v {
            FloatView::F32(d, l) => to_contiguous_vec(d, l),
            FloatView::F64(..) => unreachable!("an f64 view read as f32"),
        }
    }
    fn into_storage(v: Vec<f32>, dtype: DType) -> CpuStorage {
        from_f32(v, dtype)
    }
    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
}
impl Float for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    fn view<'v>(v: &'v FloatView<'_>) -> std::borrow::Cow<'v, [f64]> {
        match v {
            FloatView::F64(d, l) => to_contiguous_vec(d, l),
            FloatView::F32(..) => unreachable!("an f32 view read as f64"),
        }
    }
    fn into_storage(v: Vec<f64>, _dtype: DType) -> CpuStorage {
        CpuStorage::new(CpuData::F64(v))
    }
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
}

/// What a float kernel is handed: the operand widened to f32 when it is a half type.
pub(crate) enum FloatView<'a> {
    F32(std::borrow::Cow<'a, [f32]>, Layout),
    F64(&'a [f64], Layout),
}

impl FloatView<'_> {
    pub(crate) fn is_f64(&self) -> bool {
        matches!(self, FloatView::F64(..))
    }
    /// The view's elements as a contiguous slice, borrowed when already contiguous.
    pub(crate) fn contiguous<T: Float>(&self) -> std::borrow::Cow<'_, [T]> {
        T::view(self)
    }
}

/// Widens half types to a contiguous f32 copy; f32/f64 pass through by reference.
pub(crate) fn float_view<'a>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> Result<FloatView<'a>> {
    use std::borrow::Cow;
    Ok(match &s.data {
        CpuData::F32(v) => FloatView::F32(Cow::Borrowed(v), l.clone()),
        CpuData::F64(v) => FloatView::F64(v, l.clone()),
        CpuData::F16(_) | CpuData::BF16(_) => {
            FloatView::F32(Cow::Owned(s.to_vec::<f32>(l)), Layout::contiguous(l.shape().clone()))
        }
        CpuData::I64(_) => return Err(Error::UnsupportedDType { op, dtype: DType::I64, msg: "needs a float dtype" }),
    })
}

/// Wraps an f32 result back into the caller's dtype (narrowing half types again).
pub(crate) fn from_f32(v: Vec<f32>, dtype: DType) -> CpuStorage {
    CpuStorage::new(match dtype {
        DType::F16 => CpuData::F16(v.into_iter().map(f16::from_f32).collect()),
        DType::BF16 => CpuData::BF16(v.into_iter().map(bf16::from_f32).collect()),
        DType::F64 => CpuData::F64(v.into_iter().map(|x| x as f64).collect()),
        DType::I64 => CpuData::I64(v.into_iter().map(|x| x as i64).collect()),
        DType::F32 => CpuData::F32(v),
    })
}

/// The view's elements as a contiguous slice, borrowed when already contiguous.
pub(crate) fn to_contiguous_vec<'a, T: Copy + Send + Sync + Default>(
    v: &'a [T],
    l: &Layout,
) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_range() {
        Some(r) => std::borrow::Cow::Borrowed(&v[r]),
        None => std::borrow::Cow::Owned(strided::map(v, l, |x| x)),
    }
}

/// A zeroed buffer of `n` elements for an op's output. Large buffers ask Linux for
/// transparent huge pages before first touch: filling 64 MB of fresh 4 KB pages costs 16k
/// page faults (most of the time of a large elementwise op); 2 MB pages cost 32.
pub(crate) fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    keep_large_blocks_on_the_heap();
    let v = vec![T::default(); n];
    advise_huge_pages(&v);
    v
}

/// glibc's malloc serves blocks above its mmap threshold (128 KB at first, then the largest
/// block freed so far, up to 32 MB) with fresh mmaps, and unmaps them on free: a training
/// step's activations (megabytes each, allocated and freed every step) then cost page faults
/// to fill and TLB shootdowns to unmap, a third of the CNN's CPU time under `perf`. A fixed
/// 32 MB threshold keeps such blocks on the heap, where the next step reuses them; the 64 MB
/// trim threshold lets the heap keep that much free memory at its top between steps. Peak
/// RSS does not grow (the next step asks for the same blocks). Set once, on the first large
/// allocation; other allocators and platforms are left alone.
fn keep_large_blocks_on_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes glibc's allocation thresholds; it is thread-safe and
        // touches no memory of ours.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        });
    }
}

fn advise_huge_pages<T>(v: &[T]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(v);
    if bytes < 2 * HUGE {
        return;
    }
    let start = v.as_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let len = (start + bytes - aligned) / HUGE * HUGE;
    #[cfg(target_os = "linux")]
    // SAFETY: madvise only gives the kernel a hint about pages of memory this Vec owns
    // ([aligned, aligned + len) lies inside it); it never changes their contents.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}
