//! Backends. `Storage` is the one enum over devices; each method below is the single
//! dispatch point of one op family (the place a future graph recorder wraps). The CUDA
//! variant joins the CPU one here.

pub mod cpu;
pub mod cuda;
mod ops;

pub use cpu::{ConvGeom, CpuStorage, Epilogue};
pub(crate) use ops::merge_dims;
pub use ops::{AdamStep, BinaryOp, BnCoeffs, ChannelPartials, ChannelSums, NcsDims, ReduceOp, UnaryOp, Window2d};

use crate::{DType, Device, Error, Layout, Result};
use cuda::storage::{self as cu, on_cpu, upload, CudaStorage};

/// A CPU operand of a multi-input op (operands on another device: a mismatch error).
fn cpu_operand<'a>((s, l): (&'a Storage, &'a Layout)) -> Result<(&'a CpuStorage, &'a Layout)> {
    match s {
        Storage::Cpu(s) => Ok((s, l)),
        other => Err(mixed("conv2d", Device::Cpu, other.device())),
    }
}

/// Another operand of a conv2d whose first operand is on the CUDA device `dev` (elsewhere:
/// a mismatch error).
fn cuda_storage(dev: Device, s: &Storage) -> Result<&CudaStorage> {
    cuda_storage_for("conv2d", dev, s)
}

fn cuda_operand<'a>(dev: Device, (s, l): (&'a Storage, &'a Layout)) -> Result<(&'a CudaStorage, &'a Layout)> {
    Ok((cuda_storage(dev, s)?, l))
}

/// The epilogue a conv2d backward undoes, from the forward outputs it was handed.
fn backward_epilogue(fused: &[&Storage]) -> Epilogue {
    match fused.len() {
        0 => Epilogue::None,
        1 => Epilogue::Relu,
        _ => Epilogue::ReluMaxPool2,
    }
}

/// A CUDA operand copied to the host (the host path of multi-input ops).
fn host_operand((s, l): (&Storage, &Layout)) -> Result<(CpuStorage, Layout)> {
    match s {
        Storage::Cuda(s) => Ok((on_cpu(s)?, l.clone())),
        other => Err(mixed("conv2d", other.device(), Device::CudaEmulated)),
    }
}

/// A buffer on some device.
#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Another operand of `op` whose first operand is on the CPU (elsewhere: a mismatch error).
fn cpu_storage<'a>(op: &'static str, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(c) => Ok(c),
        other => Err(mixed(op, Device::Cpu, other.device())),
    }
}

/// Another operand of `op` whose first operand is on the CUDA device `dev`.
fn cuda_storage_for<'a>(op: &'static str, dev: Device, s: &'a Storage) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) if c.device() == dev => Ok(c),
        other => Err(mixed(op, dev, other.device())),
    }
}

/// The fused batch-norm passes' operands: all F32, each holding at least the elements the
/// pass reads (x: n·c·s; the per-channel vectors: c).
fn check_ncs(op: &'static str, d: NcsDims, x: &Storage, operands: &[(&Storage, usize)]) -> Result<()> {
    for (s, need) in std::iter::once((x, d.n * d.c * d.s)).chain(operands.iter().copied()) {
        if s.dtype() != DType::F32 {
            return Err(Error::UnsupportedDType { op, dtype: s.dtype(), msg: "the fused batch norm takes F32" });
        }
        if s.len() < need {
            return Err(Error::invalid(op, format!("an operand of {} elements where {d:?} needs {need}", s.len())));
        }
    }
    Ok(())
}

/// One parameter's (p, g, m, v) for [`Storage::adam_step_many`].
pub type AdamItem<'a> = (&'a mut Storage, &'a Storage, &'a mut Storage, &'a mut Storage);

