// Host emulation of the CUDA kernel language, so that the kernels in kernels/*.cu also
// compile as C++20 and run on CPU threads (CI machines have no GPU). kernels/prelude.cuh
// includes this header when the compiler is not NVRTC.
//
// Execution model (implemented in emu.cpp; entry point kiln_emu_launch):
// - One host std::thread per CUDA thread of a block; the same threads run every block of a
//   launch, and blocks run one after another. So `__shared__` arrays can be plain statics,
//   and a global mutex makes whole launches run one at a time.
// - __syncthreads and the warp operations are real rendezvous. Anything that would be
//   undefined behaviour on a GPU and that the emulator can see (a barrier not reached by
//   every thread, a warp mask naming lanes that do not exist or have returned, a shuffle
//   reading a lane outside its mask) fails the launch with a message naming the kernel,
//   rather than producing a made-up value. A wait longer than KILN_EMU_BARRIER_TIMEOUT_MS
//   (default 10000) is reported as a deadlock instead of hanging.
//
// Kernel code sees only what CUDA offers: the keywords below, threadIdx/blockIdx/blockDim/
// gridDim, warp intrinsics, atomics, math functions, __half and __nv_bfloat16.
#ifndef KILN_EMU_H
#define KILN_EMU_H

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <math.h>  // the global-namespace overloads (abs(float), isnan, ...) that CUDA code expects
#include <source_location>
#include <stdint.h>
#include <type_traits>
#include <utility>

#include "fp16.h"

// ---------------------------------------------------------------------------------------
// Keywords. __restrict__ is already a g++ keyword. No __noinline__: libstdc++ uses that name
// inside __attribute__, so defining it breaks standard headers included afterwards.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // safe: only one block of one launch runs at a time
#define __constant__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// ---------------------------------------------------------------------------------------
// Built-in types and variables.
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Vector types with CUDA's alignment, for vectorised loads such as
// reinterpret_cast<const float4*>(p)[i].
#define KILN_EMU_VEC2(T, N, A)                                   \
    struct alignas(A) N {                                        \
        T x, y;                                                  \
    };                                                           \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define KILN_EMU_VEC4(T, N, A)                                   \
    struct alignas(A) N {                                        \
        T x, y, z, w;                                            \
    };                                                           \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
KILN_EMU_VEC2(float, float2, 8)
KILN_EMU_VEC4(float, float4, 16)
KILN_EMU_VEC2(int, int2, 8)
KILN_EMU_VEC4(int, int4, 16)
KILN_EMU_VEC2(unsigned, uint2, 8)
KILN_EMU_VEC4(unsigned, uint4, 16)
KILN_EMU_VEC2(double, double2, 16)
#undef KILN_EMU_VEC2
#undef KILN_EMU_VEC4

// Per CUDA thread, set by the emulator before each block.
inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------
// The emulator's runtime (emu.cpp).
namespace kiln::emu {

enum class WarpOp : unsigned char { Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, Sync };

// Block barrier; `site` identifies the call so that divergent barriers are reported.
void sync_block(const std::source_location& site);
// Warp rendezvous of the lanes in `mask`: each gives a 64-bit value (and a per-lane
// parameter: source lane, delta or lane mask) and gets its result back.
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, long long param, int width,
                       unsigned value_size, const std::source_location& site);
unsigned active_mask();
void* dynamic_shared();
[[noreturn]] void trap(const std::source_location& site);

template <class T>
T shuffle(WarpOp op, unsigned mask, T var, long long param, int width, const std::source_location& site) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    bits = warp_exchange(op, mask, bits, param, width, sizeof(T), site);
    std::memcpy(&var, &bits, sizeof(T));
    return var;
}

// Kernel registry: cuLaunchKernel's argument form, args[i] points to the i-th argument.
using Trampoline = void (*)(void** args);
bool register_kernel(const char* name, Trampoline fn, unsigned num_params);

