//! Every tensor op, forward and backward, on the emulated CUDA device (CUDA storage, the real
//! launch code and kernels, host memory standing in for the GPU's) against the CPU
//! reference: random inputs, broadcast and non-contiguous views, sizes that are not
//! multiples of the block size, tolerances per dtype. On a GPU machine,
//! `KILN_TEST_DEVICE=cuda:0` runs the same tests on the real GPU.

use kiln::{Conv2dOptions, DType, Device, Result, Tensor};

/// The profiler records every thread: tests that read its op list take turns.
static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn dev() -> Device {
    match std::env::var("KILN_TEST_DEVICE").ok().as_deref().and_then(|d| d.strip_prefix("cuda:")) {
        Some(n) => {
            Device::cuda(n.parse().expect("KILN_TEST_DEVICE=cuda:N")).expect("the GPU named by KILN_TEST_DEVICE")
        }
        None => Device::CudaEmulated,
    }
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 2e-2,
        DType::BF16 => 8e-2,
        _ => 2e-5,
    }
}

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    let mut g = kiln::Generator::new(seed);
    Tensor::randn_with(shape, DType::F32, Device::Cpu, &mut g).unwrap().to_dtype(dtype).unwrap()
}

fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (g, w) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let ok = (a - b).abs() <= tol * (1.0 + b.abs()) || (a.is_nan() && b.is_nan());
        assert!(ok, "{what}[{i}]: cuda {a}, cpu {b}");
    }
}

/// Runs `f` on the CPU and on the CUDA device from the same inputs; compares the outputs
/// and, for float outputs, the gradients of every float input under a random upstream
/// gradient.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let leaves = |device: Device| -> Vec<Tensor> {
        inputs
            .iter()
            .map(|t| {
                let t = t.to_device(device).unwrap().detach();
                if t.dtype().is_float() {
                    t.requires_grad_().unwrap()
                } else {
                    t
                }
            })
            .collect()
    };
    let (cpu_in, cuda_in) = (leaves(Device::Cpu), leaves(dev()));
    let cpu_out = f(&cpu_in).unwrap_or_else(|e| panic!("{name} on the CPU: {e}"));
    let cuda_out = f(&cuda_in).unwrap_or_else(|e| panic!("{name} on {}: {e}", dev()));
    assert_eq!(cuda_out.device(), dev(), "{name}: output device");
    let t = tol(cpu_out.dtype());
    close(&format!("{name} forward"), &cuda_out.to_device(Device::Cpu).unwrap(), &cpu_out, t);
    if !cpu_out.dtype().is_float() || !cpu_out.requires_grad() {
        return;
    }
    let w = randn(cpu_out.dims(), cpu_out.dtype(), 99);
    cpu_out.backward_with(&w).unwrap();
    cuda_out.backward_with(&w.to_device(dev()).unwrap()).unwrap_or_else(|e| panic!("{name} backward on cuda: {e}"));
    for (i, (a, b)) in cuda_in.iter().zip(&cpu_in).enumerate() {
        match (a.grad(), b.grad()) {
            (Some(ga), Some(gb)) => {
                assert_eq!(ga.device(), dev(), "{name}: grad {i} device");
                close(&format!("{name} grad of input {i}"), &ga.to_device(Device::Cpu).unwrap(), &gb, t);
            }
            (None, None) => {}
            (ga, gb) => {
                panic!("{name}: input {i} has a gradient on one device only ({:?} / {:?})", ga.is_some(), gb.is_some())
            }
        }
    }
}

#[test]
fn elementwise_unary_forward_and_backward() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let x = randn(&[37, 19], dtype, 1);
        type F = fn(&Tensor) -> Result<Tensor>;
        let ops: [(&str, F); 14] = [
            ("neg", |x| x.neg()),
            ("exp", |x| x.exp()),
            ("log", |x| x.abs()?.affine(1.0, 0.5)?.log()),
            ("sqrt", |x| x.abs()?.affine(1.0, 0.1)?.sqrt()),
            ("abs", |x| x.abs()),
            ("tanh", |x| x.tanh()),
            ("sigmoid", |x| x.sigmoid()),
            ("relu", |x| x.relu()),
            ("gelu", |x| x.gelu()),
            ("silu", |x| x.silu()),
            ("recip", |x| x.abs()?.affine(1.0, 0.5)?.recip()),
            ("sqr", |x| x.sqr()),
            ("affine", |x| x.affine(-1.5, 0.25)),
            ("powf", |x| x.abs()?.affine(1.0, 0.1)?.powf(1.7)),
        ];
        for (name, op) in ops {
            check(&format!("{name} {dtype:?}"), std::slice::from_ref(&x), |v| op(&v[0]));
            // A transposed (non-contiguous) view of the input (f32 only: the strided read
            // is the same code for every dtype, and the emulator is slow).
            if dtype == DType::F32 {
                check(&format!("{name} {dtype:?} transposed"), std::slice::from_ref(&x), |v| op(&v[0].t()?));
            }
        }
    }
}

#[test]
fn elementwise_binary_with_broadcast_and_views() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let a = randn(&[5, 1, 33], dtype, 2);
        let b = randn(&[7, 33], dtype, 3);
        type F = fn(&Tensor, &Tensor) -> Result<Tensor>;
        let ops: [(&str, F); 7] = [
            ("add", |a, b| a.add(b)),
            ("sub", |a, b| a.sub(b)),
            ("mul", |a, b| a.mul(b)),
            ("div", |a, b| a.div(&b.abs()?.affine(1.0, 0.5)?)),
            ("pow", |a, b| a.abs()?.affine(1.0, 0.5)?.pow(b)),
            ("maximum", |a, b| a.maximum(b)),
            ("minimum", |a, b| a.minimum(b)),
        ];
        for (name, op) in ops {
            check(&format!("{name} {dtype:?} broadcast"), &[a.clone(), b.clone()], |v| op(&v[0], &v[1]));
        }
        // Comparisons (no gradient) and a sliced, transposed right operand.
        check(&format!("lt {dtype:?}"), &[a.clone(), b.clone()], |v| v[0].lt(&v[1]));
        check(&format!("eq {dtype:?}"), &[a.clone(), a.clone()], |v| v[0].eq(&v[1]));
        let c = randn(&[40, 9], dtype, 4);
        check(&format!("add {dtype:?} sliced+transposed"), &[c.clone(), b.clone()], |v| {
            v[0].narrow(0, 3, 33)?.t()?.add(&v[1].narrow(0, 0, 1)?)
        });
    }
}

