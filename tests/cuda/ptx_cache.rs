//! The on-disk PTX cache of the GPU launcher, with real NVRTC: the first request compiles and
//! writes, the next reads without compiling, a corrupt or unreadable entry is compiled again,
//! another architecture or NVRTC version is another entry. Also: a compile error carries
//! NVRTC's log, and without a driver the GPU launcher and memory are errors, not panics.

use super::nvrtc_required;
use kiln::backend::cuda::gpu::{cache_dir_from, compile_ptx, nvrtc_version, ptx_entries, GpuLauncher, PtxCache};
use kiln::backend::cuda::{alloc::GpuMemory, kernels, nvrtc, probe};
use std::cell::Cell;
use std::path::PathBuf;

/// NVRTC with its headers, or None (a skip, or a failure where CI requires NVRTC).
fn have_nvrtc() -> bool {
    if nvrtc::available() && !nvrtc::include_dirs().is_empty() {
        return true;
    }
    assert!(!nvrtc_required(), "KILN_REQUIRE_NVRTC=1 but NVRTC or its headers were not found: {:?}", probe::probe());
    eprintln!("skipped: NVRTC not found");
    false
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ptx-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn ptx_is_compiled_once_then_read_from_disk_and_recompiled_when_corrupt() {
    if !have_nvrtc() {
        return;
    }
    let version = nvrtc_version().unwrap();
    assert!(version.0 >= 12, "{version:?}");
    // The smallest kernel file keeps the test quick.
    let (name, src) = *kernels::SOURCES.iter().min_by_key(|(_, s)| s.len()).unwrap();
    let dir = temp_dir("cycle");
    let cache = PtxCache::new(&dir);
    let compiles = Cell::new(0);
    let get = |arch: &str| {
        cache
            .get_or_compile(name, src, arch, version, || {
                compiles.set(compiles.get() + 1);
                compile_ptx(name, src, arch)
            })
            .unwrap()
    };

    let first = get("compute_80");
    assert_eq!(compiles.get(), 1);
    let path = cache.path(name, src, "compute_80", version);
    assert!(path.is_file(), "{} was not written", path.display());
    assert!(!ptx_entries(&first).is_empty());
    assert!(first.contains(".target sm_80"));

    // From disk, no compile.
    assert_eq!(get("compute_80"), first);
    assert_eq!(compiles.get(), 1);

    // One byte flipped in the PTX: detected, compiled again, entry repaired.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() - first.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(get("compute_80"), first);
    assert_eq!(compiles.get(), 2);
    assert_eq!(get("compute_80"), first);
    assert_eq!(compiles.get(), 2, "the repaired entry is read again");

    // Truncated, not UTF-8, empty: each compiled again.
    for bad in [bytes[..bytes.len() / 2].to_vec(), vec![0xff, 0xfe, 0x00, 0x80], Vec::new()] {
        std::fs::write(&path, &bad).unwrap();
        let n = compiles.get();
        assert_eq!(get("compute_80"), first);
        assert_eq!(compiles.get(), n + 1);
    }

    // Another architecture: another entry, other PTX; the first stays.
    let other = get("compute_90");
    assert_eq!(compiles.get(), 6);
    let path90 = cache.path(name, src, "compute_90", version);
    assert_ne!(path90, path);
    assert!(path90.is_file() && path.is_file());
    assert!(other.contains(".target sm_90"));
    assert_eq!(get("compute_90"), other);
    assert_eq!(get("compute_80"), first);
    assert_eq!(compiles.get(), 6);

    // Unreadable entry (a directory where the file should be): compiled, not fatal, even
    // though the new entry cannot be written either.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert_eq!(get("compute_80"), first);
    assert_eq!(compiles.get(), 7);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keys_depend_on_source_arch_and_nvrtc_version() {
    let k = PtxCache::key("src", "compute_80", (13, 0));
    assert_eq!(k.len(), 16);
    assert_eq!(k, PtxCache::key("src", "compute_80", (13, 0)), "stable");
    assert_ne!(k, PtxCache::key("src ", "compute_80", (13, 0)));
    assert_ne!(k, PtxCache::key("src", "compute_90", (13, 0)));
    assert_ne!(k, PtxCache::key("src", "compute_80", (13, 1)));
    assert_ne!(k, PtxCache::key("src", "compute_80", (12, 0)));
    let c = PtxCache::new("/x");
    assert!(c.path("elementwise.cu", "src", "compute_80", (13, 0)).starts_with("/x"));
    assert!(c
        .path("elementwise.cu", "src", "compute_80", (13, 0))
        .to_string_lossy()
        .contains("elementwise-compute_80-"));
}

#[test]
fn a_failed_compile_is_not_cached_and_carries_the_log() {
    if !have_nvrtc() {
        return;
    }
    let src = "extern \"C\" __global__ void broken(float* y) { y[0] = no_such_variable; }\n";
    let e = compile_ptx("broken.cu", src, "compute_80").unwrap_err();
    match &e {
        kiln::Error::Kernel { kernel, msg } => {
            assert_eq!(kernel, "broken.cu");
            assert!(msg.contains("no_such_variable") && msg.contains("compute_80"), "{msg}");
        }
        other => panic!("expected Error::Kernel, got {other:?}"),
    }
    let dir = temp_dir("fail");
    let cache = PtxCache::new(&dir);
    let version = nvrtc_version().unwrap();
    let r =
        cache.get_or_compile("broken.cu", src, "compute_80", version, || compile_ptx("broken.cu", src, "compute_80"));
    assert!(matches!(r, Err(kiln::Error::Kernel { .. })));
    assert!(!cache.path("broken.cu", src, "compute_80", version).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ptx_entries_count_each_kernels_parameters() {
    if !have_nvrtc() {
        return;
    }
    let (name, src) = *kernels::SOURCES.iter().find(|(n, _)| *n == "elementwise.cu").unwrap();
    let ptx = compile_ptx(name, src, "compute_80").unwrap();
    let entries = ptx_entries(&ptx);
    // fill_f32(int64_t n, float v, float* y)
    assert!(entries.contains(&("fill_f32".to_string(), 3)), "{entries:?}");
    let mut emu = kiln::backend::cuda::emu::kernel_names();
    emu.sort();
    assert!(entries.iter().all(|(n, _)| emu.contains(n)));
    assert_eq!(ptx_entries(".visible .entry k()\n{\nret;\n}\n"), vec![("k".to_string(), 0)]);
}

#[test]
fn cache_folder_precedence() {
    let s = |v: &str| Some(std::ffi::OsString::from(v));
    assert_eq!(cache_dir_from(s("/k"), s("/x"), s("/h")), Some(PathBuf::from("/k")));
    assert_eq!(cache_dir_from(None, s("/x"), s("/h")), Some(PathBuf::from("/x/kiln")));
    assert_eq!(cache_dir_from(s(""), s("rel"), s("/h")), Some(PathBuf::from("/h/.cache/kiln")));
    assert_eq!(cache_dir_from(None, None, None), None);
}

#[test]
fn without_a_driver_the_gpu_launcher_and_memory_are_errors() {
    if probe::probe().driver.found.is_some() {
        eprintln!("skipped: a CUDA driver is present");
        return;
    }
    assert!(matches!(GpuLauncher::new(0), Err(kiln::Error::DeviceUnavailable { .. })));
    assert!(matches!(GpuMemory::new(0), Err(kiln::Error::DeviceUnavailable { .. })));
}
