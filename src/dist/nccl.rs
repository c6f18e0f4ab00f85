//! NCCL through cudarc: the communicator for GPUs. One communicator per GPU, either all GPUs
//! of one process (`kiln train --devices 0,1`, ncclCommInitAll) or one GPU per process
//! (`kiln launch`, ncclCommInitRank with the unique id that rank 0 makes and hands out
//! through the rendezvous).
//!
//! Gradients on the GPU (`all_reduce_device`, what `DataParallel` uses for CUDA models) are
//! reduced where they are, on this communicator's own stream, ordered against Kiln's
//! device stream (the legacy default stream, see cuda/device.rs) by events both ways: the
//! reduction starts once the gradients staged before the call are written, and everything
//! queued on the device after the call waits for it. No host sync, and backward's kernels
//! for earlier layers run while NCCL reduces the later ones. `KILN_NCCL_THROUGH_HOST=1`
//! takes the host path instead (a download and an upload per bucket), a fallback to rule
//! out the device path when something looks wrong.
//!
//! The host-buffer collectives (broadcast of the parameters, metrics) stage through a
//! device buffer kept between calls. Nothing here touches cudarc before the probe has found
//! the driver and libnccl, so a machine without them gets an `Err`, never a panic.

use super::rendezvous::{self, DistEnv};
use super::{all_reduce_through_host, Communicator, ReduceOp};
use crate::backend::cuda::probe;
use crate::backend::cuda::storage::CudaStorage;
use crate::{DType, Device, DistErrorKind, Error, Result};
use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtrMut, DeviceSlice, SyncOnDrop};
use cudarc::nccl::{Comm, Id};
use std::sync::Arc;
use std::time::Duration;

/// Errors unless the CUDA driver and NCCL can be loaded.
pub fn available() -> Result<()> {
    let p = probe::probe();
    if p.driver.found.is_none() {
        return Err(Error::DeviceUnavailable {
            device: Device::Cuda(0),
            msg: "NCCL needs the CUDA driver, which was not found".into(),
        });
    }
    if p.nccl.found.is_none() {
        return Err(Error::DeviceUnavailable {
            device: Device::Cuda(0),
            msg: match &p.nccl.hint {
                Some(h) => format!("NCCL cannot be loaded: {h}"),
                None => {
                    format!("libnccl.so not found (searched the system path and {} other places)", p.searched.len())
                }
            },
        });
    }
    Ok(())
}

/// One rank's NCCL communicator and its staging buffer.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    staging: Option<CudaSlice<f32>>,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
// overlap; `Communicator` takes `&mut self` for every call, so they cannot.
unsafe impl Send for NcclComm {}

fn nccl_err(rank: usize, what: &str, e: impl std::fmt::Debug) -> Error {
    Error::dist(rank, DistErrorKind::PeerLost, format!("NCCL {what}: {e:?}"))
}

fn cuda_err(ordinal: usize, e: impl std::fmt::Display) -> Error {
    Error::DeviceUnavailable { device: Device::Cuda(ordinal), msg: format!("CUDA driver: {e}") }
}

impl NcclComm {
    /// Communicators for several GPUs of this process, rank i on `ordinals[i]`.
    pub fn for_devices(ordinals: &[usize]) -> Result<Vec<NcclComm>> {
        available()?;
        let mut streams = Vec::with_capacity(ordinals.len());
        for &o in ordinals {
            let ctx = CudaContext::new(o).map_err(|e| cuda_err(o, e))?;
            streams.push(ctx.new_stream().map_err(|e| cuda_err(o, e))?);
        }
        let comms = Comm::from_devices(streams.clone()).map_err(|e| nccl_err(0, "ncclCommInitAll", e))?;
        Ok(comms.into_iter().zip(streams).map(|(comm, stream)| NcclComm { comm, stream, staging: None }).collect())
    }

    /// This process's rank of a multi-process job on GPU `ordinal`: rank 0 makes the unique
    /// id, the rendezvous hands it out, every rank joins with it.
    pub fn from_env(env: &DistEnv, ordinal: usize, config: &serde_json::Value, timeout: Duration) -> Result<NcclComm> {
        available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err(ordinal, e))?;
        let stream = ctx.new_stream().map_err(|e| cuda_err(ordinal, e))?;
        let rv = rendezvous::rendezvous(env, 0, config, timeout, || {
            let id = Id::new().map_err(|e| nccl_err(0, "ncclGetUniqueId", e))?;
            Ok(id.internal().iter().map(|&c| c as u8).collect())
        })?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if rv.token.len() != internal.len() {
            return Err(Error::dist(
                env.rank,
                DistErrorKind::Mismatch,
                format!(
                    "rank 0 sent a {}-byte NCCL id (expected 128): is it running the NCCL backend?",
                    rv.token.len()
                ),
            ));
        }
        for (d, s) in internal.iter_mut().zip(&rv.token) {
            *d = *s as std::ffi::c_char;
        }
        // ncclCommInitRank works on the calling thread's current device, and cudarc's
        // from_rank does not bind the context itself: bind it here (the rendezvous above may
        // have taken long, but on this same thread; binding again costs nothing).
        stream.context().bind_to_thread().map_err(|e| cuda_err(ordinal, e))?;
        let comm = Comm::from_rank(stream.clone(), env.rank, env.world_size, Id::uninit(internal))
            .map_err(|e| nccl_err(env.rank, "ncclCommInitRank", e))?;
        Ok(NcclComm { comm, stream, staging: None })
    }

    /// Copies `buf` into the staging buffer (grown as needed) and returns it.
    fn stage(&mut self, buf: &[f32]) -> Result<CudaSlice<f32>> {
        let o = self.comm.ordinal();
        let mut dev = match self.staging.take() {
            Some(s) if s.len() == buf.len() => s,
            _ => self.stream.alloc_zeros::<f32>(buf.len().max(1)).map_err(|e| cuda_err(o, e))?,
        };
        if !buf.is_empty() {
            let mut view = dev.slice_mut(0..buf.len());
            self.stream.memcpy_htod(buf, &mut view).map_err(|e| cuda_err(o, e))?;
        }
        Ok(dev)
    }

    fn unstage(&mut self, dev: CudaSlice<f32>, buf: &mut [f32]) -> Result<()> {
        let o = self.comm.ordinal();
        if !buf.is_empty() {
            self.stream.memcpy_dtoh(&dev.slice(0..buf.len()), buf).map_err(|e| cuda_err(o, e))?;
        }
        self.stream.synchronize().map_err(|e| cuda_err(o, e))?;
        self.staging = Some(dev);
        Ok(())
    }
}

