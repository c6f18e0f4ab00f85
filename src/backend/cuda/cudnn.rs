//! Convolutions on a GPU through cuDNN: the three calls PyTorch makes for a conv2d
//! (cudnnConvolutionForward, BackwardData, BackwardFilter, cuDNN 9's legacy API), with the
//! algorithm for each geometry picked once and kept: by running each candidate once
//! (cudnnFind*, PyTorch's `cudnn.benchmark = True`), or with KILN_CUDNN_BENCHMARK=0 by
//! cuDNN's heuristics (`_v7`, PyTorch's default).
//!
//! cuDNN is optional: without it (not installed, `KILN_CUDNN=0`, the emulated device, a
//! geometry it refuses) conv.rs runs its im2col + cuBLAS path, which computes the same
//! thing. Every tensor here is contiguous NCHW (the caller makes it so), f32 / f16 / bf16
//! with f32 accumulation. f32 convolutions run on FMA kernels unless TF32 is allowed
//! (`blas::allow_tf32`), as with matmul: f32 in, f32 arithmetic out.
//!
//! Work goes to the legacy default stream (the handle's default), where every other kernel
//! and cuBLAS call of the device runs; the workspace comes from the device's caching
//! allocator, so its reuse is ordered on that stream like any temporary's.

use super::blas::tf32_allowed;
use super::device::CudaDev;
use super::probe;
use crate::backend::ConvGeom;
use crate::{DType, Device, Error, Result};
use cudarc::cudnn::sys;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The workspace an algorithm may ask for. The heuristics rank by speed; a faster algorithm
/// that wants more than this is skipped for the next one.
const MAX_WORKSPACE: usize = 1 << 30;

/// Convolutions run through cuDNN by this process (all GPUs): lets tests and benches tell
/// which path ran.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// How many convolution passes cuDNN has run in this process.
pub fn calls() -> usize {
    CALLS.load(Ordering::Relaxed)
}

/// The three passes of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// y = conv(x, w)
    Forward,
    /// dx from dy and w
    BackwardData,
    /// dw from x and dy
    BackwardFilter,
}

impl Pass {
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "cudnnConvolutionForward",
            Pass::BackwardData => "cudnnConvolutionBackwardData",
            Pass::BackwardFilter => "cudnnConvolutionBackwardFilter",
        }
    }
}

/// What identifies a convolution for the algorithm cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    pass: Pass,
    dtype: DType,
    tf32: bool,
    /// x [n, c, h, w] and weight [o, c/groups, kh, kw].
    x: [usize; 4],
    w: [usize; 4],
    pad: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
}

/// The algorithm chosen for a key: its number, the math type it runs with, its workspace.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algo: u32,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

/// One GPU's cuDNN handle and the algorithms chosen so far. A handle is not for two threads
/// at once: calls take the lock.
pub struct Cudnn {
    device: Device,
    inner: Mutex<Inner>,
}

struct Inner {
    handle: sys::cudnnHandle_t,
    /// Each convolution met so far: its descriptors and algorithm, made once (a cuDNN call
    /// then costs the call alone on the host).
    algos: HashMap<Key, Entry>,
}

/// One convolution's descriptors (math type set for the chosen algorithm) and algorithm;
/// either None when cuDNN refused it (sizes past its int descriptors, no algorithm, a
/// failed search), so the caller's fallback runs without asking again.
struct Entry {
    descs: Option<Descs>,
    choice: Option<Choice>,
}

impl Entry {
    fn new(device: Device, h: sys::cudnnHandle_t, key: &Key) -> Entry {
        let descs = match Descs::new(device, key) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!("cuDNN refuses {key:?}: {e}");
                return Entry { descs: None, choice: None };
            }
        };
        let chosen = choose(device, h, &descs, key)
            .and_then(|c| c.map(|c| descs.set_math(device, math_for(key, c.math)).map(|_| c)).transpose());
        match chosen {
            Ok(Some(c)) => Entry { descs: Some(descs), choice: Some(c) },
            Ok(None) => {
                tracing::warn!("cuDNN has no algorithm for {key:?}; that convolution runs on im2col + cuBLAS");
                Entry { descs: None, choice: None }
            }
            Err(e) => {
                tracing::warn!("choosing a cuDNN algorithm for {key:?}: {e}; that convolution runs on im2col + cuBLAS");
                Entry { descs: None, choice: None }
            }
        }
    }
}

