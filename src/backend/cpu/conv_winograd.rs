//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2015).
//!
//! Each 4x4 block of outputs is computed from a 6x6 tile of the input: the tile and the
//! 3x3 filter are transformed (V = Bᵀ d B, U = G g Gᵀ), multiplied elementwise in the
//! transformed domain, summed over input channels, and transformed back (Y = Aᵀ M A).
//! The channel sums are 36 GEMMs, one per transformed position ξ:
//! M[ξ] (tiles x o) = V[ξ] (tiles x c) @ U[ξ] (c x o), 36·o·c multiply-adds per 16 outputs
//! where im2col + GEMM needs 16·9·o·c: 4x fewer, ~3.4x on the MNIST CNN's 11x11 outputs
//! (3x3 tiles cover 12x12). This is where the CNN's time went: its second conv was ~80% of
//! a step, running at the GEMM's peak already.
//!
//! The backward is the exact gradient of that forward, in the same domain, with the same
//! tiles: dM = A dY Aᵀ, then dV[ξ] = dM[ξ] U[ξ]ᵀ and dx = B dV Bᵀ (tiles overlap by two
//! rows and columns: their gradients add), and dU[ξ] = V[ξ]ᵀ dM[ξ] summed over tiles, then
//! dW = Gᵀ dU G. So every pass is 36 GEMMs plus transforms.
//!
//! Tiles are processed in blocks of whole images (~32 tiles forward, ~64 backward, so the
//! GEMMs are not skinny and a block's transformed data stays in L2), channels-last inside a
//! block (see [`Winograd`]). Rounding: the transforms' constants (up to 8 and 1/24) cost
//! accuracy: f32 outputs land within ~1e-5 of their magnitude (sums of 144-288 products of
//! values in [-1, 1]: within 5e-5 of exact, where im2col lands within ~1e-6; tests bound
//! it). `KILN_CPU_WINOGRAD=0` turns the route off (im2col then runs every 3x3 conv).

use super::conv::ConvGeom;
use super::matmul::{gemm_into, Mat};
use super::Float;
use gemm::Parallelism;

/// Input tile side (α = m + r - 1), output tile side (m), transformed positions (α²).
const A: usize = 6;
const M: usize = 4;
const XI: usize = A * A;
/// Tiles per block: the forward's transformed inputs and products should stay in L2 for
/// the output transform (64 tiles of the MNIST CNN's second conv, ~1 MB, did not: its
/// forward took 3.0 ms against 2.7 ms at 32); the backward's weight-gradient GEMMs sum
/// over a block's tiles, and they want a longer sum (its step took 12.5 ms at 16 tiles,
/// 10.1 at 32, 9.2 at 64).
const FORWARD_TILES: usize = 32;
const BACKWARD_TILES: usize = 64;
/// At least this many input and output channels: below, the transforms cost more than the
/// multiplications they save.
const MIN_CHANNELS: usize = 16;
/// At least this many tiles in a call: the weights' transforms (U forward and backward, dW)
/// cost as much as ~70 tiles' worth of saved multiplications, and with fewer than four
/// backward blocks the transforms would run on one thread. (ResNet-18's layer4 at batch 32,
/// 32 tiles of 512 channels, ran 1.3-1.6x slower than im2col.)
const MIN_TILES: usize = 4 * BACKWARD_TILES;
/// Backward tasks at most (their partial weight gradients are summed in task order, so the
/// count must not depend on the thread count). A machine with more than 8 threads runs a
/// Winograd backward on 8 of them: raise this if that shows in a profile there.
const BACKWARD_TASKS: usize = 8;
/// Elements all backward tasks' partial weight gradients (36·c·o each) may hold together
/// (64 MB of f32); layers with larger ones get fewer tasks, down to 2.
const PARTIALS_BUDGET: usize = 16 << 20;
/// At most this many (input, output) channel pairs: U alone is 36·c·o elements (38 MB of
/// f32 at 512 x 512), and each backward task holds a partial of that size.
const MAX_CHANNEL_PAIRS: usize = 512 * 512;

