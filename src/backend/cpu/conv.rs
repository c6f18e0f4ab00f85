//! Convolution on the CPU.
//!
//! `conv2d` and its backward work one image at a time: the image's im2col columns
//! ([c·kh·kw, oh·ow], ~140 KB for the MNIST CNN's second layer) go to a scratch buffer
//! that stays in cache, and one GEMM per group turns them into the image's output. Nothing
//! batch-sized is materialised, and the backward recomputes the columns instead of keeping
//! them from the forward (recomputing costs a few % of the GEMMs; keeping them cost 18 MB
//! per step). Images run in parallel; the weight and bias gradients are summed per fixed
//! block of images and then over blocks in order, so results do not depend on scheduling.
//!
//! Layers with few taps per output (a first layer: c/groups·kh·kw <= 32, stride 1) skip
//! im2col for their forward and weight gradient: `conv_direct.rs`. 3x3 stride-1 layers
//! with at least 16 channels in and out and 256 tiles of 4x4 outputs per call run Winograd
//! F(4x4, 3x3) on blocks of images, forward and backward: `conv_winograd.rs` (`Route`
//! picks; the same route both ways).
//!
//! `im2col` / `col2im` over a whole batch remain for `unfold2d` (and avg_pool2d).

use super::matmul::{gemm_into, Mat};
use super::{float_view, CpuStorage, Float, FloatView};
use crate::backend::Window2d;
use crate::{Layout, Result};
use gemm::Parallelism;
use rayon::prelude::*;

/// Images per backward task: the weight/bias gradient partial sums are per block, so
/// this fixes the summation order (and bounds the partial buffers: n / 8 of them).
const IMAGES_PER_TASK: usize = 8;

/// The geometry of one conv2d call: x [n, c, h, w], weight [o, c/groups, kh, kw].
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub groups: usize,
    pub win: Window2d,
}

impl ConvGeom {
    fn out_hw(&self) -> (usize, usize) {
        self.win.out_hw(self.h, self.w).expect("geometry checked by the caller")
    }
    /// Output pixels per plane.
    fn l(&self) -> usize {
        let (oh, ow) = self.out_hw();
        oh * ow
    }
    /// Rows of one group's columns (and columns of its weight matrix): c/groups · kh · kw.
    pub(super) fn group_rows(&self) -> usize {
        self.c / self.groups * self.win.kernel.0 * self.win.kernel.1
    }
    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// gemm's own threading for the per-image GEMMs only when there are too few images to
    /// give every thread one (batch-1 inference on a large image).
    fn par(&self) -> Parallelism {
        let macs = self.o * self.group_rows() * self.l();
        if self.n >= super::threads() || macs < super::matmul::PAR_GEMM_MACS {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        }
    }
}

/// conv2d forward: x [n, c, h, w], weight [o, c/groups, kh, kw], bias [o] -> [n, o, oh, ow],
/// followed by what `epi` asks for. With `Epilogue::ReluMaxPool2` the result is the pooled
/// [n, o, oh/2, ow/2] and the second storage the pooling's argmax (I64, as max_pool2d's).
pub fn conv2d(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
    geom: &ConvGeom,
    epi: Epilogue,
) -> Result<(CpuStorage, Option<CpuStorage>)> {
    fn go<T: Float>(x: &FloatView, w: &FloatView, b: Option<&FloatView>, geom: &ConvGeom, epi: Epilogue) -> Out<T> {
        let bias = b.map(|b| b.contiguous::<T>());
        conv2d_t(&x.contiguous::<T>(), &w.contiguous::<T>(), bias.as_deref(), geom, epi)
    }
    let (xv, wv) = (float_view(x.0, x.1, "conv2d")?, float_view(w.0, w.1, "conv2d")?);
    let bv = b.map(|(s, l)| float_view(s, l, "conv2d")).transpose()?;
    let dt = x.0.dtype();
    let idx = |i: Option<Vec<i64>>| i.map(|i| CpuStorage::new(super::CpuData::I64(i)));
    Ok(if xv.is_f64() {
        let (v, i) = go::<f64>(&xv, &wv, bv.as_ref(), geom, epi);
        (f64::into_storage(v, dt), idx(i))
    } else {
        let (v, i) = go::<f32>(&xv, &wv, bv.as_ref(), geom, epi);
        (f32::into_storage(v, dt), idx(i))
    })
}

