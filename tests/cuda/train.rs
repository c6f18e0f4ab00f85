//! Training kernels on the emulated device: fused softmax-cross-entropy against the CPU
//! backend's, dropout's device-side mask (its host twin, statistics, forward/backward
//! agreement), and the fused SGD / Adam / AdamW updates bit for bit against the CPU.

use super::{close, cpu, data, mptr, ptr};
use kiln::backend::cpu::{self as cpub, CpuStorage};
use kiln::backend::cuda::{emu::EmuLauncher, kernels_nn, kernels_train as kt};
use kiln::backend::AdamStep;
use kiln::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
use kiln::{DType, Error, Layout, Shape};

fn flat(n: usize) -> Layout {
    Layout::contiguous(Shape::new(vec![n]))
}

fn labels(rows: usize, cols: usize, seed: u64) -> Vec<i64> {
    let mut g = kiln::Generator::new(seed);
    (0..rows).map(|_| g.below(cols as u64) as i64).collect()
}

/// One row's loss in f64, straight from the definition.
fn naive_loss(row: &[f32], y: usize, eps: f64) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    let c = row.len() as f64;
    row.iter().enumerate().map(|(j, &v)| -((if j == y { 1.0 - eps } else { 0.0 }) + eps / c) * (v as f64 - lse)).sum()
}

#[test]
fn cross_entropy_matches_the_cpu_loss_and_gradient() {
    // Rows below, at and above the block size, not multiples of a warp; with and without
    // label smoothing.
    for (rows, cols) in [(3, 1), (5, 33), (4, 256), (2, 1000)] {
        for eps in [0.0, 0.1] {
            let x = data(rows * cols, 70, -6.0, 6.0);
            let y = labels(rows, cols, 71);
            let xl = Layout::contiguous(Shape::new(vec![rows, cols]));
            let (mut loss, mut grad, mut status) = (vec![0f32; rows], vec![0f32; rows * cols], [0u64; 2]);
            let scale = 1.0f32 / rows as f32;
            kt::cross_entropy(
                &EmuLauncher,
                DType::F32,
                rows,
                cols,
                eps,
                scale,
                ptr(&y),
                ptr(&x),
                mptr(&mut loss),
                mptr(&mut grad),
                mptr(&mut status),
            )
            .unwrap();
            kernels_nn::index_status("cross_entropy", status, cols).unwrap();
            let (want, wg) = cpub::cross_entropy(&CpuStorage::from_vec(x.clone()), &xl, &y, eps, true).unwrap();
            let mean = loss.iter().map(|&l| l as f64).sum::<f64>() / rows as f64;
            assert!((mean - want).abs() <= 1e-5 * (1.0 + want.abs()), "{rows}x{cols} ε={eps}: {mean} vs CPU {want}");
            for r in 0..rows {
                let n = naive_loss(&x[r * cols..(r + 1) * cols], y[r] as usize, eps);
                assert!((loss[r] as f64 - n).abs() <= 1e-5 * (1.0 + n.abs()), "row {r}: {} vs {n}", loss[r]);
            }
            let wg = wg.unwrap().to_vec::<f32>(&flat(rows * cols));
            close(&format!("grad {rows}x{cols} ε={eps}"), &grad, &wg, 1e-6);

            // The backward alone: gradient only, scaled by an upstream gradient of 0.5.
            let mut g2 = vec![0f32; rows * cols];
            kt::cross_entropy(
                &EmuLauncher,
                DType::F32,
                rows,
                cols,
                eps,
                0.5 * scale,
                ptr(&y),
                ptr(&x),
                0,
                mptr(&mut g2),
                mptr(&mut status),
            )
            .unwrap();
            let half: Vec<f32> = wg.iter().map(|v| v * 0.5).collect();
            close("grad only", &g2, &half, 1e-6);
        }
    }
}

