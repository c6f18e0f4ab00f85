//! One training run as `kiln train` does it: data, model, optimizer, epochs with evaluation,
//! a checkpoint after every epoch, `summary.json` at the end; or a resumed run that
//! continues a checkpoint exactly.

use super::{
    evaluate, models, train_epoch, CpuThreadsMode, EpochHooks, EpochMetrics, LoopConfig, ThreadTuner, TrainLogger,
};
use crate::data::{mnist, DataLoader, Dataset};
use crate::dist::DataParallel;
use crate::io::checkpoint::{self, SaveRequest};
use crate::io::tensorboard::EventWriter;
use crate::nn::Module;
use crate::optim::{Adam, Optimizer, Sgd, SgdConfig};
use crate::{Device, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Everything that defines a run (stored in its checkpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// "mlp" or "cnn".
    pub model: String,
    pub data: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// "sgd" (momentum 0.9), "adam" or "adamw".
    pub optimizer: String,
    pub weight_decay: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
    pub progress: bool,
    /// TensorBoard event files go here (default: `out`).
    pub logdir: Option<PathBuf>,
    /// Weight and gradient histograms every this many steps (0: never).
    pub histogram_every: usize,
    /// Record every op's time and write `trace.json` and `profile.txt` into `out`.
    pub profile: bool,
    /// Data-parallel worker threads in this process (1: no data parallelism). `batch_size`
    /// stays the global batch: each worker trains on its share of every batch.
    #[serde(default = "one")]
    pub workers: usize,
    /// Data-parallel over these GPUs of this process, one worker thread and one NCCL rank
    /// each (empty: not used). `batch_size` stays the global batch.
    #[serde(default)]
    pub devices: Vec<usize>,
    /// Stop after this many optimizer steps (the checkpoint and summary are still written).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Seconds a data-parallel rank waits for a peer before it fails.
    #[serde(default = "default_timeout")]
    pub dist_timeout_s: f64,
    /// Gradient bucket size of data-parallel training, in MiB.
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: f64,
    /// Ranks other than 0 also write their final model, into `out/rank-R` (to check that
    /// replicas agree; normally only rank 0 writes).
    #[serde(default)]
    pub save_every_rank: bool,
}

fn one() -> usize {
    1
}
fn default_timeout() -> f64 {
    crate::dist::DEFAULT_TIMEOUT.as_secs_f64()
}
fn default_bucket_mb() -> f64 {
    (crate::dist::DEFAULT_BUCKET_BYTES >> 20) as f64
}

impl RunConfig {
    /// The settings every rank of a data-parallel job must share (compared at rendezvous):
    /// all but where each one writes and whether it draws a progress bar.
    pub fn shared_settings(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            for k in ["out", "logdir", "progress"] {
                m.remove(k);
            }
        }
        v
    }

    /// The receive timeout of data-parallel ranks.
    pub fn dist_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.dist_timeout_s.clamp(0.01, 1e6))
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            model: "mlp".into(),
            data: mnist::bundled_dir(),
            epochs: 20,
            batch_size: 128,
            lr: 1e-3,
            optimizer: "adam".into(),
            weight_decay: 0.0,
            label_smoothing: 0.0,
            seed: 0,
            out: PathBuf::from("runs/latest"),
            resume: None,
            progress: true,
            logdir: None,
            histogram_every: 0,
            profile: false,
            workers: 1,
            devices: Vec::new(),
            max_steps: None,
            dist_timeout_s: default_timeout(),
            bucket_mb: default_bucket_mb(),
            save_every_rank: false,
        }
    }
}

/// What `summary.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub device: String,
    pub epochs: usize,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Wall time of the whole run, data loading included.
    pub seconds: f64,
    /// Time inside the training epochs only.
    pub train_seconds: f64,
    pub samples_per_second: f64,
    pub peak_rss_bytes: u64,
    pub history: Vec<EpochMetrics>,
    /// The profiler's table of top ops, when profiling.
    pub profile: Option<String>,
}

pub(crate) fn build_optimizer(cfg: &RunConfig, params: Vec<crate::Tensor>) -> Result<Box<dyn Optimizer>> {
    Ok(match cfg.optimizer.as_str() {
        "sgd" => {
            let mut o = Sgd::simple(params, cfg.lr, SgdConfig { momentum: 0.9, ..Default::default() });
            o.groups_mut()[0].weight_decay = cfg.weight_decay;
            Box::new(o)
        }
        "adam" => {
            let mut o = Adam::simple(params, cfg.lr);
            o.groups_mut()[0].weight_decay = cfg.weight_decay;
            Box::new(o)
        }
        "adamw" => Box::new(Adam::adamw(params, cfg.lr, cfg.weight_decay)),
        other => return Err(Error::invalid("train", format!("unknown optimizer `{other}` (sgd, adam, adamw)"))),
    })
}

fn build_model(name: &str, device: Device) -> Result<Box<dyn Module>> {
    Ok(match name {
        "mlp" => Box::new(models::mlp(device)?),
        "cnn" => Box::new(models::cnn(device)?),
        other => return Err(Error::invalid("train", format!("unknown model `{other}` (mlp, cnn)"))),
    })
}

