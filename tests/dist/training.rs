//! N data-parallel workers train to the parameters one process reaches with the combined
//! batch; `kiln train --workers 2` matches `--workers 1`; a killed rank stops the job.

use super::{random_f32, tempdir::TempDir};
use kiln::data::{DataLoader, TensorDataset};
use kiln::dist::{run_workers, DataParallel};
use kiln::nn::{Linear, Module, Relu, Sequential};
use kiln::optim::{Adam, Optimizer, Sgd, SgdConfig};
use kiln::train::{train_epoch, EpochHooks, LoopConfig, RunConfig};
use kiln::{Device, Tensor};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAMPLES: usize = 203;
const FEATURES: usize = 12;
const CLASSES: usize = 5;

fn dataset() -> Arc<TensorDataset> {
    dataset_on(Device::Cpu)
}

fn dataset_on(device: Device) -> Arc<TensorDataset> {
    let x = Tensor::from_vec(random_f32(7, SAMPLES * FEATURES), [SAMPLES, FEATURES], device).unwrap();
    let y: Vec<i64> = random_f32(8, SAMPLES).iter().map(|v| ((v + 1.0) * 2.5) as i64 % CLASSES as i64).collect();
    Arc::new(TensorDataset::new(x, Tensor::from_vec(y, [SAMPLES], device).unwrap()).unwrap())
}

fn model() -> Sequential {
    model_on(Device::Cpu)
}

fn model_on(device: Device) -> Sequential {
    Sequential::new()
        .add(Linear::new(FEATURES, 16, true, device).unwrap())
        .add(Relu)
        .add(Linear::new(16, CLASSES, true, device).unwrap())
}

fn optimizer(kind: &str, params: Vec<Tensor>) -> Box<dyn Optimizer> {
    match kind {
        "sgd" => Box::new(Sgd::simple(params, 0.1, SgdConfig { momentum: 0.9, ..Default::default() })),
        _ => Box::new(Adam::simple(params, 1e-2)),
    }
}

/// Trains 2 epochs with batch `batch` (the global batch) as rank `rank` of `dp`'s world, or
/// alone without `dp`; returns the parameters. Every rank starts from a different
/// initialisation (seed + rank), so agreeing at the end also proves the broadcast.
fn train(kind: &str, batch: usize, rank: usize, dp: Option<DataParallel>, model: &Sequential) -> Vec<Vec<f32>> {
    train_on(dataset(), kind, batch, rank, dp, model)
}

fn train_on(
    data: Arc<TensorDataset>,
    kind: &str,
    batch: usize,
    rank: usize,
    mut dp: Option<DataParallel>,
    model: &Sequential,
) -> Vec<Vec<f32>> {
    let mut opt = optimizer(kind, model.parameters());
    let world = dp.as_ref().map(|d| d.world_size()).unwrap_or(1);
    if let Some(d) = dp.as_mut() {
        d.broadcast_parameters().unwrap();
    }
    let loader = DataLoader::new(data, batch, true).with_seed(3).with_shard(rank, world);
    let mut step = 0;
    for epoch in 1..=2 {
        let hooks = EpochHooks { cfg: LoopConfig::default(), dist: dp.as_mut(), ..Default::default() };
        train_epoch(model, opt.as_mut(), &loader, epoch, &mut step, hooks).unwrap();
    }
    model.parameters().iter().map(|p| p.to_vec::<f32>().unwrap()).collect()
}

/// Every rank's parameters within 1e-5 of one process's (`one`) and the same bits as rank 0's.
fn assert_ranks_match(results: &[Vec<Vec<f32>>], one: &[Vec<f32>], what: &str) {
    for (rank, params) in results.iter().enumerate() {
        for (i, (got, want)) in params.iter().zip(one).enumerate() {
            let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff <= 1e-5, "{what}, rank {rank}, parameter {i}: max |diff| {diff}");
            let same = got.iter().zip(&results[0][i]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: rank {rank} drifted from rank 0 (parameter {i})");
        }
    }
}

