//! softmax, log_softmax and the losses built on them.

use crate::{DType, Error, Layout, Result, Shape, Tensor};

impl Tensor {
    /// Softmax along `dim` (shifted by the max: never overflows).
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// log(softmax(x)) along `dim`, computed stably in one pass.
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        self.check_float(name)?;
        if self.rank() == 0 {
            return Err(Error::InvalidShape {
                op: name,
                shape: self.shape().clone(),
                msg: "needs at least one dim".into(),
            });
        }
        let d = self.shape().dim(dim, name)?;
        let last = self.rank() - 1;
        // The backend works on the last dim: move `dim` there (a view), and back after.
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(d, last);
        let moved = self.layout().permute(&perm);
        let s = self.storage().softmax_last_dim(&moved, log)?;
        let layout = Layout::contiguous(moved.shape().clone()).permute(&perm);
        Ok(Tensor::from_op_out(s, layout, name, &[self], move |g, y| {
            let dx = if log {
                // d/dx log_softmax: g - softmax · Σg
                g.sub(&y.exp()?.mul(&g.sum(&[d as isize], true)?)?)?
            } else {
                // d/dx softmax: y · (g - Σ g·y)
                y.mul(&g.sub(&g.mul(y)?.sum(&[d as isize], true)?)?)?
            };
            Ok(vec![Some(dx)])
        }))
    }

    /// Mean cross-entropy between logits [n, classes] and I64 class indices [n], with
    /// label smoothing ε in [0, 1] (target (1-ε)·onehot + ε/classes). Fused: one pass gives
    /// the loss and the gradient (softmax - target)/n.
    pub fn cross_entropy(&self, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
        self.check_float("cross_entropy")?;
        if self.rank() != 2 || self.dims()[1] == 0 {
            return Err(Error::InvalidShape {
                op: "cross_entropy",
                shape: self.shape().clone(),
                msg: "logits must be [batch, classes] with classes > 0".into(),
            });
        }
        if labels.dtype() != DType::I64 {
            return Err(Error::UnsupportedDType {
                op: "cross_entropy",
                dtype: labels.dtype(),
                msg: "labels must be I64 class indices",
            });
        }
        if labels.rank() != 1 || labels.dims()[0] != self.dims()[0] {
            return Err(Error::ShapeMismatch {
                op: "cross_entropy",
                lhs: self.shape().clone(),
                rhs: labels.shape().clone(),
            });
        }
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::invalid("cross_entropy", format!("label_smoothing {label_smoothing} is not in [0, 1]")));
        }
        let want_grad = crate::is_grad_enabled() && self.requires_grad();
        // Labels may sit on another device than the logits (class indices, not data): CPU
        // labels for GPU logits are checked on the host and uploaded, GPU labels for CPU
        // logits downloaded.
        let (loss, grad) = self.storage().cross_entropy(
            self.layout(),
            &labels.storage(),
            labels.layout(),
            label_smoothing,
            want_grad,
        )?;
        let scalar = Layout::contiguous(Shape::new(vec![]));
        let Some(grad) = grad else { return Ok(Tensor::from_storage(loss, scalar)) };
        let grad = Tensor::from_storage(grad, Layout::contiguous(self.shape().clone()));
        Ok(Tensor::from_op(loss, scalar, "cross_entropy", &[self], move |g| Ok(vec![Some(grad.mul(g)?)])))
    }

    /// Negative log-likelihood of log-probabilities [n, classes] at I64 labels [n] (mean).
    pub fn nll_loss(&self, labels: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 || labels.rank() != 1 || labels.dims()[0] != self.dims()[0] {
            return Err(Error::ShapeMismatch {
                op: "nll_loss",
                lhs: self.shape().clone(),
                rhs: labels.shape().clone(),
            });
        }
        self.gather(1, &labels.unsqueeze(1)?)?.mean_all()?.neg()
    }

    /// Mean squared error.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::ShapeMismatch {
                op: "mse_loss",
                lhs: self.shape().clone(),
                rhs: target.shape().clone(),
            });
        }
        self.sub(target)?.sqr()?.mean_all()
    }
}
