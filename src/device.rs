//! Where a tensor lives.

use crate::{Error, Result};

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
    /// The emulated CUDA device: CUDA storage, launches and kernels (their host builds) on
    /// the CPU, for testing the CUDA backend without a GPU. Never chosen by `best()`.
    CudaEmulated,
}

impl Device {
    /// The n-th CUDA device. Errors (never panics) when CUDA cannot be used.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        // Probe first: without a driver this is an error, never a panic. Then the device
        // is set up once (allocator, kernels) and passes a self-test before it is used.
        let gpu = crate::backend::cuda::gpu_info(ordinal)?;
        crate::backend::cuda::device::get(Device::Cuda(ordinal)).map_err(|e| Error::DeviceUnavailable {
            device: Device::Cuda(ordinal),
            msg: format!("{} (sm_{}{}): {e}", gpu.name, gpu.compute_capability.0, gpu.compute_capability.1),
        })?;
        Ok(Device::Cuda(ordinal))
    }

    /// The best device present: a working GPU, else the CPU (and it logs why).
    pub fn best() -> Device {
        match Device::cuda(0) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!("using the CPU: {e}");
                Device::Cpu
            }
        }
    }

    /// The emulated CUDA device (see [`Device::CudaEmulated`]).
    pub fn cuda_emulated() -> Device {
        Device::CudaEmulated
    }

    pub fn is_cpu(self) -> bool {
        matches!(self, Device::Cpu)
    }
    /// A real or emulated CUDA device.
    pub fn is_cuda(self) -> bool {
        matches!(self, Device::Cuda(_) | Device::CudaEmulated)
    }

    /// Waits for the device's queued work (kernels run asynchronously on a GPU), as
    /// `torch.cuda.synchronize()`: what a timing around GPU ops needs. A no-op on the CPU.
    pub fn synchronize(self) -> Result<()> {
        if self.is_cpu() {
            return Ok(());
        }
        crate::backend::cuda::device::get(self)?.synchronize()
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::CudaEmulated => f.write_str("cuda-emulated"),
        }
    }
}
