//! A CUDA device as the backend uses it: its memory (the caching allocator), the launcher
//! that runs kernels on it, and copies between host and device. One per device, made on
//! first use and shared by every tensor on it.
//!
//! The emulated device (`Device::CudaEmulated`) is the same thing with host memory standing
//! in for device memory and the host builds of the kernels (kernels/emu) for the GPU: every
//! op's real launch code runs in CI. It is a test device; `Device::best()` never picks it.

use super::alloc::{CachingAllocator, DeviceBuf, GpuMemory, HostMemory};
use super::blas::{Blas, Cublas, HostBlas};
use super::cudnn::Cudnn;
use super::emu::EmuLauncher;
use super::gpu::GpuLauncher;
use super::launch::Launcher;
use super::staging::{GpuEngine, Stager};
use crate::{Device, Error, Result};
use cudarc::driver::CudaContext;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One device's allocator and launcher.
pub struct CudaDev {
    device: Device,
    alloc: Arc<CachingAllocator>,
    launcher: Box<dyn Launcher + Send + Sync>,
    /// cuBLAS on a GPU; on the emulated device, the same GEMM semantics on the host.
    blas: Box<dyn Blas>,
    /// The GPU's context (None on the emulated device), made current before each copy.
    ctx: Option<Arc<CudaContext>>,
    /// Pinned staging for uploads that do not block the host (GPU only; staging.rs).
    stager: Option<Mutex<Stager<GpuEngine>>>,
    /// cuDNN for convolutions, made on the first one (None: not on this device; conv.rs
    /// then runs im2col + cuBLAS).
    cudnn: OnceLock<Option<Cudnn>>,
}

/// A device-side index check that the host reads later instead of waiting for it: a kernel
/// given `CudaDev::deferred_status` writes [size, bad index] there (first writer wins) and
/// does no harm with the bad element; the next download or `synchronize` by the same host
/// thread on that device, which waits for the GPU anyway, reads the two words (one 16-byte
/// copy, nothing left to wait for) and returns the error there. Per thread, so the error
/// reaches the code that queued the bad op, not another thread that happens to read first.
/// PyTorch's device-side asserts report late the same way, but poison the context; this
/// leaves the device usable.
struct Deferred {
    /// Two u64 words on the device, zero while nothing went wrong.
    words: DeviceBuf,
    /// The ops queued with a check since the last read, for the error's name.
    ops: Vec<&'static str>,
}

thread_local! {
    static DEFERRED: std::cell::RefCell<HashMap<Device, Deferred>> = std::cell::RefCell::new(HashMap::new());
}

impl std::fmt::Debug for CudaDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDev({})", self.device)
    }
}

/// The device behind `device`, made on first use.
pub fn get(device: Device) -> Result<Arc<CudaDev>> {
    static DEVICES: OnceLock<Mutex<HashMap<Device, Arc<CudaDev>>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&device) {
        return Ok(d.clone());
    }
    let dev = match device {
        Device::CudaEmulated => {
            let dev = Arc::new(CudaDev {
                device,
                alloc: CachingAllocator::from_env(Box::new(HostMemory::new())),
                launcher: Box::new(EmuLauncher),
                blas: Box::new(HostBlas),
                ctx: None,
                stager: None,
                cudnn: OnceLock::new(),
            });
            // The same self-test as a GPU's, so the test itself is checked in CI.
            self_test(&dev)?;
            dev
        }
        Device::Cuda(n) => {
            // Everything runs on the legacy default stream: launches, cuBLAS, the synchronous
            // copies and the staged uploads are ordered without cross-stream events (see
            // staging.rs for what a separate copy stream would need).
            let launcher = GpuLauncher::new(n)?;
            let ctx = launcher.context().clone();
            ctx.bind_to_thread().map_err(|e| Error::DeviceUnavailable { device, msg: format!("binding: {e}") })?;
            let stager = Stager::new(GpuEngine)?;
            let dev = Arc::new(CudaDev {
                device,
                alloc: CachingAllocator::from_env(Box::new(GpuMemory::new(n)?)),
                launcher: Box::new(launcher),
                // TF32 stays off: f32 matmuls give f32 results unless a user asks otherwise.
                blas: Box::new(Cublas::new(n, false)?),
                ctx: Some(ctx),
                stager: Some(Mutex::new(stager)),
                cudnn: OnceLock::new(),
            });
            self_test(&dev)?;
            dev
        }
        Device::Cpu => return Err(Error::invalid("cuda", "the CPU is not a CUDA device")),
    };
    map.insert(device, dev.clone());
    Ok(dev)
}