#[test]
fn half_precision_cross_entropy_matches_the_cpu() {
    let (rows, cols) = (6, 40);
    let x = data(rows * cols, 72, -4.0, 4.0);
    let y = labels(rows, cols, 73);
    let xh: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let xb: Vec<u16> = xh.iter().map(|v| v.to_bits()).collect();
    let (mut loss, mut grad, mut status) = (vec![0f32; rows], vec![0u16; rows * cols], [0u64; 2]);
    let scale = 1.0f32 / rows as f32;
    kt::cross_entropy(
        &EmuLauncher,
        DType::BF16,
        rows,
        cols,
        0.05,
        scale,
        ptr(&y),
        ptr(&xb),
        mptr(&mut loss),
        mptr(&mut grad),
        mptr(&mut status),
    )
    .unwrap();
    let xl = Layout::contiguous(Shape::new(vec![rows, cols]));
    let (want, wg) = cpub::cross_entropy(&CpuStorage::from_vec(xh), &xl, &y, 0.05, true).unwrap();
    let mean = loss.iter().map(|&l| l as f64).sum::<f64>() / rows as f64;
    assert!((mean - want).abs() < 1e-5, "{mean} vs {want}");
    let got: Vec<f32> = grad.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
    // One bf16 ulp (2^-8 relative) apart at most: exp in f32 may round either way.
    close("bf16 grad", &got, &wg.unwrap().to_vec::<f32>(&flat(rows * cols)), 8e-3);
}

#[test]
fn cross_entropy_reports_bad_labels_and_arguments() {
    let x = data(12, 74, -1.0, 1.0);
    let y = vec![0i64, 4, 1];
    let (mut loss, mut grad, mut status) = (vec![0f32; 3], vec![f32::NAN; 12], [0u64; 2]);
    kt::cross_entropy(
        &EmuLauncher,
        DType::F32,
        3,
        4,
        0.0,
        1.0,
        ptr(&y),
        ptr(&x),
        mptr(&mut loss),
        mptr(&mut grad),
        mptr(&mut status),
    )
    .unwrap();
    // [cols, label]: the first word is the flag and the size for the message.
    assert_eq!(status, [4, 4]);
    assert!(matches!(
        kernels_nn::index_status("cross_entropy", status, 4),
        Err(Error::IndexOutOfRange { index: 4, size: 4, .. })
    ));
    assert!(loss[1].is_nan() && loss[0].is_finite() && loss[2].is_finite());
    // The bad row's gradient is zeros (not left undefined), the others are written.
    assert_eq!(grad[4..8], [0.0; 4]);
    assert!(grad[..4].iter().chain(&grad[8..]).all(|g| g.is_finite()));
    let bad = kt::cross_entropy(&EmuLauncher, DType::F32, 3, 4, 1.5, 1.0, 0, 0, 0, 0, 0);
    assert!(matches!(bad, Err(Error::InvalidArgument { op: "cross_entropy", .. })));
    let bad = kt::cross_entropy(&EmuLauncher, DType::F32, 3, 0, 0.0, 1.0, 0, 0, 0, 0, 0);
    assert!(matches!(bad, Err(Error::InvalidShape { .. })));
    let bad = kt::cross_entropy(&EmuLauncher, DType::I64, 3, 4, 0.0, 1.0, 0, 0, 0, 0, 0);
    assert!(matches!(bad, Err(Error::UnsupportedDType { .. })));
}

/// y = dropout(x) on the emulator for a contiguous x of n elements.
fn drop(x: &[f32], p: f64, seed: u64, offset: u64) -> Vec<f32> {
    let mut y = vec![f32::NAN; x.len()];
    kt::dropout(&EmuLauncher, DType::F32, p, seed, offset, ptr(x), &flat(x.len()), mptr(&mut y)).unwrap();
    y
}

