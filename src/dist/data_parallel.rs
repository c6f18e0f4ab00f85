//! A model's parameters and gradients kept in step across ranks: parameters broadcast from
//! rank 0 once, gradients summed after every backward in buckets of about 25 MB (one
//! collective per bucket instead of one per tensor, and a bounded staging buffer).
//!
//! Overlap, as PyTorch's DDP: buckets hold the parameters in reverse order (the last
//! layer's gradients are ready first), and with [`DataParallel::begin_backward`] armed, a
//! hook on each parameter stages its gradient the moment backward has accumulated it; a
//! bucket whose gradients are all in goes to the communication thread at once, while
//! backward goes on with the layers before. [`DataParallel::finish_gradients`] sends what
//! is left and writes the sums back. Buckets always go out in bucket order, so every rank
//! issues the same collectives in the same order whatever its timing.
//!
//! Where the buckets live: in host memory for a model on the CPU; for a model on a GPU, in
//! that GPU's memory (one f32 tensor per bucket, kept between steps), so the gradients never
//! leave the device: staged by device-to-device copies, scaled by one kernel per bucket,
//! reduced in place by NCCL (a host transport downloads and uploads the bucket once), and
//! copied out into each parameter's own gradient. Before, every gradient went through the
//! host on its own (a GPU sync each).

use super::{Communicator, ReduceOp};
use crate::backend::cpu::CpuData;
use crate::backend::Storage;
use crate::{no_grad, DType, Device, Error, Layout, Result, Tensor};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// The communication thread's answers, one per job, in order.
type Replies = Receiver<Result<Buf>>;

/// A bucket's staging buffer: host memory for a model on the CPU, a 1-D f32 tensor on the
/// model's device otherwise.
enum Buf {
    Host(Vec<f32>),
    Device(Tensor),
}

/// A collective for the communication thread; each is answered with its result buffer.
enum Job {
    AllReduce(Buf),
    Broadcast(Vec<f32>, usize),
}

/// The buckets: which parameters each holds, and where each parameter sits.
struct Buckets {
    /// Per bucket: parameter indices, in staging order.
    params: Vec<Vec<usize>>,
    /// Per bucket: elements.
    len: Vec<usize>,
    /// Per parameter: (bucket, offset in the bucket, elements).
    at: Vec<(usize, usize, usize)>,
}

/// One step's gradients on their way: what the hooks and `finish_gradients` share.
struct Step {
    /// This rank's weight while armed (between begin_backward and finish_gradients).
    armed: Option<f32>,
    /// Per parameter: its gradient is staged.
    ready: Vec<bool>,
    /// Per bucket: its staging buffer, until it is sent.
    bufs: Vec<Option<Buf>>,
    /// Buckets sent so far this step (always a prefix, in bucket order).
    sent: usize,
    /// Buckets sent from hooks, while backward still ran (this step).
    sent_early: usize,
}

struct Shared {
    buckets: Buckets,
    step: Mutex<Step>,
    jobs: Sender<Job>,
}

impl Shared {
    fn step(&self) -> MutexGuard<'_, Step> {
        self.step.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages `scale × grad` (zeros for None) as parameter `pi`'s share of its bucket.
    fn stage(&self, step: &mut Step, pi: usize, grad: Option<Tensor>, scale: f32) -> Result<()> {
        let (b, off, n) = self.buckets.at[pi];
        let Some(buf) = step.bufs[b].as_mut() else {
            return Err(Error::invalid(
                "DataParallel",
                format!("parameter {pi}'s gradient arrived after its bucket {b} was sent (two backward passes in one step?)"),
            ));
        };
        if let Some(g) = &grad {
            if g.elem_count() != n {
                return Err(Error::invalid(
                    "DataParallel",
                    format!("parameter {pi} has {n} elements but a gradient of shape {}", g.shape()),
                ));
            }
        }
        match buf {
            Buf::Host(buf) => {
                let dst = &mut buf[off..off + n];
                match grad {
                    Some(g) => read_f32(&g, dst, scale)?,
                    None => dst.fill(0.0),
                }
            }
            // A device copy; the bucket is scaled as a whole when it goes out (`send_ready`).
            Buf::Device(bucket) => no_grad(|| {
                let dst = bucket.narrow(0, off, n)?;
                match grad {
                    Some(g) => dst.assign(&g.detach().reshape(vec![n])?),
                    None => dst.assign(&Tensor::zeros(vec![n], DType::F32, bucket.device())?),
                }
            })?,
        }
        step.ready[pi] = true;
        Ok(())
    }

