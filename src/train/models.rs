//! The built-in models of `kiln train --model`, with PyTorch's layer names.

use crate::nn::{Conv2d, Flatten, Linear, MaxPool2d, Relu, Sequential};
use crate::{Conv2dOptions, Device, Result};

/// Flatten → Linear(784, 256) → ReLU → Linear(256, 256) → ReLU → Linear(256, 10).
pub fn mlp(device: Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .add(Flatten::default())
        .add(Linear::new(784, 256, true, device)?)
        .add(Relu)
        .add(Linear::new(256, 256, true, device)?)
        .add(Relu)
        .add(Linear::new(256, 10, true, device)?))
}

/// conv3x3(32) → ReLU → maxpool2 → conv3x3(64) → ReLU → maxpool2 → Flatten →
/// Linear(1600, 128) → ReLU → Linear(128, 10).
pub fn cnn(device: Device) -> Result<Sequential> {
    let o = Conv2dOptions::default();
    Ok(Sequential::new()
        .add(Conv2d::new(1, 32, (3, 3), o, true, device)?)
        .add(Relu)
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(32, 64, (3, 3), o, true, device)?)
        .add(Relu)
        .add(MaxPool2d::new(2))
        .add(Flatten::default())
        .add(Linear::new(1600, 128, true, device)?)
        .add(Relu)
        .add(Linear::new(128, 10, true, device)?))
}
