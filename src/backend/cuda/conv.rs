//! conv2d on a CUDA device, forward and backward. On a GPU with cuDNN the three
//! convolution passes are cuDNN's (cudnn.rs), as in PyTorch; everywhere else (no cuDNN,
//! `KILN_CUDNN=0`, the emulated device, a geometry cuDNN refuses) they are composed from
//! the kernels and cuBLAS calls every other op already uses: im2col over the whole batch and
//! one strided-batched GEMM forward; the weight gradient from ONE GEMM over all images
//! (K = n·oh·ow) and the input gradient from a batched GEMM and col2im. Both paths share
//! the rest: bias, ReLU and 2x2 max pooling as the fused op's epilogue asks, and in the
//! backward the ReLU-backward and pool-backward kernels and the bias gradient's reduction.
//!
//! The im2col path's price is memory: the batch's columns (n · c·kh·kw · oh·ow elements)
//! exist at once. For the MNIST CNN at batch 128 that is 18 MB; for ResNet-18 at batch 128
//! on 32x32 images, hundreds of MB per layer, which cuDNN's implicit-GEMM algorithms avoid.

use super::cudnn::Pass;
use super::kernels_conv;
use super::storage::{binary, host, matmul, on_cpu, reduce, to_contiguous_as, unary, upload, CudaStorage};
use crate::backend::cpu;
use crate::backend::{BinaryOp, ConvGeom, Epilogue, ReduceOp, UnaryOp, Window2d};
use crate::{DType, Error, Layout, Result, Shape};

/// The sizes every step needs.
struct Dims {
    n: usize,
    c: usize,
    groups: usize,
    /// Output channels per group.
    og: usize,
    /// Rows of one group's columns: c/groups · kh · kw.
    rows: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn of(geom: &ConvGeom) -> Result<Dims> {
        let (oh, ow) = geom.win.out_hw(geom.h, geom.w).ok_or_else(|| {
            Error::invalid(
                "conv2d",
                format!("a {:?} window does not fit a {}x{} input", geom.win.kernel, geom.h, geom.w),
            )
        })?;
        let groups = geom.groups;
        Ok(Dims {
            n: geom.n,
            c: geom.c,
            groups,
            og: geom.o / groups,
            rows: geom.c / groups * geom.win.kernel.0 * geom.win.kernel.1,
            oh,
            ow,
        })
    }
    fn l(&self) -> usize {
        self.oh * self.ow
    }
    fn o(&self) -> usize {
        self.og * self.groups
    }
    /// [n, groups, a, b] contiguous.
    fn per_group(&self, a: usize, b: usize) -> Layout {
        contiguous(&[self.n, self.groups, a, b])
    }
}

fn contiguous(dims: &[usize]) -> Layout {
    Layout::contiguous(Shape::new(dims.to_vec()))
}

/// Whether the kernel path takes this call: a float type with kernels, and nothing empty
/// (empty and f64 convolutions take the host path).
pub fn on_device(x: &CudaStorage, geom: &ConvGeom, epi: Epilogue) -> bool {
    let Ok(d) = Dims::of(geom) else { return false };
    let pooled = if epi == Epilogue::ReluMaxPool2 { (d.oh / 2) * (d.ow / 2) } else { 1 };
    matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) && d.n * d.c * d.l() * d.o() * d.rows * pooled > 0
}

/// The 2x2 / stride-2 window of the fused pool.
const POOL2: Window2d = Window2d { kernel: (2, 2), stride: (2, 2), padding: (0, 0), dilation: (1, 1) };

/// cols [n, c·kh·kw, oh·ow] of the view `xl` of x.
fn im2col(x: &CudaStorage, xl: &Layout, geom: &ConvGeom, d: &Dims) -> Result<CudaStorage> {
    let cols = CudaStorage::uninit(x.dev(), x.dtype(), d.n * d.groups * d.rows * d.l())?;
    kernels_conv::im2col(x.dev().launcher(), x.dtype(), x.ptr(), xl, &geom.win, cols.ptr())?;
    Ok(cols)
}

