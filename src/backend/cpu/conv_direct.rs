//! Direct convolution for layers with few taps per output: a network's first layer (one or
//! three input channels, 3x3 or 5x5), at stride 1 and dilation 1.
//!
//! There im2col + GEMM spends more time copying than multiplying: the MNIST CNN's first
//! conv has K = c·kh·kw = 9, so the GEMM runs at ~60 GFLOP/s per core, and im2col writes
//! 9 floats per input pixel. Here outputs are computed in chunks of 8 along a row straight
//! from the (zero-padded) input planes: every tap is one offset into the planes, each 8-wide
//! load of the input feeds 4 output channels (forward), each 8-wide load of the gradient
//! feeds 3 taps (weight gradient). Enough independent accumulators (8 and 12) that the FMA
//! latency is hidden. A row whose width is no multiple of 8 ends with a chunk that overlaps
//! the one before it: recomputed outputs are identical; in the weight gradient the
//! overlapped lanes are masked out.
//!
//! f32 on an AVX2 + FMA CPU runs hand-written intrinsics (the compiler's vectoriser did not
//! keep these accumulators in registers); f64 and other CPUs run the same loops in plain
//! Rust, so the f64 gradient checks cover the algorithm and the f32 tests the intrinsics.
//! Both use fused multiply-adds (`mul_add`: the same bits with or without hardware FMA).
//!
//! The input gradient of such a layer (rarely needed: it is the data's) keeps the GEMM +
//! col2im route of `conv.rs`.

use super::conv::ConvGeom;
use super::Float;

/// Lanes per chunk: one AVX2 register of f32.
const LANES: usize = 8;
/// Output channels per pass over the input.
const OB: usize = 4;
/// Output channels and taps per weight-gradient pass: 9 accumulators, 3 input rows, the
/// gradient and a lane mask fit the 16 AVX2 registers (4 channels x 3 taps did not: spills).
const WB: usize = 3;
const TB: usize = 3;
/// Taps per output channel (c/groups · kh · kw) up to which the direct route is taken.
const MAX_TAPS: usize = 32;

/// Whether the direct route computes this convolution.
pub(super) fn applies(geom: &ConvGeom) -> bool {
    let w = &geom.win;
    let Some((oh, ow)) = w.out_hw(geom.h, geom.w) else { return false };
    w.stride == (1, 1) && w.dilation == (1, 1) && geom.group_rows() <= MAX_TAPS && ow >= LANES && oh > 0
}

/// What both passes share: the padded planes of one image and where each tap reads them.
struct Plan<'a, T> {
    /// The image [c, hp, wp], zero-padded (borrowed when there is no padding).
    xp: &'a [T],
    /// Input channels per group, plane size and row length of `xp`.
    cg: usize,
    plane: usize,
    wp: usize,
    oh: usize,
    ow: usize,
    /// Per tap (ci, ky, kx) of a group: its offset from an output's top-left input.
    offs: Vec<usize>,
    /// The first column of each 8-wide chunk of an output row, and how many of its leading
    /// lanes the chunk before already covered.
    chunks: Vec<(usize, usize)>,
}

impl<'a, T: Float> Plan<'a, T> {
    fn new(x: &'a [T], geom: &ConvGeom, buf: &'a mut Vec<T>) -> Self {
        let (ph, pw) = geom.win.padding;
        let (hp, wp) = (geom.h + 2 * ph, geom.w + 2 * pw);
        let xp: &[T] = if (ph, pw) == (0, 0) {
            x
        } else {
            buf.clear();
            buf.resize(geom.c * hp * wp, T::zero());
            for (src, dst) in x.chunks_exact(geom.h * geom.w).zip(buf.chunks_exact_mut(hp * wp)) {
                for (srow, drow) in src.chunks_exact(geom.w).zip(dst[ph * wp..].chunks_exact_mut(wp)) {
                    drow[pw..][..geom.w].copy_from_slice(srow);
                }
            }
            buf
        };
        let (oh, ow) = geom.win.out_hw(geom.h, geom.w).expect("checked by applies");
        let (kh, kw) = geom.win.kernel;
        let cg = geom.c / geom.groups;
        let mut offs = Vec::with_capacity(cg * kh * kw);
        for ci in 0..cg {
            for ky in 0..kh {
                for kx in 0..kw {
                    offs.push(ci * hp * wp + ky * wp + kx);
                }
            }
        }
        let full = (0..ow / LANES).map(|c| (c * LANES, 0));
        let tail = (ow % LANES != 0).then_some((ow - LANES, LANES - ow % LANES));
        Plan { xp, cg, plane: hp * wp, wp, oh, ow, offs, chunks: full.chain(tail).collect() }
    }