#[test]
fn where_and_masked_fill() {
    let (a, b) = (randn(&[9, 31], DType::F32, 5), randn(&[9, 31], DType::F32, 6));
    check("where", &[a.clone(), b.clone()], |v| Tensor::where_cond(&v[0].gt(&v[1])?, &v[0], &v[1]));
    check("masked_fill", &[a.clone(), b.clone()], |v| v[0].masked_fill(&v[1].gt(&v[0])?, -3.0));
    // A broadcast [9, 1] condition, a [31] row and a transposed operand, in every float type.
    let (col, at) = (randn(&[9, 1], DType::F32, 7), randn(&[31, 9], DType::F32, 8));
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let [c, a, b, at] = [&col, &a, &b, &at].map(|t| t.to_dtype(dtype).unwrap());
        check(&format!("where {dtype:?}, broadcast"), &[c, b.narrow(0, 2, 1).unwrap(), at], |v| {
            Tensor::where_cond(&v[0].gt(&v[0].zeros_like()?)?, &v[1], &v[2].t()?)
        });
        check(&format!("masked_fill {dtype:?}"), &[a.clone(), b.clone()], |v| v[0].masked_fill(&v[1].lt(&v[0])?, 2.5));
    }
    // Conditions of every dtype, with the CPU's truth rules: -0.0 is false, NaN is true.
    let conds = [0.0, -0.0, f64::NAN, 2.0, -1.0, 0.0, 1e-30, f64::INFINITY, 0.0, -0.0, 3.0];
    let n = conds.len();
    let (x, y) = (randn(&[n], DType::F32, 9), randn(&[n], DType::F32, 10));
    for cd in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let c = Tensor::from_vec(conds.to_vec(), [n], Device::Cpu).unwrap().to_dtype(cd).unwrap();
        check(&format!("where, {cd:?} condition"), &[c, x.clone(), y.clone()], |v| {
            Tensor::where_cond(&v[0], &v[1], &v[2])
        });
    }
    let ci = Tensor::from_vec(vec![0i64, 5, -1, 0, 1, 0, 0, 7, 0, 2, 0], [n], Device::Cpu).unwrap();
    check("where, I64 condition", &[ci.clone(), x.clone(), y.clone()], |v| Tensor::where_cond(&v[0], &v[1], &v[2]));
    // I64 values (moved as raw bits like every other type).
    let ints =
        |f: fn(i64) -> i64| Tensor::from_vec((0..n as i64).map(f).collect::<Vec<_>>(), [n], Device::Cpu).unwrap();
    let (xi, yi) = (ints(|i| 3 * i + 1), ints(|i| i64::MAX - i));
    check("where, I64 values", &[ci.clone(), xi, yi], |v| Tensor::where_cond(&v[0], &v[1], &v[2]));
    // All of it on the device's kernel, not the host path.
    let _turn = PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    kiln::profile::start();
    let (cd, xd, yd) = (ci.to_device(dev()).unwrap(), x.to_device(dev()).unwrap(), y.to_device(dev()).unwrap());
    Tensor::where_cond(&cd, &xd, &yd).unwrap();
    let ops: Vec<String> = kiln::profile::stop().this_thread().totals().into_iter().map(|(name, ..)| name).collect();
    assert!(ops.iter().any(|n| n == "where") && !ops.iter().any(|n| n.starts_with("host:")), "{ops:?}");
}

#[test]
fn reductions_over_any_dims() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let x = randn(&[6, 35, 9], dtype, 7);
        let all: Vec<Vec<usize>> = vec![vec![0], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]];
        // Half types share the f32 code paths: one leading and one trailing reduction.
        let dim_sets = if dtype == DType::F32 { all } else { vec![vec![0], vec![2]] };
        for dims in dim_sets {
            for keep in [false, true] {
                let d: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
                let tag = format!("{dtype:?} dims {dims:?} keep {keep}");
                check(&format!("sum {tag}"), std::slice::from_ref(&x), |v| v[0].sum(&d, keep));
                check(&format!("mean {tag}"), std::slice::from_ref(&x), |v| v[0].mean(&d, keep));
                check(&format!("max {tag}"), std::slice::from_ref(&x), |v| v[0].max(&d, keep));
                if dtype == DType::F32 {
                    check(&format!("var {tag}"), std::slice::from_ref(&x), |v| v[0].var(&d, true, keep));
                }
            }
        }
        check(&format!("argmax {dtype:?}"), std::slice::from_ref(&x), |v| v[0].argmax(1, false));
        check(&format!("argmin {dtype:?}"), std::slice::from_ref(&x), |v| v[0].argmin(0, true));
        check(&format!("argmax over the last dim {dtype:?}"), std::slice::from_ref(&x), |v| v[0].argmax(2, false));
        check(&format!("sum of a permuted view {dtype:?}"), std::slice::from_ref(&x), |v| {
            v[0].permute(&[2, 0, 1])?.sum(&[2], false)
        });
    }
    // Batch-norm statistics: few rows of 16384, which f32 folds in pieces (a row split) and
    // the half types in one pass; a NaN in one piece still wins the max.
    for dtype in [DType::F32, DType::BF16] {
        let mut v = randn(&[4, 3, 64, 64], DType::F32, 8).to_vec::<f32>().unwrap();
        v[100] = f32::NAN; // channel 0: in the max, not in the narrowed sum
        let x = Tensor::from_vec(v, [4, 3, 64, 64], Device::Cpu).unwrap().to_dtype(dtype).unwrap();
        for keep in [false, true] {
            check(&format!("long-row sum {dtype:?} {keep}"), std::slice::from_ref(&x), |v| {
                v[0].narrow(1, 1, 2)?.sum(&[0, 2, 3], keep)
            });
            check(&format!("long-row max with a NaN {dtype:?}"), std::slice::from_ref(&x), |v| {
                v[0].max(&[0, 2, 3], keep)
            });
        }
    }
}

/// Arg-reductions by the CPU's rules, in rows longer than a block (300 > 256 threads, so the
/// candidates meet across threads and warps): the first of equal values wins, a NaN beats
/// every number and a later NaN an earlier one; -0.0 equals 0.0; -inf rows.
/// The fused batch norm's passes on the device (per-channel sums in pieces, the channel
/// affine map) against the CPU's, forward and every gradient: few channels of many values
/// (several pieces per channel), and a small permuted input.
#[test]
fn batch_norm_on_the_device() {
    for (shape, seed) in [(vec![8, 3, 40, 40], 30), (vec![5, 4, 3], 31)] {
        let x = randn(&shape, DType::F32, seed).mul_scalar(1.5).unwrap().add_scalar(-0.25).unwrap();
        let c = shape[1];
        let (w, b) = (randn(&[c], DType::F32, 32).add_scalar(1.0).unwrap(), randn(&[c], DType::F32, 33));
        let inputs = [x, w, b];
        check(&format!("batch_norm {shape:?}"), &inputs, |v| v[0].batch_norm_train(&v[1], &v[2], 1e-5).map(|r| r.0));
        check(&format!("batch_norm {shape:?} mean"), &inputs, |v| {
            v[0].batch_norm_train(&v[1], &v[2], 1e-5).map(|r| r.1)
        });
        check(&format!("batch_norm {shape:?} var"), &inputs, |v| {
            v[0].batch_norm_train(&v[1], &v[2], 1e-5).map(|r| r.2)
        });
    }
    let x = randn(&[6, 2, 7], DType::F32, 34);
    let (w, b) = (randn(&[2], DType::F32, 35), randn(&[2], DType::F32, 36));
    check("batch_norm of a permuted view", &[x, w, b], |v| {
        v[0].permute(&[2, 1, 0])?.batch_norm_train(&v[1], &v[2], 1e-5).map(|r| r.0)
    });
}

