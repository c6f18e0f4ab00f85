//! Elementwise unary, binary and select kernels on the CPU.

use super::strided::{map, map2, map3};
use super::{float_view, from_f32, CpuData, CpuStorage, Float, FloatView};
use crate::backend::{BinaryOp, UnaryOp};
use crate::{DType, Error, Layout, Result};

/// Applies `op` to every element. The match happens once per call and each arm is its own
/// monomorphized loop, so the per-element function inlines and vectorizes.
fn unary_t<T: Float>(v: &[T], l: &Layout, op: UnaryOp) -> Vec<T> {
    macro_rules! m {
        ($f:expr) => {
            map(v, l, $f)
        };
    }
    let c = |v: f64| T::from_f64(v);
    let (zero, one, half) = (T::zero(), T::one(), c(0.5));
    match op {
        UnaryOp::Neg => m!(|x: T| -x),
        UnaryOp::Exp => m!(|x: T| x.exp()),
        UnaryOp::Log => m!(|x: T| x.ln()),
        UnaryOp::Sqrt => m!(|x: T| x.sqrt()),
        UnaryOp::Abs => m!(|x: T| x.abs()),
        UnaryOp::Tanh => m!(|x: T| x.tanh()),
        UnaryOp::Sigmoid => m!(move |x: T| one / (one + (-x).exp())),
        UnaryOp::Relu => m!(move |x: T| if x > zero { x } else { zero }),
        UnaryOp::Gelu => {
            let r = c(std::f64::consts::FRAC_1_SQRT_2);
            m!(move |x: T| half * x * (one + (x * r).erf()))
        }
        UnaryOp::GeluGrad => {
            let r = c(std::f64::consts::FRAC_1_SQRT_2);
            let k = c(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            m!(move |x: T| half * (one + (x * r).erf()) + x * k * (-half * x * x).exp())
        }
        UnaryOp::Silu => m!(move |x: T| x / (one + (-x).exp())),
        UnaryOp::SiluGrad => m!(move |x: T| {
            let s = one / (one + (-x).exp());
            s * (one + x * (one - s))
        }),
        UnaryOp::Sign => m!(move |x: T| {
            if x > zero {
                one
            } else if x < zero {
                -one
            } else {
                zero
            }
        }),
        UnaryOp::Step => m!(move |x: T| if x > zero { one } else { zero }),
        UnaryOp::Recip => m!(move |x: T| one / x),
        UnaryOp::Sqr => m!(|x: T| x * x),
        UnaryOp::Affine { mul, add } => {
            let (m, a) = (c(mul), c(add));
            m!(move |x: T| x * m + a)
        }
        UnaryOp::Powf(p) => {
            let p = c(p);
            m!(move |x: T| x.powf(p))
        }
    }
}

/// `op(a, b)` elementwise; one monomorphized loop per arm, as in `unary_t`.
fn binary_t<T: Float>(a: &[T], la: &Layout, b: &[T], lb: &Layout, op: BinaryOp) -> Vec<T> {
    macro_rules! m {
        ($f:expr) => {
            map2(a, la, b, lb, $f)
        };
    }
    fn flag<T: Float>(c: bool) -> T {
        if c {
            T::one()
        } else {
            T::zero()
        }
    }
    match op {
        BinaryOp::Add => m!(|a, b| a + b),
        BinaryOp::Sub => m!(|a, b| a - b),
        BinaryOp::Mul => m!(|a, b| a * b),
        BinaryOp::Div => m!(|a, b| a / b),
        BinaryOp::Pow => m!(|a: T, b| a.powf(b)),
        // NaN-propagating like PyTorch's maximum/minimum.
        BinaryOp::Maximum => m!(|a: T, b: T| if a.is_nan() || a > b { a } else { b }),
        BinaryOp::Minimum => m!(|a: T, b: T| if a.is_nan() || a < b { a } else { b }),
        BinaryOp::Eq => m!(|x, y| flag(x == y)),
        BinaryOp::Ne => m!(|x, y| flag(x != y)),
        BinaryOp::Lt => m!(|x, y| flag(x < y)),
        BinaryOp::Le => m!(|x, y| flag(x <= y)),
        BinaryOp::Gt => m!(|x, y| flag(x > y)),
        BinaryOp::Ge => m!(|x, y| flag(x >= y)),
        BinaryOp::ReluBackward => m!(|g, x| if x > T::zero() { g } else { T::zero() }),
    }
}

pub fn unary(s: &CpuStorage, l: &Layout, op: UnaryOp) -> Result<CpuStorage> {
    let name = "unary";
    Ok(match float_view(s, l, name)? {
        FloatView::F32(v, l2) => from_f32(unary_t(&v, &l2, op), s.dtype()),
        FloatView::F64(v, l2) => CpuStorage::new(CpuData::F64(unary_t(v, &l2, op))),
    })
}

/// `op(a, b)` where both layouts are already broadcast to the output shape.
pub fn binary(a: &CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout, op: BinaryOp) -> Result<CpuStorage> {
    if let (CpuData::I64(x), CpuData::I64(y)) = (a.data(), b.data()) {
        return binary_i64(x, la, y, lb, op);
    }
    Ok(match (float_view(a, la, "binary")?, float_view(b, lb, "binary")?) {
        (FloatView::F32(x, lx), FloatView::F32(y, ly)) => from_f32(binary_t(&x, &lx, &y, &ly, op), a.dtype()),
        (FloatView::F64(x, lx), FloatView::F64(y, ly)) => CpuStorage::new(CpuData::F64(binary_t(x, &lx, y, &ly, op))),
        _ => unreachable!("binary: the caller checks that dtypes match"),
    })
}

/// Integer arithmetic and comparisons for label/index tensors (comparisons give 1/0 as I64).
fn binary_i64(a: &[i64], la: &Layout, b: &[i64], lb: &Layout, op: BinaryOp) -> Result<CpuStorage> {
    let f: fn(i64, i64) -> i64 = match op {
        BinaryOp::Add => |a, b| a.wrapping_add(b),
        BinaryOp::Sub => |a, b| a.wrapping_sub(b),
        BinaryOp::Mul => |a, b| a.wrapping_mul(b),
        BinaryOp::Maximum => |a, b| a.max(b),
        BinaryOp::Minimum => |a, b| a.min(b),
        BinaryOp::Eq => |a, b| (a == b) as i64,
        BinaryOp::Ne => |a, b| (a != b) as i64,
        BinaryOp::Lt => |a, b| (a < b) as i64,
        BinaryOp::Le => |a, b| (a <= b) as i64,
        BinaryOp::Gt => |a, b| (a > b) as i64,
        BinaryOp::Ge => |a, b| (a >= b) as i64,
        BinaryOp::Div | BinaryOp::Pow | BinaryOp::ReluBackward => {
            return Err(Error::UnsupportedDType {
                op: op.name(),
                dtype: DType::I64,
                msg: "cast to a float dtype first",
            })
        }
    };
    Ok(CpuStorage::new(CpuData::I64(map2(a, la, b, lb, f))))
}

/// `cond != 0 ? a : b`; all three layouts already broadcast to the output shape.
pub fn where_cond(
    c: &CpuStorage,
    lc: &Layout,
    a: &CpuStorage,
    la: &Layout,
    b: &CpuStorage,
    lb: &Layout,
) -> Result<CpuStorage> {
    fn sel<C: Copy + Send + Sync + PartialEq + Default, T: Copy + Send + Sync + Default>(
        c: &[C],
        lc: &Layout,
        a: &[T],
        la: &Layout,
        b: &[T],
        lb: &Layout,
    ) -> Vec<T> {
        let zero = C::default();
        map3(c, lc, a, la, b, lb, move |c, x, y| if c != zero { x } else { y })
    }
    macro_rules! by_value {
        ($cv:expr) => {
            match (a.data(), b.data()) {
                (CpuData::F32(x), CpuData::F32(y)) => CpuData::F32(sel($cv, lc, x, la, y, lb)),
                (CpuData::F64(x), CpuData::F64(y)) => CpuData::F64(sel($cv, lc, x, la, y, lb)),
                (CpuData::F16(x), CpuData::F16(y)) => CpuData::F16(sel($cv, lc, x, la, y, lb)),
                (CpuData::BF16(x), CpuData::BF16(y)) => CpuData::BF16(sel($cv, lc, x, la, y, lb)),
                (CpuData::I64(x), CpuData::I64(y)) => CpuData::I64(sel($cv, lc, x, la, y, lb)),
                _ => unreachable!("where: the caller checks that dtypes match"),
            }
        };
    }
    let data = match c.data() {
        CpuData::F32(cv) => by_value!(cv),
        CpuData::F64(cv) => by_value!(cv),
        CpuData::I64(cv) => by_value!(cv),
        CpuData::F16(_) | CpuData::BF16(_) => {
            let cv: Vec<f32> = c.to_vec(lc);
            let lc = &Layout::contiguous(lc.shape().clone());
            match (a.data(), b.data()) {
                (CpuData::F32(x), CpuData::F32(y)) => CpuData::F32(sel(&cv, lc, x, la, y, lb)),
                (CpuData::F64(x), CpuData::F64(y)) => CpuData::F64(sel(&cv, lc, x, la, y, lb)),
                (CpuData::F16(x), CpuData::F16(y)) => CpuData::F16(sel(&cv, lc, x, la, y, lb)),
                (CpuData::BF16(x), CpuData::BF16(y)) => CpuData::BF16(sel(&cv, lc, x, la, y, lb)),
                (CpuData::I64(x), CpuData::I64(y)) => CpuData::I64(sel(&cv, lc, x, la, y, lb)),
                _ => unreachable!("where: the caller checks that dtypes match"),
            }
        }
    };
    Ok(CpuStorage::new(data))
}
