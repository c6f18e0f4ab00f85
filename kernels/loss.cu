// Fused softmax-cross-entropy over the rows of contiguous logits [rows, cols], with label
// smoothing ε (target = (1-ε)·onehot(label) + ε/cols), as src/backend/cpu/softmax.rs
// (`ce_t`) computes it:
//   lse = max + log Σ exp(x - max)
//   loss = -(1-ε)·(x[label] - lse) - ε·mean_j(x_j - lse)
//   grad_j = (exp(x_j - lse) - target_j) · scale
// One kernel for both directions: pass `loss` (f32 per row; the caller takes the mean) and/or
// `grad` (the logits' dtype), a null pointer skips either. The forward of a training step
// asks for both with scale = 1/rows, as the CPU does; a backward alone passes
// scale = upstream gradient / rows.
// Work split: one block per row (256 threads, a multiple of 32): each thread folds a
// strided slice of the row, then warp shuffles and shared memory combine the block.
#include "prelude.cuh"
#include "strided.cuh"

// Sum (op 0) or max (op 1) of v over the block; every thread gets the result. Thread 0
// folds the (at most 32) warp results itself: simple, and this runs three times per row.
__device__ float kiln_loss_block_fold(int op, float v, float* warp_acc, float* total) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const float u = __shfl_down_sync(0xffffffffu, v, offset);
        v = op ? fmaxf(v, u) : v + u;
    }
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();  // warp_acc and total may still be read from the previous fold
    if (lane == 0) warp_acc[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = warp_acc[0];
        for (unsigned w = 1; w < blockDim.x / 32; ++w) t = op ? fmaxf(t, warp_acc[w]) : t + warp_acc[w];
        *total = t;
    }
    __syncthreads();
    return *total;
}

// A bad label (outside 0..cols) is not read: the row's loss becomes NaN, its gradient row
// zeros (the host learns of it only at its next sync: whatever runs before then must not
// see undefined memory), and `status` records it (two u64, zero until the first report:
// [0] = cols, [1] = the label) for the host to turn into Error::IndexOutOfRange, as the CPU
// backend returns.
#define KILN_CROSS_ENTROPY(NAME, T)                                                             \
    KILN_KERNEL void NAME(int64_t cols, float smoothing, float scale, const int64_t* __restrict__ labels, \
                          const T* __restrict__ x, float* __restrict__ loss, T* __restrict__ grad, \
                          unsigned long long* status) {                                          \
        __shared__ float warp_acc[32];                                                          \
        __shared__ float total;                                                                 \
        const int64_t r = blockIdx.x;                                                           \
        const T* row = x + r * cols;                                                            \
        const int64_t y = labels[r];                                                            \
        if (y < 0 || y >= cols) { /* the same for every thread of the block: no barrier skipped */ \
            if (threadIdx.x == 0) {                                                             \
                if (atomicCAS(status, 0ull, (unsigned long long)cols) == 0ull) status[1] = (unsigned long long)y; \
                if (loss != nullptr) loss[r] = __int_as_float(0x7fc00000);                      \
            }                                                                                   \
            if (grad != nullptr)                                                                \
                for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) kiln_store(grad + r * cols, c, 0.0f); \
            return;                                                                             \
        }                                                                                       \
        float m = -__int_as_float(0x7f800000);                                                  \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, kiln_load(row, c)); \
        m = kiln_loss_block_fold(1, m, warp_acc, &total);                                       \
        float s = 0.0f;                                                                         \
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += expf(kiln_load(row, c) - m); \
        const float lse = m + logf(kiln_loss_block_fold(0, s, warp_acc, &total));               \
        const float on = 1.0f - smoothing, off = smoothing / (float)cols;                       \
        if (loss != nullptr) {                                                                  \
            float d = 0.0f;                                                                     \
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) d += kiln_load(row, c) - lse; \
            d = kiln_loss_block_fold(0, d, warp_acc, &total);                                   \
            if (threadIdx.x == 0) loss[r] = -(on * (kiln_load(row, y) - lse)) - smoothing * (d / (float)cols); \
        }                                                                                       \
        if (grad != nullptr) {                                                                  \
            for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {                          \
                const float target = c == y ? on + off : off;                                   \
                kiln_store(grad + r * cols, c, (expf(kiln_load(row, c) - lse) - target) * scale); \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_CROSS_ENTROPY(cross_entropy_f32, float);
KILN_CROSS_ENTROPY(cross_entropy_f16, __half);
KILN_CROSS_ENTROPY(cross_entropy_bf16, __nv_bfloat16);
