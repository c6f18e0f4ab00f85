//! Adam and AdamW, as torch.optim.Adam / AdamW (amsgrad off). Each step is one fused pass
//! over p, g, m, v per parameter, and on a GPU one launch for all the parameters that share
//! hyper-parameters (as PyTorch's `foreach`/`fused` paths): the backend's `adam_step_many`.
//! The arithmetic is the same either way, bit for bit.

use super::{all_params, Optimizer, ParamGroup, State};
use crate::backend::{AdamItem, AdamStep, Storage};
use crate::{no_grad, DType, Device, Result, Tensor};

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

/// One parameter's step: the parameter, its gradient (contiguous), its state m and v.
struct Item {
    p: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Item {
    fn tensors(&self) -> [&Tensor; 4] {
        [&self.p, &self.grad, &self.m, &self.v]
    }
    /// Whether the fused kernels can take it: every buffer a dense whole storage of its own.
    fn fusable(&self) -> bool {
        let all = self.tensors();
        all.iter().all(|t| t.is_whole_storage())
            && all.iter().enumerate().all(|(i, a)| all[i + 1..].iter().all(|b| !a.same_storage(b)))
    }
}

/// The whole step of each item in one fused pass over p, g, m, v (one launch for them all
/// on a GPU). Ok(false), nothing changed: they cannot all take the fused kernel (dtype,
/// devices, or a storage shared between items, on which the locks below would deadlock).
fn fused_many(items: &[Item], h: &AdamStep) -> Result<bool> {
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            if a.tensors().iter().any(|x| b.tensors().iter().any(|y| x.same_storage(y))) {
                return Ok(false);
            }
        }
    }
    let mut guards: Vec<_> = items
        .iter()
        .map(|it| (it.p.storage_mut(), it.grad.storage(), it.m.storage_mut(), it.v.storage_mut()))
        .collect();
    let mut refs: Vec<AdamItem<'_>> =
        guards.iter_mut().map(|(p, g, m, v)| (&mut **p, &**g, &mut **m, &mut **v)).collect();
    Storage::adam_step_many(&mut refs, h)
}

/// The step in tensor ops, for what the fused kernels do not take.
fn unfused(item: Item, h: &AdamStep) -> Result<()> {
    let (m2, v2) = unfused_step(&item.p, item.grad, &item.m, &item.v, h)?;
    item.m.assign(&m2)?;
    item.v.assign(&v2)
}

/// The same step in tensor ops (any dtype, any layout): updates p, returns the new m and v.
fn unfused_step(p: &Tensor, mut grad: Tensor, m: &Tensor, v: &Tensor, h: &AdamStep) -> Result<(Tensor, Tensor)> {
    if h.weight_decay != 0.0 {
        if h.decoupled {
            p.assign(&p.mul_scalar(1.0 - h.lr * h.weight_decay)?)?;
        } else {
            grad = grad.add(&p.mul_scalar(h.weight_decay)?)?;
        }
    }
    let m = m.add(&grad.sub(m)?.mul_scalar(1.0 - h.beta1)?)?;
    let v = v.mul_scalar(h.beta2)?.add(&grad.sqr()?.mul_scalar(1.0 - h.beta2)?)?;
    let step_size = h.lr / (1.0 - h.beta1.powf(h.step));
    let bc2_sqrt = (1.0 - h.beta2.powf(h.step)).sqrt();
    let denom = v.sqrt()?.affine(1.0 / bc2_sqrt, h.eps)?;
    p.assign(&p.sub(&m.div(&denom)?.mul_scalar(step_size)?)?)?;
    Ok((m, v))
}

impl Optimizer for Adam {
    /// t += 1; (AdamW: p *= 1 - lr·wd | Adam: g += wd·p); m = lerp(m, g, 1-β1);
    /// v = β2·v + (1-β2)·g²; p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + ε).
    fn step(&mut self) -> Result<()> {
        let c = self.config;
        let mut i = 0;
        no_grad(|| {
            for g in &self.groups {
                // This group's parameters that take the fused kernel, batched by their
                // hyper-parameters (only the step count can differ within a group).
                let mut batches: Vec<(AdamStep, Vec<Item>)> = Vec::new();
                for p in &g.params {
                    let idx = i;
                    i += 1;
                    let Some(grad) = p.grad() else { continue };
                    let t = self.state.get(idx, "step").map(|s| s.to_scalar::<f64>()).transpose()?.unwrap_or(0.0) + 1.0;
                    let h = AdamStep {
                        lr: g.lr,
                        beta1: c.beta1,
                        beta2: c.beta2,
                        eps: c.eps,
                        weight_decay: g.weight_decay,
                        decoupled: c.decoupled_weight_decay,
                        step: t,
                    };
                    let m = match self.state.get(idx, "exp_avg") {
                        Some(m) => m.clone(),
                        None => p.zeros_like()?,
                    };
                    let v = match self.state.get(idx, "exp_avg_sq") {
                        Some(v) => v.clone(),
                        None => p.zeros_like()?,
                    };
                    self.state.set(idx, "exp_avg", m.clone());
                    self.state.set(idx, "exp_avg_sq", v.clone());
                    // On the CPU whatever the parameter's device, as PyTorch keeps it: reading
                    // it back from a GPU is a sync per parameter per step (it was: 62 per
                    // ResNet-18 step, each draining the GPU's queue).
                    self.state.set(idx, "step", Tensor::scalar(t, DType::F64, Device::Cpu)?);
                    let item = Item { p: p.clone(), grad: grad.contiguous()?, m, v };
                    if !item.fusable() {
                        unfused(item, &h)?;
                        continue;
                    }
                    match batches.iter_mut().find(|(bh, _)| *bh == h) {
                        Some((_, items)) => items.push(item),
                        None => batches.push((h, vec![item])),
                    }
                }
                for (h, items) in batches {
                    if fused_many(&items, &h)? {
                        continue;
                    }
                    // Not all at once (dtype, devices, storages shared between items): one by
                    // one, each fused where it can be.
                    for item in items {
                        if !fused_many(std::slice::from_ref(&item), &h)? {
                            unfused(item, &h)?;
                        }
                    }
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
