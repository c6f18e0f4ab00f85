// im2col / col2im for conv2d (the CUDA side of src/backend/cpu/conv.rs), for f32, f16 and
// bf16 (math in f32, as the CPU widens half types).
// - im2col: x [n, c, h, w] (any strides) -> cols [n, c*kh*kw, oh*ow] contiguous (or, rows
//   first, [c*kh*kw, n, oh*ow]), one thread per element of cols; taps in the padding read zero.
// - col2im: cols -> x [n, c, h, w] contiguous, the adjoint (summing overlapping windows).
//   One thread per element of x *gathers* its taps instead of scattering with atomics: no
//   two threads write one place, the result is deterministic, and the taps are summed in
//   the CPU's order ((ki, kj) ascending, each tap reaching a pixel at most once), so f32
//   results equal the CPU's bit for bit.
// Work split: grid-stride loops, 256 threads per block; index arithmetic in 32 bits where
// every index fits.
#include "prelude.cuh"
#include "strided.cuh"
#include "window.cuh"

// The coordinates of cols index i = ((((b·c + ch)·kh + ki)·kw + kj)·oh + oy)·ow + ox, peeled
// in U: unsigned 32-bit where every index fits (a 64-bit division is a long software
// sequence on the GPU, and im2col does six per element), else 64-bit.
template <typename U>
__device__ __forceinline__ void kiln_im2col_coords(U j, const KilnWindow2d& g, int64_t& ox, int64_t& oy, int64_t& kj,
                                                   int64_t& ki, int64_t& ch, int64_t& b) {
    const U ow = (U)g.ow, oh = (U)g.oh, kw = (U)g.kw, kh = (U)g.kh, c = (U)g.c;
    ox = (int64_t)(j % ow);
    j /= ow;
    oy = (int64_t)(j % oh);
    j /= oh;
    kj = (int64_t)(j % kw);
    j /= kw;
    ki = (int64_t)(j % kh);
    j /= kh;
    ch = (int64_t)(j % c);
    b = (int64_t)(j / c);
}

// ROWS_FIRST 0: cols [n, c*kh*kw, oh*ow] (the forward's GEMM operand); 1: [c*kh*kw, n, oh*ow],
// each row of every image side by side, which is the weight gradient's GEMM operand (K =
// n*oh*ow) without a transposing copy of the whole column buffer.
#define KILN_IM2COL(NAME, T, ROWS_FIRST)                                                        \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ x, T* __restrict__ cols) {     \
        const int64_t total = g.n * g.c * g.kh * g.kw * g.oh * g.ow;                            \
        const bool narrow = total <= 0xffffffffll;                                              \
        KILN_FOR_EACH(i, total) {                                                               \
            int64_t ox, oy, kj, ki, ch, b;                                                      \
            if (narrow) kiln_im2col_coords<uint32_t>((uint32_t)i, g, ox, oy, kj, ki, ch, b);    \
            else kiln_im2col_coords<uint64_t>((uint64_t)i, g, ox, oy, kj, ki, ch, b);           \
            const int64_t sy = oy * g.sh + ki * g.dh - g.ph, sx = ox * g.sw + kj * g.dw - g.pw; \
            float v = 0.0f;                                                                     \
            if (sy >= 0 && sy < g.h && sx >= 0 && sx < g.w)                                     \
                v = kiln_load(x, g.xoff + b * g.xs[0] + ch * g.xs[1] + sy * g.xs[2] + sx * g.xs[3]); \
            int64_t o = i;                                                                      \
            if (ROWS_FIRST) {                                                                   \
                const int64_t L = g.oh * g.ow, row = (ch * g.kh + ki) * g.kw + kj;              \
                o = (row * g.n + b) * L + oy * g.ow + ox;                                       \
            }                                                                                   \
            kiln_store(cols, o, v);                                                             \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_IM2COL(im2col_f32, float, 0);
KILN_IM2COL(im2col_f16, __half, 0);
KILN_IM2COL(im2col_bf16, __nv_bfloat16, 0);
KILN_IM2COL(im2col_rows_first_f32, float, 1);
KILN_IM2COL(im2col_rows_first_f16, __half, 1);
KILN_IM2COL(im2col_rows_first_bf16, __nv_bfloat16, 1);

#define KILN_COL2IM(NAME, T)                                                                    \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ cols, T* __restrict__ x) {     \
        const int64_t L = g.oh * g.ow, K = g.kh * g.kw;                                         \
        const int64_t total = g.n * g.c * g.h * g.w;                                            \
        const bool narrow = total <= 0xffffffffll;                                              \
        KILN_FOR_EACH(i, total) {                                                               \
            int64_t px, py, plane;                                                              \
            if (narrow) {                                                                       \
                const uint32_t j = (uint32_t)i, w = (uint32_t)g.w, h = (uint32_t)g.h;           \
                px = j % w, py = j / w % h, plane = j / w / h;                                  \
            } else {                                                                            \
                px = i % g.w, py = i / g.w % g.h, plane = i / g.w / g.h;                        \
            }                                                                                   \
            const T* rows = cols + plane * K * L;                                               \
            float acc = 0.0f;                                                                   \
            for (int64_t ki = 0; ki < g.kh; ++ki) {                                             \
                const int64_t oy = kiln_window_out(py, ki, g.sh, g.ph, g.dh, g.oh);              \
                if (oy < 0) continue;                                                           \
                for (int64_t kj = 0; kj < g.kw; ++kj) {                                         \
                    const int64_t ox = kiln_window_out(px, kj, g.sw, g.pw, g.dw, g.ow);          \
                    if (ox < 0) continue;                                                       \
                    acc += kiln_load(rows, (ki * g.kw + kj) * L + oy * g.ow + ox);              \
                }                                                                               \
            }                                                                                   \
            kiln_store(x, i, acc);                                                              \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_COL2IM(col2im_f32, float);
KILN_COL2IM(col2im_f16, __half);
KILN_COL2IM(col2im_bf16, __nv_bfloat16);