// SAFETY: the handle and the descriptors are opaque pointers owned by this struct and only
// used under the mutex, one thread at a time, which is what cuDNN requires of a handle.
unsafe impl Send for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: the handle was made by cudnnCreate and is destroyed once, here.
        unsafe { sys::cudnnDestroy(self.handle) };
    }
}

fn err(device: Device, what: &str, status: sys::cudnnStatus_t) -> Error {
    Error::Kernel { kernel: what.into(), msg: format!("cuDNN on {device}: {status:?}") }
}

fn check(device: Device, what: &str, status: sys::cudnnStatus_t) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(err(device, what, status))
    }
}

impl Cudnn {
    /// A cuDNN handle for GPU `device` (its context current on this thread), or why not:
    /// cuDNN missing, switched off with KILN_CUDNN=0, or refusing to start.
    pub fn new(device: Device) -> Result<Cudnn> {
        let unavailable = |msg: String| Error::DeviceUnavailable { device, msg };
        if std::env::var("KILN_CUDNN").is_ok_and(|v| v == "0") {
            return Err(unavailable("cuDNN switched off (KILN_CUDNN=0)".into()));
        }
        let lib = probe::cudnn();
        if lib.found.is_none() {
            return Err(unavailable(format!("cuDNN (libcudnn.so.9) {}", lib.why_missing())));
        }
        let mut handle = std::ptr::null_mut();
        // SAFETY: cudnnCreate writes a new handle through the pointer; the caller made the
        // GPU's context current on this thread.
        check(device, "cudnnCreate", unsafe { sys::cudnnCreate(&mut handle) })?;
        Ok(Cudnn { device, inner: Mutex::new(Inner { handle, algos: HashMap::new() }) })
    }

    /// cuDNN's version as it reports it (e.g. 91300 for 9.13.0).
    pub fn version() -> Option<usize> {
        // SAFETY: a plain query; the probe loaded the library first.
        probe::cudnn().found.as_ref().map(|_| unsafe { sys::cudnnGetVersion() })
    }

