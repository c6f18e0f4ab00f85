//! Views (no copy: a new layout over the same storage) and the ops that join tensors.
//! Each backward is the inverse movement of the gradient.

use super::Tensor;
use crate::backend::Storage;
use crate::shape::normalize_dim;
use crate::{Error, Layout, Result, Shape};

impl Tensor {
    /// Same elements, new shape. A view when contiguous, else a copy (as PyTorch's reshape).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().clone(), rhs: shape });
        }
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let src = if self.is_contiguous() { self.clone() } else { self.contiguous()? };
        let orig = self.shape().clone();
        let layout = src.layout().reshape_contiguous(shape);
        Ok(src.view_op(layout, "reshape", move |g| Ok(vec![Some(g.reshape(orig)?)])))
    }

    /// Merges dims `start..=end` into one.
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.reshape([1]);
        }
        let s = self.shape().dim(start, "flatten")?;
        let e = self.shape().dim(end, "flatten")?;
        if s > e {
            return Err(Error::invalid("flatten", format!("start dim {start} is after end dim {end}")));
        }
        let d = self.dims();
        let mut out: Vec<usize> = d[..s].to_vec();
        out.push(d[s..=e].iter().product());
        out.extend_from_slice(&d[e + 1..]);
        self.reshape(out)
    }

    /// Swaps two dims.
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let (a, b) = (self.shape().dim(d0, "transpose")?, self.shape().dim(d1, "transpose")?);
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of a 2-D tensor.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::InvalidShape {
                op: "t",
                shape: self.shape().clone(),
                msg: "t() needs rank 2; use transpose".into(),
            });
        }
        self.transpose(0, 1)
    }

    /// Reorders dims: result dim i is input dim perm[i].
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank() || perm.iter().any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!("{perm:?} is not a permutation of the {} dims of {}", self.rank(), self.shape()),
            ));
        }
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        let layout = self.layout().permute(perm);
        Ok(self.view_op(layout, "permute", move |g| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// Elements `start..start+len` of dim `dim`.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = self.shape().dim(dim, "narrow")?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::IndexOutOfRange { op: "narrow", index: start.saturating_add(len) as i64, size });
        }
        let layout = self.layout().narrow(d, start, len);
        let full = self.shape().clone();
        Ok(self.view_op(layout, "narrow", move |g| {
            // Pad the gradient back to full size with zeros on both sides.
            let mut parts = Vec::new();
            let mut dims = full.dims().to_vec();
            if start > 0 {
                dims[d] = start;
                parts.push(Tensor::zeros(dims.clone(), g.dtype(), g.device())?);
            }
            parts.push(g.clone());
            if start + len < full.dims()[d] {
                dims[d] = full.dims()[d] - start - len;
                parts.push(Tensor::zeros(dims, g.dtype(), g.device())?);
            }
            Ok(vec![Some(Tensor::cat(&parts, d as isize)?)])
        }))
    }

    /// Broadcasts to `shape` without copying (NumPy rules; stride 0 on repeated dims).
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let b = self.shape().broadcast(&shape, "broadcast_to")?;
        if b != shape {
            return Err(Error::ShapeMismatch { op: "broadcast_to", lhs: self.shape().clone(), rhs: shape });
        }
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let orig = self.shape().clone();
        let layout = self.layout().broadcast_as(&shape);
        Ok(self.view_op(layout, "broadcast_to", move |g| Ok(vec![Some(g.sum_to(&orig)?)])))
    }

    /// PyTorch's name for [`broadcast_to`](Self::broadcast_to).
    pub fn expand(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        self.broadcast_to(shape)
    }

    /// Removes dim `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.shape().dim(dim, "squeeze")?;
        if self.dims()[d] != 1 {
            return Err(Error::InvalidShape {
                op: "squeeze",
                shape: self.shape().clone(),
                msg: format!("dim {dim} has size {}, not 1", self.dims()[d]),
            });
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout().strides().to_vec();
        dims.remove(d);
        strides.remove(d);
        let layout = self.layout().with_dims(Shape::new(dims), strides);
        let orig = self.shape().clone();
        Ok(self.view_op(layout, "squeeze", move |g| Ok(vec![Some(g.reshape(orig)?)])))
    }

    /// Inserts a dim of size 1 at `dim` (in `-rank-1..=rank`).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank() + 1, "unsqueeze")?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout().strides().to_vec();
        let stride = if d < self.rank() { strides[d] * dims[d] } else { 1 };
        dims.insert(d, 1);
        strides.insert(d, stride);
        let layout = self.layout().with_dims(Shape::new(dims), strides);
        Ok(self.view_op(layout, "unsqueeze", move |g| Ok(vec![Some(g.squeeze(d as isize)?)])))
    }

    /// Self when already contiguous, else a contiguous copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        self.copy()
    }

    /// Joins tensors along an existing dim; all other dims must agree.
    pub fn cat(tensors: &[Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let d = first.shape().dim(dim, "cat")?;
        let mut total = 0;
        for t in tensors {
            first.check_same("cat", t)?;
            let same_rest = t.rank() == first.rank()
                && t.dims().iter().zip(first.dims()).enumerate().all(|(i, (a, b))| i == d || a == b);
            if !same_rest {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().clone(), rhs: t.shape().clone() });
            }
            total += t.dims()[d];
        }
        let mut dims = first.dims().to_vec();
        dims[d] = total;
        let shape = Shape::new(dims);
        let out_layout = Layout::contiguous(shape.clone());
        let mut storage = Storage::full(0.0, shape.elem_count(), first.dtype(), first.device())?;
        let mut lens = Vec::with_capacity(tensors.len());
        let mut start = 0;
        for t in tensors {
            let n = t.dims()[d];
            storage.copy_into(&out_layout.narrow(d, start, n), &t.storage(), t.layout())?;
            lens.push((start, n));
            start += n;
        }
        let inputs: Vec<&Tensor> = tensors.iter().collect();
        Ok(Tensor::from_op(storage, out_layout, "cat", &inputs, move |g| {
            lens.iter().map(|&(s, n)| g.narrow(d as isize, s, n).map(Some)).collect()
        }))
    }

    /// Joins tensors of one shape along a new dim.
    pub fn stack(tensors: &[Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        let d = normalize_dim(dim, first.rank() + 1, "stack")?;
        for t in tensors {
            if t.shape() != first.shape() {
                return Err(Error::ShapeMismatch { op: "stack", lhs: first.shape().clone(), rhs: t.shape().clone() });
            }
        }
        let parts = tensors.iter().map(|t| t.unsqueeze(d as isize)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, d as isize)
    }
}
