//! Shapes, strides and the layout of a view into storage, plus NumPy broadcasting.

use crate::{Error, Result};

/// The extent of each dimension, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: Vec<usize>) -> Shape {
        Shape(dims)
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides of a contiguous tensor of this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// Turns a possibly negative dim (`-1` = last) into an index, or errors naming `op`.
    pub fn dim(&self, dim: isize, op: &'static str) -> Result<usize> {
        normalize_dim(dim, self.rank(), op)
    }

    /// The shape NumPy broadcasting gives `self` and `other`.
    pub fn broadcast(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let (a, b) = (self.dims(), other.dims());
        let rank = a.len().max(b.len());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
            let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
            out[i] = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return Err(Error::ShapeMismatch { op, lhs: self.clone(), rhs: other.clone() }),
            };
        }
        Ok(Shape(out))
    }
}

/// `dim` in `-rank..rank` to `0..rank`.
pub fn normalize_dim(dim: isize, rank: usize, op: &'static str) -> Result<usize> {
    let r = rank as isize;
    if dim >= r || dim < -r {
        return Err(Error::DimOutOfRange { op, dim, rank });
    }
    Ok(if dim < 0 { (dim + r) as usize } else { dim as usize })
}

/// Normalizes a list of dims, sorted and deduplicated; an empty list means "all dims".
pub fn normalize_dims(dims: &[isize], rank: usize, op: &'static str) -> Result<Vec<usize>> {
    if dims.is_empty() {
        return Ok((0..rank).collect());
    }
    let mut out = dims.iter().map(|&d| normalize_dim(d, rank, op)).collect::<Result<Vec<_>>>()?;
    out.sort_unstable();
    let before = out.len();
    out.dedup();
    if out.len() != before {
        return Err(Error::invalid(op, format!("dims {dims:?} name a dimension twice")));
    }
    Ok(out)
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Shape {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Shape {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Shape {
        Shape(d.to_vec())
    }
}
impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(d: &[usize; N]) -> Shape {
        Shape(d.to_vec())
    }
}

/// How a tensor's elements sit in its storage: element `i` (a multi-index) is at
/// `offset + sum(i[d] * strides[d])`. Views change the layout, never the storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    pub fn contiguous(shape: Shape) -> Layout {
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Layout {
        Layout { shape, strides, offset }
    }
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// Row-major contiguous (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// The range of storage this view touches when contiguous.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.elem_count())
    }

    pub fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: Shape(perm.iter().map(|&p| self.dims()[p]).collect()),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        dims[dim] = len;
        Layout { shape: Shape(dims), strides: self.strides.clone(), offset: self.offset + start * self.strides[dim] }
    }

    /// View with `shape` (already checked broadcast-compatible): stride 0 on new or
    /// expanded dims.
    pub fn broadcast_as(&self, shape: &Shape) -> Layout {
        let rank = shape.rank();
        let extra = rank - self.shape.rank();
        let mut strides = vec![0; rank];
        for i in extra..rank {
            let src = i - extra;
            strides[i] = if self.dims()[src] == shape.dims()[i] { self.strides[src] } else { 0 };
        }
        Layout { shape: shape.clone(), strides, offset: self.offset }
    }

    /// View of the same elements with a new shape; only for contiguous layouts.
    pub fn reshape_contiguous(&self, shape: Shape) -> Layout {
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: self.offset }
    }

    pub fn with_dims(&self, shape: Shape, strides: Vec<usize>) -> Layout {
        Layout { shape, strides, offset: self.offset }
    }
}
