//! Criterion benchmarks of Kiln's hot CPU ops: square GEMM, the GEMMs of an MLP's training
//! step (against the `matrixmultiply` crate on the same shapes), conv2d, and elementwise ops.
//!
//! Run with `cargo bench --bench ops` (filter with e.g. `cargo bench --bench ops -- matmul_mlp`).
//! Samples are few and short so the whole file runs in a few minutes on 2 cores.
//!
//! Reading the numbers: matmul and conv groups set `Throughput::Elements(flops)`, so the
//! "elem/s" criterion prints **is FLOP/s** (e.g. "52.1 Gelem/s" = 52.1 GFLOP/s). The
//! elementwise group sets `Throughput::Bytes` of memory moved, so it prints GiB/s.
//!
//! Threads: Kiln's GEMM runs on rayon's global pool (`RAYON_NUM_THREADS`); `matrixmultiply`
//! with its `threading` feature runs on its own pool (`MATMUL_NUM_THREADS`, default: the
//! number of physical cores). Set both to the same value when comparing.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use kiln::{Conv2dOptions, DType, Device, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(shape.to_vec(), DType::F32, Device::Cpu).expect("randn")
}

/// How the operands of `A[m,k] @ B[k,n]` are stored: "nn" both row-major, "tn" A is the
/// transposed view of a row-major [k, m] (a weight gradient `x.t() @ g`), "nt" B is the
/// transposed view of a row-major [n, k] (an input gradient `g @ w.t()`).
#[derive(Clone, Copy)]
enum Op {
    Nn,
    Tn,
    Nt,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Nn => "nn",
            Op::Tn => "tn",
            Op::Nt => "nt",
        }
    }
}

/// The GEMMs of one training step of an MLP 784-256-256-10 at batch 128, in the layouts
/// Kiln runs them: (name, m, k, n, layout). Linear's forward is `x @ w.t()` ("nt", w stored
/// [out, in]); its weight gradient is computed as `g.t() @ x` ("tn", [out, in] like w); its
/// input gradient is `g @ w` ("nn"). The first layer's input gradient is left out: the input
/// does not require grad, so a training step never computes it.
const MLP_SHAPES: &[(&str, usize, usize, usize, Op)] = &[
    ("fc1_fwd", 128, 784, 256, Op::Nt),
    ("fc2_fwd", 128, 256, 256, Op::Nt),
    ("fc3_fwd", 128, 256, 10, Op::Nt),
    ("fc1_dw", 256, 128, 784, Op::Tn),
    ("fc2_dw", 256, 128, 256, Op::Tn),
    ("fc3_dw", 10, 128, 256, Op::Tn),
    ("fc3_dx", 128, 10, 256, Op::Nn),
    ("fc2_dx", 128, 256, 256, Op::Nn),
];

/// Kiln operands for `A[m,k] @ B[k,n]` in `op`'s layout (transposes are views, no copy).
fn kiln_operands(m: usize, k: usize, n: usize, op: Op) -> (Tensor, Tensor) {
    match op {
        Op::Nn => (randn(&[m, k]), randn(&[k, n])),
        Op::Tn => (randn(&[k, m]).t().expect("t"), randn(&[k, n])),
        Op::Nt => (randn(&[m, k]), randn(&[n, k]).t().expect("t")),
    }
}

fn bench_matmul_square(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_square");
    group.sample_size(10).measurement_time(Duration::from_secs(4)).sampling_mode(SamplingMode::Flat);
    for n in [256usize, 1024, 2048] {
        let (a, b) = (randn(&[n, n]), randn(&[n, n]));
        // Elements = FLOPs (2·n³ multiply-adds counted as 2 each), so elem/s = FLOP/s.
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("kiln_f32", n), &n, |bch, _| {
            kiln::no_grad(|| bch.iter(|| black_box(a.matmul(&b).expect("matmul"))))
        });
    }
    group.finish();
}