#[test]
fn dropout_mask_is_the_host_twin_and_has_the_right_statistics() {
    let n = 10_007;
    let x = data(n, 75, 0.5, 2.0); // never zero: y == 0 means dropped
    for p in [0.1, 0.5, 0.9] {
        let (keep, scale) = kt::dropout_params(p).unwrap();
        let y = drop(&x, p, 1234, 99);
        let mut kept = 0usize;
        for i in 0..n {
            let k = kt::dropout_uniform(1234, 99 + i as u64) < keep;
            assert_eq!(y[i], if k { x[i] * scale } else { 0.0 }, "p={p} [{i}]");
            kept += k as usize;
        }
        // Binomial(n, keep): within 5 standard deviations.
        let (mean, sd) = (n as f64 * keep as f64, (n as f64 * keep as f64 * (1.0 - keep as f64)).sqrt());
        assert!((kept as f64 - mean).abs() < 5.0 * sd, "p={p}: kept {kept} of {n}");
        // Neighbours independent: P(both kept) ≈ keep².
        let both = (1..n).filter(|&i| y[i] != 0.0 && y[i - 1] != 0.0).count() as f64;
        let want = (n - 1) as f64 * (keep as f64).powi(2);
        assert!((both - want).abs() < 5.0 * want.sqrt() + 5.0, "p={p}: {both} adjacent pairs kept, want ≈ {want}");
    }
    // The uniforms themselves: each of the 24 bits is set about half the time, over a large
    // host sample of the same hash (cheap without the emulator).
    let m = 200_000u64;
    for bit in 0..24 {
        let ones = (0..m).filter(|&c| (kt::dropout_uniform(7, c) * 16_777_216.0) as u32 >> bit & 1 == 1).count() as f64;
        assert!((ones - m as f64 / 2.0).abs() < 5.0 * (m as f64 / 4.0).sqrt(), "bit {bit}: {ones} of {m}");
    }
}

#[test]
fn dropout_is_deterministic_per_seed_and_offset_and_backward_reuses_the_mask() {
    let n = 3000;
    let x = data(n, 76, 0.5, 2.0);
    let a = drop(&x, 0.5, 42, 0);
    assert_eq!(a, drop(&x, 0.5, 42, 0), "same seed and offset, same mask");
    let b = drop(&x, 0.5, 43, 0);
    let differ = (0..n).filter(|&i| (a[i] == 0.0) != (b[i] == 0.0)).count();
    assert!(differ > n / 4 && differ < 3 * n / 4, "seeds 42 and 43 share {} of {n} mask bits", n - differ);
    // Offset k continues the stream: element i at offset k is element i + k at offset 0.
    let c = drop(&x[100..], 0.5, 42, 100);
    assert_eq!(c, a[100..]);

    // Backward: the same kernel on the gradient, same seed and offset, gives g·mask·scale.
    let g = data(n, 77, -1.0, 1.0);
    let dx = drop(&g, 0.5, 42, 0);
    for i in 0..n {
        let want = if a[i] != 0.0 { g[i] * 2.0 } else { 0.0 };
        assert_eq!(dx[i], want, "[{i}]");
    }

    // A strided x gets the mask of its logical (row-major) positions.
    let (r, cl) = (50, 60);
    let base = data(r * cl, 78, 0.5, 2.0);
    let view = cpu(&base, &[r, cl]).t().unwrap();
    let mut y = vec![0f32; r * cl];
    kt::dropout(&EmuLauncher, DType::F32, 0.3, 5, 7, ptr(&base), view.layout(), mptr(&mut y)).unwrap();
    assert_eq!(y, drop(&view.contiguous().unwrap().to_vec::<f32>().unwrap(), 0.3, 5, 7));

    // p = 0 is the identity (scale 1), p = 1 drops everything; outside [0, 1] is an error.
    assert_eq!(drop(&x, 0.0, 1, 0), x);
    assert!(drop(&x, 1.0, 1, 0).iter().all(|&v| v == 0.0));
    let e = kt::dropout(&EmuLauncher, DType::F32, 1.5, 1, 0, 0, &flat(1), 0);
    assert!(matches!(e, Err(Error::InvalidArgument { op: "dropout", .. })));
}

