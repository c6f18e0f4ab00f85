//! Batches in a seed-determined order, prepared by a background thread while the model
//! trains on the previous ones.

use super::{Batch, Dataset};
use crate::{Generator, Result};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Iterates a dataset in batches: `for batch in loader.epoch(e) { ... }`.
#[derive(Clone)]
pub struct DataLoader {
    dataset: Arc<dyn Dataset>,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// Batches prepared ahead by the background thread.
    pub prefetch: usize,
    /// `(rank, world_size)`: this rank's share of every batch (data-parallel training).
    pub shard: Option<(usize, usize)>,
}

impl DataLoader {
    pub fn new(dataset: Arc<dyn Dataset>, batch_size: usize, shuffle: bool) -> DataLoader {
        DataLoader {
            dataset,
            batch_size: batch_size.max(1),
            shuffle,
            drop_last: false,
            seed: 0,
            prefetch: 2,
            shard: None,
        }
    }
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn with_drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }
    /// Makes this loader yield only rank `rank`'s share of each batch: the epoch's order and
    /// batches stay those of one process with `batch_size`, and batch `b` is cut into
    /// `world_size` contiguous, disjoint parts (sizes differing by at most one), so N ranks
    /// together see exactly what one process would, and train to the same parameters.
    pub fn with_shard(mut self, rank: usize, world_size: usize) -> Self {
        self.shard = (world_size > 1).then_some((rank.min(world_size - 1), world_size));
        self
    }
    /// Samples in batch `b` summed over all ranks (the global batch).
    pub fn global_batch_len(&self, b: usize) -> usize {
        ((b + 1) * self.batch_size).min(self.dataset.len()).saturating_sub(b * self.batch_size)
    }
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Number of batches per epoch.
    pub fn len(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample order of `epoch`: a Fisher-Yates shuffle seeded by (seed, epoch), so any
    /// epoch can be replayed (resume) without replaying the ones before it.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            let mut g = Generator::new(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..order.len()).rev() {
                let j = g.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The batches of one epoch, produced on a background thread.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let order = self.order(epoch);
        let (tx, rx) = sync_channel(self.prefetch.max(1));
        let (ds, bs, n_batches, shard) = (self.dataset.clone(), self.batch_size, self.len(), self.shard);
        std::thread::Builder::new()
            .name("kiln-loader".into())
            .spawn(move || {
                for b in 0..n_batches {
                    let mut idx = &order[b * bs..((b + 1) * bs).min(order.len())];
                    if let Some((r, w)) = shard {
                        idx = &idx[r * idx.len() / w..(r + 1) * idx.len() / w];
                    }
                    // A closed channel means the consumer stopped early: just end.
                    if tx.send(ds.get_batch(idx)).is_err() {
                        return;
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("could not start the data loader thread: {e}"));
        EpochIter { rx, remaining: n_batches }
    }
}

/// The batches of one epoch.
pub struct EpochIter {
    rx: Receiver<Result<Batch>>,
    remaining: usize,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        self.rx.recv().ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}
