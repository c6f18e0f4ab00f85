//! Adam and AdamW, as torch.optim.Adam / AdamW (single-tensor path, amsgrad off).

use super::{all_params, Optimizer, ParamGroup, State};
use crate::{no_grad, DType, Result, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// AdamW: decay the weights directly (p *= 1 - lr·wd) instead of adding wd·p to the
    /// gradient.
    pub decoupled_weight_decay: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, decoupled_weight_decay: false }
    }
}

pub struct Adam {
    groups: Vec<ParamGroup>,
    config: AdamConfig,
    state: State,
}

impl Adam {
    pub fn new(groups: Vec<ParamGroup>, config: AdamConfig) -> Adam {
        Adam { groups, config, state: State::default() }
    }
    /// Adam with one group and PyTorch's defaults.
    pub fn simple(params: Vec<Tensor>, lr: f64) -> Adam {
        Adam::new(vec![ParamGroup::new(params, lr, 0.0)], AdamConfig::default())
    }
    /// AdamW with one group (PyTorch's default weight decay is 0.01).
    pub fn adamw(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> Adam {
        let c = AdamConfig { decoupled_weight_decay: true, ..Default::default() };
        Adam::new(vec![ParamGroup::new(params, lr, weight_decay)], c)
    }
}

impl Optimizer for Adam {
    /// t += 1; (AdamW: p *= 1 - lr·wd | Adam: g += wd·p); m = lerp(m, g, 1-β1);
    /// v = β2·v + (1-β2)·g²; p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + ε).
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let mut i = 0;
        no_grad(|| {
            for g in &self.groups {
                for p in &g.params {
                    let idx = i;
                    i += 1;
                    let Some(mut grad) = p.grad() else { continue };
                    let t = self.state.get(idx, "step").map(|s| s.to_scalar::<f64>()).transpose()?.unwrap_or(0.0) + 1.0;
                    if g.weight_decay != 0.0 {
                        if c.decoupled_weight_decay {
                            p.assign(&p.mul_scalar(1.0 - g.lr * g.weight_decay)?)?;
                        } else {
                            grad = grad.add(&p.mul_scalar(g.weight_decay)?)?;
                        }
                    }
                    let m = match self.state.get(idx, "exp_avg") {
                        Some(m) => m.add(&grad.sub(m)?.mul_scalar(1.0 - c.beta1)?)?,
                        None => grad.mul_scalar(1.0 - c.beta1)?,
                    };
                    let g2 = grad.sqr()?.mul_scalar(1.0 - c.beta2)?;
                    let v = match self.state.get(idx, "exp_avg_sq") {
                        Some(v) => v.mul_scalar(c.beta2)?.add(&g2)?,
                        None => g2,
                    };
                    let step_size = g.lr / (1.0 - c.beta1.powf(t));
                    let bc2_sqrt = (1.0 - c.beta2.powf(t)).sqrt();
                    let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, c.eps)?;
                    p.assign(&p.sub(&m.div(&denom)?.mul_scalar(step_size)?)?)?;
                    self.state.set(idx, "exp_avg", m);
                    self.state.set(idx, "exp_avg_sq", v);
                    self.state.set(idx, "step", Tensor::scalar(t, DType::F64, p.device())?);
                }
            }
            Ok(())
        })
    }
    fn groups_mut(&mut self) -> &mut [ParamGroup] {
        &mut self.groups
    }
    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.state.to_named()
    }
    fn load_state_dict(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        self.state = State::from_named(state, &["step", "exp_avg", "exp_avg_sq"], &all_params(&self.groups))?;
        Ok(())
    }
}