#[test]
fn half_precision_dropout_uses_the_same_mask() {
    let n = 700;
    let x = data(n, 79, 0.5, 2.0);
    let xh: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let mut y = vec![0u16; n];
    kt::dropout(&EmuLauncher, DType::F16, 0.25, 9, 3, ptr(&xh), &flat(n), mptr(&mut y)).unwrap();
    let (keep, scale) = kt::dropout_params(0.25).unwrap();
    for i in 0..n {
        let xi = half::f16::from_bits(xh[i]).to_f32();
        let want = if kt::dropout_uniform(9, 3 + i as u64) < keep { xi * scale } else { 0.0 };
        assert_eq!(y[i], half::f16::from_f32(want).to_bits(), "[{i}]");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn adam_and_adamw_equal_the_cpu_fused_step_bit_for_bit() {
    let n = 1000; // not a multiple of the block
    for (decoupled, wd) in [(false, 0.0), (false, 0.01), (true, 0.1)] {
        let mut p = data(n, 80, -1.0, 1.0);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let mut cpu_p = CpuStorage::from_vec(p.clone());
        let mut cpu_m = CpuStorage::from_vec(m.clone());
        let mut cpu_v = CpuStorage::from_vec(v.clone());
        for step in 1..=4 {
            let g = data(n, 81 + step, -0.5, 0.5);
            let h = AdamStep {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: wd,
                decoupled,
                step: step as f64,
            };
            kt::adam(&EmuLauncher, DType::F32, n, &h, mptr(&mut p), ptr(&g), mptr(&mut m), mptr(&mut v)).unwrap();
            assert!(cpub::adam_step(&mut cpu_p, &CpuStorage::from_vec(g), &mut cpu_m, &mut cpu_v, &h));
            let what = format!("decoupled={decoupled} wd={wd} step {step}");
            assert_eq!(bits(&p), bits(&cpu_p.to_vec::<f32>(&flat(n))), "p, {what}");
            assert_eq!(bits(&m), bits(&cpu_m.to_vec::<f32>(&flat(n))), "m, {what}");
            assert_eq!(bits(&v), bits(&cpu_v.to_vec::<f32>(&flat(n))), "v, {what}");
        }
    }
}

#[test]
fn sgd_equals_the_cpu_optimizer_bit_for_bit() {
    let n = 777;
    let configs = [
        (0.0, 0.0, 0.0, false),
        (1e-2, 0.0, 0.0, false),
        (0.0, 0.9, 0.0, false),
        (5e-3, 0.9, 0.1, false),
        (5e-3, 0.9, 0.0, true),
    ];
    for (wd, momentum, dampening, nesterov) in configs {
        let p0 = data(n, 90, -1.0, 1.0);
        let param = cpu(&p0, &[n]).requires_grad_().unwrap();
        let mut opt =
            Sgd::new(vec![ParamGroup::new(vec![param.clone()], 0.05, wd)], SgdConfig { momentum, dampening, nesterov });
        let (mut p, mut buf) = (p0.clone(), vec![0f32; n]);
        for step in 0..3 {
            let g = data(n, 91 + step, -1.0, 1.0);
            // The CPU optimizer's gradient: d/dp Σ p·g = g exactly.
            opt.zero_grad();
            param.mul(&cpu(&g, &[n])).unwrap().sum_all().unwrap().backward().unwrap();
            opt.step().unwrap();
            let h = kt::SgdStep { lr: 0.05, weight_decay: wd, momentum, dampening, nesterov, first_step: step == 0 };
            let b = if momentum != 0.0 { mptr(&mut buf) } else { 0 };
            kt::sgd(&EmuLauncher, DType::F32, n, &h, mptr(&mut p), ptr(&g), b).unwrap();
            let what = format!("wd={wd} μ={momentum} τ={dampening} nesterov={nesterov} step {step}");
            assert_eq!(bits(&p), bits(&param.to_vec::<f32>().unwrap()), "{what}");
        }
    }
}

#[test]
fn optimizer_kernels_take_f32_only() {
    let h = AdamStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, step: 1.0 };
    assert!(matches!(
        kt::adam(&EmuLauncher, DType::F16, 1, &h, 0, 0, 0, 0),
        Err(Error::UnsupportedDType { op: "adam", .. })
    ));
    let s =
        kt::SgdStep { lr: 0.1, weight_decay: 0.0, momentum: 0.0, dampening: 0.0, nesterov: false, first_step: true };
    assert!(matches!(
        kt::sgd(&EmuLauncher, DType::F64, 1, &s, 0, 0, 0),
        Err(Error::UnsupportedDType { op: "sgd", .. })
    ));
}
