//! Finding the CUDA libraries without panicking. cudarc loads each library lazily by
//! soname and panics when it is missing, so every library is probed first with cudarc's
//! `is_culib_present`; when the default search fails, the places users keep CUDA are searched
//! (CUDA_HOME / CUDA_PATH, /usr/local/cuda, the `nvidia/*/lib` folders of Python environments
//! that hold PyTorch's CUDA wheels) and the library is loaded once by absolute path with
//! RTLD_GLOBAL, so cudarc's later load by soname finds it already in the process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where one library was found, or why not.
#[derive(Debug, Clone)]
pub struct LibStatus {
    pub name: &'static str,
    /// None: not found. Some(where): "system search path" or the absolute path preloaded.
    pub found: Option<String>,
    /// When not found although a file of it loads: why, and what to do.
    pub hint: Option<String>,
}

impl LibStatus {
    /// "not found", with the hint when there is one.
    pub fn why_missing(&self) -> String {
        match &self.hint {
            Some(h) => format!("not found: {h}"),
            None => "not found".into(),
        }
    }
}

/// What the probe found, once per process.
#[derive(Debug, Clone)]
pub struct Probe {
    pub driver: LibStatus,
    pub nvrtc: LibStatus,
    pub cublas: LibStatus,
    pub nccl: LibStatus,
    /// The directories searched beyond the system's own search path.
    pub searched: Vec<PathBuf>,
}

/// Probes (once) and returns what was found.
pub fn probe() -> &'static Probe {
    static P: OnceLock<Probe> = OnceLock::new();
    P.get_or_init(run_probe)
}

fn run_probe() -> Probe {
    let dirs = search_dirs();
    // SAFETY (all four closures): `is_culib_present` only tries to dlopen the library by its
    // candidate names and drops the handle; it neither panics nor calls into the library.
    let driver = find("cuda (driver)", &["libcuda.so.1", "libcuda.so"], &dirs, || unsafe {
        cudarc::driver::sys::is_culib_present()
    });
    let nvrtc = find("nvrtc", &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], &dirs, || unsafe {
        cudarc::nvrtc::sys::is_culib_present()
    });
    // cuBLAS needs cuBLASLt loaded first when both come from a wheel folder.
    let _ = find("cublasLt", &["libcublasLt.so.13", "libcublasLt.so.12"], &dirs, || false);
    let cublas = find("cublas", &["libcublas.so.13", "libcublas.so.12", "libcublas.so"], &dirs, || unsafe {
        cudarc::cublas::sys::is_culib_present()
    });
    let nccl =
        find("nccl", &["libnccl.so.2", "libnccl.so"], &dirs, || unsafe { cudarc::nccl::sys::is_culib_present() });
    Probe { driver, nvrtc, cublas, nccl, searched: dirs }
}

/// cuDNN, probed on first use (a convolution on a GPU, `kiln info`), not with the rest: its
/// engine libraries are hundreds of MB, loaded only by a process that convolves on a GPU.
pub fn cudnn() -> &'static LibStatus {
    static C: OnceLock<LibStatus> = OnceLock::new();
    C.get_or_init(|| {
        // SAFETY: as in `run_probe`: `is_culib_present` only tries to dlopen by name.
        find("cudnn", &["libcudnn.so.9", "libcudnn.so"], &probe().searched, || unsafe {
            cudarc::cudnn::sys::is_culib_present()
        })
    })
}

/// cuDNN 9's libcudnn.so is a dispatcher that dlopens its sub-libraries by bare soname when
/// a call needs them (not DT_NEEDED, so a wheel folder's RUNPATH does not reach them): load
/// those beside it first, dependencies before dependants, so that lookup finds them in the
/// process. The adv (RNN / attention) library is left out: convolutions never ask for it.
const CUDNN_SUBLIBS: [&str; 6] = [
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
    "libcudnn_engines_precompiled.so.9",
];

