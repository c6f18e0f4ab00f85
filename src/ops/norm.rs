//! Batch normalisation in training mode as one op: two per-channel passes forward (the mean,
//! then the squared deviations from it) and one affine map, and backward one pass for the
//! gradient sums and one affine map for the input gradient. Composed from tensor ops it was
//! ~35 full-size ops and their temporaries per layer (on an H100 ResNet-18's BatchNorms
//! were ~700 launches and about 40% of the step).

use crate::backend::{ChannelSums, NcsDims, Storage};
use crate::{no_grad, DType, Error, Layout, Result, Tensor};

/// `t` as a contiguous tensor from element 0 of its storage (what the passes read).
fn packed(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() && t.layout().offset() == 0 {
        Ok(t.clone())
    } else {
        t.copy()
    }
}

/// A per-channel result [c] of a pass as a tensor.
fn channel_vec(s: Storage, c: usize) -> Tensor {
    Tensor::from_storage(s, Layout::contiguous(vec![c].into()))
}

impl Tensor {
    /// Training-mode batch normalisation of x = `self` [n, c, ...] (F32) over every dim but
    /// dim 1, with the batch's statistics: y = (x - mean) / sqrt(var + eps) · weight + bias.
    /// Returns (y, mean [c], biased var [c]); mean and var carry no gradient (they feed the
    /// running statistics). Gradients flow to x, weight and bias as PyTorch's.
    pub fn batch_norm_train(&self, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
        for t in [self, weight, bias] {
            if t.dtype() != DType::F32 {
                return Err(Error::UnsupportedDType {
                    op: "batch_norm",
                    dtype: t.dtype(),
                    msg: "the fused batch norm takes F32 (BatchNorm composes other dtypes from tensor ops)",
                });
            }
        }
        for t in [weight, bias] {
            self.check_same("batch_norm", t)?;
        }
        let c = if self.rank() >= 2 { self.dims()[1] } else { 0 };
        if self.rank() < 2 || c == 0 || weight.dims() != [c] || bias.dims() != [c] {
            return Err(Error::InvalidShape {
                op: "batch_norm",
                shape: self.shape().clone(),
                msg: format!(
                    "expected x [n, c, ...] with c > 0 and weight, bias [c]; weight {:?}, bias {:?}",
                    weight.dims(),
                    bias.dims()
                ),
            });
        }
        let d = NcsDims { n: self.dims()[0], c, s: self.dims()[2..].iter().product() };
        let count = d.n * d.s;
        if count == 0 {
            return Err(Error::InvalidShape {
                op: "batch_norm",
                shape: self.shape().clone(),
                msg: "no values per channel".into(),
            });
        }
        let inv_count = 1.0 / count as f64;
        let x = packed(&self.detach())?;
        let (w, b) = (weight.detach(), bias.detach());
        let (y, mean, var, rstd) = no_grad(|| -> Result<_> {
            let (sum, _) = x.storage().channel_sums(d, ChannelSums::Values)?;
            let mean = channel_vec(sum, c).mul_scalar(inv_count)?;
            let (sq, _) = x.storage().channel_sums(d, ChannelSums::SquaredDeviations { mean: &mean.storage() })?;
            let var = channel_vec(sq, c).mul_scalar(inv_count)?;
            let rstd = var.add_scalar(eps)?.sqrt()?.recip()?;
            // y = a·x + shift with a = weight·rstd, shift = bias - mean·a.
            let a = w.mul(&rstd)?;
            let shift = b.sub(&mean.mul(&a)?)?;
            let y = x.storage().channel_affine(None, d, (&a.storage(), &a.storage(), &shift.storage()))?;
            Ok((y, mean, var, rstd))
        })?;
        let saved_mean = mean.clone();
        let need = [self.requires_grad(), weight.requires_grad(), bias.requires_grad()];
        let y = Tensor::from_op(
            y,
            Layout::contiguous(self.shape().clone()),
            "batch_norm",
            &[self, weight, bias],
            move |g| {
                let g = packed(g)?;
                let what = ChannelSums::Gradients { dy: &*g.storage(), mean: &*mean.storage(), rstd: &*rstd.storage() };
                let (sdy, sdyx) = x.storage().channel_sums(d, what)?;
                let sdyx = sdyx.ok_or_else(|| Error::Backward("batch_norm: the pass gave no Σdy·x̂".into()))?;
                let (sdy, sdyx) = (channel_vec(sdy, c), channel_vec(sdyx, c));
                let dx = if need[0] {
                    // dx = w·rstd·(dy - Σdy/N - x̂·Σ(dy·x̂)/N) = A·dy + B·x + D per channel, with
                    // A = w·rstd, B = -A·rstd·Σ(dy·x̂)/N, D = -A·Σdy/N - B·mean.
                    let a = w.mul(&rstd)?;
                    let bb = a.mul(&rstd)?.mul(&sdyx)?.mul_scalar(-inv_count)?;
                    let dd = a.mul(&sdy)?.mul_scalar(-inv_count)?.sub(&bb.mul(&mean)?)?;
                    let s = g.storage().channel_affine(
                        Some(&x.storage()),
                        d,
                        (&a.storage(), &bb.storage(), &dd.storage()),
                    )?;
                    Some(Tensor::from_storage(s, Layout::contiguous(g.shape().clone())))
                } else {
                    None
                };
                Ok(vec![dx, need[1].then_some(sdyx), need[2].then_some(sdy)])
            },
        );
        Ok((y, saved_mean, var))
    }
}
