//! Typed launchers for the sliding-window kernels: im2col / col2im (kernels/conv.cu) and
//! max / average pooling with their backward passes (kernels/pool.cu). x is [n, c, h, w]
//! and may have any strides where it is read; everything written is contiguous. F32, F16
//! and BF16 (math in f32, as the CPU backend widens half types).

use super::kernels::suffix;
use super::launch::{arg, grid_for, Launcher, BLOCK};
use crate::backend::Window2d;
use crate::{DType, Error, Layout, Result, Shape};

/// `KilnWindow2d` of kernels/window.cuh.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Window2dArgs {
    n: i64,
    c: i64,
    h: i64,
    w: i64,
    oh: i64,
    ow: i64,
    kh: i64,
    kw: i64,
    sh: i64,
    sw: i64,
    ph: i64,
    pw: i64,
    dh: i64,
    dw: i64,
    xs: [i64; 4],
    xoff: i64,
}

impl Window2dArgs {
    /// The geometry of `w` over an input of `x_dims` stored with `strides` and `offset`,
    /// checked as Tensor::check_window checks it (the kernels trust these numbers).
    pub fn new(op: &'static str, x_dims: &[usize], strides: &[usize], offset: usize, w: &Window2d) -> Result<Self> {
        if x_dims.len() != 4 || strides.len() != 4 {
            return Err(Error::InvalidShape {
                op,
                shape: Shape::new(x_dims.to_vec()),
                msg: "input must be [batch, channels, height, width]".into(),
            });
        }
        w.check_positive(op)?;
        let (oh, ow) =
            w.out_hw(x_dims[2], x_dims[3]).filter(|&(h, w)| h > 0 && w > 0).ok_or_else(|| Error::InvalidShape {
                op,
                shape: Shape::new(x_dims.to_vec()),
                msg: format!(
                    "a {:?} window (padding {:?}, dilation {:?}) does not fit",
                    w.kernel, w.padding, w.dilation
                ),
            })?;
        let i = |v: usize| v as i64;
        Ok(Window2dArgs {
            n: i(x_dims[0]),
            c: i(x_dims[1]),
            h: i(x_dims[2]),
            w: i(x_dims[3]),
            oh: i(oh),
            ow: i(ow),
            kh: i(w.kernel.0),
            kw: i(w.kernel.1),
            sh: i(w.stride.0),
            sw: i(w.stride.1),
            ph: i(w.padding.0),
            pw: i(w.padding.1),
            dh: i(w.dilation.0),
            dw: i(w.dilation.1),
            xs: [i(strides[0]), i(strides[1]), i(strides[2]), i(strides[3])],
            xoff: i(offset),
        })
    }

    /// For an x that is only written (contiguous).
    pub fn contiguous(op: &'static str, x_dims: &[usize], w: &Window2d) -> Result<Self> {
        let strides = Shape::new(x_dims.to_vec()).contiguous_strides();
        Self::new(op, x_dims, &strides, 0, w)
    }

    fn viewed(op: &'static str, xl: &Layout, w: &Window2d) -> Result<Self> {
        Self::new(op, xl.dims(), xl.strides(), xl.offset(), w)
    }

    /// (oh, ow).
    pub fn out_hw(&self) -> (usize, usize) {
        (self.oh as usize, self.ow as usize)
    }
    fn out_count(&self) -> usize {
        (self.n * self.c * self.oh * self.ow) as usize
    }
    fn in_count(&self) -> usize {
        (self.n * self.c * self.h * self.w) as usize
    }
}

