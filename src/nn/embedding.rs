//! Embedding table [num_embeddings, dim], initialised N(0, 1) as in PyTorch.

use super::{join, LayerSpec, Module, TensorKind};
use crate::{DType, Device, Result, Tensor};

pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(num_embeddings: usize, dim: usize, device: Device) -> Result<Embedding> {
        Ok(Embedding { weight: Tensor::randn([num_embeddings, dim], DType::F32, device)?.requires_grad_()? })
    }
}

impl Module for Embedding {
    /// `ids`: I64 of any shape; result ids.shape + [dim].
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.weight.embedding(ids)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        f(join(prefix, "weight"), &self.weight, TensorKind::Parameter);
    }
    fn spec(&self) -> Option<LayerSpec> {
        let d = self.weight.dims();
        Some(LayerSpec::Embedding { num_embeddings: d[0], dim: d[1] })
    }
}