    /// Group `gi`'s planes.
    fn group(&self, gi: usize) -> &[T] {
        &self.xp[gi * self.cg * self.plane..][..self.cg * self.plane]
    }
}

/// One image's convolution: x [c, h, w] -> dst [o, oh·ow], bias included. `pad` is scratch.
pub(super) fn forward_image<T: Float>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    geom: &ConvGeom,
    pad: &mut Vec<T>,
    dst: &mut [T],
) {
    let plan = Plan::new(x, geom, pad);
    let (og, taps) = (geom.o / geom.groups, plan.offs.len());
    assert_eq!(dst.len(), geom.o * plan.oh * plan.ow, "direct conv output size");
    // Chunks two by two (8 accumulators); an odd count pairs the last with itself.
    let pairs: Vec<[usize; 2]> = plan.chunks.chunks(2).map(|p| [p[0].0, p[p.len() - 1].0]).collect();
    // One block's weights tap-major, [taps][OB], zero for channels past the group.
    let mut wblk = vec![T::zero(); taps * OB];
    for gi in 0..geom.groups {
        for ob0 in (0..og).step_by(OB) {
            let (oc0, nb) = (gi * og + ob0, OB.min(og - ob0));
            for (t, wt) in wblk.chunks_exact_mut(OB).enumerate() {
                for (k, v) in wt.iter_mut().enumerate() {
                    *v = if k < nb { w[(oc0 + k) * taps + t] } else { T::zero() };
                }
            }
            let bias: [T; OB] = std::array::from_fn(|k| match b {
                Some(b) if k < nb => b[oc0 + k],
                _ => T::zero(),
            });
            let block = Block { planes: plan.group(gi), plan: &plan, pairs: &pairs, oc0, nb };
            forward_block(&block, &wblk, bias, dst);
        }
    }
}

/// One forward pass: output channels oc0..oc0 + nb from one group's planes.
struct Block<'p, 'a, T> {
    planes: &'p [T],
    plan: &'p Plan<'a, T>,
    pairs: &'p [[usize; 2]],
    oc0: usize,
    nb: usize,
}

/// dst[oc0 + k, y, x] = bias[k] + Σ_t wblk[t][k] · planes[y·wp + x + offs[t]] for the block.
fn forward_block<T: Float>(blk: &Block<T>, wblk: &[T], bias: [T; OB], dst: &mut [T]) {
    let (plan, l) = (blk.plan, blk.plan.oh * blk.plan.ow);
    let last = (plan.oh - 1) * plan.wp + plan.ow + plan.offs.last().copied().unwrap_or(0);
    assert!(last <= blk.planes.len() && wblk.len() == plan.offs.len() * OB, "direct conv reads inside its planes");
    assert!((blk.oc0 + blk.nb) * l <= dst.len(), "direct conv writes inside its output");
    #[cfg(target_arch = "x86_64")]
    if let (Some(p), Some(w), Some(d), true) =
        (T::as_f32(blk.planes), T::as_f32(wblk), T::as_f32_mut(dst), super::simd::has_avx2())
    {
        let geo = avx2::Rows { wp: plan.wp, oh: plan.oh, ow: plan.ow, offs: &plan.offs, pairs: blk.pairs };
        // SAFETY: AVX2 and FMA are present; reads and writes are inside the slices (asserted).
        unsafe { avx2::forward_block(p, &geo, w, bias.map(|v| v.to_f64() as f32), &mut d[blk.oc0 * l..], blk.nb) };
        return;
    }
    for y in 0..plan.oh {
        for &[x0, x1] in blk.pairs {
            let mut acc = bias.map(|b| [[b; LANES]; 2]);
            for (&off, wt) in plan.offs.iter().zip(wblk.chunks_exact(OB)) {
                for (c, x) in [x0, x1].into_iter().enumerate() {
                    let s = &blk.planes[y * plan.wp + x + off..][..LANES];
                    for (acc, &wk) in acc.iter_mut().zip(wt) {
                        for (a, &sv) in acc[c].iter_mut().zip(s) {
                            *a = wk.mul_add(sv, *a);
                        }
                    }
                }
            }
            for (k, a) in acc.iter().enumerate().take(blk.nb) {
                let row = &mut dst[(blk.oc0 + k) * l + y * plan.ow..][..plan.ow];
                row[x0..][..LANES].copy_from_slice(&a[0]);
                row[x1..][..LANES].copy_from_slice(&a[1]);
            }
        }
    }
}

