//! The emulated CUDA device's launch: the real kernels of kernels/*.cu, compiled for the host
//! by build.rs against kernels/emu, run on CPU threads. Same kernel names, grid, block,
//! shared memory and argument array (cuLaunchKernel's `void**` form) as a GPU launch; device
//! pointers are host addresses. A test device: `Device::best()` never picks it.

use super::launch::{Dim3, Launcher};
use crate::{Error, Result};
use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void, CStr, CString};

extern "C" {
    fn kiln_emu_launch(
        kernel: *const c_char,
        gx: c_uint,
        gy: c_uint,
        gz: c_uint,
        bx: c_uint,
        by: c_uint,
        bz: c_uint,
        shared_bytes: c_uint,
        args: *mut *mut c_void,
        err: *mut c_char,
        errlen: c_ulong,
    ) -> c_int;
    fn kiln_emu_kernel_count() -> c_int;
    fn kiln_emu_kernel_name(i: c_int) -> *const c_char;
    fn kiln_emu_kernel_num_params(kernel: *const c_char) -> c_int;
}

/// Launches kernels on the host emulator.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmuLauncher;

impl Launcher for EmuLauncher {
    fn launch(&self, kernel: &str, grid: Dim3, block: Dim3, shared_bytes: u32, args: &mut [*mut c_void]) -> Result<()> {
        super::counters::count_launch();
        let name = CString::new(kernel).map_err(|_| Error::invalid("emu launch", "kernel name contains NUL"))?;
        // SAFETY: `name` is a valid C string; the call only reads it.
        let want = unsafe { kiln_emu_kernel_num_params(name.as_ptr()) };
        if want >= 0 && want as usize != args.len() {
            return Err(Error::invalid("emu launch", format!("{kernel} takes {want} arguments, {} given", args.len())));
        }
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: every args[i] points to a live value of the kernel's i-th parameter type
        // (the typed launch functions in kernels.rs build them), buffers they point to are
        // host allocations large enough for the launch, and `err` has the length passed.
        let rc = unsafe {
            kiln_emu_launch(
                name.as_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                shared_bytes,
                args.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len() as c_ulong,
            )
        };
        if rc != 0 {
            // SAFETY: the emulator wrote a NUL-terminated message into `err`.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Kernel { kernel: kernel.to_string(), msg });
        }
        Ok(())
    }
}

/// Names of every kernel compiled into the emulator.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain queries of the registry; names are static NUL-terminated strings.
    unsafe {
        (0..kiln_emu_kernel_count())
            .filter_map(|i| {
                let p = kiln_emu_kernel_name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect()
    }
}