/// What a conv2d op applies to the convolution's result before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    None,
    Relu,
    /// ReLU, then 2x2 / stride-2 max pooling: the full-size output only ever exists per
    /// image, in cache (the MNIST CNN's first conv output is 11 MB per batch).
    ReluMaxPool2,
}

/// The forward's outputs of the op, which its backward reads back.
#[derive(Clone, Copy)]
pub enum Fused<'a> {
    None,
    /// A fused ReLU's output.
    Relu(&'a CpuStorage),
    /// A fused ReLU + 2x2 max pool's (pooled output, argmax indices).
    ReluMaxPool2(&'a CpuStorage, &'a CpuStorage),
}

type Out<T> = (Vec<T>, Option<Vec<i64>>);

/// conv2d backward: given the gradient `g` of the op's output, the gradients of (x, weight,
/// bias) that `need` asks for. `fused`: what the forward applied after the convolution (its
/// outputs), undone first: the gradient flows only where the ReLU's output is positive, and
/// through a fused pool only to each window's argmax.
pub fn conv2d_backward(
    g: (&CpuStorage, &Layout),
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    fused: Fused,
    geom: &ConvGeom,
    need: [bool; 3],
) -> Result<[Option<CpuStorage>; 3]> {
    fn go<T: Float>(
        v: &[FloatView],
        out: Option<&FloatView>,
        idx: Option<&[i64]>,
        geom: &ConvGeom,
        need: [bool; 3],
    ) -> [Option<Vec<T>>; 3] {
        let (g, x, w) = (v[0].contiguous::<T>(), v[1].contiguous::<T>(), v[2].contiguous::<T>());
        let out = out.map(|o| o.contiguous::<T>());
        conv2d_backward_t(&g, &x, &w, out.as_deref(), idx, geom, need)
    }
    let views = [float_view(g.0, g.1, "conv2d")?, float_view(x.0, x.1, "conv2d")?, float_view(w.0, w.1, "conv2d")?];
    let whole = |s: &CpuStorage| Layout::contiguous(crate::Shape::new(vec![s.len()]));
    let (out, idx) = match fused {
        Fused::None => (None, None),
        Fused::Relu(o) => (Some(float_view(o, &whole(o), "conv2d")?), None),
        Fused::ReluMaxPool2(o, i) => {
            let super::CpuData::I64(i) = i.data() else {
                return Err(crate::Error::invalid("conv2d", "pooling indices must be I64"));
            };
            (Some(float_view(o, &whole(o), "conv2d")?), Some(&i[..]))
        }
    };
    let dt = x.0.dtype();
    Ok(if views[1].is_f64() {
        go::<f64>(&views, out.as_ref(), idx, geom, need).map(|v| v.map(|v| f64::into_storage(v, dt)))
    } else {
        go::<f32>(&views, out.as_ref(), idx, geom, need).map(|v| v.map(|v| f32::into_storage(v, dt)))
    })
}

/// One image [c, h, w] convolved into `dst` [o, l] by im2col (into `cols`) and one GEMM per
/// group, the bias included.
fn conv_gemm_image<T: Float>(image: &[T], w: &[T], b: Option<&[T]>, geom: &ConvGeom, cols: &mut [T], dst: &mut [T]) {
    let (l, rows, groups) = (geom.l(), geom.group_rows(), geom.groups);
    let og = geom.o / groups;
    im2col_image(image, geom, cols);
    // The bias is the GEMM's starting value: no separate pass over the output.
    if let Some(b) = b {
        for (row, &bv) in dst.chunks_mut(l).zip(b) {
            row.fill(bv);
        }
    }
    for gi in 0..groups {
        gemm_into(
            og,
            l,
            rows,
            &mut dst[gi * og * l..][..og * l],
            b.is_some(),
            Mat::rows(&w[gi * og * rows..][..og * rows], rows),
            Mat::rows(&cols[gi * rows * l..][..rows * l], l),
            geom.par(),
        );
    }
}

