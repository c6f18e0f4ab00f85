//! Reductions over any dims (an empty list means all dims), with keepdim.

use crate::backend::ReduceOp;
use crate::shape::normalize_dims;
use crate::{Error, Layout, Result, Shape, Tensor};

impl Tensor {
    /// Sum over `dims` (all dims when empty).
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let (s, kept) = self.reduce(dims, ReduceOp::Sum, "sum")?;
        let input = self.shape().clone();
        let out = Tensor::from_op(s, Layout::contiguous(kept.clone()), "sum", &[self], move |g| {
            Ok(vec![Some(g.reshape(kept)?.broadcast_to(input)?)])
        });
        out.drop_dims(dims, keepdim)
    }

    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&[], false)
    }

    /// Mean over `dims` (all dims when empty).
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let n = self.reduced_count(dims, "mean")?;
        self.sum(dims, keepdim)?.mul_scalar(1.0 / n as f64)
    }

    /// Mean of all elements, as a 0-d tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&[], false)
    }

    /// Variance over `dims`, with Bessel's correction when `unbiased` (PyTorch's default).
    pub fn var(&self, dims: &[isize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
        let n = self.reduced_count(dims, "var")?;
        let centered = self.sub(&self.mean(dims, true)?)?;
        let denom = if unbiased { n as f64 - 1.0 } else { n as f64 };
        centered.sqr()?.sum(dims, keepdim)?.mul_scalar(1.0 / denom)
    }

    /// Max over `dims`; the gradient goes to the maximal elements (split between ties).
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extremum(dims, keepdim, ReduceOp::Max, "max")
    }

    /// Min over `dims`.
    pub fn min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extremum(dims, keepdim, ReduceOp::Min, "min")
    }

    /// Index (I64) of the first maximum along `dim`.
    pub fn argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let (s, kept) = self.reduce(&[dim], ReduceOp::ArgMax, "argmax")?;
        Tensor::from_storage(s, Layout::contiguous(kept)).drop_dims(&[dim], keepdim)
    }

    /// Index (I64) of the first minimum along `dim`.
    pub fn argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let (s, kept) = self.reduce(&[dim], ReduceOp::ArgMin, "argmin")?;
        Tensor::from_storage(s, Layout::contiguous(kept)).drop_dims(&[dim], keepdim)
    }

    fn extremum(&self, dims: &[isize], keepdim: bool, op: ReduceOp, name: &'static str) -> Result<Tensor> {
        let (s, kept) = self.reduce(dims, op, name)?;
        let x = self.detach();
        let kept2 = kept.clone();
        let out = Tensor::from_op_out(s, Layout::contiguous(kept), name, &[self], move |g, y| {
            let mask = x.eq(&y.reshape(kept2.clone())?)?;
            let share = mask.div(&mask.sum_keep_shape(&kept2)?)?;
            Ok(vec![Some(share.mul(&g.reshape(kept2)?)?)])
        });
        out.drop_dims(dims, keepdim)
    }

    /// Sum down to the keepdim shape `kept` (a helper of extremum's backward).
    fn sum_keep_shape(&self, kept: &Shape) -> Result<Tensor> {
        let dims: Vec<isize> = kept
            .dims()
            .iter()
            .zip(self.dims())
            .enumerate()
            .filter(|(_, (k, s))| k != s)
            .map(|(i, _)| i as isize)
            .collect();
        self.sum(&dims, true)
    }

    /// Sums a broadcast gradient back to `shape` (the inverse of broadcasting).
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let extra = self.rank().checked_sub(shape.rank()).ok_or_else(|| Error::ShapeMismatch {
            op: "sum_to",
            lhs: self.shape().clone(),
            rhs: shape.clone(),
        })?;
        let mut dims: Vec<isize> = (0..extra as isize).collect();
        for (i, &d) in shape.dims().iter().enumerate() {
            let have = self.dims()[extra + i];
            if d == 1 && have != 1 {
                dims.push((extra + i) as isize);
            } else if d != have {
                return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
            }
        }
        self.sum(&dims, true)?.reshape(shape.clone())
    }

    /// Runs the backend reduction; returns the storage and its keepdim shape.
    fn reduce(&self, dims: &[isize], op: ReduceOp, name: &'static str) -> Result<(crate::backend::Storage, Shape)> {
        let d = normalize_dims(dims, self.rank(), name)?;
        let s = self.storage().reduce(self.layout(), &d, op)?;
        let mut kept = self.dims().to_vec();
        for &i in &d {
            kept[i] = 1;
        }
        Ok((s, Shape::new(kept)))
    }

    fn reduced_count(&self, dims: &[isize], name: &'static str) -> Result<usize> {
        Ok(normalize_dims(dims, self.rank(), name)?.iter().map(|&d| self.dims()[d]).product())
    }

    /// From the keepdim shape, drops the reduced dims unless `keepdim`.
    fn drop_dims(self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        if keepdim {
            return Ok(self);
        }
        let d = normalize_dims(dims, self.rank(), "reduce")?;
        let shape: Vec<usize> =
            self.dims().iter().enumerate().filter(|(i, _)| !d.contains(i)).map(|(_, &n)| n).collect();
        self.reshape(shape)
    }
}
