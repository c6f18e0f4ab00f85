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

/// For output column `o` along one axis and kernel tap `k`: the input coordinate, if inside.
#[inline]
fn src_coord(o: usize, k: usize, stride: usize, pad: usize, dil: usize, len: usize) -> Option<usize> {
    let p = (o * stride + k * dil).checked_sub(pad)?;
    (p < len).then_some(p)
}

fn im2col_t<T: Float>(x: &[T], dims: &[usize], w: &Window2d) -> Vec<T> {
    let (n, c, h, wd) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
    let (kh, kw) = w.kernel;
    let (k, l) = (kh * kw, oh * ow);
    let mut out = vec![T::zero(); n * c * k * l];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(k * l).enumerate().for_each(|(plane, rows)| {
        let src = &x[plane * h * wd..(plane + 1) * h * wd];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut rows[(i * kw + j) * l..(i * kw + j + 1) * l];
                for y in 0..oh {
                    let Some(sy) = src_coord(y, i, w.stride.0, w.padding.0, w.dilation.0, h) else { continue };
                    for xo in 0..ow {
                        if let Some(sx) = src_coord(xo, j, w.stride.1, w.padding.1, w.dilation.1, wd) {
                            row[y * ow + xo] = src[sy * wd + sx];
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
    let mut out = vec![T::zero(); n * c * h * wd];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(h * wd).enumerate().for_each(|(plane, dst)| {
        let rows = &cols[plane * k * l..(plane + 1) * k * l];
        for i in 0..kh {
            for j in 0..kw {
                let row = &rows[(i * kw + j) * l..(i * kw + j + 1) * l];
                for y in 0..oh {
                    let Some(sy) = src_coord(y, i, w.stride.0, w.padding.0, w.dilation.0, h) else { continue };
                    for xo in 0..ow {
                        if let Some(sx) = src_coord(xo, j, w.stride.1, w.padding.1, w.dilation.1, wd) {
                            dst[sy * wd + sx] = dst[sy * wd + sx] + row[y * ow + xo];
                        }
                    }
                }
            }
        }
    });
    out
}