fn bench_matmul_mlp(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_mlp");
    group.sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for &(name, m, k, n, op) in MLP_SHAPES {
        let id = format!("{name}_{m}x{k}x{n}_{}", op.label());
        // Elements = FLOPs, so elem/s = FLOP/s.
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));

        let (a, b) = kiln_operands(m, k, n, op);
        group.bench_function(BenchmarkId::new("kiln", &id), |bch| {
            kiln::no_grad(|| bch.iter(|| black_box(a.matmul(&b).expect("matmul"))))
        });

        // The same data, handed to matrixmultiply with the same strides as Kiln's views.
        let (av, bv) = (a.to_vec::<f32>().expect("to_vec"), b.to_vec::<f32>().expect("to_vec"));
        // to_vec gives row-major logical order; rebuild the stored (pre-transpose) buffers
        // so matrixmultiply reads the transposed layout, as Kiln does.
        let (a_store, rsa, csa) = match op {
            Op::Tn => (transpose(&av, m, k), 1isize, m as isize),
            _ => (av, k as isize, 1isize),
        };
        let (b_store, rsb, csb) = match op {
            Op::Nt => (transpose(&bv, k, n), 1isize, k as isize),
            _ => (bv, n as isize, 1isize),
        };
        group.bench_function(BenchmarkId::new("matrixmultiply", &id), |bch| {
            bch.iter(|| {
                // A fresh zeroed output each call, as Kiln allocates one per matmul.
                let mut out = vec![0f32; m * n];
                // SAFETY: a_store is m·k and b_store k·n elements addressed exactly by the
                // given strides; out is m·n with row stride n, column stride 1.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a_store.as_ptr(),
                        rsa,
                        csa,
                        b_store.as_ptr(),
                        rsb,
                        csb,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                black_box(out)
            })
        });
    }
    group.finish();
}

/// Row-major [rows, cols] -> row-major [cols, rows].
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn bench_conv2d(c: &mut Criterion) {
    let (n, ci, co, hw, kk) = (64usize, 32usize, 64usize, 28usize, 3usize);
    let opt = Conv2dOptions { padding: (1, 1), ..Conv2dOptions::default() };
    // Forward FLOPs: 2 · n · co · (ci·k·k) · oh · ow (padding 1 keeps 28x28).
    let fwd_flops = 2 * (n * co * ci * kk * kk * hw * hw) as u64;
    let mut group = c.benchmark_group("conv2d");
    group.sample_size(10).measurement_time(Duration::from_secs(4)).sampling_mode(SamplingMode::Flat);
    let x = randn(&[n, ci, hw, hw]);
    let w = randn(&[co, ci, kk, kk]);
    let b = randn(&[co]);
    let id = format!("b{n}_{ci}to{co}_{hw}x{hw}_k{kk}_p1");

    // Elements = FLOPs of the GEMM, so elem/s = FLOP/s.
    group.throughput(Throughput::Elements(fwd_flops));
    group.bench_function(BenchmarkId::new("forward", &id), |bch| {
        kiln::no_grad(|| bch.iter(|| black_box(x.conv2d(&w, Some(&b), opt).expect("conv2d"))))
    });

    // Forward + backward: three GEMMs of the forward's size (y, dW, dcols) plus unfold/fold.
    group.throughput(Throughput::Elements(3 * fwd_flops));
    let xg = x.detach().requires_grad_().expect("requires_grad");
    let wg = w.detach().requires_grad_().expect("requires_grad");
    group.bench_function(BenchmarkId::new("forward_backward", &id), |bch| {
        bch.iter(|| {
            xg.zero_grad();
            wg.zero_grad();
            let loss = xg.conv2d(&wg, Some(&b), opt).expect("conv2d").sum_all().expect("sum_all");
            loss.backward().expect("backward");
            black_box((xg.grad(), wg.grad()))
        })
    });
    group.finish();
}