    /// Sends every bucket, in order, whose gradients are all staged; returns how many.
    fn send_ready(&self, step: &mut Step) -> Result<usize> {
        let first = step.sent;
        while step.sent < self.buckets.params.len() && self.buckets.params[step.sent].iter().all(|&p| step.ready[p]) {
            let buf = match step.bufs[step.sent].take().expect("an unsent bucket has its buffer") {
                Buf::Device(bucket) => match step.armed {
                    // The host path scales each gradient as it reads it; here one kernel per
                    // bucket (the same f32 products).
                    Some(w) if w != 1.0 => Buf::Device(no_grad(|| bucket.mul_scalar(w as f64))?),
                    _ => Buf::Device(bucket),
                },
                host => host,
            };
            self.jobs.send(Job::AllReduce(buf)).map_err(|_| comm_gone())?;
            step.sent += 1;
        }
        Ok(step.sent - first)
    }
}

fn comm_gone() -> Error {
    Error::invalid("DataParallel", "the communication thread has stopped (an earlier collective failed)")
}

/// Data-parallel glue for one rank: its communicator (on a communication thread of its
/// own) and the model's parameters.
pub struct DataParallel {
    params: Vec<Tensor>,
    shared: Arc<Shared>,
    replies: Replies,
    /// (parameter, hook id) of the hooks to remove on drop.
    hooks: Vec<(Tensor, usize)>,
    rank: usize,
    world: usize,
    /// A step failed half-way: replies may be out of step with requests, so every later
    /// collective is refused instead of reading another bucket's sums.
    broken: bool,
    /// The buckets are tensors on this device (a GPU), not host memory.
    on_device: bool,
}