/// Bᵀ, G and Aᵀ for the interpolation points 0, 1, -1, 2, -2 (and ∞): the algorithm's
/// definition. They run as the transforms written out below (`input_t`, `weight_t`,
/// `output_t` and their adjoints); the tests check those against these matrices.
#[cfg_attr(not(test), allow(dead_code))]
const BT: [[f64; A]; A] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const G: [[f64; 3]; A] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];
#[cfg_attr(not(test), allow(dead_code))]
const AT: [[f64; A]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// Whether this route computes the convolution: 3x3, stride 1, dilation 1, one group,
/// enough channels, and tiles that do not waste more than half their outputs.
pub(super) fn applies(geom: &ConvGeom) -> bool {
    let w = &geom.win;
    let Some((oh, ow)) = w.out_hw(geom.h, geom.w) else { return false };
    let shape_fits = w.kernel == (3, 3) && w.stride == (1, 1) && w.dilation == (1, 1) && geom.groups == 1;
    let tiles = oh.div_ceil(M) * ow.div_ceil(M);
    let channels = geom.c >= MIN_CHANNELS && geom.o >= MIN_CHANNELS && geom.c * geom.o <= MAX_CHANNEL_PAIRS;
    let enough = channels && geom.n * tiles >= MIN_TILES;
    shape_fits && enough && oh * ow > 0 && tiles * M * M <= 2 * oh * ow && enabled()
}

fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_CPU_WINOGRAD").map_or(true, |v| v != "0"))
}

/// `m x` for a constant matrix: the tests' reference for the written-out transforms.
#[cfg_attr(not(test), allow(dead_code))]
fn mul<const R: usize, const C: usize>(m: &[[f64; C]; R], x: &[f64; C]) -> [f64; R] {
    m.map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
}

/// `mᵀ x`.
#[cfg_attr(not(test), allow(dead_code))]
fn mul_t<const R: usize, const C: usize>(m: &[[f64; C]; R], x: &[f64; R]) -> [f64; C] {
    std::array::from_fn(|j| (0..R).map(|i| m[i][j] * x[i]).sum())
}

/// `t x tᵀ` for a square tile x, given `t` as a function on vectors (a matrix or its
/// transpose): columns first, then rows. For the weights' transforms (f64, once per call)
/// and the tests; the data's go through [`sandwich_lanes`].
#[inline(always)]
fn sandwich<V: Copy, const R: usize, const C: usize>(x: &[[V; C]; C], t: impl Fn(&[V; C]) -> [V; R]) -> [[V; R]; R] {
    let cols: [[V; R]; C] = std::array::from_fn(|q| t(&std::array::from_fn(|r| x[r][q])));
    std::array::from_fn(|i| t(&std::array::from_fn(|q| cols[q][i])))
}

/// Channels transformed side by side: 8 channels of one tile per `[T; L]` vector, so the
/// compiler vectorises the transforms.
const L: usize = 8;
type Lanes<T> = [T; L];
/// A square tile of side S, lane by lane.
type Tile<T, const S: usize> = [[Lanes<T>; S]; S];

/// `out = t x tᵀ` for every lane of `x`, `t` given as a map on one lane's vector (one of
/// the four below). Buffers are the caller's: returned arrays of this size became memcpy
/// calls (a third of the time).
#[inline(always)]
fn sandwich_lanes<T: Float, const I: usize, const O: usize>(
    x: &Tile<T, I>,
    tmp: &mut [[Lanes<T>; I]; O],
    out: &mut Tile<T, O>,
    t: impl Fn([T; I]) -> [T; O],
) {
    for q in 0..I {
        for lane in 0..L {
            let y = t(std::array::from_fn(|r| x[r][q][lane]));
            for (i, v) in y.into_iter().enumerate() {
                tmp[i][q][lane] = v;
            }
        }
    }
    for (row, dst) in tmp.iter().zip(out.iter_mut()) {
        for lane in 0..L {
            let y = t(std::array::from_fn(|q| row[q][lane]));
            for (j, v) in y.into_iter().enumerate() {
                dst[j][lane] = v;
            }
        }
    }
}

/// G g: the weight transform (in f64, once per call: the iterator form of `mul` here was
/// 10% of the MNIST CNN's step, serially).
#[inline(always)]
fn weight_t([g0, g1, g2]: [f64; 3]) -> [f64; A] {
    let (even, odd) = (g0 + g2, g1);
    [
        g0 / 4.0,
        -(even + odd) / 6.0,
        -(even - odd) / 6.0,
        (g0 / 4.0 + g2) / 6.0 + odd / 12.0,
        (g0 / 4.0 + g2) / 6.0 - odd / 12.0,
        g2,
    ]
}

/// Gᵀ u: the weight gradient's transform (G's adjoint).
#[inline(always)]
fn weight_grad_t([u0, u1, u2, u3, u4, u5]: [f64; A]) -> [f64; 3] {
    [u0 / 4.0 - (u1 + u2) / 6.0 + (u3 + u4) / 24.0, (u2 - u1) / 6.0 + (u3 - u4) / 12.0, (u3 + u4 - u1 - u2) / 6.0 + u5]
}

