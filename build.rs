//! Build script: the CUDA kernels in kernels/*.cu serve two builds.
//! 1. Embedded for NVRTC: each kernel file with its `#include "..."` of local headers
//!    expanded, as `OUT_DIR/kernels.rs` (`SOURCES: &[(file name, source)]`); compiled for the
//!    GPU's own architecture at first use.
//! 2. Compiled for the host as C++20 against kernels/emu (the CUDA emulation layer) into a
//!    static library, so that every CI run executes the real kernel code on CPU threads.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    kernels.sort();

    // 1. Sources for NVRTC, local includes expanded (NVRTC gets no file system at run time).
    let mut rs = String::from("/// Kernel files with local includes expanded: (file name, CUDA source).\npub const SOURCES: &[(&str, &str)] = &[\n");
    for k in &kernels {
        let mut seen = HashSet::new();
        let src = expand(k, &dir, &mut seen);
        let name = k.file_name().and_then(|n| n.to_str()).expect("utf-8 file name");
        writeln!(rs, "    ({name:?}, {src:?}),").expect("write to String");
    }
    rs.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("kernels.rs"), rs).expect("write kernels.rs");

    // 2. The same files as host C++ on the emulator.
    let mut b = cc::Build::new();
    b.cpp(true).std("c++20").include(&dir).warnings(false).flag_if_supported("-pthread").opt_level(2);
    b.file(dir.join("emu").join("emu.cpp"));
    for k in &kernels {
        // cc treats .cu as CUDA; a copy named .cpp keeps it C++.
        let cpp = out.join(format!("{}.cpp", k.file_stem().and_then(|s| s.to_str()).expect("utf-8")));
        std::fs::write(&cpp, format!("#include {:?}\n", k.display().to_string())).expect("write wrapper");
        b.file(cpp);
    }
    // Whole archive: kernels register themselves from static initialisers that nothing
    // references by symbol, so a plain static link would drop them.
    b.link_lib_modifier("+whole-archive");
    b.compile("kiln_emu");
}

/// The file with each `#include "local.h"` replaced by that file (once per file).
fn expand(path: &Path, dir: &Path, seen: &mut HashSet<PathBuf>) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let local = t.strip_prefix("#include \"").and_then(|r| r.strip_suffix('"'));
        match local {
            Some(inc) if dir.join(inc).is_file() && !inc.starts_with("emu/") => {
                let p = dir.join(inc);
                if seen.insert(p.clone()) {
                    out.push_str(&expand(&p, dir, seen));
                }
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
