//! Max pooling with the argmax of every window, so the gradient is a scatter_add.

use super::{float_view, from_f32, CpuData, CpuStorage, Float, FloatView};
use crate::backend::Window2d;
use crate::{Layout, Result};
use rayon::prelude::*;

/// x [n, c, h, w] -> (values [n, c, oh, ow], indices I64 into each h*w plane).
/// Padding never wins (it acts as -inf), as in PyTorch.
pub fn max_pool2d(s: &CpuStorage, l: &Layout, w: &Window2d) -> Result<(CpuStorage, CpuStorage)> {
    Ok(match float_view(s, l, "max_pool2d")? {
        FloatView::F32(v, l2) => {
            let (vals, idx) = pool_t(&super::to_contiguous_vec(&v, &l2), l.dims(), w);
            (from_f32(vals, s.dtype()), CpuStorage::new(CpuData::I64(idx)))
        }
        FloatView::F64(v, l2) => {
            let (vals, idx) = pool_t(&super::to_contiguous_vec(v, &l2), l.dims(), w);
            (CpuStorage::new(CpuData::F64(vals)), CpuStorage::new(CpuData::I64(idx)))
        }
    })
}

fn pool_t<T: Float>(x: &[T], dims: &[usize], w: &Window2d) -> (Vec<T>, Vec<i64>) {
    let (n, c, h, wd) = (dims[0], dims[1], dims[2], dims[3]);
    let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
    let planes = n * c;
    let mut vals = super::zeroed::<T>(planes * oh * ow);
    let mut idx = super::zeroed::<i64>(planes * oh * ow);
    if vals.is_empty() {
        return (vals, idx);
    }
    vals.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .with_min_len(super::par_min_len())
        .enumerate()
        .for_each(|(p, (vo, io))| {
            let src = &x[p * h * wd..(p + 1) * h * wd];
            if w.padding == (0, 0) && w.kernel == (2, 2) && w.stride == (2, 2) && w.dilation == (1, 1) {
                pool_2x2(src, wd, (oh, ow), vo, io);
                return;
            }
            if w.padding == (0, 0) {
                // Every tap is inside the image: no bounds checks in the hot loop.
                let (kh, kw, (sh, sw), (dh, dw)) = (w.kernel.0, w.kernel.1, w.stride, w.dilation);
                for y in 0..oh {
                    for xo in 0..ow {
                        let base = y * sh * wd + xo * sw;
                        let (mut best, mut best_i) = (src[base], base);
                        for i in 0..kh {
                            let row = base + i * dh * wd;
                            for j in 0..kw {
                                let k = row + j * dw;
                                let v = src[k];
                                if v > best || (v.is_nan() && !best.is_nan()) {
                                    best = v;
                                    best_i = k;
                                }
                            }
                        }
                        vo[y * ow + xo] = best;
                        io[y * ow + xo] = best_i as i64;
                    }
                }
                return;
            }
            for y in 0..oh {
                for xo in 0..ow {
                    let mut best = T::neg_infinity();
                    let mut best_i = -1i64;
                    for i in 0..w.kernel.0 {
                        let Some(sy) = (y * w.stride.0 + i * w.dilation.0).checked_sub(w.padding.0) else { continue };
                        if sy >= h {
                            continue;
                        }
                        for j in 0..w.kernel.1 {
                            let Some(sx) = (xo * w.stride.1 + j * w.dilation.1).checked_sub(w.padding.1) else {
                                continue;
                            };
                            if sx >= wd {
                                continue;
                            }
                            let v = src[sy * wd + sx];
                            if best_i < 0 || v > best || v.is_nan() {
                                best = v;
                                best_i = (sy * wd + sx) as i64;
                            }
                        }
                    }
                    vo[y * ow + xo] = best;
                    io[y * ow + xo] = best_i.max(0);
                }
            }
        });
    (vals, idx)
}