/// `f(storage, offset)` with the view `l` of `s` contiguous from `offset` (a copy only when
/// the view is not).
fn with_contiguous<R>(s: &CudaStorage, l: &Layout, f: impl FnOnce(&CudaStorage, usize) -> Result<R>) -> Result<R> {
    match l.contiguous_range() {
        Some(r) => f(s, r.start),
        None => f(&to_contiguous_as(s, l, s.dtype())?, 0),
    }
}

/// One cuDNN pass writing a new tensor of `len` elements: Some(it), or None when there is
/// no cuDNN on the device or it has no algorithm for the geometry (the caller then takes
/// the im2col path). `addrs(out)` gives [x, w, y] with the output's address in its place.
fn cudnn_pass(
    like: &CudaStorage,
    pass: Pass,
    geom: &ConvGeom,
    len: usize,
    addrs: impl FnOnce(u64) -> [u64; 3],
) -> Result<Option<CudaStorage>> {
    let Some(dnn) = like.dev().cudnn() else { return Ok(None) };
    let out = CudaStorage::uninit(like.dev(), like.dtype(), len)?;
    Ok(dnn.run(like.dev(), pass, like.dtype(), geom, addrs(out.ptr()))?.then_some(out))
}

/// conv2d forward (see `Storage::conv2d`): the output [n, o, oh, ow], or with
/// `Epilogue::ReluMaxPool2` the pooled output and its argmax indices (I64 plane offsets).
pub fn conv2d(
    x: &CudaStorage,
    xl: &Layout,
    (w, wl): (&CudaStorage, &Layout),
    b: Option<(&CudaStorage, &Layout)>,
    geom: &ConvGeom,
    epi: Epilogue,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let d = Dims::of(geom)?;
    let (o, l) = (d.o(), d.l());
    // cuDNN takes contiguous tensors: the copies of strided views are made only for it.
    let cudnn = x.dev().cudnn().is_some();
    let on_cudnn = if cudnn {
        with_contiguous(x, xl, |x, xoff| {
            with_contiguous(w, wl, |w, woff| {
                cudnn_pass(x, Pass::Forward, geom, d.n * o * l, |y| [x.at(xoff), w.at(woff), y])
            })
        })?
    } else {
        None
    };
    let mut out = match on_cudnn {
        Some(out) => out,
        None => {
            let cols = im2col(x, xl, geom, &d)?;
            // out[i, g] (og x l) = W[g] (og x rows) @ cols[i, g] (rows x l): W broadcast over images.
            with_contiguous(w, wl, |w, off| {
                let wv =
                    Layout::new(Shape::new(vec![d.n, d.groups, d.og, d.rows]), vec![0, d.og * d.rows, d.rows, 1], off);
                matmul(w, &wv, &cols, &d.per_group(d.rows, l))
            })?
        }
    };
    let flat = contiguous(&[d.n, o, l]);
    if let Some((b, bl)) = b {
        let bv = Layout::new(Shape::new(vec![d.n, o, l]), vec![0, bl.strides()[0], 0], bl.offset());
        out = binary(&out, &flat, b, &bv, BinaryOp::Add)?;
    }
    if epi == Epilogue::None {
        return Ok((out, None));
    }
    out = unary(&out, &flat, UnaryOp::Relu)?;
    if epi == Epilogue::Relu {
        return Ok((out, None));
    }
    let pooled = d.n * o * (d.oh / 2) * (d.ow / 2);
    let vals = CudaStorage::uninit(x.dev(), x.dtype(), pooled)?;
    let idx = CudaStorage::uninit(x.dev(), DType::I64, pooled)?;
    let planes = contiguous(&[d.n, o, d.oh, d.ow]);
    kernels_conv::max_pool2d(x.dev().launcher(), x.dtype(), out.ptr(), &planes, &POOL2, vals.ptr(), idx.ptr())?;
    Ok((vals, Some(idx)))
}

