//! Batch normalisation's two passes on a CUDA device (kernels/norm.cu), the device side of
//! src/backend/cpu/norm.rs: per-channel sums in pieces (one block per channel and piece,
//! then `reduce_rows` adds each channel's pieces) and the per-channel affine map.

use super::kernels::reduce_rows;
use super::launch::{arg, grid_for, BLOCK};
use super::storage::CudaStorage;
use crate::backend::{ChannelSums, NcsDims, ReduceOp};
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
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    if d.c == 0 || d.c > i32::MAX as usize {
        return Err(Error::invalid("channel_sums", format!("{} channels: need 1..=2^31-1 (one block row each)", d.c)));
    }
    let p = pieces(d);
    let dev = x.dev();
    let two = matches!(what, ChannelSums::Gradients { .. });
    let part0 = CudaStorage::uninit(dev, DType::F32, d.c * p)?;
    let part1 = if two { Some(CudaStorage::uninit(dev, DType::F32, d.c * p)?) } else { None };
    let (mut mode, mut dy, mut mean, mut rstd): (i32, u64, u64, u64) = match what {
        ChannelSums::Values => (0, 0, 0, 0),
        ChannelSums::SquaredDeviations { mean } => (1, 0, mean.ptr(), 0),
        ChannelSums::Gradients { dy, mean, rstd } => (2, dy.ptr(), mean.ptr(), rstd.ptr()),
    };
    let (mut n, mut c, mut s) = (d.n as i64, d.c as i64, d.s as i64);
    let (mut xp, mut p0, mut p1) = (x.ptr(), part0.ptr(), part1.as_ref().map(|b| b.ptr()).unwrap_or(0));
    let mut args = [
        arg(&mut n),
        arg(&mut c),
        arg(&mut s),
        arg(&mut mode),
        arg(&mut xp),
        arg(&mut dy),
        arg(&mut mean),
        arg(&mut rstd),
        arg(&mut p0),
        arg(&mut p1),
    ];
    dev.launcher().launch("channel_sums_f32", (d.c as u32, p as u32, 1), (BLOCK, 1, 1), 0, &mut args)?;
    // Each channel's pieces: a [c, p] matrix whose rows reduce_rows adds.
    let fold = |part: &CudaStorage| -> Result<CudaStorage> {
        let out = CudaStorage::uninit(dev, DType::F32, d.c)?;
        reduce_rows(dev.launcher(), DType::F32, ReduceOp::Sum, d.c, p, part.ptr(), out.ptr())?;
        Ok(out)
    };
    Ok((fold(&part0)?, part1.as_ref().map(fold).transpose()?))
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
