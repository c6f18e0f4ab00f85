//! `kiln bench-resnet`: training steps of ResNet-18 (32x32 inputs, 10 classes, Adam 1e-3) on
//! one fixed random batch: issue 5's larger workload for the GPU section of BENCHMARKS.md.
//! benches/gpu/torch_resnet.py runs the same network and steps in PyTorch and prints the
//! same JSON fields. Runs on any device (a few steps only on the CPU: ~200 GFLOP per step at
//! batch 128).

use anyhow::Result;
use kiln::nn::{Module, ResNet};
use kiln::optim::{Adam, Optimizer};
use kiln::{DType, Device, Tensor};
use std::time::Instant;

pub fn run(device: Device, batch: usize, steps: usize, tf32: bool, profile: bool) -> Result<()> {
    anyhow::ensure!(batch > 0 && steps > 0, "--batch and --steps must be positive");
    kiln::allow_tf32(tf32);
    let model = kiln::rng::scoped(0, || ResNet::resnet18(3, 10, device))?;
    let params = model.parameters();
    let n_params: usize = params.iter().map(|p| p.elem_count()).sum();
    let mut opt = Adam::simple(params, 1e-3);
    let mut g = kiln::Generator::new(1);
    let x = Tensor::randn_with([batch, 3, 32, 32], DType::F32, Device::Cpu, &mut g)?.to_device(device)?;
    let labels: Vec<i64> = (0..batch as i64).map(|i| (i * 7 + 3) % 10).collect();
    let y = Tensor::from_vec(labels, [batch], Device::Cpu)?.to_device(device)?;
    model.train();
    let mut step = || -> Result<f64> {
        opt.zero_grad();
        let loss = model.forward(&x)?.cross_entropy(&y, 0.0)?;
        loss.backward()?;
        opt.step()?;
        Ok(loss.to_scalar::<f64>()?)
    };
    // Warm-up: kernels compiled and loaded, the allocator's cache filled.
    let first_loss = step()?;
    step()?;
    device.synchronize()?;
    if profile {
        kiln::profile::start();
    }
    use kiln::backend::cuda::{counters, cudnn};
    let (launches0, downloads0, cudnn0) = (counters::launches(), counters::downloads(), cudnn::calls());
    let start = Instant::now();
    let mut last_loss = first_loss;
    for _ in 0..steps {
        last_loss = step()?;
    }
    device.synchronize()?;
    let secs = start.elapsed().as_secs_f64();
    let per_step = |n: u64| n as f64 / steps as f64;
    let launches = per_step(counters::launches() - launches0);
    let downloads = per_step(counters::downloads() - downloads0);
    let cudnn_per_step = per_step((cudnn::calls() - cudnn0) as u64);
    if profile {
        eprintln!("{}", kiln::profile::stop().table(30));
    }
    let peak = match device {
        Device::Cpu => kiln::backend::cpu::peak_bytes(),
        d => kiln::backend::cuda::device::get(d)?.allocator().stats().peak_allocated,
    };
    println!(
        "{}",
        serde_json::json!({
            "framework": format!("kiln {}", env!("CARGO_PKG_VERSION")), "workload": "resnet18",
            "device": device.to_string(), "tf32": tf32, "batch": batch, "steps": steps,
            "parameters": n_params, "step_ms": secs / steps as f64 * 1e3,
            "samples_per_second": (batch * steps) as f64 / secs,
            "first_loss": first_loss, "last_loss": last_loss, "peak_tensor_bytes": peak,
            "profiled": profile,
            // Which path the convolutions took: cuDNN's passes, or im2col + GEMM.
            "cudnn_calls": kiln::backend::cuda::cudnn::calls(),
            // The host's share of a GPU step (the timed steps; 0 on the CPU): Kiln's own
            // kernel launches, cuDNN calls, and downloads (each a sync; the loss is one).
            "kernel_launches_per_step": launches, "cudnn_calls_per_step": cudnn_per_step,
            "downloads_per_step": downloads,
        })
    );
    Ok(())
}
