//! The `kiln` command: train, evaluate, serve, and report what hardware Kiln can use.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kiln::data::mnist;
use kiln::train::{run, RunConfig};
use kiln::Device;
use std::path::PathBuf;

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
    /// Devices and libraries Kiln can use.
    Info,
    /// Serve a checkpoint over TensorFlow Serving's REST API (predict, status, metadata).
    Serve(ServeArgs),
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
}

fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::best(),
        "cpu" => Device::Cpu,
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
        Some(Command::Info) => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            println!("cpu: {} threads (rayon; RAYON_NUM_THREADS overrides)", rayon::current_num_threads());
            let p = kiln::backend::cuda::probe::probe();
            for lib in [&p.driver, &p.nvrtc, &p.cublas, &p.nccl] {
                println!("{:<14} {}", lib.name, lib.found.as_deref().unwrap_or("not found"));
            }
            println!("searched: {}", p.searched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
            println!("gpus: {}", kiln::backend::cuda::device_count());
            match Device::cuda(0) {
                Ok(d) => println!("cuda: {d}"),
                Err(e) => println!("cuda: {e}"),
            }
            println!("best device: {}", Device::best());
            Ok(())
        }
        Some(Command::Serve(a)) => serve(a),
    }
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

fn train(a: TrainArgs) -> Result<()> {
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
    };
    let s = run(&cfg, device)?;
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