/// Bᵀ d: the input transform.
#[inline(always)]
fn input_t<T: Float>([d0, d1, d2, d3, d4, d5]: [T; A]) -> [T; A] {
    let (two, four, five) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    [
        four * d0 - five * d2 + d4,
        (d3 + d4) - four * (d1 + d2),
        (d4 - d3) + four * (d1 - d2),
        (d4 - d2) + two * (d3 - d1),
        (d4 - d2) - two * (d3 - d1),
        four * d1 - five * d3 + d5,
    ]
}

/// B v: the input gradient's transform (Bᵀ's adjoint).
#[inline(always)]
fn input_grad_t<T: Float>([v0, v1, v2, v3, v4, v5]: [T; A]) -> [T; A] {
    let (two, four, five) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(5.0));
    [
        four * v0,
        four * (v2 - v1 + v5) + two * (v4 - v3),
        -(five * v0 + four * (v1 + v2) + v3 + v4),
        (v1 - v2) + two * (v3 - v4) - five * v5,
        v0 + v1 + v2 + v3 + v4,
        v5,
    ]
}

/// Aᵀ m: the output transform.
#[inline(always)]
fn output_t<T: Float>([m0, m1, m2, m3, m4, m5]: [T; A]) -> [T; M] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    [
        m0 + (m1 + m2) + (m3 + m4),
        (m1 - m2) + two * (m3 - m4),
        (m1 + m2) + four * (m3 + m4),
        (m1 - m2) + eight * (m3 - m4) + m5,
    ]
}

/// A y: the output gradient's transform (Aᵀ's adjoint).
#[inline(always)]
fn output_grad_t<T: Float>([y0, y1, y2, y3]: [T; M]) -> [T; A] {
    let (two, four, eight) = (T::from_f64(2.0), T::from_f64(4.0), T::from_f64(8.0));
    [
        y0,
        (y0 + y2) + (y1 + y3),
        (y0 + y2) - (y1 + y3),
        (y0 + four * y2) + (two * y1 + eight * y3),
        (y0 + four * y2) - (two * y1 + eight * y3),
        y3,
    ]
}

/// The distance between consecutive ξ slices of a transformed buffer holding `len`
/// elements each: one cache line more, so that the 36 slices a transform reads or writes
/// together do not share cache sets. (With U's 8 KiB slices, every store of the weight
/// transform missed: 36 lines in one 8-way set.)
#[inline(always)]
fn skewed(len: usize) -> usize {
    len + 16
}

/// A convolution's tiling and its transformed weights, shared by every block of a call.
///
/// Inside a block, data is channels-last with channels padded to whole lanes (`cp`, `op`):
/// the lanes of every transform are 8 channels of one tile, so each of its loads and
/// stores is one contiguous vector. (Lanes over 8 tiles needed a gather per lane: the
/// vector loads that followed the scalar stores stalled, and the transforms cost more than
/// the GEMMs.) The block's input (and, backward, its output gradient) is transposed into
/// that layout once, and its output (or input gradient) out of it, in 8 x 8 blocks.
pub(super) struct Winograd<T> {
    c: usize,
    o: usize,
    /// c and o rounded up to whole lanes.
    cp: usize,
    op: usize,
    h: usize,
    w: usize,
    pad: (isize, isize),
    oh: usize,
    ow: usize,
    /// Tiles per image: th rows of tw.
    th: usize,
    tw: usize,
    /// U [ξ][cp][op] (zero for the padding channels).
    u: Vec<T>,
    /// Images per block forward and backward, fixed by the geometry alone (so the weight
    /// gradient's summation order does not depend on the thread count).
    per_block: [usize; 2],
    n: usize,
}

/// A block's working buffers.
pub(super) struct Scratch<T> {
    /// The block's input (or output gradient), channels-last: [count, h, w, cp].
    nhwc: Vec<T>,
    /// Transformed inputs V (or their gradients dV): [ξ][t][cp].
    v: Vec<T>,
    /// Products M (or their gradients dM): [ξ][t][op].
    m: Vec<T>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { nhwc: Vec::new(), v: Vec::new(), m: Vec::new() }
    }
}

/// Where a block's tile sits: its image and its tile row and column.
#[derive(Clone, Copy)]
struct TileAt {
    img: usize,
    ty: usize,
    tx: usize,
}

