//! Launching the kernels of kernels/*.cu on a real GPU.
//!
//! At first use every kernel file (kernels::SOURCES) is compiled with NVRTC for the device's
//! own compute capability (`compute_XY`), loaded with cuModuleLoadData, and each kernel's
//! CUfunction is kept by name. Compiling all files costs seconds, so the PTX is cached on
//! disk ([`PtxCache`]), keyed by the source, the architecture and the NVRTC version. Where the
//! driver refuses the PTX (an NVRTC of a newer CUDA release than the driver's), the file is
//! compiled for the real architecture (`sm_XY`) and its CUBIN loaded instead; the cache keeps
//! that too, as hex text under the `sm_XY` key.
//!
//! The PTX cache and the compile step run without a GPU (NVRTC alone) and are tested on CPU
//! machines; the driver part ([`GpuLauncher`]) is kept short.

use super::launch::{Dim3, Launcher};
use super::{kernels, nvrtc, probe};
use crate::{Device, Error, Result};
use cudarc::driver::{sys, CudaContext, CudaStream};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The version of the NVRTC library the probe found, e.g. (13, 0).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc::available() {
        return Err(Error::invalid("nvrtc", "NVRTC (libnvrtc.so) was not found; see `kiln info`"));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the probe loaded NVRTC, so the symbol resolves (no panic); the call only writes
    // the two integers it is given.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::invalid("nvrtc", format!("nvrtcVersion failed: {e}")))?;
    Ok((major, minor))
}

/// The CUDA version of the driver, e.g. (13, 0): the newest PTX it can load is that
/// release's. Err without a driver.
pub fn driver_version() -> Result<(i32, i32)> {
    if probe::probe().driver.found.is_none() {
        return Err(Error::DeviceUnavailable { device: Device::Cuda(0), msg: "no CUDA driver found".into() });
    }
    let mut v = 0;
    // SAFETY: the probe loaded the driver, so the symbol resolves; the call writes one int
    // and needs no cuInit.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| Error::DeviceUnavailable { device: Device::Cuda(0), msg: format!("cuDriverGetVersion: {e}") })?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// PTX of `source` (named `name` in messages) for `arch` (e.g. "compute_90"). A compile
/// failure is [`Error::Kernel`] carrying NVRTC's log, line breaks intact.
pub fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<String> {
    nvrtc_compile(name, source, arch, false).map(|(ptx, _)| ptx)
}

/// The device's own machine code (a CUBIN, an ELF image) of `source` for the real
/// architecture `arch` (e.g. "sm_90"). Loading it needs no PTX JIT, so it also loads where the
/// driver is older than NVRTC: a driver rejects PTX of a newer CUDA release
/// (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) but runs a CUBIN of the same major release.
pub fn compile_cubin(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    if !arch.starts_with("sm_") {
        return Err(Error::Kernel {
            kernel: name.to_string(),
            msg: format!("a CUBIN needs a real architecture (sm_XY), not {arch}"),
        });
    }
    nvrtc_compile(name, source, arch, true).map(|(_, cubin)| cubin.unwrap_or_default())
}

fn nvrtc_compile(name: &str, source: &str, arch: &str, want_cubin: bool) -> Result<(String, Option<Vec<u8>>)> {
    let fail = |msg: String| Error::Kernel { kernel: name.to_string(), msg };
    if !nvrtc::available() {
        return Err(fail("NVRTC (libnvrtc.so) was not found; see `kiln info`".into()));
    }
    let includes = nvrtc::include_dirs();
    if includes.is_empty() {
        return Err(fail(
            "cuda_fp16.h not found: install the CUDA headers (pip install nvidia-cuda-runtime) or set CUDA_HOME".into(),
        ));
    }
    // cudarc's compile_program unwraps CString::new on each option: keep NUL out of them.
    let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string()];
    opts.extend(includes.iter().map(|d| format!("--include-path={}", d.display())));
    if opts.iter().any(|o| o.contains('\0')) {
        return Err(fail("a compile option contains a NUL byte".into()));
    }
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&cname))
        .map_err(|e| fail(format!("nvrtcCreateProgram: {e}")))?;
    // SAFETY (the calls on `prog`): it was just created, `src` and `cname` outlive it, and it
    // is destroyed exactly once, after its last use.
    let compiled = unsafe { cudarc::nvrtc::result::compile_program(prog, &opts) };
    let out = match compiled {
        Ok(()) => unsafe { cudarc::nvrtc::result::get_ptx(prog) }
            .map_err(|e| fail(format!("nvrtcGetPTX: {e}")))
            .and_then(|ptx| {
                let cubin = if want_cubin { Some(unsafe { get_cubin(prog) }.map_err(fail)?) } else { None };
                Ok((c_text(&ptx), cubin))
            }),
        Err(e) => {
            let log = unsafe { cudarc::nvrtc::result::get_program_log(prog) }
                .map(|l| c_text(&l))
                .unwrap_or_else(|e| format!("(no log: {e})"));
            Err(fail(format!("NVRTC compile for {arch} failed ({e}):\n{log}")))
        }
    };
    let _ = unsafe { cudarc::nvrtc::result::destroy_program(prog) };
    out
}