/// BatchNorm training steps on the device: the running statistics and the step counter
/// (one fused update) against the same module on the CPU after two batches, and no small
/// elementwise launches left in the layer's forward and backward (the per-channel
/// arithmetic is one `bn_coeffs` each way, the update one `bn_running`).
#[test]
fn batch_norm_module_steps_on_the_device() {
    use kiln::nn::{BatchNorm, Module};
    let (cpu, cuda) = (BatchNorm::new_2d(3, Device::Cpu).unwrap(), BatchNorm::new_2d(3, dev()).unwrap());
    let _turn = PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    for step in 0..2u64 {
        let x = randn(&[4, 3, 5, 6], DType::F32, 50 + step).mul_scalar(2.0).unwrap().add_scalar(0.7).unwrap();
        let up = randn(&[4, 3, 5, 6], DType::F32, 60 + step);
        // Fresh gradients each step (accumulating into last step's would add launches).
        for p in [&cpu.weight, &cpu.bias, &cuda.weight, &cuda.bias] {
            p.zero_grad();
        }
        cpu.forward(&x).unwrap().backward_with(&up).unwrap();
        let (xd, upd) = (x.to_device(dev()).unwrap(), up.to_device(dev()).unwrap());
        kiln::profile::start();
        let launches = kiln::backend::cuda::counters::launches_on_this_thread();
        let y = cuda.forward(&xd).unwrap();
        y.backward_with(&upd).unwrap();
        let launches = kiln::backend::cuda::counters::launches_on_this_thread() - launches;
        // Forward: 2 statistics passes, bn_coeffs, the affine map, bn_running; backward: the
        // gradient pass, bn_coeffs, the affine map (the passes' partial sums are folded by
        // whoever reads them next). Composed from [c]-sized tensor ops these were 36.
        assert!(launches <= 8, "step {step}: {launches} kernel launches");
        let ops: Vec<String> =
            kiln::profile::stop().this_thread().totals().into_iter().map(|(name, ..)| name).collect();
        for small in ["unary", "binary", "affine", "host:"] {
            assert!(!ops.iter().any(|n| n.starts_with(small)), "step {step}: {small} ran: {ops:?}");
        }
        for fused in ["bn_coeffs", "bn_running"] {
            assert!(ops.iter().any(|n| n == fused), "step {step}: no {fused}: {ops:?}");
        }
    }
    for (name, a, b) in [
        ("running_mean", &cuda.running_mean, &cpu.running_mean),
        ("running_var", &cuda.running_var, &cpu.running_var),
        ("weight grad", &cuda.weight.grad().unwrap(), &cpu.weight.grad().unwrap()),
        ("bias grad", &cuda.bias.grad().unwrap(), &cpu.bias.grad().unwrap()),
    ] {
        close(name, &a.to_device(Device::Cpu).unwrap(), b, 2e-5);
    }
    assert_eq!(cuda.num_batches_tracked.to_scalar::<i64>().unwrap(), 2);
}

#[test]
fn arg_reductions_ties_and_nans() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let mut rows: Vec<Vec<f32>> = vec![vec![0.0; 300]; 6];
    rows[0][7] = 5.0;
    rows[0][290] = 5.0; // tie: 7 wins for argmax
    rows[1][3] = nan;
    rows[1][299] = nan; // NaNs: the last one wins (argmax and argmin)
    rows[1][100] = 9.0;
    rows[2] = vec![-inf; 300];
    rows[3][0] = -0.0;
    rows[3][200] = -1.0; // argmin 200; argmax: 0.0 == -0.0, the first (index 0)
    rows[4] = (0..300).map(|i| ((i * 37) % 300) as f32).collect();
    rows[5][255] = nan;
    rows[5][256] = 3.0;
    let x = Tensor::from_vec(rows.concat(), [6, 300], Device::Cpu).unwrap();
    for dtype in [DType::F32, DType::BF16] {
        let x = x.to_dtype(dtype).unwrap();
        check(&format!("argmax, ties and NaNs {dtype:?}"), std::slice::from_ref(&x), |v| v[0].argmax(1, false));
        check(&format!("argmin, ties and NaNs {dtype:?}"), std::slice::from_ref(&x), |v| v[0].argmin(1, false));
    }
    // And the answers themselves, not only agreement with the CPU.
    let got = x.to_device(dev()).unwrap().argmax(1, false).unwrap().to_vec::<i64>().unwrap();
    // Row 4 holds (37·i) mod 300: its 299 sits at i = 227 (37 · 227 = 8399 = 27 · 300 + 299).
    assert_eq!(got, vec![7, 299, 0, 0, 227, 255]);
}

#[test]
fn matmul_shapes() {
    let cases: [(&[usize], &[usize]); 4] =
        [(&[33, 17], &[17, 9]), (&[4, 7, 5], &[4, 5, 3]), (&[2, 3, 6, 5], &[5, 7]), (&[1, 8], &[8, 1])];
    for (sa, sb) in cases {
        let (a, b) = (randn(sa, DType::F32, 8), randn(sb, DType::F32, 9));
        check(&format!("matmul {sa:?} @ {sb:?}"), &[a, b], |v| v[0].matmul(&v[1]));
    }
    let (a, b) = (randn(&[17, 33], DType::F32, 10), randn(&[9, 17], DType::F32, 11));
    check("matmul of transposed views", &[a, b], |v| v[0].t()?.matmul(&v[1].t()?));
}

