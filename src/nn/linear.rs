//! Fully connected layer: y = x·Wᵀ + b, W stored [out, in] as in PyTorch.

use super::{init, join, LayerSpec, Module, TensorKind};
use crate::{Device, Error, Result, Tensor};

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A new layer with PyTorch's default initialisation.
    pub fn new(in_features: usize, out_features: usize, bias: bool, device: Device) -> Result<Linear> {
        let bound = init::fan_in_bound(in_features);
        let weight = init::uniform_param([out_features, in_features], bound, device)?;
        let bias = if bias { Some(init::uniform_param([out_features], bound, device)?) } else { None };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.weight.dims()[1];
        if x.rank() == 0 || x.dims()[x.rank() - 1] != k {
            return Err(Error::ShapeMismatch {
                op: "Linear",
                lhs: x.shape().clone(),
                rhs: self.weight.shape().clone(),
            });
        }
        // Wᵀ is a view: the GEMM reads W through its strides.
        let y = x.matmul(&self.weight.t()?)?;
        match &self.bias {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        f(join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        if let Some(b) = &self.bias {
            f(join(prefix, "bias"), b, TensorKind::Parameter);
        }
    }
    fn spec(&self) -> Option<LayerSpec> {
        let d = self.weight.dims();
        Some(LayerSpec::Linear { in_features: d[1], out_features: d[0], bias: self.bias.is_some() })
    }
}
