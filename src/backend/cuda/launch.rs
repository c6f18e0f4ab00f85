//! One launch path for the real GPU and the emulator: kernels take their arguments as
//! cuLaunchKernel does, an array of pointers to the argument values.

use crate::Result;
use std::ffi::c_void;

/// (x, y, z) of a grid or block.
pub type Dim3 = (u32, u32, u32);

/// Something that runs a kernel by name.
pub trait Launcher {
    fn launch(&self, kernel: &str, grid: Dim3, block: Dim3, shared_bytes: u32, args: &mut [*mut c_void]) -> Result<()>;
}

/// Threads per block of the elementwise and row kernels.
pub const BLOCK: u32 = 256;

/// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
pub fn grid_for(n: usize) -> u32 {
    (n.div_ceil(BLOCK as usize)).clamp(1, 65_535) as u32
}

/// `&mut value` as the untyped pointer the launch array holds.
pub fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}
