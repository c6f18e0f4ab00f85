// Batch normalisation's two passes over a contiguous f32 x [n, c, s] (s: one image's pixels
// of one channel), the CUDA side of src/backend/cpu/norm.rs:
// - channel_sums: per-channel sums of x, of (x - mean)^2, or of dy and dy * (x - mean) * rstd
//   (the statistics forward, the gradient sums backward). Block (ch, piece) folds piece
//   `blockIdx.y` of the n*s elements of channel `blockIdx.x` into part0/part1[ch * pieces +
//   piece]; whoever reads the sums next (the second statistics pass, bn_coeffs) adds each
//   channel's pieces (kiln_fold). Few channels of many elements would leave the GPU idle at
//   one block per channel.
// - channel_affine: out = a[ch] * u + b[ch] * v + d[ch] (v may be null: then b is unused):
//   the normalisation forward (u = x) and the input gradient backward (u = dy, v = x).
// - bn_coeffs: the per-channel [c] arithmetic between those passes, one thread per channel
//   (was 7 forward and 8 backward elementwise launches on [c] vectors per layer per step).
// - bn_running: running_mean / running_var / num_batches_tracked updated in place, one
//   thread per channel (was 12 launches per layer per step).
// Work split: 256 threads per block; channel_sums' blockDim.x must be a multiple of 32.
#include "prelude.cuh"
#include "strided.cuh"

// The sum of channel ch's `pieces` partial sums (row ch of a [c, pieces] matrix), in order:
// src/backend/cpu/norm.rs's `fold`.
__device__ __forceinline__ float kiln_fold(const float* __restrict__ partials, int64_t pieces, int64_t ch) {
    float s = 0.0f;
    for (int64_t k = 0; k < pieces; k++) s = __fadd_rn(s, partials[ch * pieces + k]);
    return s;
}

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

// mode 0: sum x; 1: sum (x - mean)^2 with mean = fold(mean, sum_pieces, ch) * inv_count
// (`mean` holds mode 0's partial sums); 2: sum dy (part0) and sum dy * (x - mean) * rstd (part1).
KILN_KERNEL void channel_sums_f32(int64_t n, int64_t c, int64_t s, int32_t mode, float inv_count,
                                  int64_t sum_pieces, const float* __restrict__ x,
                                  const float* __restrict__ dy, const float* __restrict__ mean,
                                  const float* __restrict__ rstd, float* __restrict__ part0,
                                  float* __restrict__ part1) {
    __shared__ float warp_acc[32];
    const int64_t ch = blockIdx.x, pieces = gridDim.y, count = n * s;
    const int64_t per = (count + pieces - 1) / pieces;
    const int64_t begin = per * blockIdx.y;
    const int64_t end = begin + per < count ? begin + per : count;
    const float m = mode == 1 ? __fmul_rn(kiln_fold(mean, sum_pieces, ch), inv_count) : mode == 2 ? mean[ch] : 0.0f;
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

// in2/in3 (forward) and in3/in4 (backward) are [c, pieces] partial sums, folded first.
// mode 0 (forward), from in0 = weight, in1 = bias, in2 = Σx, in3 = Σ(x - mean)²:
//   out0 = mean = Σx·inv_count, out1 = var = Σ(x - mean)²·inv_count, out2 = rstd =
//   1/sqrt(var + eps), out3 = a = weight·rstd, out4 = shift = bias - mean·a (y = a·x + shift).
// mode 1 (backward), from in0 = weight, in1 = rstd, in2 = mean, in3 = Σdy, in4 = Σdy·x̂:
//   out0 = A = weight·rstd, out1 = B = -A·rstd·Σdy·x̂·inv_count,
//   out2 = D = -A·Σdy·inv_count - B·mean (dx = A·dy + B·x + D), out3 = Σdy, out4 = Σdy·x̂.
// The same f32 operations in the same order as src/backend/cpu/norm.rs's bn_coeffs (NVRTC
// may contract a product and a sum into one FMA: within the tests' 2e-5).
KILN_KERNEL void bn_coeffs_f32(int64_t c, int64_t pieces, int32_t mode, float inv_count, float eps, const float* __restrict__ in0,
                               const float* __restrict__ in1, const float* __restrict__ in2,
                               const float* __restrict__ in3, const float* __restrict__ in4,
                               float* __restrict__ out0, float* __restrict__ out1, float* __restrict__ out2,
                               float* __restrict__ out3, float* __restrict__ out4) {
    KILN_FOR_EACH(ch, c) {
        if (mode == 0) {
            const float mean = kiln_fold(in2, pieces, ch) * inv_count;
            const float var = kiln_fold(in3, pieces, ch) * inv_count;
            const float rstd = 1.0f / sqrtf(var + eps);
            const float a = in0[ch] * rstd;
            out0[ch] = mean;
            out1[ch] = var;
            out2[ch] = rstd;
            out3[ch] = a;
            out4[ch] = in1[ch] - mean * a;
        } else {
            const float gy = kiln_fold(in3, pieces, ch), gyx = kiln_fold(in4, pieces, ch);
            const float a = in0[ch] * in1[ch];
            const float b = -(a * in1[ch] * gyx * inv_count);
            out0[ch] = a;
            out1[ch] = b;
            out2[ch] = -(a * gy * inv_count) - b * in2[ch];
            out3[ch] = gy;
            out4[ch] = gyx;
        }
    }
}
KILN_REGISTER(bn_coeffs_f32);

// running = keep·running + momentum·batch statistic (var scaled by unbias = n/(n-1));
// counter (I64, may be null) += 1 by thread 0.
KILN_KERNEL void bn_running_f32(int64_t c, float keep, float momentum, float unbias, const float* __restrict__ mean,
                                const float* __restrict__ var, float* __restrict__ running_mean,
                                float* __restrict__ running_var, int64_t* __restrict__ counter) {
    KILN_FOR_EACH(ch, c) {
        running_mean[ch] = keep * running_mean[ch] + momentum * mean[ch];
        running_var[ch] = keep * running_var[ch] + momentum * (var[ch] * unbias);
        if (ch == 0 && counter) *counter += 1;
    }
}
KILN_REGISTER(bn_running_f32);
