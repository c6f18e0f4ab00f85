//! The raw memories under the caching allocator ([`super::alloc`]): a GPU's memory through
//! the driver, and host pages standing in for device memory on the emulated device.

use super::alloc::RawMemory;
use super::probe;
use crate::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Alignment of every [`HostMemory`] block, as cudaMalloc guarantees at least 256 bytes.
pub const HOST_ALIGN: usize = 256;

/// Host memory standing in for device memory on the emulated device: pointers are host
/// addresses, 256-byte aligned.
///
/// Each block sits at the END of its own anonymous mapping, directly before a PROT_NONE
/// guard page, so a kernel that reads or writes past the end of its buffer faults (SIGSEGV)
/// instead of silently reading another buffer or garbage. The block's size is rounded up to
/// 256 bytes to keep its start aligned, so up to 255 bytes past a request stay accessible;
/// through the caching allocator, whose blocks are multiples of 512 bytes, the block ends
/// exactly at the guard page and only the allocator's own rounding (request to size class)
/// is slack. Reads before the start are not caught (the page before a block is ordinary
/// mapped memory unless the block fills whole pages).
pub struct HostMemory {
    page: usize,
    /// Block address -> (mapping start, mapping length), to unmap exactly what was mapped.
    maps: Mutex<HashMap<u64, (usize, usize)>>,
}

impl HostMemory {
    pub fn new() -> HostMemory {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 { page as usize } else { 4096 };
        HostMemory { page, maps: Mutex::new(HashMap::new()) }
    }

    /// Blocks currently mapped (allocated and not freed).
    pub fn live_blocks(&self) -> usize {
        self.maps.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn oom(bytes: usize, why: impl std::fmt::Display) -> Error {
        Error::invalid("emulated device alloc", format!("out of memory: cannot map {bytes} bytes: {why}"))
    }
}

impl Default for HostMemory {
    fn default() -> Self {
        HostMemory::new()
    }
}

impl RawMemory for HostMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        let usable = bytes.max(1).checked_next_multiple_of(HOST_ALIGN);
        let data = usable.and_then(|u| u.checked_next_multiple_of(self.page));
        let (usable, len) = match (usable, data.and_then(|d| d.checked_add(self.page))) {
            (Some(u), Some(l)) => (u, l),
            _ => return Err(Self::oom(bytes, "size overflows")),
        };
        let data = len - self.page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Self::oom(bytes, std::io::Error::last_os_error()));
        }
        // SAFETY: the last page lies inside the mapping just created (data is a multiple of
        // the page size, len = data + one page).
        let rc = unsafe { libc::mprotect(base.cast::<u8>().add(data).cast(), self.page, libc::PROT_NONE) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: unmapping exactly the mapping created above, never handed out.
            unsafe { libc::munmap(base, len) };
            return Err(Self::oom(bytes, format!("guard page: {err}")));
        }
        let ptr = (base as usize + data - usable) as u64;
        self.maps.lock().unwrap_or_else(|p| p.into_inner()).insert(ptr, (base as usize, len));
        Ok(ptr)
    }

    fn free(&self, ptr: u64, _bytes: usize) {
        // The recorded mapping, not the size passed, decides what is unmapped: a wrong size
        // must never unmap a neighbour.
        let Some((base, len)) = self.maps.lock().unwrap_or_else(|p| p.into_inner()).remove(&ptr) else {
            tracing::error!("HostMemory::free of {ptr:#x}, which it did not allocate (double free?); ignored");
            return;
        };
        // SAFETY: (base, len) is a mapping this object created and has just forgotten, so it
        // is unmapped exactly once; its block's owner has given it back.
        unsafe { libc::munmap(base as *mut libc::c_void, len) };
    }

    fn name(&self) -> &'static str {
        "emulated device (host pages with guard pages)"
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        for (_, (base, len)) in self.maps.get_mut().unwrap_or_else(|p| p.into_inner()).drain() {
            // SAFETY: mappings this object created; nobody can use them after it is dropped
            // (the caching allocator that owns it drops it last).
            unsafe { libc::munmap(base as *mut libc::c_void, len) };
        }
    }
}

/// Device memory of one GPU through the CUDA driver (cuMemAlloc / cuMemFree).
pub struct GpuMemory {
    ordinal: usize,
    ctx: Arc<cudarc::driver::CudaContext>,
}

impl GpuMemory {
    /// The GPU `ordinal`'s memory. Err (never a panic) when the driver or the device is missing.
    pub fn new(ordinal: usize) -> Result<GpuMemory> {
        let device = Device::Cuda(ordinal);
        if probe::probe().driver.found.is_none() {
            return Err(Error::DeviceUnavailable { device, msg: "no CUDA driver (libcuda.so.1) found".into() });
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| Error::DeviceUnavailable { device, msg: format!("CUDA driver: {e}") })?;
        Ok(GpuMemory { ordinal, ctx })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

impl RawMemory for GpuMemory {
    fn alloc(&self, bytes: usize) -> Result<u64> {
        let device = Device::Cuda(self.ordinal);
        // cuMemAlloc allocates in the calling thread's current context: make it ours.
        self.ctx.bind_to_thread().map_err(|e| Error::DeviceUnavailable { device, msg: format!("CUDA driver: {e}") })?;
        // SAFETY: a plain allocation in the current context; the memory is uninitialised,
        // which is fine for bytes that are only ever written by kernels or copies first.
        unsafe { cudarc::driver::result::malloc_sync(bytes) }
            .map_err(|e| Error::DeviceUnavailable { device, msg: format!("cuMemAlloc of {bytes} bytes failed: {e}") })
    }

    fn free(&self, ptr: u64, bytes: usize) {
        // A cached block can still be in use by kernels queued before its buffer was dropped:
        // wait for the device before giving it back. Raw frees are rare (empty_cache, OOM).
        let r = self.ctx.synchronize().and_then(|_| {
            // SAFETY: `ptr` came from cuMemAlloc in this context (RawMemory's contract), is
            // freed once, and no queued work uses it any more (synchronised above).
            unsafe { cudarc::driver::result::free_sync(ptr) }
        });
        if let Err(e) = r {
            tracing::error!("cuda:{}: cuMemFree of {bytes} bytes at {ptr:#x} failed: {e}", self.ordinal);
        }
    }

    fn name(&self) -> &'static str {
        "GPU memory (cuMemAlloc)"
    }
}
