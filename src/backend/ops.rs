//! The backend's primitive op families, shared by every device. Tinygrad's lesson: keep
//! this list short; layers compose these, they rarely need a new primitive.

/// Elementwise functions of one operand. Gradients of the smooth ones are themselves
/// unary ops (`GeluGrad`, `SiluGrad`, `Step`) so backward needs no extra kernels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Tanh,
    Sigmoid,
    Relu,
    /// Exact (erf) GELU, PyTorch's default.
    Gelu,
    /// d/dx of exact GELU: Φ(x) + x·φ(x).
    GeluGrad,
    Silu,
    /// d/dx of SiLU: σ(x)·(1 + x·(1 − σ(x))).
    SiluGrad,
    /// -1, 0 or 1.
    Sign,
    /// 1 where x > 0, else 0.
    Step,
    Recip,
    Sqr,
    /// mul·x + add.
    Affine {
        mul: f64,
        add: f64,
    },
    /// x^p for a scalar p.
    Powf(f64),
}

impl UnaryOp {
    /// The op's name in profiles.
    pub fn name(&self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Abs => "abs",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluGrad => "gelu_grad",
            UnaryOp::Silu => "silu",
            UnaryOp::SiluGrad => "silu_grad",
            UnaryOp::Sign => "sign",
            UnaryOp::Step => "step",
            UnaryOp::Recip => "recip",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Affine { .. } => "affine",
            UnaryOp::Powf(_) => "powf",
        }
    }
}

/// Elementwise functions of two operands (broadcast by strides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Maximum,
    Minimum,
    /// Comparisons give 1 or 0 in the operands' dtype.
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// ReLU's gradient in one pass: `a` where `b` > 0, else 0 (a = upstream gradient,
    /// b = the ReLU's input).
    ReluBackward,
}

impl BinaryOp {
    /// The op's name in profiles.
    pub fn name(&self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
            BinaryOp::ReluBackward => "relu_backward",
        }
    }
}

/// Reductions over a set of dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    /// Index (I64) of the first maximum.
    ArgMax,
    ArgMin,
}

