//! Walking strided views: every elementwise kernel is "for each output row, for each
//! element of the row, read operands at their strides". Dims that are laid out back to
//! back in every operand are merged first, so a broadcast bias add is one long inner row.

use super::simd::vectorize;
use super::{CpuData, CpuStorage};
use crate::Layout;
use rayon::prelude::*;

/// K operands walked together over one shape. The output of an elementwise kernel is
/// contiguous, so row `r` of the walk writes `out[r * inner_len..][..inner_len]`.
pub(crate) struct Walk<const K: usize> {
    outer_dims: Vec<usize>,
    outer_strides: [Vec<usize>; K],
    pub inner_len: usize,
    pub inner_strides: [usize; K],
    offsets: [usize; K],
}

impl<const K: usize> Walk<K> {
    pub fn new(dims: &[usize], strides: [&[usize]; K], offsets: [usize; K]) -> Self {
        let (mut d, mut s) = crate::backend::merge_dims(dims, strides);
        let inner_len = d.pop().unwrap_or(if dims.contains(&0) { 0 } else { 1 });
        let inner_strides = std::array::from_fn(|k| s[k].pop().unwrap_or(1));
        Walk { outer_dims: d, outer_strides: s, inner_len, inner_strides, offsets }
    }

    pub fn rows(&self) -> usize {
        if self.inner_len == 0 {
            0
        } else {
            self.outer_dims.iter().product()
        }
    }

    /// Calls `f(row, base_offsets)` for rows `start..end` in order.
    pub fn for_rows(&self, start: usize, end: usize, mut f: impl FnMut(usize, [usize; K])) {
        if start >= end {
            return;
        }
        let rank = self.outer_dims.len();
        // Multi-index of `start`, then an odometer that keeps the base offsets current.
        let mut idx = vec![0usize; rank];
        let mut rem = start;
        for d in (0..rank).rev() {
            idx[d] = rem % self.outer_dims[d];
            rem /= self.outer_dims[d];
        }
        let mut base = self.offsets;
        for d in 0..rank {
            for k in 0..K {
                base[k] += idx[d] * self.outer_strides[k][d];
            }
        }
        for row in start..end {
            f(row, base);
            for d in (0..rank).rev() {
                idx[d] += 1;
                for k in 0..K {
                    base[k] += self.outer_strides[k][d];
                }
                if idx[d] < self.outer_dims[d] {
                    break;
                }
                for k in 0..K {
                    base[k] -= idx[d] * self.outer_strides[k][d];
                }
                idx[d] = 0;
            }
        }
    }

    /// Fills the contiguous `out` (len = rows * inner_len) row by row, in parallel chunks
    /// when large. `f(out_row, base_offsets)` writes one row.
    pub fn fill_rows<U: Send>(&self, out: &mut [U], f: impl Fn(&mut [U], [usize; K]) + Sync) {
        let inner = self.inner_len;
        if inner == 0 {
            return;
        }
        let rows = self.rows();
        if rows * inner < super::par_threshold() || rows == 1 {
            self.for_rows(0, rows, |r, b| f(&mut out[r * inner..(r + 1) * inner], b));
            return;
        }
        let rows_per_chunk = (super::par_threshold() / 2 / inner).max(1);
        out.par_chunks_mut(rows_per_chunk * inner).enumerate().for_each(|(c, chunk)| {
            let r0 = c * rows_per_chunk;
            let r1 = r0 + chunk.len() / inner;
            self.for_rows(r0, r1, |r, b| f(&mut chunk[(r - r0) * inner..(r - r0 + 1) * inner], b));
        });
    }
}

/// `f` applied to every element of the view, in row-major order.
pub(crate) fn map<T, U>(src: &[T], l: &Layout, f: impl Fn(T) -> U + Sync + Send) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync + Default,
{
    if let Some(r) = l.contiguous_range() {
        let s = &src[r];
        if s.len() < super::par_threshold() {
            return vectorize(
                #[inline(always)]
                || s.iter().map(|&x| f(x)).collect(),
            );
        }
        // Chunked loops over plain slices vectorize; a zeroed Vec is fresh pages from
        // the allocator, faulted in by the threads that fill them.
        let mut out = super::zeroed::<U>(s.len());
        out.par_chunks_mut(super::par_threshold() / 2).zip(s.par_chunks(super::par_threshold() / 2)).for_each(
            |(o, s)| {
                vectorize(
                    #[inline(always)]
                    || {
                        for (o, &x) in o.iter_mut().zip(s) {
                            *o = f(x);
                        }
                    },
                )
            },
        );
        return out;
    }
    let walk = Walk::new(l.dims(), [l.strides()], [l.offset()]);
    let mut out = super::zeroed::<U>(l.elem_count());
    let st = walk.inner_strides[0];
    walk.fill_rows(&mut out, |row, [b]| {
        if st == 1 {
            let src = &src[b..b + row.len()];
            vectorize(
                #[inline(always)]
                || {
                    for (o, &x) in row.iter_mut().zip(src) {
                        *o = f(x);
                    }
                },
            )
        } else {
            for (i, o) in row.iter_mut().enumerate() {
                *o = f(src[b + i * st]);
            }
        }
    });
    out
}

