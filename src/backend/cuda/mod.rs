//! The CUDA side: finding the driver and libraries (never panicking when they are absent),
//! the device (caching allocator, NVRTC-compiled kernels from `kernels/`, cuBLAS, or the
//! emulated device that runs the same launches on the host), and each op family's device
//! implementation (storage.rs, conv.rs).

pub mod alloc;
pub mod blas;
pub mod conv;
pub mod counters;
pub mod cudnn;
pub mod device;
pub mod emu;
pub mod gpu;
pub mod kernels;
pub mod kernels_conv;
pub mod kernels_nn;
pub mod kernels_train;
pub mod launch;
pub mod memory;
pub mod norm;
pub mod nvrtc;
pub mod probe;
pub mod staging;
pub mod storage;

use crate::{Device, Error, Result};

/// What the driver reports about one GPU.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_memory: usize,
}

/// The GPU `ordinal`, or why it cannot be used (no driver, no device, driver error).
pub fn gpu_info(ordinal: usize) -> Result<GpuInfo> {
    let device = Device::Cuda(ordinal);
    let p = probe::probe();
    if p.driver.found.is_none() {
        return Err(Error::DeviceUnavailable {
            device,
            msg: format!(
                "no CUDA driver (libcuda.so.1) found on the library search path or in {} other places",
                p.searched.len()
            ),
        });
    }
    let err = |e: cudarc::driver::DriverError| Error::DeviceUnavailable { device, msg: format!("CUDA driver: {e}") };
    let ctx = cudarc::driver::CudaContext::new(ordinal).map_err(err)?;
    Ok(GpuInfo {
        ordinal,
        name: ctx.name().map_err(err)?,
        compute_capability: ctx.compute_capability().map_err(err)?,
        total_memory: ctx.total_mem().map_err(err)?,
    })
}

/// Number of GPUs the driver sees (0 without a driver).
pub fn device_count() -> usize {
    if probe::probe().driver.found.is_none() {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map(|n| n.max(0) as usize).unwrap_or(0)
}
