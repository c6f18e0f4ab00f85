#!/usr/bin/env python3
"""Compiles kernel files with NVRTC, as the GPU path does, without needing a GPU.

    python3 kernels/emu/nvrtc_check.py [--cuda DIR] [--arch compute_80,compute_90] FILE.cu ...

DIR holds lib/libnvrtc.so.* and include/cuda_fp16.h: the `nvidia/cu13` folder of the PyPI
wheels nvidia-cuda-nvrtc==13.0.* and nvidia-cuda-runtime==13.0.* (NVRTC has no standard
headers; cuda_fp16.h comes from the runtime wheel). Without --cuda, $KILN_CUDA_DIR, then
nvidia/cu13 under this interpreter's site-packages and /tmp/nvrtc-venv, then
/usr/local/cuda are tried.

For each file and architecture: compile with -std=c++17 -I kernels -I DIR/include, print
the log (errors and warnings), and check that every KILN_REGISTER(name) in the source is a
PTX entry point of that name (extern "C", so unmangled). Exit status 0 when all compile.
"""
import argparse
import ctypes
import glob
import os
import re
import site
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.dirname(HERE)  # kernels/, where prelude.cuh is


def find_cuda_dir():
    candidates = [os.environ.get("KILN_CUDA_DIR", "")]
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        candidates.append(os.path.join(sp, "nvidia", "cu13"))
    candidates += glob.glob("/tmp/nvrtc-venv/lib/python3*/site-packages/nvidia/cu13")
    candidates += ["/usr/local/cuda"]
    for d in candidates:
        if d and glob.glob(os.path.join(d, "lib*", "libnvrtc.so*")) and os.path.exists(
            os.path.join(d, "include", "cuda_fp16.h")
        ):
            return d
    sys.exit("nvrtc_check: no CUDA folder with lib/libnvrtc.so* and include/cuda_fp16.h; pass --cuda DIR")


def load_nvrtc(cuda_dir):
    libs = sorted(glob.glob(os.path.join(cuda_dir, "lib*", "libnvrtc.so.*")))
    libs = [l for l in libs if "builtins" not in l and ".alt." not in l]
    if not libs:
        sys.exit(f"nvrtc_check: no libnvrtc.so.* under {cuda_dir}")
    # NVRTC dlopens libnvrtc-builtins.so.X.Y by name at compile time and, loaded by absolute
    # path from a folder not on the search path, does not find it beside itself: preload it
    # (RTLD_GLOBAL), so that the dlopen by soname finds the copy already in the process.
    for b in glob.glob(os.path.join(os.path.dirname(libs[0]), "libnvrtc-builtins.so.*")):
        if ".alt." not in b:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
    nvrtc = ctypes.CDLL(libs[0])
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    return nvrtc, libs[0]


def check(nvrtc, call, what):
    rc = call
    if rc != 0:
        raise RuntimeError(f"{what}: {nvrtc.nvrtcGetErrorString(rc).decode()}")


def compile_one(nvrtc, path, arch, include_dirs):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    check(
        nvrtc,
        nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    opts = [f"--gpu-architecture={arch}", "-std=c++17"] + [f"-I{d}" for d in include_dirs]
    opts_c = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), opts_c)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if rc == 0:
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        check(nvrtc, nvrtc.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        ptx = buf.value
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace").strip(), ptx.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--cuda", help="folder with lib/libnvrtc.so.* and include/")
    ap.add_argument("--arch", default="compute_80,compute_90")
    ap.add_argument("--ptx-dir", help="write FILE.ARCH.ptx files here")
    args = ap.parse_args()

    cuda_dir = args.cuda or find_cuda_dir()
    nvrtc, lib = load_nvrtc(cuda_dir)
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"NVRTC {major.value}.{minor.value} ({lib})")
    include_dirs = [KERNELS, os.path.join(cuda_dir, "include")]

    ok = True
    for path in args.files:
        # Direct registrations only: inside a #define the argument is a macro parameter.
        text = re.sub(r"\\\n", " ", open(path).read())  # join continued lines
        text = re.sub(r"^\s*#\s*define.*$", "", text, flags=re.M)
        registered = re.findall(r"\bKILN_REGISTER\((\w+)\)", text)
        for arch in args.arch.split(","):
            rc, log, ptx = compile_one(nvrtc, path, arch, include_dirs)
            if rc != 0:
                ok = False
                print(f"FAIL {path} [{arch}]: {nvrtc.nvrtcGetErrorString(rc).decode()}\n{log}")
                continue
            entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx))
            missing = [k for k in registered if k not in entries]
            if missing:
                ok = False
            print(
                f"{'ok  ' if not missing else 'FAIL'} {path} [{arch}]: {len(ptx)} bytes of PTX, "
                f"{len(entries)} entries" + (f"; registered but not entries: {missing}" if missing else "")
            )
            if log:
                print(log)
            if args.ptx_dir:
                os.makedirs(args.ptx_dir, exist_ok=True)
                name = os.path.basename(path).rsplit(".", 1)[0]
                with open(os.path.join(args.ptx_dir, f"{name}.{arch}.ptx"), "w") as f:
                    f.write(ptx)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
