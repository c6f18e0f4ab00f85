//! The `kiln` command: train, evaluate, serve, and report what hardware Kiln can use.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kiln::data::mnist;
use kiln::train::{run, RunConfig};
use kiln::Device;
use std::path::PathBuf;

mod bench_ops;
mod bench_resnet;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Kiln: train, evaluate and inspect models")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on MNIST (the bundled digits by default).
    Train(TrainArgs),
    /// Evaluate a checkpoint on the test split.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Draw loss and accuracy curves of runs (from their TensorBoard event files).
    Plot {
        /// Run directories (each with events.out.tfevents.* files).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Output image, .png or .svg (default: plot.png in the first run's directory).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1200)]
        width: u32,
        #[arg(long, default_value_t = 500)]
        height: u32,
    },
    /// Kiln's side of benches/peers: train a benchmark workload (Adam 1e-3, batch 128, the
    /// bundled data) and print one JSON line per round, with the fields the peer scripts print.
    Bench {
        /// mlp (15 epochs by default) or cnn (5 epochs).
        #[arg(long, default_value = "mlp")]
        model: String,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// auto, cpu or cuda:N
        #[arg(long, default_value = "auto")]
        device: String,
        /// f32 matmuls on GPU tensor cores in TF32.
        #[arg(long)]
        tf32: bool,
    },
    /// Memory bandwidth (copy, add, relu) and matmul TFLOP/s on a device, one JSON line each.
    BenchOps {
        /// auto, cpu, cuda:N or cuda-emulated
        #[arg(long, default_value = "auto")]
        device: String,
        /// Size of each elementwise operand in MiB.
        #[arg(long, default_value_t = 256)]
        mb: usize,
        /// Square matmul sizes.
        #[arg(long, value_delimiter = ',', default_value = "1024,4096,8192")]
        gemm: Vec<usize>,
    },
    /// ResNet-18 training steps on a random 32x32 batch (the GPU benchmarks' larger workload).
    BenchResnet {
        /// auto, cpu, cuda:N or cuda-emulated
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Timed steps (after two warm-up steps).
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// TF32 tensor cores for f32 matmuls and convolutions' GEMMs.
        #[arg(long)]
        tf32: bool,
        /// Time every op of the timed steps and print the table to stderr (on a GPU, with
        /// CUDA_LAUNCH_BLOCKING=1 so that an op's host time is its device time).
        #[arg(long)]
        profile: bool,
    },
    /// Devices and libraries Kiln can use.
    Info,
    /// Serve a checkpoint over TensorFlow Serving's REST API (predict, status, metadata).
    Serve(ServeArgs),
    /// Start one process per rank with torchrun's environment: `kiln launch --nproc-per-node 2 -- train`.
    Launch(LaunchArgs),
    /// Check a multi-process setup: rendezvous, then an all-reduce whose result is known;
    /// prints one JSON line per rank. Run it under `kiln launch`, torchrun or srun.
    DistCheck {
        /// Seconds to wait for peers.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Elements in the test all-reduce.
        #[arg(long, default_value_t = 1 << 20)]
        len: usize,
    },
}

#[derive(clap::Parser)]
struct LaunchArgs {
    /// Processes (ranks) to start on this node.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Nodes in the job.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This node's index, 0..nnodes.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Address of the node that runs rank 0.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long, default_value_t = kiln::dist::rendezvous::DEFAULT_PORT)]
    master_port: u16,
    /// Seconds the other ranks get to stop by themselves after one failed, before they are killed.
    #[arg(long, default_value_t = 10.0)]
    grace_s: f64,
    /// The kiln command each rank runs (after `--`), e.g. `train --model cnn`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

#[derive(clap::Parser)]
struct ServeArgs {
    /// A checkpoint directory (served as version 1), or a base directory of numbered
    /// version directories (BASE/1, BASE/2, ...; the highest answers unversioned requests).
    #[arg(long)]
    model: PathBuf,
    /// The model's name in URLs: /v1/models/NAME.
    #[arg(long, default_value = "mnist")]
    name: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 8501)]
    port: u16,
    /// auto, cpu or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Most rows in one forward pass (dynamic batching); 1 turns batching off.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long a batch waits for more requests, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    batch_timeout_ms: f64,
    /// Most predict requests queued or running at once; past it, 503.
    #[arg(long, default_value_t = 1024)]
    queue_size: usize,
    /// Forward passes run at the same time (default: one per CPU core).
    #[arg(long)]
    workers: Option<usize>,
    /// Largest request body in bytes; past it, 413.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Longest a request may take, in seconds; past it, 504.
    #[arg(long, default_value_t = 30.0)]
    request_timeout_s: f64,
    /// How often to look for new versions, in seconds (0: never).
    #[arg(long, default_value_t = 1.0)]
    poll_s: f64,
}

