//! What a GPU step costs the host, counted: kernel launches (a few microseconds of host time
//! each, so a step of many small ops is bound by the host) and downloads (each a sync: the
//! host waits for the GPU's whole queue to drain, and the GPU then idles until the host
//! queues more). `kiln bench-resnet` reports both per step; the emulated device counts
//! them exactly as a GPU does, so tests can bound them without one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_LAUNCHES: Cell<u64> = const { Cell::new(0) };
    static THREAD_DOWNLOADS: Cell<u64> = const { Cell::new(0) };
}

/// Kernel launches so far in this process, every device (library calls, cuBLAS and cuDNN,
/// not counted).
pub fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Kernel launches so far from the calling thread (for tests that run beside others).
pub fn launches_on_this_thread() -> u64 {
    THREAD_LAUNCHES.with(|n| n.get())
}

/// Device-to-host copies so far in this process, every device.
pub fn downloads() -> u64 {
    DOWNLOADS.load(Ordering::Relaxed)
}

/// Device-to-host copies so far from the calling thread.
pub fn downloads_on_this_thread() -> u64 {
    THREAD_DOWNLOADS.with(|n| n.get())
}

/// Called by each launcher for each launch.
pub(crate) fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    THREAD_LAUNCHES.with(|n| n.set(n.get() + 1));
}

/// Called by the device for each device-to-host copy.
pub(crate) fn count_download() {
    DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    THREAD_DOWNLOADS.with(|n| n.set(n.get() + 1));
}
