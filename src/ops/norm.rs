//! Batch normalisation in training mode as one op: two per-channel passes forward (the mean,
//! then the squared deviations from it) and one affine map, and backward one pass for the
//! gradient sums and one affine map for the input gradient. Composed from tensor ops it was
//! ~35 full-size ops and their temporaries per layer (on an H100 ResNet-18's BatchNorms
//! were ~700 launches and about 40% of the step). The per-channel [c] arithmetic between the
//! passes is one op each way too (`bn_coeffs`: it was 7 small launches forward and 8
//! backward per layer, which left the GPU step bound by the host's launch rate), and so is
//! the running statistics' update ([`update_running_stats`], was 12).

use crate::backend::{BnCoeffs, ChannelSums, NcsDims, Storage};
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
            let inv_count = inv_count as f32;
            let sums = x.storage().channel_sums(d, ChannelSums::Values)?;
            let pieces = sums.pieces;
            let what = ChannelSums::SquaredDeviations { sums: &sums.first, pieces, inv_count };
            let sq = x.storage().channel_sums(d, what)?;
            if sq.pieces != pieces {
                return Err(Error::invalid("batch_norm", "internal: the two passes summed in different pieces"));
            }
            // mean = Σx/N (as the pass above made it), var = Σ(x - mean)²/N, rstd =
            // 1/sqrt(var + eps); y = a·x + shift with a = weight·rstd, shift = bias - mean·a.
            let (ws, bs) = (w.storage(), b.storage());
            let (weight, bias) = (&*ws, &*bs);
            let what = BnCoeffs::Forward {
                weight,
                bias,
                sums: &sums.first,
                sq: &sq.first,
                pieces,
                inv_count,
                eps: eps as f32,
            };
            let [mean, var, rstd, a, shift]: [Storage; 5] = Storage::bn_coeffs(c, what)?
                .try_into()
                .map_err(|_| Error::invalid("batch_norm", "internal: bn_coeffs gave another count"))?;
            let y = x.storage().channel_affine(None, d, (&a, &a, &shift))?;
            Ok((y, channel_vec(mean, c), channel_vec(var, c), channel_vec(rstd, c)))
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
                let sums = x.storage().channel_sums(d, what)?;
                let sdyx = sums.second.ok_or_else(|| Error::Backward("batch_norm: the pass gave no Σdy·x̂".into()))?;
                // dx = w·rstd·(dy - Σdy/N - x̂·Σ(dy·x̂)/N) = A·dy + B·x + D per channel, with
                // A = w·rstd, B = -A·rstd·Σ(dy·x̂)/N, D = -A·Σdy/N - B·mean; and the folded
                // Σdy, Σdy·x̂ (the bias and weight gradients).
                let what = BnCoeffs::Backward {
                    weight: &*w.storage(),
                    rstd: &*rstd.storage(),
                    mean: &*mean.storage(),
                    sdy: &sums.first,
                    sdyx: &sdyx,
                    pieces: sums.pieces,
                    inv_count: inv_count as f32,
                };
                let [a, bb, dd, sdy, sdyx]: [Storage; 5] = Storage::bn_coeffs(c, what)?
                    .try_into()
                    .map_err(|_| Error::Backward("batch_norm: bn_coeffs gave another count".into()))?;
                let dx = if need[0] {
                    let s = g.storage().channel_affine(Some(&x.storage()), d, (&a, &bb, &dd))?;
                    Some(Tensor::from_storage(s, Layout::contiguous(g.shape().clone())))
                } else {
                    None
                };
                let (sdy, sdyx) = (channel_vec(sdy, c), channel_vec(sdyx, c));
                Ok(vec![dx, need[1].then_some(sdyx), need[2].then_some(sdy)])
            },
        );
        Ok((y, saved_mean, var))
    }
}

/// BatchNorm's running statistics after a training batch of `n` values per channel, in
/// place and in one op: running_mean/var ← (1 - momentum)·running + momentum·(mean,
/// var·n/(n-1)) (the unbiased variance, as PyTorch), num_batches_tracked += 1. Ok(false),
/// nothing changed: an operand is not a dense F32 vector (the caller composes tensor ops).
pub(crate) fn update_running_stats(
    running: (&Tensor, &Tensor),
    counter: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    momentum: f64,
    n: usize,
) -> Result<bool> {
    let (rm, rv) = running;
    let c = rm.elem_count();
    let vectors = [rm, rv, mean, var];
    let dense = vectors.iter().all(|t| t.dtype() == DType::F32 && t.elem_count() == c && t.is_whole_storage());
    let counter_ok = counter.dtype() == DType::I64 && counter.elem_count() == 1 && counter.is_whole_storage();
    let distinct = !(rm.same_storage(rv) || [mean, var].iter().any(|t| t.same_storage(rm) || t.same_storage(rv)));
    if c == 0 || !dense || !counter_ok || !distinct || counter.same_storage(rm) || counter.same_storage(rv) {
        return Ok(false);
    }
    let (ms, vs) = (mean.storage(), var.storage());
    let (mut rms, mut rvs, mut ns) = (rm.storage_mut(), rv.storage_mut(), counter.storage_mut());
    let unbias = n as f64 / (n as f64 - 1.0);
    rms.bn_running(&mut rvs, Some(&mut ns), (&ms, &vs), (momentum, unbias), c)?;
    Ok(true)
}
