// A second kernel file for the emulator's self-test: it defines a helper with the same name
// as test_kernels.cu but a different body. Separate NVRTC modules on the GPU; on the host,
// test_emu.cpp includes each file inside its own namespace (as build.rs should), so the two
// neither clash nor get silently merged.
#include "prelude.cuh"

__device__ __forceinline__ float warp_sum(float v) { return 2.0f * v; }

KILN_KERNEL void double_it(float* x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = warp_sum(x[i]);
}
KILN_REGISTER(double_it);