impl DataParallel {
    /// Groups `params` into buckets of at most `bucket_bytes`, last parameter first (a larger
    /// tensor gets a bucket of its own), and hooks each parameter that takes gradients.
    /// Parameters must be f32, contiguous and on one device; on a GPU the buckets are kept
    /// in its memory.
    pub fn new(comm: Box<dyn Communicator>, params: Vec<Tensor>, bucket_bytes: usize) -> Result<DataParallel> {
        let device = params.first().map_or(Device::Cpu, |p| p.device());
        for p in &params {
            if p.device() != device {
                return Err(Error::DeviceMismatch { op: "DataParallel", lhs: device, rhs: p.device() });
            }
            if p.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType {
                    op: "DataParallel",
                    dtype: p.dtype(),
                    msg: "data-parallel training all-reduces f32 parameters",
                });
            }
            if !p.is_contiguous() {
                return Err(Error::invalid(
                    "DataParallel",
                    format!("parameter of shape {} is not contiguous", p.shape()),
                ));
            }
        }
        let limit = (bucket_bytes / 4).max(1);
        let mut buckets = Buckets { params: Vec::new(), len: Vec::new(), at: vec![(0, 0, 0); params.len()] };
        for (i, p) in params.iter().enumerate().rev() {
            let n = p.elem_count();
            match buckets.len.last_mut() {
                Some(len) if *len > 0 && *len + n <= limit => {
                    buckets.at[i] = (buckets.params.len() - 1, *len, n);
                    *len += n;
                    buckets.params.last_mut().expect("a bucket").push(i);
                }
                _ => {
                    buckets.at[i] = (buckets.params.len(), 0, n);
                    buckets.params.push(vec![i]);
                    buckets.len.push(n);
                }
            }
        }
        let on_device = device != Device::Cpu;
        let bufs = buckets
            .len
            .iter()
            .map(|&n| match on_device {
                true => Ok(Some(Buf::Device(Tensor::zeros(vec![n], DType::F32, device)?))),
                false => Ok(Some(Buf::Host(vec![0.0; n]))),
            })
            .collect::<Result<_>>()?;
        let (rank, world) = (comm.rank(), comm.world_size());
        let (jobs, replies) = spawn_comm_thread(comm)?;
        let step = Step { armed: None, ready: vec![false; params.len()], bufs, sent: 0, sent_early: 0 };
        let shared = Arc::new(Shared { buckets, step: Mutex::new(step), jobs });
        let mut dp = DataParallel { params, shared, replies, hooks: Vec::new(), rank, world, broken: false, on_device };
        for (pi, p) in dp.params.iter().enumerate() {
            if !(p.is_leaf() && p.requires_grad()) {
                continue;
            }
            let shared = Arc::clone(&dp.shared);
            let id = p.register_post_accumulate_grad_hook(move |t| {
                let mut step = shared.step();
                let Some(w) = step.armed else { return Ok(()) };
                shared.stage(&mut step, pi, t.grad(), w)?;
                let n = shared.send_ready(&mut step)?;
                step.sent_early += n;
                Ok(())
            })?;
            dp.hooks.push((p.clone(), id));
        }
        Ok(dp)
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world
    }
    /// Number of buckets the gradients travel in.
    pub fn bucket_count(&self) -> usize {
        self.shared.buckets.params.len()
    }
    /// Whether the gradient buckets live in the model's GPU memory (see the module doc).
    pub fn buckets_on_device(&self) -> bool {
        self.on_device
    }
    /// Buckets of the last step that were sent while backward still ran.
    pub fn buckets_sent_during_backward(&self) -> usize {
        self.shared.step().sent_early
    }

    /// Runs one collective on the communication thread and waits for it. Not while a step
    /// is armed: its buckets' replies would come first.
    fn collective(&self, job: Job) -> Result<Vec<f32>> {
        self.check_whole()?;
        if self.shared.step().armed.is_some() {
            return Err(Error::invalid("DataParallel", "a collective between begin_backward and finish_gradients"));
        }
        self.shared.jobs.send(job).map_err(|_| comm_gone())?;
        match self.replies.recv().map_err(|_| comm_gone())?? {
            Buf::Host(v) => Ok(v),
            Buf::Device(_) => Err(Error::invalid("DataParallel", "internal: a device buffer for a host collective")),
        }
    }

    /// Overwrites every rank's parameters with rank 0's.
    pub fn broadcast_parameters(&mut self) -> Result<()> {
        for bucket in &self.shared.buckets.params {
            let mut buf = Vec::new();
            for &pi in bucket {
                let p = &self.params[pi];
                let at = buf.len();
                buf.resize(at + p.elem_count(), 0.0);
                read_f32(p, &mut buf[at..], 1.0)?;
            }
            let buf = self.collective(Job::Broadcast(buf, 0))?;
            let mut off = 0;
            for &pi in bucket {
                let p = &self.params[pi];
                write_f32(p, &buf[off..off + p.elem_count()])?;
                off += p.elem_count();
            }
        }
        Ok(())
    }

    /// Arms the hooks for one step: from now on each parameter's gradient, once backward
    /// has accumulated it, is staged as `weight ×` the gradient, and every complete bucket is
    /// all-reduced while backward goes on. Call [`DataParallel::finish_gradients`] after
    /// backward (also when this rank ran none: its gradients count as zeros).
    pub fn begin_backward(&mut self, weight: f64) -> Result<()> {
        self.check_whole()?;
        let mut step = self.shared.step();
        if step.armed.is_some() {
            return Err(Error::invalid("DataParallel", "begin_backward twice without finish_gradients"));
        }
        step.armed = Some(weight as f32);
        step.ready.fill(false);
        step.sent = 0;
        step.sent_early = 0;
        Ok(())
    }

    /// Sends the buckets the hooks did not (parameters whose gradients never arrived count as
    /// zeros), waits for every bucket, and replaces each parameter's gradient by the sum
    /// over ranks.
    pub fn finish_gradients(&mut self) -> Result<()> {
        let weight = self.shared.step().armed;
        let Some(w) = weight else {
            return Err(Error::invalid("DataParallel", "finish_gradients without begin_backward"));
        };
        let result = self.send_rest_and_collect(w);
        self.shared.step().armed = None;
        self.broken |= result.is_err();
        result
    }

    fn check_whole(&self) -> Result<()> {
        if self.broken {
            return Err(Error::invalid("DataParallel", "an earlier step failed half-way; make a new DataParallel"));
        }
        Ok(())
    }

    fn send_rest_and_collect(&mut self, w: f32) -> Result<()> {
        {
            let mut step = self.shared.step();
            for pi in 0..self.params.len() {
                let (b, _, _) = self.shared.buckets.at[pi];
                if b >= step.sent && !step.ready[pi] {
                    self.shared.stage(&mut step, pi, self.params[pi].grad(), w)?;
                }
            }
            self.shared.send_ready(&mut step)?;
        }
        for (b, bucket) in self.shared.buckets.params.iter().enumerate() {
            let buf = self.replies.recv().map_err(|_| comm_gone())??;
            for &pi in bucket {
                let (_, off, n) = self.shared.buckets.at[pi];
                let p = &self.params[pi];
                let grad = match &buf {
                    Buf::Host(v) => Tensor::from_vec(v[off..off + n].to_vec(), p.shape().clone(), p.device())?,
                    // A gradient of its own (a device copy): the optimizers' fused kernels
                    // take whole buffers, and the bucket is staged again next step.
                    Buf::Device(t) => no_grad(|| t.narrow(0, off, n)?.reshape(p.shape().clone())?.copy())?,
                };
                p.set_grad(Some(grad));
            }
            // The buffer goes back for the next step (every element is staged again).
            self.shared.step().bufs[b] = Some(buf);
        }
        Ok(())
    }

    /// Replaces every parameter's gradient by the sum over ranks of `weight ×` the rank's
    /// gradient (a parameter without a gradient counts as zeros), after backward. With
    /// `weight` = this rank's share of the global batch (its samples / all samples), the
    /// result is the gradient of the mean loss over the global batch, as one process
    /// training on all of it would get. (`begin_backward` before the backward overlaps the
    /// same work with it.)
    pub fn all_reduce_gradients(&mut self, weight: f64) -> Result<()> {
        self.begin_backward(weight)?;
        self.finish_gradients()
    }

    /// Sums f64 values (metrics: loss sums, counts) over ranks. Each value travels as two
    /// f32s, its f32 rounding and the remainder, so sums keep about 48 bits of precision.
    pub fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()> {
        let split: Vec<f32> = values
            .iter()
            .flat_map(|&v| {
                let hi = v as f32;
                [hi, (v - hi as f64) as f32]
            })
            .collect();
        let split = self.collective(Job::AllReduce(Buf::Host(split)))?;
        for (v, pair) in values.iter_mut().zip(split.chunks_exact(2)) {
            *v = pair[0] as f64 + pair[1] as f64;
        }
        Ok(())
    }
}

