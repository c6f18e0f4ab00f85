//! Normalisation layers: BatchNorm (1-d and 2-d, with running statistics) and LayerNorm.

use super::{join, LayerSpec, Module, TensorKind};
use crate::{no_grad, DType, Device, Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Batch normalisation over channel dim 1: `BatchNorm::new_1d` takes [N, C] or [N, C, L],
/// `new_2d` takes [N, C, H, W]. In training it normalises by the batch's (biased) variance and
/// updates running_mean / running_var (unbiased) with `momentum`, as PyTorch does; in eval it
/// uses the running statistics.
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    pub eps: f64,
    pub momentum: f64,
    spatial_2d: bool,
    training: AtomicBool,
}

impl BatchNorm {
    pub fn new_1d(features: usize, device: Device) -> Result<BatchNorm> {
        Self::new(features, false, device)
    }
    pub fn new_2d(channels: usize, device: Device) -> Result<BatchNorm> {
        Self::new(channels, true, device)
    }
    fn new(c: usize, spatial_2d: bool, device: Device) -> Result<BatchNorm> {
        Ok(BatchNorm {
            weight: Tensor::ones([c], DType::F32, device)?.requires_grad_()?,
            bias: Tensor::zeros([c], DType::F32, device)?.requires_grad_()?,
            running_mean: Tensor::zeros([c], DType::F32, device)?,
            running_var: Tensor::ones([c], DType::F32, device)?,
            num_batches_tracked: Tensor::zeros([], DType::I64, device)?,
            eps: 1e-5,
            momentum: 0.1,
            spatial_2d,
            training: AtomicBool::new(true),
        })
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.weight.elem_count();
        let ok_rank = if self.spatial_2d { x.rank() == 4 } else { x.rank() == 2 || x.rank() == 3 };
        if !ok_rank || x.dims()[1] != c {
            let want = if self.spatial_2d { "[N, C, H, W]" } else { "[N, C] or [N, C, L]" };
            return Err(Error::InvalidShape {
                op: "BatchNorm",
                shape: x.shape().clone(),
                msg: format!("expected {want} with C = {c}"),
            });
        }
        let dims: Vec<isize> = (0..x.rank() as isize).filter(|&d| d != 1).collect();
        let mut bshape = vec![1; x.rank()];
        bshape[1] = c;
        let (mean, var) = if self.training.load(Ordering::Relaxed) {
            let n = x.elem_count() / c;
            if n < 2 {
                return Err(Error::InvalidShape {
                    op: "BatchNorm",
                    shape: x.shape().clone(),
                    msg: "training needs more than one value per channel".into(),
                });
            }
            // F32: the fused op (two passes forward, two backward); other dtypes: tensor ops.
            let fused = [x, &self.weight, &self.bias].iter().all(|t| t.dtype() == DType::F32);
            let (y, mean, var) = if fused {
                let (y, mean, var) = x.batch_norm_train(&self.weight, &self.bias, self.eps)?;
                (Some(y), mean.reshape(bshape.clone())?, var.reshape(bshape.clone())?)
            } else {
                (None, x.mean(&dims, true)?, x.var(&dims, false, true)?)
            };
            let running = (&self.running_mean, &self.running_var);
            let updated = crate::ops::norm::update_running_stats(
                running,
                &self.num_batches_tracked,
                (&mean.reshape([c])?, &var.reshape([c])?),
                self.momentum,
                n,
            )?;
            // Composed from tensor ops when the statistics are not F32 (other dtypes).
            no_grad(|| -> Result<()> {
                if updated {
                    return Ok(());
                }
                let m = self.momentum;
                let bm = mean.reshape([c])?;
                let bv = var.reshape([c])?.mul_scalar(n as f64 / (n as f64 - 1.0))?;
                self.running_mean.assign(&self.running_mean.mul_scalar(1.0 - m)?.add(&bm.mul_scalar(m)?)?)?;
                self.running_var.assign(&self.running_var.mul_scalar(1.0 - m)?.add(&bv.mul_scalar(m)?)?)?;
                let one = Tensor::ones([], DType::I64, self.num_batches_tracked.device())?;
                self.num_batches_tracked.assign(&self.num_batches_tracked.add(&one)?)
            })?;
            if let Some(y) = y {
                return Ok(y);
            }
            (mean, var)
        } else {
            (self.running_mean.reshape(bshape.clone())?, self.running_var.reshape(bshape.clone())?)
        };
        let xhat = x.sub(&mean)?.div(&var.add_scalar(self.eps)?.sqrt()?)?;
        xhat.mul(&self.weight.reshape(bshape.clone())?)?.add(&self.bias.reshape(bshape)?)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        f(join(prefix, "weight"), &self.weight, TensorKind::Parameter);
        f(join(prefix, "bias"), &self.bias, TensorKind::Parameter);
        f(join(prefix, "running_mean"), &self.running_mean, TensorKind::Buffer);
        f(join(prefix, "running_var"), &self.running_var, TensorKind::Buffer);
        f(join(prefix, "num_batches_tracked"), &self.num_batches_tracked, TensorKind::Buffer);
    }
    fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed)
    }
    fn spec(&self) -> Option<LayerSpec> {
        let features = self.weight.elem_count();
        Some(if self.spatial_2d { LayerSpec::BatchNorm2d { features } } else { LayerSpec::BatchNorm1d { features } })
    }
}

/// Normalises over the trailing `shape` dims, then scales and shifts elementwise.
pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub shape: Vec<usize>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(shape: &[usize], elementwise_affine: bool, device: Device) -> Result<LayerNorm> {
        let (weight, bias) = if elementwise_affine {
            (
                Some(Tensor::ones(shape, DType::F32, device)?.requires_grad_()?),
                Some(Tensor::zeros(shape, DType::F32, device)?.requires_grad_()?),
            )
        } else {
            (None, None)
        };
        Ok(LayerNorm { weight, bias, shape: shape.to_vec(), eps: 1e-5 })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = self.shape.len();
        if x.rank() < k || x.dims()[x.rank() - k..] != self.shape[..] {
            return Err(Error::InvalidShape {
                op: "LayerNorm",
                shape: x.shape().clone(),
                msg: format!("trailing dims must be {:?}", self.shape),
            });
        }
        let dims: Vec<isize> = (x.rank() - k..x.rank()).map(|d| d as isize).collect();
        let mean = x.mean(&dims, true)?;
        let var = x.var(&dims, false, true)?;
        let y = x.sub(&mean)?.div(&var.add_scalar(self.eps)?.sqrt()?)?;
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => y.mul(w)?.add(b),
            _ => Ok(y),
        }
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            f(join(prefix, "weight"), w, TensorKind::Parameter);
            f(join(prefix, "bias"), b, TensorKind::Parameter);
        }
    }
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::LayerNorm { shape: self.shape.clone(), elementwise_affine: self.weight.is_some() })
    }
}