    /// Runs `pass` of the convolution `geom` on `dtype` data. The pointers are device
    /// addresses of contiguous NCHW tensors: x [n, c, h, w], w [o, c/groups, kh, kw],
    /// y [n, o, oh, ow]; `pass` reads two and overwrites the third (Forward writes y,
    /// BackwardData writes x from y and w, BackwardFilter writes w from x and y).
    /// Ok(false): cuDNN has no algorithm for this convolution (nothing was written).
    pub fn run(&self, dev: &CudaDev, pass: Pass, dtype: DType, geom: &ConvGeom, [x, w, y]: [u64; 3]) -> Result<bool> {
        let _p = crate::profile::scope(pass.name());
        let (kh, kw) = geom.win.kernel;
        let key = Key {
            pass,
            dtype,
            tf32: dtype == DType::F32 && tf32_allowed(),
            x: [geom.n, geom.c, geom.h, geom.w],
            w: [geom.o, geom.c / geom.groups.max(1), kh, kw],
            pad: geom.win.padding,
            stride: geom.win.stride,
            dilation: geom.win.dilation,
            groups: geom.groups,
        };
        // cuDNN runs on the calling thread's current context: a data-parallel worker thread
        // may not have made this GPU's current yet.
        dev.bind()?;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let h = inner.handle;
        let entry = inner.algos.entry(key).or_insert_with(|| Entry::new(self.device, h, &key));
        let (Some(descs), Some(choice)) = (&entry.descs, entry.choice) else { return Ok(false) };
        let ws = if choice.workspace > 0 { Some(dev.alloc(choice.workspace)?) } else { None };
        let ws_ptr = ws.as_ref().map_or(std::ptr::null_mut(), |b| b.ptr() as *mut std::ffi::c_void);
        // alpha = 1, beta = 0 as f32: cuDNN takes f32 scaling factors for f32/f16/bf16 data.
        let (one, zero) = (1.0f32, 0.0f32);
        let (a, b) = (&one as *const f32 as *const _, &zero as *const f32 as *const _);
        let (xp, wp, yp) = (x as *mut std::ffi::c_void, w as *mut std::ffi::c_void, y as *mut std::ffi::c_void);
        // SAFETY: the handle and descriptors are live; the caller guarantees the three
        // addresses hold the tensors the descriptors describe (contiguous, of `dtype`); the
        // workspace is a live block of the size cuDNN asked for; alpha and beta are read
        // before the call returns. Each algorithm number came from cuDNN for this pass.
        let status = unsafe {
            match pass {
                Pass::Forward => sys::cudnnConvolutionForward(
                    h,
                    a,
                    descs.x,
                    xp,
                    descs.w,
                    wp,
                    descs.conv,
                    fwd_algo(choice.algo),
                    ws_ptr,
                    choice.workspace,
                    b,
                    descs.y,
                    yp,
                ),
                Pass::BackwardData => sys::cudnnConvolutionBackwardData(
                    h,
                    a,
                    descs.w,
                    wp,
                    descs.y,
                    yp,
                    descs.conv,
                    bwd_data_algo(choice.algo),
                    ws_ptr,
                    choice.workspace,
                    b,
                    descs.x,
                    xp,
                ),
                Pass::BackwardFilter => sys::cudnnConvolutionBackwardFilter(
                    h,
                    a,
                    descs.x,
                    xp,
                    descs.y,
                    yp,
                    descs.conv,
                    bwd_filter_algo(choice.algo),
                    ws_ptr,
                    choice.workspace,
                    b,
                    descs.w,
                    wp,
                ),
            }
        };
        check(self.device, pass.name(), status)?;
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// The math type a call runs with: f32 without TF32 on FMA kernels only (cuDNN's default
/// math lets an A100 or newer use TF32 tensor cores for f32), otherwise what the heuristics
/// ranked the algorithm with.
fn math_for(key: &Key, ranked: sys::cudnnMathType_t) -> sys::cudnnMathType_t {
    if key.dtype == DType::F32 && !key.tf32 {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        ranked
    }
}

/// The four descriptors of one convolution, destroyed together.
struct Descs {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descs {
    fn drop(&mut self) {
        // SAFETY: each non-null descriptor was created by its cudnnCreate* and is destroyed
        // once (a failed `new` drops the ones it made).
        unsafe {
            if !self.x.is_null() {
                sys::cudnnDestroyTensorDescriptor(self.x);
            }
            if !self.y.is_null() {
                sys::cudnnDestroyTensorDescriptor(self.y);
            }
            if !self.w.is_null() {
                sys::cudnnDestroyFilterDescriptor(self.w);
            }
            if !self.conv.is_null() {
                sys::cudnnDestroyConvolutionDescriptor(self.conv);
            }
        }
    }
}

fn int(device: Device, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid("cudnn", format!("{what} = {v} on {device} does not fit cuDNN's int")))
}

impl Descs {
    fn new(device: Device, k: &Key) -> Result<Descs> {
        let mut d = Descs {
            x: std::ptr::null_mut(),
            w: std::ptr::null_mut(),
            y: std::ptr::null_mut(),
            conv: std::ptr::null_mut(),
        };
        let data = match k.dtype {
            DType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            DType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            DType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            other => return Err(Error::UnsupportedDType { op: "cudnn conv2d", dtype: other, msg: "F32, F16, BF16" }),
        };
        let i = |what: &str, v: usize| int(device, what, v);
        let four = |what: &str, v: [usize; 4]| -> Result<[i32; 4]> {
            Ok([i(what, v[0])?, i(what, v[1])?, i(what, v[2])?, i(what, v[3])?])
        };
        let [n, c, h, wd] = four("x dims", k.x)?;
        let [o, cg, kh, kw] = four("weight dims", k.w)?;
        // Element counts must fit too: cuDNN's descriptors hold int strides.
        i("x elements", k.x.iter().product())?;
        i("weight elements", k.w.iter().product())?;
        let cw = |s, what| check(device, what, s);
        // SAFETY: each create writes a new descriptor through the pointer; each set gets a
        // live descriptor of its kind and plain values.
        unsafe {
            cw(sys::cudnnCreateTensorDescriptor(&mut d.x), "cudnnCreateTensorDescriptor")?;
            cw(sys::cudnnCreateTensorDescriptor(&mut d.y), "cudnnCreateTensorDescriptor")?;
            cw(sys::cudnnCreateFilterDescriptor(&mut d.w), "cudnnCreateFilterDescriptor")?;
            cw(sys::cudnnCreateConvolutionDescriptor(&mut d.conv), "cudnnCreateConvolutionDescriptor")?;
            let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            cw(sys::cudnnSetTensor4dDescriptor(d.x, nchw, data, n, c, h, wd), "cudnnSetTensor4dDescriptor (x)")?;
            cw(sys::cudnnSetFilter4dDescriptor(d.w, data, nchw, o, cg, kh, kw), "cudnnSetFilter4dDescriptor")?;
            // Accumulation in f32 for every data type (f16 "pseudo-half", as PyTorch does).
            cw(
                sys::cudnnSetConvolution2dDescriptor(
                    d.conv,
                    i("padding", k.pad.0)?,
                    i("padding", k.pad.1)?,
                    i("stride", k.stride.0)?,
                    i("stride", k.stride.1)?,
                    i("dilation", k.dilation.0)?,
                    i("dilation", k.dilation.1)?,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "cudnnSetConvolution2dDescriptor",
            )?;
            cw(sys::cudnnSetConvolutionGroupCount(d.conv, i("groups", k.groups)?), "cudnnSetConvolutionGroupCount")?;
            // The output shape as cuDNN computes it must be the one Kiln allocated.
            let (mut yn, mut yc, mut yh, mut yw) = (0, 0, 0, 0);
            cw(
                sys::cudnnGetConvolution2dForwardOutputDim(d.conv, d.x, d.w, &mut yn, &mut yc, &mut yh, &mut yw),
                "cudnnGetConvolution2dForwardOutputDim",
            )?;
            let win = crate::backend::Window2d {
                kernel: (k.w[2], k.w[3]),
                stride: k.stride,
                padding: k.pad,
                dilation: k.dilation,
            };
            let (oh, ow) = win.out_hw(k.x[2], k.x[3]).unwrap_or((0, 0));
            if [yn, yc, yh, yw] != [n, o, i("oh", oh)?, i("ow", ow)?] {
                return Err(Error::invalid(
                    "cudnn conv2d",
                    format!("cuDNN's output {:?} is not Kiln's [{n}, {o}, {oh}, {ow}]", [yn, yc, yh, yw]),
                ));
            }
            cw(sys::cudnnSetTensor4dDescriptor(d.y, nchw, data, yn, yc, yh, yw), "cudnnSetTensor4dDescriptor (y)")?;
        }
        Ok(d)
    }

    fn set_math(&self, device: Device, math: sys::cudnnMathType_t) -> Result<()> {
        // SAFETY: a live convolution descriptor and a valid enum value.
        check(device, "cudnnSetConvolutionMathType", unsafe { sys::cudnnSetConvolutionMathType(self.conv, math) })
    }
}

/// The layout shared by cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t, read with plain
/// integers: an algorithm or status number this build does not know is then skipped instead
/// of being an invalid Rust enum.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawPerf {
    algo: u32,
    status: u32,
    time: f32,
    memory: usize,
    determinism: u32,
    math: u32,
    reserved: [i32; 3],
}

const _: () = assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>());
const _: () = assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>());
const _: () =
    assert!(std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>());

