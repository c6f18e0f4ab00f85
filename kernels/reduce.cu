// Row reductions: one block per row of a contiguous [rows, cols] matrix (the CPU backend
// permutes reduced dims last the same way). Each thread folds a strided slice of the row,
// then warp shuffles and one pass through shared memory combine the 32 warp results.
// blockDim.x must be a multiple of 32 (the launcher uses 256).
#include "prelude.cuh"
#include "strided.cuh"

// op: 0 sum, 1 max, 2 min (NaN propagates, as in PyTorch).
__device__ __forceinline__ float kiln_fold(int32_t op, float acc, float v) {
    if (op == 0) return acc + v;
    if (v != v || acc != acc) return __int_as_float(0x7fc00000);
    return op == 1 ? fmaxf(acc, v) : fminf(acc, v);
}

__device__ __forceinline__ float kiln_warp_fold(int32_t op, float v) {
    for (int offset = 16; offset > 0; offset /= 2) v = kiln_fold(op, v, __shfl_down_sync(0xffffffffu, v, offset));
    return v;
}

__device__ __forceinline__ float kiln_identity(int32_t op) {
    return op == 0 ? 0.0f : (op == 1 ? -__int_as_float(0x7f800000) : __int_as_float(0x7f800000));
}

#define KILN_REDUCE_ROWS(NAME, T)                                                            \
    KILN_KERNEL void NAME(int64_t cols, int32_t op, const T* __restrict__ x, T* __restrict__ out) { \
        __shared__ float warp_acc[32];                                                       \
        const T* row = x + (int64_t)blockIdx.x * cols;                                      \
        float acc = kiln_identity(op);                                                       \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) acc = kiln_fold(op, acc, kiln_load(row, c)); \
        acc = kiln_warp_fold(op, acc);                                                       \
        const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;                     \
        if (lane == 0) warp_acc[warp] = acc;                                                 \
        __syncthreads();                                                                     \
        if (warp == 0) {                                                                     \
            acc = lane < blockDim.x / 32 ? warp_acc[lane] : kiln_identity(op);               \
            acc = kiln_warp_fold(op, acc);                                                   \
            if (lane == 0) kiln_store(out, blockIdx.x, acc);                                 \
        }                                                                                    \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_REDUCE_ROWS(reduce_rows_f32, float);
KILN_REDUCE_ROWS(reduce_rows_f16, __half);
KILN_REDUCE_ROWS(reduce_rows_bf16, __nv_bfloat16);

// Arg-reductions: the index of each row's max (op 0) or min (op 1), with the CPU backend's
// rules: the first of equal values wins, a NaN beats every number, a later NaN an earlier
// one. Those rules rank every (value, index) pair in one total order, so folding in any
// grouping gives the same pair as the CPU's left-to-right scan. Index -1: nothing yet.
__device__ __forceinline__ void kiln_arg_fold(int32_t op, float& v, int64_t& i, float v2, int64_t i2) {
    if (i2 < 0) return;
    bool take;
    if (i < 0) {
        take = true;
    } else {
        const bool n1 = v != v, n2 = v2 != v2;
        if (n1 || n2) take = n2 && (!n1 || i2 > i);
        else if (v2 == v) take = i2 < i;
        else take = op == 0 ? v2 > v : v2 < v;
    }
    if (take) {
        v = v2;
        i = i2;
    }
}

__device__ __forceinline__ void kiln_arg_warp_fold(int32_t op, float& v, int64_t& i) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const float v2 = __shfl_down_sync(0xffffffffu, v, offset);
        const int64_t i2 = __shfl_down_sync(0xffffffffu, i, offset);
        kiln_arg_fold(op, v, i, v2, i2);
    }
}

#define KILN_ARG_ROWS(NAME, T)                                                               \
    KILN_KERNEL void NAME(int64_t cols, int32_t op, const T* __restrict__ x, int64_t* __restrict__ out) { \
        __shared__ float warp_v[32];                                                         \
        __shared__ int64_t warp_i[32];                                                       \
        const T* row = x + (int64_t)blockIdx.x * cols;                                       \
        float v = 0.0f;                                                                      \
        int64_t i = -1;                                                                      \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) kiln_arg_fold(op, v, i, kiln_load(row, c), c); \
        kiln_arg_warp_fold(op, v, i);                                                        \
        const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;                     \
        if (lane == 0) {                                                                     \
            warp_v[warp] = v;                                                                \
            warp_i[warp] = i;                                                                \
        }                                                                                    \
        __syncthreads();                                                                     \
        if (warp == 0) {                                                                     \
            const bool have = lane < blockDim.x / 32;                                        \
            v = have ? warp_v[lane] : 0.0f;                                                  \
            i = have ? warp_i[lane] : -1;                                                    \
            kiln_arg_warp_fold(op, v, i);                                                    \
            if (lane == 0) out[blockIdx.x] = i;                                              \
        }                                                                                    \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_ARG_ROWS(arg_rows_f32, float);
KILN_ARG_ROWS(arg_rows_f16, __half);
KILN_ARG_ROWS(arg_rows_bf16, __nv_bfloat16);

// Softmax (or log-softmax) of each row: max, then Σ exp(x - max), then the outputs. Same
// block-per-row split; the two reductions share one shared-memory array.
__device__ float kiln_block_fold(int32_t op, float v, float* warp_acc) {
    v = kiln_warp_fold(op, v);
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();  // warp_acc may still be read from the previous fold
    if (lane == 0) warp_acc[warp] = v;
    __syncthreads();
    v = lane < blockDim.x / 32 ? warp_acc[lane] : kiln_identity(op);
    return kiln_warp_fold(op, v);  // every warp computes the total; lane 0 holds it
}

#define KILN_SOFTMAX_ROWS(NAME, T)                                                           \
    KILN_KERNEL void NAME(int64_t cols, int32_t log_softmax, const T* __restrict__ x, T* __restrict__ y) { \
        __shared__ float warp_acc[32];                                                       \
        __shared__ float total;                                                              \
        const T* row = x + (int64_t)blockIdx.x * cols;                                       \
        T* out = y + (int64_t)blockIdx.x * cols;                                             \
        float m = kiln_identity(1);                                                          \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, kiln_load(row, c)); \
        m = kiln_block_fold(1, m, warp_acc);                                                 \
        if (threadIdx.x == 0) total = m;                                                     \
        __syncthreads();                                                                     \
        m = total;                                                                           \
        if (!(m > -3.0e38f && m < 3.0e38f)) m = 0.0f; /* all -inf rows: NaN like PyTorch */  \
        float s = 0.0f;                                                                      \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(kiln_load(row, c) - m); \
        s = kiln_block_fold(0, s, warp_acc);                                                 \
        __syncthreads();                                                                     \
        if (threadIdx.x == 0) total = s;                                                     \
        __syncthreads();                                                                     \
        s = total;                                                                           \
        const float lse = logf(s);                                                           \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {                           \
            const float z = kiln_load(row, c) - m;                                           \
            kiln_store(out, c, log_softmax ? z - lse : expf(z) / s);                         \
        }                                                                                    \
    }                                                                                        \
    KILN_REGISTER(NAME)

KILN_SOFTMAX_ROWS(softmax_rows_f32, float);
KILN_SOFTMAX_ROWS(softmax_rows_f16, __half);
KILN_SOFTMAX_ROWS(softmax_rows_bf16, __nv_bfloat16);
