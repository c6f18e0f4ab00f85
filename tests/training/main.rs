//! The training suite: layers, optimizers, data, checkpoints, the loop, and PyTorch parity.
#![allow(clippy::needless_range_loop)]

mod checkpoint;
mod data;
mod layers;
mod optim;
mod threads;
mod torch_parity;
mod visualize;

use kiln::{DType, Device, Tensor};

pub const CPU: Device = Device::Cpu;

pub fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, CPU).unwrap()
}

pub fn vec32(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w}");
    }
}

#[path = "../common/tempdir.rs"]
mod tempdir;
pub use tempdir::TempDir;

pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn_with(shape, DType::F32, CPU, &mut kiln::Generator::new(seed)).unwrap()
}
