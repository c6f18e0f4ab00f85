//! Kiln: a deep-learning training engine. Define-by-run tensors with reverse-mode autograd
//! (PyTorch's way), on a CPU backend that is also the reference for the CUDA one.
//!
//! ```
//! use kiln::{DType, Device, Tensor};
//! let x = Tensor::randn([4, 3], DType::F32, Device::Cpu)?;
//! let w = Tensor::randn([3, 2], DType::F32, Device::Cpu)?.requires_grad_()?;
//! let loss = x.matmul(&w)?.relu()?.sum_all()?;
//! loss.backward()?;
//! assert_eq!(w.grad().unwrap().dims(), &[3, 2]);
//! # Ok::<(), kiln::Error>(())
//! ```

// Kernels and shape code index several arrays with one loop variable; iterator chains
// would hide the index math the comments describe.
#![allow(clippy::needless_range_loop)]

pub mod autograd;
pub mod backend;
pub mod data;
mod device;
pub mod dist;
mod dtype;
mod error;
pub mod io;
pub mod nn;
mod ops;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod serve;
pub mod shape;
mod tensor;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, NoGradGuard};
pub use backend::cuda::blas::{allow_tf32, tf32_allowed};
pub use backend::Window2d;
pub use device::Device;
pub use dtype::{DType, WithDType};
pub use error::{DistErrorKind, Error, Result};
pub use ops::Conv2dOptions;
pub use rng::{global_state as rng_state, manual_seed, set_global_state as set_rng_state, Generator};
pub use shape::{Layout, Shape};
pub use tensor::{GradHook, Tensor};

/// Memory held by tensors, for tests and benchmarks.
pub mod memory {
    pub use crate::backend::cpu::{
        bytes_in_use as cpu_bytes_in_use, peak_bytes as cpu_peak_bytes, reset_peak_bytes as reset_cpu_peak,
        thread_net_bytes,
    };
}

/// The README's Rust example is compiled and run as a doctest, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
