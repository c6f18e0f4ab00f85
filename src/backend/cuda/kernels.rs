//! Typed launchers for the kernels of kernels/*.cu: each builds the argument array exactly
//! as the kernel's signature declares it, so the same call serves cuLaunchKernel and the
//! emulator. Device buffers are passed as device addresses (`u64`).

use super::launch::{arg, grid_for, Launcher, BLOCK};
use crate::backend::{merge_dims, BinaryOp, ReduceOp, UnaryOp};
use crate::{DType, Error, Layout, Result};

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The most dims a strided kernel argument carries (kernels/strided.cuh).
pub const MAX_RANK: usize = 8;

/// `KilnStrided1` of kernels/strided.cuh.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Strided1 {
    rank: i32,
    /// 1 when every linear index fits 32 bits (the device then divides in 32 bits).
    narrow: i32,
    dims: [i64; MAX_RANK],
    s0: [i64; MAX_RANK],
    off0: i64,
}

/// `KilnStrided2` of kernels/strided.cuh.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Strided2 {
    rank: i32,
    /// 1 when every linear index fits 32 bits (the device then divides in 32 bits).
    narrow: i32,
    dims: [i64; MAX_RANK],
    s0: [i64; MAX_RANK],
    s1: [i64; MAX_RANK],
    off0: i64,
    off1: i64,
}

/// `KilnStrided3` of kernels/strided.cuh.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Strided3 {
    rank: i32,
    /// 1 when every linear index fits 32 bits (the device then divides in 32 bits).
    narrow: i32,
    dims: [i64; MAX_RANK],
    s0: [i64; MAX_RANK],
    s1: [i64; MAX_RANK],
    s2: [i64; MAX_RANK],
    off0: i64,
    off1: i64,
    off2: i64,
}

fn fill(dst: &mut [i64; MAX_RANK], src: &[usize]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s as i64;
    }
}

fn check_rank(op: &'static str, l: &Layout) -> Result<()> {
    if l.dims().len() > MAX_RANK {
        return Err(Error::InvalidShape {
            op,
            shape: l.shape().clone(),
            msg: format!("CUDA kernels take at most {MAX_RANK} dims"),
        });
    }
    Ok(())
}

/// Whether every linear index of `dims` fits 32 bits.
fn narrow(dims: &[usize]) -> i32 {
    (dims.iter().product::<usize>() <= u32::MAX as usize) as i32
}

impl Strided1 {
    /// The view's own dims and strides, for kernels that read them (index.cu walks a given dim).
    pub fn new(l: &Layout) -> Result<Strided1> {
        check_rank("cuda", l)?;
        Ok(Self::of(l.dims(), l.strides(), l.offset(), 0))
    }
    /// The view with its dims merged (see [`merge_dims`](crate::backend::merge_dims)): for kernels that only map linear
    /// indices to offsets (elementwise, copies, dropout).
    pub fn merged(l: &Layout) -> Result<Strided1> {
        check_rank("cuda", l)?;
        let (dims, [s0]) = merge_dims(l.dims(), [l.strides()]);
        Ok(Self::of(&dims, &s0, l.offset(), narrow(&dims)))
    }
    fn of(dims: &[usize], s0: &[usize], off0: usize, narrow: i32) -> Strided1 {
        let mut s =
            Strided1 { rank: dims.len() as i32, narrow, dims: [1; MAX_RANK], s0: [0; MAX_RANK], off0: off0 as i64 };
        fill(&mut s.dims, dims);
        fill(&mut s.s0, s0);
        s
    }
}

impl Strided2 {
    /// Two views already broadcast to the same shape, dims merged (see [`merge_dims`](crate::backend::merge_dims)).
    pub fn new(a: &Layout, b: &Layout) -> Result<Strided2> {
        check_rank("cuda", a)?;
        let (dims, [s0, s1]) = merge_dims(a.dims(), [a.strides(), b.strides()]);
        let mut s = Strided2 {
            rank: dims.len() as i32,
            narrow: narrow(&dims),
            dims: [1; MAX_RANK],
            s0: [0; MAX_RANK],
            s1: [0; MAX_RANK],
            off0: a.offset() as i64,
            off1: b.offset() as i64,
        };
        fill(&mut s.dims, &dims);
        fill(&mut s.s0, &s0);
        fill(&mut s.s1, &s1);
        Ok(s)
    }
}

