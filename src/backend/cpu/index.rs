//! Indexing kernels: index_select / index_add along one dim, gather / scatter_add by an
//! index tensor. Operands are made contiguous and seen as [outer, size(dim), inner].
//! The tensor layer checks shapes; index values are checked here, where they are read.

use super::strided::to_contiguous;
use super::{CpuData, CpuStorage};
use crate::{Error, Layout, Result};
use std::borrow::Cow;
use std::ops::Add;

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> (Cow<'a, CpuStorage>, usize) {
    match l.contiguous_range() {
        Some(r) => (Cow::Borrowed(s), r.start),
        None => (Cow::Owned(to_contiguous(s, l)), 0),
    }
}

/// (outer, size, inner) of `dims` around `dim`.
fn split(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (dims[..dim].iter().product(), dims[dim], dims[dim + 1..].iter().product())
}

fn check(op: &'static str, idx: &[i64], size: usize) -> Result<()> {
    match idx.iter().find(|&&i| i < 0 || i as usize >= size) {
        Some(&bad) => Err(Error::IndexOutOfRange { op, index: bad, size }),
        None => Ok(()),
    }
}

macro_rules! each_dtype {
    ($s:expr, |$v:ident| $body:expr) => {
        match $s {
            CpuData::F32($v) => CpuData::F32($body),
            CpuData::F64($v) => CpuData::F64($body),
            CpuData::F16($v) => CpuData::F16($body),
            CpuData::BF16($v) => CpuData::BF16($body),
            CpuData::I64($v) => CpuData::I64($body),
        }
    };
}

/// out[o, j, i] = src[o, idx[j], i]
pub fn index_select(s: &CpuStorage, l: &Layout, dim: usize, idx: &[i64]) -> Result<CpuStorage> {
    let (outer, size, inner) = split(l.dims(), dim);
    check("index_select", idx, size)?;
    let (c, off) = contiguous(s, l);
    fn go<T: Copy>(v: &[T], outer: usize, size: usize, inner: usize, idx: &[i64]) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &j in idx {
                let start = (o * size + j as usize) * inner;
                out.extend_from_slice(&v[start..start + inner]);
            }
        }
        out
    }
    Ok(CpuStorage::new(each_dtype!(c.data(), |v| go(&v[off..], outer, size, inner, idx))))
}

/// A copy of `base` with out[o, idx[j], i] += src[o, j, i].
pub fn index_add(
    base: &CpuStorage,
    bl: &Layout,
    dim: usize,
    idx: &[i64],
    src: &CpuStorage,
    sl: &Layout,
) -> Result<CpuStorage> {
    let (outer, size, inner) = split(bl.dims(), dim);
    check("index_add", idx, size)?;
    let mut out = to_contiguous(base, bl);
    let (c, off) = contiguous(src, sl);
    fn go<T: Copy + Add<Output = T>>(o_: &mut [T], v: &[T], outer: usize, size: usize, inner: usize, idx: &[i64]) {
        let n = idx.len();
        for o in 0..outer {
            for (j, &t) in idx.iter().enumerate() {
                let dst = (o * size + t as usize) * inner;
                let src = (o * n + j) * inner;
                for i in 0..inner {
                    o_[dst + i] = o_[dst + i] + v[src + i];
                }
            }
        }
    }
    match (out.data_mut(), c.data()) {
        (CpuData::F32(d), CpuData::F32(v)) => go(d, &v[off..], outer, size, inner, idx),
        (CpuData::F64(d), CpuData::F64(v)) => go(d, &v[off..], outer, size, inner, idx),
        (CpuData::F16(d), CpuData::F16(v)) => go(d, &v[off..], outer, size, inner, idx),
        (CpuData::BF16(d), CpuData::BF16(v)) => go(d, &v[off..], outer, size, inner, idx),
        (CpuData::I64(d), CpuData::I64(v)) => go(d, &v[off..], outer, size, inner, idx),
        _ => unreachable!("index_add: the caller checks that dtypes match"),
    }
    Ok(out)
}

/// out[o, j, i] = src[o, index[o, j, i], i], with `index` contiguous of shape
/// [outer, n, inner] and `src` [outer, size, inner].
pub fn gather(s: &CpuStorage, l: &Layout, dim: usize, index: &[i64], n: usize) -> Result<CpuStorage> {
    let (outer, size, inner) = split(l.dims(), dim);
    check("gather", index, size)?;
    let (c, off) = contiguous(s, l);
    fn go<T: Copy>(v: &[T], outer: usize, size: usize, inner: usize, index: &[i64], n: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(index.len());
        for o in 0..outer {
            for j in 0..n {
                for i in 0..inner {
                    let t = index[(o * n + j) * inner + i] as usize;
                    out.push(v[(o * size + t) * inner + i]);
                }
            }
        }
        out
    }
    Ok(CpuStorage::new(each_dtype!(c.data(), |v| go(&v[off..], outer, size, inner, index, n))))
}

/// A copy of `base` with out[o, index[o, j, i], i] += src[o, j, i]; `index` and `src`
/// are [outer, n, inner].
pub fn scatter_add(
    base: &CpuStorage,
    bl: &Layout,
    dim: usize,
    index: &[i64],
    n: usize,
    src: &CpuStorage,
    sl: &Layout,
) -> Result<CpuStorage> {
    let (outer, size, inner) = split(bl.dims(), dim);
    check("scatter_add", index, size)?;
    let mut out = to_contiguous(base, bl);
    let (c, off) = contiguous(src, sl);
    fn go<T: Copy + Add<Output = T>>(
        d: &mut [T],
        v: &[T],
        outer: usize,
        size: usize,
        inner: usize,
        index: &[i64],
        n: usize,
    ) {
        for o in 0..outer {
            for j in 0..n {
                for i in 0..inner {
                    let k = (o * n + j) * inner + i;
                    let t = (o * size + index[k] as usize) * inner + i;
                    d[t] = d[t] + v[k];
                }
            }
        }
    }
    match (out.data_mut(), c.data()) {
        (CpuData::F32(d), CpuData::F32(v)) => go(d, &v[off..], outer, size, inner, index, n),
        (CpuData::F64(d), CpuData::F64(v)) => go(d, &v[off..], outer, size, inner, index, n),
        (CpuData::F16(d), CpuData::F16(v)) => go(d, &v[off..], outer, size, inner, index, n),
        (CpuData::BF16(d), CpuData::BF16(v)) => go(d, &v[off..], outer, size, inner, index, n),
        (CpuData::I64(d), CpuData::I64(v)) => go(d, &v[off..], outer, size, inner, index, n),
        _ => unreachable!("scatter_add: the caller checks that dtypes match"),
    }
    Ok(out)
}