#[test]
fn softmax_and_losses() {
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let x = randn(&[13, 300], dtype, 12);
        check(&format!("softmax {dtype:?}"), std::slice::from_ref(&x), |v| v[0].softmax(-1));
        check(&format!("log_softmax {dtype:?}"), std::slice::from_ref(&x), |v| v[0].log_softmax(-1));
        check(&format!("softmax over dim 0 {dtype:?}"), std::slice::from_ref(&x), |v| v[0].softmax(0));
    }
    let logits = randn(&[29, 10], DType::F32, 13);
    let labels = Tensor::from_vec((0..29).map(|i| (i * 7 % 10) as i64).collect::<Vec<_>>(), [29], Device::Cpu).unwrap();
    for smoothing in [0.0, 0.1] {
        check(&format!("cross_entropy smoothing {smoothing}"), &[logits.clone(), labels.clone()], |v| {
            v[0].cross_entropy(&v[1], smoothing)
        });
    }
    check("nll_loss", &[logits.clone(), labels.clone()], |v| v[0].log_softmax(-1)?.nll_loss(&v[1]));
    let target = randn(&[29, 10], DType::F32, 14);
    check("mse_loss", &[logits.clone(), target], |v| v[0].mse_loss(&v[1]));
}

/// Labels on the device are read there: cross_entropy does not wait for the GPU, and a bad
/// label is the CPU's typed error at the next sync (here the loss read), once; the bad row's
/// gradient is zeros until then, and the device goes on working. Labels on the host are
/// checked before the launch, as on the CPU.
#[test]
fn bad_labels_on_the_device_are_reported_at_the_next_sync() {
    let downloads = kiln::backend::cuda::counters::downloads_on_this_thread;
    let logits = randn(&[3, 10], DType::F32, 1).to_device(dev()).unwrap().requires_grad_().unwrap();
    let cpu_err = randn(&[3, 10], DType::F32, 1)
        .cross_entropy(&Tensor::from_vec(vec![3i64, 10, 2], [3], Device::Cpu).unwrap(), 0.0)
        .unwrap_err();
    let host_labels = Tensor::from_vec(vec![3i64, 10, 2], [3], Device::Cpu).unwrap();
    let err = logits.cross_entropy(&host_labels, 0.0).unwrap_err();
    assert_eq!(err.to_string(), cpu_err.to_string(), "host labels for device logits");

    let bad = host_labels.to_device(dev()).unwrap();
    let before = downloads();
    let loss = logits.cross_entropy(&bad, 0.0).unwrap();
    assert_eq!(downloads() - before, 0, "cross_entropy with device labels waited for the device");
    loss.backward().unwrap();
    let err = loss.to_scalar::<f32>().unwrap_err();
    assert!(
        matches!(err, kiln::Error::IndexOutOfRange { index: 10, size: 10, op } if op.contains("cross_entropy")),
        "{err}"
    );
    // Reported once; the row with the bad label got no gradient, the others the CPU's.
    let grad = logits.grad().unwrap().to_vec::<f32>().unwrap();
    assert!(grad[10..20].iter().all(|&g| g == 0.0), "bad row's gradient {:?}", &grad[10..20]);
    let good = Tensor::from_vec(vec![3i64, 2], [2], Device::Cpu).unwrap();
    let rows = |t: &Tensor| t.index_select(0, &Tensor::from_vec(vec![0i64, 2], [2], t.device()).unwrap()).unwrap();
    let x_cpu = rows(&logits.detach().to_device(Device::Cpu).unwrap()).requires_grad_().unwrap();
    x_cpu.cross_entropy(&good, 0.0).unwrap().mul_scalar(2.0 / 3.0).unwrap().backward().unwrap();
    let want = x_cpu.grad().unwrap().to_vec::<f32>().unwrap();
    for (got, want) in [&grad[..10], &grad[20..]].iter().zip(want.chunks(10)) {
        let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-6, "good rows' gradients: max |diff| {diff}");
    }
    // The device is still usable and the report is not repeated: good labels give the
    // CPU's loss.
    let fixed = Tensor::from_vec(vec![3i64, 1, 2], [3], Device::Cpu).unwrap();
    let got = logits.detach().cross_entropy(&fixed.to_device(dev()).unwrap(), 0.0).unwrap().to_scalar::<f32>().unwrap();
    let want = logits.detach().to_device(Device::Cpu).unwrap().cross_entropy(&fixed, 0.0).unwrap();
    assert!((got - want.to_scalar::<f32>().unwrap()).abs() < 1e-6, "loss after the report: {got}");
}

#[test]
fn conv_and_pooling() {
    let x = randn(&[2, 4, 11, 9], DType::F32, 15);
    let w = randn(&[6, 2, 3, 3], DType::F32, 16);
    let b = randn(&[6], DType::F32, 17);
    let opt = Conv2dOptions { stride: (2, 1), padding: (1, 1), dilation: (1, 2), groups: 2 };
    check("conv2d", &[x.clone(), w.clone(), b.clone()], |v| v[0].conv2d(&v[1], Some(&v[2]), opt));
    // The fused ops the Conv2d module runs: + ReLU, + ReLU + 2x2 max pool (a 6x9 output: the
    // pool drops the odd last column), one group, no bias, an input without gradient (a first
    // layer), a non-contiguous input and weight, and half precision.
    let plain = Conv2dOptions { padding: (1, 0), ..Conv2dOptions::default() };
    let w1 = randn(&[5, 4, 3, 3], DType::F32, 21);
    check("conv2d_relu", &[x.clone(), w1.clone(), b.narrow(0, 0, 5).unwrap()], |v| {
        v[0].conv2d_relu(&v[1], Some(&v[2]), plain)
    });
    check("conv2d_relu_maxpool2", &[x.clone(), w1.clone(), b.narrow(0, 0, 5).unwrap()], |v| {
        v[0].conv2d_relu_maxpool2(&v[1], Some(&v[2]), plain)
    });
    check("conv2d_relu_maxpool2, no bias, frozen input", &[x.clone(), w1.clone()], |v| {
        v[0].detach().conv2d_relu_maxpool2(&v[1], None, plain)
    });
    let wt = randn(&[5, 3, 3, 4], DType::F32, 22);
    let strided = Conv2dOptions { stride: (1, 2), padding: (0, 1), ..Conv2dOptions::default() };
    check("conv2d of an NHWC input, permuted weight", &[x.clone(), wt], |v| {
        let nhwc = v[0].permute(&[0, 2, 3, 1])?.contiguous()?;
        nhwc.permute(&[0, 3, 1, 2])?.conv2d(&v[1].permute(&[0, 3, 1, 2])?, None, strided)
    });
    for dtype in [DType::F16, DType::BF16] {
        let (xh, wh) = (x.to_dtype(dtype).unwrap(), w1.to_dtype(dtype).unwrap());
        check(&format!("conv2d_relu_maxpool2 {dtype:?}"), &[xh, wh], |v| v[0].conv2d_relu_maxpool2(&v[1], None, plain));
    }
    // These run on the device's kernels and cuBLAS, not on the host path.
    let _turn = PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    kiln::profile::start();
    let on_dev = |t: &Tensor| t.to_device(dev()).unwrap().requires_grad_().unwrap();
    let (xd, wd) = (on_dev(&x), on_dev(&w1));
    xd.conv2d_relu_maxpool2(&wd, None, plain).unwrap().sum_all().unwrap().backward().unwrap();
    let ops: Vec<String> = kiln::profile::stop().this_thread().totals().into_iter().map(|(name, ..)| name).collect();
    assert!(ops.iter().all(|n| !n.starts_with("host:conv2d")), "conv2d took the host path: {ops:?}");
    // On a GPU the three passes are cuDNN's (unless switched off: run.sh also runs this test
    // with KILN_CUDNN=0 for the im2col path); the emulated device has no cuDNN.
    let cudnn_ops = ["cudnnConvolutionForward", "cudnnConvolutionBackwardData", "cudnnConvolutionBackwardFilter"];
    let ran = |op: &str| ops.iter().any(|n| n.starts_with(op));
    if dev() != Device::CudaEmulated && std::env::var("KILN_CUDNN").map_or(true, |v| v != "0") {
        assert!(cudnn_ops.iter().all(|op| ran(op)), "cuDNN did not run every pass: {ops:?}");
    } else {
        assert!(!cudnn_ops.iter().any(|op| ran(op)), "cuDNN on {}: {ops:?}", dev());
    }
    check("max_pool2d", std::slice::from_ref(&x), |v| v[0].max_pool2d((3, 2), (2, 2), (1, 0)));
    // Overlapping windows: a pixel can be the argmax of several, its gradient their sum.
    check("max_pool2d, overlapping windows", std::slice::from_ref(&x), |v| v[0].max_pool2d((3, 3), (1, 1), (1, 1)));
    check("avg_pool2d", std::slice::from_ref(&x), |v| v[0].avg_pool2d((2, 3), (1, 2), (0, 1)));
}

