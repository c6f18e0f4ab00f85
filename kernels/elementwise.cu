// Elementwise kernels: unary functions and broadcast binary ops over strided views, for f32,
// f16 and bf16 (math in f32). The op is a kernel argument: one generic kernel per dtype and
// family, not one per op, so there is little code to get wrong on a GPU nobody has seen.
// Op codes match UnaryOp / BinaryOp's order in src/backend/ops.rs (see kernels.rs).
// Work split: a grid-stride loop, one element per thread per iteration, 256 threads per block
// (the launcher's BLOCK; KILN_FULL_OCCUPANCY assumes it).
#include "prelude.cuh"
#include "strided.cuh"

__device__ __forceinline__ float kiln_unary(int32_t op, float x, float p0, float p1) {
    switch (op) {
        case 0: return -x;                                     // neg
        case 1: return expf(x);                                // exp
        case 2: return logf(x);                                // log
        case 3: return sqrtf(x);                               // sqrt
        case 4: return fabsf(x);                               // abs
        case 5: return tanhf(x);                               // tanh
        case 6: return 1.0f / (1.0f + expf(-x));               // sigmoid
        case 7: return x > 0.0f ? x : 0.0f;                    // relu
        case 8: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));  // gelu (erf)
        case 9: {                                              // gelu'
            const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
            return cdf + x * 0.39894228040143268f * expf(-0.5f * x * x);
        }
        case 10: return x / (1.0f + expf(-x));                 // silu
        case 11: {                                             // silu'
            const float s = 1.0f / (1.0f + expf(-x));
            return s * (1.0f + x * (1.0f - s));
        }
        case 12: return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f);  // sign
        case 13: return x > 0.0f ? 1.0f : 0.0f;                // step
        case 14: return 1.0f / x;                              // recip
        case 15: return x * x;                                 // sqr
        case 16: return x * p0 + p1;                           // affine
        case 17: return powf(x, p0);                           // powf
        default: return __int_as_float(0x7fc00000);            // NaN: unknown op
    }
}

__device__ __forceinline__ float kiln_binary(int32_t op, float a, float b) {
    switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        case 3: return a / b;
        case 4: return powf(a, b);
        case 5: return (a != a || a > b) ? a : b;              // maximum, NaN propagates
        case 6: return (a != a || a < b) ? a : b;              // minimum
        case 7: return a == b ? 1.0f : 0.0f;
        case 8: return a != b ? 1.0f : 0.0f;
        case 9: return a < b ? 1.0f : 0.0f;
        case 10: return a <= b ? 1.0f : 0.0f;
        case 11: return a > b ? 1.0f : 0.0f;
        case 12: return a >= b ? 1.0f : 0.0f;
        case 13: return b > 0.0f ? a : 0.0f;                   // relu backward: g where x > 0
        default: return __int_as_float(0x7fc00000);
    }
}

