//! Convolution. `conv2d` is one op with its own backward (the backend works image by image
//! on im2col columns it never keeps: see `backend/cpu/conv.rs`); `unfold2d` is the
//! sliding-window rearrangement on its own (its gradient is `fold`, col2im).

use crate::backend::{ConvGeom, Epilogue, Window2d};
use crate::{Error, Layout, Result, Shape, Tensor};

/// Per-axis (h, w) convolution settings, PyTorch's defaults via `Default` (stride 1, no
/// padding, dilation 1, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

impl Tensor {
    /// Sliding windows of x [n, c, h, w] as columns [n, c·kh·kw, oh·ow] (torch's `unfold`).
    pub fn unfold2d(&self, w: Window2d) -> Result<Tensor> {
        let (oh, ow) = self.check_window("unfold", &w)?;
        let s = self.storage().im2col(self.layout(), &w)?;
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let shape = Shape::new(vec![n, c * w.kernel.0 * w.kernel.1, oh * ow]);
        let x_dims = self.dims().to_vec();
        Ok(Tensor::from_op(s, Layout::contiguous(shape), "unfold", &[self], move |g| {
            let gs = g.storage().col2im(g.layout(), &x_dims, &w)?;
            Ok(vec![Some(Tensor::from_storage(gs, Layout::contiguous(x_dims.into())))])
        }))
    }

    /// Checks x is [n, c, h, w], the window is sane and fits; returns (oh, ow).
    pub(crate) fn check_window(&self, op: &'static str, w: &Window2d) -> Result<(usize, usize)> {
        self.check_float(op)?;
        if self.rank() != 4 {
            return Err(Error::InvalidShape {
                op,
                shape: self.shape().clone(),
                msg: "input must be [batch, channels, height, width]".into(),
            });
        }
        w.check_positive(op)?;
        w.out_hw(self.dims()[2], self.dims()[3]).filter(|&(h, w)| h > 0 && w > 0).ok_or_else(|| Error::InvalidShape {
            op,
            shape: self.shape().clone(),
            msg: format!("a {:?} window (padding {:?}, dilation {:?}) does not fit", w.kernel, w.padding, w.dilation),
        })
    }

    /// 2-D convolution (cross-correlation, as PyTorch): x [n, c, h, w], weight
    /// [out, c/groups, kh, kw], optional bias [out] -> [n, out, oh, ow].
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.conv2d_op(weight, bias, opt, Epilogue::None)
    }

    /// `relu(conv2d(x, weight, bias))` as one op: the ReLU is applied to each image's output
    /// while it is still in cache, and the backward masks the gradient the same way, so
    /// neither the pre-activation output nor a separate gradient pass exists. `Sequential`
    /// uses it for a `Conv2d` followed by a `Relu`.
    pub fn conv2d_relu(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.conv2d_op(weight, bias, opt, Epilogue::Relu)
    }

    /// `max_pool2d(relu(conv2d(x, weight, bias)), 2)` (2x2 windows, stride 2, no padding) as
    /// one op: each image's convolution output is pooled while in cache, so the full-size
    /// output and its gradient never exist as tensors; the backward sends each window's
    /// gradient to its argmax, as max_pool2d's does. `Sequential` uses it for `Conv2d`,
    /// `Relu`, `MaxPool2d::new(2)`.
    pub fn conv2d_relu_maxpool2(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions) -> Result<Tensor> {
        self.conv2d_op(weight, bias, opt, Epilogue::ReluMaxPool2)
    }

    fn conv2d_op(&self, weight: &Tensor, bias: Option<&Tensor>, opt: Conv2dOptions, epi: Epilogue) -> Result<Tensor> {
        self.check_same("conv2d", weight)?;
        let g = opt.groups;
        let bad = || Error::ShapeMismatch { op: "conv2d", lhs: self.shape().clone(), rhs: weight.shape().clone() };
        if weight.rank() != 4 || self.rank() != 4 || g == 0 {
            return Err(bad());
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let (o, cg, kh, kw) = (weight.dims()[0], weight.dims()[1], weight.dims()[2], weight.dims()[3]);
        if c % g != 0 || o % g != 0 || cg != c / g {
            return Err(bad());
        }
        let w = Window2d { kernel: (kh, kw), stride: opt.stride, padding: opt.padding, dilation: opt.dilation };
        let (mut oh, mut ow) = self.check_window("conv2d", &w)?;
        if epi == Epilogue::ReluMaxPool2 {
            if oh < 2 || ow < 2 {
                return Err(Error::invalid("conv2d_relu_maxpool2", format!("a {oh}x{ow} output is too small to pool")));
            }
            (oh, ow) = (oh / 2, ow / 2);
        }
        if let Some(b) = bias {
            self.check_same("conv2d", b)?;
            if b.dims() != [o] {
                return Err(Error::ShapeMismatch {
                    op: "conv2d (bias)",
                    lhs: weight.shape().clone(),
                    rhs: b.shape().clone(),
                });
            }
        }
        let geom = ConvGeom { n, c, h: self.dims()[2], w: self.dims()[3], o, groups: g, win: w };
        let (s, pool_idx) = {
            let (xs, ws) = (self.storage(), weight.storage());
            let bs = bias.map(|b| b.storage());
            let bl = bs.as_deref().zip(bias.map(|b| b.layout()));
            xs.conv2d(self.layout(), (&ws, weight.layout()), bl, &geom, epi)?
        };
        let need = [self.requires_grad(), weight.requires_grad(), bias.is_some_and(|b| b.requires_grad())];
        let (x, wt) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        // The gradients w.r.t. (x, weight, bias); with a fused epilogue the backend undoes it
        // first from the op's output (and pooling indices).
        let backward = move |g: &Tensor, out: Option<&Tensor>| -> Result<Vec<Option<Tensor>>> {
            let out_s = out.map(|o| o.storage());
            let fused: Vec<&crate::backend::Storage> = out_s.as_deref().into_iter().chain(pool_idx.as_ref()).collect();
            let grads = g.storage().conv2d_backward(
                g.layout(),
                (&x.storage(), x.layout()),
                (&wt.storage(), wt.layout()),
                &fused,
                &geom,
                need,
            )?;
            let shapes = [x.shape().clone(), wt.shape().clone(), Shape::new(vec![geom.o])];
            Ok(grads
                .into_iter()
                .zip(shapes)
                .map(|(s, shape)| s.map(|s| Tensor::from_storage(s, Layout::contiguous(shape))))
                .collect())
        };
        let layout = Layout::contiguous(Shape::new(vec![n, o, oh, ow]));
        Ok(match epi {
            Epilogue::None => Tensor::from_op(s, layout, "conv2d", &inputs, move |g| backward(g, None)),
            Epilogue::Relu => {
                Tensor::from_op_out(s, layout, "conv2d_relu", &inputs, move |g, out| backward(g, Some(out)))
            }
            Epilogue::ReluMaxPool2 => {
                Tensor::from_op_out(s, layout, "conv2d_relu_maxpool2", &inputs, move |g, out| backward(g, Some(out)))
            }
        })
    }
}
