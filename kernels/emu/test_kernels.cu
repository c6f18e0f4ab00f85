// Kernels for the emulator's self-test (test_emu.cpp), written as kernels/*.cu files are:
// they compile under NVRTC too (python3 kernels/emu/nvrtc_check.py kernels/emu/test_kernels.cu).
#include "prelude.cuh"

// Per-block sum of x[blockIdx.x*blockDim.x ...], tree reduction in static shared memory.
// blockDim.x must be a power of two <= 1024.
KILN_KERNEL void block_sum(const float* __restrict__ x, float* __restrict__ partial, int n) {
    __shared__ float s[1024];
    const unsigned t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) partial[blockIdx.x] = s[0];
}
KILN_REGISTER(block_sum);

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// out[row] = sum of row `blockIdx.x` of a rows x cols matrix: strided loads, warp shuffles,
// then the per-warp sums through shared memory. blockDim.x must be a multiple of 32.
KILN_KERNEL void row_sum(const float* __restrict__ x, float* __restrict__ out, int cols) {
    __shared__ float warp_sums[32];
    const float* row = x + (int64_t)blockIdx.x * cols;
    float v = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) v += row[c];
    v = warp_sum(v);
    const unsigned lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const unsigned nwarps = blockDim.x / warpSize;
        v = lane < nwarps ? warp_sums[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}
KILN_REGISTER(row_sum);

// Every warp intrinsic once, for the emulator's lane arithmetic to be checked against the
// CUDA programming guide. One block of 64 threads; out has 8 rows of 64.
KILN_KERNEL void warp_ops(const int* __restrict__ in, int* __restrict__ out, int width) {
    const unsigned t = threadIdx.x, n = blockDim.x;
    const int v = in[t];
    out[0 * n + t] = __shfl_sync(0xffffffffu, v, (int)(t * 7 + 3), width);
    out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, 3, width);
    out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, 5, width);
    out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, 1 + (width > 2 ? 2 : 0), width);
    out[4 * n + t] = (int)__ballot_sync(0xffffffffu, v & 1);
    out[5 * n + t] = __any_sync(0xffffffffu, v > 90);
    out[6 * n + t] = __all_sync(0xffffffffu, v >= 0);
    __syncwarp();
    // A double and a 16-bit type go through shuffles too.
    const double d = __shfl_xor_sync(0xffffffffu, (double)v + 0.25, 16);
    const __half h = __shfl_down_sync(0xffffffffu, __float2half((float)v), 1);
    out[7 * n + t] = (int)(d * 4.0) + 1000 * (int)__half2float(h);
}
KILN_REGISTER(warp_ops);

// Atomics from every thread of the grid.
KILN_KERNEL void atomics(float* fsum, double* dsum, int* counts, unsigned* hist, unsigned long long* big, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    atomicAdd(fsum, 1.0f);
    atomicAdd(dsum, 0.5 * i);
    atomicAdd(&counts[0], 1);
    atomicMax(&counts[1], i);
    atomicMin(&counts[2], -i);
    atomicSub(&counts[3], 2);
    // A lock-free increment through atomicCAS, the way other atomics are built on a GPU.
    int old = counts[4], seen;
    do {
        seen = old;
        old = atomicCAS(&counts[4], seen, seen + 3);
    } while (old != seen);
    atomicExch(&counts[5], 7);
    atomicAdd(&hist[i % 10], 1u);
    atomicAdd(big, (unsigned long long)i << 20);
}
KILN_REGISTER(atomics);

// Reverses each block's chunk of x through dynamic shared memory (blockDim.x floats).
KILN_KERNEL void reverse_chunks(const float* __restrict__ x, float* __restrict__ y, int n) {
    KILN_DYNAMIC_SHARED(float, buf);
    const unsigned t = threadIdx.x;
    const int base = blockIdx.x * blockDim.x;
    buf[t] = base + (int)t < n ? x[base + t] : -1.0f;
    __syncthreads();
    const int j = base + (int)t;
    if (j < n) {
        const int src = (int)(blockDim.x - 1 - t);
        // In the last, partial block the reversal is over the elements that exist.
        const int len = n - base < (int)blockDim.x ? n - base : (int)blockDim.x;
        y[j] = buf[src - ((int)blockDim.x - len)];
    }
}
KILN_REGISTER(reverse_chunks);

// Writes `count` doubles into dynamic shared memory: more than the launch gave is an error.
KILN_KERNEL void fill_shared(int count) {
    KILN_DYNAMIC_SHARED(double, buf);
    if (threadIdx.x == 0)
        for (int i = 0; i < count; ++i) buf[i] = i;
}
KILN_REGISTER(fill_shared);