template <auto Kernel>
struct Launcher;
template <class... A, void (*Kernel)(A...)>
struct Launcher<Kernel> {
    static constexpr unsigned num_params = sizeof...(A);
    static void call(void** args) { call(args, std::index_sequence_for<A...>{}); }
    template <std::size_t... I>
    static void call([[maybe_unused]] void** args, std::index_sequence<I...>) {
        Kernel(*static_cast<A*>(args[I])...);
    }
};

}  // namespace kiln::emu

// ---------------------------------------------------------------------------------------
// Synchronisation and warp intrinsics. The trailing source_location parameters are filled
// in at the call site; kernel code never passes them.
using kiln_emu_site = std::source_location;
#define KILN_EMU_HERE kiln_emu_site site = kiln_emu_site::current()

inline void __syncthreads(KILN_EMU_HERE) { kiln::emu::sync_block(site); }
inline void __syncwarp(unsigned mask = 0xffffffffu, KILN_EMU_HERE) {
    kiln::emu::warp_exchange(kiln::emu::WarpOp::Sync, mask, 0, 0, 32, 0, site);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __trap(KILN_EMU_HERE) { kiln::emu::trap(site); }

template <class T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, KILN_EMU_HERE) {
    return kiln::emu::shuffle(kiln::emu::WarpOp::Shfl, mask, var, srcLane, width, site);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, KILN_EMU_HERE) {
    return kiln::emu::shuffle(kiln::emu::WarpOp::ShflUp, mask, var, delta, width, site);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, KILN_EMU_HERE) {
    return kiln::emu::shuffle(kiln::emu::WarpOp::ShflDown, mask, var, delta, width, site);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize, KILN_EMU_HERE) {
    return kiln::emu::shuffle(kiln::emu::WarpOp::ShflXor, mask, var, laneMask, width, site);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, KILN_EMU_HERE) {
    return unsigned(kiln::emu::warp_exchange(kiln::emu::WarpOp::Ballot, mask, predicate != 0, 0, 32, 4, site));
}
inline int __any_sync(unsigned mask, int predicate, KILN_EMU_HERE) {
    return int(kiln::emu::warp_exchange(kiln::emu::WarpOp::Any, mask, predicate != 0, 0, 32, 4, site));
}
inline int __all_sync(unsigned mask, int predicate, KILN_EMU_HERE) {
    return int(kiln::emu::warp_exchange(kiln::emu::WarpOp::All, mask, predicate != 0, 0, 32, 4, site));
}
// The lanes of the warp that exist and have not returned. A GPU would also leave out lanes
// that are elsewhere in divergent code; the emulator cannot see divergence.
inline unsigned __activemask() { return kiln::emu::active_mask(); }
#undef KILN_EMU_HERE

// ---------------------------------------------------------------------------------------
// Atomics: the overloads CUDA has (no more, so that host and NVRTC accept the same code).
// Relaxed ordering, as on the GPU; __threadfence() orders.
#define KILN_EMU_ATOMIC(T)                                                                                       \
    inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed); }     \
    inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v, std::memory_order_relaxed); }
KILN_EMU_ATOMIC(int)
KILN_EMU_ATOMIC(unsigned)
KILN_EMU_ATOMIC(unsigned long long)
KILN_EMU_ATOMIC(float)
KILN_EMU_ATOMIC(double)
#undef KILN_EMU_ATOMIC