/// Before a GPU is used for anything: copy a few numbers there, negate them with a kernel
/// and copy them back. A GPU that fails this (a driver/toolkit mismatch, a kernel that does
/// not load) is reported as unavailable, so `Device::best()` falls back to the CPU.
fn self_test(dev: &Arc<CudaDev>) -> Result<()> {
    let x = [1.5f32, -2.0, 3.25];
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (a, b) = (dev.alloc(12)?, dev.alloc(12)?);
    dev.htod(a.ptr(), &bytes)?;
    let l = crate::Layout::contiguous(crate::Shape::new(vec![3]));
    super::kernels::unary(dev.launcher(), crate::DType::F32, crate::backend::UnaryOp::Neg, a.ptr(), &l, b.ptr())?;
    let mut back = vec![0u8; 12];
    dev.dtoh(b.ptr(), &mut back)?;
    let got: Vec<f32> = back.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if got != [-1.5, 2.0, -3.25] {
        return Err(Error::DeviceUnavailable {
            device: dev.device,
            msg: format!("self-test failed: negating [1.5, -2, 3.25] on the GPU gave {got:?}"),
        });
    }
    // And one GEMM through cuBLAS: [[1, 2, 3]] @ [[1], [-2], [3]]ᵀ-as-column = 1 - 4 + 9 = 6,
    // with b a transposed view (the trans-flag path).
    let one_row = crate::Layout::contiguous(crate::Shape::new(vec![1, 3]));
    let col = crate::Layout::new(crate::Shape::new(vec![3, 1]), vec![1, 3], 0);
    let xs: Vec<u8> = [1.0f32, 2.0, 3.0, 1.0, -2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (ab, c) = (dev.alloc(24)?, dev.alloc(4)?);
    dev.htod(ab.ptr(), &xs)?;
    let mut none = |_: usize| -> Result<u64> { Err(Error::invalid("self-test", "no scratch needed")) };
    super::blas::matmul(
        dev.blas(),
        dev.launcher(),
        &mut none,
        crate::DType::F32,
        ab.ptr(),
        &one_row,
        ab.ptr() + 12,
        &col,
        c.ptr(),
    )?;
    let mut back = [0u8; 4];
    dev.dtoh(c.ptr(), &mut back)?;
    if f32::from_le_bytes(back) != 6.0 {
        return Err(Error::DeviceUnavailable {
            device: dev.device,
            msg: format!("self-test failed: a 1x3 @ 3x1 cuBLAS product gave {} instead of 6", f32::from_le_bytes(back)),
        });
    }
    Ok(())
}

impl CudaDev {
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn launcher(&self) -> &dyn Launcher {
        self.launcher.as_ref()
    }
    pub fn blas(&self) -> &dyn Blas {
        self.blas.as_ref()
    }
    pub fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }
    /// cuDNN on this GPU, made on first use; None on the emulated device or when cuDNN is
    /// missing, switched off (KILN_CUDNN=0) or fails to start (said once, in the log).
    pub fn cudnn(&self) -> Option<&Cudnn> {
        self.cudnn
            .get_or_init(|| {
                if self.emulated() {
                    return None;
                }
                match self.bind().and_then(|_| Cudnn::new(self.device)) {
                    Ok(c) => {
                        tracing::debug!(version = Cudnn::version(), "cuDNN on {}", self.device);
                        Some(c)
                    }
                    Err(e) => {
                        tracing::warn!("{e}; convolutions on {} run on im2col + cuBLAS", self.device);
                        None
                    }
                }
            })
            .as_ref()
    }
    fn emulated(&self) -> bool {
        self.device == Device::CudaEmulated
    }

    fn gpu_err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::DeviceUnavailable { device: self.device, msg: format!("{what}: {e}") }
    }

    /// The GPU's context, made current on this thread.
    pub(crate) fn bind(&self) -> Result<()> {
        match &self.ctx {
            Some(ctx) => ctx.bind_to_thread().map_err(|e| self.gpu_err("binding the context", e)),
            None => Err(self.gpu_err("copy", "no GPU context")),
        }
    }

    /// Waits until everything queued on the device has finished (the emulated device runs
    /// every launch to completion before returning: nothing to wait for).
    pub fn synchronize(&self) -> Result<()> {
        if let Some(ctx) = &self.ctx {
            ctx.synchronize().map_err(|e| self.gpu_err("cuCtxSynchronize", e))?;
        }
        self.check_deferred()
    }

    /// The device address of the deferred-check words (see [`Deferred`]) for a kernel `op`
    /// is about to queue: it writes [size, index] of the first bad index it meets there
    /// (size > 0, so the first word doubles as the flag), and the next download or
    /// `synchronize` returns `Error::IndexOutOfRange` naming `op`.
    pub fn deferred_status(&self, op: &'static str) -> Result<u64> {
        DEFERRED.with(|map| {
            let mut map = map.borrow_mut();
            let d = match map.entry(self.device) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let words = self.alloc(16)?;
                    self.htod(words.ptr(), &[0u8; 16])?;
                    e.insert(Deferred { words, ops: Vec::new() })
                }
            };
            if !d.ops.contains(&op) {
                d.ops.push(op);
            }
            Ok(d.words.ptr())
        })
    }

    /// Reads this thread's deferred-check words if a kernel was queued with them since the
    /// last read (the caller has just waited for the device), and turns a report into the
    /// error.
    fn check_deferred(&self) -> Result<()> {
        let Some((ptr, ops)) = DEFERRED.with(|map| {
            let mut map = map.borrow_mut();
            let d = map.get_mut(&self.device).filter(|d| !d.ops.is_empty())?;
            Some((d.words.ptr(), std::mem::take(&mut d.ops)))
        }) else {
            return Ok(());
        };
        let mut words = [0u8; 16];
        // Not counted as a download: it follows one, with nothing of this thread's queued
        // after it to wait for.
        self.copy_to_host(ptr, &mut words, false)?;
        let size = u64::from_le_bytes(words[..8].try_into().expect("8 bytes"));
        let index = i64::from_le_bytes(words[8..].try_into().expect("8 bytes"));
        if size == 0 {
            return Ok(());
        }
        self.htod(ptr, &[0u8; 16])?;
        let op = if ops.len() == 1 { ops[0] } else { "an index check of an earlier op (several were queued)" };
        tracing::debug!(?ops, index, size, "a deferred index check failed");
        Err(Error::IndexOutOfRange { op, index, size: size as usize })
    }

    /// Device memory for `bytes` bytes (contents undefined: blocks are reused).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuf> {
        self.alloc.alloc(bytes, 0)
    }

    /// Host → device. On a GPU it returns once `src` has been read (into pinned staging):
    /// the device copy runs in stream order, before every kernel and copy queued after it.
    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if self.emulated() {
            // SAFETY: `dst` is a host address of a live block of at least src.len() bytes
            // (the callers size it), and host and block do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
            return Ok(());
        }
        self.bind()?;
        match &self.stager {
            // Staged: returns once `src` is copied to pinned memory; the device copy follows
            // in stream order, before any kernel queued after this call.
            Some(stager) => stager.lock().unwrap_or_else(|p| p.into_inner()).upload(dst, src),
            // SAFETY: `dst` is a device allocation of this context of at least src.len()
            // bytes; the copy is synchronous, so `src` outlives it.
            None => unsafe { cudarc::driver::result::memcpy_htod_sync(dst, src) }
                .map_err(|e| self.gpu_err("cuMemcpyHtoD", e)),
        }
    }

    /// (uploads, bytes) that went through the pinned staging buffers (GPU only).
    pub fn staged_uploads(&self) -> (usize, usize) {
        self.stager.as_ref().map_or((0, 0), |s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (s.uploads, s.bytes)
        })
    }

    /// Device → host. A download waits for the device, so it is also where the deferred
    /// index checks of the kernels before it are read (an error here may be an earlier op's:
    /// it names that op).
    pub fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.copy_to_host(src, dst, true)?;
        self.check_deferred()
    }

    fn copy_to_host(&self, src: u64, dst: &mut [u8], counted: bool) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if counted {
            super::counters::count_download();
        }
        if self.emulated() {
            // SAFETY: as in `htod`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
            return Ok(());
        }
        self.bind()?;
        // SAFETY: `src` is a device allocation of at least dst.len() bytes; synchronous copy
        // (it also waits for the kernels queued before it on the legacy default stream).
        unsafe { cudarc::driver::result::memcpy_dtoh_sync(dst, src) }.map_err(|e| self.gpu_err("cuMemcpyDtoH", e))
    }

    /// Device → device (`bytes` bytes; the regions may not overlap).
    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if self.emulated() {
            // SAFETY: both are host addresses of live blocks of at least `bytes` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both are device allocations of this context of at least `bytes` bytes.
        unsafe { cudarc::driver::result::memcpy_dtod_sync(dst, src, bytes) }
            .map_err(|e| self.gpu_err("cuMemcpyDtoD", e))
    }
}
