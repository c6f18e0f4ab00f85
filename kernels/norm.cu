// Batch normalisation's two passes over a contiguous f32 x [n, c, s] (s: one image's pixels
// of one channel), the CUDA side of src/backend/cpu/norm.rs:
// - channel_sums: per-channel sums of x, of (x - mean)^2, or of dy and dy * (x - mean) * rstd
//   (the statistics forward, the gradient sums backward). Block (ch, piece) folds piece
//   `blockIdx.y` of the n*s elements of channel `blockIdx.x` into part0/part1[ch * pieces +
//   piece]; a second pass (reduce_rows) adds the pieces. Few channels of many elements
//   would leave the GPU idle at one block per channel.
// - channel_affine: out = a[ch] * u + b[ch] * v + d[ch] (v may be null: then b is unused):
//   the normalisation forward (u = x) and the input gradient backward (u = dy, v = x).
// Work split: 256 threads per block; channel_sums' blockDim.x must be a multiple of 32.
#include "prelude.cuh"
#include "strided.cuh"

// Sums of one block's 256 values into lane 0 of warp 0 (the value returned there).
__device__ __forceinline__ float kiln_block_sum(float v, float* warp_acc) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_acc[warp] = v;
    __syncthreads();
    v = 0.0f;
    if (warp == 0) {
        v = lane < blockDim.x / 32 ? warp_acc[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// mode 0: sum x; 1: sum (x - mean)^2; 2: sum dy (part0) and sum dy * (x - mean) * rstd (part1).
KILN_KERNEL void channel_sums_f32(int64_t n, int64_t c, int64_t s, int32_t mode, const float* __restrict__ x,
                                  const float* __restrict__ dy, const float* __restrict__ mean,
                                  const float* __restrict__ rstd, float* __restrict__ part0,
                                  float* __restrict__ part1) {
    __shared__ float warp_acc[32];
    const int64_t ch = blockIdx.x, pieces = gridDim.y, count = n * s;
    const int64_t per = (count + pieces - 1) / pieces;
    const int64_t begin = per * blockIdx.y;
    const int64_t end = begin + per < count ? begin + per : count;
    const float m = mode > 0 ? mean[ch] : 0.0f;
    const float r = mode == 2 ? rstd[ch] : 0.0f;
    float acc0 = 0.0f, acc1 = 0.0f;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
        const int64_t i = (j / s * c + ch) * s + j % s;  // image j / s, pixel j % s
        const float v = x[i];
        if (mode == 0) {
            acc0 += v;
        } else if (mode == 1) {
            acc0 += (v - m) * (v - m);
        } else {
            acc0 += dy[i];
            acc1 += dy[i] * (v - m) * r;
        }
    }
    const int64_t out = ch * pieces + blockIdx.y;
    acc0 = kiln_block_sum(acc0, warp_acc);
    if (threadIdx.x == 0) part0[out] = acc0;
    if (mode == 2) {
        __syncthreads();  // warp_acc is reused
        acc1 = kiln_block_sum(acc1, warp_acc);
        if (threadIdx.x == 0) part1[out] = acc1;
    }
}
KILN_REGISTER(channel_sums_f32);

KILN_KERNEL void KILN_FULL_OCCUPANCY channel_affine_f32(int64_t total, int64_t c, int64_t s,
                                                        const float* __restrict__ u, const float* __restrict__ v,
                                                        const float* __restrict__ a, const float* __restrict__ b,
                                                        const float* __restrict__ d, float* __restrict__ out) {
    KILN_FOR_EACH(i, total) {
        const int64_t ch = i / s % c;
        float y = a[ch] * u[i] + d[ch];
        if (v) y += b[ch] * v[i];
        out[i] = y;
    }
}
KILN_REGISTER(channel_affine_f32);