/// The 2x2, stride-2 window of most CNNs: each output row reads two whole input rows, with
/// the same tie and NaN rules as the general loop (the first of equal values wins; a NaN
/// wins over numbers). Which tap wins is unpredictable on real activations, so the loop is
/// written as plain `>` selects the compiler turns into maxss/cmov instead of branches
/// (mispredicted branches made it 3x slower); a row holding a NaN is redone by `take`,
/// which the plain comparison would get wrong.
pub(super) fn pool_2x2<T: Float>(src: &[T], wd: usize, out: (usize, usize), vo: &mut [T], io: &mut [i64]) {
    super::simd::vectorize(
        #[inline(always)]
        || pool_2x2_rows(src, wd, out, vo, io),
    )
}

#[inline(always)]
fn pool_2x2_rows<T: Float>(src: &[T], wd: usize, (oh, ow): (usize, usize), vo: &mut [T], io: &mut [i64]) {
    #[inline(always)]
    fn take<T: Float>((best, at): (T, usize), (v, i): (T, usize)) -> (T, usize) {
        if v > best || (v.is_nan() && !best.is_nan()) {
            (v, i)
        } else {
            (best, at)
        }
    }
    for y in 0..oh {
        let (top, bottom) = (2 * y * wd, (2 * y + 1) * wd);
        let (r0, r1) = (&src[top..][..2 * ow], &src[bottom..][..2 * ow]);
        let (vrow, irow) = (&mut vo[y * ow..][..ow], &mut io[y * ow..][..ow]);
        let mut nan = false;
        for (xo, (v, i)) in vrow.iter_mut().zip(irow.iter_mut()).enumerate() {
            let x = 2 * xo;
            let taps = [(r0[x + 1], top + x + 1), (r1[x], bottom + x), (r1[x + 1], bottom + x + 1)];
            let (mut best, mut at) = (r0[x], top + x);
            nan |= best.is_nan();
            for (tv, ti) in taps {
                let gt = tv > best;
                best = if gt { tv } else { best };
                at = if gt { ti } else { at };
                nan |= tv.is_nan();
            }
            *v = best;
            *i = at as i64;
        }
        if nan {
            for (xo, (v, i)) in vrow.iter_mut().zip(irow.iter_mut()).enumerate() {
                let x = 2 * xo;
                let mut best = (r0[x], top + x);
                for tap in [(r0[x + 1], top + x + 1), (r1[x], bottom + x), (r1[x + 1], bottom + x + 1)] {
                    best = take(best, tap);
                }
                (*v, *i) = (best.0, best.1 as i64);
            }
        }
    }
}

/// The gradient of max pooling: each output gradient added at its window's argmax, one task
/// per (image, channel) plane (planes are disjoint, so no two threads write the same place).
/// `g` and `idx` are [planes, out_len]; the result is [planes, plane_len].
pub fn max_pool2d_backward(
    g: &CpuStorage,
    gl: &Layout,
    idx: &CpuStorage,
    planes: usize,
    plane_len: usize,
) -> Result<CpuStorage> {
    let CpuData::I64(idx) = idx.data() else {
        return Err(crate::Error::UnsupportedDType {
            op: "max_pool2d_backward",
            dtype: idx.dtype(),
            msg: "indices must be I64",
        });
    };
    fn go<T: Float>(g: &[T], idx: &[i64], planes: usize, plane_len: usize) -> Vec<T> {
        let mut out = super::zeroed::<T>(planes * plane_len);
        let out_len = g.len() / planes.max(1);
        if out.is_empty() || out_len == 0 {
            return out;
        }
        out.par_chunks_mut(plane_len)
            .zip(g.par_chunks(out_len).zip(idx.par_chunks(out_len)))
            .with_min_len(super::par_min_len())
            .for_each(|(dst, (g, idx))| {
                for (&gv, &i) in g.iter().zip(idx) {
                    // Indices come from max_pool2d itself: always inside the plane.
                    if let Some(d) = dst.get_mut(i as usize) {
                        *d = *d + gv;
                    }
                }
            });
        out
    }
    Ok(match float_view(g, gl, "max_pool2d_backward")? {
        FloatView::F32(v, l2) => from_f32(go(&super::to_contiguous_vec(&v, &l2), idx, planes, plane_len), g.dtype()),
        FloatView::F64(v, l2) => {
            CpuStorage::new(CpuData::F64(go(&super::to_contiguous_vec(v, &l2), idx, planes, plane_len)))
        }
    })
}