#[test]
fn indexing_ops() {
    let x = randn(&[12, 7], DType::F32, 18);
    let idx = Tensor::from_vec(vec![3i64, 0, 11, 3, 5], [5], Device::Cpu).unwrap();
    check("index_select", &[x.clone(), idx.clone()], |v| v[0].index_select(0, &v[1]));
    check("embedding", &[x.clone(), idx.clone()], |v| v[0].embedding(&v[1]));
    let src = randn(&[5, 7], DType::F32, 19);
    check("index_add", &[x.clone(), idx.clone(), src], |v| v[0].index_add(0, &v[1], &v[2]));
    let gi = Tensor::from_vec((0..24).map(|i| (i * 5 % 7) as i64).collect::<Vec<_>>(), [12, 2], Device::Cpu).unwrap();
    check("gather", &[x.clone(), gi.clone()], |v| v[0].gather(1, &v[1]));
    let s = randn(&[12, 2], DType::F32, 20);
    check("scatter_add", &[x.clone(), gi, s], |v| v[0].scatter_add(1, &v[1], &v[2]));
    check("index_select of a transposed view", &[x.clone(), idx.clone()], |v| v[0].t()?.index_select(1, &v[1]));
    check(
        "index_select of I64 labels",
        &[Tensor::arange(0.0, 12.0, 1.0, DType::I64, Device::Cpu).unwrap(), idx],
        |v| v[0].index_select(0, &v[1]),
    );
    // An index out of range is reported by the kernel as the CPU reports it.
    let bad = Tensor::from_vec(vec![1i64, 12], [2], dev()).unwrap();
    let err = x.to_device(dev()).unwrap().index_select(0, &bad).unwrap_err();
    assert!(matches!(err, kiln::Error::IndexOutOfRange { index: 12, size: 12, .. }), "{err}");
}

#[test]
fn integer_ops_and_assign_stay_on_the_device() {
    use kiln::nn::{BatchNorm, Module};
    // Values that wrap on add and mul, ties for the comparisons, a broadcast row.
    let av: Vec<i64> = (0..20).map(|i| if i == 3 { i64::MAX } else { (i * 37 % 11) - 5 }).collect();
    let bv: Vec<i64> = vec![2, -3, 0, 1, i64::MAX];
    let a = Tensor::from_vec(av.clone(), [4, 5], Device::Cpu).unwrap();
    let b = Tensor::from_vec(bv.clone(), [5], Device::Cpu).unwrap();
    let (ad, bd) = (a.to_device(dev()).unwrap(), b.to_device(dev()).unwrap());
    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    type Naive = fn(i64, i64) -> i64;
    let ops: [(&str, Op, Naive); 11] = [
        ("add", Tensor::add, i64::wrapping_add),
        ("sub", Tensor::sub, i64::wrapping_sub),
        ("mul", Tensor::mul, i64::wrapping_mul),
        ("maximum", Tensor::maximum, |x, y| x.max(y)),
        ("minimum", Tensor::minimum, |x, y| x.min(y)),
        ("eq", Tensor::eq, |x, y| (x == y) as i64),
        ("ne", Tensor::ne, |x, y| (x != y) as i64),
        ("lt", Tensor::lt, |x, y| (x < y) as i64),
        ("le", Tensor::le, |x, y| (x <= y) as i64),
        ("gt", Tensor::gt, |x, y| (x > y) as i64),
        ("ge", Tensor::ge, |x, y| (x >= y) as i64),
    ];
    let _turn = PROFILER.lock().unwrap_or_else(|p| p.into_inner());
    kiln::profile::start();
    for (name, op, naive) in ops {
        // The oracle: a plain loop over the broadcast pairs.
        let want: Vec<i64> = (0..20).map(|i| naive(av[i], bv[i % 5])).collect();
        let got = op(&ad, &bd).unwrap_or_else(|e| panic!("{name} on {}: {e}", dev()));
        assert_eq!(got.dtype(), DType::I64, "{name}");
        assert_eq!(got.to_vec::<i64>().unwrap(), want, "{name} on {}", dev());
        assert_eq!(op(&a, &b).unwrap().to_vec::<i64>().unwrap(), want, "{name} on the CPU");
    }
    // The same typed refusal as the CPU's for what integers do not have.
    for e in [ad.div(&bd).unwrap_err(), a.div(&b).unwrap_err()] {
        assert!(matches!(e, kiln::Error::UnsupportedDType { dtype: DType::I64, .. }), "{e}");
    }
    // An I64 assign into a contiguous slice (a device-to-device copy).
    let dst = Tensor::zeros([4, 5], DType::I64, dev()).unwrap();
    dst.narrow(0, 1, 2).unwrap().assign(&ad.narrow(0, 2, 2).unwrap()).unwrap();
    let want: Vec<i64> = (0..20).map(|i| if (5..15).contains(&i) { av[i + 5] } else { 0 }).collect();
    assert_eq!(dst.to_vec::<i64>().unwrap(), want, "assign");
    // I64 -> F32 (accuracy counts) on a strided view, rounded as Rust's `as f32` (i64::MAX
    // and 2^24 + 1 round).
    let big = Tensor::from_vec(vec![16_777_217i64, -3, i64::MAX, 0, i64::MIN, 7], [2, 3], Device::Cpu).unwrap();
    let want: Vec<f32> = [16_777_217i64, 0, -3, i64::MIN, i64::MAX, 7].iter().map(|&v| v as f32).collect();
    let got = big.to_device(dev()).unwrap().t().unwrap().to_dtype(DType::F32).unwrap();
    assert_eq!(got.to_vec::<f32>().unwrap(), want, "I64 -> F32 on {}", dev());
    // BatchNorm's step counter: two training batches count 2 without leaving the device.
    let bn = BatchNorm::new_2d(3, dev()).unwrap();
    let x = randn(&[4, 3, 5, 5], DType::F32, 40).to_device(dev()).unwrap();
    bn.forward(&x).unwrap();
    bn.forward(&x).unwrap();
    let ops: Vec<String> = kiln::profile::stop().this_thread().totals().into_iter().map(|(name, ..)| name).collect();
    assert_eq!(bn.num_batches_tracked.to_scalar::<i64>().unwrap(), 2);
    for host in ["host:binary", "host:copy_into", "host:copy"] {
        assert!(!ops.iter().any(|n| n.starts_with(host)), "{host} ran: {ops:?}");
    }
}