#[derive(clap::Parser)]
struct TrainArgs {
    /// mlp or cnn
    #[arg(long, default_value = "mlp")]
    model: String,
    /// Directory with MNIST IDX files (default: the bundled data/mnist).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// sgd, adam or adamw
    #[arg(long, default_value = "adam")]
    optimizer: String,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// auto, cpu or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where the checkpoint and summary.json go.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the checkpoint in this directory.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// TensorBoard log directory (default: --out).
    #[arg(long)]
    logdir: Option<PathBuf>,
    /// Histograms of weights and gradients every N steps (0: none).
    #[arg(long, default_value_t = 0)]
    histogram_every: usize,
    /// Time every op; print the top ops and write trace.json (Chrome/Perfetto) into --out.
    #[arg(long)]
    profile: bool,
    /// Data-parallel CPU worker threads; --batch-size stays the global batch, split among them.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Data-parallel over these GPUs of this process, e.g. 0,1 (NCCL).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<usize>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Seconds a data-parallel rank waits for a peer before failing.
    #[arg(long, default_value_t = 60.0)]
    dist_timeout: f64,
    /// Gradient all-reduce bucket size in MiB.
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// Ranks other than 0 also write their final model into OUT/rank-R.
    #[arg(long)]
    save_every_rank: bool,
    /// f32 matmuls on GPU tensor cores in TF32 (faster, ~3 decimal digits per input).
    #[arg(long)]
    tf32: bool,
}

fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::best(),
        "cpu" => Device::Cpu,
        // The emulated CUDA device: CUDA code paths on the CPU, for debugging (slow).
        "cuda-emulated" => Device::CudaEmulated,
        _ => {
            let n =
                s.strip_prefix("cuda:").or(s.strip_prefix("cuda")).context("--device must be auto, cpu or cuda:N")?;
            let n: usize = if n.is_empty() { 0 } else { n.parse().context("--device cuda:N needs a number")? };
            Device::cuda(n)?
        }
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        // No subcommand: the README's main job, `kiln train` with every default.
        None => train(TrainArgs::parse_from(["train"])),
        Some(Command::Train(a)) => train(a),
        Some(Command::Eval { checkpoint, data, device }) => {
            let device = parse_device(&device)?;
            let ck = kiln::io::checkpoint::load(&checkpoint, device)?;
            let model = ck.build_model(device)?;
            let test = mnist::load(data.unwrap_or_else(mnist::bundled_dir), mnist::Split::Test, device)?;
            let (loss, acc) = kiln::train::evaluate(model.as_ref(), &test, kiln::train::EVAL_BATCH_SIZE)?;
            println!(
                "{}",
                serde_json::json!({"test_loss": loss, "test_accuracy": acc, "epoch": ck.meta.epoch, "step": ck.meta.step})
            );
            Ok(())
        }
        Some(Command::Plot { runs, out, width, height }) => {
            let out = out.unwrap_or_else(|| runs[0].join("plot.png"));
            let series = kiln::plot::load_runs(&runs)?;
            kiln::plot::plot(&series, &out, (width, height))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Some(Command::Bench { model, epochs, rounds, device, tf32 }) => bench(&model, epochs, rounds, &device, tf32),
        Some(Command::BenchOps { device, mb, gemm }) => bench_ops::run(parse_device(&device)?, mb, &gemm),
        Some(Command::BenchResnet { device, batch, steps, tf32, profile }) => {
            bench_resnet::run(parse_device(&device)?, batch, steps, tf32, profile)
        }
        Some(Command::Info) => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            println!("cpu: {} threads (rayon; RAYON_NUM_THREADS overrides)", rayon::current_num_threads());
            let p = kiln::backend::cuda::probe::probe();
            for lib in [&p.driver, &p.nvrtc, &p.cublas, &p.nccl, kiln::backend::cuda::probe::cudnn()] {
                println!("{:<14} {}", lib.name, lib.found.clone().unwrap_or_else(|| lib.why_missing()));
            }
            if let Some(v) = kiln::backend::cuda::cudnn::Cudnn::version() {
                println!("cuDNN: {v} (convolutions on a GPU; KILN_CUDNN=0 runs them on im2col + cuBLAS)");
            }
            println!("searched: {}", p.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
            let v = |r: kiln::Result<(i32, i32)>| r.map_or_else(|e| e.to_string(), |(a, b)| format!("{a}.{b}"));
            println!("driver CUDA: {}", v(kiln::backend::cuda::gpu::driver_version()));
            println!(
                "NVRTC: {} (PTX of a newer CUDA than the driver's is loaded as a CUBIN instead)",
                v(kiln::backend::cuda::gpu::nvrtc_version())
            );
            println!("gpus: {}", kiln::backend::cuda::device_count());
            match Device::cuda(0) {
                Ok(d) => println!("cuda: {d}"),
                Err(e) => println!("cuda: {e}"),
            }
            println!("best device: {}", Device::best());
            Ok(())
        }
        Some(Command::Serve(a)) => serve(a),
        Some(Command::Launch(a)) => {
            let cfg = kiln::dist::launch::LaunchConfig {
                nproc_per_node: a.nproc_per_node,
                nnodes: a.nnodes,
                node_rank: a.node_rank,
                master_addr: a.master_addr,
                master_port: a.master_port,
                program: std::env::current_exe().context("finding the kiln executable")?,
                args: a.command,
                grace: seconds("--grace-s", a.grace_s)?,
            };
            kiln::dist::launch::launch(&cfg)?;
            Ok(())
        }
        Some(Command::DistCheck { timeout, len }) => dist_check(seconds("--timeout", timeout)?, len),
    }
}

