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
    let update = |(((p, &g), m), v): (((&mut T, &T), &mut T), &mut T)| {
        let mut g = g;
        if decoupled {
            *p = *p * decay;
        } else {
            g = g + wd * *p;
        }
        *m = *m + (g - *m) * one_m_b1;
        *v = *v * b2 + g * g * one_m_b2;
        *p = *p - step_size * *m / ((*v).sqrt() * inv_bc2_sqrt + eps);
    };
    if p.len() < super::PAR_THRESHOLD {
        p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()).for_each(update);
    } else {
        p.par_iter_mut()
            .zip(g.par_iter())
            .zip(m.par_iter_mut())
            .zip(v.par_iter_mut())
            .with_min_len(4096)
            .for_each(update);
    }
}
