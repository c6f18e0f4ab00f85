//! Typed launchers for the indexing kernels (kernels/index.cu). Like kernels.rs, each builds
//! the argument array exactly as the kernel declares it; device buffers are addresses (`u64`).
//!
//! Index kernels do not fault on an out-of-range index (a GPU fault would poison the whole
//! context): they skip the element and record the index in a two-word status buffer on
//! the device. The caller zeroes it before the launch, reads it back after, and turns it
//! into the CPU backend's error with [`index_status`].

use super::kernels::{suffix, Strided1};
use super::launch::{arg, grid_for, Launcher, BLOCK};
use crate::{DType, Error, Layout, Result, Shape};

/// u64 words of an index kernel's status buffer: [flag, first bad index].
pub const INDEX_STATUS_WORDS: usize = 2;

/// The error an index kernel reported in its status buffer, if any (`size` is the extent
/// of the indexed dim, for the message).
pub fn index_status(op: &'static str, status: [u64; INDEX_STATUS_WORDS], size: usize) -> Result<()> {
    if status[0] == 0 {
        return Ok(());
    }
    Err(Error::IndexOutOfRange { op, index: status[1] as i64, size })
}

/// Kernel-name suffix of a dtype the copying index kernels take (the float types and I64,
/// for label tensors).
fn copy_suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::I64 => Ok("i64"),
        d => suffix(op, d),
    }
}

/// The adding kernels accumulate with atomicAdd, which this code uses for f32 only.
fn check_f32(op: &'static str, dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        return Err(Error::UnsupportedDType { op, dtype, msg: "the CUDA kernel accumulates in F32 only" });
    }
    Ok(())
}

fn check_dim(op: &'static str, shape: &Shape, dim: usize) -> Result<()> {
    if dim >= shape.rank() {
        return Err(Error::DimOutOfRange { op, dim: dim as isize, rank: shape.rank() });
    }
    Ok(())
}

/// `a` and `b` have one rank and agree on every dim but `dim`.
fn check_same_but(op: &'static str, a: &[usize], b: &[usize], dim: usize) -> Result<()> {
    let ok = a.len() == b.len() && a.iter().zip(b).enumerate().all(|(d, (x, y))| d == dim || x == y);
    if !ok {
        return Err(Error::ShapeMismatch { op, lhs: Shape::new(a.to_vec()), rhs: Shape::new(b.to_vec()) });
    }
    Ok(())
}

/// Runs one of the four index kernels: they share the signature
/// (n, dim, size, walked view, indices, src, dst, status).
#[allow(clippy::too_many_arguments)]
fn launch_index(
    k: &dyn Launcher,
    name: &str,
    walk: &Layout,
    dim: usize,
    size: usize,
    idx: u64,
    src: u64,
    dst: u64,
    status: u64,
) -> Result<()> {
    let mut n = walk.elem_count() as i64;
    let (mut dim, mut size, mut l) = (dim as i32, size as i64, Strided1::new(walk)?);
    let (mut idx, mut src, mut dst, mut status) = (idx, src, dst, status);
    let mut args = [
        arg(&mut n),
        arg(&mut dim),
        arg(&mut size),
        arg(&mut l),
        arg(&mut idx),
        arg(&mut src),
        arg(&mut dst),
        arg(&mut status),
    ];
    k.launch(name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// y = x.index_select(dim, idx): `idx` holds `n_idx` I64 on the device; y is contiguous
/// with x's dims but `n_idx` along `dim`. F32, F16, BF16 or I64.
#[allow(clippy::too_many_arguments)]
pub fn index_select(
    k: &dyn Launcher,
    dtype: DType,
    x: u64,
    xl: &Layout,
    dim: usize,
    idx: u64,
    n_idx: usize,
    y: u64,
    status: u64,
) -> Result<()> {
    let name = format!("index_select_{}", copy_suffix("index_select", dtype)?);
    check_dim("index_select", xl.shape(), dim)?;
    let mut dims = xl.dims().to_vec();
    let size = dims[dim];
    dims[dim] = n_idx;
    // Walk y's shape through x's strides; the kernel moves the `dim` coordinate to idx[j].
    let walk = Layout::new(Shape::new(dims), xl.strides().to_vec(), xl.offset());
    launch_index(k, &name, &walk, dim, size, idx, x, y, status)
}

/// y = x.gather(dim, index): `index` is a contiguous I64 tensor of `index_dims` (x's rank,
/// x's sizes on every dim but `dim`); y is contiguous with `index_dims`.
#[allow(clippy::too_many_arguments)]
pub fn gather(
    k: &dyn Launcher,
    dtype: DType,
    x: u64,
    xl: &Layout,
    dim: usize,
    index: u64,
    index_dims: &[usize],
    y: u64,
    status: u64,
) -> Result<()> {
    let name = format!("gather_{}", copy_suffix("gather", dtype)?);
    check_dim("gather", xl.shape(), dim)?;
    check_same_but("gather", xl.dims(), index_dims, dim)?;
    let walk = Layout::new(Shape::new(index_dims.to_vec()), xl.strides().to_vec(), xl.offset());
    launch_index(k, &name, &walk, dim, xl.dims()[dim], index, x, y, status)
}

/// out[.., idx[j], ..] += src[.., j, ..] along `dim`, in place: `out` is contiguous with
/// `out_dims` and already holds the base tensor (index_add returns a copy of it); src (the
/// view `sl`) has out's dims but the number of indices along `dim`. F32 only.
#[allow(clippy::too_many_arguments)]
pub fn index_add(
    k: &dyn Launcher,
    dtype: DType,
    out: u64,
    out_dims: &[usize],
    dim: usize,
    idx: u64,
    src: u64,
    sl: &Layout,
    status: u64,
) -> Result<()> {
    check_f32("index_add", dtype)?;
    check_dim("index_add", sl.shape(), dim)?;
    check_same_but("index_add", out_dims, sl.dims(), dim)?;
    launch_index(k, "index_add_f32", sl, dim, out_dims[dim], idx, src, out, status)
}

/// out[.., index[.., j, ..], ..] += src[.., j, ..] along `dim`, in place on the contiguous
/// `out` (holding the base tensor). `index` is contiguous I64 with src's dims (the view
/// `sl`), which agree with `out_dims` on every dim but `dim`. F32 only.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add(
    k: &dyn Launcher,
    dtype: DType,
    out: u64,
    out_dims: &[usize],
    dim: usize,
    index: u64,
    src: u64,
    sl: &Layout,
    status: u64,
) -> Result<()> {
    check_f32("scatter_add", dtype)?;
    check_dim("scatter_add", sl.shape(), dim)?;
    check_same_but("scatter_add", out_dims, sl.dims(), dim)?;
    launch_index(k, "scatter_add_f32", sl, dim, out_dims[dim], index, src, out, status)
}
