//! Optimizer steps against PyTorch's update formulas written out on scalars (f64), over
//! several steps with changing gradients; schedules against known points; clipping.

use crate::{t, vec32};
use kiln::optim::{
    clip_grad_norm, Adam, AdamConfig, CosineWithWarmup, LrSchedule, OneCycle, Optimizer, ParamGroup, Sgd, SgdConfig,
    StepLr,
};
use kiln::Tensor;

/// Gives `p` the gradient `g` (through a real backward of Σ p·g).
fn set_grad(p: &Tensor, g: &[f32]) {
    p.zero_grad();
    p.mul(&t(g, &[g.len()])).unwrap().sum_all().unwrap().backward().unwrap();
}

const GRADS: [[f32; 2]; 4] = [[0.5, -1.0], [0.25, 2.0], [-0.75, 0.1], [1.5, -0.3]];

#[test]
fn sgd_momentum_nesterov_weight_decay() {
    for nesterov in [false, true] {
        let (lr, mu, wd, damp) = (0.1, 0.9, 0.01, if nesterov { 0.0 } else { 0.2 });
        let p = t(&[1.0, -2.0], &[2]).requires_grad_().unwrap();
        let mut opt = Sgd::new(
            vec![ParamGroup::new(vec![p.clone()], lr, wd)],
            SgdConfig { momentum: mu, dampening: damp, nesterov },
        );
        let mut want = [1.0f64, -2.0];
        let mut buf: Option<[f64; 2]> = None;
        for g in GRADS {
            set_grad(&p, &g);
            opt.step().unwrap();
            // torch.optim.SGD, written out.
            let d: Vec<f64> = (0..2).map(|i| g[i] as f64 + wd * want[i]).collect();
            let b: [f64; 2] = match buf {
                None => [d[0], d[1]],
                Some(b) => [mu * b[0] + (1.0 - damp) * d[0], mu * b[1] + (1.0 - damp) * d[1]],
            };
            buf = Some(b);
            for i in 0..2 {
                let step = if nesterov { d[i] + mu * b[i] } else { b[i] };
                want[i] -= lr * step;
            }
            let got = vec32(&p);
            for i in 0..2 {
                assert!((got[i] as f64 - want[i]).abs() < 1e-6, "nesterov={nesterov}: {got:?} vs {want:?}");
            }
        }
    }
}

