//! Fused optimizer updates: one pass over parameter, gradient and state instead of a dozen
//! tensor ops (each a full read and write of the parameter's size).

use super::{CpuData, CpuStorage, Float};
use crate::backend::AdamStep;
use rayon::prelude::*;

/// In place: m, v and p of one Adam/AdamW step (PyTorch's formulas, see optim/adam.rs).
/// All four buffers are contiguous and of one length (checked by the caller).
pub fn adam_step(p: &mut CpuStorage, g: &CpuStorage, m: &mut CpuStorage, v: &mut CpuStorage, h: &AdamStep) -> bool {
    match (p.data_mut(), g.data(), m.data_mut(), v.data_mut()) {
        (CpuData::F32(p), CpuData::F32(g), CpuData::F32(m), CpuData::F32(v)) => go(p, g, m, v, h),
        (CpuData::F64(p), CpuData::F64(g), CpuData::F64(m), CpuData::F64(v)) => go(p, g, m, v, h),
        _ => return false,
    }
    true
}

fn go<T: Float>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], h: &AdamStep) {
    let c = |x: f64| T::from_f64(x);
    // 1 - β in f64 first (as PyTorch passes it): in f32, 1 - 0.999f loses 4 digits.
    let (b2, eps, wd) = (c(h.beta2), c(h.eps), c(h.weight_decay));
    let (one_m_b1, one_m_b2) = (c(1.0 - h.beta1), c(1.0 - h.beta2));
    let step_size = c(h.lr / (1.0 - h.beta1.powf(h.step)));
    let inv_bc2_sqrt = c(1.0 / (1.0 - h.beta2.powf(h.step)).sqrt());
    let decay = c(1.0 - h.lr * h.weight_decay);
    let decoupled = h.decoupled;
    // Plain indexed loops over chunks, the branch hoisted out, so the compiler vectorises
    // them (a rayon zip of four iterators runs element by element: 2x slower here), with
    // 8-lane AVX2 where the CPU has it (`vectorize`). The arithmetic, and so every bit of
    // the result, is unchanged.
    let run = |p: &mut [T], g: &[T], m: &mut [T], v: &mut [T]| {
        let n = p.len().min(g.len()).min(m.len()).min(v.len());
        let (p, g, m, v) = (&mut p[..n], &g[..n], &mut m[..n], &mut v[..n]);
        super::simd::vectorize(
            #[inline(always)]
            || {
                if decoupled {
                    for i in 0..n {
                        p[i] = p[i] * decay;
                        m[i] = m[i] + (g[i] - m[i]) * one_m_b1;
                        v[i] = v[i] * b2 + g[i] * g[i] * one_m_b2;
                        p[i] = p[i] - step_size * m[i] / (v[i].sqrt() * inv_bc2_sqrt + eps);
                    }
                } else {
                    for i in 0..n {
                        let gi = g[i] + wd * p[i];
                        m[i] = m[i] + (gi - m[i]) * one_m_b1;
                        v[i] = v[i] * b2 + gi * gi * one_m_b2;
                        p[i] = p[i] - step_size * m[i] / (v[i].sqrt() * inv_bc2_sqrt + eps);
                    }
                }
            },
        )
    };
    if p.len() < super::par_threshold_optim() {
        run(p, g, m, v);
    } else {
        // One contiguous part per worker, not many small chunks: with rayon's join the loop's
        // thread takes the first part and the other worker the second, step after step, so
        // each part of p, m and v stays in one core's cache (the GEMMs split weights the same
        // way; see matmul.rs). Small chunks went to whichever worker was free, so their lines
        // were often in the other core's cache: Adam measured 26 µs per call on two workers,
        // 16 on one (MLP, BENCHMARKS.md session 6).
        let chunk = p.len().div_ceil(super::threads()).next_multiple_of(16);
        p.par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .for_each(|(((p, g), m), v)| run(p, g, m, v));
    }
}