/// The CUBIN of a program compiled for a real architecture.
///
/// # Safety
/// `prog` must be a live, successfully compiled NVRTC program.
unsafe fn get_cubin(prog: cudarc::nvrtc::sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    unsafe { cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e}"))?;
    if size == 0 {
        return Err("NVRTC made no CUBIN (was the architecture virtual, compute_XY?)".into());
    }
    let mut buf = vec![0u8; size];
    unsafe { cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast::<c_char>()) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e}"))?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|&b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char]).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    t.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
}

/// Text of a NUL-terminated C buffer (NVRTC's PTX and log end with a NUL).
fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The kernels of a PTX module: (name, number of parameters), in order.
pub fn ptx_entries(ptx: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize)> = None;
    for line in ptx.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(".visible .entry ").or_else(|| line.strip_prefix(".entry ")) {
            out.extend(open.take());
            let name = rest.split(['(', ' ']).next().unwrap_or("").to_string();
            // `name()` (no parameters) closes on the same line; otherwise one `.param` a line.
            let params = rest.matches(".param").count();
            if rest.contains(')') {
                out.push((name, params));
            } else {
                open = Some((name, params));
            }
        } else if let Some((_, n)) = open.as_mut() {
            if line.starts_with(".param") {
                *n += 1;
            } else if line.starts_with(')') {
                out.extend(open.take());
            }
        }
    }
    out.extend(open);
    out
}

/// The cache folder: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln (empty
/// values are ignored, and a relative XDG_CACHE_HOME too, as the XDG spec says).
pub fn cache_dir_from(kiln: Option<OsString>, xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(kiln)
        .or_else(|| set(xdg).filter(|p| p.is_absolute()).map(|p| p.join("kiln")))
        .or_else(|| set(home).map(|h| h.join(".cache").join("kiln")))
}

/// Compiled PTX on disk, one file per (source, arch, NVRTC version).
///
/// Each file starts with a header line naming the key, the source's length and CRC, and the
/// PTX's length and CRC; a file whose header or PTX does not match (truncated, corrupted,
/// from another source that collided on the 64-bit key) or that cannot be read is compiled
/// again and rewritten, never an error. Files are written with crate::io::write_atomic, so a
/// crash leaves either the old file or the new one; writing is best effort (a read-only
/// cache folder only costs the compile).
#[derive(Debug, Clone)]
pub struct PtxCache {
    dir: PathBuf,
}