fn conv2d_t<T: Float>(x: &[T], w: &[T], b: Option<&[T]>, geom: &ConvGeom, epi: Epilogue) -> Out<T> {
    let (o, l, rows, groups) = (geom.o, geom.l(), geom.group_rows(), geom.groups);
    let img = geom.image_len();
    let route = Route::of(w, geom);
    // Images per task: one for the per-image routes, a block of them for Winograd.
    let per = route.images_per_task(1, true);
    // The convolution (+ ReLU) of images [first, first + count) into `dst` [count, o, l].
    let conv_images = |first: usize, count: usize, s: &mut Scratch<T>, dst: &mut [T]| {
        match &route {
            Route::Winograd(wg) => wg.forward_block(&x[first * img..], count, b, &mut s.wino, dst),
            Route::Direct => super::conv_direct::forward_image(&x[first * img..][..img], w, b, geom, &mut s.pad, dst),
            Route::Gemm => conv_gemm_image(&x[first * img..][..img], w, b, geom, &mut s.cols, dst),
        }
        if epi != Epilogue::None {
            for v in dst[..count * o * l].iter_mut() {
                *v = if *v > T::zero() { *v } else { T::zero() };
            }
        }
    };
    let scratch = || Scratch::<T> {
        cols: vec![T::zero(); if matches!(route, Route::Gemm) { groups * rows * l } else { 0 }],
        ..Scratch::default()
    };
    if epi != Epilogue::ReluMaxPool2 {
        let mut out = super::zeroed::<T>(geom.n * o * l);
        if !out.is_empty() {
            out.par_chunks_mut(per * o * l)
                .with_min_len(super::par_min_len())
                .enumerate()
                .for_each_init(scratch, |s, (t, dst)| conv_images(t * per, dst.len() / (o * l), s, dst));
        }
        return (out, None);
    }
    let (oh, ow) = geom.out_hw();
    let pooled = (oh / 2) * (ow / 2);
    let mut out = super::zeroed::<T>(geom.n * o * pooled);
    let mut idx = super::zeroed::<i64>(geom.n * o * pooled);
    if !out.is_empty() {
        out.par_chunks_mut(per * o * pooled)
            .zip(idx.par_chunks_mut(per * o * pooled))
            .with_min_len(super::par_min_len())
            .enumerate()
            .for_each_init(
                || (scratch(), vec![T::zero(); per * o * l]),
                |(s, conv), (t, (dst, di))| {
                    let count = dst.len() / (o * pooled);
                    conv_images(t * per, count, s, conv);
                    for ((plane, vo), io) in
                        conv.chunks_exact(l).zip(dst.chunks_exact_mut(pooled)).zip(di.chunks_exact_mut(pooled))
                    {
                        super::pool::pool_2x2(plane, ow, (oh / 2, ow / 2), vo, io);
                    }
                },
            );
    }
    (out, Some(idx))
}

/// How a conv2d call is computed (the same choice for its forward and its backward).
enum Route<T> {
    /// Few taps per output: straight from the padded planes (`conv_direct.rs`).
    Direct,
    /// 3x3, stride 1, enough channels: Winograd F(4x4, 3x3) on blocks of images.
    Winograd(super::conv_winograd::Winograd<T>),
    /// Everything else: per image, im2col + one GEMM per group.
    Gemm,
}

impl<T: Float> Route<T> {
    fn of(w: &[T], geom: &ConvGeom) -> Self {
        if super::conv_direct::applies(geom) {
            Route::Direct
        } else if super::conv_winograd::applies(geom) {
            Route::Winograd(super::conv_winograd::Winograd::new(w, geom))
        } else {
            Route::Gemm
        }
    }
    /// Images per task of the forward (`forward`) or the backward: Winograd's (fixed by the
    /// geometry), else `per_image_route`.
    fn images_per_task(&self, per_image_route: usize, forward: bool) -> usize {
        match self {
            Route::Winograd(wg) if forward => wg.images_per_block(true),
            Route::Winograd(wg) => wg.backward_task_images(),
            _ => per_image_route,
        }
    }
}

