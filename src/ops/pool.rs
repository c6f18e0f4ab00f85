//! Pooling. Max pooling keeps the argmax of each window so its gradient is a scatter-add;
//! average pooling is the mean of unfolded windows (padding counts, as PyTorch's default).

use crate::backend::Window2d;
use crate::{Layout, Result, Shape, Tensor};

/// (kernel, stride, padding) of a square-or-not pooling window.
fn window(kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Window2d {
    Window2d { kernel, stride, padding, dilation: (1, 1) }
}

impl Tensor {
    /// Max over each window of x [n, c, h, w].
    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let w = window(kernel, stride, padding);
        let (oh, ow) = self.check_window("max_pool2d", &w)?;
        if padding.0 * 2 > kernel.0 || padding.1 * 2 > kernel.1 {
            return Err(crate::Error::invalid(
                "max_pool2d",
                format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
            ));
        }
        let (vals, idx) = self.storage().max_pool2d(self.layout(), &w)?;
        let (n, c, h, wd) = (self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]);
        let shape = Shape::new(vec![n, c, oh, ow]);
        Ok(Tensor::from_op(vals, Layout::contiguous(shape), "max_pool2d", &[self], move |g| {
            // Each window's gradient goes to its argmax (a scatter-add, one plane per task); the
            // indices stay in the backend's storage (no copy).
            let gx = g.storage().max_pool2d_backward(g.layout(), &idx, [n, c, h, wd], &w)?;
            Ok(vec![Some(Tensor::from_storage(gx, Layout::contiguous(Shape::new(vec![n, c, h, wd]))))])
        }))
    }

    /// Mean over each window of x [n, c, h, w]; zero padding counts in the mean.
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let w = window(kernel, stride, padding);
        let (oh, ow) = self.check_window("avg_pool2d", &w)?;
        let (n, c, h, wd) = (self.dims()[0], self.dims()[1], self.dims()[2], self.dims()[3]);
        // Each channel as its own one-channel image, so a window's taps form one column.
        let cols = self.reshape([n * c, 1, h, wd])?.unfold2d(w)?;
        cols.mean(&[1], false)?.reshape([n, c, oh, ow])
    }
}
