//! A model's parameters and gradients kept in step across ranks: parameters broadcast from
//! rank 0 once, gradients summed after every backward in buckets of about 25 MB (one
//! collective per bucket instead of one per tensor, and a bounded staging buffer).

use super::{Communicator, ReduceOp};
use crate::backend::cpu::CpuData;
use crate::backend::Storage;
use crate::{DType, Error, Layout, Result, Tensor};

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Data-parallel glue for one rank: its communicator and the model's parameters.
pub struct DataParallel {
    comm: Box<dyn Communicator>,
    params: Vec<Tensor>,
    /// Parameter index ranges, one per bucket, in parameter order.
    buckets: Vec<std::ops::Range<usize>>,
    buf: Vec<f32>,
}

impl DataParallel {
    /// Groups `params` into buckets of at most `bucket_bytes` (a larger tensor gets a bucket
    /// of its own). Parameters must be f32 and on the CPU.
    pub fn new(comm: Box<dyn Communicator>, params: Vec<Tensor>, bucket_bytes: usize) -> Result<DataParallel> {
        for p in &params {
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
        let mut buckets = Vec::new();
        let (mut start, mut elems) = (0, 0);
        for (i, p) in params.iter().enumerate() {
            if elems > 0 && elems + p.elem_count() > limit {
                buckets.push(start..i);
                (start, elems) = (i, 0);
            }
            elems += p.elem_count();
        }
        if start < params.len() {
            buckets.push(start..params.len());
        }
        Ok(DataParallel { comm, params, buckets, buf: Vec::new() })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }
    pub fn communicator(&mut self) -> &mut dyn Communicator {
        self.comm.as_mut()
    }
    /// Number of buckets the gradients travel in.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Overwrites every rank's parameters with rank 0's.
    pub fn broadcast_parameters(&mut self) -> Result<()> {
        for b in self.buckets.clone() {
            let len = self.pack(b.clone(), |p| Ok(Some(p.clone())), 1.0)?;
            self.comm.broadcast(&mut self.buf[..len], 0)?;
            let mut off = 0;
            for p in &self.params[b] {
                let n = p.elem_count();
                write_f32(p, &self.buf[off..off + n])?;
                off += n;
            }
        }
        Ok(())
    }

    /// Replaces every parameter's gradient by the sum over ranks of `weight ×` the rank's
    /// gradient (a parameter without a gradient counts as zeros). With `weight` = this rank's
    /// share of the global batch (its samples / all samples), the result is the gradient of
    /// the mean loss over the global batch, as one process training on all of it would get.
    pub fn all_reduce_gradients(&mut self, weight: f64) -> Result<()> {
        for b in self.buckets.clone() {
            let len = self.pack(b.clone(), |p| Ok(p.grad()), weight as f32)?;
            self.comm.all_reduce(&mut self.buf[..len], ReduceOp::Sum)?;
            let mut off = 0;
            for p in &self.params[b] {
                let n = p.elem_count();
                let g = Tensor::from_vec(self.buf[off..off + n].to_vec(), p.shape().clone(), p.device())?;
                p.set_grad(Some(g));
                off += n;
            }
        }
        Ok(())
    }

    /// Sums f64 values (metrics: loss sums, counts) over ranks. Each value travels as two
    /// f32s, its f32 rounding and the remainder, so sums keep about 48 bits of precision.
    pub fn all_reduce_f64(&mut self, values: &mut [f64]) -> Result<()> {
        let mut split: Vec<f32> = values
            .iter()
            .flat_map(|&v| {
                let hi = v as f32;
                [hi, (v - hi as f64) as f32]
            })
            .collect();
        self.comm.all_reduce(&mut split, ReduceOp::Sum)?;
        for (v, pair) in values.iter_mut().zip(split.chunks_exact(2)) {
            *v = pair[0] as f64 + pair[1] as f64;
        }
        Ok(())
    }

    /// Copies `scale ×` the tensor `get` picks from each parameter of `range` into the
    /// staging buffer (zeros where it picks none); returns the length used.
    fn pack(
        &mut self,
        range: std::ops::Range<usize>,
        get: impl Fn(&Tensor) -> Result<Option<Tensor>>,
        scale: f32,
    ) -> Result<usize> {
        let len: usize = self.params[range.clone()].iter().map(|p| p.elem_count()).sum();
        self.buf.clear();
        self.buf.resize(len, 0.0);
        let mut off = 0;
        for p in &self.params[range] {
            let n = p.elem_count();
            if let Some(t) = get(p)? {
                if t.shape() != p.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "DataParallel",
                        lhs: p.shape().clone(),
                        rhs: t.shape().clone(),
                    });
                }
                read_f32(&t, &mut self.buf[off..off + n], scale)?;
            }
            off += n;
        }
        Ok(len)
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