impl<T: Float> Winograd<T> {
    /// The plan for `geom` (which [`applies`]) with weight [o, c, 3, 3].
    pub(super) fn new(w: &[T], geom: &ConvGeom) -> Self {
        let (oh, ow) = geom.win.out_hw(geom.h, geom.w).expect("geometry checked by the caller");
        let (th, tw) = (oh.div_ceil(M), ow.div_ceil(M));
        let (c, o) = (geom.c, geom.o);
        let (cp, op) = (c.next_multiple_of(L), o.next_multiple_of(L));
        let per_block = [FORWARD_TILES, BACKWARD_TILES].map(|t| t.div_ceil(th * tw).min(geom.n.max(1)));
        // U = G g Gᵀ, computed in f64 and rounded once.
        let mut u = vec![T::zero(); XI * skewed(cp * op)];
        // Output channels innermost: consecutive kernels write neighbouring elements of U (in
        // weight order, each of the 36 stores missed the cache: 3% of the CNN's step).
        for ch in 0..c {
            for k in 0..o {
                let g = &w[(k * c + ch) * 9..][..9];
                let g: [[f64; 3]; 3] = std::array::from_fn(|r| std::array::from_fn(|q| g[r * 3 + q].to_f64()));
                for (xi, &val) in sandwich(&g, |v| weight_t(*v)).as_flattened().iter().enumerate() {
                    u[xi * skewed(cp * op) + ch * op + k] = T::from_f64(val);
                }
            }
        }
        let pad = (geom.win.padding.0 as isize, geom.win.padding.1 as isize);
        Winograd { c, o, cp, op, h: geom.h, w: geom.w, pad, oh, ow, th, tw, u, per_block, n: geom.n }
    }

    /// Images per block of the forward (`forward`) or the backward.
    pub(super) fn images_per_block(&self, forward: bool) -> usize {
        self.per_block[usize::from(!forward)]
    }

    /// Images per backward task: whole blocks, at most [`BACKWARD_TASKS`] tasks (each holds
    /// a partial weight gradient of 36·c·o elements until they are summed; fewer for large
    /// layers, see [`PARTIALS_BUDGET`]).
    pub(super) fn backward_task_images(&self) -> usize {
        let per = self.per_block[1];
        let tasks = (PARTIALS_BUDGET / self.du_len()).clamp(2, BACKWARD_TASKS);
        per * self.n.div_ceil(per).div_ceil(tasks).max(1)
    }

    /// gemm's own threads only when there are fewer blocks than threads to share.
    fn par(&self, tb: usize) -> Parallelism {
        let per_block = self.per_block[0].max(self.per_block[1]);
        let blocks = self.n.div_ceil(per_block);
        if blocks >= super::threads() || XI * self.op * self.cp * tb < super::matmul::PAR_GEMM_MACS {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        }
    }

    fn tile_at(&self, t: usize) -> TileAt {
        let per_img = self.th * self.tw;
        TileAt { img: t / per_img, ty: t % per_img / self.tw, tx: t % self.tw }
    }

    /// The output rows and columns of a tile inside the plane.
    fn extent(&self, at: TileAt) -> (usize, usize) {
        ((self.oh - at.ty * M).min(M), (self.ow - at.tx * M).min(M))
    }

    /// V [ξ][t][cp] of the block's channels-last input [count, h, w, cp].
    #[inline(always)]
    fn transform_input(&self, xs: &[T], tb: usize, v: &mut [T]) {
        let (cp, hw) = (self.cp, self.h * self.w);
        let (h, w) = (self.h as isize, self.w as isize);
        let (mut d, mut tmp, mut out) = ([[[T::zero(); L]; A]; A], [[[T::zero(); L]; A]; A], [[[T::zero(); L]; A]; A]);
        for t in 0..tb {
            let at = self.tile_at(t);
            let (y0, x0) = ((at.ty * M) as isize - self.pad.0, (at.tx * M) as isize - self.pad.1);
            let image = &xs[at.img * hw * cp..][..hw * cp];
            for c0 in (0..cp).step_by(L) {
                for (r, row) in d.iter_mut().enumerate() {
                    let y = y0 + r as isize;
                    for (q, lane) in row.iter_mut().enumerate() {
                        let xx = x0 + q as isize;
                        if y >= 0 && y < h && xx >= 0 && xx < w {
                            lane.copy_from_slice(&image[(y as usize * self.w + xx as usize) * cp + c0..][..L]);
                        } else {
                            *lane = [T::zero(); L];
                        }
                    }
                }
                sandwich_lanes(&d, &mut tmp, &mut out, input_t);
                for (xi, lane) in out.iter().flatten().enumerate() {
                    v[xi * skewed(tb * cp) + t * cp + c0..][..L].copy_from_slice(lane);
                }
            }
        }
    }