/// An f32 buffer of Kiln's caching allocator as cudarc's NCCL calls take one. cudarc's own
/// slices track their reads and writes with events on their stream; Kiln's buffers are
/// ordered by the explicit events in `all_reduce_device`, so this adds none.
struct RawF32<'a> {
    ptr: u64,
    len: usize,
    stream: &'a Arc<CudaStream>,
}

impl DeviceSlice<f32> for RawF32<'_> {
    fn len(&self) -> usize {
        self.len
    }
    fn stream(&self) -> &Arc<CudaStream> {
        self.stream
    }
}

impl DevicePtrMut<f32> for RawF32<'_> {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (sys::CUdeviceptr, SyncOnDrop<'a>) {
        (self.ptr as sys::CUdeviceptr, SyncOnDrop::Sync(None))
    }
}

fn through_host() -> bool {
    std::env::var("KILN_NCCL_THROUGH_HOST").is_ok_and(|v| v == "1")
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let rank = self.rank();
        let mut dev = self.stage(buf)?;
        let nop = match op {
            ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
            ReduceOp::Mean => cudarc::nccl::ReduceOp::Avg,
        };
        {
            let mut view = dev.slice_mut(0..buf.len());
            self.comm.all_reduce_in_place(&mut view, &nop).map_err(|e| nccl_err(rank, "ncclAllReduce", e))?;
        }
        self.unstage(dev, buf)
    }

    fn all_reduce_device(&mut self, buf: &mut CudaStorage, op: ReduceOp) -> Result<()> {
        let (rank, ordinal) = (self.rank(), self.comm.ordinal());
        if through_host() {
            return all_reduce_through_host(self, buf, op);
        }
        if buf.device() != Device::Cuda(ordinal) {
            return Err(Error::DeviceMismatch { op: "nccl all_reduce", lhs: Device::Cuda(ordinal), rhs: buf.device() });
        }
        if buf.dtype() != DType::F32 {
            return Err(Error::UnsupportedDType {
                op: "nccl all_reduce",
                dtype: buf.dtype(),
                msg: "gradients travel as f32",
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let ctx = self.stream.context().clone();
        // This thread (DataParallel's communication thread) may never have used the GPU.
        ctx.bind_to_thread().map_err(|e| cuda_err(ordinal, e))?;
        // Kiln queues everything on the legacy default stream of the device's primary
        // context, which is also this communicator's context (CudaContext::new retains the
        // primary context).
        let kiln_stream = ctx.default_stream();
        let staged = kiln_stream.record_event(None).map_err(|e| cuda_err(ordinal, e))?;
        self.stream.wait(&staged).map_err(|e| cuda_err(ordinal, e))?;
        let nop = match op {
            ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
            ReduceOp::Mean => cudarc::nccl::ReduceOp::Avg,
        };
        let mut raw = RawF32 { ptr: buf.ptr(), len: buf.len(), stream: &self.stream };
        self.comm.all_reduce_in_place(&mut raw, &nop).map_err(|e| nccl_err(rank, "ncclAllReduce", e))?;
        // Whatever Kiln queues next (copying the sums out, freeing the buffer for reuse by
        // the caching allocator, which reuses memory in its stream's order) waits for NCCL.
        let reduced = self.stream.record_event(None).map_err(|e| cuda_err(ordinal, e))?;
        kiln_stream.wait(&reduced).map_err(|e| cuda_err(ordinal, e))?;
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let rank = self.rank();
        if root >= self.world_size() {
            return Err(Error::dist(
                rank,
                DistErrorKind::Mismatch,
                format!("broadcast root {root} of {} ranks", self.world_size()),
            ));
        }
        let mut dev = self.stage(buf)?;
        {
            let mut view = dev.slice_mut(0..buf.len());
            self.comm.broadcast_in_place(&mut view, root as i32).map_err(|e| nccl_err(rank, "ncclBroadcast", e))?;
        }
        self.unstage(dev, buf)
    }

    fn barrier(&mut self) -> Result<()> {
        let mut one = [0.0f32];
        self.all_reduce(&mut one, ReduceOp::Sum)
    }
}