#[test]
fn n_workers_train_to_the_parameters_of_one_with_the_combined_batch() {
    for kind in ["sgd", "adam"] {
        for n in [2, 3, 4] {
            let per_worker = 16;
            let one = kiln::rng::scoped(11, || train(kind, n * per_worker, 0, None, &model()));
            // 203 samples in batches of n·16: the last batch is short and splits unevenly.
            let results = run_workers(n, Duration::from_secs(30), |rank, comm| {
                kiln::rng::scoped(11 + rank as u64, || {
                    let m = model();
                    // A bucket of 300 bytes: the gradients travel in several buckets.
                    let dp = DataParallel::new(comm, m.parameters(), 300)?;
                    assert!(dp.bucket_count() > 1);
                    Ok(train(kind, n * per_worker, rank, Some(dp), &m))
                })
            })
            .unwrap();
            assert_ranks_match(&results, &one, &format!("{kind}, {n} workers"));
            // And training did move the parameters (the comparison is not between two inits).
            let init = kiln::rng::scoped(11, || model().parameters()[0].to_vec::<f32>().unwrap());
            assert!(init.iter().zip(&one[0]).any(|(a, b)| (a - b).abs() > 1e-3), "{kind}: nothing trained");
        }
    }
}

/// The same on a GPU (the emulated device runs the same device code): gradient buckets in
/// device memory, several steps (the buckets are reused), Adam's fused kernel on the summed
/// gradients; the oracle is one CPU process with the combined batch. (Adam only: the
/// emulated device takes ~1 s a step.)
#[test]
fn workers_on_a_device_train_to_the_parameters_of_one_cpu_process() {
    let device = Device::CudaEmulated;
    let (n, per_worker) = (2, 16);
    let kind = "adam";
    let one = kiln::rng::scoped(11, || train(kind, n * per_worker, 0, None, &model()));
    let results = run_workers(n, Duration::from_secs(60), move |rank, comm| {
        kiln::rng::scoped(11 + rank as u64, || {
            let m = model_on(device);
            let dp = DataParallel::new(comm, m.parameters(), 300)?;
            assert!(dp.buckets_on_device() && dp.bucket_count() > 1);
            Ok(train_on(dataset_on(device), kind, n * per_worker, rank, Some(dp), &m))
        })
    })
    .unwrap();
    assert_ranks_match(&results, &one, &format!("{kind} on {device}"));
}

fn run_config(out: &std::path::Path, workers: usize) -> RunConfig {
    RunConfig { epochs: 2, out: out.to_path_buf(), progress: false, workers, ..RunConfig::default() }
}

#[test]
fn two_worker_threads_reach_the_accuracy_of_one() {
    let dir = TempDir::new("dist-workers");
    let one = kiln::train::run(&run_config(&dir.0.join("w1"), 1), Device::Cpu).unwrap();
    let two = kiln::train::run(&run_config(&dir.0.join("w2"), 2), Device::Cpu).unwrap();
    assert!(one.test_accuracy > 0.85, "one worker: {}", one.test_accuracy);
    assert!(
        (one.test_accuracy - two.test_accuracy).abs() <= 0.01,
        "1 worker {:.4} vs 2 workers {:.4}",
        one.test_accuracy,
        two.test_accuracy
    );
    // Rank 0 wrote the checkpoint and summary; the epochs saw every sample once.
    assert!(dir.0.join("w2/summary.json").exists() && dir.0.join("w2/checkpoint.json").exists());
    let samples = |s: &kiln::train::Summary| s.history[0].samples_per_second * s.history[0].seconds;
    assert!((samples(&two) - samples(&one)).abs() < 1.0, "{} vs {}", samples(&two), samples(&one));
}

