//! Typed launchers for the training kernels: fused softmax-cross-entropy (kernels/loss.cu),
//! dropout with a device-side counter-based mask (kernels/dropout.cu) and the fused SGD and
//! Adam/AdamW updates (kernels/optim.cu). Device buffers are addresses (`u64`).

use super::kernels::{suffix, Strided1};
use super::launch::{arg, grid_for, Launcher, BLOCK};
use crate::backend::AdamStep;
use crate::{DType, Error, Layout, Result, Shape};

/// Per-row softmax cross-entropy of the contiguous logits x [rows, cols] against the I64
/// `labels` [rows], with label smoothing (target = (1-ε)·onehot + ε/cols), as the CPU
/// backend's `cross_entropy`. Writes, for each pointer that is not 0:
/// - `loss`: f32 [rows], each row's loss (the mean over rows is the caller's);
/// - `grad`: [rows, cols] in x's dtype, (softmax - target) · `scale`. The CPU's fused forward
///   uses scale = `1.0f32 / rows as f32`; a backward alone passes the upstream gradient / rows.
///
/// `status` (two u64 on the device, zero until a report) gets [cols, label] for a label
/// outside 0..cols (the first one met); that row's loss is NaN and its gradient zeros.
/// `CudaDev::deferred_status` gives words the next sync reads.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    k: &dyn Launcher,
    dtype: DType,
    rows: usize,
    cols: usize,
    smoothing: f64,
    scale: f32,
    labels: u64,
    x: u64,
    loss: u64,
    grad: u64,
    status: u64,
) -> Result<()> {
    let name = format!("cross_entropy_{}", suffix("cross_entropy", dtype)?);
    if cols == 0 || rows == 0 || rows > i32::MAX as usize {
        return Err(Error::InvalidShape {
            op: "cross_entropy",
            shape: Shape::new(vec![rows, cols]),
            msg: "logits must be [batch, classes] with classes > 0 and 1..=2^31-1 rows (one block per row)".into(),
        });
    }
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::invalid("cross_entropy", format!("label_smoothing {smoothing} is not in [0, 1]")));
    }
    // The CPU rounds ε to f32 first, then computes 1-ε and ε/cols in f32; so does the kernel.
    let (mut cols, mut smoothing, mut scale) = (cols as i64, smoothing as f32, scale);
    let (mut labels, mut x, mut loss, mut grad, mut status) = (labels, x, loss, grad, status);
    let mut args = [
        arg(&mut cols),
        arg(&mut smoothing),
        arg(&mut scale),
        arg(&mut labels),
        arg(&mut x),
        arg(&mut loss),
        arg(&mut grad),
        arg(&mut status),
    ];
    k.launch(&name, (rows as u32, 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// splitmix64's finalizer, as `kiln_dropout_mix` in kernels/dropout.cu.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The uniform number in [0, 1) (24 random bits) that the dropout kernel draws for element
/// `counter` (= offset + index) of stream `seed`: the host twin of the device hash, so a mask
/// can be reproduced (or checked) without a GPU.
pub fn dropout_uniform(seed: u64, counter: u64) -> f32 {
    let key = mix(seed.wrapping_add(GOLDEN));
    let h = mix(key.wrapping_add(counter.wrapping_mul(GOLDEN)));
    (h >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// (keep probability, scale) in f32 as the kernel gets them, for drop probability p.
pub fn dropout_params(p: f64) -> Result<(f32, f32)> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid("dropout", format!("probability {p} is not in [0, 1]")));
    }
    let keep = 1.0 - p;
    // Kept elements are scaled by 1/keep as Tensor::dropout does (f64, then f32); with
    // p = 1 nothing is kept and the scale is never used.
    let scale = if keep > 0.0 { (1.0 / keep) as f32 } else { 0.0 };
    Ok((keep as f32, scale))
}

/// y (contiguous, x's shape) = x (the view `xl`) with each element zeroed with probability
/// p and the rest scaled by 1/(1-p); the mask is a function of (seed, offset + row-major
/// index) only. Backward: call again on the output gradient with the same seed and offset.
/// The caller advances `offset` by the element count after each call.
#[allow(clippy::too_many_arguments)]
pub fn dropout(
    k: &dyn Launcher,
    dtype: DType,
    p: f64,
    seed: u64,
    offset: u64,
    x: u64,
    xl: &Layout,
    y: u64,
) -> Result<()> {
    let name = format!("dropout_{}", suffix("dropout", dtype)?);
    let (mut keep, mut scale) = dropout_params(p)?;
    let mut n = xl.elem_count() as i64;
    let (mut seed, mut offset, mut l, mut x, mut y) = (seed, offset, Strided1::merged(xl)?, x, y);
    let mut args = [
        arg(&mut n),
        arg(&mut keep),
        arg(&mut scale),
        arg(&mut seed),
        arg(&mut offset),
        arg(&mut l),
        arg(&mut x),
        arg(&mut y),
    ];
    k.launch(&name, (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// One SGD step's settings (torch.optim.SGD's, as src/optim/sgd.rs applies them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// No momentum buffer yet: it starts as the (decayed) gradient.
    pub first_step: bool,
}

fn check_f32(op: &'static str, dtype: DType) -> Result<()> {
    if dtype != DType::F32 {
        return Err(Error::UnsupportedDType { op, dtype, msg: "the fused CUDA update is F32 only" });
    }
    Ok(())
}

/// One SGD step in place over `n` contiguous f32 elements of p, reading g; `buf` (the
/// momentum buffer) is used only when momentum != 0 and may be 0 otherwise. Equal bit for
/// bit to the tensor ops of src/optim/sgd.rs on the CPU.
pub fn sgd(k: &dyn Launcher, dtype: DType, n: usize, h: &SgdStep, p: u64, g: u64, buf: u64) -> Result<()> {
    check_f32("sgd", dtype)?;
    // Scalars reach the CPU's f32 kernels through mul_scalar (f64 -> f32) and the checks
    // against zero happen in f64: the same here.
    let (mut lr, mut wd, mut mu, mut damp) =
        (h.lr as f32, h.weight_decay as f32, h.momentum as f32, (1.0 - h.dampening) as f32);
    let (mut use_wd, mut use_mu) = ((h.weight_decay != 0.0) as i32, (h.momentum != 0.0) as i32);
    let (mut nesterov, mut first) = (h.nesterov as i32, h.first_step as i32);
    let (mut n, mut p, mut g, mut buf) = (n as i64, p, g, buf);
    let mut args = [
        arg(&mut n),
        arg(&mut lr),
        arg(&mut wd),
        arg(&mut mu),
        arg(&mut damp),
        arg(&mut use_wd),
        arg(&mut use_mu),
        arg(&mut nesterov),
        arg(&mut first),
        arg(&mut p),
        arg(&mut g),
        arg(&mut buf),
    ];
    k.launch("sgd_f32", (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// `KilnAdam` of kernels/optim.cu: one Adam step's constants in f32.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamArgs {
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    step_size: f32,
    inv_bc2_sqrt: f32,
    decay: f32,
    decoupled: i32,
    pad: i32,
}

impl AdamArgs {
    /// The constants exactly as src/backend/cpu/optim.rs derives them for f32: computed in
    /// f64 from the hyper-parameters, then rounded once.
    pub fn new(h: &AdamStep) -> AdamArgs {
        let c = |x: f64| x as f32;
        AdamArgs {
            beta2: c(h.beta2),
            eps: c(h.eps),
            weight_decay: c(h.weight_decay),
            one_minus_beta1: c(1.0 - h.beta1),
            one_minus_beta2: c(1.0 - h.beta2),
            step_size: c(h.lr / (1.0 - h.beta1.powf(h.step))),
            inv_bc2_sqrt: c(1.0 / (1.0 - h.beta2.powf(h.step)).sqrt()),
            decay: c(1.0 - h.lr * h.weight_decay),
            decoupled: h.decoupled as i32,
            pad: 0,
        }
    }
}

/// kernels/optim.cu's `KilnAdamChunk`: one piece of one parameter for `adam_many_f32`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdamChunk {
    pub p: u64,
    pub g: u64,
    pub m: u64,
    pub v: u64,
    pub len: i64,
}

/// Elements per chunk of `adam_many`: a ResNet-18's 11.2 M parameters make ~1,400 blocks,
/// enough to fill a GPU; a chunk is 32 elements per thread.
pub const ADAM_CHUNK: usize = 8192;

/// The chunks of parameters given as (p, g, m, v, elements), in order.
pub fn adam_chunks(params: &[(u64, u64, u64, u64, usize)]) -> Vec<AdamChunk> {
    let mut out = Vec::new();
    for &(p, g, m, v, n) in params {
        for start in (0..n).step_by(ADAM_CHUNK) {
            let at = (start * 4) as u64;
            let len = (n - start).min(ADAM_CHUNK) as i64;
            out.push(AdamChunk { p: p + at, g: g + at, m: m + at, v: v + at, len });
        }
    }
    out
}

/// One Adam/AdamW step over every chunk of `table` (a device copy of `adam_chunks`' answer,
/// `n_chunks` entries) in one launch: each element as `adam`.
pub fn adam_many(k: &dyn Launcher, n_chunks: usize, h: &AdamStep, table: u64) -> Result<()> {
    if n_chunks == 0 {
        return Ok(());
    }
    let mut a = AdamArgs::new(h);
    let (mut n, mut t) = (n_chunks as i64, table);
    let mut args = [arg(&mut n), arg(&mut a), arg(&mut t)];
    let grid = n_chunks.clamp(1, 65_535) as u32;
    k.launch("adam_many_f32", (grid, 1, 1), (BLOCK, 1, 1), 0, &mut args)
}

/// One Adam/AdamW step in place over `n` contiguous f32 elements of p, m and v, reading g:
/// equal bit for bit to the CPU backend's fused `adam_step`.
#[allow(clippy::too_many_arguments)]
pub fn adam(k: &dyn Launcher, dtype: DType, n: usize, h: &AdamStep, p: u64, g: u64, m: u64, v: u64) -> Result<()> {
    check_f32("adam", dtype)?;
    let mut a = AdamArgs::new(h);
    let (mut n, mut p, mut g, mut m, mut v) = (n as i64, p, g, m, v);
    let mut args = [arg(&mut n), arg(&mut a), arg(&mut p), arg(&mut g), arg(&mut m), arg(&mut v)];
    k.launch("adam_f32", (grid_for(n as usize), 1, 1), (BLOCK, 1, 1), 0, &mut args)
}