/// conv2d backward (see `Storage::conv2d_backward`): the gradients of (x, weight, bias) that
/// `need` asks for, from the gradient `g` (view `gl`) of the op's output. `fused` holds the
/// forward's epilogue outputs: [] / [ReLU output] / [pooled output, argmax indices].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    g: &CudaStorage,
    gl: &Layout,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
    fused: &[&CudaStorage],
    geom: &ConvGeom,
    need: [bool; 3],
) -> Result<[Option<CudaStorage>; 3]> {
    let [need_dx, need_dw, need_db] = need;
    let d = Dims::of(geom)?;
    let (o, l) = (d.o(), d.l());
    let own = contiguous(gl.dims());
    // The gradient of the convolution's own output [n, o, oh, ow]: the epilogue undone.
    let gc = match fused {
        [] => to_contiguous_as(g, gl, g.dtype())?,
        [out] => binary(g, gl, out, &own, BinaryOp::ReluBackward)?,
        [out, idx] => {
            let gp = binary(g, gl, out, &own, BinaryOp::ReluBackward)?;
            let gc = CudaStorage::uninit(g.dev(), g.dtype(), d.n * o * l)?;
            let x_dims = [d.n, o, d.oh, d.ow];
            kernels_conv::max_pool2d_backward(
                g.dev().launcher(),
                g.dtype(),
                gp.ptr(),
                idx.ptr(),
                &x_dims,
                &POOL2,
                gc.ptr(),
            )?;
            gc
        }
        _ => return Err(Error::invalid("conv2d", "at most two fused outputs")),
    };
    let db = if need_db { Some(reduce(&gc, &contiguous(&[d.n, o, l]), &[0, 2], ReduceOp::Sum)?) } else { None };
    let cudnn = g.dev().cudnn().is_some();
    let dw_cudnn = if need_dw && cudnn {
        with_contiguous(x, xl, |x, xoff| {
            cudnn_pass(&gc, Pass::BackwardFilter, geom, d.o() * d.rows, |dw| [x.at(xoff), dw, gc.ptr()])
        })?
    } else {
        None
    };
    let dx_cudnn = if need_dx && cudnn {
        with_contiguous(w, wl, |w, woff| {
            cudnn_pass(&gc, Pass::BackwardData, geom, d.n * d.c * geom.h * geom.w, |dx| [dx, w.at(woff), gc.ptr()])
        })?
    } else {
        None
    };
    let dw = if let Some(dw) = dw_cudnn {
        Some(dw)
    } else if need_dw {
        // dW[g] (og x rows) = Σ_i gc[i, g] (og x l) @ cols[i, g]ᵀ: one GEMM with K = n·l, the
        // image dim next to the pixels: gc moved to [g, og, n, l] by a copy, the columns
        // written as [c·kh·kw, n, l] = [g, rows, n, l] by im2col itself.
        let gt = to_contiguous_as(&gc, &d.per_group(d.og, l).permute(&[1, 2, 0, 3]), gc.dtype())?;
        let ct = CudaStorage::uninit(x.dev(), x.dtype(), d.n * d.groups * d.rows * l)?;
        kernels_conv::im2col_rows_first(x.dev().launcher(), x.dtype(), x.ptr(), xl, &geom.win, ct.ptr())?;
        let k = d.n * l;
        let ctv = Layout::new(Shape::new(vec![d.groups, k, d.rows]), vec![d.rows * k, 1, k], 0);
        Some(matmul(&gt, &contiguous(&[d.groups, d.og, k]), &ct, &ctv)?)
    } else {
        None
    };
    let dx = if let Some(dx) = dx_cudnn {
        Some(dx)
    } else if need_dx {
        // dcols[i, g] (rows x l) = W[g]ᵀ (rows x og) @ gc[i, g] (og x l), then col2im.
        let dcols = with_contiguous(w, wl, |w, off| {
            let wt = Layout::new(Shape::new(vec![d.n, d.groups, d.rows, d.og]), vec![0, d.og * d.rows, 1, d.rows], off);
            matmul(w, &wt, &gc, &d.per_group(d.og, l))
        })?;
        let dx = CudaStorage::uninit(g.dev(), g.dtype(), d.n * d.c * geom.h * geom.w)?;
        let x_dims = [d.n, d.c, geom.h, geom.w];
        kernels_conv::col2im(g.dev().launcher(), g.dtype(), dcols.ptr(), &x_dims, &geom.win, dx.ptr())?;
        Some(dx)
    } else {
        None
    };
    Ok([dx, dw, db])
}