// y (contiguous, n elements) = op(x viewed through l).
#define KILN_UNARY(NAME, T)                                                                  \
    KILN_KERNEL void KILN_FULL_OCCUPANCY NAME(int64_t n, int32_t op, float p0, float p1, KilnStrided1 l, \
                          const T* __restrict__ x, T* __restrict__ y) {                     \
        KILN_FOR_EACH(i, n) { kiln_store(y, i, kiln_unary(op, kiln_load(x, kiln_offset1(l, i)), p0, p1)); } \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_UNARY(unary_f32, float);
KILN_UNARY(unary_f16, __half);
KILN_UNARY(unary_bf16, __nv_bfloat16);

// out (contiguous, n elements) = op(a, b), both viewed through l (broadcast = stride 0).
#define KILN_BINARY(NAME, T)                                                                 \
    KILN_KERNEL void KILN_FULL_OCCUPANCY NAME(int64_t n, int32_t op, KilnStrided2 l, const T* __restrict__ a, \
                          const T* __restrict__ b, T* __restrict__ out) {                   \
        KILN_FOR_EACH(i, n) {                                                                \
            int64_t oa, ob;                                                                  \
            kiln_offset2(l, i, oa, ob);                                                      \
            kiln_store(out, i, kiln_binary(op, kiln_load(a, oa), kiln_load(b, ob)));         \
        }                                                                                    \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_BINARY(binary_f32, float);
KILN_BINARY(binary_f16, __half);
KILN_BINARY(binary_bf16, __nv_bfloat16);

// I64 (labels, indices, step counters such as BatchNorm's num_batches_tracked): the CPU
// backend's integer ops, same codes. Wrapping arithmetic through uint64_t (signed overflow
// is undefined in C++; Rust's wrapping_* is what the CPU does); comparisons give 1 / 0.
// Div, pow and relu backward are refused before a launch (kernels.rs), as on the CPU.
__device__ __forceinline__ int64_t kiln_binary_i64(int32_t op, int64_t a, int64_t b) {
    switch (op) {
        case 0: return (int64_t)((uint64_t)a + (uint64_t)b);
        case 1: return (int64_t)((uint64_t)a - (uint64_t)b);
        case 2: return (int64_t)((uint64_t)a * (uint64_t)b);
        case 5: return a > b ? a : b;
        case 6: return a < b ? a : b;
        case 7: return a == b;
        case 8: return a != b;
        case 9: return a < b;
        case 10: return a <= b;
        case 11: return a > b;
        case 12: return a >= b;
        default: return 0;
    }
}

KILN_KERNEL void binary_i64(int64_t n, int32_t op, KilnStrided2 l, const int64_t* __restrict__ a,
                            const int64_t* __restrict__ b, int64_t* __restrict__ out) {
    KILN_FOR_EACH(i, n) {
        int64_t oa, ob;
        kiln_offset2(l, i, oa, ob);
        out[i] = kiln_binary_i64(op, a[oa], b[ob]);
    }
}
KILN_REGISTER(binary_i64);

// A condition's truth as the CPU backend tests it: != 0 in its own type (float ones compare
// as floats: -0.0 is false, NaN is true; f16/bf16 widened to float first).
__device__ __forceinline__ bool kiln_truth(float c) { return c != 0.0f; }
__device__ __forceinline__ bool kiln_truth(double c) { return c != 0.0; }
__device__ __forceinline__ bool kiln_truth(int64_t c) { return c != 0; }
__device__ __forceinline__ bool kiln_truth(__half c) { return __half2float(c) != 0.0f; }
__device__ __forceinline__ bool kiln_truth(__nv_bfloat16 c) { return __bfloat162float(c) != 0.0f; }

// where: out (contiguous, n elements) = c ? a : b, all three viewed through l (broadcast =
// stride 0). The values are moved as raw bits of their width (u16: f16/bf16, u32: f32,
// u64: f64/i64): selecting never converts.
#define KILN_WHERE(NAME, C, V)                                                               \
    KILN_KERNEL void NAME(int64_t n, KilnStrided3 l, const C* __restrict__ c,              \
                          const V* __restrict__ a, const V* __restrict__ b, V* __restrict__ out) { \
        KILN_FOR_EACH(i, n) {                                                                \
            int64_t oc, oa, ob;                                                              \
            kiln_offset3(l, i, oc, oa, ob);                                                  \
            out[i] = kiln_truth(c[oc]) ? a[oa] : b[ob];                                      \
        }                                                                                    \
    }                                                                                        \
    KILN_REGISTER(NAME)

#define KILN_WHERE_WIDTHS(COND, C)                                                           \
    KILN_WHERE(where_##COND##_b16, C, uint16_t);                                             \
    KILN_WHERE(where_##COND##_b32, C, uint32_t);                                             \
    KILN_WHERE(where_##COND##_b64, C, uint64_t)

KILN_WHERE_WIDTHS(f32, float);
KILN_WHERE_WIDTHS(f64, double);
KILN_WHERE_WIDTHS(f16, __half);
KILN_WHERE_WIDTHS(bf16, __nv_bfloat16);
KILN_WHERE_WIDTHS(i64, int64_t);

// Strided copy (contiguous(), cast between float types): y[i] = x[l(i)].
#define KILN_COPY(NAME, TI, TO)                                                              \
    KILN_KERNEL void KILN_FULL_OCCUPANCY NAME(int64_t n, KilnStrided1 l, const TI* __restrict__ x, TO* __restrict__ y) { \
        KILN_FOR_EACH(i, n) { kiln_store(y, i, kiln_load(x, kiln_offset1(l, i))); }          \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_COPY(copy_f32_f32, float, float);
KILN_COPY(copy_f16_f16, __half, __half);
KILN_COPY(copy_bf16_bf16, __nv_bfloat16, __nv_bfloat16);
KILN_COPY(copy_f32_f16, float, __half);
KILN_COPY(copy_f16_f32, __half, float);
KILN_COPY(copy_f32_bf16, float, __nv_bfloat16);
KILN_COPY(copy_bf16_f32, __nv_bfloat16, float);
// Round to nearest even, as Rust's `i64 as f32`: exact below 2^24 (counts, class indices).
KILN_COPY(copy_i64_f32, int64_t, float);

KILN_KERNEL void fill_f32(int64_t n, float v, float* __restrict__ y) {
    KILN_FOR_EACH(i, n) { y[i] = v; }
}
KILN_REGISTER(fill_f32);