impl PtxCache {
    /// A cache in `dir` (created when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> PtxCache {
        PtxCache { dir: dir.into() }
    }

    /// The cache in the default folder ([`cache_dir_from`] the environment), if there is one.
    pub fn from_env() -> Option<PtxCache> {
        let var = std::env::var_os;
        cache_dir_from(var("KILN_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME")).map(|d| PtxCache::new(d.join("ptx")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// 16 hex digits of a 64-bit FNV-1a hash of the source, arch and NVRTC version. A
    /// stable hash of our own: std's hasher may change between Rust releases.
    pub fn key(source: &str, arch: &str, nvrtc_version: (i32, i32)) -> String {
        let version = format!("{}.{}", nvrtc_version.0, nvrtc_version.1);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [b"kiln-ptx-v1".as_slice(), arch.as_bytes(), version.as_bytes(), source.as_bytes()] {
            // Each part ends with a 0xff (never in UTF-8), so ("ab","c") and ("a","bc") differ.
            for &b in part.iter().chain([0xffu8].iter()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }

    /// The file of `name` (a kernels/ file name) compiled for `arch`.
    pub fn path(&self, name: &str, source: &str, arch: &str, nvrtc_version: (i32, i32)) -> PathBuf {
        let stem = Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or("kernels");
        let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        self.dir.join(format!("{stem}-{arch}-{}.ptx", Self::key(source, arch, nvrtc_version)))
    }

    /// The PTX of `source` for `arch`: read from the cache, or made by `compile` and written
    /// to the cache. Only `compile`'s error is returned; cache trouble is logged and skipped.
    pub fn get_or_compile(
        &self,
        name: &str,
        source: &str,
        arch: &str,
        nvrtc_version: (i32, i32),
        compile: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let path = self.path(name, source, arch, nvrtc_version);
        let header = header_prefix(source, arch, nvrtc_version);
        match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes, &header) {
                Some(ptx) => return Ok(ptx),
                None => tracing::warn!("PTX cache entry {} is corrupt; compiling again", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("PTX cache entry {} is unreadable ({e}); compiling again", path.display()),
        }
        let ptx = compile()?;
        let written = std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
            .and_then(|()| crate::io::write_atomic(&path, &encode(&header, &ptx)));
        if let Err(e) = written {
            tracing::warn!("could not cache PTX: {e}");
        }
        Ok(ptx)
    }
}

/// The part of an entry's header line fixed by what was compiled.
fn header_prefix(source: &str, arch: &str, v: (i32, i32)) -> String {
    format!(
        "// kiln-ptx-cache v1 key={} arch={arch} nvrtc={}.{} src_len={} src_crc={:08x}",
        PtxCache::key(source, arch, v),
        v.0,
        v.1,
        source.len(),
        crc32fast::hash(source.as_bytes())
    )
}

fn encode(header: &str, ptx: &str) -> Vec<u8> {
    format!("{header} ptx_len={} ptx_crc={:08x}\n{ptx}", ptx.len(), crc32fast::hash(ptx.as_bytes())).into_bytes()
}

/// The PTX of a cache file, if its header is `header` and the PTX is intact.
fn decode(bytes: &[u8], header: &str) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (first, ptx) = text.split_once('\n')?;
    let tail = first.strip_prefix(header)?.strip_prefix(" ptx_len=")?;
    let (len, crc) = tail.split_once(" ptx_crc=")?;
    let ok = len.parse::<usize>().ok()? == ptx.len()
        && u32::from_str_radix(crc, 16).ok()? == crc32fast::hash(ptx.as_bytes())
        && !ptx.contains('\0');
    ok.then(|| ptx.to_string())
}

/// Modules loaded into one context and their kernels by name: (function, parameter count).
struct Loaded {
    ctx: Arc<CudaContext>,
    modules: Vec<sys::CUmodule>,
    functions: HashMap<String, (sys::CUfunction, usize)>,
}

// SAFETY: CUmodule and CUfunction are driver handles, not memory Rust reads; the driver API is
// thread-safe and the handles are valid in any thread once their context is current, which
// every use below makes it first.
unsafe impl Send for Loaded {}
// SAFETY: as for Send; shared access only copies handles out.
unsafe impl Sync for Loaded {}

impl Drop for Loaded {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return; // the context is gone or broken: its modules went with it
        }
        for &m in &self.modules {
            // SAFETY: each module was loaded once by `load_all` and is unloaded once here; no
            // launch can be in progress (launches borrow the launcher, which owns this).
            let _ = unsafe { cudarc::driver::result::module::unload(m) };
        }
    }
}

/// Compiled kernels of one GPU, shared by the launchers of its streams.
struct Shared {
    ctx: Arc<CudaContext>,
    arch: String,
    nvrtc_version: (i32, i32),
    cache: Option<PtxCache>,
    loaded: Mutex<Option<Loaded>>,
}

impl Shared {
    fn driver_err(&self, e: cudarc::driver::DriverError) -> Error {
        Error::DeviceUnavailable { device: Device::Cuda(self.ctx.ordinal()), msg: format!("CUDA driver: {e}") }
    }

    /// `f` of the loaded kernels, compiling and loading every kernel file at the first call.
    fn with_loaded<T>(&self, f: impl FnOnce(&Loaded) -> T) -> Result<T> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.is_none() {
            *loaded = Some(self.load_all()?); // an error leaves it unloaded: the next call retries
        }
        Ok(f(loaded.as_ref().expect("loaded just above")))
    }

    /// The kernel `name`: (function, parameter count).
    fn function(&self, name: &str) -> Result<(sys::CUfunction, usize)> {
        self.with_loaded(|l| l.functions.get(name).copied().ok_or(l.functions.len()))?.map_err(|n| Error::Kernel {
            kernel: name.to_string(),
            msg: format!("no such kernel in kernels/*.cu ({n} kernels loaded)"),
        })
    }

    /// Loads one kernel file's PTX; where the driver cannot JIT it (PTX of a newer CUDA
    /// release than the driver's, or no JIT), compiles the device's own CUBIN instead (also
    /// cached) and loads that. The context must be current.
    fn load_module(&self, file: &str, src: &str, ptx: &str) -> Result<sys::CUmodule> {
        let image = CString::new(ptx)
            .map_err(|_| Error::Kernel { kernel: file.to_string(), msg: "PTX contains a NUL byte".into() })?;
        // SAFETY: `image` is NUL-terminated PTX text, as cuModuleLoadData takes it; the
        // context is current (the caller bound it).
        let ptx_err = match unsafe { cudarc::driver::result::module::load_data(image.as_ptr().cast::<c_void>()) } {
            Ok(module) => return Ok(module),
            Err(e) => e,
        };
        use sys::CUresult::*;
        let jit_refused = matches!(
            ptx_err.0,
            CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                | CUDA_ERROR_INVALID_PTX
                | CUDA_ERROR_JIT_COMPILER_NOT_FOUND
                | CUDA_ERROR_NO_BINARY_FOR_GPU
        );
        let versions = format!("NVRTC {:?}, driver CUDA {:?}", self.nvrtc_version, driver_version().ok());
        if !jit_refused {
            return Err(Error::Kernel {
                kernel: file.to_string(),
                msg: format!("cuModuleLoadData: {ptx_err} ({versions})"),
            });
        }
        let sm = self.arch.replace("compute_", "sm_");
        tracing::warn!("the driver refused {file}'s PTX ({ptx_err}; {versions}): loading a CUBIN for {sm} instead");
        // The cache holds text: the CUBIN goes in as hex under its own arch ("sm_XY").
        let compile = || compile_cubin(file, src, &sm).map(|c| hex(&c));
        let text = match &self.cache {
            Some(cache) => cache.get_or_compile(file, src, &sm, self.nvrtc_version, compile)?,
            None => compile()?,
        };
        let cubin = unhex(&text)
            .ok_or_else(|| Error::Kernel { kernel: file.to_string(), msg: "cached CUBIN is not hex".into() })?;
        // SAFETY: `cubin` is a whole ELF image from NVRTC, alive during the call (the driver
        // copies it); the context is current.
        unsafe { cudarc::driver::result::module::load_data(cubin.as_ptr().cast::<c_void>()) }.map_err(|e| {
            Error::Kernel {
                kernel: file.to_string(),
                msg: format!("cuModuleLoadData: PTX refused ({ptx_err}), CUBIN for {sm} refused ({e}); {versions}"),
            }
        })
    }

    fn load_all(&self) -> Result<Loaded> {
        self.ctx.bind_to_thread().map_err(|e| self.driver_err(e))?;
        let mut loaded = Loaded { ctx: Arc::clone(&self.ctx), modules: Vec::new(), functions: HashMap::new() };
        for (file, src) in kernels::SOURCES {
            let compile = || compile_ptx(file, src, &self.arch);
            let ptx = match &self.cache {
                Some(cache) => cache.get_or_compile(file, src, &self.arch, self.nvrtc_version, compile)?,
                None => compile()?,
            };
            let module = self.load_module(file, src, &ptx)?;
            loaded.modules.push(module); // owned from here: unloaded by Drop even on a later error
            for (name, params) in ptx_entries(&ptx) {
                let cname = CString::new(name.as_str()).expect("PTX identifiers have no NUL");
                // SAFETY: `module` is loaded and not unloaded while `loaded` lives.
                let f = unsafe { cudarc::driver::result::module::get_function(module, cname) }
                    .map_err(|e| Error::Kernel { kernel: name.clone(), msg: format!("cuModuleGetFunction: {e}") })?;
                loaded.functions.insert(name, (f, params));
            }
        }
        Ok(loaded)
    }
}

