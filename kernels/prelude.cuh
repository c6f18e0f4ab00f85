// Included first by every kernel file. The same source compiles two ways:
// - under NVRTC (__CUDACC_RTC__ defined) for the GPU, and
// - as C++20 on the host, where emu/emu.h runs it on CPU threads (CI has no GPU).
//
// Kernel file pattern:
//     #include "prelude.cuh"
//     KILN_KERNEL void scale_f32(const float* __restrict__ x, float* __restrict__ y, float a, int n) {
//         int i = blockIdx.x * blockDim.x + threadIdx.x;
//         if (i < n) y[i] = a * x[i];
//     }
//     KILN_REGISTER(scale_f32);
//
// Write only what both sides accept: no standard library headers (NVRTC has none), no
// templates as kernels (extern "C"), dynamic shared memory through KILN_DYNAMIC_SHARED.
#ifndef KILN_PRELUDE_CUH
#define KILN_PRELUDE_CUH

#if defined(__CUDACC_RTC__)

#include <cuda_fp16.h>
#include <cuda_bf16.h>

// NVRTC has no <cstdint>. The same types as glibc on x86-64/aarch64 Linux (int64_t is long,
// not long long), so that host and device code resolve overloads identically.
typedef signed char int8_t;
typedef short int16_t;
typedef int int32_t;
typedef long int64_t;
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;

// extern "C": PTX entry names are the kernel names, which is what the launcher looks up.
#define KILN_KERNEL extern "C" __global__
// Host side registers the kernel for the emulator; nothing to do here. static_assert only
// so that the `;` after KILN_REGISTER(name) completes a declaration.
#define KILN_REGISTER(name) static_assert(true, "")
// One untyped extern array, cast: extern __shared__ arrays of different element types in
// one module would clash (they are all the same object), and this fixes the alignment.
#define KILN_DYNAMIC_SHARED(type, name)                                  \
    extern __shared__ __align__(16) unsigned char kiln_dynamic_shared[]; \
    type* const name = reinterpret_cast<type*>(kiln_dynamic_shared)

// On memory-bound elementwise kernels: at most 32 registers per thread, so 8 blocks of 256
// threads fit an SM: full occupancy on sm_80/sm_90 (where fewer threads fit an SM, sm_75/86/89,
// ptxas ignores the block count with a warning). The op switch's rare branches (erf, pow) pushed unary/binary to 34-36
// registers and 75% occupancy, which left relu at 58% of copy bandwidth on an H100; at 32
// they compile without spills (checked with ptxas -v for sm_90).
#define KILN_FULL_OCCUPANCY __launch_bounds__(256, 8)

#else

#include "emu/emu.h"
#define KILN_FULL_OCCUPANCY

#endif
#endif  // KILN_PRELUDE_CUH
