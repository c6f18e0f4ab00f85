//! PyTorch's default initialisations, drawn from the global generator (`kiln::manual_seed`).

use crate::{DType, Device, Result, Shape, Tensor};

/// U(-bound, bound), a leaf that requires grad.
pub(crate) fn uniform_param(shape: impl Into<Shape>, bound: f64, device: Device) -> Result<Tensor> {
    Tensor::uniform(-bound, bound, shape, DType::F32, device)?.requires_grad_()
}

/// Kaiming-uniform with a = √5, PyTorch's default for Linear and Conv weights:
/// gain = √(2/(1+a²)) = √(1/3), bound = gain·√3/√fan_in = 1/√fan_in. Biases use the same bound.
pub(crate) fn fan_in_bound(fan_in: usize) -> f64 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f64).sqrt()
    }
}