/// Launches kernels/*.cu on one GPU, on one stream.
///
/// The stream is a raw `CUstream` as a `u64` (0: the legacy default stream), the same value
/// the caching allocator uses to tell streams apart ([`super::alloc::DeviceBuf::stream`]).
/// [`GpuLauncher::with_cuda_stream`] also holds the cudarc stream, keeping it alive as long as
/// the launcher; [`GpuLauncher::with_raw_stream`] leaves that to the caller. Launchers for
/// several streams of a GPU share one set of loaded kernels.
pub struct GpuLauncher {
    shared: Arc<Shared>,
    stream: u64,
    _stream_owner: Option<Arc<CudaStream>>,
}

impl GpuLauncher {
    /// A launcher for GPU `ordinal` on the legacy default stream. Err (never a panic) without
    /// a driver, a device or NVRTC. Kernels are compiled and loaded at the first launch.
    pub fn new(ordinal: usize) -> Result<GpuLauncher> {
        let device = Device::Cuda(ordinal);
        let unavailable = |msg: String| Error::DeviceUnavailable { device, msg };
        if probe::probe().driver.found.is_none() {
            return Err(unavailable("no CUDA driver (libcuda.so.1) found".into()));
        }
        if !nvrtc::available() {
            return Err(unavailable("NVRTC (libnvrtc.so) not found: kernels cannot be compiled".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("CUDA driver: {e}")))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| unavailable(format!("CUDA driver: {e}")))?;
        let shared = Shared {
            ctx,
            arch: format!("compute_{major}{minor}"),
            nvrtc_version: nvrtc_version()?,
            cache: PtxCache::from_env(),
            loaded: Mutex::new(None),
        };
        Ok(GpuLauncher { shared: Arc::new(shared), stream: 0, _stream_owner: None })
    }

