//! Per-op medians of the MNIST CNN's training step (`kiln train --model cnn`'s model, Adam,
//! batch 128, random inputs): `cargo run --release --example cnn_ops [STEPS]`.
//!
//! Medians per call rather than totals, so a busy machine's spikes do not move them much;
//! the step lines are the median wall and CPU time (all threads; rayon's idle spinning
//! counts) of one forward + backward + Adam step.

use kiln::nn::Module;
use kiln::optim::{Adam, Optimizer};
use kiln::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::time::Instant;

/// User + system CPU seconds of the whole process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> kiln::Result<()> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let model = kiln::train::models::cnn(Device::Cpu)?;
    let mut opt = Adam::simple(model.parameters(), 1e-3);
    let x = Tensor::randn(vec![128, 1, 28, 28], DType::F32, Device::Cpu)?;
    let y = Tensor::from_vec((0..128).map(|i| i % 10).collect::<Vec<i64>>(), [128], Device::Cpu)?;
    let (mut step_ms, mut cpu_ms) = (Vec::new(), Vec::new());
    let mut per_op: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..steps + 3 {
        kiln::profile::start();
        let (t, c) = (Instant::now(), cpu_seconds());
        let loss = model.forward(&x)?.cross_entropy(&y, 0.0)?;
        opt.zero_grad();
        loss.backward()?;
        opt.step()?;
        let dt = t.elapsed().as_secs_f64() * 1e3;
        let dc = (cpu_seconds() - c) * 1e3;
        let p = kiln::profile::stop();
        if i < 3 {
            continue; // warm-up: first touches of fresh memory, thread start
        }
        step_ms.push(dt);
        cpu_ms.push(dc);
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for e in p.events {
            let name = match e.backward_of {
                Some(b) => format!("{} [backward of {b}]", e.name),
                None => e.name.to_string(),
            };
            *sums.entry(name).or_default() += e.dur_us / 1e3;
        }
        for (k, v) in sums {
            per_op.entry(k).or_default().push(v);
        }
    }
    let mut rows: Vec<(String, f64)> = per_op.into_iter().map(|(k, v)| (k, median(v))).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{:<50} {:>10}", "op (median ms per step)", "ms");
    for (k, v) in rows.iter().filter(|r| r.1 >= 0.05) {
        println!("{k:<50} {v:>10.2}");
    }
    let sum: f64 = rows.iter().map(|r| r.1).sum();
    println!("{:<50} {:>10.2}", "sum of op medians", sum);
    println!("{:<50} {:>10.2}", "step (median wall ms)", median(step_ms));
    println!("{:<50} {:>10.2}", "step (median CPU ms, all threads)", median(cpu_ms));
    Ok(())
}
