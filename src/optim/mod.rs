//! Optimizers with PyTorch's exact update rules (SGD with momentum / Nesterov / weight decay,
//! Adam, AdamW), parameter groups, learning-rate schedules and gradient clipping.
//!
//! Updates are written in tensor ops under `no_grad` and written back in place, so they run
//! on any device; optimizer state (moments, momentum buffers, step counts) is exposed as
//! named tensors for checkpoints.

mod adam;
mod clip;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig};
pub use clip::clip_grad_norm;
pub use schedule::{ConstantLr, CosineWithWarmup, LrSchedule, OneCycle, StepLr};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, Result, Tensor};

/// Parameters that share a learning rate and weight decay.
#[derive(Clone)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub lr: f64,
    pub weight_decay: f64,
}

impl ParamGroup {
    pub fn new(params: Vec<Tensor>, lr: f64, weight_decay: f64) -> ParamGroup {
        ParamGroup { params, lr, weight_decay }
    }
}

/// What every optimizer does.
pub trait Optimizer: Send {
    /// One update of every parameter that has a gradient.
    fn step(&mut self) -> Result<()>;
    /// The parameter groups (to read or change learning rates).
    fn groups_mut(&mut self) -> &mut [ParamGroup];
    fn groups(&self) -> &[ParamGroup];
    /// Optimizer state as named tensors ("state.<param index>.<name>").
    fn state_dict(&self) -> Vec<(String, Tensor)>;
    /// Restores state saved by `state_dict` (strict: names and shapes must match).
    fn load_state_dict(&mut self, state: &[(String, Tensor)]) -> Result<()>;

    /// Forgets every parameter's gradient.
    fn zero_grad(&self) {
        for g in self.groups() {
            for p in &g.params {
                p.zero_grad();
            }
        }
    }
    /// Sets the learning rate of every group.
    fn set_lr(&mut self, lr: f64) {
        for g in self.groups_mut() {
            g.lr = lr;
        }
    }
    /// The first group's learning rate.
    fn lr(&self) -> f64 {
        self.groups().first().map(|g| g.lr).unwrap_or(0.0)
    }
}

/// Per-parameter state tensors, keyed by the parameter's index across groups.
#[derive(Default, Clone)]
pub(crate) struct State {
    slots: Vec<Vec<(&'static str, Tensor)>>,
}

impl State {
    pub(crate) fn get(&self, i: usize, name: &str) -> Option<&Tensor> {
        self.slots.get(i)?.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }
    pub(crate) fn set(&mut self, i: usize, name: &'static str, t: Tensor) {
        if self.slots.len() <= i {
            self.slots.resize(i + 1, Vec::new());
        }
        let slot = &mut self.slots[i];
        match slot.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = t,
            None => slot.push((name, t)),
        }
    }
    pub(crate) fn to_named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            for (n, t) in slot {
                out.push((format!("state.{i}.{n}"), t.clone()));
            }
        }
        out
    }
    /// Rebuilds from named tensors; `names` are the state names this optimizer uses.
    pub(crate) fn from_named(state: &[(String, Tensor)], names: &[&'static str], params: &[Tensor]) -> Result<State> {
        let mut s = State::default();
        for (key, t) in state {
            let bad = || Error::StateDict(format!("optimizer state `{key}` is not of the form state.<index>.<name>"));
            let mut parts = key.splitn(3, '.');
            let (Some("state"), Some(idx), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad());
            };
            let i: usize = idx.parse().map_err(|_| bad())?;
            let name = names
                .iter()
                .find(|n| **n == name)
                .ok_or_else(|| Error::StateDict(format!("unknown optimizer state `{key}`")))?;
            let p = params
                .get(i)
                .ok_or_else(|| Error::StateDict(format!("`{key}`: there are only {} parameters", params.len())))?;
            if *name != "step" && t.shape() != p.shape() {
                return Err(Error::StateDict(format!(
                    "`{key}` has shape {} but the parameter has {}",
                    t.shape(),
                    p.shape()
                )));
            }
            s.set(i, name, t.copy()?);
        }
        Ok(s)
    }
}

/// All parameters of all groups, in order (the index used by `State`).
pub(crate) fn all_params(groups: &[ParamGroup]) -> Vec<Tensor> {
    groups.iter().flat_map(|g| g.params.iter().cloned()).collect()
}