/// The MNIST CNN's two convolutions at batch 128 as the training step runs them: fused with
/// ReLU and 2x2 max pooling, the first without an input gradient (the data needs none).
fn bench_conv2d_mnist(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_mnist_cnn");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).sampling_mode(SamplingMode::Flat);
    let n = 128usize;
    for (name, ci, co, hw, input_grad) in [("conv1", 1usize, 32usize, 28usize, false), ("conv2", 32, 64, 13, true)] {
        let o = hw - 2;
        let fwd_flops = 2 * (n * co * ci * 9 * o * o) as u64;
        let x = randn(&[n, ci, hw, hw]);
        let x = if input_grad { x.requires_grad_().expect("requires_grad") } else { x };
        let w = randn(&[co, ci, 3, 3]).requires_grad_().expect("requires_grad");
        let b = randn(&[co]).requires_grad_().expect("requires_grad");
        let opt = Conv2dOptions::default();
        // A contiguous upstream gradient, as the next layer hands back in training.
        let gy = randn(&[n, co, o / 2, o / 2]);
        group.throughput(Throughput::Elements(fwd_flops));
        group.bench_function(BenchmarkId::new("forward", name), |bch| {
            kiln::no_grad(|| bch.iter(|| black_box(x.conv2d_relu_maxpool2(&w, Some(&b), opt).expect("conv"))))
        });
        // The backward's GEMMs: the weight gradient, and the input's when it needs one.
        group.throughput(Throughput::Elements(fwd_flops * if input_grad { 3 } else { 2 }));
        group.bench_function(BenchmarkId::new("forward_backward", name), |bch| {
            bch.iter(|| {
                for t in [&x, &w, &b] {
                    t.zero_grad();
                }
                let y = x.conv2d_relu_maxpool2(&w, Some(&b), opt).expect("conv");
                y.backward_with(&gy).expect("backward");
            })
        });
    }
    group.finish();
}

fn bench_elementwise(c: &mut Criterion) {
    let n = 16 * 1024 * 1024;
    let mut group = c.benchmark_group("elementwise");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).sampling_mode(SamplingMode::Flat);
    let a = randn(&[n]);
    let b = randn(&[n]);
    // add: read a, read b, write out.
    group.throughput(Throughput::Bytes(3 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("add_f32", n), |bch| {
        kiln::no_grad(|| bch.iter(|| black_box(a.add(&b).expect("add"))))
    });
    // relu: read a, write out.
    group.throughput(Throughput::Bytes(2 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("relu_f32", n), |bch| {
        kiln::no_grad(|| bch.iter(|| black_box(a.relu().expect("relu"))))
    });
    group.finish();
}

/// The small ops of an MLP 784-256-256-10 training step at batch 128, besides its GEMMs:
/// the Adam update of all 269k parameters (fused, one pass), the bias gradient (sum over
/// the batch), bias add, ReLU, and softmax cross-entropy forward + backward.
fn bench_step_ops(c: &mut Criterion) {
    use kiln::optim::{Adam, Optimizer};
    let mut group = c.benchmark_group("step_ops");
    group.sample_size(20).measurement_time(Duration::from_secs(2));
    let shapes: [&[usize]; 6] = [&[784, 256], &[256], &[256, 256], &[256], &[256, 10], &[10]];
    let params: Vec<Tensor> = shapes.iter().map(|s| randn(s).requires_grad_().expect("param")).collect();
    let n: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    // A gradient for every parameter, from one backward of their plain sum.
    params
        .iter()
        .map(|p| p.sum(&[], false).expect("sum"))
        .reduce(|a, b| a.add(&b).expect("add"))
        .expect("loss")
        .backward()
        .expect("backward");
    let mut adam = Adam::simple(params.clone(), 1e-3);
    // Reads p, g, m, v and writes p, m, v.
    group.throughput(Throughput::Bytes(7 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("adam_step", n), |b| b.iter(|| adam.step().expect("step")));
    let h = randn(&[128, 256]);
    let bias = randn(&[256]);
    group.throughput(Throughput::Bytes(4 * 128 * 256));
    group.bench_function("bias_grad_sum_128x256", |b| {
        kiln::no_grad(|| b.iter(|| black_box(h.sum(&[0], false).expect("sum"))))
    });
    group.bench_function("bias_add_128x256", |b| kiln::no_grad(|| b.iter(|| black_box(h.add(&bias).expect("add")))));
    group.bench_function("relu_128x256", |b| kiln::no_grad(|| b.iter(|| black_box(h.relu().expect("relu")))));
    let logits = randn(&[128, 10]).requires_grad_().expect("logits");
    let labels =
        Tensor::from_vec((0..128).map(|i| i % 10).collect::<Vec<i64>>(), vec![128], Device::Cpu).expect("labels");
    group.bench_function("cross_entropy_fwd_bwd_128x10", |b| {
        b.iter(|| logits.cross_entropy(&labels, 0.0).expect("ce").backward().expect("backward"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = bench_matmul_square, bench_matmul_mlp, bench_conv2d, bench_conv2d_mnist, bench_elementwise, bench_step_ops
}
criterion_main!(benches);