    /// The convolution of `count` images x [count, c, h, w] into out [count, o, oh, ow],
    /// the bias added.
    pub(super) fn forward_block(&self, x: &[T], count: usize, bias: Option<&[T]>, s: &mut Scratch<T>, out: &mut [T]) {
        let (cp, op) = (self.cp, self.op);
        let tb = count * self.th * self.tw;
        s.nhwc.resize(count * self.h * self.w * cp, T::zero());
        s.v.resize(XI * skewed(tb * cp), T::zero());
        s.m.resize(XI * skewed(tb * op), T::zero());
        super::simd::vectorize(
            #[inline(always)]
            || {
                channels_last(x, (count, self.c, self.h * self.w), cp, &mut s.nhwc);
                self.transform_input(&s.nhwc, tb, &mut s.v);
            },
        );
        // M[ξ] (t x op) = V[ξ] (t x cp) @ U[ξ] (cp x op).
        for xi in 0..XI {
            gemm_into(
                tb,
                op,
                cp,
                &mut s.m[xi * skewed(tb * op)..][..tb * op],
                false,
                Mat::rows(&s.v[xi * skewed(tb * cp)..][..tb * cp], cp),
                Mat::rows(&self.u[xi * skewed(cp * op)..][..cp * op], op),
                self.par(tb),
            );
        }
        super::simd::vectorize(
            #[inline(always)]
            || {
                s.nhwc.resize(count * self.oh * self.ow * op, T::zero());
                self.transform_output(&s.m, tb, bias, &mut s.nhwc, out)
            },
        );
    }

    /// out [count, o, oh, ow] = Aᵀ M A per tile, plus the bias: each tile's 8-channel lanes
    /// go to the channels-last `staging` [count, oh, ow, op] as whole vectors, then the
    /// planes are transposed out of it (8 scalar stores per lane into 8 planes were the
    /// forward's most expensive phase).
    #[inline(always)]
    fn transform_output(&self, m: &[T], tb: usize, bias: Option<&[T]>, staging: &mut [T], out: &mut [T]) {
        let (o, op, ohw) = (self.o, self.op, self.oh * self.ow);
        let (mut mm, mut tmp, mut y) = ([[[T::zero(); L]; A]; A], [[[T::zero(); L]; A]; M], [[[T::zero(); L]; M]; M]);
        for t in 0..tb {
            let at = self.tile_at(t);
            let (rows, cols) = self.extent(at);
            let image = &mut staging[at.img * ohw * op..][..ohw * op];
            for k0 in (0..op).step_by(L) {
                for (xi, lane) in mm.iter_mut().flatten().enumerate() {
                    lane.copy_from_slice(&m[xi * skewed(tb * op) + t * op + k0..][..L]);
                }
                sandwich_lanes(&mm, &mut tmp, &mut y, output_t);
                let b: Lanes<T> =
                    std::array::from_fn(|j| bias.and_then(|b| b.get(k0 + j)).copied().unwrap_or(T::zero()));
                for (r, yr) in y.iter().enumerate().take(rows) {
                    for (q, yq) in yr.iter().enumerate().take(cols) {
                        let p = (at.ty * M + r) * self.ow + at.tx * M + q;
                        let dst = &mut image[p * op + k0..][..L];
                        for ((d, &v), &bj) in dst.iter_mut().zip(yq).zip(&b) {
                            *d = v + bj;
                        }
                    }
                }
            }
        }
        let count = tb / (self.th * self.tw);
        channels_first(staging, (count, o, ohw), op, out, false);
    }

