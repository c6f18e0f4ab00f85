//! Matrix products: 2-D, batched, with broadcast batch dims, and 1-D operands treated as
//! PyTorch does (a vector is a row on the left, a column on the right, then squeezed).

use crate::{Error, Layout, Result, Shape, Tensor};

impl Tensor {
    /// `self @ rhs`.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.check_same("matmul", rhs)?;
        self.check_float("matmul")?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        if self.rank() == 1 {
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(-2);
        }
        if rhs.rank() == 1 {
            return self.matmul(&rhs.unsqueeze(1)?)?.squeeze(-1);
        }
        let (ra, rb) = (self.rank(), rhs.rank());
        let (m, k) = (self.dims()[ra - 2], self.dims()[ra - 1]);
        let (k2, n) = (rhs.dims()[rb - 2], rhs.dims()[rb - 1]);
        if k != k2 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        let batch = Shape::new(self.dims()[..ra - 2].to_vec())
            .broadcast(&Shape::new(rhs.dims()[..rb - 2].to_vec()), "matmul")
            .map_err(|_| Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() })?;
        let with = |a: usize, b: usize| {
            let mut d = batch.dims().to_vec();
            d.extend([a, b]);
            Shape::new(d)
        };
        let la = self.layout().broadcast_as(&with(m, k));
        let lb = rhs.layout().broadcast_as(&with(k, n));
        let s = self.storage().matmul(&la, &rhs.storage(), &lb)?;
        let (a, b) = (self.detach(), rhs.detach());
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        Ok(Tensor::from_op(s, Layout::contiguous(with(m, n)), "matmul", &[self, rhs], move |g| {
            // dA = dC @ Bᵀ, dB = Aᵀ @ dC (transposes are views), summed over broadcast batches.
            let ga = if need_a { Some(g.matmul(&b.transpose(-1, -2)?)?.sum_to(a.shape())?) } else { None };
            let gb = if !need_b {
                None
            } else if a.rank() == 2 && g.rank() == 2 && col_major(&b) {
                // b is a transposed view (Linear's Wᵀ): produce its gradient as the transpose of
                // a row-major matrix, so the view's own backward hands W a contiguous gradient
                // instead of one that must be copied.
                Some(g.t()?.matmul(&a)?.t()?)
            } else {
                Some(a.transpose(-1, -2)?.matmul(g)?.sum_to(b.shape())?)
            };
            Ok(vec![ga, gb])
        }))
    }
}

/// A 2-D view stored column by column (the transpose of a contiguous matrix).
fn col_major(t: &Tensor) -> bool {
    let (d, s) = (t.dims(), t.layout().strides());
    t.rank() == 2 && d[0] > 1 && d[1] > 1 && s[0] == 1 && s[1] == d[0]
}