/// Per-channel vectors of batch norm: F32, at least `c` (> 0) elements each (`c`: channels,
/// or channels × pieces for partial sums).
fn check_channel_vectors(op: &'static str, c: usize, vs: &[&Storage]) -> Result<()> {
    if c == 0 {
        return Err(Error::invalid(op, "no channels"));
    }
    for s in vs {
        if s.dtype() != DType::F32 {
            return Err(Error::UnsupportedDType { op, dtype: s.dtype(), msg: "the fused batch norm takes F32" });
        }
        if s.len() < c {
            return Err(Error::invalid(op, format!("a per-channel vector of {} elements for {c} channels", s.len())));
        }
    }
    Ok(())
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
            (Storage::Cuda(c), Storage::Cuda(a), Storage::Cuda(b)) => {
                cu::where_cond(c, l, a, la, b, lb).map(Storage::Cuda)
            }
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
            (Storage::Cuda(a), Storage::Cuda(b)) => cu::matmul(a, l, b, rl).map(Storage::Cuda),
            (a, b) => Err(mixed("matmul", a.device(), b.device())),
        }
    }
    pub fn index_select(&self, l: &Layout, dim: usize, idx: &[i64]) -> Result<Storage> {
        let _p = crate::profile::scope("index_select");
        match self {
            Storage::Cpu(s) => cpu::index_select(s, l, dim, idx).map(Storage::Cpu),
            Storage::Cuda(s) => cu::index_select(s, l, dim, idx).map(Storage::Cuda),
        }
    }
    pub fn index_add(&self, l: &Layout, dim: usize, idx: &[i64], src: &Storage, sl: &Layout) -> Result<Storage> {
        let _p = crate::profile::scope("index_add");
        match (self, src) {
            (Storage::Cpu(b), Storage::Cpu(s)) => cpu::index_add(b, l, dim, idx, s, sl).map(Storage::Cpu),
            (Storage::Cuda(b), Storage::Cuda(s)) => cu::index_add(b, l, dim, idx, s, sl).map(Storage::Cuda),
            (b, s) => Err(mixed("index_add", b.device(), s.device())),
        }
    }
    pub fn gather(&self, l: &Layout, dim: usize, index: &[i64], n: usize) -> Result<Storage> {
        let _p = crate::profile::scope("gather");
        match self {
            Storage::Cpu(s) => cpu::gather(s, l, dim, index, n).map(Storage::Cpu),
            Storage::Cuda(s) => cu::gather(s, l, dim, index, n).map(Storage::Cuda),
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
            (Storage::Cuda(b), Storage::Cuda(s)) => cu::scatter_add(b, l, dim, index, n, s, sl).map(Storage::Cuda),
            (b, s) => Err(mixed("scatter_add", b.device(), s.device())),
        }
    }
    pub fn im2col(&self, l: &Layout, w: &Window2d) -> Result<Storage> {
        let _p = crate::profile::scope("im2col");
        match self {
            Storage::Cpu(s) => cpu::im2col(s, l, w).map(Storage::Cpu),
            Storage::Cuda(s) => cuda::conv::im2col_op(s, l, w).map(Storage::Cuda),
        }
    }
    pub fn col2im(&self, l: &Layout, x_dims: &[usize], w: &Window2d) -> Result<Storage> {
        let _p = crate::profile::scope("col2im");
        match self {
            Storage::Cpu(s) => cpu::col2im(s, l, x_dims, w).map(Storage::Cpu),
            Storage::Cuda(s) => cuda::conv::col2im_op(s, l, x_dims, w).map(Storage::Cuda),
        }
    }
    /// 2-D convolution: `self` is x [n, c, h, w], `w` the weight [o, c/groups, kh, kw],
    /// `b` the optional bias [o]; the result is contiguous [n, o, oh, ow], then passed
    /// through what `epi` asks for (with a fused 2x2 max pool: the pooled result and the
    /// argmax indices, as `max_pool2d` gives them).
    pub fn conv2d(
        &self,
        l: &Layout,
        w: (&Storage, &Layout),
        b: Option<(&Storage, &Layout)>,
        geom: &ConvGeom,
        epi: Epilogue,
    ) -> Result<(Storage, Option<Storage>)> {
        let _p = crate::profile::scope(match epi {
            Epilogue::None => "conv2d",
            Epilogue::Relu => "conv2d_relu",
            Epilogue::ReluMaxPool2 => "conv2d_relu_maxpool2",
        });
        match self {
            Storage::Cpu(x) => cpu::conv2d((x, l), cpu_operand(w)?, b.map(cpu_operand).transpose()?, geom, epi)
                .map(|(v, i)| (Storage::Cpu(v), i.map(Storage::Cpu))),
            Storage::Cuda(x) if cuda::conv::on_device(x, geom, epi) => {
                let dev = x.device();
                let (w, b) = (cuda_operand(dev, w)?, b.map(|b| cuda_operand(dev, b)).transpose()?);
                let (v, i) = cuda::conv::conv2d(x, l, w, b, geom, epi)?;
                Ok((Storage::Cuda(v), i.map(Storage::Cuda)))
            }
            Storage::Cuda(x) => cu::host("host:conv2d", || {
                let w = host_operand(w)?;
                let b = b.map(host_operand).transpose()?;
                let (v, i) = cpu::conv2d((&on_cpu(x)?, l), (&w.0, &w.1), b.as_ref().map(|(s, l)| (s, l)), geom, epi)?;
                Ok((Storage::Cuda(upload(x, v)?), i.map(|i| upload(x, i)).transpose()?.map(Storage::Cuda)))
            }),
        }
    }
    /// conv2d's gradients w.r.t. (x, weight, bias), each computed only where `need` says,
    /// from the gradient `self` of the op's output. `fused`: the op's fused-epilogue outputs
    /// (ReLU output; pooled output and indices), whose backward is applied first.
    pub fn conv2d_backward(
        &self,
        l: &Layout,
        x: (&Storage, &Layout),
        w: (&Storage, &Layout),
        fused: &[&Storage],
        geom: &ConvGeom,
        need: [bool; 3],
    ) -> Result<[Option<Storage>; 3]> {
        let _p = crate::profile::scope("conv2d_backward");
        fn fused_of<'a>(v: &[&'a CpuStorage]) -> Result<cpu::Fused<'a>> {
            Ok(match v {
                [] => cpu::Fused::None,
                [o] => cpu::Fused::Relu(o),
                [o, i] => cpu::Fused::ReluMaxPool2(o, i),
                _ => return Err(crate::Error::invalid("conv2d", "at most two fused outputs")),
            })
        }
        match self {
            Storage::Cpu(g) => {
                let fused_cpu: Vec<&CpuStorage> = fused
                    .iter()
                    .map(|s| match s {
                        Storage::Cpu(s) => Ok(s),
                        other => Err(mixed("conv2d_backward", Device::Cpu, other.device())),
                    })
                    .collect::<Result<_>>()?;
                let (x, w) = (cpu_operand(x)?, cpu_operand(w)?);
                Ok(cpu::conv2d_backward((g, l), x, w, fused_of(&fused_cpu)?, geom, need)?.map(|s| s.map(Storage::Cpu)))
            }
            Storage::Cuda(g) if cuda::conv::on_device(g, geom, backward_epilogue(fused)) => {
                let dev = g.device();
                let fused_cuda: Vec<&CudaStorage> =
                    fused.iter().map(|s| cuda_storage(dev, s)).collect::<Result<_>>()?;
                let (x, w) = (cuda_operand(dev, x)?, cuda_operand(dev, w)?);
                let grads = cuda::conv::conv2d_backward(g, l, x, w, &fused_cuda, geom, need)?;
                Ok(grads.map(|s| s.map(Storage::Cuda)))
            }
            Storage::Cuda(g) => cu::host("host:conv2d_backward", || {
                let owned: Vec<CpuStorage> =
                    fused.iter().map(|s| host_operand((s, l)).map(|(c, _)| c)).collect::<Result<_>>()?;
                let fused_cpu: Vec<&CpuStorage> = owned.iter().collect();
                let (x, w) = (host_operand(x)?, host_operand(w)?);
                let grads = cpu::conv2d_backward(
                    (&on_cpu(g)?, l),
                    (&x.0, &x.1),
                    (&w.0, &w.1),
                    fused_of(&fused_cpu)?,
                    geom,
                    need,
                )?;
                let mut out: [Option<Storage>; 3] = [None, None, None];
                for (o, s) in out.iter_mut().zip(grads) {
                    *o = s.map(|s| upload(g, s)).transpose()?.map(Storage::Cuda);
                }
                Ok(out)
            }),
        }
    }
    pub fn max_pool2d(&self, l: &Layout, w: &Window2d) -> Result<(Storage, Storage)> {
        let _p = crate::profile::scope("max_pool2d");
        match self {
            Storage::Cpu(s) => cpu::max_pool2d(s, l, w).map(|(v, i)| (Storage::Cpu(v), Storage::Cpu(i))),
            Storage::Cuda(s) => cuda::conv::max_pool2d_op(s, l, w).map(|(v, i)| (Storage::Cuda(v), Storage::Cuda(i))),
        }
    }
    /// Gradient of max_pool2d over x [n, c, h, w] (`x_dims`) with window `w`: each output
    /// gradient `g` [n, c, oh, ow] added at its window's argmax `idx` (max_pool2d's index
    /// storage: I64 plane offsets, contiguous), into zeros shaped like x.
    pub fn max_pool2d_backward(&self, l: &Layout, idx: &Storage, x_dims: [usize; 4], w: &Window2d) -> Result<Storage> {
        let _p = crate::profile::scope("max_pool2d_backward");
        let [n, c, h, wd] = x_dims;
        match (self, idx) {
            (Storage::Cpu(s), Storage::Cpu(idx)) => {
                cpu::max_pool2d_backward(s, l, idx, n * c, h * wd).map(Storage::Cpu)
            }
            (Storage::Cuda(s), Storage::Cuda(idx)) => {
                cuda::conv::max_pool2d_backward_op(s, l, idx, x_dims, w).map(Storage::Cuda)
            }
            (s, i) => Err(mixed("max_pool2d_backward", s.device(), i.device())),
        }
    }
    /// Per-channel sums over `self`, a contiguous F32 x [n, c, s] (see [`ChannelSums`]), as
    /// [c, pieces] partial sums (see [`ChannelPartials`]): for `Gradients` Σdy·x̂'s beside
    /// Σdy's.
    pub fn channel_sums(&self, d: NcsDims, what: ChannelSums<&Storage>) -> Result<ChannelPartials<Storage>> {
        let _p = crate::profile::scope("channel_sums");
        check_ncs("channel_sums", d, self, &what.operands(d))?;
        if let ChannelSums::SquaredDeviations { pieces: 0, .. } = what {
            return Err(Error::invalid("channel_sums", "partial sums of 0 pieces"));
        }
        match self {
            Storage::Cpu(x) => {
                let what = what.try_map(|s| cpu_storage("channel_sums", s))?;
                let p = cpu::channel_sums(x, d, what)?;
                Ok(ChannelPartials {
                    first: Storage::Cpu(p.first),
                    second: p.second.map(Storage::Cpu),
                    pieces: p.pieces,
                })
            }
            Storage::Cuda(x) => {
                let dev = x.device();
                let what = what.try_map(|s| cuda_storage_for("channel_sums", dev, s))?;
                let p = cuda::norm::channel_sums(x, d, what)?;
                Ok(ChannelPartials {
                    first: Storage::Cuda(p.first),
                    second: p.second.map(Storage::Cuda),
                    pieces: p.pieces,
                })
            }
        }
    }
    /// a[ch]·self + b[ch]·v + d[ch] over contiguous F32 [n, c, s] (without v: a[ch]·self +
    /// d[ch]); a, b, d are F32 [c].
    pub fn channel_affine(
        &self,
        v: Option<&Storage>,
        d: NcsDims,
        (a, b, dd): (&Storage, &Storage, &Storage),
    ) -> Result<Storage> {
        let _p = crate::profile::scope("channel_affine");
        let mut operands = vec![(a, d.c), (b, d.c), (dd, d.c)];
        operands.extend(v.map(|v| (v, d.n * d.c * d.s)));
        check_ncs("channel_affine", d, self, &operands)?;
        match self {
            Storage::Cpu(u) => {
                let c = |s| cpu_storage("channel_affine", s);
                let v = v.map(c).transpose()?;
                cpu::channel_affine(u, v, d, (c(a)?, c(b)?, c(dd)?)).map(Storage::Cpu)
            }
            Storage::Cuda(u) => {
                let c = |s| cuda_storage_for("channel_affine", u.device(), s);
                let v = v.map(c).transpose()?;
                cuda::norm::channel_affine(u, v, d, (c(a)?, c(b)?, c(dd)?)).map(Storage::Cuda)
            }
        }
    }
    /// Batch norm's per-channel arithmetic (see [`BnCoeffs`]): 5 new F32 [c] vectors.
    pub fn bn_coeffs(c: usize, what: BnCoeffs<&Storage>) -> Result<Vec<Storage>> {
        let _p = crate::profile::scope("bn_coeffs");
        if what.pieces() == 0 {
            return Err(Error::invalid("bn_coeffs", "partial sums of 0 pieces"));
        }
        for (s, need) in what.inputs(c) {
            check_channel_vectors("bn_coeffs", need, &[s])?;
        }
        match what.inputs(c)[0].0 {
            Storage::Cpu(_) => {
                let what = what.try_map(|s| cpu_storage("bn_coeffs", s))?;
                Ok(cpu::bn_coeffs(c, what)?.into_iter().map(Storage::Cpu).collect())
            }
            Storage::Cuda(first) => {
                let dev = first.device();
                let what = what.try_map(|s| cuda_storage_for("bn_coeffs", dev, s))?;
                Ok(cuda::norm::bn_coeffs(c, what)?.into_iter().map(Storage::Cuda).collect())
            }
        }
    }
    /// BatchNorm's running statistics, in place: `self` (running_mean) and `running_var` ←
    /// (1 - momentum)·running + momentum·(mean, var·unbias), all F32 [c]; `counter`
    /// (num_batches_tracked, one I64) += 1.
    pub fn bn_running(
        &mut self,
        running_var: &mut Storage,
        counter: Option<&mut Storage>,
        (mean, var): (&Storage, &Storage),
        (momentum, unbias): (f64, f64),
        c: usize,
    ) -> Result<()> {
        let _p = crate::profile::scope("bn_running");
        check_channel_vectors("bn_running", c, &[&*self, &*running_var, mean, var])?;
        if let Some(n) = counter.as_deref() {
            if n.dtype() != DType::I64 || n.len() != 1 {
                return Err(Error::invalid(
                    "bn_running",
                    format!("the counter is {} {:?} (want one I64)", n.len(), n.dtype()),
                ));
            }
        }
        let coeffs = ((1.0 - momentum) as f32, momentum as f32, unbias as f32);
        let dev = self.device();
        match (self, running_var, counter) {
            (Storage::Cpu(rm), Storage::Cpu(rv), n) => {
                let n = match n {
                    Some(Storage::Cpu(n)) => Some(n),
                    Some(other) => return Err(mixed("bn_running", Device::Cpu, other.device())),
                    None => None,
                };
                let (m, v) = (cpu_storage("bn_running", mean)?, cpu_storage("bn_running", var)?);
                cpu::bn_running(rm, rv, n, m, v, coeffs, c)
            }
            (Storage::Cuda(rm), Storage::Cuda(rv), n) if rv.device() == dev => {
                let n = match n {
                    Some(Storage::Cuda(n)) if n.device() == dev => Some(n),
                    Some(other) => return Err(mixed("bn_running", dev, other.device())),
                    None => None,
                };
                let (m, v) = (cuda_storage_for("bn_running", dev, mean)?, cuda_storage_for("bn_running", dev, var)?);
                cuda::norm::bn_running((rm, rv), n, (m, v), coeffs, c)
            }
            (_, rv, _) => Err(mixed("bn_running", dev, rv.device())),
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
    /// `adam_step` for many parameters with the same hyper-parameters, each item (p, g, m,
    /// v) as `adam_step` takes them. On a GPU one launch for all of them (was one each: 62
    /// per ResNet-18 step); on the CPU one by one. Ok(false), nothing changed: an item has
    /// no fused kernel (dtype) or the items are not all on one device.
    pub fn adam_step_many(items: &mut [AdamItem<'_>], h: &AdamStep) -> Result<bool> {
        let _p = crate::profile::scope("adam_step_many");
        let Some(first) = items.first() else { return Ok(true) };
        let device = first.0.device();
        let same_device =
            items.iter().all(|(p, g, m, v)| [p.device(), g.device(), m.device(), v.device()] == [device; 4]);
        if !same_device {
            return Ok(false);
        }
        if device == Device::Cpu {
            // All or none: stepping some and then answering false would make the caller step
            // those again. The CPU's fused step takes F32 and F64, all four buffers alike.
            let fused = |(p, g, m, v): &AdamItem<'_>| {
                matches!(p.dtype(), DType::F32 | DType::F64) && [g.dtype(), m.dtype(), v.dtype()] == [p.dtype(); 3]
            };
            if !items.iter().all(fused) {
                return Ok(false);
            }
            for (p, g, m, v) in items.iter_mut() {
                if !p.adam_step(g, m, v, h)? {
                    return Err(Error::invalid("adam_step", "internal: the fused step refused a buffer it takes"));
                }
            }
            return Ok(true);
        }
        let mut cuda = Vec::with_capacity(items.len());
        for (p, g, m, v) in items.iter_mut() {
            match (&mut **p, &**g, &mut **m, &mut **v) {
                (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => cuda.push((p, g, m, v)),
                _ => return Ok(false),
            }
        }
        cu::adam_step_many(&mut cuda, h)
    }
    /// Mean cross-entropy of logits `self` [n, classes] at the I64 `labels` [n]: the loss as
    /// one element of the logits' dtype on their device, and the gradient (softmax - target)/n
    /// if wanted. On a GPU neither the labels nor the loss visit the host (a bad label is
    /// reported at the next sync, see `cu::Labels`), so reading the loss is the caller's
    /// choice of sync.
    pub fn cross_entropy(
        &self,
        l: &Layout,
        labels: &Storage,
        ll: &Layout,
        smoothing: f64,
        want_grad: bool,
    ) -> Result<(Storage, Option<Storage>)> {
        let _p = crate::profile::scope("cross_entropy");
        match (self, labels) {
            (Storage::Cpu(s), _) => {
                let labels = labels.indices(ll, "cross_entropy")?;
                let (loss, g) = cpu::cross_entropy(s, l, &labels, smoothing, want_grad)?;
                Ok((Storage::full(loss, 1, s.dtype(), Device::Cpu)?, g.map(Storage::Cpu)))
            }
            (Storage::Cuda(s), labels) => {
                let host;
                let labels = match labels {
                    Storage::Cuda(y) => cu::Labels::Device(y, ll),
                    Storage::Cpu(y) => {
                        host = y.indices(ll, "cross_entropy")?;
                        cu::Labels::Host(&host)
                    }
                };
                cu::cross_entropy(s, l, labels, smoothing, want_grad)
                    .map(|(v, g)| (Storage::Cuda(v), g.map(Storage::Cuda)))
            }
        }
    }
}
