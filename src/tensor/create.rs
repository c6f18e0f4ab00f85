//! Making tensors: from data, filled, ranges, random.

use super::Tensor;
use crate::backend::{CpuStorage, Storage};
use crate::{rng, DType, Device, Error, Layout, Result, Shape, WithDType};

impl Tensor {
    /// A tensor holding `data` with `shape` (row-major).
    pub fn from_vec<T: WithDType>(data: Vec<T>, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::ElementCount { op: "from_vec", shape, got: data.len() });
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(CpuStorage::from_vec(data)),
            d => Storage::Cuda(crate::backend::cuda::storage::from_cpu_on(d, &CpuStorage::from_vec(data))?),
        };
        Ok(Tensor::from_storage(storage, Layout::contiguous(shape)))
    }

    /// A 1-D tensor copied from `data`.
    pub fn from_slice<T: WithDType>(data: &[T], device: Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), [data.len()], device)
    }

    /// A 0-d tensor.
    pub fn scalar(value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(value, [], dtype, device)
    }

    pub fn full(value: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        let shape = shape.into();
        let s = Storage::full(value, shape.elem_count(), dtype, device)?;
        Ok(Tensor::from_storage(s, Layout::contiguous(shape)))
    }
    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }
    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape().clone(), self.dtype(), self.device())
    }
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape().clone(), self.dtype(), self.device())
    }
    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(value, self.shape().clone(), self.dtype(), self.device())
    }

    /// start, start+step, ... up to (not including) end.
    pub fn arange(start: f64, end: f64, step: f64, dtype: DType, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("start {start}, end {end}, step {step}: need finite values and a non-zero step"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
        Ok(Tensor::from_storage(Storage::from_f64(v, dtype, device)?, Layout::contiguous(Shape::new(vec![n]))))
    }

    /// Uniform in [0, 1) from the global generator (see [`crate::manual_seed`]).
    pub fn rand(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::random(shape.into(), dtype, device, "rand", |g| g.uniform())
    }

    /// Uniform in [low, high).
    pub fn uniform(low: f64, high: f64, shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::random(shape.into(), dtype, device, "uniform", |g| low + (high - low) * g.uniform())
    }

    /// Standard normal from the global generator.
    pub fn randn(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::random(shape.into(), dtype, device, "randn", |g| g.normal())
    }

    /// Uniform in [0, 1) from an explicit generator.
    pub fn rand_with(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        gen: &mut rng::Generator,
    ) -> Result<Tensor> {
        Tensor::random_from(shape.into(), dtype, device, "rand", gen, |g| g.uniform())
    }

    /// Standard normal from an explicit generator.
    pub fn randn_with(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        gen: &mut rng::Generator,
    ) -> Result<Tensor> {
        Tensor::random_from(shape.into(), dtype, device, "randn", gen, |g| g.normal())
    }

    fn random(
        shape: Shape,
        dtype: DType,
        device: Device,
        op: &'static str,
        f: impl FnMut(&mut rng::Generator) -> f64,
    ) -> Result<Tensor> {
        rng::with_global(|g| Tensor::random_from(shape, dtype, device, op, g, f))
    }

    fn random_from(
        shape: Shape,
        dtype: DType,
        device: Device,
        op: &'static str,
        gen: &mut rng::Generator,
        mut f: impl FnMut(&mut rng::Generator) -> f64,
    ) -> Result<Tensor> {
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op, dtype, msg: "random values need a float dtype" });
        }
        let v: Vec<f64> = (0..shape.elem_count()).map(|_| f(gen)).collect();
        Ok(Tensor::from_storage(Storage::from_f64(v, dtype, device)?, Layout::contiguous(shape)))
    }

    /// Converts to another dtype (differentiable between float types).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self.storage().cast(self.layout(), dtype)?;
        let from = self.dtype();
        let track = from.is_float() && dtype.is_float();
        Ok(Tensor::from_op(s, Layout::contiguous(self.shape().clone()), "to_dtype", &[self], move |g| {
            Ok(vec![if track { Some(g.to_dtype(from)?) } else { None }])
        }))
    }

    /// Moves to `device` (a no-op when already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        // The whole buffer moves (views of it stay views); a differentiable copy, as in PyTorch.
        let s = self.storage().to_device(device)?;
        let from = self.device();
        Ok(Tensor::from_op(s, self.layout().clone(), "to_device", &[self], move |g| Ok(vec![Some(g.to_device(from)?)])))
    }
}
