//! Learning-rate schedules as functions of the step (or epoch) count, with PyTorch's
//! formulas. The training loop calls `lr(step)` and sets it on the optimizer.

/// A learning rate for each step.
pub trait LrSchedule: Send + Sync {
    fn lr(&self, step: usize) -> f64;
}

/// The same rate throughout.
pub struct ConstantLr(pub f64);

impl LrSchedule for ConstantLr {
    fn lr(&self, _: usize) -> f64 {
        self.0
    }
}

/// base · γ^⌊step / step_size⌋ (torch.optim.lr_scheduler.StepLR).
pub struct StepLr {
    pub base: f64,
    pub step_size: usize,
    pub gamma: f64,
}

impl LrSchedule for StepLr {
    fn lr(&self, step: usize) -> f64 {
        self.base * self.gamma.powi((step / self.step_size.max(1)) as i32)
    }
}

/// Linear warm-up from 0 to `base` over `warmup` steps, then cosine decay to `min_lr` at
/// `total` steps (and `min_lr` after).
pub struct CosineWithWarmup {
    pub base: f64,
    pub min_lr: f64,
    pub warmup: usize,
    pub total: usize,
}

impl LrSchedule for CosineWithWarmup {
    fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let p = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.min_lr + (self.base - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// torch.optim.lr_scheduler.OneCycleLR with cosine annealing, two phases: from
/// max_lr/div_factor up to max_lr over pct_start of the steps, then down to
/// initial/final_div_factor.
pub struct OneCycle {
    pub max_lr: f64,
    pub total: usize,
    pub pct_start: f64,
    pub div_factor: f64,
    pub final_div_factor: f64,
}

impl OneCycle {
    /// PyTorch's defaults: pct_start 0.3, div_factor 25, final_div_factor 1e4.
    pub fn new(max_lr: f64, total: usize) -> OneCycle {
        OneCycle { max_lr, total, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 }
    }
}

impl LrSchedule for OneCycle {
    fn lr(&self, step: usize) -> f64 {
        let cos =
            |start: f64, end: f64, pct: f64| end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let up_end = self.pct_start * self.total as f64 - 1.0;
        let down_end = self.total as f64 - 1.0;
        let s = step as f64;
        if s <= up_end {
            cos(initial, self.max_lr, if up_end > 0.0 { s / up_end } else { 1.0 })
        } else {
            cos(self.max_lr, min, ((s - up_end) / (down_end - up_end)).min(1.0))
        }
    }
}