/// Rendezvous through the environment, then an all-reduce of `rank + 1` in every element:
/// each element must come back as 1 + 2 + ... + world_size.
fn dist_check(timeout: std::time::Duration, len: usize) -> Result<()> {
    use kiln::dist::{Communicator, ReduceOp};
    let env = kiln::dist::DistEnv::from_env()?
        .context("no RANK/WORLD_SIZE (or Slurm) variables: run it under `kiln launch`, torchrun or srun")?;
    let (mut comm, token) = kiln::dist::tcp::connect_with_token(&env, &serde_json::json!({"check": len}), timeout)?;
    let mut buf = vec![(env.rank + 1) as f32; len];
    // Start together, so the time is the all-reduce's and not a late peer's start-up.
    comm.barrier()?;
    let start = std::time::Instant::now();
    comm.all_reduce(&mut buf, ReduceOp::Sum)?;
    let secs = start.elapsed().as_secs_f64();
    let want = (env.world_size * (env.world_size + 1) / 2) as f32;
    let wrong = buf.iter().filter(|&&x| x != want).count();
    comm.barrier()?;
    println!(
        "{}",
        serde_json::json!({
            "rank": env.rank, "world_size": env.world_size, "local_rank": env.local_rank,
            "backend": comm.backend(), "token": token.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "all_reduce_elements": len, "wrong_elements": wrong, "all_reduce_seconds": secs,
        })
    );
    anyhow::ensure!(wrong == 0, "{wrong} of {len} elements wrong after the all-reduce (want {want})");
    Ok(())
}

fn seconds(what: &str, s: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a non-negative number of seconds"))
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = kiln::serve::ServeConfig::new(a.model);
    cfg.name = a.name;
    cfg.addr = std::net::SocketAddr::new(a.host, a.port);
    cfg.device = parse_device(&a.device)?;
    cfg.max_batch = a.max_batch;
    cfg.batch_timeout = seconds("--batch-timeout-ms", a.batch_timeout_ms / 1000.0)?;
    cfg.queue_capacity = a.queue_size;
    if let Some(w) = a.workers {
        cfg.workers = w;
    }
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.request_timeout = seconds("--request-timeout-s", a.request_timeout_s)?;
    cfg.poll_interval = seconds("--poll-s", a.poll_s)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(kiln::serve::run_until_signal(cfg))?;
    Ok(())
}