    /// A launcher on `stream` (of this launcher's GPU), sharing the loaded kernels and holding
    /// the stream alive.
    pub fn with_cuda_stream(&self, stream: Arc<CudaStream>) -> Result<GpuLauncher> {
        if **stream.context() != *self.shared.ctx {
            return Err(Error::invalid("cuda launch", "the stream belongs to another GPU or context"));
        }
        let raw = stream.cu_stream() as usize as u64;
        Ok(GpuLauncher { shared: Arc::clone(&self.shared), stream: raw, _stream_owner: Some(stream) })
    }

    /// A launcher on the raw `CUstream` `stream`, sharing the loaded kernels.
    ///
    /// # Safety
    /// `stream` must be 0 or a stream of this launcher's context that stays alive (not
    /// destroyed) for as long as the returned launcher launches on it.
    pub unsafe fn with_raw_stream(&self, stream: u64) -> GpuLauncher {
        GpuLauncher { shared: Arc::clone(&self.shared), stream, _stream_owner: None }
    }

    /// Compiles (or reads from the cache) and loads every kernel now, instead of at the first launch.
    pub fn load(&self) -> Result<()> {
        self.shared.with_loaded(|_| ())
    }

    /// The NVRTC target, e.g. "compute_90".
    pub fn arch(&self) -> &str {
        &self.shared.arch
    }

    /// The `CUstream` launches go to, as a u64.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.shared.ctx
    }
}

impl Launcher for GpuLauncher {
    fn launch(&self, kernel: &str, grid: Dim3, block: Dim3, shared_bytes: u32, args: &mut [*mut c_void]) -> Result<()> {
        super::counters::count_launch();
        let (f, params) = self.shared.function(kernel)?;
        // cuLaunchKernel reads as many pointers as the kernel has parameters: a short array
        // would be read past its end, so check what the PTX declares.
        if params != args.len() {
            return Err(Error::invalid(
                "cuda launch",
                format!("{kernel} takes {params} arguments, {} given", args.len()),
            ));
        }
        self.shared.ctx.bind_to_thread().map_err(|e| self.shared.driver_err(e))?;
        // SAFETY: `f` is a function of a module loaded in this (now current) context and kept
        // loaded while `self` lives; `args` has one pointer per kernel parameter (checked
        // above), each to a live value of that parameter's type (the typed launchers in
        // kernels*.rs build them), and the device buffers they name are large enough for the
        // launch. The stream is 0 or a live stream of this context (see `with_*_stream`).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f,
                grid,
                block,
                shared_bytes,
                self.stream as usize as sys::CUstream,
                args,
            )
        }
        .map_err(|e| Error::Kernel { kernel: kernel.to_string(), msg: format!("cuLaunchKernel: {e}") })
    }
}

#[cfg(test)]
mod tests {
    use super::{hex, unhex};

    #[test]
    fn hex_round_trips_every_byte_and_rejects_what_is_not_hex() {
        let all: Vec<u8> = (0..=255u8).collect();
        let text = hex(&all);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 4..], "feff");
        assert_eq!(unhex(&text), Some(all));
        assert_eq!(unhex("abc"), None, "odd length");
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), Some(vec![]));
    }
}
