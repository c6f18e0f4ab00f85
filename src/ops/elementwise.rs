//! Elementwise ops: unary functions, broadcast binary arithmetic and comparisons, select.
//! Each forward dispatches to the backend; its backward sits right below, in tensor ops.

use crate::backend::{BinaryOp, UnaryOp};
use crate::{Error, Layout, Result, Tensor};

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:expr;)*) => {
        impl Tensor {
            $($(#[$doc])* pub fn $name(&self) -> Result<Tensor> {
                self.unary($op, stringify!($name))
            })*
        }
    };
}

unary_methods! {
    /// -x
    neg => UnaryOp::Neg;
    /// e^x
    exp => UnaryOp::Exp;
    /// Natural log.
    log => UnaryOp::Log;
    sqrt => UnaryOp::Sqrt;
    abs => UnaryOp::Abs;
    tanh => UnaryOp::Tanh;
    sigmoid => UnaryOp::Sigmoid;
    relu => UnaryOp::Relu;
    /// Exact GELU, x·Φ(x) (PyTorch's default `approximate='none'`).
    gelu => UnaryOp::Gelu;
    /// x·σ(x)
    silu => UnaryOp::Silu;
    /// -1, 0 or 1 (no gradient).
    sign => UnaryOp::Sign;
    /// 1/x
    recip => UnaryOp::Recip;
    /// x²
    sqr => UnaryOp::Sqr;
}

