//! Reductions over any set of dims. The view is permuted so that the reduced dims come
//! last; if that is not already contiguous it is copied once, then every output element
//! reduces one contiguous run.

use super::simd::vectorize;
use super::{float_view, from_f32, to_contiguous_vec as contiguous, CpuData, CpuStorage, Float, FloatView};
use crate::backend::ReduceOp;
use crate::{Error, Layout, Result, WithDType};
use rayon::prelude::*;

/// Reduces `dims` (sorted, unique) of the view. The result is contiguous with the
/// keepdim shape (reduced dims have size 1). ArgMax/ArgMin give I64.
pub fn reduce(s: &CpuStorage, l: &Layout, dims: &[usize], op: ReduceOp) -> Result<CpuStorage> {
    let rank = l.dims().len();
    let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(dims).copied().collect();
    let pl = l.permute(&perm);
    let inner: usize = dims.iter().map(|&d| l.dims()[d]).product();
    let outer: usize = kept.iter().map(|&d| l.dims()[d]).product();
    if inner == 0 && op != ReduceOp::Sum {
        return Err(Error::invalid("reduce", format!("{op:?} over an empty dimension of shape {}", l.shape())));
    }
    if let CpuData::I64(v) = s.data() {
        let data = contiguous(v, &pl);
        return Ok(CpuStorage::new(CpuData::I64(rows(&data, outer, inner, |r| match op {
            ReduceOp::Sum => r.iter().sum(),
            ReduceOp::Max => *r.iter().max().expect("non-empty"),
            ReduceOp::Min => *r.iter().min().expect("non-empty"),
            ReduceOp::ArgMax => arg_best(r, |a, b| a > b),
            ReduceOp::ArgMin => arg_best(r, |a, b| a < b),
        }))));
    }
    // Sums over leading dims of a contiguous view (a bias gradient: [batch, features] summed
    // over the batch) add whole rows into one accumulator row: vectorised, and no transposed
    // copy. Each output still adds its inputs one by one in row order, so the values are
    // those of the general path (up to the sign of a sum of zeros). Narrow rows, down to the
    // sum of everything, stay on that path.
    let leading = !dims.is_empty() && dims.iter().enumerate().all(|(i, &d)| i == d);
    if let (ReduceOp::Sum, true, Some(r)) = (op, leading && outer >= 16, l.contiguous_range()) {
        match s.data() {
            CpuData::F32(v) => return Ok(from_f32(column_sums(&v[r], inner, outer), s.dtype())),
            CpuData::F64(v) => return Ok(CpuStorage::new(CpuData::F64(column_sums(&v[r], inner, outer)))),
            _ => {}
        }
    }
    Ok(match float_view(s, &pl, "reduce")? {
        FloatView::F32(v, pl) => {
            let out = reduce_float(&contiguous(&v, &pl), outer, inner, op);
            match out {
                Reduced::Values(v) => from_f32(v, s.dtype()),
                Reduced::Indices(i) => CpuStorage::new(CpuData::I64(i)),
            }
        }
        FloatView::F64(v, pl) => match reduce_float(&contiguous(v, &pl), outer, inner, op) {
            Reduced::Values(v) => CpuStorage::new(CpuData::F64(v)),
            Reduced::Indices(i) => CpuStorage::new(CpuData::I64(i)),
        },
    })
}

enum Reduced<T> {
    Values(Vec<T>),
    Indices(Vec<i64>),
}

fn reduce_float<T: Float>(data: &[T], outer: usize, inner: usize, op: ReduceOp) -> Reduced<T> {
    match op {
        // Sums accumulate in f64: an f32 running sum over a long row loses digits.
        ReduceOp::Sum => Reduced::Values(rows(data, outer, inner, |r| {
            T::from_f64(r.iter().map(|&x| WithDType::to_f64(x)).sum::<f64>())
        })),
        // NaN wins, as in PyTorch.
        ReduceOp::Max => Reduced::Values(rows(data, outer, inner, |r| {
            r.iter().copied().fold(T::neg_infinity(), |m, x| if x.is_nan() || m.is_nan() { T::nan() } else { m.max(x) })
        })),
        ReduceOp::Min => Reduced::Values(rows(data, outer, inner, |r| {
            r.iter().copied().fold(T::infinity(), |m, x| if x.is_nan() || m.is_nan() { T::nan() } else { m.min(x) })
        })),
        ReduceOp::ArgMax => Reduced::Indices(rows(data, outer, inner, |r| arg_best(r, |a, b| a > b || a.is_nan()))),
        ReduceOp::ArgMin => Reduced::Indices(rows(data, outer, inner, |r| arg_best(r, |a, b| a < b || a.is_nan()))),
    }
}

/// The sums of the `cols` columns of a row-major `rows x cols` matrix, accumulated in f64 row
/// after row (wide column blocks in parallel when large).
fn column_sums<T: Float>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    let block = |c0: usize, out: &mut [T]| {
        let mut acc = vec![0f64; out.len()];
        vectorize(
            #[inline(always)]
            || {
                for r in 0..rows {
                    let row = &data[r * cols + c0..][..acc.len()];
                    for (a, &x) in acc.iter_mut().zip(row) {
                        *a += WithDType::to_f64(x);
                    }
                }
                for (o, &a) in out.iter_mut().zip(&acc) {
                    *o = T::from_f64(a);
                }
            },
        )
    };
    let mut out = vec![T::zero(); cols];
    const BLOCK: usize = 1024;
    if rows * cols < super::par_threshold() || cols <= BLOCK {
        block(0, &mut out);
    } else {
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(i, o)| block(i * BLOCK, o));
    }
    out
}

/// Index of the first element that no later element beats.
fn arg_best<T: Copy>(r: &[T], better: impl Fn(T, T) -> bool) -> i64 {
    let mut best = 0;
    for (i, &x) in r.iter().enumerate().skip(1) {
        if better(x, r[best]) {
            best = i;
        }
    }
    best as i64
}

/// `f` over each of the `outer` contiguous runs of length `inner`.
fn rows<T: Sync, U: Send>(data: &[T], outer: usize, inner: usize, f: impl Fn(&[T]) -> U + Sync + Send) -> Vec<U> {
    if inner == 0 {
        return (0..outer).map(|_| f(&[])).collect();
    }
    if outer * inner < super::par_threshold() || outer == 1 {
        data.chunks(inner).map(f).collect()
    } else {
        data.par_chunks(inner).with_min_len((super::par_threshold() / inner).max(1)).map(f).collect()
    }
}
