// Dropout with its mask made on the device from (seed, offset + element index) by a
// counter-based hash, so no mask is stored or copied: the backward runs the same kernel on
// the gradient with the same seed and offset and gets the same mask. The hash is
// splitmix64's finalizer (integer ops only, identical on every GPU and on the host; the
// Rust twin is kernels_train::dropout_uniform). The caller advances `offset` by the element
// count after each use, so successive calls draw fresh masks from one seed.
// y[i] = x[l(i)] · scale where uniform(seed, offset + i) < keep, else 0; the counter is the
// logical (row-major) index i, so a strided x and a contiguous gradient get one mask.
// Work split: a grid-stride loop, one element per thread per iteration.
#include "prelude.cuh"
#include "strided.cuh"

__device__ __forceinline__ uint64_t kiln_dropout_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define KILN_DROPOUT(NAME, T)                                                                   \
    KILN_KERNEL void NAME(int64_t n, float keep, float scale, uint64_t seed, uint64_t offset, KilnStrided1 l, \
                          const T* __restrict__ x, T* __restrict__ y) {                         \
        /* The stream's key: seeds that differ by a little give unrelated streams. */           \
        const uint64_t key = kiln_dropout_mix(seed + 0x9e3779b97f4a7c15ull);                    \
        KILN_FOR_EACH(i, n) {                                                                   \
            const uint64_t h = kiln_dropout_mix(key + (offset + (uint64_t)i) * 0x9e3779b97f4a7c15ull); \
            const float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* 24 bits: exact in f32 */ \
            kiln_store(y, i, u < keep ? kiln_load(x, kiln_offset1(l, i)) * scale : 0.0f);       \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_DROPOUT(dropout_f32, float);
KILN_DROPOUT(dropout_f16, __half);
KILN_DROPOUT(dropout_bf16, __nv_bfloat16);
