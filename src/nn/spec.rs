//! A serializable description of a model's architecture: what checkpoints store so that a
//! model can be rebuilt without the code that made it.

use super::*;
use crate::{Conv2dOptions, Device, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LayerSpec {
    Sequential {
        layers: Vec<LayerSpec>,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
        dilation: (usize, usize),
        groups: usize,
        bias: bool,
    },
    MaxPool2d {
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    },
    AvgPool2d {
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    },
    BatchNorm1d {
        features: usize,
    },
    BatchNorm2d {
        features: usize,
    },
    LayerNorm {
        shape: Vec<usize>,
        elementwise_affine: bool,
    },
    Dropout {
        p: f64,
    },
    Embedding {
        num_embeddings: usize,
        dim: usize,
    },
    Flatten {
        start_dim: isize,
        end_dim: isize,
    },
    Softmax {
        dim: isize,
    },
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    Silu,
}

impl LayerSpec {
    /// Builds the layer with fresh parameters (load a state_dict into it for trained ones).
    pub fn build(&self, device: Device) -> Result<Box<dyn Module>> {
        Ok(match self {
            LayerSpec::Sequential { layers } => {
                let mut s = Sequential::new();
                for l in layers {
                    s.push(l.build(device)?);
                }
                Box::new(s)
            }
            LayerSpec::Linear { in_features, out_features, bias } => {
                Box::new(Linear::new(*in_features, *out_features, *bias, device)?)
            }
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, dilation, groups, bias } => {
                let o = Conv2dOptions { stride: *stride, padding: *padding, dilation: *dilation, groups: *groups };
                Box::new(Conv2d::new(*in_channels, *out_channels, *kernel, o, *bias, device)?)
            }
            LayerSpec::MaxPool2d { kernel, stride, padding } => {
                Box::new(MaxPool2d { kernel: *kernel, stride: *stride, padding: *padding })
            }
            LayerSpec::AvgPool2d { kernel, stride, padding } => {
                Box::new(AvgPool2d { kernel: *kernel, stride: *stride, padding: *padding })
            }
            LayerSpec::BatchNorm1d { features } => Box::new(BatchNorm::new_1d(*features, device)?),
            LayerSpec::BatchNorm2d { features } => Box::new(BatchNorm::new_2d(*features, device)?),
            LayerSpec::LayerNorm { shape, elementwise_affine } => {
                Box::new(LayerNorm::new(shape, *elementwise_affine, device)?)
            }
            LayerSpec::Dropout { p } => Box::new(Dropout::new(*p)),
            LayerSpec::Embedding { num_embeddings, dim } => Box::new(Embedding::new(*num_embeddings, *dim, device)?),
            LayerSpec::Flatten { start_dim, end_dim } => Box::new(Flatten { start_dim: *start_dim, end_dim: *end_dim }),
            LayerSpec::Softmax { dim } => Box::new(Softmax { dim: *dim }),
            LayerSpec::Relu => Box::new(Relu),
            LayerSpec::Gelu => Box::new(Gelu),
            LayerSpec::Tanh => Box::new(Tanh),
            LayerSpec::Sigmoid => Box::new(Sigmoid),
            LayerSpec::Silu => Box::new(Silu),
        })
    }
}
