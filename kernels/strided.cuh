// Strided views passed to kernels by value: up to KILN_MAX_RANK dims, the output walked in
// row-major order, each operand with its own element strides (0 on broadcast dims) and
// offset. The host (src/backend/cuda/kernels.rs) fills the same #[repr(C)] layout.
#ifndef KILN_STRIDED_CUH
#define KILN_STRIDED_CUH
#include "prelude.cuh"

#define KILN_MAX_RANK 8

struct KilnStrided1 {
    int32_t rank;
    int32_t narrow;  // 1: every linear index fits 32 bits
    int64_t dims[KILN_MAX_RANK];
    int64_t s0[KILN_MAX_RANK];
    int64_t off0;
};

struct KilnStrided2 {
    int32_t rank;
    int32_t narrow;  // 1: every linear index fits 32 bits
    int64_t dims[KILN_MAX_RANK];
    int64_t s0[KILN_MAX_RANK];
    int64_t s1[KILN_MAX_RANK];
    int64_t off0;
    int64_t off1;
};

struct KilnStrided3 {
    int32_t rank;
    int32_t narrow;  // 1: every linear index fits 32 bits
    int64_t dims[KILN_MAX_RANK];
    int64_t s0[KILN_MAX_RANK];
    int64_t s1[KILN_MAX_RANK];
    int64_t s2[KILN_MAX_RANK];
    int64_t off0;
    int64_t off1;
    int64_t off2;
};

// Element offsets of linear output index i in one, two or three operands: peel the
// row-major multi-index from the last dim. The host merges dims first (merge_dims in
// src/backend/ops.rs), so a contiguous view arrives as rank 1: a multiply, no division. Otherwise
// the divisions are 32-bit where every index fits (`narrow`): a 64-bit division is a long
// software sequence on the GPU, and it made these memory-bound kernels compute-bound.
#define KILN_PEEL(I, BODY)                                                  \
    if (l.narrow) {                                                         \
        uint32_t j = (uint32_t)(I);                                         \
        for (int d = l.rank - 1; d >= 0; --d) {                             \
            const uint32_t size = (uint32_t)l.dims[d];                      \
            const int64_t c = (int64_t)(j % size);                          \
            j /= size;                                                      \
            BODY;                                                           \
        }                                                                   \
    } else {                                                                \
        int64_t j = (I);                                                    \
        for (int d = l.rank - 1; d >= 0; --d) {                             \
            const int64_t c = j % l.dims[d];                                \
            j /= l.dims[d];                                                 \
            BODY;                                                           \
        }                                                                   \
    }

__device__ __forceinline__ int64_t kiln_offset1(const KilnStrided1& l, int64_t i) {
    if (l.rank == 1) return l.off0 + i * l.s0[0];
    int64_t o = l.off0;
    KILN_PEEL(i, o += c * l.s0[d])
    return o;
}

__device__ __forceinline__ void kiln_offset2(const KilnStrided2& l, int64_t i, int64_t& o0, int64_t& o1) {
    if (l.rank == 1) {
        o0 = l.off0 + i * l.s0[0];
        o1 = l.off1 + i * l.s1[0];
        return;
    }
    o0 = l.off0;
    o1 = l.off1;
    KILN_PEEL(i, (o0 += c * l.s0[d], o1 += c * l.s1[d]))
}

__device__ __forceinline__ void kiln_offset3(const KilnStrided3& l, int64_t i, int64_t& o0, int64_t& o1, int64_t& o2) {
    if (l.rank == 1) {
        o0 = l.off0 + i * l.s0[0];
        o1 = l.off1 + i * l.s1[0];
        o2 = l.off2 + i * l.s2[0];
        return;
    }
    o0 = l.off0;
    o1 = l.off1;
    o2 = l.off2;
    KILN_PEEL(i, (o0 += c * l.s0[d], o1 += c * l.s1[d], o2 += c * l.s2[d]))
}

// Loads and stores in float for every element type: f16/bf16 compute in f32.
__device__ __forceinline__ float kiln_load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float kiln_load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float kiln_load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
// I64 read as float (round to nearest even, as Rust's `as f32`): only copy_i64_f32 uses it.
__device__ __forceinline__ float kiln_load(const int64_t* p, int64_t i) { return __ll2float_rn(p[i]); }
__device__ __forceinline__ void kiln_store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void kiln_store(__half* p, int64_t i, float v) { p[i] = __float2half(v); }
__device__ __forceinline__ void kiln_store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// Grid-stride loop over n elements: any grid size covers any n.
#define KILN_FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#endif