/// Adds one image's weight gradient into `dw` [o, taps]: dW[oc, t] += Σ_{y,x} g[oc, y, x] ·
/// xp[y·wp + x + offs[t]]. `g` [o, oh·ow] is the gradient of the convolution's output (any
/// fused epilogue already undone); `pad` is scratch.
pub(super) fn weight_grad_image<T: Float>(g: &[T], x: &[T], geom: &ConvGeom, pad: &mut Vec<T>, dw: &mut [T]) {
    let plan = Plan::new(x, geom, pad);
    let (og, taps, l) = (geom.o / geom.groups, plan.offs.len(), plan.oh * plan.ow);
    for gi in 0..geom.groups {
        let planes = plan.group(gi);
        for ob0 in (0..og).step_by(WB) {
            let (oc0, nb) = (gi * og + ob0, WB.min(og - ob0));
            // Channels past the group read the last real channel's gradient again; their
            // sums are dropped.
            let gs: [&[T]; WB] = std::array::from_fn(|k| &g[(oc0 + k.min(nb - 1)) * l..][..l]);
            for t0 in (0..taps).step_by(TB) {
                // A short last block repeats its last tap; the repeats are dropped.
                let offs: [usize; TB] = std::array::from_fn(|i| plan.offs[(t0 + i).min(taps - 1)]);
                let sums = weight_grad_block(planes, &plan, gs, offs);
                for (k, sums) in sums.iter().enumerate().take(nb) {
                    let row = &mut dw[(oc0 + k) * taps + t0..];
                    for (d, &s) in row.iter_mut().zip(sums).take(TB.min(taps - t0)) {
                        *d = *d + s;
                    }
                }
            }
        }
    }
}