impl Strided3 {
    /// Three views already broadcast to the same shape, dims merged (see [`merge_dims`](crate::backend::merge_dims)).
    pub fn new(a: &Layout, b: &Layout, c: &Layout) -> Result<Strided3> {
        check_rank("cuda", a)?;
        let (dims, [s0, s1, s2]) = merge_dims(a.dims(), [a.strides(), b.strides(), c.strides()]);
        let mut s = Strided3 {
            rank: dims.len() as i32,
            narrow: narrow(&dims),
            dims: [1; MAX_RANK],
            s0: [0; MAX_RANK],
            s1: [0; MAX_RANK],
            s2: [0; MAX_RANK],
            off0: a.offset() as i64,
            off1: b.offset() as i64,
            off2: c.offset() as i64,
        };
        fill(&mut s.dims, &dims);
        fill(&mut s.s0, &s0);
        fill(&mut s.s1, &s1);
        fill(&mut s.s2, &s2);
        Ok(s)
    }
}

/// out[i] = cond[lc(i)] != 0 ? a[la(i)] : b[lb(i)] (the three layouts broadcast to the
/// output shape). Any condition dtype; the values of `dtype` are moved as raw bits, so every
/// dtype works.
pub fn where_cond(
    k: &dyn Launcher,
    cond_dtype: DType,
    dtype: DType,
    (c, lc): (u64, &Layout),
    (a, la): (u64, &Layout),
    (b, lb): (u64, &Layout),
    out: u64,
) -> Result<()> {
    let cond = match cond_dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I64 => "i64",
    };
    let name = format!("where_{cond}_b{}", 8 * dtype.size_in_bytes());
    let mut n = lc.elem_count() as i64;
    let (mut l, mut c, mut a, mut b, mut out) = (Strided3::new(lc, la, lb)?, c, a, b, out);
    let mut args = [arg(&mut n), arg(&mut l), arg(&mut c), arg(&mut a), arg(&mut b), arg(&mut out)];
    k.launch(&name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// The kernel-name suffix of a GPU dtype.
pub fn suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        _ => Err(Error::UnsupportedDType { op, dtype, msg: "CUDA kernels take F32, F16 and BF16" }),
    }
}

/// Op code and parameters of `kiln_unary` in kernels/elementwise.cu.
pub fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Abs => (4, 0.0, 0.0),
        UnaryOp::Tanh => (5, 0.0, 0.0),
        UnaryOp::Sigmoid => (6, 0.0, 0.0),
        UnaryOp::Relu => (7, 0.0, 0.0),
        UnaryOp::Gelu => (8, 0.0, 0.0),
        UnaryOp::GeluGrad => (9, 0.0, 0.0),
        UnaryOp::Silu => (10, 0.0, 0.0),
        UnaryOp::SiluGrad => (11, 0.0, 0.0),
        UnaryOp::Sign => (12, 0.0, 0.0),
        UnaryOp::Step => (13, 0.0, 0.0),
        UnaryOp::Recip => (14, 0.0, 0.0),
        UnaryOp::Sqr => (15, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (16, mul as f32, add as f32),
        UnaryOp::Powf(p) => (17, p as f32, 0.0),
    }
}

/// Op code of `kiln_binary` in kernels/elementwise.cu.
pub fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Pow => 4,
        BinaryOp::Maximum => 5,
        BinaryOp::Minimum => 6,
        BinaryOp::Eq => 7,
        BinaryOp::Ne => 8,
        BinaryOp::Lt => 9,
        BinaryOp::Le => 10,
        BinaryOp::Gt => 11,
        BinaryOp::Ge => 12,
        BinaryOp::ReluBackward => 13,
    }
}

