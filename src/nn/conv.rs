//! 2-D convolution layer, weight [out, in/groups, kh, kw] as in PyTorch.

use super::{init, join, LayerSpec, Module, TensorKind};
use crate::{Conv2dOptions, Device, Error, Result, Tensor};

pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A new layer with PyTorch's default initialisation (fan_in = in/groups · kh · kw).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        options: Conv2dOptions,
        bias: bool,
        device: Device,
    ) -> Result<Conv2d> {
        let g = options.groups;
        if g == 0 || !in_channels.is_multiple_of(g) || !out_channels.is_multiple_of(g) {
            return Err(Error::invalid(
                "Conv2d",
                format!("groups {g} must divide in_channels {in_channels} and out_channels {out_channels}"),
            ));
        }
        let bound = init::fan_in_bound(in_channels / g * kernel.0 * kernel.1);
        let weight = init::uniform_param([out_channels, in_channels / g, kernel.0, kernel.1], bound, device)?;
        let bias = if bias { Some(init::uniform_param([out_channels], bound, device)?) } else { None };
        Ok(Conv2d { weight, bias, options })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.options)
    }
    fn forward_fused(&self, x: &Tensor, next: &[Option<LayerSpec>]) -> Option<(Result<Tensor>, usize)> {
        let (w, b, o) = (&self.weight, self.bias.as_ref(), self.options);
        match next {
            [Some(LayerSpec::Relu), Some(LayerSpec::MaxPool2d { kernel: (2, 2), stride: (2, 2), padding: (0, 0) }), ..] => {
                Some((x.conv2d_relu_maxpool2(w, b, o), 2))
            }
            [Some(LayerSpec::Relu), ..] => Some((x.conv2d_relu(w, b, o), 1)),
            _ => None,
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
        let o = self.options;
        Some(LayerSpec::Conv2d {
            in_channels: d[1] * o.groups,
            out_channels: d[0],
            kernel: (d[2], d[3]),
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: o.groups,
            bias: self.bias.is_some(),
        })
    }
}