#[test]
fn a_killed_rank_makes_the_other_fail_promptly() {
    let dir = TempDir::new("dist-kill");
    let port = super::free_port();
    let spawn = |rank: usize| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["train", "--quiet", "--epochs", "1000", "--dist-timeout", "30", "--out"])
            .arg(dir.0.join(format!("r{rank}")))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            // The test waits for an INFO line, whatever the caller's RUST_LOG says.
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let r0 = spawn(0);
    let mut r1 = spawn(1);
    // Wait until rank 1 is training (it logs the parameter broadcast), then kill it outright.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(r1.stderr.take().unwrap()));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("parameters broadcast"))), "rank 1 ended before training started");
    std::thread::sleep(Duration::from_millis(500));
    r1.kill().unwrap();
    let killed = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let _ = r1.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 kept going: {stderr}");
    assert!(stderr.contains("rank 1 has left"), "{stderr}");
    // Far inside the 30 s timeout: the closed socket is noticed at once.
    assert!(killed.elapsed() < Duration::from_secs(10), "rank 0 took {:?}", killed.elapsed());
}

#[test]
fn devices_without_a_gpu_is_a_clear_error() {
    if kiln::backend::cuda::device_count() > 0 {
        return; // On a GPU machine the GPU validation runs `kiln train --devices 0` instead.
    }
    let dir = TempDir::new("dist-devices");
    let cfg = RunConfig { devices: vec![0], ..run_config(&dir.0, 1) };
    let err = kiln::train::run(&cfg, Device::Cpu).unwrap_err();
    assert!(matches!(err, kiln::Error::DeviceUnavailable { .. }), "{err}");
}

/// Three Linear layers: the first layer's gradients are the last that backward computes.
fn deep_model(device: Device) -> Sequential {
    Sequential::new()
        .add(Linear::new(FEATURES, 16, true, device).unwrap())
        .add(Relu)
        .add(Linear::new(16, 16, true, device).unwrap())
        .add(Relu)
        .add(Linear::new(16, CLASSES, true, device).unwrap())
}

/// One step on `rank`'s half of a fixed batch of 32 on `device`: loss, backward, gradients
/// summed over 2 ranks, either overlapped (hooks armed before backward) or after backward.
/// Returns the summed gradients and how many buckets were out when the first layer's weight
/// got its gradient.
fn one_step(
    rank: usize,
    comm: Box<dyn kiln::dist::Communicator>,
    overlap: bool,
    device: Device,
) -> kiln::Result<(Vec<Vec<f32>>, usize)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let m = kiln::rng::scoped(5, || deep_model(device));
    let params = m.parameters();
    // One bucket per parameter (6), the last layer's first.
    let dp = Arc::new(Mutex::new(DataParallel::new(comm, params.clone(), 1)?));
    assert_eq!(dp.lock().unwrap().bucket_count(), 6);
    assert_eq!(dp.lock().unwrap().buckets_on_device(), device != Device::Cpu);
    let out_then = Arc::new(AtomicUsize::new(usize::MAX));
    let (d, o) = (Arc::clone(&dp), Arc::clone(&out_then));
    // Registered after DataParallel's own hook, so it runs after that one on this parameter.
    params[0].register_post_accumulate_grad_hook(move |_| {
        o.store(d.lock().unwrap().buckets_sent_during_backward(), Ordering::SeqCst);
        Ok(())
    })?;
    let data = dataset();
    let batch = kiln::data::Dataset::get_batch(data.as_ref(), &(rank * 16..rank * 16 + 16).collect::<Vec<_>>())?;
    let (inputs, targets) = (batch.inputs.to_device(device)?, batch.targets.to_device(device)?);
    if overlap {
        dp.lock().unwrap().begin_backward(0.5)?;
    }
    m.forward(&inputs)?.cross_entropy(&targets, 0.0)?.backward()?;
    if overlap {
        dp.lock().unwrap().finish_gradients()?;
    } else {
        dp.lock().unwrap().all_reduce_gradients(0.5)?;
    }
    let grads = params.iter().map(|p| p.grad().expect("a gradient")).collect::<Vec<_>>();
    for g in &grads {
        assert_eq!(g.device(), device, "the summed gradient is on the model's device");
    }
    let grads = grads.iter().map(|g| g.to_vec::<f32>()).collect::<kiln::Result<_>>()?;
    Ok((grads, out_then.load(Ordering::SeqCst)))
}

