//! Device memory for the CUDA backend (interim: a plain, non-caching allocator; the caching
//! allocator with size classes and per-stream free lists replaces this file).

use crate::{Error, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Raw device memory: cuMemAlloc on a GPU, host memory on the emulated device.
pub trait RawMemory: Send + Sync {
    fn alloc(&self, bytes: usize) -> Result<u64>;
    fn free(&self, ptr: u64, bytes: usize);
    fn name(&self) -> &'static str;
}

/// Allocation counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocStats {
    pub allocated: usize,
    pub reserved: usize,
    pub peak_allocated: usize,
    pub peak_reserved: usize,
    pub raw_allocs: usize,
    pub raw_frees: usize,
    pub cache_hits: usize,
}

pub struct CachingAllocator {
    raw: Box<dyn RawMemory>,
    allocated: AtomicUsize,
}

impl CachingAllocator {
    pub fn new(raw: Box<dyn RawMemory>) -> Arc<CachingAllocator> {
        Arc::new(CachingAllocator { raw, allocated: AtomicUsize::new(0) })
    }
    pub fn alloc(self: &Arc<Self>, bytes: usize, stream: u64) -> Result<DeviceBuf> {
        let size = bytes.max(1).next_multiple_of(256);
        let ptr = self.raw.alloc(size)?;
        self.allocated.fetch_add(size, Ordering::Relaxed);
        Ok(DeviceBuf { ptr, bytes: size, stream, owner: self.clone() })
    }
    pub fn stats(&self) -> AllocStats {
        let a = self.allocated.load(Ordering::Relaxed);
        AllocStats { allocated: a, reserved: a, ..Default::default() }
    }
    pub fn empty_cache(&self) {}
}

/// An allocated block, returned when dropped.
pub struct DeviceBuf {
    ptr: u64,
    bytes: usize,
    stream: u64,
    owner: Arc<CachingAllocator>,
}

impl DeviceBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn stream(&self) -> u64 {
        self.stream
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        self.owner.allocated.fetch_sub(self.bytes, Ordering::Relaxed);
        self.owner.raw.free(self.ptr, self.bytes);
    }
}

/// Host memory standing in for device memory on the emulated device.
pub struct HostMemory;

impl RawMemory for HostMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(1), 256)
            .map_err(|e| Error::invalid("emulated cuda alloc", e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(Error::invalid("emulated cuda alloc", format!("out of host memory for {bytes} bytes")));
        }
        Ok(p as u64)
    }
    fn free(&self, ptr: u64, bytes: usize) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(bytes.max(1), 256) {
            // SAFETY: `ptr` came from `alloc` with this same layout.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) }
        }
    }
    fn name(&self) -> &'static str {
        "host (emulated device)"
    }
}
