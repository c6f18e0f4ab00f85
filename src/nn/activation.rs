//! Parameter-free layers: activations, Flatten, Softmax, Dropout.

use super::{LayerSpec, Module, TensorKind};
use crate::{Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, Copy)]
        pub struct $name;
        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                x.$method()
            }
            fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
            fn spec(&self) -> Option<LayerSpec> {
                Some(LayerSpec::$name)
            }
        }
    };
}

activation!(
    /// max(x, 0)
    Relu, relu);
activation!(
    /// Exact (erf) GELU.
    Gelu, gelu);
activation!(Tanh, tanh);
activation!(Sigmoid, sigmoid);
activation!(
    /// x·σ(x)
    Silu, silu);

/// Merges dims start..=end (PyTorch's defaults: 1..=-1, keeping the batch dim).
#[derive(Debug, Clone, Copy)]
pub struct Flatten {
    pub start_dim: isize,
    pub end_dim: isize,
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten { start_dim: 1, end_dim: -1 }
    }
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.flatten(self.start_dim, self.end_dim)
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::Flatten { start_dim: self.start_dim, end_dim: self.end_dim })
    }
}

/// Softmax along `dim`.
#[derive(Debug, Clone, Copy)]
pub struct Softmax {
    pub dim: isize,
}

impl Module for Softmax {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.softmax(self.dim)
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::Softmax { dim: self.dim })
    }
}

/// Zeroes elements with probability p while training (scaling the rest by 1/(1-p));
/// the identity in eval mode.
#[derive(Debug)]
pub struct Dropout {
    pub p: f64,
    training: AtomicBool,
}

impl Dropout {
    pub fn new(p: f64) -> Dropout {
        Dropout { p, training: AtomicBool::new(true) }
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.dropout(self.p, self.training.load(Ordering::Relaxed))
    }
    fn visit(&self, _: &str, _: &mut dyn FnMut(String, &Tensor, TensorKind)) {}
    fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed)
    }
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::Dropout { p: self.p })
    }
}