impl ReduceOp {
    /// The op's name in profiles.
    pub fn name(&self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

/// Geometry of a 2-D sliding window (convolution, unfold, pooling), per spatial axis (h, w).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window2d {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl Window2d {
    /// Errors unless kernel, stride and dilation are all positive (the one check every
    /// window op, on every backend, makes before trusting these numbers).
    pub fn check_positive(&self, op: &'static str) -> crate::Result<()> {
        let zero = |p: (usize, usize)| p.0 == 0 || p.1 == 0;
        if zero(self.kernel) || zero(self.stride) || zero(self.dilation) {
            return Err(crate::Error::invalid(
                op,
                format!(
                    "kernel {:?}, stride {:?} and dilation {:?} must be positive",
                    self.kernel, self.stride, self.dilation
                ),
            ));
        }
        Ok(())
    }
    /// Output extent along one axis, or None when the window does not fit.
    pub fn out_len(input: usize, kernel: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
        let span = dil * (kernel - 1) + 1;
        let padded = input + 2 * pad;
        (padded >= span && stride > 0).then(|| (padded - span) / stride + 1)
    }
    /// (out_h, out_w) for an input of (h, w).
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((
            Self::out_len(h, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0)?,
            Self::out_len(w, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

/// One Adam / AdamW step's hyper-parameters (`step` is t, counted from 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
    pub step: f64,
}

/// The dims of a contiguous [n, c, s] tensor seen per channel (s: one image's pixels of one
/// channel), as batch normalisation reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NcsDims {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

/// Batch norm's per-channel arithmetic between its passes, on F32 [c] vectors and the
/// passes' [c, pieces] partial sums (folded here), in one pass (one launch on a GPU;
/// kernels/norm.cu `bn_coeffs_f32` has the formulas). `S` is the operands' storage type.
#[derive(Debug, Clone, Copy)]
pub enum BnCoeffs<S> {
    /// (mean, var, rstd, a, shift) from weight, bias and the partial sums of x and of
    /// (x - mean)²: y = a·x + shift.
    Forward { weight: S, bias: S, sums: S, sq: S, pieces: usize, inv_count: f32, eps: f32 },
    /// (A, B, D, Σdy, Σdy·x̂) from weight, rstd, mean and the partial sums of dy and dy·x̂:
    /// dx = A·dy + B·x + D; Σdy and Σdy·x̂ are the bias and weight gradients.
    Backward { weight: S, rstd: S, mean: S, sdy: S, sdyx: S, pieces: usize, inv_count: f32 },
}

impl<S: Copy> BnCoeffs<S> {
    /// The inputs in the kernel's order (in0..), each with the elements it must hold.
    pub fn inputs(&self, c: usize) -> Vec<(S, usize)> {
        match *self {
            BnCoeffs::Forward { weight, bias, sums, sq, pieces, .. } => {
                vec![(weight, c), (bias, c), (sums, c * pieces), (sq, c * pieces)]
            }
            BnCoeffs::Backward { weight, rstd, mean, sdy, sdyx, pieces, .. } => {
                vec![(weight, c), (rstd, c), (mean, c), (sdy, c * pieces), (sdyx, c * pieces)]
            }
        }
    }
    /// Partial sums per channel in the inputs that hold them.
    pub fn pieces(&self) -> usize {
        match *self {
            BnCoeffs::Forward { pieces, .. } | BnCoeffs::Backward { pieces, .. } => pieces,
        }
    }
    /// The same request over other operands.
    pub fn try_map<T>(self, mut f: impl FnMut(S) -> crate::Result<T>) -> crate::Result<BnCoeffs<T>> {
        Ok(match self {
            BnCoeffs::Forward { weight, bias, sums, sq, pieces, inv_count, eps } => BnCoeffs::Forward {
                weight: f(weight)?,
                bias: f(bias)?,
                sums: f(sums)?,
                sq: f(sq)?,
                pieces,
                inv_count,
                eps,
            },
            BnCoeffs::Backward { weight, rstd, mean, sdy, sdyx, pieces, inv_count } => BnCoeffs::Backward {
                weight: f(weight)?,
                rstd: f(rstd)?,
                mean: f(mean)?,
                sdy: f(sdy)?,
                sdyx: f(sdyx)?,
                pieces,
                inv_count,
            },
        })
    }
}

/// `channel_sums`' answer: F32 [c, pieces] partial sums (channel ch's sum is the sum of row
/// ch; a GPU sums each channel in pieces to fill its blocks, the CPU in one), and for
/// `Gradients` a second such matrix. `bn_coeffs` and the next pass fold them.
#[derive(Debug)]
pub struct ChannelPartials<S> {
    pub first: S,
    pub second: Option<S>,
    pub pieces: usize,
}

/// What `channel_sums` adds up per channel of x; `S` is the operands' storage type (all
/// contiguous F32: mean and rstd [c], dy like x).
#[derive(Debug, Clone, Copy)]
pub enum ChannelSums<S> {
    /// Σ x.
    Values,
    /// Σ (x - mean)² with mean = (the fold of `sums`, the [c, pieces] partial sums that
    /// `Values` gave) · inv_count, in f32 (so no launch makes the mean in between;
    /// `bn_coeffs` makes the same fold and product).
    SquaredDeviations { sums: S, pieces: usize, inv_count: f32 },
    /// Σ dy and Σ dy · (x - mean) · rstd: batch norm's bias and weight gradients.
    Gradients { dy: S, mean: S, rstd: S },
}

impl<S: Copy> ChannelSums<S> {
    /// The same request over other operands.
    pub fn try_map<T>(self, mut f: impl FnMut(S) -> crate::Result<T>) -> crate::Result<ChannelSums<T>> {
        Ok(match self {
            ChannelSums::Values => ChannelSums::Values,
            ChannelSums::SquaredDeviations { sums, pieces, inv_count } => {
                ChannelSums::SquaredDeviations { sums: f(sums)?, pieces, inv_count }
            }
            ChannelSums::Gradients { dy, mean, rstd } => {
                ChannelSums::Gradients { dy: f(dy)?, mean: f(mean)?, rstd: f(rstd)? }
            }
        })
    }
    /// The operands with the element count each must hold, for a length check.
    pub fn operands(&self, d: NcsDims) -> Vec<(S, usize)> {
        match *self {
            ChannelSums::Values => vec![],
            ChannelSums::SquaredDeviations { sums, pieces, .. } => vec![(sums, d.c * pieces)],
            ChannelSums::Gradients { dy, mean, rstd } => vec![(dy, d.n * d.c * d.s), (mean, d.c), (rstd, d.c)],
        }
    }
}

/// The row-major walk over `dims` with the fewest dims that gives every operand the same
/// element offsets, where both backends' elementwise walks start: size-1 dims dropped, and a
/// dim merged into the one before it wherever every operand steps over the pair as over one
/// dim (outer stride = inner stride · inner size; broadcast stride-0 pairs included). A
/// contiguous view becomes one dim: one long row on the CPU, offsets without division on a
/// GPU. Returns (dims, each operand's strides).
pub(crate) fn merge_dims<const K: usize>(dims: &[usize], strides: [&[usize]; K]) -> (Vec<usize>, [Vec<usize>; K]) {
    let mut md: Vec<usize> = Vec::with_capacity(dims.len());
    let mut ms: [Vec<usize>; K] = std::array::from_fn(|_| Vec::with_capacity(dims.len()));
    for (d, &size) in dims.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let joins = !md.is_empty() && (0..K).all(|k| ms[k].last().copied() == Some(strides[k][d].wrapping_mul(size)));
        if joins {
            *md.last_mut().expect("not empty") *= size;
            for k in 0..K {
                *ms[k].last_mut().expect("same length as md") = strides[k][d];
            }
        } else {
            md.push(size);
            for k in 0..K {
                ms[k].push(strides[k][d]);
            }
        }
    }
    (md, ms)
}

#[cfg(test)]
mod tests {
    use super::merge_dims;

    /// Element offsets of every linear index of a row-major walk over `dims` (the naive
    /// unravel the device did before dims were merged).
    fn offsets(dims: &[usize], strides: &[usize], offset: usize) -> Vec<usize> {
        let n: usize = dims.iter().product();
        (0..n)
            .map(|mut i| {
                let mut o = offset;
                for d in (0..dims.len()).rev() {
                    o += (i % dims[d]) * strides[d];
                    i /= dims[d];
                }
                o
            })
            .collect()
    }

    #[test]
    fn merged_dims_give_every_operand_the_same_offsets() {
        // (dims, strides of operand a, strides of operand b, dims expected after merging)
        type Case = (Vec<usize>, Vec<usize>, Vec<usize>, usize);
        let cases: Vec<Case> = vec![
            (vec![2, 3, 4], vec![12, 4, 1], vec![12, 4, 1], 1), // both contiguous
            (vec![2, 3, 4], vec![12, 4, 1], vec![0, 1, 0], 3),  // bias over the middle dim
            (vec![4, 3, 5, 5], vec![75, 25, 5, 1], vec![0, 1, 0, 0], 3), // batch norm [1,C,1,1]
            (vec![2, 1, 3], vec![3, 7, 1], vec![0, 0, 1], 2),   // size-1 dim with any stride
            (vec![3, 4], vec![1, 3], vec![4, 1], 2),            // a transposed operand
            (vec![2, 3, 4], vec![24, 4, 1], vec![12, 4, 1], 2), // a narrowed outer dim
            (vec![5, 6], vec![0, 0], vec![6, 1], 1),            // full broadcast, both stride 0
            (vec![1, 1], vec![5, 9], vec![1, 1], 0),            // a single element
        ];
        for (dims, sa, sb, want_rank) in cases {
            let (md, [ma, mb]) = merge_dims(&dims, [&sa, &sb]);
            assert_eq!(md.len(), want_rank, "{dims:?} {sa:?} {sb:?} merged to {md:?}");
            assert_eq!(offsets(&md, &ma, 3), offsets(&dims, &sa, 3), "a: {dims:?} {sa:?}");
            assert_eq!(offsets(&md, &mb, 0), offsets(&dims, &sb, 0), "b: {dims:?} {sb:?}");
        }
    }
}