    /// The backward of `forward_block` for the same images: `g` [count, o, oh, ow] is the
    /// gradient of its output. Adds the input gradient into `dx` [count, c, h, w] when it is
    /// not empty, and the weight gradient, in the transformed domain, into `du` [ξ][cp][op]
    /// when that is not empty (see [`Winograd::weight_grad`]).
    pub(super) fn backward_block(
        &self,
        g: &[T],
        x: &[T],
        count: usize,
        s: &mut Scratch<T>,
        dx: &mut [T],
        du: &mut [T],
    ) {
        let (cp, op) = (self.cp, self.op);
        let tb = count * self.th * self.tw;
        let ohw = self.oh * self.ow;
        s.m.resize(XI * skewed(tb * op), T::zero());
        s.v.resize(XI * skewed(tb * cp), T::zero());
        // dM [ξ][t][op] = A dY Aᵀ per tile (outputs past the plane's edge have no gradient).
        super::simd::vectorize(
            #[inline(always)]
            || {
                s.nhwc.resize(count * ohw * op, T::zero());
                channels_last(g, (count, self.o, ohw), op, &mut s.nhwc);
                self.transform_output_grad(&s.nhwc, tb, &mut s.m);
            },
        );
        if !du.is_empty() {
            // dU[ξ] (cp x op) += V[ξ]ᵀ (cp x t) @ dM[ξ] (t x op).
            super::simd::vectorize(
                #[inline(always)]
                || {
                    s.nhwc.resize(count * self.h * self.w * cp, T::zero());
                    channels_last(x, (count, self.c, self.h * self.w), cp, &mut s.nhwc);
                    self.transform_input(&s.nhwc, tb, &mut s.v);
                },
            );
            for xi in 0..XI {
                gemm_into(
                    cp,
                    op,
                    tb,
                    &mut du[xi * skewed(cp * op)..][..cp * op],
                    true,
                    Mat::transposed(&s.v[xi * skewed(tb * cp)..][..tb * cp], cp),
                    Mat::rows(&s.m[xi * skewed(tb * op)..][..tb * op], op),
                    self.par(tb),
                );
            }
        }
        if dx.is_empty() {
            return;
        }
        // dV[ξ] (t x cp) = dM[ξ] (t x op) @ U[ξ]ᵀ (op x cp), then dx += B dV Bᵀ per tile.
        for xi in 0..XI {
            gemm_into(
                tb,
                cp,
                op,
                &mut s.v[xi * skewed(tb * cp)..][..tb * cp],
                false,
                Mat::rows(&s.m[xi * skewed(tb * op)..][..tb * op], op),
                Mat::transposed(&self.u[xi * skewed(cp * op)..][..cp * op], op),
                self.par(tb),
            );
        }
        super::simd::vectorize(
            #[inline(always)]
            || {
                s.nhwc.clear();
                s.nhwc.resize(count * self.h * self.w * cp, T::zero());
                self.transform_input_grad(&s.v, tb, &mut s.nhwc);
                channels_first(&s.nhwc, (count, self.c, self.h * self.w), cp, dx, true);
            },
        );
    }

    /// dM [ξ][t][op] = A dY Aᵀ of the block's channels-last output gradient [count, oh, ow, op].
    #[inline(always)]
    fn transform_output_grad(&self, gs: &[T], tb: usize, m: &mut [T]) {
        let (op, ohw) = (self.op, self.oh * self.ow);
        let (mut dy, mut tmp, mut dm) = ([[[T::zero(); L]; M]; M], [[[T::zero(); L]; M]; A], [[[T::zero(); L]; A]; A]);
        for t in 0..tb {
            let at = self.tile_at(t);
            let (rows, cols) = self.extent(at);
            let image = &gs[at.img * ohw * op..][..ohw * op];
            for k0 in (0..op).step_by(L) {
                for (r, row) in dy.iter_mut().enumerate() {
                    for (q, lane) in row.iter_mut().enumerate() {
                        if r < rows && q < cols {
                            let p = (at.ty * M + r) * self.ow + at.tx * M + q;
                            lane.copy_from_slice(&image[p * op + k0..][..L]);
                        } else {
                            *lane = [T::zero(); L];
                        }
                    }
                }
                sandwich_lanes(&dy, &mut tmp, &mut dm, output_grad_t);
                for (xi, lane) in dm.iter().flatten().enumerate() {
                    m[xi * skewed(tb * op) + t * op + k0..][..L].copy_from_slice(lane);
                }
            }
        }
    }