/// The fastest algorithm by cuDNN's heuristics that runs (status success), fits
/// MAX_WORKSPACE, and — for f32 without TF32 — does not need tensor-op math.
fn choose(device: Device, h: sys::cudnnHandle_t, d: &Descs, k: &Key) -> Result<Option<Choice>> {
    const N: usize = 16;
    let mut perf = [RawPerf { algo: 0, status: 0, time: 0.0, memory: 0, determinism: 0, math: 0, reserved: [0; 3] }; N];
    let mut count = 0i32;
    // The ranking depends on the math type the descriptor allows: f32 on FMA kernels, f32
    // with TF32 on the default math (which lets an A100 or newer use TF32), f16 / bf16 on
    // tensor cores.
    let wanted = match k.dtype {
        DType::F32 if !k.tf32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        DType::F32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    };
    d.set_math(device, wanted)?;
    let measure = benchmark();
    let (out, n) = (perf.as_mut_ptr(), N as i32);
    // SAFETY: live handle and descriptors; `perf` holds N entries of the perf structs'
    // layout (checked above) and cuDNN writes at most N of them and the count. The Find
    // calls run each algorithm on scratch memory cuDNN allocates itself.
    let status = unsafe {
        match (k.pass, measure) {
            (Pass::Forward, false) => {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, n, &mut count, out.cast())
            }
            (Pass::Forward, true) => {
                sys::cudnnFindConvolutionForwardAlgorithm(h, d.x, d.w, d.conv, d.y, n, &mut count, out.cast())
            }
            (Pass::BackwardData, false) => {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, n, &mut count, out.cast())
            }
            (Pass::BackwardData, true) => {
                sys::cudnnFindConvolutionBackwardDataAlgorithm(h, d.w, d.y, d.conv, d.x, n, &mut count, out.cast())
            }
            (Pass::BackwardFilter, false) => {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, n, &mut count, out.cast())
            }
            (Pass::BackwardFilter, true) => {
                sys::cudnnFindConvolutionBackwardFilterAlgorithm(h, d.x, d.y, d.conv, d.w, n, &mut count, out.cast())
            }
        }
    };
    let what = if measure { "cudnnFindConvolution*Algorithm" } else { "cudnnGetConvolution*Algorithm_v7" };
    check(device, what, status)?;
    let known = match k.pass {
        Pass::Forward => sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as u32,
        Pass::BackwardData => sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as u32,
        Pass::BackwardFilter => sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as u32,
    };
    for p in &perf[..(count.max(0) as usize).min(N)] {
        let Some(math) = math_type(p.math) else { continue };
        let tensor_op = matches!(
            math,
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
        );
        if p.status != 0
            || p.algo >= known
            || p.memory > MAX_WORKSPACE
            || (wanted == sys::cudnnMathType_t::CUDNN_FMA_MATH && tensor_op)
        {
            continue;
        }
        // The heuristics' memory figure is an estimate: ask for the exact workspace.
        let mut ws = 0usize;
        d.set_math(device, math_for(k, math))?;
        // SAFETY: live handle and descriptors; the algorithm number is one cuDNN listed.
        let status = unsafe {
            match k.pass {
                Pass::Forward => {
                    sys::cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, fwd_algo(p.algo), &mut ws)
                }
                Pass::BackwardData => sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h,
                    d.w,
                    d.y,
                    d.conv,
                    d.x,
                    bwd_data_algo(p.algo),
                    &mut ws,
                ),
                Pass::BackwardFilter => sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                    h,
                    d.x,
                    d.y,
                    d.conv,
                    d.w,
                    bwd_filter_algo(p.algo),
                    &mut ws,
                ),
            }
        };
        if status != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS || ws > MAX_WORKSPACE {
            continue;
        }
        tracing::debug!(key = ?k, algo = p.algo, math = ?math, workspace = ws, ms = p.time, "cuDNN algorithm chosen");
        return Ok(Some(Choice { algo: p.algo, math, workspace: ws }));
    }
    Ok(None)
}

