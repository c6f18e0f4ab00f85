//! Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_.

use crate::{no_grad, Result, Tensor};

/// Scales every gradient by max_norm / (total + 1e-6) when the global L2 norm `total` of
/// all gradients exceeds `max_norm`. Returns `total` (before clipping).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    no_grad(|| {
        let grads: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
        // Σg² per device, added up where the gradients are (f64, in parameter order), then
        // read once per device: reading each gradient's sum was a GPU sync per parameter.
        let mut sums: Vec<Tensor> = Vec::new();
        for g in &grads {
            let s = g.to_dtype(crate::DType::F64)?.sqr()?.sum_all()?;
            match sums.iter_mut().find(|t| t.device() == s.device()) {
                Some(t) => *t = t.add(&s)?,
                None => sums.push(s),
            }
        }
        let mut total = 0.0f64;
        for s in &sums {
            total += s.to_scalar::<f64>()?;
        }
        let total = total.sqrt();
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for g in &grads {
                g.assign(&g.mul_scalar(coef)?)?;
            }
        }
        Ok(total)
    })
}
