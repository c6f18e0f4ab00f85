// im2col / col2im for conv2d (the CUDA side of src/backend/cpu/conv.rs), for f32, f16 and
// bf16 (math in f32, as the CPU widens half types).
// - im2col: x [n, c, h, w] (any strides) -> cols [n, c*kh*kw, oh*ow] contiguous, one thread
//   per element of cols; taps in the padding read zero.
// - col2im: cols -> x [n, c, h, w] contiguous, the adjoint (summing overlapping windows).
//   One thread per element of x *gathers* its taps instead of scattering with atomics: no
//   two threads write one place, the result is deterministic, and the taps are summed in
//   the CPU's order ((ki, kj) ascending, each tap reaching a pixel at most once), so f32
//   results equal the CPU's bit for bit.
// Work split: grid-stride loops, 256 threads per block.
#include "prelude.cuh"
#include "strided.cuh"
#include "window.cuh"

#define KILN_IM2COL(NAME, T)                                                                    \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ x, T* __restrict__ cols) {     \
        const int64_t L = g.oh * g.ow, K = g.kh * g.kw;                                         \
        KILN_FOR_EACH(i, g.n * g.c * K * L) {                                                   \
            const int64_t ox = i % g.ow, oy = (i / g.ow) % g.oh;                                \
            const int64_t row = i / L; /* (image * c + channel) * K + tap */                     \
            const int64_t kj = row % g.kw, ki = (row / g.kw) % g.kh;                            \
            const int64_t plane = row / K, ch = plane % g.c, b = plane / g.c;                   \
            const int64_t sy = oy * g.sh + ki * g.dh - g.ph, sx = ox * g.sw + kj * g.dw - g.pw; \
            float v = 0.0f;                                                                     \
            if (sy >= 0 && sy < g.h && sx >= 0 && sx < g.w)                                     \
                v = kiln_load(x, g.xoff + b * g.xs[0] + ch * g.xs[1] + sy * g.xs[2] + sx * g.xs[3]); \
            kiln_store(cols, i, v);                                                             \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_IM2COL(im2col_f32, float);
KILN_IM2COL(im2col_f16, __half);
KILN_IM2COL(im2col_bf16, __nv_bfloat16);

#define KILN_COL2IM(NAME, T)                                                                    \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ cols, T* __restrict__ x) {     \
        const int64_t L = g.oh * g.ow, K = g.kh * g.kw;                                         \
        KILN_FOR_EACH(i, g.n * g.c * g.h * g.w) {                                               \
            const int64_t px = i % g.w, py = (i / g.w) % g.h, plane = i / (g.h * g.w);          \
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