fn find(name: &'static str, files: &[&str], dirs: &[PathBuf], present: impl Fn() -> bool) -> LibStatus {
    if present() {
        return LibStatus { name, found: Some("system library search path".into()), hint: None };
    }
    let mut hint = None;
    for dir in dirs {
        for f in files {
            let path = dir.join(f);
            if !path.is_file() {
                continue;
            }
            if name == "nvrtc" {
                // NVRTC dlopens libnvrtc-builtins by soname at compile time: load the one
                // beside it first, so that lookup finds it in the process.
                for b in list(dir).into_iter().filter(|p| file_name(p).starts_with("libnvrtc-builtins.so")) {
                    preload(&b);
                }
            }
            if name == "cudnn" {
                for sub in CUDNN_SUBLIBS.iter().map(|f| dir.join(f)).filter(|p| p.is_file()) {
                    preload(&sub);
                }
            }
            if !preload(&path) {
                continue;
            }
            if present() || name == "cublasLt" {
                return LibStatus { name, found: Some(path.display().to_string()), hint: None };
            }
            hint.get_or_insert_with(|| unlisted_name_hint(name, &path));
        }
    }
    LibStatus { name, found: None, hint }
}

/// The library at `path` loads, but cudarc opens libraries only by its own list of names
/// (for NCCL: libnccl.so and libnccl.so.<N> for a few N, not the wheel's libnccl.so.2), and
/// glibc matches a loaded library only by its path or soname, so the preload does not help.
/// What does: a link with a listed name in a folder on LD_LIBRARY_PATH (read at process
/// start). Makes that link in Kiln's cache folder when it can, and says how to use it.
fn unlisted_name_hint(name: &str, path: &Path) -> String {
    let stem = name.split(' ').next().unwrap_or(name);
    let link_name = format!("lib{stem}.so");
    let made = super::gpu::cache_dir_from(
        std::env::var_os("KILN_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
    .map(|d| d.join("lib"))
    .filter(|dir| {
        let link = dir.join(&link_name);
        let _ = std::fs::remove_file(&link);
        std::fs::create_dir_all(dir).is_ok() && std::os::unix::fs::symlink(path, &link).is_ok()
    });
    match made {
        Some(dir) => format!(
            "{} loads, but cudarc opens {stem} only as {link_name} or {link_name}.<N> (not this file's name); \
             linked it as {}: start kiln with LD_LIBRARY_PATH={}:$LD_LIBRARY_PATH",
            path.display(),
            dir.join(&link_name).display(),
            dir.display()
        ),
        None => format!(
            "{} loads, but cudarc opens {stem} only as {link_name} or {link_name}.<N> (not this file's name): \
             link it as {link_name} in a folder and put that folder on LD_LIBRARY_PATH",
            path.display()
        ),
    }
}

/// dlopen by absolute path, RTLD_NOW | RTLD_GLOBAL, kept loaded for the process's life.
fn preload(path: &Path) -> bool {
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA
    // libraries found in CUDA install or wheel folders, loaded exactly as cudarc itself would.
    match unsafe { libloading::os::unix::Library::open(Some(path), libc::RTLD_NOW | libc::RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib); // never unload: cudarc holds symbols from it
            true
        }
        Err(e) => {
            tracing::debug!("could not load {}: {e}", path.display());
            false
        }
    }
}

/// CUDA_HOME / CUDA_PATH, /usr/local/cuda, and Python environments' NVIDIA wheel folders.
fn search_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = std::env::var_os(var) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut dirs: Vec<PathBuf> =
        roots.iter().flat_map(|r| [r.join("lib64"), r.join("lib"), r.join("targets/x86_64-linux/lib")]).collect();
    // Python environments: the active ones, then the usual places.
    let mut envs: Vec<PathBuf> =
        ["VIRTUAL_ENV", "CONDA_PREFIX"].iter().filter_map(|v| std::env::var_os(v).map(PathBuf::from)).collect();
    envs.extend(glob_dirs(Path::new("/opt"), &[".venv", "venv"]));
    if let Some(home) = std::env::var_os("HOME") {
        envs.push(PathBuf::from(home).join(".local"));
    }
    envs.push(PathBuf::from("/usr/local"));
    envs.push(PathBuf::from("/usr"));
    for env in envs {
        for lib in ["lib", "lib64"] {
            for py in list(&env.join(lib)).into_iter().filter(|p| file_name(p).starts_with("python3")) {
                for sp in ["site-packages", "dist-packages"] {
                    let nv = py.join(sp).join("nvidia");
                    for pkg in list(&nv) {
                        dirs.push(pkg.join("lib"));
                    }
                }
            }
        }
    }
    // One entry per real directory (venvs often link lib64 to lib).
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| d.is_dir() && seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone())));
    dirs
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// `/opt/<any>/<sub>` for each sub name.
fn glob_dirs(base: &Path, subs: &[&str]) -> Vec<PathBuf> {
    list(base).into_iter().flat_map(|d| subs.iter().map(move |s| d.join(s))).filter(|p| p.is_dir()).collect()
}