// Float -> half / bf16 -> float, elementwise.
KILN_KERNEL void convert16(const float* __restrict__ x, __half* __restrict__ h, float* __restrict__ h_back,
                           __nv_bfloat16* __restrict__ b, float* __restrict__ b_back, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    h[i] = __float2half(x[i]);
    h_back[i] = __half2float(h[i]);
    b[i] = __float2bfloat16(x[i]);
    b_back[i] = __bfloat162float(b[i]);
}
KILN_REGISTER(convert16);

// The usual math functions and a few types, so NVRTC and g++ see them used the same way.
KILN_KERNEL void math_mix(const float4* __restrict__ x, float* __restrict__ y, int64_t n4) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 v = x[i];
    const float gelu = 0.5f * v.x * (1.0f + erff(v.x * 0.70710678f));
    const float silu = __fdividef(v.y, 1.0f + __expf(-v.y));
    const float z = rsqrtf(fabsf(v.z) + 1.0f) + tanhf(v.z) + sqrtf(fmaxf(v.z, 0.0f)) + logf(1.0f + fabsf(v.z));
    const float w = powf(fabsf(v.w) + 1.0f, 0.5f) + fminf(v.w, 1.0f) + (float)max(3, min((int)i, 5));
    y[4 * i + 0] = gelu;
    y[4 * i + 1] = silu;
    y[4 * i + 2] = z;
    y[4 * i + 3] = w + expf(-fabsf(v.w));
}
KILN_REGISTER(math_mix);

// 2-D block: transposes a 16 x 8 tile through shared memory (rows = threadIdx.y).
KILN_KERNEL void transpose_tile(const int* __restrict__ x, int* __restrict__ y) {
    __shared__ int tile[8][16];
    tile[threadIdx.y][threadIdx.x] = x[threadIdx.y * 16 + threadIdx.x];
    __syncthreads();
    const unsigned linear = threadIdx.y * 16 + threadIdx.x;  // 0..127, read column-major
    const unsigned r = linear % 8, c = linear / 8;
    y[linear] = tile[r][c];
}
KILN_REGISTER(transpose_tile);

// A partial last warp used correctly: the mask names only the lanes that exist.
KILN_KERNEL void partial_warp_ok(int* out) {
    const unsigned mask = __activemask();
    const int t = (int)threadIdx.x;
    const unsigned odd = __ballot_sync(mask, t & 1);
    const int neighbour = __shfl_xor_sync(mask, t, 1);
    out[t] = __popc(odd) * 1000 + neighbour;
}
KILN_REGISTER(partial_warp_ok);

// Sub-warp masks one after another: lanes 0..15 exchange among themselves, then the whole
// warp. Lanes 16..31 reach the second exchange first and must wait for the first to end.
KILN_KERNEL void subwarp_masks(int* out) {
    const int lane = (int)(threadIdx.x % 32);
    int v = lane;
    if (lane < 16) v = __shfl_xor_sync(0x0000ffffu, v, 1);
    v = __shfl_xor_sync(0xffffffffu, v, 16);
    out[threadIdx.x] = v;
}
KILN_REGISTER(subwarp_masks);

// ---- Kernels with bugs the emulator must report -----------------------------------------

// Thread 7 skips the barrier (and returns while the others wait).
KILN_KERNEL void skip_sync(float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = (float)threadIdx.x;
    if (threadIdx.x != 7) __syncthreads();
    out[threadIdx.x] = s[63 - threadIdx.x];
}
KILN_REGISTER(skip_sync);

// The classic early return before a barrier.
KILN_KERNEL void early_return(float* out, int n) {
    __shared__ float s[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = out[i];
    __syncthreads();
    out[i] = s[(threadIdx.x + 1) % blockDim.x];
}
KILN_REGISTER(early_return);

// Two halves of the block at different barriers.
KILN_KERNEL void divergent_sync(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    } else {
        out[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}
KILN_REGISTER(divergent_sync);

// Lane 0 waits at the block barrier while lanes 1..31 wait for it in a shuffle: nothing
// returns and nothing completes, a true deadlock that only the timeout ends.
KILN_KERNEL void cross_wait(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_down_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
KILN_REGISTER(cross_wait);

// Lane 0 calls a different warp operation than its warp-mates.
KILN_KERNEL void mixed_warp_ops(int* out) {
    int v = (int)threadIdx.x;
    if (threadIdx.x == 0) v = (int)__ballot_sync(0xffffffffu, 1);
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
KILN_REGISTER(mixed_warp_ops);

// A lane reads from a lane outside the mask.
KILN_KERNEL void shfl_outside_mask(int* out) {
    const unsigned t = threadIdx.x;
    // Lanes 0..15 exchange among themselves, but lane 15 reads lane 16.
    if (t < 16) out[t] = __shfl_down_sync(0x0000ffffu, (int)t, 1, 32);
}
KILN_REGISTER(shfl_outside_mask);

KILN_KERNEL void trap_on_negative(const float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n && x[i] < 0.0f) __trap();
}
KILN_REGISTER(trap_on_negative);