/// Peak resident memory of this process (Linux's VmHWM), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Runs (or resumes) training as configured, on `device`; with `cfg.workers > 1`, as that
/// many data-parallel worker threads. Randomness (initialisation, dropout) comes from a
/// generator of the run's own, seeded by `cfg.seed`: runs on other threads do not disturb it.
pub fn run(cfg: &RunConfig, device: Device) -> Result<Summary> {
    let summaries = if !cfg.devices.is_empty() {
        if cfg.workers > 1 {
            return Err(Error::invalid("train", "--workers (CPU threads) and --devices (GPUs) exclude each other"));
        }
        // Check every GPU first (a clear error, not a failure inside a worker).
        for &d in &cfg.devices {
            Device::cuda(d)?;
        }
        let comms = crate::dist::nccl::NcclComm::for_devices(&cfg.devices)?;
        let results: Vec<Result<Option<Summary>>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .into_iter()
                .zip(&cfg.devices)
                .map(|(comm, &d)| s.spawn(move || run_distributed(cfg, Device::Cuda(d), Box::new(comm))))
                .collect();
            hs.into_iter()
                .enumerate()
                .map(|(rank, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::dist(rank, crate::DistErrorKind::WorkerFailed, "GPU worker panicked"))
                    })
                })
                .collect()
        });
        crate::dist::threads::first_cause(results)?
    } else if cfg.workers > 1 {
        // Each worker runs its loop and its ops on a pool of its own share of the cores (as
        // torchrun's OMP_NUM_THREADS = cores / nproc): N workers on C cores make C threads
        // instead of N loops contending with C shared rayon workers.
        let per_worker = (rayon::current_num_threads() / cfg.workers).max(1);
        crate::dist::run_workers(cfg.workers, cfg.dist_timeout(), |rank, comm| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(per_worker)
                .thread_name(move |i| format!("kiln-worker-{rank}-{i}"))
                .build()
                .map_err(|e| Error::dist(rank, crate::DistErrorKind::WorkerFailed, format!("thread pool: {e}")))?;
            pool.install(|| run_distributed(cfg, device, comm))
        })?
    } else {
        // The loop runs on one of rayon's workers, not beside them: with RAYON_NUM_THREADS
        // workers plus a calling thread, a 2-core machine had 3 threads contending for 2 cores,
        // idle workers spinning (sched_yield) against the loop's serial ops. Inside the pool
        // the loop's thread is itself a worker (as OpenMP's master thread is): MLP 1.78 -> 1.45 s.
        vec![rayon::scope(|_| crate::rng::scoped(cfg.seed, || run_seeded(cfg, device, None)))?]
    };
    summaries.into_iter().next().flatten().ok_or_else(|| Error::invalid("train", "rank 0 returned no summary"))
}

/// One rank of a data-parallel run: trains on its share of every batch, all-reducing
/// gradients through `comm`. Only rank 0 evaluates, logs, checkpoints and returns a summary.
pub fn run_distributed(
    cfg: &RunConfig,
    device: Device,
    comm: Box<dyn crate::dist::Communicator>,
) -> Result<Option<Summary>> {
    crate::rng::scoped(cfg.seed, || run_seeded(cfg, device, Some(comm)))
}

