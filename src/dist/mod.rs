//! Data-parallel training: every rank holds a full replica of the model, trains on its own
//! shard of each batch, and the ranks sum their gradients with an all-reduce before taking
//! the same optimizer step.
//!
//! - [`Communicator`]: the collectives (all-reduce, broadcast, barrier) on host `f32` buffers.
//! - [`ring`]: the ring algorithm (reduce-scatter then all-gather) over any [`ring::Link`];
//!   [`threads`] gives links between worker threads of one process, [`tcp`] between
//!   processes on one or several hosts (what Gloo is to PyTorch).
//! - [`nccl`]: NCCL through cudarc, the engine for GPUs.
//! - [`rendezvous`]: torchrun's / Slurm's environment, rank 0 handing out the session id
//!   (or NCCL's unique id) and the ring's addresses, with timeouts and clear errors.
//! - [`DataParallel`]: parameter broadcast and bucketed gradient all-reduce for a model.
//! - [`launch`]: `kiln launch`, one process per rank with torchrun's environment.
//!
//! Failure: a rank that fails drops its links; its neighbours see the link close and fail
//! in turn, so the failure travels round the ring in milliseconds. A rank that hangs is
//! caught by the receive timeout of the rank after it (default 60 s).

mod data_parallel;
pub mod launch;
pub mod nccl;
pub mod rendezvous;
pub mod ring;
pub mod tcp;
pub mod threads;

pub use data_parallel::{DataParallel, DEFAULT_BUCKET_BYTES};
pub use rendezvous::DistEnv;
pub use threads::{run_workers, thread_group};

use crate::Result;
use std::time::Duration;

/// How an all-reduce combines the ranks' buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Mean,
}

/// Collective operations among `world_size` ranks. Every rank must call the same
/// collectives in the same order with buffers of the same length; a rank that does not is
/// reported (`DistErrorKind::Mismatch`), not silently mixed up.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// The transport's name, for logs ("threads", "tcp", "nccl").
    fn backend(&self) -> &'static str;
    /// Combines `buf` across all ranks, in place; afterwards every rank holds the same bits.
    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()>;
    /// Copies `root`'s `buf` into every other rank's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has entered it.
    fn barrier(&mut self) -> Result<()>;
}

/// How long a rank waits for a peer before it gives up (rendezvous and each receive).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
