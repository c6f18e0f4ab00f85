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

/// Kernel launches so far, every device and launcher together.
static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Kernel launches so far in this process (library calls, cuBLAS and cuDNN, not counted).
/// Each costs the host a few microseconds on a GPU, so a step of many small ops is bound by
/// the host: `kiln bench-resnet` reports launches per step, a figure that the emulated
/// device gives exactly as a GPU does.
pub fn launches() -> u64 {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    static THREAD_LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Kernel launches so far from the calling thread (for tests that run beside others).
pub fn launches_on_this_thread() -> u64 {
    THREAD_LAUNCHES.with(|n| n.get())
}

/// Called by each launcher for each launch.
pub(crate) fn count_launch() {
    LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    THREAD_LAUNCHES.with(|n| n.set(n.get() + 1));
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
