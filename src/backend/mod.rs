//! Backends. `Storage` is the one enum over devices; each method below is the single
//! dispatch point of one op family (the place a future graph recorder wraps). The CUDA
//! variant joins the CPU one here.

pub mod cpu;
pub mod cuda;
mod ops;

pub use cpu::CpuStorage;
pub use ops::{AdamStep, BinaryOp, ReduceOp, UnaryOp, Window2d};

use crate::{DType, Device, Error, Layout, Result};
use cuda::storage::{self as cu, on_cpu, upload, CudaStorage};

/// A buffer on some device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Operands on different devices reached a backend op (tensor ops check devices first, so
/// this is a bug guard, reported rather than panicking).
fn mixed(op: &'static str, a: Device, b: Device) -> Error {
    Error::DeviceMismatch { op, lhs: a, rhs: b }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn full(value: f64, n: usize, dtype: DType, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::full(value, n, dtype))),
            d => Ok(Storage::Cuda(cu::from_cpu_on(d, &CpuStorage::full(value, n, dtype))?)),
        }
    }
    pub fn from_f64(values: Vec<f64>, dtype: DType, device: Device) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::from_f64(values, dtype))),
            d => Ok(Storage::Cuda(cu::from_cpu_on(d, &CpuStorage::from_f64(values, dtype))?)),
        }
    }

    /// A copy of this buffer on `device` (the whole buffer; layouts stay valid).
    pub fn to_device(&self, device: Device) -> Result<Storage> {
        let _p = crate::profile::scope("to_device");
        let cpu = match self {
            Storage::Cpu(s) => s.clone(),
            Storage::Cuda(s) => s.to_cpu()?,
        };
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu)),
            d => Ok(Storage::Cuda(cu::from_cpu_on(d, &cpu)?)),
        }
    }
    /// A full copy on the same device.
    pub fn try_clone(&self) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.clone())),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.try_clone()?)),
        }
    }

    pub fn to_contiguous(&self, l: &Layout) -> Result<Storage> {
        let _p = crate::profile::scope("copy");
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(cpu::to_contiguous(s, l))),
            Storage::Cuda(s) => Ok(Storage::Cuda(cu::to_contiguous_as(s, l, s.dtype())?)),
        }
    }
    pub fn cast(&self, l: &Layout, dtype: DType) -> Result<Storage> {
        let _p = crate::profile::scope("cast");
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.cast(l, dtype))),
            Storage::Cuda(s) => Ok(Storage::Cuda(cu::to_contiguous_as(s, l, dtype)?)),
        }
    }
    /// Copies `src` (viewed by `src_l`) into the region `dst_l` of `self`.
    pub fn copy_into(&mut self, dst_l: &Layout, src: &Storage, src_l: &Layout) -> Result<()> {
        let _p = crate::profile::scope("copy_into");
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => cpu::copy_into(d, dst_l, s, src_l),
            (Storage::Cuda(d), Storage::Cuda(s)) => return cu::copy_into(d, dst_l, s, src_l),
            (d, s) => return Err(mixed("copy_into", d.device(), s.device())),
        }
        Ok(())
    }
    pub fn indices(&self, l: &Layout, op: &'static str) -> Result<Vec<i64>> {
        match self {
            Storage::Cpu(s) => s.indices(l, op),
            Storage::Cuda(s) => on_cpu(s)?.indices(l, op),
        }
    }

    pub fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        let _p = crate::profile::scope(op.name());
        match self {
            Storage::Cpu(s) => cpu::unary(s, l, op).map(Storage::Cpu),
            Storage::Cuda(s) => cu::unary(s, l, op).map(Storage::Cuda),
        }
    }
    pub fn binary(&self, l: &Layout, rhs: &Storage, rl: &Layout, op: BinaryOp) -> Result<Storage> {
        let _p = crate::profile::scope(op.name());
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => cpu::binary(a, l, b, rl, op).map(Storage::Cpu),
            (Storage::Cuda(a), Storage::Cuda(b)) => cu::binary(a, l, b, rl, op).map(Storage::Cuda),
            (a, b) => Err(mixed("binary", a.device(), b.device())),
        }
    }
    pub fn where_cond(&self, l: &Layout, a: &Storage, la: &Layout, b: &Storage, lb: &Layout) -> Result<Storage> {
        let _p = crate::profile::scope("where");
        match (self, a, b) {
            (Storage::Cpu(c), Storage::Cpu(a), Storage::Cpu(b)) => {
                cpu::where_cond(c, l, a, la, b, lb).map(Storage::Cpu)
            }
            (Storage::Cuda(c), Storage::Cuda(a), Storage::Cuda(b)) => cu::host("host:where", || {
                upload(c, cpu::where_cond(&on_cpu(c)?, l, &on_cpu(a)?, la, &on_cpu(b)?, lb)?).map(Storage::Cuda)
            }),
            (c, a, _) => Err(mixed("where", c.device(), a.device())),
        }
    }
    pub fn reduce(&self, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<Storage> {
        let _p = crate::profile::scope(op.name());
        match self {
            Storage::Cpu(s) => cpu::reduce(s, l, dims, op).map(Storage::Cpu),
            Storage::Cuda(s) => cu::reduce(s, l, dims, op).map(Storage::Cuda),
        }
    }
    pub fn matmul(&self, l: &Layout, rhs: &Storage, rl: &Layout) -> Result<Storage> {
        let _p = crate::profile::scope("matmul");
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => cpu::matmul(a, l, b, rl).map(Storage::Cpu),
            (Storage::Cuda(a), Storage::Cuda(b)) => {
                cu::host("host:matmul", || upload(a, cpu::matmul(&on_cpu(a)?, l, &on_cpu(b)?, rl)?).map(Storage::Cuda))
            }
            (a, b) => Err(mixed("matmul", a.device(), b.device())),
        }
    }
    pub fn index_select(&self, l: &Layout, dim: usize, idx: &[i64]) -> Result<Storage> {
        let _p = crate::profile::scope("index_select");
        match self {
            Storage::Cpu(s) => cpu::index_select(s, l, dim, idx).map(Storage::Cpu),
            Storage::Cuda(s) => cu::host("host:index_select", || {
                upload(s, cpu::index_select(&on_cpu(s)?, l, dim, idx)?).map(Storage::Cuda)
            }),
        }
    }
    pub fn index_add(&self, l: &Layout, dim: usize, idx: &[i64], src: &Storage, sl: &Layout) -> Result<Storage> {
        let _p = crate::profile::scope("index_add");
        match (self, src) {
            (Storage::Cpu(b), Storage::Cpu(s)) => cpu::index_add(b, l, dim, idx, s, sl).map(Storage::Cpu),
            (Storage::Cuda(b), Storage::Cuda(s)) => cu::host("host:index_add", || {
                upload(b, cpu::index_add(&on_cpu(b)?, l, dim, idx, &on_cpu(s)?, sl)?).map(Storage::Cuda)
            }),
            (b, s) => Err(mixed("index_add", b.device(), s.device())),
        }
    }
    pub fn gather(&self, l: &Layout, dim: usize, index: &[i64], n: usize) -> Result<Storage> {
        let _p = crate::profile::scope("gather");
        match self {
            Storage::Cpu(s) => cpu::gather(s, l, dim, index, n).map(Storage::Cpu),
            Storage::Cuda(s) => {
                cu::host("host:gather", || upload(s, cpu::gather(&on_cpu(s)?, l, dim, index, n)?).map(Storage::Cuda))
            }
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_add(
        &self,
        l: &Layout,
        dim: usize,
        index: &[i64],
        n: usize,
        src: &Storage,
        sl: &Layout,
    ) -> Result<Storage> {
        let _p = crate::profile::scope("scatter_add");
        match (self, src) {
            (Storage::Cpu(b), Storage::Cpu(s)) => cpu::scatter_add(b, l, dim, index, n, s, sl).map(Storage::Cpu),
            (Storage::Cuda(b), Storage::Cuda(s)) => cu::host("host:scatter_add", || {
                upload(b, cpu::scatter_add(&on_cpu(b)?, l, dim, index, n, &on_cpu(s)?, sl)?).map(Storage::Cuda)
            }),
            (b, s) => Err(mixed("scatter_add", b.device(), s.device())),
        }
    }
    pub fn im2col(&self, l: &Layout, w: &Window2d) -> Result<Storage> {
        let _p = crate::profile::scope("im2col");
        match self {
            Storage::Cpu(s) => cpu::im2col(s, l, w).map(Storage::Cpu),
            Storage::Cuda(s) => {
                cu::host("host:im2col", || upload(s, cpu::im2col(&on_cpu(s)?, l, w)?).map(Storage::Cuda))
            }
        }
    }
    pub fn col2im(&self, l: &Layout, x_dims: &[usize], w: &Window2d) -> Result<Storage> {
        let _p = crate::profile::scope("col2im");
        match self {
            Storage::Cpu(s) => cpu::col2im(s, l, x_dims, w).map(Storage::Cpu),
            Storage::Cuda(s) => {
                cu::host("host:col2im", || upload(s, cpu::col2im(&on_cpu(s)?, l, x_dims, w)?).map(Storage::Cuda))
            }
        }
    }
    pub fn max_pool2d(&self, l: &Layout, w: &Window2d) -> Result<(Storage, Storage)> {
        let _p = crate::profile::scope("max_pool2d");
        match self {
            Storage::Cpu(s) => cpu::max_pool2d(s, l, w).map(|(v, i)| (Storage::Cpu(v), Storage::Cpu(i))),
            Storage::Cuda(s) => cu::host("host:max_pool2d", || {
                let (v, i) = cpu::max_pool2d(&on_cpu(s)?, l, w)?;
                Ok((Storage::Cuda(upload(s, v)?), Storage::Cuda(upload(s, i)?)))
            }),
        }
    }
    /// Gradient of max_pool2d: `g` [planes, out] added at `idx` into zeros [planes, plane_len].
    pub fn max_pool2d_backward(&self, l: &Layout, idx: &[i64], planes: usize, plane_len: usize) -> Result<Storage> {
        let _p = crate::profile::scope("max_pool2d_backward");
        match self {
            Storage::Cpu(s) => cpu::max_pool2d_backward(s, l, idx, planes, plane_len).map(Storage::Cpu),
            Storage::Cuda(s) => cu::host("host:max_pool2d_backward", || {
                upload(s, cpu::max_pool2d_backward(&on_cpu(s)?, l, idx, planes, plane_len)?).map(Storage::Cuda)
            }),
        }
    }
    pub fn softmax_last_dim(&self, l: &Layout, log: bool) -> Result<Storage> {
        let _p = crate::profile::scope("softmax");
        match self {
            Storage::Cpu(s) => cpu::softmax_last_dim(s, l, log).map(Storage::Cpu),
            Storage::Cuda(s) => cu::softmax_last_dim(s, l, log).map(Storage::Cuda),
        }
    }
    /// One fused Adam/AdamW step in place on `self` (the parameter), `m` and `v`, reading
    /// `g`; all contiguous with the same length. Ok(false): no fused kernel for this dtype.
    pub fn adam_step(&mut self, g: &Storage, m: &mut Storage, v: &mut Storage, h: &AdamStep) -> Result<bool> {
        let _p = crate::profile::scope("adam_step");
        match (self, g, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => Ok(cpu::adam_step(p, g, m, v, h)),
            (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => cu::adam_step(p, g, m, v, h),
            (p, g, _, _) => Err(mixed("adam_step", p.device(), g.device())),
        }
    }
    pub fn cross_entropy(
        &self,
        l: &Layout,
        labels: &[i64],
        smoothing: f64,
        want_grad: bool,
    ) -> Result<(f64, Option<Storage>)> {
        let _p = crate::profile::scope("cross_entropy");
        match self {
            Storage::Cpu(s) => {
                cpu::cross_entropy(s, l, labels, smoothing, want_grad).map(|(v, g)| (v, g.map(Storage::Cpu)))
            }
            Storage::Cuda(s) => {
                cu::cross_entropy(s, l, labels, smoothing, want_grad).map(|(v, g)| (v, g.map(Storage::Cuda)))
            }
        }
    }
}