#[test]
fn views_copies_and_dtypes() {
    let x = randn(&[6, 5, 4], DType::F32, 21);
    check("contiguous of a permuted view", std::slice::from_ref(&x), |v| v[0].permute(&[2, 0, 1])?.contiguous());
    check("reshape", std::slice::from_ref(&x), |v| v[0].reshape([30, 4]));
    check("cat", &[x.clone(), x.clone()], |v| Tensor::cat(&[v[0].clone(), v[1].narrow(1, 1, 3)?], 1));
    check("stack", &[x.clone(), x.clone()], |v| Tensor::stack(&[v[0].clone(), v[1].clone()], 0));
    check("broadcast_to", &[randn(&[5, 1], DType::F32, 22)], |v| v[0].broadcast_to([3, 5, 4]));
    for to in [DType::F16, DType::BF16, DType::F64] {
        check(&format!("to_dtype {to:?}"), std::slice::from_ref(&x), |v| v[0].transpose(0, 2)?.to_dtype(to));
    }
    // In-place assignment into a slice of a tensor on the device.
    let base = randn(&[8, 6], DType::F32, 23);
    let (cpu, cuda) = (base.copy().unwrap(), base.to_device(dev()).unwrap());
    let src = randn(&[3, 6], DType::F32, 24);
    cpu.narrow(0, 2, 3).unwrap().assign(&src).unwrap();
    cuda.narrow(0, 2, 3).unwrap().assign(&src.to_device(dev()).unwrap()).unwrap();
    close("assign into a slice", &cuda.to_device(Device::Cpu).unwrap(), &cpu, 0.0);
}

#[test]
fn mismatched_devices_are_an_error() {
    let a = randn(&[3], DType::F32, 1);
    let b = a.to_device(dev()).unwrap();
    let err = a.add(&b).unwrap_err();
    assert!(matches!(err, kiln::Error::DeviceMismatch { .. }), "{err}");
}

/// A few steps of real training (MLP, Adam with its fused kernel) on the device end where
/// the CPU does.
#[test]
fn training_steps_match_the_cpu() {
    use kiln::nn::{Linear, Module, Relu, Sequential};
    use kiln::optim::{Adam, Optimizer};
    let run = |device: Device| -> Vec<Vec<f32>> {
        kiln::rng::scoped(3, || {
            let m = Sequential::new()
                .add(Linear::new(20, 33, true, device).unwrap())
                .add(Relu)
                .add(Linear::new(33, 10, true, device).unwrap());
            let mut opt = Adam::simple(m.parameters(), 1e-2);
            for step in 0..4 {
                let x = randn(&[16, 20], DType::F32, 100 + step).to_device(device).unwrap();
                let y = Tensor::from_vec((0..16).map(|i| ((i + step) % 10) as i64).collect::<Vec<_>>(), [16], device)
                    .unwrap();
                opt.zero_grad();
                m.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap().backward().unwrap();
                let downloads = kiln::backend::cuda::counters::downloads_on_this_thread();
                opt.step().unwrap();
                // Adam's step count lives on the CPU: reading it from the device was a sync
                // per parameter per step.
                let synced = kiln::backend::cuda::counters::downloads_on_this_thread() - downloads;
                assert_eq!(synced, 0, "{device}: the optimizer step downloaded {synced} times");
            }
            m.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect()
        })
    };
    let (cpu, cuda) = (run(Device::Cpu), run(dev()));
    for (i, (a, b)) in cuda.iter().zip(&cpu).enumerate() {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "parameter {i}: max |cuda - cpu| = {diff}");
    }
}

/// The fused optimizer updates on the device give the CPU's bits exactly (the kernels round
/// each operation as the CPU does, no contracted multiply-adds): Adam, AdamW and SGD with
/// Nesterov momentum, three steps from the same parameters and gradients. The gradient
/// arrives through autograd as d/dp Σ p·g = g, exact on both devices.
#[test]
fn optimizer_steps_equal_the_cpu_bit_for_bit() {
    use kiln::optim::{Adam, Optimizer, Sgd, SgdConfig};
    let n = 1000; // not a multiple of the block
    type Make = fn(Vec<Tensor>) -> Box<dyn Optimizer>;
    let makers: [(&str, Make); 3] = [
        ("adam", |p| Box::new(Adam::simple(p, 1e-3))),
        ("adamw", |p| Box::new(Adam::adamw(p, 1e-3, 0.1))),
        ("sgd nesterov", |p| {
            Box::new(Sgd::simple(p, 0.05, SgdConfig { momentum: 0.9, dampening: 0.0, nesterov: true }))
        }),
    ];
    for (what, make) in makers {
        let run = |device: Device| -> Vec<u32> {
            let p = randn(&[n], DType::F32, 7).to_device(device).unwrap().requires_grad_().unwrap();
            let mut opt = make(vec![p.clone()]);
            for step in 0..3 {
                let g = randn(&[n], DType::F32, 20 + step).to_device(device).unwrap();
                opt.zero_grad();
                p.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                opt.step().unwrap();
            }
            p.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        };
        let (cpu, cuda) = (run(Device::Cpu), run(dev()));
        let differ = cpu.iter().zip(&cuda).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{what}: {differ} of {n} parameters differ from the CPU's bits");
    }
}