/// A task's working buffers: one image's columns (GEMM route), its padded copy (direct
/// route), or a block's transformed tiles (Winograd).
struct Scratch<T> {
    cols: Vec<T>,
    pad: Vec<T>,
    wino: super::conv_winograd::Scratch<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { cols: Vec::new(), pad: Vec::new(), wino: Default::default() }
    }
}

/// One block's share of the weight and bias gradients (empty when not asked for).
struct Partial<T> {
    dw: Vec<T>,
    db: Vec<f64>,
}

fn conv2d_backward_t<T: Float>(
    g: &[T],
    x: &[T],
    w: &[T],
    relu_out: Option<&[T]>,
    pool_idx: Option<&[i64]>,
    geom: &ConvGeom,
    need: [bool; 3],
) -> [Option<Vec<T>>; 3] {
    let [need_dx, need_dw, need_db] = need;
    let (n, o, l, rows, groups) = (geom.n, geom.o, geom.l(), geom.group_rows(), geom.groups);
    let (og, img) = (o / groups, geom.image_len());
    let par = geom.par();
    let route = Route::of(w, geom);
    // Winograd sums the weight gradient in its transformed domain, transformed back once.
    let dw_len = match &route {
        Route::Winograd(wg) => wg.du_len(),
        _ => o * rows,
    };
    // The images [first, first + count) of one task; `dx` is empty when not needed.
    let block = |first: usize, count: usize, dx: &mut [T]| -> Partial<T> {
        let mut p = Partial {
            dw: if need_dw { vec![T::zero(); dw_len] } else { Vec::new() },
            db: if need_db { vec![0.0; o] } else { Vec::new() },
        };
        let gemm_cols = match route {
            Route::Gemm => need_dw || need_dx,
            Route::Direct => need_dx,
            Route::Winograd(_) => false,
        };
        let mut s =
            Scratch { cols: vec![T::zero(); if gemm_cols { groups * rows * l } else { 0 }], ..Scratch::default() };
        let fused = (relu_out, pool_idx);
        if let Route::Winograd(wg) = &route {
            // Block by block: a block's tiles go through the GEMMs together; the task's
            // blocks share one weight-gradient partial (they are ~600 KB-10 MB each).
            let per = wg.images_per_block(false);
            let mut buf = vec![T::zero(); if relu_out.is_some() { per * o * l } else { 0 }];
            for f in (first..first + count).step_by(per) {
                let cnt = per.min(first + count - f);
                let gb = if relu_out.is_some() {
                    for (i, dst) in buf.chunks_exact_mut(o * l).take(cnt).enumerate() {
                        undo_epilogue(g, fused, f + i, geom, dst);
                    }
                    &buf[..cnt * o * l]
                } else {
                    &g[f * o * l..][..cnt * o * l]
                };
                if need_db {
                    for (r, row) in gb.chunks_exact(l).enumerate() {
                        p.db[r % o] += sum_f64(row);
                    }
                }
                let dxb = if dx.is_empty() { &mut [][..] } else { &mut dx[(f - first) * img..][..cnt * img] };
                wg.backward_block(gb, &x[f * img..], cnt, &mut s.wino, dxb, &mut p.dw);
            }
            return p;
        }
        let mut buf = vec![T::zero(); if relu_out.is_some() { o * l } else { 0 }];
        for i in first..first + count {
            let gi_img = undo_epilogue(g, fused, i, geom, &mut buf);
            if need_db {
                for (acc, row) in p.db.iter_mut().zip(gi_img.chunks(l)) {
                    *acc += sum_f64(row);
                }
            }
            if need_dw && matches!(route, Route::Direct) {
                super::conv_direct::weight_grad_image(gi_img, &x[i * img..][..img], geom, &mut s.pad, &mut p.dw);
            } else if need_dw {
                // dW[grp] (og x rows) += g[grp] (og x l) @ cols[grp]ᵀ (l x rows).
                im2col_image(&x[i * img..][..img], geom, &mut s.cols);
                for grp in 0..groups {
                    gemm_into(
                        og,
                        rows,
                        l,
                        &mut p.dw[grp * og * rows..][..og * rows],
                        true,
                        Mat::rows(&gi_img[grp * og * l..][..og * l], l),
                        Mat::transposed(&s.cols[grp * rows * l..][..rows * l], l),
                        par,
                    );
                }
            }
            if need_dx {
                // dcols[grp] (rows x l) = W[grp]ᵀ (rows x og) @ g[grp] (og x l), then col2im.
                for grp in 0..groups {
                    gemm_into(
                        rows,
                        l,
                        og,
                        &mut s.cols[grp * rows * l..][..rows * l],
                        false,
                        Mat::transposed(&w[grp * og * rows..][..og * rows], rows),
                        Mat::rows(&gi_img[grp * og * l..][..og * l], l),
                        par,
                    );
                }
                col2im_image(&s.cols, geom, &mut dx[(i - first) * img..][..img]);
            }
        }
        p
    };
    let step = route.images_per_task(IMAGES_PER_TASK, false);
    let mut dx = if need_dx { super::zeroed::<T>(n * img) } else { Vec::new() };
    let partials: Vec<Partial<T>> = if need_dx && img > 0 {
        dx.par_chunks_mut(step * img)
            .with_min_len(super::par_min_len())
            .enumerate()
            .map(|(t, d)| block(t * step, d.len() / img, d))
            .collect()
    } else {
        (0..n.div_ceil(step))
            .into_par_iter()
            .with_min_len(super::par_min_len())
            .map(|t| block(t * step, step.min(n - t * step), &mut []))
            .collect()
    };
    let dw = need_dw.then(|| {
        let mut dw = vec![T::zero(); dw_len];
        for p in &partials {
            dw.iter_mut().zip(&p.dw).for_each(|(a, &b)| *a = *a + b);
        }
        match &route {
            Route::Winograd(wg) => wg.weight_grad(&dw),
            _ => dw,
        }
    });
    let db = need_db.then(|| {
        let mut db = vec![0.0; o];
        for p in &partials {
            db.iter_mut().zip(&p.db).for_each(|(a, &b)| *a += b);
        }
        db.into_iter().map(T::from_f64).collect()
    });
    [need_dx.then_some(dx), dw, db]
}

