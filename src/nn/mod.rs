//! Neural-network building blocks in PyTorch's shape: a `Module` trait (forward, named
//! parameters, state_dict, train/eval), layers with PyTorch's names, layouts and default
//! initialisation, a Keras-style `Sequential`, and the losses.

mod activation;
mod conv;
mod embedding;
mod init;
mod linear;
pub mod loss;
mod norm;
mod pool;
mod resnet;
mod sequential;
mod spec;

pub use activation::{Dropout, Flatten, Gelu, Relu, Sigmoid, Silu, Softmax, Tanh};
pub use conv::Conv2d;
pub use embedding::Embedding;
pub use linear::Linear;
pub use norm::{BatchNorm, LayerNorm};
pub use pool::{AvgPool2d, MaxPool2d};
pub use resnet::{BasicBlock, ResNet};
pub use sequential::Sequential;
pub use spec::LayerSpec;

use crate::{Error, Result, Tensor};

/// Whether a named tensor of a module is trained (parameter) or only tracked (buffer, e.g.
/// BatchNorm's running statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Parameter,
    Buffer,
}

/// A layer or a model: PyTorch's `nn.Module`.
pub trait Module: Send + Sync {
    /// The forward pass.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Calls `f(name, tensor, kind)` for every parameter and buffer, names prefixed by
    /// `prefix` (dotted, as PyTorch's state_dict keys), in registration order.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind));

    /// Switches training behaviour (dropout, batch statistics) on or off.
    fn set_training(&self, _on: bool) {}

    /// This layer followed by the layers described by `next`, as one fused op, for layers
    /// that have one (Conv2d: + ReLU, + ReLU + 2x2 max pool); None when there is no fused
    /// form. On success also says how many of `next` it covered. `Sequential` asks.
    fn forward_fused(&self, _x: &Tensor, _next: &[Option<LayerSpec>]) -> Option<(Result<Tensor>, usize)> {
        None
    }

    /// The layer's description, enough to rebuild it (None for custom modules).
    fn spec(&self) -> Option<LayerSpec> {
        None
    }

    /// train() / eval() in PyTorch's words.
    fn train(&self) {
        self.set_training(true)
    }
    fn eval(&self) {
        self.set_training(false)
    }

    /// Parameters with their dotted names ("0.weight", "0.bias", ...).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |n, t, k| {
            if k == TensorKind::Parameter {
                out.push((n, t.clone()))
            }
        });
        out
    }

    /// The trainable tensors, in a stable order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Parameters and buffers by name (what checkpoints store).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit("", &mut |n, t, _| out.push((n, t.clone())));
        out
    }

    /// Copies `state` into the module's tensors. Strict: a missing, unexpected or
    /// mis-shaped tensor is an error naming it, and then nothing has been changed.
    fn load_state_dict(&self, state: &[(String, Tensor)]) -> Result<()> {
        load_state_dict(&self.state_dict(), state)
    }

    /// Zeroes the gradient of every parameter.
    fn zero_grad(&self) {
        for p in self.parameters() {
            p.zero_grad();
        }
    }
}

fn load_state_dict(mine: &[(String, Tensor)], state: &[(String, Tensor)]) -> Result<()> {
    use std::collections::HashMap;
    let given: HashMap<&str, &Tensor> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let missing: Vec<&str> = mine.iter().map(|(n, _)| n.as_str()).filter(|n| !given.contains_key(n)).collect();
    let names: std::collections::HashSet<&str> = mine.iter().map(|(n, _)| n.as_str()).collect();
    let unexpected: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).filter(|n| !names.contains(n)).collect();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(Error::StateDict(format!("missing tensors {missing:?}, unexpected tensors {unexpected:?}")));
    }
    for (name, t) in mine {
        let src = given[name.as_str()];
        if src.shape() != t.shape() {
            return Err(Error::StateDict(format!(
                "`{name}` has shape {} in the model but {} in the state",
                t.shape(),
                src.shape()
            )));
        }
        if src.dtype() != t.dtype() {
            return Err(Error::StateDict(format!(
                "`{name}` is {} in the model but {} in the state",
                t.dtype(),
                src.dtype()
            )));
        }
    }
    crate::no_grad(|| mine.iter().try_for_each(|(name, t)| t.assign(given[name.as_str()])))
}

/// "prefix.name", or "name" at the top.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
