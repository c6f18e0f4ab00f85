// Indexing kernels, the CUDA side of src/backend/cpu/index.rs:
// - index_select / gather copy x[.., t, ..] where t is read from an I64 index (one index per
//   position along `dim` for index_select, one per output element for gather);
// - index_add / scatter_add add src into a contiguous output that already holds the base
//   tensor (their backward pair), with atomicAdd because repeated indices hit one element.
// Work split: a grid-stride loop, one output (or source) element per thread per iteration.
//
// The strided operand is described by a KilnStrided1 whose dims are the dims being walked
// (the output for index_select / gather, src for the adds). For index_select / gather the
// source is read at the walked multi-index with its `dim` coordinate j replaced by t; with
// the source's strides that is offset(i) + (t - j) * stride[dim].
//
// Indices are checked where they are read: an out-of-range index does not fault. The thread
// skips that element and records the index in `status` (two u64, zeroed by the caller):
// status[0] becomes 1 for the first bad index seen and status[1] holds that index. The
// launcher side turns it into Error::IndexOutOfRange, as the CPU backend returns.
#include "prelude.cuh"
#include "strided.cuh"

// Coordinate along `dim` of the row-major multi-index of i over l.dims.
__device__ __forceinline__ int64_t kiln_index_coord(const KilnStrided1& l, int64_t i, int32_t dim) {
    for (int d = l.rank - 1; d > dim; --d) i /= l.dims[d];
    return i % l.dims[dim];
}

// Product of the dims after `dim`.
__device__ __forceinline__ int64_t kiln_index_inner(const KilnStrided1& l, int32_t dim) {
    int64_t inner = 1;
    for (int d = dim + 1; d < l.rank; ++d) inner *= l.dims[d];
    return inner;
}

// Only the thread that flips status[0] from 0 writes status[1]: no racing plain stores.
__device__ __forceinline__ void kiln_index_bad(unsigned long long* status, int64_t t) {
    if (atomicCAS(status, 0ull, 1ull) == 0ull) status[1] = (unsigned long long)t;
}

// y (contiguous, n elements, l.dims = x's dims with dims[dim] = number of indices)
// = x[..., idx[j], ...]; `size` is x's extent along dim.
#define KILN_INDEX_SELECT(NAME, T)                                                              \
    KILN_KERNEL void NAME(int64_t n, int32_t dim, int64_t size, KilnStrided1 l,                \
                          const int64_t* __restrict__ idx, const T* __restrict__ x, T* __restrict__ y, \
                          unsigned long long* status) {                                          \
        KILN_FOR_EACH(i, n) {                                                                   \
            const int64_t j = kiln_index_coord(l, i, dim);                                      \
            const int64_t t = idx[j];                                                           \
            if (t < 0 || t >= size) {                                                           \
                kiln_index_bad(status, t);                                                      \
                continue;                                                                       \
            }                                                                                   \
            y[i] = x[kiln_offset1(l, i) + (t - j) * l.s0[dim]];                                 \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_INDEX_SELECT(index_select_f32, float);
KILN_INDEX_SELECT(index_select_f16, __half);
KILN_INDEX_SELECT(index_select_bf16, __nv_bfloat16);
KILN_INDEX_SELECT(index_select_i64, int64_t);

// y (contiguous, n elements, the index's shape = l.dims) = x[..., index[i], ...] along dim.
#define KILN_GATHER(NAME, T)                                                                    \
    KILN_KERNEL void NAME(int64_t n, int32_t dim, int64_t size, KilnStrided1 l,                \
                          const int64_t* __restrict__ index, const T* __restrict__ x, T* __restrict__ y, \
                          unsigned long long* status) {                                          \
        KILN_FOR_EACH(i, n) {                                                                   \
            const int64_t j = kiln_index_coord(l, i, dim);                                      \
            const int64_t t = index[i];                                                         \
            if (t < 0 || t >= size) {                                                           \
                kiln_index_bad(status, t);                                                      \
                continue;                                                                       \
            }                                                                                   \
            y[i] = x[kiln_offset1(l, i) + (t - j) * l.s0[dim]];                                 \
        }                                                                                       \
    }                                                                                           \
    KILN_REGISTER(NAME)

KILN_GATHER(gather_f32, float);
KILN_GATHER(gather_f16, __half);
KILN_GATHER(gather_bf16, __nv_bfloat16);
KILN_GATHER(gather_i64, int64_t);

// out[o, idx[j], i] += src[o, j, i]. `out` is contiguous [outer, size, inner]; src is the
// view l (dims [outer, len, inner] once split around dim), n = its element count.
KILN_KERNEL void index_add_f32(int64_t n, int32_t dim, int64_t size, KilnStrided1 l, const int64_t* __restrict__ idx,
                               const float* __restrict__ src, float* out, unsigned long long* status) {
    const int64_t inner = kiln_index_inner(l, dim), len = l.dims[dim];
    KILN_FOR_EACH(i, n) {
        const int64_t in = i % inner, j = (i / inner) % len, o = i / (inner * len);
        const int64_t t = idx[j];
        if (t < 0 || t >= size) {
            kiln_index_bad(status, t);
            continue;
        }
        atomicAdd(out + (o * size + t) * inner + in, src[kiln_offset1(l, i)]);
    }
}
KILN_REGISTER(index_add_f32);

// out[o, index[o, j, i], i] += src[o, j, i]; `index` is contiguous with src's shape (l.dims).
KILN_KERNEL void scatter_add_f32(int64_t n, int32_t dim, int64_t size, KilnStrided1 l,
                                 const int64_t* __restrict__ index, const float* __restrict__ src, float* out,
                                 unsigned long long* status) {
    const int64_t inner = kiln_index_inner(l, dim), len = l.dims[dim];
    KILN_FOR_EACH(i, n) {
        const int64_t in = i % inner, o = i / (inner * len);
        const int64_t t = index[i];
        if (t < 0 || t >= size) {
            kiln_index_bad(status, t);
            continue;
        }
        atomicAdd(out + (o * size + t) * inner + in, src[kiln_offset1(l, i)]);
    }
}
KILN_REGISTER(scatter_add_f32);
