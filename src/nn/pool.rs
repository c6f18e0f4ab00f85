//! Pooling layers (stride defaults to the kernel, as in PyTorch).

use super::{LayerSpec, Module, TensorKind};
use crate::{Result, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl MaxPool2d {
    /// Square window `k`, stride `k`, no padding.
    pub fn new(k: usize) -> MaxPool2d {
        MaxPool2d { kernel: (k, k), stride: (k, k), padding: (0, 0) }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.max_pool2d(self.kernel, self.stride, self.padding)
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::MaxPool2d { kernel: self.kernel, stride: self.stride, padding: self.padding })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl AvgPool2d {
    /// Square window `k`, stride `k`, no padding.
    pub fn new(k: usize) -> AvgPool2d {
        AvgPool2d { kernel: (k, k), stride: (k, k), padding: (0, 0) }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.avg_pool2d(self.kernel, self.stride, self.padding)
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::AvgPool2d { kernel: self.kernel, stride: self.stride, padding: self.padding })
    }
}
