//! A CUDA device as the backend uses it: its memory (the caching allocator), the launcher
//! that runs kernels on it, and copies between host and device. One per device, made on
//! first use and shared by every tensor on it.
//!
//! The emulated device (`Device::CudaEmulated`) is the same thing with host memory standing
//! in for device memory and the host builds of the kernels (kernels/emu) for the GPU: every
//! op's real launch code runs in CI. It is a test device; `Device::best()` never picks it.

use super::alloc::{CachingAllocator, DeviceBuf, HostMemory};
use super::emu::EmuLauncher;
use super::launch::Launcher;
use crate::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One device's allocator and launcher.
pub struct CudaDev {
    device: Device,
    alloc: Arc<CachingAllocator>,
    launcher: Box<dyn Launcher + Send + Sync>,
}

impl std::fmt::Debug for CudaDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDev({})", self.device)
    }
}

/// The device behind `device`, made on first use.
pub fn get(device: Device) -> Result<Arc<CudaDev>> {
    static DEVICES: OnceLock<Mutex<HashMap<Device, Arc<CudaDev>>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = map.get(&device) {
        return Ok(d.clone());
    }
    let dev = match device {
        Device::CudaEmulated => Arc::new(CudaDev {
            device,
            alloc: CachingAllocator::new(Box::new(HostMemory::new())),
            launcher: Box::new(EmuLauncher),
        }),
        Device::Cuda(n) => return Err(crate::device::cuda_unavailable(n)),
        Device::Cpu => return Err(Error::invalid("cuda", "the CPU is not a CUDA device")),
    };
    map.insert(device, dev.clone());
    Ok(dev)
}

impl CudaDev {
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn launcher(&self) -> &dyn Launcher {
        self.launcher.as_ref()
    }
    pub fn allocator(&self) -> &Arc<CachingAllocator> {
        &self.alloc
    }
    fn emulated(&self) -> bool {
        self.device == Device::CudaEmulated
    }

    /// Device memory for `bytes` bytes (contents undefined: blocks are reused).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuf> {
        self.alloc.alloc(bytes, 0)
    }

    /// Host → device.
    pub fn htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        if self.emulated() {
            // SAFETY: `dst` is a host address of a live block of at least src.len() bytes
            // (the callers size it), and host and block do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
            return Ok(());
        }
        Err(crate::device::cuda_unavailable(0))
    }

    /// Device → host.
    pub fn dtoh(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        if self.emulated() {
            // SAFETY: as in `htod`, the other way round.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
            return Ok(());
        }
        Err(crate::device::cuda_unavailable(0))
    }

    /// Device → device (`bytes` bytes; the regions may not overlap).
    pub fn dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        if self.emulated() {
            // SAFETY: both are host addresses of live blocks of at least `bytes` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
            return Ok(());
        }
        Err(crate::device::cuda_unavailable(0))
    }
}
