//! Compiling kernels to PTX with NVRTC. The CUDA headers the kernels include (cuda_fp16.h,
//! cuda_bf16.h) come from the `include` folder beside the NVRTC library that the probe
//! found, or from CUDA_HOME/include.

use super::probe;
use crate::{Error, Result};
use std::path::PathBuf;

/// Folders holding cuda_fp16.h, next to where NVRTC was found.
pub fn include_dirs() -> Vec<PathBuf> {
    let p = probe::probe();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(lib) = p.nvrtc.found.as_deref().map(PathBuf::from) {
        if let Some(parent) = lib.parent().and_then(|d| d.parent()) {
            dirs.push(parent.join("include"));
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    for d in &p.searched {
        if let Some(parent) = d.parent() {
            dirs.push(parent.join("include"));
        }
    }
    dirs.retain(|d| d.join("cuda_fp16.h").is_file());
    dirs.dedup();
    dirs
}

/// Whether NVRTC can be loaded in this process.
pub fn available() -> bool {
    probe::probe().nvrtc.found.is_some()
}

/// PTX of `source` (a file of kernels::SOURCES) for `arch` (e.g. "compute_90"). A compile
/// failure is an error carrying NVRTC's log.
pub fn compile(name: &str, source: &str, arch: &'static str) -> Result<String> {
    if !available() {
        return Err(Error::invalid("nvrtc", "NVRTC (libnvrtc.so) was not found; see `kiln info`"));
    }
    let includes = include_dirs();
    if includes.is_empty() {
        return Err(Error::invalid(
            "nvrtc",
            "cuda_fp16.h not found: install the CUDA headers (pip install nvidia-cuda-runtime) or set CUDA_HOME",
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: includes.iter().map(|d| d.display().to_string()).collect(),
        options: vec!["-std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| Error::Kernel {
        kernel: name.to_string(),
        msg: format!("NVRTC compile for {arch} failed: {e:?}"),
    })?;
    Ok(ptx.to_src())
}
