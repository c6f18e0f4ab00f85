//! Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_.

use crate::{no_grad, DType, Device, Result, Tensor};

/// Scales every gradient by max_norm / (total + 1e-6) when the global L2 norm `total` of
/// all gradients exceeds `max_norm`. Returns `total` (before clipping).
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    no_grad(|| {
        let grads: Vec<Tensor> = params.iter().filter_map(|p| p.grad()).collect();
        // Σg² per device, added up where the gradients are (in parameter order), then read
        // once per device: reading each gradient's sum was a GPU sync per parameter. In f64
        // on the CPU; in f32 on a GPU, whose kernels are f32 (its f64 math goes through the
        // host, a sync per op), as PyTorch's norm of f32 gradients is.
        let mut sums: Vec<Tensor> = Vec::new();
        for g in &grads {
            let dtype = if g.device() == Device::Cpu { DType::F64 } else { DType::F32 };
            let s = g.to_dtype(dtype)?.sqr()?.sum_all()?;
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