/// Σ_{y,x} gs[k][y·ow + x] · planes[y·wp + x + offs[t]] for WB channels k and TB taps t.
fn weight_grad_block<T: Float>(planes: &[T], plan: &Plan<T>, gs: [&[T]; WB], offs: [usize; TB]) -> [[T; TB]; WB] {
    let last = (plan.oh - 1) * plan.wp + plan.ow + offs.iter().max().copied().unwrap_or(0);
    assert!(last <= planes.len(), "direct conv reads inside its planes");
    assert!(gs.iter().all(|g| g.len() == plan.oh * plan.ow), "one gradient plane per channel");
    #[cfg(target_arch = "x86_64")]
    if let (Some(p), true) = (T::as_f32(planes), super::simd::has_avx2()) {
        let gf: [&[f32]; WB] = gs.map(|g| T::as_f32(g).expect("same element type as the planes"));
        // SAFETY: AVX2 and FMA are present; every read is inside `planes` and `gs` (asserted).
        let sums = unsafe { avx2::weight_grad_block(p, plan.wp, plan.oh, plan.ow, &plan.chunks, gf, offs) };
        return sums.map(|s| s.map(|v| T::from_f64(v as f64)));
    }
    let mut acc = [[[T::zero(); LANES]; TB]; WB];
    for &(x0, skip) in &plan.chunks {
        for y in 0..plan.oh {
            let at = y * plan.wp + x0;
            for (acc, g) in acc.iter_mut().zip(gs) {
                let g = &g[y * plan.ow + x0..][..LANES];
                for (a, &off) in acc.iter_mut().zip(&offs) {
                    let s = &planes[at + off..][..LANES];
                    for (j, (a, (&gv, &sv))) in a.iter_mut().zip(g.iter().zip(s)).enumerate() {
                        if j >= skip {
                            *a = gv.mul_add(sv, *a);
                        }
                    }
                }
            }
        }
    }
    acc.map(|a| a.map(|lanes| lanes.iter().fold(T::zero(), |s, &v| s + v)))
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The f32 loops of the two passes with AVX2 + FMA intrinsics: the same arithmetic as
    //! the plain versions above, lane for lane.
    use super::{LANES, OB, TB, WB};
    use std::arch::x86_64::*;

    const _: () = assert!(TB == 3, "weight_grad_block loads TB = 3 taps");

    /// An image's output geometry and taps, as `Plan` holds them.
    pub(super) struct Rows<'a> {
        pub wp: usize,
        pub oh: usize,
        pub ow: usize,
        pub offs: &'a [usize],
        pub pairs: &'a [[usize; 2]],
    }

    /// `dst` starts at the block's first channel; `nb` channels are written.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_block(
        planes: &[f32],
        r: &Rows,
        wblk: &[f32],
        bias: [f32; OB],
        dst: &mut [f32],
        nb: usize,
    ) {
        let (p, l) = (planes.as_ptr(), r.oh * r.ow);
        for y in 0..r.oh {
            for &[x0, x1] in r.pairs {
                let (a0, a1) = (p.add(y * r.wp + x0), p.add(y * r.wp + x1));
                let mut acc = [[_mm256_setzero_ps(); 2]; OB];
                for (a, &b) in acc.iter_mut().zip(&bias) {
                    *a = [_mm256_set1_ps(b); 2];
                }
                for (&off, w) in r.offs.iter().zip(wblk.chunks_exact(OB)) {
                    let s0 = _mm256_loadu_ps(a0.add(off));
                    let s1 = _mm256_loadu_ps(a1.add(off));
                    for (a, &wk) in acc.iter_mut().zip(w) {
                        let wv = _mm256_set1_ps(wk);
                        a[0] = _mm256_fmadd_ps(wv, s0, a[0]);
                        a[1] = _mm256_fmadd_ps(wv, s1, a[1]);
                    }
                }
                for (k, a) in acc.iter().enumerate().take(nb) {
                    let row = dst.as_mut_ptr().add(k * l + y * r.ow);
                    _mm256_storeu_ps(row.add(x0), a[0]);
                    _mm256_storeu_ps(row.add(x1), a[1]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weight_grad_block(
        planes: &[f32],
        wp: usize,
        oh: usize,
        ow: usize,
        chunks: &[(usize, usize)],
        gs: [&[f32]; WB],
        offs: [usize; TB],
    ) -> [[f32; TB]; WB] {
        let p = planes.as_ptr();
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut acc = [[_mm256_setzero_ps(); TB]; WB];
        // Chunk by chunk (columns outer), so that its lane mask stays in a register.
        for &(x0, skip) in chunks {
            // All-ones in the lanes j >= skip.
            let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(skip as i32 - 1)));
            for y in 0..oh {
                let at = p.add(y * wp + x0);
                let s = [
                    _mm256_loadu_ps(at.add(offs[0])),
                    _mm256_loadu_ps(at.add(offs[1])),
                    _mm256_loadu_ps(at.add(offs[2])),
                ];
                for (a, g) in acc.iter_mut().zip(&gs) {
                    let gv = _mm256_and_ps(_mm256_loadu_ps(g.as_ptr().add(y * ow + x0)), keep);
                    for (a, &s) in a.iter_mut().zip(&s) {
                        *a = _mm256_fmadd_ps(gv, s, *a);
                    }
                }
            }
        }
        let mut out = [[0.0f32; TB]; WB];
        for (o, a) in out.iter_mut().zip(&acc) {
            for (o, &a) in o.iter_mut().zip(a) {
                let mut l = [0.0f32; LANES];
                _mm256_storeu_ps(l.as_mut_ptr(), a);
                // Lanes summed in order, as the plain version's fold.
                *o = l.iter().fold(0.0, |s, &v| s + v);
            }
        }
        out
    }
}
