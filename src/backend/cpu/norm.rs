//! Batch normalisation's two passes over a contiguous f32 x [n, c, s] (s: one image's pixels
//! of one channel): per-channel sums (statistics forward, gradient sums backward) and a
//! per-channel affine map (the normalisation forward, the input gradient backward). The
//! fused BatchNorm (src/ops/norm.rs) is built from these; kernels/norm.cu is the CUDA side.

use super::{CpuData, CpuStorage};
use crate::backend::{BnCoeffs, ChannelPartials, ChannelSums, NcsDims};
use crate::{Error, Result};
use rayon::prelude::*;

fn f32s<'a>(op: &'static str, s: &'a CpuStorage) -> Result<&'a [f32]> {
    match s.data() {
        CpuData::F32(v) => Ok(v),
        _ => Err(Error::UnsupportedDType { op, dtype: s.dtype(), msg: "the fused batch norm takes F32" }),
    }
}

/// Element `(img, ch, px)` of [n, c, s] over every image and pixel of channel `ch`.
fn channel(d: NcsDims, ch: usize) -> impl Iterator<Item = usize> {
    (0..d.n).flat_map(move |img| {
        let base = (img * d.c + ch) * d.s;
        base..base + d.s
    })
}

/// The sum of channel `ch`'s `pieces` partial sums (row ch of a [c, pieces] matrix), in
/// order, in f32: kernels/norm.cu's `kiln_fold`.
pub fn fold(partials: &[f32], pieces: usize, ch: usize) -> f32 {
    partials[ch * pieces..(ch + 1) * pieces].iter().fold(0.0f32, |a, &v| a + v)
}