/// kernel(geometry, buffers...) over `threads` elements.
fn launch_window(k: &dyn Launcher, name: &str, g: Window2dArgs, threads: usize, bufs: &mut [u64]) -> Result<()> {
    let mut g = g;
    let mut args = vec![arg(&mut g)];
    args.extend(bufs.iter_mut().map(arg));
    k.launch(name, (grid_for(threads), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// cols [n, c·kh·kw, oh·ow] (contiguous) = the sliding windows of x (the view `xl`), zeros
/// where a window overlaps the padding.
pub fn im2col(k: &dyn Launcher, dtype: DType, x: u64, xl: &Layout, w: &Window2d, cols: u64) -> Result<()> {
    let name = format!("im2col_{}", suffix("im2col", dtype)?);
    let g = Window2dArgs::viewed("im2col", xl, w)?;
    let threads = g.out_count() * w.kernel.0 * w.kernel.1;
    launch_window(k, &name, g, threads, &mut [x, cols])
}

/// cols [c·kh·kw, n, oh·ow] (contiguous): [`im2col`] with each row's images side by side,
/// the weight gradient's GEMM operand (K = n·oh·ow) with no transposing copy.
pub fn im2col_rows_first(k: &dyn Launcher, dtype: DType, x: u64, xl: &Layout, w: &Window2d, cols: u64) -> Result<()> {
    let name = format!("im2col_rows_first_{}", suffix("im2col", dtype)?);
    let g = Window2dArgs::viewed("im2col", xl, w)?;
    let threads = g.out_count() * w.kernel.0 * w.kernel.1;
    launch_window(k, &name, g, threads, &mut [x, cols])
}

/// x [n, c, h, w] = `x_dims` (contiguous) = col2im of the contiguous cols [n, c·kh·kw,
/// oh·ow]: every column entry added back at the pixel it was read from.
pub fn col2im(k: &dyn Launcher, dtype: DType, cols: u64, x_dims: &[usize], w: &Window2d, x: u64) -> Result<()> {
    let name = format!("col2im_{}", suffix("col2im", dtype)?);
    let g = Window2dArgs::contiguous("col2im", x_dims, w)?;
    launch_window(k, &name, g, g.in_count(), &mut [cols, x])
}

/// Max pooling needs every window to hold at least one pixel of the image (the backward
/// finds a pixel's windows from the pixel): Tensor::max_pool2d's rule, padding at most half
/// the kernel.
fn check_pool_padding(op: &'static str, w: &Window2d) -> Result<()> {
    if w.padding.0 * 2 > w.kernel.0 || w.padding.1 * 2 > w.kernel.1 {
        return Err(Error::invalid(
            op,
            format!("padding {:?} must be at most half the kernel {:?}", w.padding, w.kernel),
        ));
    }
    Ok(())
}

/// vals [n, c, oh, ow] = the max of each window of x (the view `xl`); idx (I64, same shape)
/// = where it was, as an index into its h·w plane (the CPU backend's convention).
pub fn max_pool2d(
    k: &dyn Launcher,
    dtype: DType,
    x: u64,
    xl: &Layout,
    w: &Window2d,
    vals: u64,
    idx: u64,
) -> Result<()> {
    let name = format!("max_pool2d_{}", suffix("max_pool2d", dtype)?);
    check_pool_padding("max_pool2d", w)?;
    let g = Window2dArgs::viewed("max_pool2d", xl, w)?;
    launch_window(k, &name, g, g.out_count(), &mut [x, vals, idx])
}

/// gx [n, c, h, w] = `x_dims` (contiguous) = each output gradient of the contiguous
/// g [n, c, oh, ow] added at its window's argmax `idx` (from [`max_pool2d`]).
pub fn max_pool2d_backward(
    k: &dyn Launcher,
    dtype: DType,
    g: u64,
    idx: u64,
    x_dims: &[usize],
    w: &Window2d,
    gx: u64,
) -> Result<()> {
    let name = format!("max_pool2d_backward_{}", suffix("max_pool2d_backward", dtype)?);
    check_pool_padding("max_pool2d_backward", w)?;
    let geo = Window2dArgs::contiguous("max_pool2d_backward", x_dims, w)?;
    launch_window(k, &name, geo, geo.in_count(), &mut [g, idx, gx])
}

/// y [n, c, oh, ow] = the mean of each window of x (the view `xl`), padding counted as zeros.
pub fn avg_pool2d(k: &dyn Launcher, dtype: DType, x: u64, xl: &Layout, w: &Window2d, y: u64) -> Result<()> {
    let name = format!("avg_pool2d_{}", suffix("avg_pool2d", dtype)?);
    let g = Window2dArgs::viewed("avg_pool2d", xl, w)?;
    launch_window(k, &name, g, g.out_count(), &mut [x, y])
}

/// gx [n, c, h, w] = `x_dims` (contiguous) = the gradient of [`avg_pool2d`] for the
/// contiguous output gradient g [n, c, oh, ow].
pub fn avg_pool2d_backward(
    k: &dyn Launcher,
    dtype: DType,
    g: u64,
    x_dims: &[usize],
    w: &Window2d,
    gx: u64,
) -> Result<()> {
    let name = format!("avg_pool2d_backward_{}", suffix("avg_pool2d_backward", dtype)?);
    let geo = Window2dArgs::contiguous("avg_pool2d_backward", x_dims, w)?;
    launch_window(k, &name, geo, geo.in_count(), &mut [g, gx])
}
