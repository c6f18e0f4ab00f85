//! Indexing: index_select / index_add along a dim, gather / scatter_add by an index tensor,
//! and embedding lookup. Each one's gradient is the other of its pair.

use crate::{DType, Error, Layout, Result, Tensor};

impl Tensor {
    fn check_index(&self, op: &'static str, index: &Tensor) -> Result<()> {
        if index.dtype() != DType::I64 {
            return Err(Error::UnsupportedDType { op, dtype: index.dtype(), msg: "indices must be I64" });
        }
        // Indices on the CPU are taken for a tensor on any device: the CUDA kernels get their
        // indices from the host anyway, so a GPU index costs a download (a sync) and a CPU one
        // nothing. An index on another GPU is a mistake.
        if index.device() != self.device() && index.device() != crate::Device::Cpu {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: index.device() });
        }
        Ok(())
    }

    /// Rows (along `dim`) picked by the 1-D I64 `index`: out.size(dim) = index.len().
    pub fn index_select(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        self.check_index("index_select", index)?;
        if index.rank() != 1 {
            return Err(Error::InvalidShape {
                op: "index_select",
                shape: index.shape().clone(),
                msg: "the index must be 1-D".into(),
            });
        }
        let d = self.shape().dim(dim, "index_select")?;
        let idx = index.storage().indices(index.layout(), "index_select")?;
        let s = self.storage().index_select(self.layout(), d, &idx)?;
        let mut dims = self.dims().to_vec();
        dims[d] = idx.len();
        let (shape, index) = (self.shape().clone(), index.detach());
        Ok(Tensor::from_op(s, Layout::contiguous(dims.into()), "index_select", &[self], move |g| {
            let zeros = Tensor::zeros(shape, g.dtype(), g.device())?;
            Ok(vec![Some(zeros.index_add(d as isize, &index, g)?)])
        }))
    }

    /// A copy of self with `src`'s slices added at the positions `index` names along `dim`
    /// (repeated indices add up).
    pub fn index_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.check_index("index_add", index)?;
        self.check_same("index_add", src)?;
        let d = self.shape().dim(dim, "index_add")?;
        let mut expect = self.dims().to_vec();
        expect[d] = index.elem_count();
        if index.rank() != 1 || expect != src.dims() {
            return Err(Error::ShapeMismatch { op: "index_add", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        let idx = index.storage().indices(index.layout(), "index_add")?;
        let s = self.storage().index_add(self.layout(), d, &idx, &src.storage(), src.layout())?;
        let index = index.detach();
        Ok(Tensor::from_op(s, Layout::contiguous(self.shape().clone()), "index_add", &[self, src], move |g| {
            Ok(vec![Some(g.clone()), Some(g.index_select(d as isize, &index)?)])
        }))
    }

    /// out[i][j][k] = self[i][index[i][j][k]][k] (for dim = 1): the index has self's rank and
    /// self's sizes on every dim but `dim`.
    pub fn gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        self.check_index("gather", index)?;
        let d = self.check_gather_shape("gather", dim, index)?;
        let idx = index.storage().indices(index.layout(), "gather")?;
        let s = self.storage().gather(self.layout(), d, &idx, index.dims()[d])?;
        let (shape, index) = (self.shape().clone(), index.detach());
        Ok(Tensor::from_op(s, Layout::contiguous(index.shape().clone()), "gather", &[self], move |g| {
            let zeros = Tensor::zeros(shape, g.dtype(), g.device())?;
            Ok(vec![Some(zeros.scatter_add(d as isize, &index, g)?)])
        }))
    }

    /// A copy of self with out[i][index[i][j][k]][k] += src[i][j][k] (for dim = 1).
    pub fn scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        self.check_index("scatter_add", index)?;
        self.check_same("scatter_add", src)?;
        let d = self.check_gather_shape("scatter_add", dim, index)?;
        if src.shape() != index.shape() {
            return Err(Error::ShapeMismatch {
                op: "scatter_add",
                lhs: index.shape().clone(),
                rhs: src.shape().clone(),
            });
        }
        let idx = index.storage().indices(index.layout(), "scatter_add")?;
        let s = self.storage().scatter_add(self.layout(), d, &idx, index.dims()[d], &src.storage(), src.layout())?;
        let index = index.detach();
        Ok(Tensor::from_op(s, Layout::contiguous(self.shape().clone()), "scatter_add", &[self, src], move |g| {
            Ok(vec![Some(g.clone()), Some(g.gather(d as isize, &index)?)])
        }))
    }

    fn check_gather_shape(&self, op: &'static str, dim: isize, index: &Tensor) -> Result<usize> {
        let d = self.shape().dim(dim, op)?;
        let ok = index.rank() == self.rank()
            && index.dims().iter().zip(self.dims()).enumerate().all(|(i, (a, b))| i == d || a == b);
        if !ok {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: index.shape().clone() });
        }
        Ok(d)
    }

    /// Embedding lookup: rows of `self` ([vocab, dim]) for every id in the I64 `ids`;
    /// result shape ids.shape + [dim].
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::InvalidShape {
                op: "embedding",
                shape: self.shape().clone(),
                msg: "the table must be [vocab, dim]".into(),
            });
        }
        let flat = ids.reshape([ids.elem_count()])?;
        let rows = self.index_select(0, &flat)?;
        let mut dims = ids.dims().to_vec();
        dims.push(self.dims()[1]);
        rows.reshape(dims)
    }
}
