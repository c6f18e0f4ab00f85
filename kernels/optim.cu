// Fused optimizer updates in place, f32: one pass over parameter, gradient and state.
// They must equal the CPU's results bit for bit (a parameter trained on either device stays
// the same), so every operation is written as the CPU rounds it, with __fmul_rn /
// __fadd_rn / __fsub_rn / __fdiv_rn: NVRTC would otherwise fuse a*b+c into one FMA (one
// rounding instead of two). The f32 constants come from the host, computed from the f64
// hyper-parameters exactly as the CPU computes them (src/backend/cuda/kernels_train.rs).
// Work split: a grid-stride loop, one element per thread per iteration.
#include "prelude.cuh"
#include "strided.cuh"

// x·c as Tensor::mul_scalar computes it on the CPU: affine(c, 0), i.e. x·c + 0.
__device__ __forceinline__ float kiln_optim_scale(float x, float c) { return __fadd_rn(__fmul_rn(x, c), 0.0f); }

// SGD as src/optim/sgd.rs (torch.optim.SGD), in its tensor ops' order:
//   d = g (+ p·wd when weight_decay)
//   momentum: buf = d on the first step, else buf·μ + d·(1-dampening);
//             d = d + buf·μ (nesterov) or buf
//   p = p - d·lr
// `buf` is read and written only when `use_momentum` (it may be null otherwise).
KILN_KERNEL void sgd_f32(int64_t n, float lr, float weight_decay, float momentum, float one_minus_dampening,
                         int32_t use_weight_decay, int32_t use_momentum, int32_t nesterov, int32_t first_step,
                         float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf) {
    KILN_FOR_EACH(i, n) {
        float d = g[i];
        if (use_weight_decay) d = __fadd_rn(d, kiln_optim_scale(p[i], weight_decay));
        if (use_momentum) {
            const float b =
                first_step ? d : __fadd_rn(kiln_optim_scale(buf[i], momentum), kiln_optim_scale(d, one_minus_dampening));
            buf[i] = b;
            d = nesterov ? __fadd_rn(d, kiln_optim_scale(b, momentum)) : b;
        }
        p[i] = __fsub_rn(p[i], kiln_optim_scale(d, lr));
    }
}
KILN_REGISTER(sgd_f32);

// One Adam / AdamW step's constants (KilnAdam = AdamArgs in kernels_train.rs).
struct KilnAdam {
    float beta2, eps, weight_decay;
    float one_minus_beta1, one_minus_beta2;
    float step_size;     // lr / (1 - β1^t)
    float inv_bc2_sqrt;  // 1 / sqrt(1 - β2^t)
    float decay;         // 1 - lr·wd (AdamW)
    int32_t decoupled;   // AdamW
    int32_t pad_;
};

// Adam / AdamW as src/backend/cpu/optim.rs, operation for operation:
//   AdamW: p = p·decay | Adam: g = g + wd·p
//   m = m + (g - m)·(1-β1);  v = v·β2 + g·g·(1-β2)
//   p = p - step_size·m / (sqrt(v)·inv_bc2_sqrt + eps)
__device__ __forceinline__ void kiln_adam_element(const KilnAdam& h, float* __restrict__ p,
                                                  const float* __restrict__ g, float* __restrict__ m,
                                                  float* __restrict__ v, int64_t i) {
    float gi = g[i];
    float pi = p[i];
    if (h.decoupled) {
        pi = __fmul_rn(pi, h.decay);
    } else {
        gi = __fadd_rn(gi, __fmul_rn(h.weight_decay, pi));
    }
    const float mi = __fadd_rn(m[i], __fmul_rn(__fsub_rn(gi, m[i]), h.one_minus_beta1));
    const float vi = __fadd_rn(__fmul_rn(v[i], h.beta2), __fmul_rn(__fmul_rn(gi, gi), h.one_minus_beta2));
    const float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(vi), h.inv_bc2_sqrt), h.eps);
    p[i] = __fsub_rn(pi, __fdiv_rn(__fmul_rn(h.step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
}

KILN_KERNEL void adam_f32(int64_t n, KilnAdam h, float* __restrict__ p, const float* __restrict__ g,
                          float* __restrict__ m, float* __restrict__ v) {
    KILN_FOR_EACH(i, n) { kiln_adam_element(h, p, g, m, v, i); }
}
KILN_REGISTER(adam_f32);

// One piece of one parameter for adam_many_f32 (AdamChunk in kernels_train.rs): the
// addresses of its first element in p, g, m, v, and its length.
struct KilnAdamChunk {
    float* p;
    const float* g;
    float* m;
    float* v;
    int64_t len;
};

// The same step over many parameters in one launch (the multi-tensor optimizer step): block
// b updates chunk b of `chunks`, a table in device memory the host fills each step (a
// ResNet-18 step was 62 launches of adam_f32). Elementwise the same as adam_f32.
KILN_KERNEL void adam_many_f32(int64_t n_chunks, KilnAdam h, const KilnAdamChunk* __restrict__ chunks) {
    for (int64_t b = blockIdx.x; b < n_chunks; b += gridDim.x) {
        const KilnAdamChunk c = chunks[b];
        for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) kiln_adam_element(h, c.p, c.g, c.m, c.v, i);
    }
}
KILN_REGISTER(adam_many_f32);