    /// Adds B dV Bᵀ of every tile into the block's channels-last input gradient
    /// [count, h, w, cp]; tiles overlap (their gradients add), parts on padding are dropped.
    #[inline(always)]
    fn transform_input_grad(&self, v: &[T], tb: usize, dxs: &mut [T]) {
        let (cp, hw) = (self.cp, self.h * self.w);
        let (h, w) = (self.h as isize, self.w as isize);
        let (mut dv, mut tmp, mut dd) = ([[[T::zero(); L]; A]; A], [[[T::zero(); L]; A]; A], [[[T::zero(); L]; A]; A]);
        for t in 0..tb {
            let at = self.tile_at(t);
            let (y0, x0) = ((at.ty * M) as isize - self.pad.0, (at.tx * M) as isize - self.pad.1);
            let image = &mut dxs[at.img * hw * cp..][..hw * cp];
            for c0 in (0..cp).step_by(L) {
                for (xi, lane) in dv.iter_mut().flatten().enumerate() {
                    lane.copy_from_slice(&v[xi * skewed(tb * cp) + t * cp + c0..][..L]);
                }
                sandwich_lanes(&dv, &mut tmp, &mut dd, input_grad_t);
                for (r, row) in dd.iter().enumerate() {
                    let y = y0 + r as isize;
                    for (q, lane) in row.iter().enumerate() {
                        let xx = x0 + q as isize;
                        if y >= 0 && y < h && xx >= 0 && xx < w {
                            let dst = &mut image[(y as usize * self.w + xx as usize) * cp + c0..][..L];
                            for (d, &val) in dst.iter_mut().zip(lane) {
                                *d = *d + val;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The length of the transformed weight gradient `backward_block` accumulates into.
    pub(super) fn du_len(&self) -> usize {
        XI * skewed(self.cp * self.op)
    }

    /// dW [o, c, 3, 3] = Gᵀ dU G (in f64) from the transformed gradient summed over all
    /// blocks.
    pub(super) fn weight_grad(&self, du: &[T]) -> Vec<T> {
        let (c, cp, op) = (self.c, self.cp, self.op);
        let mut dw = vec![T::zero(); self.o * c * 9];
        for ch in 0..c {
            for k in 0..self.o {
                let t: [[f64; A]; A] = std::array::from_fn(|r| {
                    std::array::from_fn(|q| du[(r * A + q) * skewed(cp * op) + ch * op + k].to_f64())
                });
                let dst = &mut dw[(k * c + ch) * 9..][..9];
                for (d, &val) in dst.iter_mut().zip(sandwich(&t, |v| weight_grad_t(*v)).as_flattened()) {
                    *d = T::from_f64(val);
                }
            }
        }
        dw
    }
}

/// src [count, c, hw] -> dst [count, hw, cp], the channels past c zero. In 8 x 8 blocks,
/// transposed in registers for f32 (one position at a time, the loads hit 8-32 planes and
/// the stores a new cache line each, and the transposes cost more than all transforms
/// together; element by element within blocks, still 15-25% of the conv's time).
#[inline(always)]
fn channels_last<T: Float>(src: &[T], (count, c, hw): (usize, usize, usize), cp: usize, dst: &mut [T]) {
    for (image, out) in src.chunks_exact(c * hw).zip(dst.chunks_exact_mut(hw * cp)).take(count) {
        for p0 in (0..hw).step_by(L) {
            let np = L.min(hw - p0);
            for c0 in (0..cp).step_by(L) {
                if np == L && c0 + L <= c {
                    let src = T::as_f32(&image[c0 * hw + p0..]);
                    let dst = T::as_f32_mut(&mut out[p0 * cp + c0..]);
                    if let (Some(src), Some(dst)) = (src, dst) {
                        if super::simd::transpose_8x8(src, hw, dst, cp, false) {
                            continue;
                        }
                    }
                }
                let mut block = [[T::zero(); L]; L]; // [channel][position]
                for (j, row) in block.iter_mut().enumerate().take(c.saturating_sub(c0).min(L)) {
                    let src = &image[(c0 + j) * hw + p0..];
                    if np == L {
                        // A fixed-size copy: a variable one is a memcpy call per row.
                        *row = src[..L].try_into().expect("L elements");
                    } else {
                        row[..np].copy_from_slice(&src[..np]);
                    }
                }
                for p in 0..np {
                    let lane: Lanes<T> = std::array::from_fn(|j| block[j][p]);
                    out[(p0 + p) * cp + c0..][..L].copy_from_slice(&lane);
                }
            }
        }
    }
}

/// dst [count, c, hw] = src [count, hw, cp] (`add`: +=; the channels past c dropped), in
/// 8 x 8 blocks.
#[inline(always)]
fn channels_first<T: Float>(src: &[T], (count, c, hw): (usize, usize, usize), cp: usize, dst: &mut [T], add: bool) {
    for (image, out) in src.chunks_exact(hw * cp).zip(dst.chunks_exact_mut(c * hw)).take(count) {
        for p0 in (0..hw).step_by(L) {
            let np = L.min(hw - p0);
            for c0 in (0..c).step_by(L) {
                if np == L && c0 + L <= c {
                    let src = T::as_f32(&image[p0 * cp + c0..]);
                    let dst = T::as_f32_mut(&mut out[c0 * hw + p0..]);
                    if let (Some(src), Some(dst)) = (src, dst) {
                        if super::simd::transpose_8x8(src, cp, dst, hw, add) {
                            continue;
                        }
                    }
                }
                let mut block = [[T::zero(); L]; L]; // [position][channel]
                for (p, row) in block.iter_mut().enumerate().take(np) {
                    row.copy_from_slice(&image[(p0 + p) * cp + c0..][..L]);
                }
                for j in 0..L.min(c - c0) {
                    let plane = &mut out[(c0 + j) * hw + p0..][..np];
                    for (p, v) in plane.iter_mut().enumerate() {
                        *v = if add { *v + block[p][j] } else { block[p][j] };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 1-D identity the whole route rests on: Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation of a
    /// 6-sample signal with a 3-tap filter, checked against the sum written out.
    #[test]
    fn one_dimensional_minimal_filtering_is_correlation() {
        let d = [0.3, -1.7, 2.2, 0.9, -0.4, 1.3];
        let g = [0.7, -0.2, 1.1];
        let (u, v) = (mul(&G, &g), mul(&BT, &d));
        let y = mul(&AT, &std::array::from_fn::<f64, A, _>(|i| u[i] * v[i]));
        for (i, &yi) in y.iter().enumerate() {
            let want = d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2];
            assert!((yi - want).abs() < 1e-12, "output {i}: {yi} vs {want}");
        }
    }

    /// Each transform written out by hand is its matrix (or the matrix's transpose).
    #[test]
    fn written_out_transforms_are_the_matrices() {
        fn check<const I: usize, const O: usize>(
            name: &str,
            f: fn([f64; I]) -> [f64; O],
            m: impl Fn(&[f64; I]) -> [f64; O],
        ) {
            for seed in 0..5 {
                let x: [f64; I] = std::array::from_fn(|i| ((i * 7 + seed * 3) % 13) as f64 - 6.5 + 0.1 * seed as f64);
                let (got, want) = (f(x), m(&x));
                for i in 0..O {
                    assert!((got[i] - want[i]).abs() < 1e-12, "{name}: output {i}: {} vs {}", got[i], want[i]);
                }
            }
        }
        check("Bᵀ", input_t::<f64>, |v| mul(&BT, v));
        check("B", input_grad_t::<f64>, |v| mul_t(&BT, v));
        check("Aᵀ", output_t::<f64>, |v| mul(&AT, v));
        check("A", output_grad_t::<f64>, |v| mul_t(&AT, v));
        check("G", weight_t, |v| mul(&G, v));
        check("Gᵀ", weight_grad_t, |v| mul_t(&G, v));
    }

    /// The lane driver applies a transform to columns, then rows, in every lane alike.
    #[test]
    fn sandwich_lanes_is_t_x_t_transposed() {
        let x: Tile<f64, A> = std::array::from_fn(|r| {
            std::array::from_fn(|q| std::array::from_fn(|j| ((r * 5 + q * 3 + j) % 7) as f64 - 3.0))
        });
        let (mut tmp, mut out) = ([[[0.0; L]; A]; M], [[[0.0; L]; M]; M]);
        sandwich_lanes(&x, &mut tmp, &mut out, output_t);
        for j in 0..L {
            let xj: [[f64; A]; A] = std::array::from_fn(|r| std::array::from_fn(|q| x[r][q][j]));
            let want = sandwich(&xj, |v| mul(&AT, v));
            for (r, row) in want.iter().enumerate() {
                for (q, &w) in row.iter().enumerate() {
                    assert!((out[r][q][j] - w).abs() < 1e-12, "lane {j} ({r}, {q}): {} vs {w}", out[r][q][j]);
                }
            }
        }
    }

    /// The weight gradient's transform is the adjoint of the weight transform:
    /// <G x Gᵀ, y> = <x, Gᵀ y G> for any x, y.
    #[test]
    fn the_weight_gradient_transform_is_the_adjoint() {
        let x: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| (i * 3 + j) as f64 * 0.37 - 1.0));
        let y: [[f64; A]; A] = std::array::from_fn(|i| std::array::from_fn(|j| ((i * 7 + j * 5) % 11) as f64 - 5.0));
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        let lhs = dot(sandwich(&x, |v| mul(&G, v)).as_flattened(), y.as_flattened());
        let rhs = dot(x.as_flattened(), sandwich(&y, |v| mul_t(&G, v)).as_flattened());
        assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
