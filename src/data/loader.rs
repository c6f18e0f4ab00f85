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
    /// Batches prepared ahead by a background thread; 0: no thread, each batch is cut when
    /// the loop asks for it.
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

    /// The batches of one epoch: produced on a background thread, `prefetch` ahead, or with
    /// `prefetch == 0` by the iterator itself when asked for the next one.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        let cut = Cut { order: self.order(epoch), batch_size: self.batch_size, shard: self.shard };
        let (ds, n_batches) = (self.dataset.clone(), self.len());
        if self.prefetch == 0 {
            return EpochIter { source: Source::Inline { ds, cut, next: 0 }, remaining: n_batches };
        }
        let (tx, rx) = sync_channel(self.prefetch);
        std::thread::Builder::new()
            .name("kiln-loader".into())
            .spawn(move || {
                for b in 0..n_batches {
                    // A closed channel means the consumer stopped early: just end.
                    if tx.send(ds.get_batch(cut.indices(b))).is_err() {
                        return;
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("could not start the data loader thread: {e}"));
        EpochIter { source: Source::Thread(rx), remaining: n_batches }
    }
}

/// How an epoch's order is cut into this rank's batches.
struct Cut {
    order: Vec<usize>,
    batch_size: usize,
    shard: Option<(usize, usize)>,
}

impl Cut {
    fn indices(&self, b: usize) -> &[usize] {
        let bs = self.batch_size;
        let idx = &self.order[b * bs..((b + 1) * bs).min(self.order.len())];
        match self.shard {
            Some((r, w)) => &idx[r * idx.len() / w..(r + 1) * idx.len() / w],
            None => idx,
        }
    }
}

enum Source {
    Thread(Receiver<Result<Batch>>),
    Inline { ds: Arc<dyn Dataset>, cut: Cut, next: usize },
}

/// The batches of one epoch.
pub struct EpochIter {
    source: Source,
    remaining: usize,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match &mut self.source {
            Source::Thread(rx) => rx.recv().ok(),
            Source::Inline { ds, cut, next } => {
                *next += 1;
                Some(ds.get_batch(cut.indices(*next - 1)))
            }
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}
