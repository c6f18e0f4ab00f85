//! GEMM throughput of Kiln's f32 matmul, one JSON line per shape on stdout:
//!
//! ```text
//! {"impl":"kiln","shape":"128x784x256","layout":"nn","gflops":41.2,"ms":0.624,"threads":2}
//! ```
//!
//! Usage: `cargo run --release --example gemm_gflops -- [--secs S] [MxKxN[:nn|tn|nt] ...]`
//!
//! With no shapes it runs the default set: square 256, 1024, 2048 and the GEMMs of one
//! training step of an MLP 784-256-256-10 at batch 128 (forward "nn", weight grads `x.t() @ g`
//! as "tn", input grads `g @ w.t()` as "nt"; transposes are views, never copied). A shape
//! without a layout means "nn". `benches/peers/matmul_numpy.py` takes the same arguments
//! and prints the same lines for numpy.
//!
//! Method, per shape: warm up, pick a repeat count so one sample lasts at least ~2 ms, take
//! samples until `--secs` (default 1.0) has elapsed (at least 5 samples), and report the
//! median time per call. The thread count is rayon's (it honours `RAYON_NUM_THREADS`).

use kiln::{DType, Device, Tensor};
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// (m, k, n, layout) of the default run.
const DEFAULT_SHAPES: &[(usize, usize, usize, &str)] = &[
    (256, 256, 256, "nn"),
    (1024, 1024, 1024, "nn"),
    (2048, 2048, 2048, "nn"),
    // MLP 784-256-256-10, batch 128: forward h = x @ w
    (128, 784, 256, "nn"),
    (128, 256, 256, "nn"),
    (128, 256, 10, "nn"),
    // weight grads dW = x.t() @ g
    (784, 128, 256, "tn"),
    (256, 128, 256, "tn"),
    (256, 128, 10, "tn"),
    // input grads dx = g @ w.t() (the first layer's is not needed in training)
    (128, 10, 256, "nt"),
    (128, 256, 256, "nt"),
];

const MIN_SAMPLE: Duration = Duration::from_millis(2);
const MIN_SAMPLES: usize = 5;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gemm_gflops: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut secs = 1.0f64;
    let mut shapes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => {
                let v = args.next().ok_or("--secs needs a value")?;
                secs = v.parse().map_err(|_| format!("bad --secs value {v:?}"))?;
            }
            "-h" | "--help" => {
                println!("usage: gemm_gflops [--secs S] [MxKxN[:nn|tn|nt] ...]");
                return Ok(());
            }
            s => shapes.push(parse_shape(s)?),
        }
    }
    if shapes.is_empty() {
        shapes = DEFAULT_SHAPES.iter().map(|&(m, k, n, l)| (m, k, n, l.to_string())).collect();
    }
    let threads = rayon::current_num_threads();
    eprintln!("gemm_gflops: kiln f32 matmul, {threads} rayon threads, {secs} s per shape");
    let budget = Duration::from_secs_f64(secs);
    for (m, k, n, layout) in shapes {
        let (a, b) = operands(m, k, n, &layout).map_err(|e| e.to_string())?;
        check(&a, &b).map_err(|e| format!("{m}x{k}x{n} {layout}: {e}"))?;
        let per_call = kiln::no_grad(|| time_median(budget, || drop(black_box(a.matmul(&b).expect("matmul")))));
        let ms = per_call.as_secs_f64() * 1e3;
        let gflops = 2.0 * (m * k * n) as f64 / per_call.as_secs_f64() / 1e9;
        println!(
            "{{\"impl\":\"kiln\",\"shape\":\"{m}x{k}x{n}\",\"layout\":\"{layout}\",\"gflops\":{gflops:.3},\"ms\":{ms:.6},\"threads\":{threads}}}"
        );
    }
    Ok(())
}

/// "MxKxN" or "MxKxN:layout".
fn parse_shape(s: &str) -> Result<(usize, usize, usize, String), String> {
    let (dims, layout) = s.split_once(':').unwrap_or((s, "nn"));
    if !matches!(layout, "nn" | "tn" | "nt") {
        return Err(format!("{s:?}: layout must be nn, tn or nt"));
    }
    let d: Vec<usize> = dims
        .split('x')
        .map(|p| p.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: want MxKxN"))?;
    match d[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n, layout.to_string())),
        _ => Err(format!("{s:?}: want MxKxN with positive sizes")),
    }
}

/// A [m, k] and B [k, n] in the given layout: "tn" makes A the transposed view of a
/// row-major [k, m], "nt" makes B the transposed view of a row-major [n, k].
fn operands(m: usize, k: usize, n: usize, layout: &str) -> kiln::Result<(Tensor, Tensor)> {
    let randn = |shape: [usize; 2]| Tensor::randn(shape, DType::F32, Device::Cpu);
    Ok(match layout {
        "tn" => (randn([k, m])?.t()?, randn([k, n])?),
        "nt" => (randn([m, k])?, randn([n, k])?.t()?),
        _ => (randn([m, k])?, randn([k, n])?),
    })
}

/// Spot-checks a few entries of a @ b against plain dot products, so a wrong layout or a
/// broken kernel is not reported as a fast one.
fn check(a: &Tensor, b: &Tensor) -> Result<(), String> {
    let (m, k, n) = (a.dims()[0], a.dims()[1], b.dims()[1]);
    let c = kiln::no_grad(|| a.matmul(b)).map_err(|e| e.to_string())?;
    let (av, bv, cv) = (a.to_vec::<f32>(), b.to_vec::<f32>(), c.to_vec::<f32>());
    let (av, bv, cv) = (av.map_err(|e| e.to_string())?, bv.map_err(|e| e.to_string())?, cv.map_err(|e| e.to_string())?);
    for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3), (m / 3, n - 1), (m - 1, 0)] {
        let want: f64 = (0..k).map(|l| av[i * k + l] as f64 * bv[l * n + j] as f64).sum();
        let got = cv[i * n + j] as f64;
        if (got - want).abs() > 1e-3 * (1.0 + want.abs()) * (k as f64).sqrt() {
            return Err(format!("c[{i},{j}] = {got}, expected {want}"));
        }
    }
    Ok(())
}

/// Median time of one call of `f`: warm-up, then samples of `reps` calls each until
/// `budget` has elapsed (and at least MIN_SAMPLES were taken).
fn time_median(budget: Duration, mut f: impl FnMut()) -> Duration {
    // Warm-up: at least 3 calls and ~10% of the budget (caches, thread pool, allocator).
    let warm = Instant::now();
    let mut calls = 0u32;
    while calls < 3 || warm.elapsed() < budget / 10 {
        f();
        calls += 1;
    }
    let one = warm.elapsed() / calls;
    let reps = (MIN_SAMPLE.as_secs_f64() / one.as_secs_f64().max(1e-9)).ceil().max(1.0) as u32;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_SAMPLES || start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        samples.push(t.elapsed() / reps);
    }
    samples.sort();
    let mid = samples.len() / 2;
    if samples.len() % 2 == 1 {
        samples[mid]
    } else {
        (samples[mid - 1] + samples[mid]) / 2
    }
}