/// The gradient of image `i`'s convolution output [o, l]: `g`'s own slice, or, when the
/// forward fused a ReLU (`fused.0`: its output) and a 2x2 pool (`fused.1`: its argmax),
/// their backward written into `buf` [o, l].
fn undo_epilogue<'a, T: Float>(
    g: &'a [T],
    fused: (Option<&[T]>, Option<&[i64]>),
    i: usize,
    geom: &ConvGeom,
    buf: &'a mut [T],
) -> &'a [T] {
    let (o, l) = (geom.o, geom.l());
    match fused {
        (None, _) => &g[i * o * l..][..o * l],
        (Some(out), None) => {
            // The fused ReLU's backward: the gradient where the output is positive.
            for ((m, &gv), &ov) in buf.iter_mut().zip(&g[i * o * l..][..o * l]).zip(&out[i * o * l..][..o * l]) {
                *m = if ov > T::zero() { gv } else { T::zero() };
            }
            buf
        }
        (Some(out), Some(idx)) => {
            // Fused ReLU + pool: each window's gradient goes to its argmax (plane offsets, as
            // max_pool2d's) when the pooled ReLU output is positive.
            let (oh, ow) = geom.out_hw();
            let pooled = (oh / 2) * (ow / 2);
            buf.fill(T::zero());
            let span = i * o * pooled..(i + 1) * o * pooled;
            let (gp, op, ip) = (&g[span.clone()], &out[span.clone()], &idx[span]);
            for (plane, dst) in buf.chunks_exact_mut(l).enumerate() {
                let r = plane * pooled..(plane + 1) * pooled;
                // A select, not a branch: `ov > 0` is a coin flip the predictor misses half
                // the time (this loop was a quarter of conv1's backward).
                for ((&gv, &ov), &at) in gp[r.clone()].iter().zip(&op[r.clone()]).zip(&ip[r]) {
                    let v = if ov > T::zero() { gv } else { T::zero() };
                    dst[at as usize] = dst[at as usize] + v;
                }
            }
            buf
        }
    }
}

