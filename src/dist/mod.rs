//! Data-parallel training: every rank holds a full replica of the model, trains on its own
//! shard of each batch, and the ranks sum their gradients with an all-reduce before taking
//! the same optimizer step.
//!
//! - [`Communicator`]: the collectives (all-reduce, broadcast, barrier) on host `f32` buffers,
//!   and the all-reduce of a buffer in GPU memory (NCCL reduces it where it is; the host
//!   transports download and upload it once per call).
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

use crate::backend::cuda::storage::CudaStorage;
use crate::{DType, Error, Layout, Result};
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
    /// [`Communicator::all_reduce`] of an f32 buffer in device memory, ordered after
    /// everything queued on its device before the call and before everything queued after
    /// it. This default goes through the host (one download and one upload); NCCL
    /// overrides it to reduce on the GPU without a host sync.
    fn all_reduce_device(&mut self, buf: &mut CudaStorage, op: ReduceOp) -> Result<()> {
        all_reduce_through_host(self, buf, op)
    }
    /// Copies `root`'s `buf` into every other rank's `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Returns once every rank has entered it.
    fn barrier(&mut self) -> Result<()>;
}

/// [`Communicator::all_reduce_device`] by way of the host: download, all-reduce, upload.
pub fn all_reduce_through_host<C: Communicator + ?Sized>(
    comm: &mut C,
    buf: &mut CudaStorage,
    op: ReduceOp,
) -> Result<()> {
    if buf.dtype() != DType::F32 {
        return Err(Error::UnsupportedDType { op: "all_reduce", dtype: buf.dtype(), msg: "gradients travel as f32" });
    }
    let mut host = buf.to_cpu()?.to_vec::<f32>(&Layout::contiguous(vec![buf.len()].into()));
    comm.all_reduce(&mut host, op)?;
    buf.write_f32(0, &host)
}

/// How long a rank waits for a peer before it gives up (rendezvous and each receive).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
