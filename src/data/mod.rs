//! Data: the `Dataset` trait, an in-memory `TensorDataset`, a `DataLoader` (seeded shuffle,
//! batching, drop_last, a background thread that prepares the next batches), and readers for
//! MNIST's IDX files and CSV.

mod csv;
mod idx;
mod loader;
pub mod mnist;

pub use csv::read_csv;
pub use idx::{read_idx, IdxArray};
pub use loader::{DataLoader, EpochIter};

use crate::{Device, Error, Result, Tensor};

/// A batch: model inputs and targets, first dim = samples.
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// Samples addressable by index.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The samples at `indices`, stacked.
    fn get_batch(&self, indices: &[usize]) -> Result<Batch>;
}

/// Inputs and targets held in memory as two tensors with the same first dim.
#[derive(Clone, Debug)]
pub struct TensorDataset {
    pub inputs: Tensor,
    pub targets: Tensor,
}

impl TensorDataset {
    pub fn new(inputs: Tensor, targets: Tensor) -> Result<TensorDataset> {
        if inputs.rank() == 0 || targets.rank() == 0 || inputs.dims()[0] != targets.dims()[0] {
            return Err(Error::ShapeMismatch {
                op: "TensorDataset",
                lhs: inputs.shape().clone(),
                rhs: targets.shape().clone(),
            });
        }
        Ok(TensorDataset { inputs, targets })
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.inputs.dims()[0]
    }
    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        // The index stays on the host: a GPU index would be downloaded again (a sync per batch).
        let idx =
            Tensor::from_vec(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [indices.len()], Device::Cpu)?;
        Ok(Batch { inputs: self.inputs.index_select(0, &idx)?, targets: self.targets.index_select(0, &idx)? })
    }
}
