//! Stochastic gradient descent, as torch.optim.SGD.

use super::{all_params, Optimizer, ParamGroup, State};
use crate::{no_grad, Result, Tensor};

#[derive(Debug, Clone, Copy, Default)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

pub struct Sgd {
    groups: Vec<ParamGroup>,
    config: SgdConfig,
    state: State,
}

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Sgd {
        Sgd { groups, config, state: State::default() }
    }
    /// One group: `Sgd::simple(model.parameters(), lr)`.
    pub fn simple(params: Vec<Tensor>, lr: f64, config: SgdConfig) -> Sgd {
        Sgd::new(vec![ParamGroup::new(params, lr, 0.0)], config)
    }
}

impl Optimizer for Sgd {
    /// d = g + wd·p; with momentum: buf = d (first step) or μ·buf + (1-τ)·d, and
    /// d = d + μ·buf (Nesterov) or buf; then p -= lr·d.
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let mut i = 0;
        no_grad(|| {
            for g in &self.groups {
                for p in &g.params {
                    let idx = i;
                    i += 1;
                    let Some(grad) = p.grad() else { continue };
                    let mut d = if g.weight_decay != 0.0 { grad.add(&p.mul_scalar(g.weight_decay)?)? } else { grad };
                    if c.momentum != 0.0 {
                        let buf = match self.state.get(idx, "momentum_buffer") {
                            None => d.copy()?,
                            Some(b) => b.mul_scalar(c.momentum)?.add(&d.mul_scalar(1.0 - c.dampening)?)?,
                        };
                        d = if c.nesterov { d.add(&buf.mul_scalar(c.momentum)?)? } else { buf.clone() };
                        self.state.set(idx, "momentum_buffer", buf);
                    }
                    p.assign(&p.sub(&d.mul_scalar(g.lr)?)?)?;
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
        self.state = State::from_named(state, &["momentum_buffer"], &all_params(&self.groups))?;
        Ok(())
    }
}