/// `kiln bench`: the peer benchmark's workload, trained `rounds` times into a scratch
/// directory that is removed afterwards.
fn bench(model: &str, epochs: Option<usize>, rounds: usize, device: &str, tf32: bool) -> Result<()> {
    let epochs = epochs.unwrap_or(if model == "cnn" { 5 } else { 15 });
    let out = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    let args = ["train", "--quiet", "--model", model, "--device", device, "--optimizer", "adam"];
    let mut a =
        TrainArgs::parse_from(args.into_iter().map(String::from).chain(["--epochs".into(), epochs.to_string()]));
    a.out = out.clone();
    a.tf32 = tf32;
    let (cfg, device) = run_config(a)?;
    for _ in 0..rounds {
        let s = run(&cfg, device);
        std::fs::remove_dir_all(&out).ok();
        let s = s?;
        // On a GPU, the allocator's high-water mark of tensor memory so far in this process
        // (torch_train.py prints torch.cuda.max_memory_allocated() beside it).
        let peak_gpu = match device {
            Device::Cpu => None,
            d => Some(kiln::backend::cuda::device::get(d)?.allocator().stats().peak_allocated),
        };
        println!(
            "{}",
            serde_json::json!({
                "framework": format!("kiln {}", env!("CARGO_PKG_VERSION")), "workload": model, "epochs": epochs,
                "device": s.device, "train_seconds": s.train_seconds, "seconds": s.seconds,
                "samples_per_second": s.samples_per_second, "test_accuracy": s.test_accuracy,
                "peak_rss_bytes": s.peak_rss_bytes, "peak_gpu_bytes": peak_gpu, "tf32": tf32,
            })
        );
    }
    Ok(())
}

fn run_config(a: TrainArgs) -> Result<(RunConfig, Device)> {
    kiln::allow_tf32(a.tf32);
    let device = parse_device(&a.device)?;
    let cfg = RunConfig {
        model: a.model,
        data: a.data.unwrap_or_else(mnist::bundled_dir),
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        optimizer: a.optimizer,
        weight_decay: a.weight_decay,
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        out: a.out,
        resume: a.resume,
        progress: !a.quiet,
        logdir: a.logdir,
        histogram_every: a.histogram_every,
        profile: a.profile,
        workers: a.workers,
        devices: a.devices,
        max_steps: a.max_steps,
        dist_timeout_s: a.dist_timeout,
        bucket_mb: a.bucket_mb,
        save_every_rank: a.save_every_rank,
    };
    Ok((cfg, device))
}

fn train(a: TrainArgs) -> Result<()> {
    let (cfg, device) = run_config(a)?;
    let s = match kiln::dist::DistEnv::from_env()? {
        Some(env) if env.world_size > 1 => {
            anyhow::ensure!(
                cfg.workers <= 1,
                "--workers cannot be combined with a multi-process launch (RANK/WORLD_SIZE set)"
            );
            // One process per GPU: a process on a GPU uses the GPU of its LOCAL_RANK and NCCL;
            // CPU processes use the TCP ring.
            let (device, comm): (Device, Box<dyn kiln::dist::Communicator>) = if device.is_cuda() {
                let gpu = Device::cuda(env.local_rank)?;
                let comm = kiln::dist::nccl::NcclComm::from_env(
                    &env,
                    env.local_rank,
                    &cfg.shared_settings(),
                    cfg.dist_timeout(),
                )?;
                (gpu, Box::new(comm))
            } else {
                (device, Box::new(kiln::dist::tcp::connect(&env, &cfg.shared_settings(), cfg.dist_timeout())?))
            };
            match kiln::train::run_distributed(&cfg, device, comm)? {
                Some(s) => s,
                None => {
                    tracing::info!(rank = env.rank, "rank done");
                    return Ok(());
                }
            }
        }
        _ => run(&cfg, device)?,
    };
    if let Some(table) = &s.profile {
        println!("{table}");
    }
    println!(
        "{}: test accuracy {:.2}%, test loss {:.4}, {:.1} s ({:.0} samples/s), peak RSS {:.0} MB; checkpoint and summary.json in {}",
        s.model,
        100.0 * s.test_accuracy,
        s.test_loss,
        s.seconds,
        s.samples_per_second,
        s.peak_rss_bytes as f64 / 1e6,
        cfg.out.display()
    );
    Ok(())
}
