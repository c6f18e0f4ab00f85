// 2-D pooling over x [n, c, h, w] (the CUDA side of src/backend/cpu/pool.rs and of
// Tensor::avg_pool2d), f32 / f16 / bf16 with math in f32. Outputs are contiguous
// [n, c, oh, ow]; x may have any strides. Work split: grid-stride loops, one output (forward)
// or one input pixel (backward) per thread, 256 threads per block.
//
// The backward kernels gather: each input pixel visits the few windows that contain it
// (kiln_window_out) and sums their contributions itself. No atomics, deterministic, and in
// the CPU's order, so max-pool gradients equal the CPU's bit for bit.
#include "prelude.cuh"
#include "strided.cuh"
#include "window.cuh"

// Max over each window, and the argmax as an index into its h*w plane (what the backward
// needs). The CPU's rule for choosing: the first tap inside the image, then any strictly
// greater value; a NaN wins over numbers. Among several NaNs its unpadded path keeps the
// first and its padded path the last: mirrored here so the indices agree exactly.
#define KILN_MAX_POOL(NAME, T)                                                                  \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ x, T* __restrict__ vals,        \
                          int64_t* __restrict__ idx) {                                          \
        const bool padded = g.ph != 0 || g.pw != 0;                                             \
        KILN_FOR_EACH(i, g.n * g.c * g.oh * g.ow) {                                             \
            const int64_t ox = i % g.ow, oy = (i / g.ow) % g.oh, plane = i / (g.oh * g.ow);     \
            const int64_t base = g.xoff + (plane / g.c) * g.xs[0] + (plane % g.c) * g.xs[1];    \
            float best = -__int_as_float(0x7f800000);                                           \
            int64_t best_i = -1;                                                                \
            for (int64_t ki = 0; ki < g.kh; ++ki) {                                             \
                const int64_t sy = oy * g.sh + ki * g.dh - g.ph;                                \
                if (sy < 0 || sy >= g.h) continue;                                              \
                for (int64_t kj = 0; kj < g.kw; ++kj) {                                         \
                    const int64_t sx = ox * g.sw + kj * g.dw - g.pw;                            \
                    if (sx < 0 || sx >= g.w) continue;                                          \
                    const float v = kiln_load(x, base + sy * g.xs[2] + sx * g.xs[3]);           \
                    if (best_i < 0 || v > best || (v != v && (padded || best == best))) {       \
                        best = v;                                                               \
                        best_i = sy * g.w + sx;                                                 \
                    }                                                                           \
                }                                                                               \
            }                                                                                   \
            kiln_store(vals, i, best);                                                          \
            idx[i] = best_i < 0 ? 0 : best_i;                                                   \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_MAX_POOL(max_pool2d_f32, float);
KILN_MAX_POOL(max_pool2d_f16, __half);
KILN_MAX_POOL(max_pool2d_bf16, __nv_bfloat16);

// gx [n, c, h, w] (contiguous) = Σ g[o] over the outputs o whose argmax idx[o] is this
// pixel; g and idx contiguous [n, c, oh, ow]. Only windows containing the pixel can name
// it. Taps are walked in descending order so the outputs come in ascending order (oy, ox),
// the order in which the CPU adds them.
#define KILN_MAX_POOL_BACKWARD(NAME, T)                                                         \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ grad, const int64_t* __restrict__ idx, \
                          T* __restrict__ gx) {                                                 \
        KILN_FOR_EACH(i, g.n * g.c * g.h * g.w) {                                               \
            const int64_t px = i % g.w, py = (i / g.w) % g.h, plane = i / (g.h * g.w);          \
            const int64_t me = py * g.w + px, obase = plane * g.oh * g.ow;                      \
            float acc = 0.0f;                                                                   \
            for (int64_t ki = g.kh - 1; ki >= 0; --ki) {                                        \
                const int64_t oy = kiln_window_out(py, ki, g.sh, g.ph, g.dh, g.oh);              \
                if (oy < 0) continue;                                                           \
                for (int64_t kj = g.kw - 1; kj >= 0; --kj) {                                    \
                    const int64_t ox = kiln_window_out(px, kj, g.sw, g.pw, g.dw, g.ow);          \
                    if (ox < 0) continue;                                                       \
                    const int64_t o = obase + oy * g.ow + ox;                                   \
                    if (idx[o] == me) acc += kiln_load(grad, o);                                \
                }                                                                               \
            }                                                                                   \
            kiln_store(gx, i, acc);                                                             \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_MAX_POOL_BACKWARD(max_pool2d_backward_f32, float);
KILN_MAX_POOL_BACKWARD(max_pool2d_backward_f16, __half);
KILN_MAX_POOL_BACKWARD(max_pool2d_backward_bf16, __nv_bfloat16);

// Mean over each window, zero padding counted (PyTorch's count_include_pad default, as
// Tensor::avg_pool2d: unfold, then mean over the kh*kw taps).
#define KILN_AVG_POOL(NAME, T)                                                                  \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ x, T* __restrict__ y) {        \
        const float inv = 1.0f / (float)(g.kh * g.kw);                                          \
        KILN_FOR_EACH(i, g.n * g.c * g.oh * g.ow) {                                             \
            const int64_t ox = i % g.ow, oy = (i / g.ow) % g.oh, plane = i / (g.oh * g.ow);     \
            const int64_t base = g.xoff + (plane / g.c) * g.xs[0] + (plane % g.c) * g.xs[1];    \
            float acc = 0.0f;                                                                   \
            for (int64_t ki = 0; ki < g.kh; ++ki) {                                             \
                const int64_t sy = oy * g.sh + ki * g.dh - g.ph;                                \
                if (sy < 0 || sy >= g.h) continue;                                              \
                for (int64_t kj = 0; kj < g.kw; ++kj) {                                         \
                    const int64_t sx = ox * g.sw + kj * g.dw - g.pw;                            \
                    if (sx < 0 || sx >= g.w) continue;                                          \
                    acc += kiln_load(x, base + sy * g.xs[2] + sx * g.xs[3]);                    \
                }                                                                               \
            }                                                                                   \
            kiln_store(y, i, acc * inv);                                                        \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_AVG_POOL(avg_pool2d_f32, float);
KILN_AVG_POOL(avg_pool2d_f16, __half);
KILN_AVG_POOL(avg_pool2d_bf16, __nv_bfloat16);

// gx [n, c, h, w] (contiguous) = Σ g[o] / (kh*kw) over the windows o containing the pixel;
// g contiguous [n, c, oh, ow].
#define KILN_AVG_POOL_BACKWARD(NAME, T)                                                         \
    KILN_KERNEL void NAME(KilnWindow2d g, const T* __restrict__ grad, T* __restrict__ gx) {    \
        const float inv = 1.0f / (float)(g.kh * g.kw);                                          \
        KILN_FOR_EACH(i, g.n * g.c * g.h * g.w) {                                               \
            const int64_t px = i % g.w, py = (i / g.w) % g.h, plane = i / (g.h * g.w);          \
            const int64_t obase = plane * g.oh * g.ow;                                          \
            float acc = 0.0f;                                                                   \
            for (int64_t ki = 0; ki < g.kh; ++ki) {                                             \
                const int64_t oy = kiln_window_out(py, ki, g.sh, g.ph, g.dh, g.oh);              \
                if (oy < 0) continue;                                                           \
                for (int64_t kj = 0; kj < g.kw; ++kj) {                                         \
                    const int64_t ox = kiln_window_out(px, kj, g.sw, g.pw, g.dw, g.ow);          \
                    if (ox < 0) continue;                                                       \
                    acc += kiln_load(grad, obase + oy * g.ow + ox) * inv;                       \
                }                                                                               \
            }                                                                                   \
            kiln_store(gx, i, acc);                                                             \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_AVG_POOL_BACKWARD(avg_pool2d_backward_f32, float);
KILN_AVG_POOL_BACKWARD(avg_pool2d_backward_f16, __half);
KILN_AVG_POOL_BACKWARD(avg_pool2d_backward_bf16, __nv_bfloat16);
