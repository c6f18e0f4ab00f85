//! Batch normalisation's two passes on a CUDA device (kernels/norm.cu), the device side of
//! src/backend/cpu/norm.rs: per-channel sums in pieces (one block per channel and piece,
//! left as [c, pieces] partial sums for their next reader to fold), the per-channel affine
//! map, and the per-channel [c] arithmetic between them (`bn_coeffs`, `bn_running`: one
//! launch each).

use super::launch::{arg, grid_for, BLOCK};
use super::storage::CudaStorage;
use crate::backend::{BnCoeffs, ChannelPartials, ChannelSums, NcsDims};
use crate::{DType, Error, Result};

/// Pieces per channel: enough blocks to fill a GPU (~1024 in all) while each piece keeps
/// at least 4096 elements (16 per thread); at most 65535 (the grid's y limit).
fn pieces(d: NcsDims) -> usize {
    let per_channel = d.n * d.s;
    (per_channel / 4096).min(1024usize.div_ceil(d.c.max(1))).clamp(1, 65_535)
}

pub fn channel_sums(
    x: &CudaStorage,
    d: NcsDims,
    what: ChannelSums<&CudaStorage>,
) -> Result<ChannelPartials<CudaStorage>> {
    if d.c == 0 || d.c > i32::MAX as usize {
        return Err(Error::invalid("channel_sums", format!("{} channels: need 1..=2^31-1 (one block row each)", d.c)));
    }
    let p = pieces(d);
    let dev = x.dev();
    let two = matches!(what, ChannelSums::Gradients { .. });
    let part0 = CudaStorage::uninit(dev, DType::F32, d.c * p)?;
    let part1 = if two { Some(CudaStorage::uninit(dev, DType::F32, d.c * p)?) } else { None };
    let (mut inv_count, mut sum_pieces) = (0.0f32, 0i64);
    let (mut mode, mut dy, mut mean, mut rstd): (i32, u64, u64, u64) = match what {
        ChannelSums::Values => (0, 0, 0, 0),
        ChannelSums::SquaredDeviations { sums, pieces, inv_count: k } => {
            (inv_count, sum_pieces) = (k, pieces as i64);
            (1, 0, sums.ptr(), 0)
        }
        ChannelSums::Gradients { dy, mean, rstd } => (2, dy.ptr(), mean.ptr(), rstd.ptr()),
    };
    let (mut n, mut c, mut s) = (d.n as i64, d.c as i64, d.s as i64);
    let (mut xp, mut p0, mut p1) = (x.ptr(), part0.ptr(), part1.as_ref().map(|b| b.ptr()).unwrap_or(0));
    let mut args = [
        arg(&mut n),
        arg(&mut c),
        arg(&mut s),
        arg(&mut mode),
        arg(&mut inv_count),
        arg(&mut sum_pieces),
        arg(&mut xp),
        arg(&mut dy),
        arg(&mut mean),
        arg(&mut rstd),
        arg(&mut p0),
        arg(&mut p1),
    ];
    dev.launcher().launch("channel_sums_f32", (d.c as u32, p as u32, 1), (BLOCK, 1, 1), 0, &mut args)?;
    // Each channel's pieces stay a [c, p] matrix: the next pass and bn_coeffs fold its rows
    // (a launch of its own per matrix before).
    Ok(ChannelPartials { first: part0, second: part1, pieces: p })
}

pub fn channel_affine(
    u: &CudaStorage,
    v: Option<&CudaStorage>,
    d: NcsDims,
    (a, b, dd): (&CudaStorage, &CudaStorage, &CudaStorage),
) -> Result<CudaStorage> {
    let total = d.n * d.c * d.s;
    let out = CudaStorage::uninit(u.dev(), DType::F32, total)?;
    if total == 0 {
        return Ok(out);
    }
    let (mut t, mut c, mut s) = (total as i64, d.c as i64, d.s as i64);
    let (mut up, mut vp) = (u.ptr(), v.map(|v| v.ptr()).unwrap_or(0));
    let (mut ap, mut bp, mut dp, mut op) = (a.ptr(), b.ptr(), dd.ptr(), out.ptr());
    let mut args = [
        arg(&mut t),
        arg(&mut c),
        arg(&mut s),
        arg(&mut up),
        arg(&mut vp),
        arg(&mut ap),
        arg(&mut bp),
        arg(&mut dp),
        arg(&mut op),
    ];
    u.dev().launcher().launch("channel_affine_f32", (grid_for(total), 1, 1), (BLOCK, 1, 1), 0, &mut args)?;
    Ok(out)
}

pub fn bn_coeffs(c: usize, what: BnCoeffs<&CudaStorage>) -> Result<Vec<CudaStorage>> {
    let ins: Vec<&CudaStorage> = what.inputs(c).into_iter().map(|(s, _)| s).collect();
    let dev = ins[0].dev();
    let outs = (0..5).map(|_| CudaStorage::uninit(dev, DType::F32, c)).collect::<Result<Vec<_>>>()?;
    if c == 0 {
        return Ok(outs);
    }
    let (mut mode, mut inv_count, mut eps) = match what {
        BnCoeffs::Forward { inv_count, eps, .. } => (0i32, inv_count, eps),
        BnCoeffs::Backward { inv_count, .. } => (1i32, inv_count, 0.0f32),
    };
    let ptr = |v: Option<&CudaStorage>| v.map_or(0u64, |s| s.ptr());
    let mut inp: [u64; 5] = std::array::from_fn(|i| ptr(ins.get(i).copied()));
    let mut outp: [u64; 5] = std::array::from_fn(|i| ptr(outs.get(i)));
    let (mut cc, mut pieces) = (c as i64, what.pieces() as i64);
    let [i0, i1, i2, i3, i4] = &mut inp;
    let [o0, o1, o2, o3, o4] = &mut outp;
    let mut args = [
        arg(&mut cc),
        arg(&mut pieces),
        arg(&mut mode),
        arg(&mut inv_count),
        arg(&mut eps),
        arg(i0),
        arg(i1),
        arg(i2),
        arg(i3),
        arg(i4),
        arg(o0),
        arg(o1),
        arg(o2),
        arg(o3),
        arg(o4),
    ];
    dev.launcher().launch("bn_coeffs_f32", (grid_for(c), 1, 1), (BLOCK, 1, 1), 0, &mut args)?;
    Ok(outs)
}

pub fn bn_running(
    running: (&mut CudaStorage, &mut CudaStorage),
    counter: Option<&mut CudaStorage>,
    (mean, var): (&CudaStorage, &CudaStorage),
    (keep, momentum, unbias): (f32, f32, f32),
    c: usize,
) -> Result<()> {
    let (mut cc, mut keep, mut momentum, mut unbias) = (c as i64, keep, momentum, unbias);
    let (mut mp, mut vp) = (mean.ptr(), var.ptr());
    let (mut rm, mut rv) = (running.0.ptr(), running.1.ptr());
    let mut cp = counter.map_or(0u64, |s| s.ptr());
    let mut args = [
        arg(&mut cc),
        arg(&mut keep),
        arg(&mut momentum),
        arg(&mut unbias),
        arg(&mut mp),
        arg(&mut vp),
        arg(&mut rm),
        arg(&mut rv),
        arg(&mut cp),
    ];
    mean.dev().launcher().launch("bn_running_f32", (grid_for(c), 1, 1), (BLOCK, 1, 1), 0, &mut args)?;
    Ok(())
}