#define KILN_EMU_ATOMIC_INT(T)                                                                                   \
    inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v, std::memory_order_relaxed); }     \
    inline T atomicAnd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_and(v, std::memory_order_relaxed); }     \
    inline T atomicOr(T* p, T v) { return std::atomic_ref<T>(*p).fetch_or(v, std::memory_order_relaxed); }       \
    inline T atomicXor(T* p, T v) { return std::atomic_ref<T>(*p).fetch_xor(v, std::memory_order_relaxed); }     \
    inline T atomicCAS(T* p, T expected, T desired) {                                                            \
        std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired, std::memory_order_relaxed);            \
        return expected; /* the old value, whether or not the swap happened */                                   \
    }                                                                                                            \
    inline T atomicMax(T* p, T v) {                                                                              \
        std::atomic_ref<T> a(*p);                                                                                \
        T old = a.load(std::memory_order_relaxed);                                                               \
        while (old < v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}                        \
        return old;                                                                                              \
    }                                                                                                            \
    inline T atomicMin(T* p, T v) {                                                                              \
        std::atomic_ref<T> a(*p);                                                                                \
        T old = a.load(std::memory_order_relaxed);                                                               \
        while (old > v && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}                        \
        return old;                                                                                              \
    }
KILN_EMU_ATOMIC_INT(int)
KILN_EMU_ATOMIC_INT(unsigned)
KILN_EMU_ATOMIC_INT(unsigned long long)
#undef KILN_EMU_ATOMIC_INT

// ---------------------------------------------------------------------------------------
// Math. expf, logf, sqrtf, tanhf, erff, powf, fmaxf, ... come from <cmath>; these are the
// CUDA-only names. The fast intrinsics are exact here: the emulator checks logic, not ulps.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// IEEE-rounded single operations. On the GPU these are never fused into an FMA, which is
// what kernels that must equal a CPU result bit for bit use them for; the host build
// (-std=c++20, an ISO mode) never contracts either.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline float __ll2float_rn(long long x) { return (float)x; }  // the host rounds to nearest even
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }
inline int __clzll(long long x) { return std::countl_zero((unsigned long long)x); }
inline int __ffs(int x) { return x ? std::countr_zero(unsigned(x)) + 1 : 0; }
inline int __ffsll(long long x) { return x ? std::countr_zero((unsigned long long)x) + 1 : 0; }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T>
inline T __ldg(const T* p) { return *p; }

// CUDA's min/max: integer and floating overloads, mixed signedness promoting as in C. Not
// defined for an integer mixed with a floating type (ambiguous under NVRTC too).
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B> &&
             std::is_floating_point_v<A> == std::is_floating_point_v<B>)
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B> &&
             std::is_floating_point_v<A> == std::is_floating_point_v<B>)
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
    else return C(b) < C(a) ? C(b) : C(a);
}

// ---------------------------------------------------------------------------------------
// The macros of prelude.cuh, host side.

// Kernels get internal linkage: each kernel file is its own module, as under NVRTC. A
// kernel defined but never registered then draws an "unused function" warning.
#define KILN_KERNEL static

// Registers `name` for kiln_emu_launch, with a trampoline generated from its signature.
#define KILN_REGISTER(name)                                                   \
    [[maybe_unused]] static const bool kiln_emu_registered_##name =           \
        ::kiln::emu::register_kernel(#name, &::kiln::emu::Launcher<&name>::call, \
                                     ::kiln::emu::Launcher<&name>::num_params)

// The block's dynamic shared memory (the launch's shared_bytes), 16-byte aligned. Like
// extern __shared__ arrays on the GPU, every such pointer in a kernel has the same address.
#define KILN_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::kiln::emu::dynamic_shared())

// ---------------------------------------------------------------------------------------
// Entry points for Rust (FFI).
extern "C" {
// Runs `kernel` over the grid; args as for cuLaunchKernel. Returns 0 on success, 1 when the
// launch is refused (unknown kernel, bad dimensions), 2 when the kernel failed while running
// (deadlock, invalid warp operation, C++ exception, ...). On failure a NUL-terminated message
// naming the kernel is written to err (truncated to errlen bytes).
int kiln_emu_launch(const char* kernel, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                    unsigned bz, unsigned shared_bytes, void** args, char* err, unsigned long errlen);
int kiln_emu_kernel_count(void);
const char* kiln_emu_kernel_name(int i);  // NULL when out of range
int kiln_emu_kernel_num_params(const char* kernel);  // -1 when unknown
}

#endif  // KILN_EMU_H