/// Per-channel sums (f64 accumulation), each F32 [c] (one piece per channel): Σx, Σ(x -
/// mean)², or (Σdy, Σdy·(x - mean)·rstd).
pub fn channel_sums(x: &CpuStorage, d: NcsDims, what: ChannelSums<&CpuStorage>) -> Result<ChannelPartials<CpuStorage>> {
    enum Of<'a> {
        Values,
        SquaredDeviations(&'a [f32], usize, f32),
        Gradients(&'a [f32], &'a [f32], &'a [f32]),
    }
    let op = "channel_sums";
    let x = f32s(op, x)?;
    let of = match what {
        ChannelSums::Values => Of::Values,
        ChannelSums::SquaredDeviations { sums, pieces, inv_count } => {
            Of::SquaredDeviations(f32s(op, sums)?, pieces, inv_count)
        }
        ChannelSums::Gradients { dy, mean, rstd } => Of::Gradients(f32s(op, dy)?, f32s(op, mean)?, f32s(op, rstd)?),
    };
    let one = |ch: usize| -> (f64, f64) {
        match of {
            Of::Values => (channel(d, ch).map(|i| x[i] as f64).sum(), 0.0),
            Of::SquaredDeviations(sums, pieces, inv_count) => {
                let m = (fold(sums, pieces, ch) * inv_count) as f64;
                (channel(d, ch).map(|i| (x[i] as f64 - m).powi(2)).sum(), 0.0)
            }
            Of::Gradients(dy, m, r) => {
                let (m, r) = (m[ch] as f64, r[ch] as f64);
                channel(d, ch)
                    .fold((0.0, 0.0), |(a, b), i| (a + dy[i] as f64, b + dy[i] as f64 * (x[i] as f64 - m) * r))
            }
        }
    };
    let sums: Vec<(f64, f64)> = if d.n * d.c * d.s >= super::parallel::par_threshold() {
        (0..d.c).into_par_iter().map(one).collect()
    } else {
        (0..d.c).map(one).collect()
    };
    let first = CpuStorage::from_vec(sums.iter().map(|s| s.0 as f32).collect::<Vec<f32>>());
    let second = matches!(of, Of::Gradients(..))
        .then(|| CpuStorage::from_vec(sums.iter().map(|s| s.1 as f32).collect::<Vec<f32>>()));
    Ok(ChannelPartials { first, second, pieces: 1 })
}

/// Batch norm's per-channel arithmetic (see [`BnCoeffs`]): the same f32 operations in the
/// same order as kernels/norm.cu's `bn_coeffs_f32`.
pub fn bn_coeffs(c: usize, what: BnCoeffs<&CpuStorage>) -> Result<Vec<CpuStorage>> {
    let op = "bn_coeffs";
    let outs: Vec<Vec<f32>> = match what {
        BnCoeffs::Forward { weight, bias, sums, sq, pieces, inv_count, eps } => {
            let (w, b, sums, sq) = (f32s(op, weight)?, f32s(op, bias)?, f32s(op, sums)?, f32s(op, sq)?);
            let mut o = vec![vec![0f32; c]; 5];
            for ch in 0..c {
                let mean = fold(sums, pieces, ch) * inv_count;
                let var = fold(sq, pieces, ch) * inv_count;
                let rstd = 1.0 / (var + eps).sqrt();
                let a = w[ch] * rstd;
                (o[0][ch], o[1][ch], o[2][ch], o[3][ch], o[4][ch]) = (mean, var, rstd, a, b[ch] - mean * a);
            }
            o
        }
        BnCoeffs::Backward { weight, rstd, mean, sdy, sdyx, pieces, inv_count } => {
            let (w, r, m) = (f32s(op, weight)?, f32s(op, rstd)?, f32s(op, mean)?);
            let (sdy, sdyx) = (f32s(op, sdy)?, f32s(op, sdyx)?);
            let mut o = vec![vec![0f32; c]; 5];
            for ch in 0..c {
                let (gy, gyx) = (fold(sdy, pieces, ch), fold(sdyx, pieces, ch));
                let a = w[ch] * r[ch];
                let b = -(a * r[ch] * gyx * inv_count);
                (o[0][ch], o[1][ch], o[2][ch]) = (a, b, -(a * gy * inv_count) - b * m[ch]);
                (o[3][ch], o[4][ch]) = (gy, gyx);
            }
            o
        }
    };
    Ok(outs.into_iter().map(CpuStorage::from_vec).collect())
}

/// running = keep·running + momentum·statistic per channel (var scaled by `unbias`), and
/// `counter` (I64) += 1, in place: kernels/norm.cu's `bn_running_f32`.
#[allow(clippy::too_many_arguments)]
pub fn bn_running(
    running_mean: &mut CpuStorage,
    running_var: &mut CpuStorage,
    counter: Option<&mut CpuStorage>,
    mean: &CpuStorage,
    var: &CpuStorage,
    (keep, momentum, unbias): (f32, f32, f32),
    c: usize,
) -> Result<()> {
    let op = "bn_running";
    let (m, v) = (f32s(op, mean)?, f32s(op, var)?);
    let CpuData::F32(rm) = running_mean.data_mut() else {
        return Err(Error::UnsupportedDType { op, dtype: running_mean.dtype(), msg: "running_mean is F32" });
    };
    for ch in 0..c {
        rm[ch] = keep * rm[ch] + momentum * m[ch];
    }
    let CpuData::F32(rv) = running_var.data_mut() else {
        return Err(Error::UnsupportedDType { op, dtype: running_var.dtype(), msg: "running_var is F32" });
    };
    for ch in 0..c {
        rv[ch] = keep * rv[ch] + momentum * (v[ch] * unbias);
    }
    if let Some(counter) = counter {
        let dtype = counter.dtype();
        match counter.data_mut() {
            CpuData::I64(n) if !n.is_empty() => n[0] = n[0].wrapping_add(1),
            _ => return Err(Error::UnsupportedDType { op, dtype, msg: "num_batches_tracked is one I64" }),
        }
    }
    Ok(())
}

/// out = a[ch]·u + b[ch]·v + d[ch] over [n, c, s] (without v: a[ch]·u + d[ch]).
pub fn channel_affine(
    u: &CpuStorage,
    v: Option<&CpuStorage>,
    d: NcsDims,
    (a, b, dd): (&CpuStorage, &CpuStorage, &CpuStorage),
) -> Result<CpuStorage> {
    let u = f32s("channel_affine", u)?;
    let v = v.map(|v| f32s("channel_affine", v)).transpose()?;
    let (a, b, dd) = (f32s("channel_affine", a)?, f32s("channel_affine", b)?, f32s("channel_affine", dd)?);
    let mut out = vec![0f32; d.n * d.c * d.s];
    // One row per (image, channel): s contiguous elements sharing the coefficients.
    let row = |(r, o): (usize, &mut [f32])| {
        let ch = r % d.c;
        let base = r * d.s;
        match v {
            Some(v) => {
                for (k, o) in o.iter_mut().enumerate() {
                    *o = a[ch] * u[base + k] + b[ch] * v[base + k] + dd[ch];
                }
            }
            None => {
                for (k, o) in o.iter_mut().enumerate() {
                    *o = a[ch] * u[base + k] + dd[ch];
                }
            }
        }
    };
    if d.s == 0 {
        return Ok(CpuStorage::from_vec(out));
    }
    if out.len() >= super::parallel::par_threshold() {
        out.par_chunks_mut(d.s).enumerate().for_each(row);
    } else {
        out.chunks_mut(d.s).enumerate().for_each(row);
    }
    Ok(CpuStorage::from_vec(out))
}
