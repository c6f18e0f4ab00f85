//! im2col / col2im: the sliding-window rearrangement that turns a convolution into one
//! GEMM (and its adjoint, for the gradient). One task per (image, channel) plane: each
//! writes its own rows of the result, so no two threads touch the same memory.

use super::{float_view, from_f32, CpuData, CpuStorage, Float, FloatView};
use crate::backend::Window2d;
use crate::{Layout, Result};
use rayon::prelude::*;

/// x [n, c, h, w] -> cols [n, c*kh*kw, oh*ow]; padding reads as zero.
pub fn im2col(s: &CpuStorage, l: &Layout, w: &Window2d) -> Result<CpuStorage> {
    Ok(match float_view(s, l, "im2col")? {
        FloatView::F32(v, l2) => from_f32(im2col_t(&super::to_contiguous_vec(&v, &l2), l.dims(), w), s.dtype()),
        FloatView::F64(v, l2) => {
            CpuStorage::new(CpuData::F64(im2col_t(&super::to_contiguous_vec(v, &l2), l.dims(), w)))
        }
    })
}

/// cols [n, c*kh*kw, oh*ow] -> x [n, c, h, w] (`x_dims`), summing overlapping windows.
pub fn col2im(s: &CpuStorage, l: &Layout, x_dims: &[usize], w: &Window2d) -> Result<CpuStorage> {
    Ok(match float_view(s, l, "col2im")? {
        FloatView::F32(v, l2) => from_f32(col2im_t(&super::to_contiguous_vec(&v, &l2), x_dims, w), s.dtype()),
        FloatView::F64(v, l2) => CpuStorage::new(CpuData::F64(col2im_t(&super::to_contiguous_vec(v, &l2), x_dims, w))),
    })
}

/// For kernel tap `k` along one axis: the input coordinate of output 0 (`k·dil - pad`, may
/// be negative) and the range of outputs whose input coordinate lies inside `0..len`.
#[inline]
fn tap(k: usize, stride: usize, pad: usize, dil: usize, len: usize, out_len: usize) -> (isize, std::ops::Range<usize>) {
    let off = (k * dil) as isize - pad as isize;
    let s = stride as isize;
    // First o with o·s + off >= 0, and one past the last with o·s + off <= len - 1.
    let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
    let hi = if (len as isize) > off { (((len as isize - 1 - off) / s) + 1) as usize } else { 0 };
    (off, lo.min(out_len)..hi.min(out_len).max(lo.min(out_len)))
}

fn im2col_t<T: Float>(x: &[T], dims: &[usize], w: &Window2d) -> Vec<T> {
    let (n, c, h, wd) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
    let (kh, kw) = w.kernel;
    let (k, l) = (kh * kw, oh * ow);
    let mut out = super::zeroed::<T>(n * c * k * l);
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(k * l).enumerate().for_each(|(plane, rows)| {
        let src = &x[plane * h * wd..(plane + 1) * h * wd];
        for i in 0..kh {
            let (oy, ys) = tap(i, w.stride.0, w.padding.0, w.dilation.0, h, oh);
            for j in 0..kw {
                let (ox, xs) = tap(j, w.stride.1, w.padding.1, w.dilation.1, wd, ow);
                let row = &mut rows[(i * kw + j) * l..(i * kw + j + 1) * l];
                for y in ys.clone() {
                    let sy = (y * w.stride.0) as isize + oy;
                    let base = sy as usize * wd;
                    let dst = &mut row[y * ow..(y + 1) * ow];
                    if w.stride.1 == 1 {
                        // Contiguous run: one memcpy per (tap, output row).
                        let s0 = (base as isize + xs.start as isize + ox) as usize;
                        dst[xs.clone()].copy_from_slice(&src[s0..s0 + xs.len()]);
                    } else {
                        for xo in xs.clone() {
                            dst[xo] = src[(base as isize + (xo * w.stride.1) as isize + ox) as usize];
                        }
                    }
                }
            }
        }
    });
    out
}

fn col2im_t<T: Float>(cols: &[T], dims: &[usize], w: &Window2d) -> Vec<T> {
    let (n, c, h, wd) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
    let (kh, kw) = w.kernel;
    let (k, l) = (kh * kw, oh * ow);
    let mut out = super::zeroed::<T>(n * c * h * wd);
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(h * wd).enumerate().for_each(|(plane, dst)| {
        let rows = &cols[plane * k * l..(plane + 1) * k * l];
        for i in 0..kh {
            let (oy, ys) = tap(i, w.stride.0, w.padding.0, w.dilation.0, h, oh);
            for j in 0..kw {
                let (ox, xs) = tap(j, w.stride.1, w.padding.1, w.dilation.1, wd, ow);
                let row = &rows[(i * kw + j) * l..(i * kw + j + 1) * l];
                for y in ys.clone() {
                    let base = ((y * w.stride.0) as isize + oy) as usize * wd;
                    let src = &row[y * ow..(y + 1) * ow];
                    for xo in xs.clone() {
                        let t = (base as isize + (xo * w.stride.1) as isize + ox) as usize;
                        dst[t] = dst[t] + src[xo];
                    }
                }
            }
        }
    });
    out
}