fn run_seeded(
    cfg: &RunConfig,
    device: Device,
    comm: Option<Box<dyn crate::dist::Communicator>>,
) -> Result<Option<Summary>> {
    let start = Instant::now();
    let train = Arc::new(mnist::load(&cfg.data, mnist::Split::Train, device)?);
    let test = mnist::load(&cfg.data, mnist::Split::Test, device)?;
    tracing::info!(train = train.len(), test = test.len(), data = %cfg.data.display(), "loaded MNIST");

    let (model, mut opt, mut epoch, mut step) = match &cfg.resume {
        None => {
            let model = build_model(&cfg.model, device)?;
            let opt = build_optimizer(cfg, model.parameters())?;
            (model, opt, 0, 0)
        }
        Some(dir) => {
            let ck = checkpoint::load(dir, device)?;
            let model = ck.build_model(device)?;
            let mut opt = build_optimizer(cfg, model.parameters())?;
            opt.load_state_dict(&ck.optimizer_state)?;
            if let Some(s) = ck.meta.rng {
                crate::set_rng_state(s);
            }
            tracing::info!(dir = %dir.display(), epoch = ck.meta.epoch, step = ck.meta.step, "resuming");
            (model, opt, ck.meta.epoch, ck.meta.step)
        }
    };
    let mut dp = match comm {
        Some(c) => {
            let mut dp = DataParallel::new(c, model.parameters(), (cfg.bucket_mb * (1 << 20) as f64) as usize)?;
            dp.broadcast_parameters()?;
            tracing::info!(
                rank = dp.rank(),
                world = dp.world_size(),
                buckets = dp.bucket_count(),
                "data-parallel: parameters broadcast from rank 0"
            );
            Some(dp)
        }
        None => None,
    };
    let (rank, world) = dp.as_ref().map(|d| (d.rank(), d.world_size())).unwrap_or((0, 1));
    let main = rank == 0;
    let loader = DataLoader::new(train, cfg.batch_size, true).with_seed(cfg.seed).with_shard(rank, world);
    let loop_cfg = LoopConfig {
        label_smoothing: cfg.label_smoothing,
        clip_grad_norm: None,
        progress: cfg.progress && main,
        max_steps: cfg.max_steps,
    };
    let mut history: Vec<EpochMetrics> = Vec::new();
    let config_json = serde_json::to_value(cfg).map_err(|e| Error::invalid("train", e.to_string()))?;
    let logdir = cfg.logdir.clone().unwrap_or_else(|| cfg.out.clone());
    // Only rank 0 logs, evaluates and writes; the other ranks just train.
    let mut logger = if main {
        let mut logger = TrainLogger::new(EventWriter::create(&logdir)?, cfg.histogram_every);
        logger.describe(&config_json, model.as_ref())?;
        tracing::info!(logdir = %logdir.display(), "TensorBoard: tensorboard --logdir {}", logdir.display());
        Some(logger)
    } else {
        None
    };
    if cfg.profile && main {
        crate::profile::start();
    }
    // CPU ops on rayon's workers or inline, whichever steps faster here and now (see
    // tuner.rs). Data-parallel ranks keep their pools: a rank's speed is not its own to pick.
    let mut tuner = (device == Device::Cpu && dp.is_none()).then(|| ThreadTuner::new(CpuThreadsMode::from_env()));
    while epoch < cfg.epochs && cfg.max_steps.is_none_or(|m| step < m) {
        epoch += 1;
        let mut m = train_epoch(
            model.as_ref(),
            opt.as_mut(),
            &loader,
            epoch,
            &mut step,
            EpochHooks {
                cfg: loop_cfg,
                schedule: None,
                logger: logger.as_mut(),
                dist: dp.as_mut(),
                tuner: tuner.as_mut(),
            },
        )?;
        if !main {
            continue;
        }
        let eval = || evaluate(model.as_ref(), &test, crate::train::EVAL_BATCH_SIZE);
        let (tl, ta) = match &tuner {
            Some(t) => t.run(eval)?,
            None => eval()?,
        };
        m.test_loss = Some(tl);
        m.test_accuracy = Some(ta);
        if let Some(lg) = logger.as_mut() {
            lg.epoch(step, &m)?;
        }
        tracing::info!(
            epoch,
            train_loss = format!("{:.4}", m.train_loss),
            train_acc = format!("{:.4}", m.train_accuracy),
            test_loss = format!("{tl:.4}"),
            test_acc = format!("{ta:.4}"),
            samples_per_s = format!("{:.0}", m.samples_per_second),
            "epoch done"
        );
        history.push(m);
        checkpoint::save(
            &cfg.out,
            SaveRequest {
                model: model.as_ref(),
                optimizer_state: Some(opt.state_dict()),
                step,
                epoch,
                config: config_json.clone(),
                rng: Some(crate::rng_state()),
            },
        )?;
    }
    if !main {
        if cfg.save_every_rank {
            let dir = cfg.out.join(format!("rank-{rank}"));
            let req = SaveRequest {
                model: model.as_ref(),
                optimizer_state: None,
                step,
                epoch,
                config: config_json,
                rng: None,
            };
            checkpoint::save(&dir, req)?;
        }
        return Ok(None);
    }
    let profile = if cfg.profile {
        let p = crate::profile::stop();
        let table = p.table(25);
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
        let trace = serde_json::to_vec(&p.chrome_trace()).map_err(|e| Error::invalid("profile", e.to_string()))?;
        crate::io::write_atomic(&cfg.out.join("trace.json"), &trace)?;
        crate::io::write_atomic(&cfg.out.join("profile.txt"), table.as_bytes())?;
        Some(table)
    } else {
        None
    };
    let last = history.last();
    let (test_loss, test_accuracy) = match last {
        Some(m) => (m.test_loss.unwrap_or(f64::NAN), m.test_accuracy.unwrap_or(f64::NAN)),
        None => evaluate(model.as_ref(), &test, crate::train::EVAL_BATCH_SIZE)?,
    };
    let train_seconds: f64 = history.iter().map(|m| m.seconds).sum();
    let samples: f64 = history.iter().map(|m| m.samples_per_second * m.seconds).sum();
    let summary = Summary {
        model: cfg.model.clone(),
        device: device.to_string(),
        epochs: epoch,
        test_accuracy,
        test_loss,
        train_loss: last.map(|m| m.train_loss).unwrap_or(f64::NAN),
        train_accuracy: last.map(|m| m.train_accuracy).unwrap_or(f64::NAN),
        seconds: start.elapsed().as_secs_f64(),
        train_seconds,
        samples_per_second: samples / train_seconds.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
        history,
        profile,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::invalid("train", e.to_string()))?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    crate::io::write_atomic(&cfg.out.join("summary.json"), &json)?;
    Ok(Some(summary))
}
