// Geometry of a 2-D sliding window over x [n, c, h, w], passed to the conv and pooling
// kernels by value. All int64 so the struct has no padding; the host
// (src/backend/cuda/kernels_conv.rs) fills the same #[repr(C)] layout.
#ifndef KILN_WINDOW_CUH
#define KILN_WINDOW_CUH
#include "prelude.cuh"

struct KilnWindow2d {
    int64_t n, c, h, w;  // input dims
    int64_t oh, ow;      // output extent (as Window2d::out_hw computes it)
    int64_t kh, kw;      // kernel
    int64_t sh, sw;      // stride
    int64_t ph, pw;      // padding (zeros for conv and average pooling; never wins a max)
    int64_t dh, dw;      // dilation
    int64_t xs[4];       // element strides of x (n, c, h, w); unused where x is written
    int64_t xoff;        // element offset of x
};

// Output coordinate o (along one axis) whose tap k reads input coordinate y, or -1 when
// no output's tap k lands there: y = o*stride + k*dil - pad must hold for 0 <= o < out.
__device__ __forceinline__ int64_t kiln_window_out(int64_t y, int64_t k, int64_t stride, int64_t pad, int64_t dil,
                                                   int64_t out) {
    const int64_t t = y + pad - k * dil;
    if (t < 0 || t % stride != 0) return -1;
    const int64_t o = t / stride;
    return o < out ? o : -1;
}

#endif