/// Whether each geometry's algorithm is picked by running them all once (cudnnFind*,
/// PyTorch's `torch.backends.cudnn.benchmark = True`): the default, as training runs the
/// same shapes thousands of times. KILN_CUDNN_BENCHMARK=0 picks by cuDNN's heuristics
/// instead (PyTorch's default): no measuring per new shape, for inputs whose shapes vary.
/// Measured on an H100 (ResNet-18, batch 128, BENCHMARKS.md): 17.5 ms a step with measured
/// algorithms, 24.0 ms with the heuristics' picks.
fn benchmark() -> bool {
    static B: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *B.get_or_init(|| std::env::var("KILN_CUDNN_BENCHMARK").map_or(true, |v| v != "0"))
}

fn math_type(v: u32) -> Option<sys::cudnnMathType_t> {
    use sys::cudnnMathType_t::*;
    [CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, CUDNN_FMA_MATH]
        .into_iter()
        .find(|m| *m as u32 == v)
}

// The algorithm numbers below COUNT, as the bindings' enums (`choose` only keeps those).
fn fwd_algo(v: u32) -> sys::cudnnConvolutionFwdAlgo_t {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    [
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
    .unwrap_or(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM)
}

fn bwd_data_algo(v: u32) -> sys::cudnnConvolutionBwdDataAlgo_t {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
    .unwrap_or(CUDNN_CONVOLUTION_BWD_DATA_ALGO_0)
}

fn bwd_filter_algo(v: u32) -> sys::cudnnConvolutionBwdFilterAlgo_t {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    [
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
    ]
    .into_iter()
    .find(|a| *a as u32 == v)
    .unwrap_or(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0)
}