fn adam_reference(decoupled: bool) -> Vec<[f64; 2]> {
    let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1);
    let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
    let mut out = Vec::new();
    for (step, g) in GRADS.iter().enumerate() {
        let t = step as f64 + 1.0;
        for i in 0..2 {
            let mut g = g[i] as f64;
            if decoupled {
                p[i] *= 1.0 - lr * wd; // AdamW
            } else {
                g += wd * p[i]; // Adam's L2 penalty
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let m_hat = m[i] / (1.0 - b1.powf(t));
            let v_hat = v[i] / (1.0 - b2.powf(t));
            p[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
        out.push(p);
    }
    out
}

#[test]
fn adam_and_adamw_with_bias_correction() {
    for decoupled in [false, true] {
        let p = t(&[1.0, -2.0], &[2]).requires_grad_().unwrap();
        let cfg = AdamConfig { decoupled_weight_decay: decoupled, ..Default::default() };
        let mut opt = Adam::new(vec![ParamGroup::new(vec![p.clone()], 0.01, 0.1)], cfg);
        let want = adam_reference(decoupled);
        for (k, g) in GRADS.iter().enumerate() {
            set_grad(&p, g);
            opt.step().unwrap();
            let got = vec32(&p);
            for i in 0..2 {
                assert!(
                    (got[i] as f64 - want[k][i]).abs() < 1e-6,
                    "adamw={decoupled} step {k}: {got:?} vs {:?}",
                    want[k]
                );
            }
        }
    }
    // The first Adam step is lr·g/(|g| + ε): a signed step of size lr.
    let p = t(&[0.0], &[1]).requires_grad_().unwrap();
    let mut opt = Adam::simple(vec![p.clone()], 0.5);
    set_grad(&p, &[-123.0]);
    opt.step().unwrap();
    assert!((vec32(&p)[0] - 0.5).abs() < 1e-6, "{:?}", vec32(&p));
}

#[test]
fn optimizer_state_round_trips() {
    let p = t(&[1.0, -2.0], &[2]).requires_grad_().unwrap();
    let mut a = Adam::simple(vec![p.clone()], 0.01);
    set_grad(&p, &GRADS[0]);
    a.step().unwrap();
    let state = a.state_dict();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"]);
    // A second optimizer loaded with the state takes the identical next step.
    let q = Tensor::from_vec(vec32(&p), [2], crate::CPU).unwrap().requires_grad_().unwrap();
    let mut b = Adam::simple(vec![q.clone()], 0.01);
    b.load_state_dict(&state).unwrap();
    set_grad(&p, &GRADS[1]);
    set_grad(&q, &GRADS[1]);
    a.step().unwrap();
    b.step().unwrap();
    assert_eq!(vec32(&p), vec32(&q));
    assert!(b.load_state_dict(&[("state.5.exp_avg".into(), t(&[0.0], &[1]))]).is_err());
}

#[test]
fn schedules_hit_their_known_points() {
    let s = StepLr { base: 0.1, step_size: 3, gamma: 0.5 };
    assert_eq!([s.lr(0), s.lr(2), s.lr(3), s.lr(7)], [0.1, 0.1, 0.05, 0.025]);
    let c = CosineWithWarmup { base: 1.0, min_lr: 0.1, warmup: 4, total: 14 };
    assert!((c.lr(0) - 0.25).abs() < 1e-12 && (c.lr(3) - 1.0).abs() < 1e-12);
    assert!((c.lr(9) - 0.55).abs() < 1e-12, "halfway down the cosine: (1 + 0.1) / 2");
    assert!((c.lr(14) - 0.1).abs() < 1e-12 && (c.lr(100) - 0.1).abs() < 1e-12);
    let o = OneCycle::new(0.1, 100);
    assert!((o.lr(0) - 0.004).abs() < 1e-12, "starts at max_lr / 25");
    assert!((o.lr(29) - 0.1).abs() < 1e-12, "peaks at pct_start·total - 1");
    assert!((o.lr(99) - 0.004 / 1e4).abs() < 1e-15, "ends at initial / 1e4");
    assert!(o.lr(50) < 0.1 && o.lr(50) > o.lr(80));
}

#[test]
fn clip_by_global_norm() {
    let a = t(&[0.0, 0.0], &[2]).requires_grad_().unwrap();
    let b = t(&[0.0], &[1]).requires_grad_().unwrap();
    set_grad(&a, &[3.0, 0.0]);
    set_grad(&b, &[4.0]);
    let total = clip_grad_norm(&[a.clone(), b.clone()], 1.0).unwrap();
    assert!((total - 5.0).abs() < 1e-9);
    let s = 1.0 / (5.0 + 1e-6);
    assert!((vec32(&a.grad().unwrap())[0] - 3.0 * s as f32).abs() < 1e-6);
    assert!((vec32(&b.grad().unwrap())[0] - 4.0 * s as f32).abs() < 1e-6);
    // Below the limit: untouched.
    assert!((clip_grad_norm(std::slice::from_ref(&a), 10.0).unwrap() - 0.6).abs() < 1e-6);
    assert!((vec32(&a.grad().unwrap())[0] - 3.0 * s as f32).abs() < 1e-6);
}

#[test]
fn adam_without_a_fused_kernel_takes_the_same_steps() {
    // BF16 has no fused CPU kernel: the tensor-op path runs, and must follow the same formula.
    let p = t(&[1.0, -2.0], &[2]).to_dtype(kiln::DType::BF16).unwrap().requires_grad_().unwrap();
    let cfg = AdamConfig { decoupled_weight_decay: true, ..Default::default() };
    let mut opt = Adam::new(vec![ParamGroup::new(vec![p.clone()], 0.01, 0.1)], cfg);
    let want = adam_reference(true);
    for (k, g) in GRADS.iter().enumerate() {
        p.zero_grad();
        let gt = t(g, &[2]).to_dtype(kiln::DType::BF16).unwrap();
        p.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
        opt.step().unwrap();
        let got = vec32(&p);
        for i in 0..2 {
            // bf16 keeps 8 bits of mantissa: compare to the f64 reference at that precision.
            assert!((got[i] as f64 - want[k][i]).abs() < 2e-2, "step {k}: {got:?} vs {:?}", want[k]);
        }
    }
}

/// One group with a parameter the fused kernel takes (f32) and one it does not (bf16): each
/// takes exactly one step per `step()`, the f32 one the same as alone (a batch of fused
/// steps that stopped half-way and fell back would step the f32 one twice).
#[test]
fn adam_steps_a_mixed_group_once_each() {
    let p32 = t(&[1.0, -2.0], &[2]).requires_grad_().unwrap();
    let p16 = t(&[1.0, -2.0], &[2]).to_dtype(kiln::DType::BF16).unwrap().requires_grad_().unwrap();
    let alone = t(&[1.0, -2.0], &[2]).requires_grad_().unwrap();
    let cfg = AdamConfig { decoupled_weight_decay: true, ..Default::default() };
    let mut mixed = Adam::new(vec![ParamGroup::new(vec![p32.clone(), p16.clone()], 0.01, 0.1)], cfg);
    let mut single = Adam::new(vec![ParamGroup::new(vec![alone.clone()], 0.01, 0.1)], cfg);
    let want = adam_reference(true);
    for (k, g) in GRADS.iter().enumerate() {
        set_grad(&p32, g);
        set_grad(&alone, g);
        p16.zero_grad();
        let gt = t(g, &[2]).to_dtype(kiln::DType::BF16).unwrap();
        p16.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
        mixed.step().unwrap();
        single.step().unwrap();
        assert_eq!(vec32(&p32), vec32(&alone), "step {k}: the f32 parameter of the mixed group");
        for (i, got) in vec32(&p16).iter().enumerate() {
            assert!((*got as f64 - want[k][i]).abs() < 2e-2, "step {k}: bf16 {got} vs {}", want[k][i]);
        }
    }
}