impl Drop for DataParallel {
    /// Unhooks the parameters (they may outlive this); the communication thread ends once
    /// its queue is empty (its channel closes with the last `Shared`).
    fn drop(&mut self) {
        for (p, id) in self.hooks.drain(..) {
            p.remove_grad_hook(id);
        }
    }
}

/// The communicator on a thread of its own, answering jobs in order.
fn spawn_comm_thread(mut comm: Box<dyn Communicator>) -> Result<(Sender<Job>, Replies)> {
    let (jobs, job_rx) = channel::<Job>();
    let (reply_tx, replies) = channel();
    let name = format!("kiln-dp-comm-{}", comm.rank());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            for job in job_rx {
                let r = match job {
                    Job::AllReduce(Buf::Host(mut buf)) => {
                        comm.all_reduce(&mut buf, ReduceOp::Sum).map(|()| Buf::Host(buf))
                    }
                    Job::AllReduce(Buf::Device(t)) => all_reduce_tensor(comm.as_mut(), &t).map(|()| Buf::Device(t)),
                    Job::Broadcast(mut buf, root) => comm.broadcast(&mut buf, root).map(|()| Buf::Host(buf)),
                };
                let failed = r.is_err();
                if reply_tx.send(r).is_err() || failed {
                    // A failed collective leaves the ring in an unknown state: stop here, so
                    // later jobs fail at once instead of mixing up their peers.
                    break;
                }
            }
        })
        .map_err(|e| Error::invalid("DataParallel", format!("cannot start the communication thread: {e}")))?;
    Ok((jobs, replies))
}

/// Sums the bucket tensor `t` (a whole f32 buffer on a GPU) over ranks, in place.
fn all_reduce_tensor(comm: &mut dyn Communicator, t: &Tensor) -> Result<()> {
    let mut storage = t.storage_mut();
    match &mut *storage {
        Storage::Cuda(s) => comm.all_reduce_device(s, ReduceOp::Sum),
        Storage::Cpu(_) => Err(Error::invalid("DataParallel", "internal: a device bucket in host memory")),
    }
}

/// `out = scale × t`, in row-major order.
fn read_f32(t: &Tensor, out: &mut [f32], scale: f32) -> Result<()> {
    let storage = t.storage();
    match &*storage {
        Storage::Cpu(s) => match (s.data(), t.layout().contiguous_range()) {
            (CpuData::F32(v), Some(r)) => {
                for (o, x) in out.iter_mut().zip(&v[r]) {
                    *o = *x * scale;
                }
            }
            _ => {
                for (o, x) in out.iter_mut().zip(s.to_vec::<f32>(t.layout())) {
                    *o = x * scale;
                }
            }
        },
        Storage::Cuda(s) => {
            for (o, x) in out.iter_mut().zip(s.to_cpu()?.to_vec::<f32>(t.layout())) {
                *o = x * scale;
            }
        }
    }
    Ok(())
}

/// Overwrites the contiguous f32 tensor `t` with `src`, in place.
fn write_f32(t: &Tensor, src: &[f32]) -> Result<()> {
    let layout: Layout = t.layout().clone();
    let mut storage = t.storage_mut();
    match &mut *storage {
        Storage::Cpu(s) => match (s.data_mut(), layout.contiguous_range()) {
            (CpuData::F32(v), Some(r)) => {
                v[r].copy_from_slice(src);
                Ok(())
            }
            _ => Err(Error::invalid("DataParallel", "parameters must be contiguous f32")),
        },
        Storage::Cuda(s) => match layout.contiguous_range() {
            Some(r) if s.dtype() == DType::F32 => s.write_f32(r.start, src),
            _ => Err(Error::invalid("DataParallel", "parameters must be contiguous f32")),
        },
    }
}