/// y[i] = op(x[l(i)]) for the elem_count of `xl`; y contiguous.
pub fn unary(k: &dyn Launcher, dtype: DType, op: UnaryOp, x: u64, xl: &Layout, y: u64) -> Result<()> {
    let name = format!("unary_{}", suffix("unary", dtype)?);
    let (mut code, mut p0, mut p1) = unary_code(op);
    let mut n = xl.elem_count() as i64;
    let (mut l, mut x, mut y) = (Strided1::merged(xl)?, x, y);
    let mut args = [arg(&mut n), arg(&mut code), arg(&mut p0), arg(&mut p1), arg(&mut l), arg(&mut x), arg(&mut y)];
    k.launch(&name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// Whether `binary_i64` has `op`: the CPU backend's integer ops (all but div, pow and relu
/// backward, which it refuses for I64 too).
pub fn i64_binary(op: BinaryOp) -> bool {
    !matches!(op, BinaryOp::Div | BinaryOp::Pow | BinaryOp::ReluBackward)
}

/// out[i] = op(a[la(i)], b[lb(i)]); both layouts broadcast to the output shape. F32, F16,
/// BF16, and I64 for the integer ops ([`i64_binary`]).
#[allow(clippy::too_many_arguments)]
pub fn binary(
    k: &dyn Launcher,
    dtype: DType,
    op: BinaryOp,
    a: u64,
    la: &Layout,
    b: u64,
    lb: &Layout,
    out: u64,
) -> Result<()> {
    let name = match dtype {
        DType::I64 if i64_binary(op) => "binary_i64".to_string(),
        DType::I64 => {
            return Err(Error::UnsupportedDType { op: op.name(), dtype, msg: "cast to a float dtype first" });
        }
        _ => format!("binary_{}", suffix("binary", dtype)?),
    };
    let mut code = binary_code(op);
    let mut n = la.elem_count() as i64;
    let (mut l, mut a, mut b, mut out) = (Strided2::new(la, lb)?, a, b, out);
    let mut args = [arg(&mut n), arg(&mut code), arg(&mut l), arg(&mut a), arg(&mut b), arg(&mut out)];
    k.launch(&name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// Contiguous copy of the view `xl`, converting dtype `from` to `to`.
pub fn copy(k: &dyn Launcher, from: DType, to: DType, x: u64, xl: &Layout, y: u64) -> Result<()> {
    // I64 -> F32 too: counts and class indices become floats on the device (accuracy).
    let from_suffix = if (from, to) == (DType::I64, DType::F32) { "i64" } else { suffix("copy", from)? };
    let name = format!("copy_{}_{}", from_suffix, suffix("copy", to)?);
    let mut n = xl.elem_count() as i64;
    let (mut l, mut x, mut y) = (Strided1::merged(xl)?, x, y);
    let mut args = [arg(&mut n), arg(&mut l), arg(&mut x), arg(&mut y)];
    k.launch(&name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// out[r] = sum / max / min of row r of a contiguous [rows, cols] matrix (`out` of `dtype`),
/// or for `ArgMax` / `ArgMin` the I64 index of the row's max / min by the CPU backend's tie
/// and NaN rules (`out` I64; cols >= 1).
pub fn reduce_rows(
    k: &dyn Launcher,
    dtype: DType,
    op: ReduceOp,
    rows: usize,
    cols: usize,
    x: u64,
    out: u64,
) -> Result<()> {
    let (family, mut code) = match op {
        ReduceOp::Sum => ("reduce_rows", 0),
        ReduceOp::Max => ("reduce_rows", 1),
        ReduceOp::Min => ("reduce_rows", 2),
        ReduceOp::ArgMax => ("arg_rows", 0),
        ReduceOp::ArgMin => ("arg_rows", 1),
    };
    if family == "arg_rows" && cols == 0 {
        return Err(Error::invalid("reduce_rows", format!("{op:?} over an empty dimension")));
    }
    let name = format!("{family}_{}", suffix("reduce", dtype)?);
    check_grid("reduce_rows", rows)?;
    let (mut cols, mut x, mut out) = (cols as i64, x, out);
    let mut args = [arg(&mut cols), arg(&mut code), arg(&mut x), arg(&mut out)];
    k.launch(&name, (rows as u32, 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// softmax (or log_softmax) of each row of a contiguous [rows, cols] matrix.
pub fn softmax_rows(k: &dyn Launcher, dtype: DType, log: bool, rows: usize, cols: usize, x: u64, y: u64) -> Result<()> {
    let name = format!("softmax_rows_{}", suffix("softmax", dtype)?);
    check_grid("softmax_rows", rows)?;
    let (mut cols, mut log, mut x, mut y) = (cols as i64, log as i32, x, y);
    let mut args = [arg(&mut cols), arg(&mut log), arg(&mut x), arg(&mut y)];
    k.launch(&name, (rows as u32, 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

fn check_grid(op: &'static str, rows: usize) -> Result<()> {
    if rows == 0 || rows > i32::MAX as usize {
        return Err(Error::invalid(op, format!("{rows} rows: need 1..=2^31-1 (one block per row)")));
    }
    Ok(())
}