/// Σ v in f64 (as the reductions do), over 16 lanes: the loop vectorises into 4 independent
/// chains of f64 adds (with 8 lanes, 2 chains waited on the add latency).
fn sum_f64<T: Float>(v: &[T]) -> f64 {
    super::simd::vectorize(
        #[inline(always)]
        || {
            let mut lanes = [0.0f64; 16];
            let chunks = v.chunks_exact(16);
            let tail: f64 = chunks.remainder().iter().map(|&x| x.to_f64()).sum();
            for c in chunks {
                for (a, &x) in lanes.iter_mut().zip(c) {
                    *a += x.to_f64();
                }
            }
            lanes.iter().sum::<f64>() + tail
        },
    )
}

/// x [n, c, h, w] -> cols [n, c*kh*kw, oh*ow]; padding reads as zero.
pub fn im2col(s: &CpuStorage, l: &Layout, w: &Window2d) -> Result<CpuStorage> {
    fn go<T: Float>(x: &[T], dims: &[usize], w: &Window2d) -> Vec<T> {
        let (h, wd) = (dims[2], dims[3]);
        let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
        let rows = w.kernel.0 * w.kernel.1 * oh * ow;
        let mut out = super::zeroed::<T>(dims[0] * dims[1] * rows);
        if !out.is_empty() {
            // One task per (image, channel) plane, each writing its own rows.
            out.par_chunks_mut(rows)
                .zip(x.par_chunks(h * wd))
                .with_min_len(super::par_min_len())
                .for_each(|(rows, src)| im2col_plane(src, h, wd, w, (oh, ow), rows));
        }
        out
    }
    let v = float_view(s, l, "im2col")?;
    Ok(if v.is_f64() {
        f64::into_storage(go(&v.contiguous::<f64>(), l.dims(), w), s.dtype())
    } else {
        f32::into_storage(go(&v.contiguous::<f32>(), l.dims(), w), s.dtype())
    })
}

/// cols [n, c*kh*kw, oh*ow] -> x [n, c, h, w] (`x_dims`), summing overlapping windows.
pub fn col2im(s: &CpuStorage, l: &Layout, x_dims: &[usize], w: &Window2d) -> Result<CpuStorage> {
    fn go<T: Float>(cols: &[T], dims: &[usize], w: &Window2d) -> Vec<T> {
        let (h, wd) = (dims[2], dims[3]);
        let (oh, ow) = w.out_hw(h, wd).expect("geometry checked by the caller");
        let rows = w.kernel.0 * w.kernel.1 * oh * ow;
        let mut out = super::zeroed::<T>(dims[0] * dims[1] * h * wd);
        if !out.is_empty() {
            out.par_chunks_mut(h * wd)
                .zip(cols.par_chunks(rows))
                .with_min_len(super::par_min_len())
                .for_each(|(dst, rows)| col2im_plane(rows, h, wd, w, (oh, ow), dst));
        }
        out
    }
    let v = float_view(s, l, "col2im")?;
    Ok(if v.is_f64() {
        f64::into_storage(go(&v.contiguous::<f64>(), x_dims, w), s.dtype())
    } else {
        f32::into_storage(go(&v.contiguous::<f32>(), x_dims, w), s.dtype())
    })
}

/// One image [c, h, w] -> its columns [c*kh*kw, oh*ow] (every element written).
fn im2col_image<T: Float>(x: &[T], geom: &ConvGeom, cols: &mut [T]) {
    let (hw, out) = (geom.h * geom.w, geom.out_hw());
    let rows = geom.win.kernel.0 * geom.win.kernel.1 * out.0 * out.1;
    for (src, dst) in x.chunks_exact(hw).zip(cols.chunks_exact_mut(rows)) {
        im2col_plane(src, geom.h, geom.w, &geom.win, out, dst);
    }
}

/// The adjoint of `im2col_image`: adds the columns back into the image [c, h, w].
fn col2im_image<T: Float>(cols: &[T], geom: &ConvGeom, x: &mut [T]) {
    let (hw, out) = (geom.h * geom.w, geom.out_hw());
    let rows = geom.win.kernel.0 * geom.win.kernel.1 * out.0 * out.1;
    for (src, dst) in cols.chunks_exact(rows).zip(x.chunks_exact_mut(hw)) {
        col2im_plane(src, geom.h, geom.w, &geom.win, out, dst);
    }
}

