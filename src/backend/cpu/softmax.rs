//! Row-wise softmax / log-softmax and the fused softmax-cross-entropy. Each row is
//! shifted by its max before exp, so large logits never overflow.

use super::{float_view, from_f32, to_contiguous_vec, CpuData, CpuStorage, Float, FloatView};
use crate::{Error, Layout, Result, WithDType};
use rayon::prelude::*;

/// softmax (or log_softmax) over the last dim of the view; contiguous result.
pub fn softmax_last_dim(s: &CpuStorage, l: &Layout, log: bool) -> Result<CpuStorage> {
    let c = *l.dims().last().unwrap_or(&1);
    Ok(match float_view(s, l, "softmax")? {
        FloatView::F32(v, l2) => from_f32(softmax_t(&to_contiguous_vec(&v, &l2), c, log), s.dtype()),
        FloatView::F64(v, l2) => CpuStorage::new(CpuData::F64(softmax_t(&to_contiguous_vec(v, &l2), c, log))),
    })
}

fn softmax_t<T: Float>(x: &[T], c: usize, log: bool) -> Vec<T> {
    let mut out = super::zeroed::<T>(x.len());
    if c == 0 {
        return out;
    }
    let row = |(src, dst): (&[T], &mut [T])| {
        let m = src.iter().copied().fold(T::neg_infinity(), T::max);
        let m = if m.is_finite() { m } else { T::zero() };
        let mut sum = T::zero();
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s - m).exp();
            sum = sum + *d;
        }
        if log {
            let lse = sum.ln();
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s - m - lse;
            }
        } else {
            let inv = T::one() / sum;
            dst.iter_mut().for_each(|d| *d = *d * inv);
        }
    };
    if x.len() < super::par_threshold() {
        x.chunks(c).zip(out.chunks_mut(c)).for_each(row);
    } else {
        x.par_chunks(c).zip(out.par_chunks_mut(c)).for_each(row);
    }
    out
}

/// Mean cross-entropy of logits [n, c] against class indices, with label smoothing ε:
/// the target is (1-ε)·onehot + ε/c. Returns the loss and, when `want_grad`, d loss / d
/// logits = (softmax - target) / n, computed in the same pass.
pub fn cross_entropy(
    s: &CpuStorage,
    l: &Layout,
    labels: &[i64],
    smoothing: f64,
    want_grad: bool,
) -> Result<(f64, Option<CpuStorage>)> {
    let (n, c) = (l.dims()[0], l.dims()[1]);
    if let Some(&bad) = labels.iter().find(|&&y| y < 0 || y as usize >= c) {
        return Err(Error::IndexOutOfRange { op: "cross_entropy (label)", index: bad, size: c });
    }
    Ok(match float_view(s, l, "cross_entropy")? {
        FloatView::F32(v, l2) => {
            let (loss, g) = ce_t(&to_contiguous_vec(&v, &l2), n, c, labels, smoothing as f32, want_grad);
            (loss, g.map(|g| from_f32(g, s.dtype())))
        }
        FloatView::F64(v, l2) => {
            let (loss, g) = ce_t(&to_contiguous_vec(v, &l2), n, c, labels, smoothing, want_grad);
            (loss, g.map(|g| CpuStorage::new(CpuData::F64(g))))
        }
    })
}

fn ce_t<T: Float>(x: &[T], n: usize, c: usize, labels: &[i64], eps: T, want_grad: bool) -> (f64, Option<Vec<T>>) {
    let mut grad = if want_grad { vec![T::zero(); n * c] } else { Vec::new() };
    let inv_n = T::one() / T::from_f64(n.max(1) as f64);
    let (on, off) = (T::one() - eps, eps / T::from_f64(c as f64));
    let mut total = 0.0f64;
    for (i, row) in x.chunks(c).enumerate() {
        let m = row.iter().copied().fold(T::neg_infinity(), T::max);
        let sum: T = row.iter().map(|&v| (v - m).exp()).sum();
        let lse = m + sum.ln();
        let y = labels[i] as usize;
        // -Σ target_j · log p_j with log p_j = x_j - lse.
        let mean_logp = row.iter().map(|&v| v - lse).sum::<T>() / T::from_f64(c as f64);
        let loss = -(on * (row[y] - lse)) - eps * mean_logp;
        total += WithDType::to_f64(loss);
        if want_grad {
            let g = &mut grad[i * c..(i + 1) * c];
            for (j, (gj, &v)) in g.iter_mut().zip(row).enumerate() {
                let target = if j == y { on + off } else { off };
                *gj = ((v - lse).exp() - target) * inv_n;
            }
        }
    }
    (total / n.max(1) as f64, want_grad.then_some(grad))
}