/// Clipping by the global norm on the device: the norm and the clipped gradients as on the
/// CPU, with one download in all (the norm), not one per parameter.
#[test]
fn clip_grad_norm_on_the_device_reads_once() {
    let sizes = [300usize, 7, 1000];
    let run = |device: Device| -> (f64, Vec<Vec<f32>>, u64) {
        let ps: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = randn(&[n], DType::F32, 90 + i as u64).to_device(device).unwrap().requires_grad_().unwrap();
                let g = randn(&[n], DType::F32, 95 + i as u64).to_device(device).unwrap();
                p.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
                p
            })
            .collect();
        let before = kiln::backend::cuda::counters::downloads_on_this_thread();
        let norm = kiln::optim::clip_grad_norm(&ps, 1.0).unwrap();
        let downloads = kiln::backend::cuda::counters::downloads_on_this_thread() - before;
        (norm, ps.iter().map(|p| p.grad().unwrap().to_vec::<f32>().unwrap()).collect(), downloads)
    };
    let ((norm_cpu, g_cpu, _), (norm_dev, g_dev, downloads)) = (run(Device::Cpu), run(dev()));
    // ~1300 standard normal gradients: a norm near 36, clipped to 1.
    assert!(norm_cpu > 10.0 && (norm_dev - norm_cpu).abs() <= 1e-5 * norm_cpu, "norm {norm_dev} vs cpu {norm_cpu}");
    for (i, (a, b)) in g_dev.iter().zip(&g_cpu).enumerate() {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-6, "clipped gradient {i}: max |diff| {diff}");
    }
    assert_eq!(downloads, 1, "downloads while clipping on {}", dev());
}

/// Adam's step over many parameters is one launch on the device (a table of chunks), with
/// the CPU's bits: parameters of 1, 1000, 8192 (one whole chunk) and 20000 elements (three
/// chunks, the last short), AdamW's decay, three steps; and a parameter without a gradient
/// in one step keeps its own step count (a second batch of hyper-parameters).
#[test]
fn adam_steps_many_parameters_in_one_launch() {
    use kiln::optim::{Adam, Optimizer};
    let sizes = [1usize, 1000, 8192, 20_000];
    let run = |device: Device| -> (Vec<Vec<u32>>, Vec<u64>) {
        let ps: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| randn(&[n], DType::F32, 70 + i as u64).to_device(device).unwrap().requires_grad_().unwrap())
            .collect();
        let mut opt = Adam::adamw(ps.clone(), 1e-3, 0.1);
        let mut launches = Vec::new();
        for step in 0..3u64 {
            opt.zero_grad();
            for (i, p) in ps.iter().enumerate() {
                // Step 1 leaves parameter 2 without a gradient: its step count falls behind.
                if step == 1 && i == 2 {
                    continue;
                }
                let g = randn(&[sizes[i]], DType::F32, 80 + 10 * step + i as u64).to_device(device).unwrap();
                p.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            }
            let before = kiln::backend::cuda::counters::launches_on_this_thread();
            opt.step().unwrap();
            launches.push(kiln::backend::cuda::counters::launches_on_this_thread() - before);
        }
        let bits = ps.iter().map(|p| p.to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()).collect();
        (bits, launches)
    };
    let ((cpu, _), (dev_bits, launches)) = (run(Device::Cpu), run(dev()));
    for (i, (a, b)) in cpu.iter().zip(&dev_bits).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "parameter {i} ({} elements): {differ} differ from the CPU's bits", sizes[i]);
    }
    // One launch a step; step 3 has two step counts (3 and 2) among the parameters: two.
    assert_eq!(launches, vec![1, 1, 2], "kernel launches per optimizer step");
}

/// A small CNN (conv+ReLU+pool twice, then Linear: the fused ops `Sequential` picks) trained
/// for a few Adam steps on the device and on the CPU from the same weights and batches: the
/// losses and final parameters agree.
#[test]
fn a_cnn_trains_on_the_device_as_on_the_cpu() {
    use kiln::nn::{Conv2d, Flatten, Linear, MaxPool2d, Module, Relu, Sequential};
    use kiln::optim::{Adam, Optimizer};
    let build = |device: Device| -> Sequential {
        let conv = |i, o| Conv2d::new(i, o, (3, 3), Conv2dOptions::default(), true, device).unwrap();
        Sequential::new()
            .add(conv(1, 4))
            .add(Relu)
            .add(MaxPool2d::new(2))
            .add(conv(4, 6))
            .add(Relu)
            .add(MaxPool2d::new(2))
            .add(Flatten::default())
            .add(Linear::new(6 * 2 * 2, 10, true, device).unwrap())
    };
    let (cpu_model, dev_model) = (build(Device::Cpu), build(dev()));
    let state: Vec<(String, Tensor)> =
        cpu_model.state_dict().into_iter().map(|(n, t)| (n, t.to_device(dev()).unwrap())).collect();
    dev_model.load_state_dict(&state).unwrap();
    let (mut cpu_opt, mut dev_opt) =
        (Adam::simple(cpu_model.parameters(), 1e-2), Adam::simple(dev_model.parameters(), 1e-2));
    for step in 0..3u64 {
        let x = randn(&[8, 1, 14, 14], DType::F32, 40 + step);
        let y = Tensor::from_vec((0..8).map(|i| ((i * 3 + step) % 10) as i64).collect::<Vec<_>>(), [8], Device::Cpu)
            .unwrap();
        let mut losses = Vec::new();
        for (model, opt, device) in [(&cpu_model, &mut cpu_opt, Device::Cpu), (&dev_model, &mut dev_opt, dev())] {
            let (x, y) = (x.to_device(device).unwrap(), y.to_device(device).unwrap());
            let downloads = kiln::backend::cuda::counters::downloads_on_this_thread;
            let before = downloads();
            opt.zero_grad();
            let loss = model.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap();
            let forward = downloads() - before;
            loss.backward().unwrap();
            opt.step().unwrap();
            // The host never waits for the device in a step: cross_entropy reads the labels
            // on the device (it downloaded them to check them: one sync) and keeps the loss
            // there; neither backward nor the optimizer step downloads (Adam's step count read
            // from the device was one sync per parameter).
            let rest = downloads() - before - forward;
            assert_eq!(forward, 0, "{device}, step {step}: {forward} downloads in forward");
            assert_eq!(rest, 0, "{device}, step {step}: {rest} downloads in backward and the optimizer step");
            losses.push(loss.to_scalar::<f64>().unwrap());
        }
        assert!((losses[0] - losses[1]).abs() < 1e-5, "step {step}: loss cpu {} vs device {}", losses[0], losses[1]);
    }
    for ((name, a), (_, b)) in dev_model.named_parameters().iter().zip(cpu_model.named_parameters()) {
        close(&format!("{name} after 3 steps"), &a.to_device(Device::Cpu).unwrap(), &b, 1e-4);
    }
}