/// `f(a, b)` for two views already broadcast to the same shape.
pub(crate) fn map2<T, U>(a: &[T], la: &Layout, b: &[T], lb: &Layout, f: impl Fn(T, T) -> U + Sync + Send) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync + Default,
{
    if let (Some(ra), Some(rb)) = (la.contiguous_range(), lb.contiguous_range()) {
        let (a, b) = (&a[ra], &b[rb]);
        if a.len() < super::par_threshold() {
            return vectorize(
                #[inline(always)]
                || a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
            );
        }
        let mut out = super::zeroed::<U>(a.len());
        let c = super::par_threshold() / 2;
        out.par_chunks_mut(c).zip(a.par_chunks(c)).zip(b.par_chunks(c)).for_each(|((o, a), b)| {
            vectorize(
                #[inline(always)]
                || {
                    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                        *o = f(x, y);
                    }
                },
            )
        });
        return out;
    }
    let walk = Walk::new(la.dims(), [la.strides(), lb.strides()], [la.offset(), lb.offset()]);
    let mut out = super::zeroed::<U>(la.elem_count());
    let [sa, sb] = walk.inner_strides;
    walk.fill_rows(&mut out, |row, [oa, ob]| {
        let n = row.len();
        match (sa, sb) {
            // The common broadcasts (bias add: a row against a row; scaling by a scalar)
            // as plain slice loops, so they vectorise.
            (1, 1) => {
                let (a, b) = (&a[oa..oa + n], &b[ob..ob + n]);
                vectorize(
                    #[inline(always)]
                    || {
                        for ((o, &x), &y) in row.iter_mut().zip(a).zip(b) {
                            *o = f(x, y);
                        }
                    },
                )
            }
            (1, 0) => {
                let (a, y) = (&a[oa..oa + n], b[ob]);
                vectorize(
                    #[inline(always)]
                    || {
                        for (o, &x) in row.iter_mut().zip(a) {
                            *o = f(x, y);
                        }
                    },
                )
            }
            _ => {
                for (i, o) in row.iter_mut().enumerate() {
                    *o = f(a[oa + i * sa], b[ob + i * sb]);
                }
            }
        }
    });
    out
}

/// `f(c, a, b)` for three views already broadcast to the same shape.
pub(crate) fn map3<C, T>(
    c: &[C],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(C, T, T) -> T + Sync + Send,
) -> Vec<T>
where
    C: Copy + Send + Sync,
    T: Copy + Send + Sync + Default,
{
    let walk =
        Walk::new(la.dims(), [lc.strides(), la.strides(), lb.strides()], [lc.offset(), la.offset(), lb.offset()]);
    let mut out = super::zeroed::<T>(la.elem_count());
    let [sc, sa, sb] = walk.inner_strides;
    walk.fill_rows(&mut out, |row, [oc, oa, ob]| {
        for (i, o) in row.iter_mut().enumerate() {
            *o = f(c[oc + i * sc], a[oa + i * sa], b[ob + i * sb]);
        }
    });
    out
}

/// A contiguous copy of the view.
pub fn to_contiguous(s: &CpuStorage, l: &Layout) -> CpuStorage {
    CpuStorage::new(match s.data() {
        CpuData::F32(v) => CpuData::F32(map(v, l, |x| x)),
        CpuData::F64(v) => CpuData::F64(map(v, l, |x| x)),
        CpuData::F16(v) => CpuData::F16(map(v, l, |x| x)),
        CpuData::BF16(v) => CpuData::BF16(map(v, l, |x| x)),
        CpuData::I64(v) => CpuData::I64(map(v, l, |x| x)),
    })
}

/// Copies the view `src` into the (strided) view `dst_l` of `dst`. Same dtype and shape,
/// checked by the caller.
pub fn copy_into(dst: &mut CpuStorage, dst_l: &Layout, src: &CpuStorage, src_l: &Layout) {
    fn go<T: Copy>(d: &mut [T], dl: &Layout, s: &[T], sl: &Layout) {
        let walk = Walk::new(dl.dims(), [dl.strides(), sl.strides()], [dl.offset(), sl.offset()]);
        let [sd, ss] = walk.inner_strides;
        let n = walk.inner_len;
        walk.for_rows(0, walk.rows(), |_, [od, os]| {
            if sd == 1 && ss == 1 {
                d[od..od + n].copy_from_slice(&s[os..os + n]);
            } else {
                for i in 0..n {
                    d[od + i * sd] = s[os + i * ss];
                }
            }
        });
    }
    match (dst.data_mut(), src.data()) {
        (CpuData::F32(d), CpuData::F32(s)) => go(d, dst_l, s, src_l),
        (CpuData::F64(d), CpuData::F64(s)) => go(d, dst_l, s, src_l),
        (CpuData::F16(d), CpuData::F16(s)) => go(d, dst_l, s, src_l),
        (CpuData::BF16(d), CpuData::BF16(s)) => go(d, dst_l, s, src_l),
        (CpuData::I64(d), CpuData::I64(s)) => go(d, dst_l, s, src_l),
        _ => unreachable!("copy_into: the caller checks that dtypes match"),
    }
}