/// For kernel tap `k` along one axis: the input coordinate of output 0 (`k·dil - pad`, may
/// be negative) and the range of outputs whose input coordinate lies inside `0..len`.
#[inline]
fn tap(k: usize, stride: usize, pad: usize, dil: usize, len: usize, out_len: usize) -> (isize, std::ops::Range<usize>) {
    let off = (k * dil) as isize - pad as isize;
    let s = stride as isize;
    // First o with o·s + off >= 0, and one past the last with o·s + off <= len - 1.
    let lo = if off >= 0 { 0 } else { ((-off + s - 1) / s) as usize };
    let hi = if (len as isize) > off { (((len as isize - 1 - off) / s) + 1) as usize } else { 0 };
    (off, lo.min(out_len)..hi.min(out_len).max(lo.min(out_len)))
}

/// One plane [h, w] -> its rows [kh*kw, oh*ow] of the columns. Every element is written
/// (padding as zero), so scratch buffers can be reused without clearing. The tap ranges
/// are worked out once per (tap, axis): the inner loop is a memcpy per output row at
/// stride 1, a strided gather otherwise.
fn im2col_plane<T: Float>(src: &[T], h: usize, wd: usize, w: &Window2d, (oh, ow): (usize, usize), rows: &mut [T]) {
    let (kh, kw) = w.kernel;
    let l = oh * ow;
    for i in 0..kh {
        let (oy, ys) = tap(i, w.stride.0, w.padding.0, w.dilation.0, h, oh);
        for j in 0..kw {
            let (ox, xs) = tap(j, w.stride.1, w.padding.1, w.dilation.1, wd, ow);
            let row = &mut rows[(i * kw + j) * l..][..l];
            row[..ys.start * ow].fill(T::zero());
            row[ys.end * ow..].fill(T::zero());
            for y in ys.clone() {
                let sy = ((y * w.stride.0) as isize + oy) as usize;
                let srow = &src[sy * wd..][..wd];
                let dst = &mut row[y * ow..][..ow];
                dst[..xs.start].fill(T::zero());
                dst[xs.end..].fill(T::zero());
                let first = ((xs.start * w.stride.1) as isize + ox) as usize;
                if w.stride.1 == 1 {
                    dst[xs.clone()].copy_from_slice(&srow[first..][..xs.len()]);
                } else {
                    for (d, &s) in dst[xs.clone()].iter_mut().zip(srow[first..].iter().step_by(w.stride.1)) {
                        *d = s;
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col_plane`: adds rows [kh*kw, oh*ow] into the plane `dst` [h, w].
fn col2im_plane<T: Float>(rows: &[T], h: usize, wd: usize, w: &Window2d, (oh, ow): (usize, usize), dst: &mut [T]) {
    let (kh, kw) = w.kernel;
    let l = oh * ow;
    for i in 0..kh {
        let (oy, ys) = tap(i, w.stride.0, w.padding.0, w.dilation.0, h, oh);
        for j in 0..kw {
            let (ox, xs) = tap(j, w.stride.1, w.padding.1, w.dilation.1, wd, ow);
            let row = &rows[(i * kw + j) * l..][..l];
            for y in ys.clone() {
                let sy = ((y * w.stride.0) as isize + oy) as usize;
                let drow = &mut dst[sy * wd..][..wd];
                let src = &row[y * ow..][..ow][xs.clone()];
                let first = ((xs.start * w.stride.1) as isize + ox) as usize;
                if w.stride.1 == 1 {
                    // Contiguous: a loop the compiler vectorises (step_by would not).
                    for (d, &s) in drow[first..][..src.len()].iter_mut().zip(src) {
                        *d = *d + s;
                    }
                } else {
                    for (d, &s) in drow[first..].iter_mut().step_by(w.stride.1).zip(src) {
                        *d = *d + s;
                    }
                }
            }
        }
    }
}