/// Whether `dtype` has sliding-window kernels and the view holds something to slide over.
fn window_kernels(s: &CudaStorage, l: &Layout, w: &Window2d) -> bool {
    let fits = l.dims().len() == 4 && w.out_hw(l.dims()[2], l.dims()[3]).is_some_and(|(h, w)| h * w > 0);
    matches!(s.dtype(), DType::F32 | DType::F16 | DType::BF16) && fits && l.elem_count() > 0
}

/// `Storage::im2col` on the device: cols [n, c·kh·kw, oh·ow] of the view `l`.
pub fn im2col_op(s: &CudaStorage, l: &Layout, w: &Window2d) -> Result<CudaStorage> {
    if !window_kernels(s, l, w) {
        return host("host:im2col", || upload(s, cpu::im2col(&on_cpu(s)?, l, w)?));
    }
    let (oh, ow) = w.out_hw(l.dims()[2], l.dims()[3]).expect("checked by window_kernels");
    let cols = CudaStorage::uninit(s.dev(), s.dtype(), l.dims()[0] * l.dims()[1] * w.kernel.0 * w.kernel.1 * oh * ow)?;
    kernels_conv::im2col(s.dev().launcher(), s.dtype(), s.ptr(), l, w, cols.ptr())?;
    Ok(cols)
}

/// `Storage::col2im` on the device: x [n, c, h, w] (`x_dims`) from the columns `l` of `s`.
pub fn col2im_op(s: &CudaStorage, l: &Layout, x_dims: &[usize], w: &Window2d) -> Result<CudaStorage> {
    let x_l = contiguous(x_dims);
    if !window_kernels(s, &x_l, w) {
        return host("host:col2im", || upload(s, cpu::col2im(&on_cpu(s)?, l, x_dims, w)?));
    }
    let cols = to_contiguous_as(s, l, s.dtype())?;
    let x = CudaStorage::uninit(s.dev(), s.dtype(), x_l.elem_count())?;
    kernels_conv::col2im(s.dev().launcher(), s.dtype(), cols.ptr(), x_dims, w, x.ptr())?;
    Ok(x)
}

/// `Storage::max_pool2d` on the device: the window maxima and their plane offsets (I64).
pub fn max_pool2d_op(s: &CudaStorage, l: &Layout, w: &Window2d) -> Result<(CudaStorage, CudaStorage)> {
    if !window_kernels(s, l, w) {
        return host("host:max_pool2d", || {
            let (v, i) = cpu::max_pool2d(&on_cpu(s)?, l, w)?;
            Ok((upload(s, v)?, upload(s, i)?))
        });
    }
    let (oh, ow) = w.out_hw(l.dims()[2], l.dims()[3]).expect("checked by window_kernels");
    let n = l.dims()[0] * l.dims()[1] * oh * ow;
    let (vals, idx) = (CudaStorage::uninit(s.dev(), s.dtype(), n)?, CudaStorage::uninit(s.dev(), DType::I64, n)?);
    kernels_conv::max_pool2d(s.dev().launcher(), s.dtype(), s.ptr(), l, w, vals.ptr(), idx.ptr())?;
    Ok((vals, idx))
}

/// `Storage::max_pool2d_backward` on the device: the gradient of x [n, c, h, w] = `x_dims`,
/// each pixel summing the output gradients `g` (view `l`) of the windows whose argmax it is.
pub fn max_pool2d_backward_op(
    g: &CudaStorage,
    l: &Layout,
    idx: &CudaStorage,
    x_dims: [usize; 4],
    w: &Window2d,
) -> Result<CudaStorage> {
    if !window_kernels(g, &contiguous(&x_dims), w) {
        return host("host:max_pool2d_backward", || {
            let [n, c, h, wd] = x_dims;
            upload(g, cpu::max_pool2d_backward(&on_cpu(g)?, l, &on_cpu(idx)?, n * c, h * wd)?)
        });
    }
    let g = to_contiguous_as(g, l, g.dtype())?;
    let gx = CudaStorage::uninit(g.dev(), g.dtype(), x_dims.iter().product())?;
    kernels_conv::max_pool2d_backward(g.dev().launcher(), g.dtype(), g.ptr(), idx.ptr(), &x_dims, w, gx.ptr())?;
    Ok(gx)
}