/// The mean-loss gradients of the whole batch of 32 in one process on the CPU: the oracle
/// for the ranks' sums.
fn whole_batch_gradients() -> Vec<Vec<f32>> {
    let m = kiln::rng::scoped(5, || deep_model(Device::Cpu));
    let data = dataset();
    let batch = kiln::data::Dataset::get_batch(data.as_ref(), &(0..32).collect::<Vec<_>>()).unwrap();
    m.forward(&batch.inputs).unwrap().cross_entropy(&batch.targets, 0.0).unwrap().backward().unwrap();
    m.parameters().iter().map(|p| p.grad().unwrap().to_vec::<f32>().unwrap()).collect()
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= tol, "{what}, parameter {i}: max |diff| {diff}");
    }
}

#[test]
fn gradient_buckets_go_out_while_backward_runs() {
    let run = |overlap| {
        run_workers(2, Duration::from_secs(30), move |rank, comm| one_step(rank, comm, overlap, Device::Cpu)).unwrap()
    };
    let (overlapped, after) = (run(true), run(false));
    for rank in 0..2 {
        // Overlapped: when the first layer's weight got its gradient, the buckets of the two
        // later layers (4 parameters) were already on their way.
        assert!(overlapped[rank].1 >= 4, "rank {rank}: {} buckets out", overlapped[rank].1);
        assert_eq!(after[rank].1, 0, "rank {rank}: nothing goes out before all_reduce_gradients");
        // The same buckets, so the same sums, to the bit, on both ranks and both ways.
        for (i, (a, b)) in overlapped[rank].0.iter().zip(&after[0].0).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "rank {rank}, parameter {i}");
        }
    }
    // And the sums are the mean gradient of the whole batch of 32, computed in one process.
    assert_close(&after[0].0, &whole_batch_gradients(), 1e-6, "CPU buckets");
}

/// A model on a GPU (here the emulated device, which runs the same device code) keeps its
/// buckets in device memory; the host transport reduces them, and the sums are the whole
/// batch's gradient on the CPU.
#[test]
fn gradient_buckets_on_a_device_sum_like_one_cpu_process() {
    let device = Device::CudaEmulated;
    let run = |overlap| {
        run_workers(2, Duration::from_secs(60), move |rank, comm| one_step(rank, comm, overlap, device)).unwrap()
    };
    let (overlapped, after) = (run(true), run(false));
    let want = whole_batch_gradients();
    for rank in 0..2 {
        assert!(overlapped[rank].1 >= 4, "rank {rank}: {} buckets out", overlapped[rank].1);
        assert_close(&overlapped[rank].0, &want, 1e-5, &format!("device buckets, overlapped, rank {rank}"));
        assert_close(&after[rank].0, &want, 1e-5, &format!("device buckets, after backward, rank {rank}"));
        for (i, (a, b)) in overlapped[rank].0.iter().zip(&overlapped[0].0).enumerate() {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "rank {rank} drifted, parameter {i}");
        }
    }
}

#[test]
fn a_step_that_fails_half_way_leaves_data_parallel_refusing_collectives() {
    let results = run_workers(2, Duration::from_secs(20), |rank, comm| {
        let m = model();
        let mut dp = DataParallel::new(comm, m.parameters(), 300)?;
        if rank == 1 {
            // Leaves before the step: its communicator goes with it.
            return Ok(None);
        }
        dp.begin_backward(1.0)?;
        let failed = dp.finish_gradients().expect_err("the peer has gone");
        // Replies may now be out of step with requests: nothing more is attempted.
        let refused = dp.all_reduce_f64(&mut [1.0]).expect_err("a later collective");
        let again = dp.begin_backward(1.0).expect_err("a later step");
        Ok(Some([failed, refused, again].map(|e| e.to_string())))
    })
    .unwrap();
    let [failed, refused, again] = results[0].clone().expect("rank 0's errors");
    assert!(failed.contains("rank 1"), "{failed}");
    for e in [refused, again] {
        assert!(e.contains("earlier step failed"), "{e}");
    }
}