impl Tensor {
    /// mul·x + add, one pass.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine { mul, add }, "affine")
    }
    /// x + c
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, c)
    }
    /// x · c
    pub fn mul_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(c, 0.0)
    }
    /// x^p for a scalar exponent.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p), "powf")
    }

    fn unary(&self, op: UnaryOp, name: &'static str) -> Result<Tensor> {
        self.check_float(name)?;
        let s = self.storage().unary(self.layout(), op)?;
        let layout = Layout::contiguous(self.shape().clone());
        if matches!(op, UnaryOp::Sign | UnaryOp::Step | UnaryOp::GeluGrad | UnaryOp::SiluGrad) {
            // Piecewise constant (or only used inside backward): no graph.
            return Ok(Tensor::from_storage(s, layout));
        }
        // Save only what the gradient reads (the autograd edge keeps no data): the output for
        // exp, sqrt, tanh, sigmoid, recip and relu (y > 0 exactly where x > 0, NaN included:
        // relu(NaN) = 0), the input for the others that need one, nothing for neg and affine.
        let needs_y = matches!(
            op,
            UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Recip | UnaryOp::Relu
        );
        let needs_x =
            matches!(op, UnaryOp::Log | UnaryOp::Abs | UnaryOp::Gelu | UnaryOp::Silu | UnaryOp::Sqr | UnaryOp::Powf(_));
        let x = needs_x.then(|| self.detach());
        let grad = move |g: &Tensor, y: Option<&Tensor>| -> Result<Vec<Option<Tensor>>> {
            let missing = || Error::Backward(format!("internal: {name}'s backward lacks a saved tensor"));
            let x = || x.as_ref().ok_or_else(missing);
            let y = || y.ok_or_else(missing);
            let dx = match op {
                UnaryOp::Neg => g.neg()?,
                UnaryOp::Exp => g.mul(y()?)?,
                UnaryOp::Log => g.div(x()?)?,
                UnaryOp::Sqrt => g.div(&y()?.mul_scalar(2.0)?)?,
                UnaryOp::Abs => g.mul(&x()?.sign()?)?,
                UnaryOp::Tanh => g.mul(&y()?.sqr()?.affine(-1.0, 1.0)?)?,
                UnaryOp::Sigmoid => {
                    let y = y()?;
                    g.mul(&y.mul(&y.affine(-1.0, 1.0)?)?)?
                }
                UnaryOp::Relu => g.relu_backward(y()?)?,
                UnaryOp::Gelu => g.mul(&x()?.unary(UnaryOp::GeluGrad, "gelu_grad")?)?,
                UnaryOp::Silu => g.mul(&x()?.unary(UnaryOp::SiluGrad, "silu_grad")?)?,
                UnaryOp::Recip => g.mul(&y()?.sqr()?)?.neg()?,
                UnaryOp::Sqr => g.mul(&x()?.mul_scalar(2.0)?)?,
                UnaryOp::Affine { mul, .. } => g.mul_scalar(mul)?,
                UnaryOp::Powf(p) => g.mul(&x()?.powf(p - 1.0)?.mul_scalar(p)?)?,
                UnaryOp::Sign | UnaryOp::Step | UnaryOp::GeluGrad | UnaryOp::SiluGrad => return Ok(vec![None]),
            };
            Ok(vec![Some(dx)])
        };
        Ok(if needs_y {
            Tensor::from_op_out(s, layout, name, &[self], move |g, y| grad(g, Some(y)))
        } else {
            Tensor::from_op(s, layout, name, &[self], move |g| grad(g, None))
        })
    }

    // ----- binary, NumPy broadcasting -----

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Add, "add")
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Sub, "sub")
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Mul, "mul")
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Div, "div")
    }
    /// self^rhs elementwise.
    pub fn pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Pow, "pow")
    }
    /// Elementwise max (NaN propagates).
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Maximum, "maximum")
    }
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Minimum, "minimum")
    }
    /// 1 where equal, else 0 (in the operands' dtype; no gradient).
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Eq, "eq")
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Ne, "ne")
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Lt, "lt")
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Le, "le")
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Gt, "gt")
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(rhs, BinaryOp::Ge, "ge")
    }

    fn binary(&self, rhs: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        self.check_same(name, rhs)?;
        let shape = self.shape().broadcast(rhs.shape(), name)?;
        let (la, lb) = (self.layout().broadcast_as(&shape), rhs.layout().broadcast_as(&shape));
        let s = self.storage().binary(&la, &rhs.storage(), &lb, op)?;
        let layout = Layout::contiguous(shape);
        if !matches!(
            op,
            BinaryOp::Add
                | BinaryOp::Sub
                | BinaryOp::Mul
                | BinaryOp::Div
                | BinaryOp::Pow
                | BinaryOp::Maximum
                | BinaryOp::Minimum
        ) {
            // Comparisons and relu_backward (used inside backward only): no graph.
            return Ok(Tensor::from_storage(s, layout));
        }
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        // Only the inputs that need a gradient get one computed, and only what those
        // gradients read is saved: nothing for add and sub (a residual connection's operands
        // are freed once it has run), the other operand for mul, b (and the output for b's
        // gradient) for div, all of it for pow, both operands for maximum and minimum.
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        let (keep_a, keep_b, keep_y) = match op {
            BinaryOp::Add | BinaryOp::Sub => (false, false, false),
            BinaryOp::Mul => (need_b, need_a, false),
            BinaryOp::Div => (false, true, need_b),
            BinaryOp::Pow => (true, true, need_b),
            _ => (true, true, false),
        };
        let (a, b) = (keep_a.then(|| self.detach()), keep_b.then(|| rhs.detach()));
        let grad = move |g: &Tensor, y: Option<&Tensor>| -> Result<Vec<Option<Tensor>>> {
            let missing = || Error::Backward(format!("internal: {name}'s backward lacks a saved tensor"));
            let a = || a.as_ref().ok_or_else(missing);
            let b = || b.as_ref().ok_or_else(missing);
            let y = || y.ok_or_else(missing);
            // The larger (smaller) input takes the gradient of maximum (minimum); ties split it.
            let winner_weight = || -> Result<Tensor> {
                let (a, b) = (a()?, b()?);
                let win = if op == BinaryOp::Maximum { a.gt(b)? } else { a.lt(b)? };
                win.add(&a.eq(b)?.mul_scalar(0.5)?)
            };
            let ga = if need_a {
                let ga = match op {
                    BinaryOp::Add | BinaryOp::Sub => g.clone(),
                    BinaryOp::Mul => g.mul(b()?)?,
                    BinaryOp::Div => g.div(b()?)?,
                    // b·a^(b-1), not b·y/a, which is undefined at a = 0.
                    BinaryOp::Pow => g.mul(b()?)?.mul(&a()?.pow(&b()?.add_scalar(-1.0)?)?)?,
                    _ => g.mul(&winner_weight()?)?,
                };
                Some(ga.sum_to(&sa)?)
            } else {
                None
            };
            let gb = if need_b {
                let gb = match op {
                    BinaryOp::Add => g.clone(),
                    BinaryOp::Sub => g.neg()?,
                    BinaryOp::Mul => g.mul(a()?)?,
                    BinaryOp::Div => g.mul(y()?)?.div(b()?)?.neg()?,
                    BinaryOp::Pow => g.mul(y()?)?.mul(&a()?.log()?)?,
                    _ => g.mul(&winner_weight()?.affine(-1.0, 1.0)?)?,
                };
                Some(gb.sum_to(&sb)?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        };
        Ok(if keep_y {
            Tensor::from_op_out(s, layout, name, &[self, rhs], move |g, y| grad(g, Some(y)))
        } else {
            Tensor::from_op(s, layout, name, &[self, rhs], move |g| grad(g, None))
        })
    }

    /// ReLU's gradient: self (the upstream gradient) where `x` > 0, else 0; one pass, no graph.
    pub(crate) fn relu_backward(&self, x: &Tensor) -> Result<Tensor> {
        self.binary(x, BinaryOp::ReluBackward, "relu_backward")
    }

    /// `cond != 0 ? self : other`, all three broadcast together.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        a.check_same("where", b)?;
        if cond.device() != a.device() {
            return Err(Error::DeviceMismatch { op: "where", lhs: cond.device(), rhs: a.device() });
        }
        let shape = cond.shape().broadcast(a.shape(), "where")?.broadcast(b.shape(), "where")?;
        let (lc, la, lb) =
            (cond.layout().broadcast_as(&shape), a.layout().broadcast_as(&shape), b.layout().broadcast_as(&shape));
        let s = cond.storage().where_cond(&lc, &a.storage(), &la, &b.storage(), &lb)?;
        let c = cond.detach();
        let (sa, sb) = (a.shape().clone(), b.shape().clone());
        Ok(Tensor::from_op(s, Layout::contiguous(shape), "where", &[a, b], move |g| {
            let zero = Tensor::zeros([], g.dtype(), g.device())?;
            let ga = Tensor::where_cond(&c, g, &zero)?.sum_to(&sa)?;
            let gb = Tensor::where_cond(&c, &zero, g)?.sum_to(&sb)?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }

    /// `value` where `mask != 0`, else self.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let v = Tensor::full(value, [], self.dtype(), self.device())?;
        Tensor::where_cond(mask, &v, self)
    }
}