/// `train_epoch` on the device gives the CPU's epoch (loss, accuracy, parameters), and the
/// host waits for the device once a step: the loss and the correct count, read together at
/// the step's end (batches cut from device tensors with a host index, labels checked on the
/// device, accuracy counted there); `evaluate` once in all.
#[test]
fn train_epoch_waits_for_the_device_once_a_step() {
    use kiln::data::{DataLoader, TensorDataset};
    use kiln::nn::{Linear, Module, Relu, Sequential};
    use kiln::optim::Adam;
    use kiln::train::{train_epoch, EpochHooks};
    let run = |device: Device| {
        kiln::rng::scoped(5, || {
            let model = Sequential::new()
                .add(Linear::new(12, 16, true, device).unwrap())
                .add(Relu)
                .add(Linear::new(16, 4, true, device).unwrap());
            let x = randn(&[40, 12], DType::F32, 61).to_device(device).unwrap();
            let y = Tensor::from_vec((0..40).map(|i| (i * 7 % 4) as i64).collect::<Vec<_>>(), [40], device).unwrap();
            let data = std::sync::Arc::new(TensorDataset::new(x, y).unwrap());
            let mut loader = DataLoader::new(data.clone(), 8, true);
            loader.prefetch = 0; // batches cut on this thread, so its download counter sees them
            let mut opt = Adam::simple(model.parameters(), 1e-2);
            let before = kiln::backend::cuda::counters::downloads_on_this_thread();
            let mut step = 0;
            let mut metrics = Vec::new();
            for epoch in 0..2 {
                metrics.push(train_epoch(&model, &mut opt, &loader, epoch, &mut step, EpochHooks::default()).unwrap());
            }
            let downloads = kiln::backend::cuda::counters::downloads_on_this_thread() - before;
            // Evaluation in batches of 16 (three, the last short): one read in all.
            let before = kiln::backend::cuda::counters::downloads_on_this_thread();
            let eval = kiln::train::evaluate(&model, &*data, 16).unwrap();
            let eval_downloads = kiln::backend::cuda::counters::downloads_on_this_thread() - before;
            let params: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect();
            (metrics, params, (downloads, eval_downloads), step, eval)
        })
    };
    let ((cpu, cpu_params, _, _, cpu_eval), (gpu, gpu_params, downloads, steps, gpu_eval)) =
        (run(Device::Cpu), run(dev()));
    assert_eq!(steps, 10);
    assert_eq!(downloads, (steps as u64, 1), "downloads in {steps} steps, then in evaluate, on {}", dev());
    assert!(
        (cpu_eval.0 - gpu_eval.0).abs() < 1e-5 && cpu_eval.1 == gpu_eval.1,
        "evaluate: {gpu_eval:?} vs cpu {cpu_eval:?}"
    );
    for (c, g) in cpu.iter().zip(&gpu) {
        assert!(
            (c.train_loss - g.train_loss).abs() < 1e-5,
            "epoch {}: loss {} vs cpu {}",
            g.epoch,
            g.train_loss,
            c.train_loss
        );
        assert_eq!(c.train_accuracy, g.train_accuracy, "epoch {}", g.epoch);
    }
    // Something was learnt, or equal metrics would prove little.
    assert!(gpu[1].train_loss < gpu[0].train_loss, "{gpu:?}");
    for (i, (a, b)) in gpu_params.iter().zip(&cpu_params).enumerate() {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "parameter {i}: max |device - cpu| = {diff}");
    }
}

/// `kiln::allow_tf32` reaches cuBLAS: a long f32 product is exact to f32 rounding with it off
/// and carries TF32's ~1e-3 input rounding with it on. GPU only, and `#[ignore]`d because the
/// switch is process-wide (other tests' tolerances assume f32): benches/gpu/run.sh runs it
/// alone with `--ignored tf32`.
#[test]
#[ignore]
fn tf32_switch_reaches_cublas() {
    if dev() == Device::CudaEmulated {
        eprintln!("skipped: the emulated device computes in f32 whatever the switch says");
        return;
    }
    let (a, b) = (randn(&[64, 2048], DType::F32, 50), randn(&[2048, 64], DType::F32, 51));
    let exact = a.to_dtype(DType::F64).unwrap().matmul(&b.to_dtype(DType::F64).unwrap()).unwrap();
    let rel_err = |tf32: bool| {
        kiln::allow_tf32(tf32);
        let got = a.to_device(dev()).unwrap().matmul(&b.to_device(dev()).unwrap()).unwrap();
        kiln::allow_tf32(false);
        let (g, e) = (got.to_vec::<f64>().unwrap(), exact.to_vec::<f64>().unwrap());
        let scale = e.iter().map(|v| v.abs()).fold(0.0, f64::max);
        g.iter().zip(&e).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
    };
    let (off, on) = (rel_err(false), rel_err(true));
    assert!(off < 1e-5, "f32 GEMM error {off}");
    assert!(on > 10.0 * off && on < 2e-2, "TF32 GEMM error {on} (f32: {off})");
}

#[test]
fn uploads_arrive_whole_and_in_order() {
    // On a GPU uploads go through pinned staging slots (16 MiB pieces, 4 slots round-robin)
    // and return before the device copy completes: a tensor larger than two slots, several
    // uploads in a row that reuse the slots, and kernels right after them must all see the
    // bytes as they were when uploaded.
    // (On the emulated device, which copies directly, a small one: its kernels are slow.)
    let gpu = matches!(dev(), Device::Cuda(_));
    let big: Vec<f32> = (0..if gpu { 9 << 20 } else { 1 << 16 }).map(|i| (i % 1000) as f32 - 500.0).collect();
    let before = kiln::backend::cuda::device::get(dev()).unwrap().staged_uploads();
    let t = Tensor::from_vec(big.clone(), [big.len()], Device::Cpu).unwrap().to_device(dev()).unwrap();
    let mut ups = Vec::new();
    for k in 0..6 {
        let v: Vec<f32> = (0..100_000).map(|i| (i * (k + 1)) as f32).collect();
        ups.push((v.clone(), Tensor::from_vec(v, [100_000], Device::Cpu).unwrap().to_device(dev()).unwrap()));
    }
    let neg = t.neg().unwrap().to_vec::<f32>().unwrap();
    assert!(neg.iter().zip(&big).all(|(a, b)| *a == -*b), "a 36 MB upload (on a GPU), negated on the device");
    for (k, (v, d)) in ups.iter().enumerate() {
        assert_eq!(&d.to_vec::<f32>().unwrap(), v, "upload {k}");
    }
    let after = kiln::backend::cuda::device::get(dev()).unwrap().staged_uploads();
    if gpu {
        assert!(after.0 >= before.0 + 7 && after.1 >= before.1 + 4 * big.len(), "{before:?} -> {after:?}");
    } else {
        assert_eq!(after, (0, 0), "the emulated device copies directly");
    }
}
