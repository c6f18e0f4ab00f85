//! `kiln serve`: trained checkpoints over TensorFlow Serving's REST API.
//!
//! - `GET /v1/models/NAME[/versions/V]`: version status; `.../metadata`: the signature
//!   (input `x`, output `logits`, DT_FLOAT); `POST /v1/models/NAME[/versions/V]:predict` with
//!   `{"instances": [...]}` (row form) or `{"inputs": ...}` (columnar form). Errors are
//!   `{"error": "..."}` with 400 (bad request), 404 (unknown model, version or path), 405, 413
//!   (body too large), 503 (queue full, no version loaded), 504 (request timed out).
//! - `GET /healthz`, `GET /metrics` (Prometheus text format).
//! - Versions: `--model` is a checkpoint directory (served as version 1) or a base directory
//!   of numbered version directories (`BASE/1`, `BASE/2`, ...), polled for new ones (the
//!   rules are in `registry.rs`).
//! - Dynamic batching: concurrent predict requests for one version are run as one forward
//!   pass (up to `max_batch` rows, waiting at most `batch_timeout` for more).
//!
//! Instances are the model's input as the model was trained on it (for `kiln train`'s MNIST
//! models: normalised pixels, `(p/255 - 0.1307)/0.3081`), and predictions are what the
//! model outputs (logits), as TensorFlow Serving returns a model's outputs unchanged.

mod batching;
mod documents;
mod json;
mod metrics;
mod registry;
mod routes;

use crate::{Device, Error, Result};
use metrics::Metrics;
use registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// How `kiln serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A checkpoint directory (version 1) or a base directory of numbered versions.
    pub model_dir: PathBuf,
    /// The model's name in URLs (`/v1/models/NAME`).
    pub name: String,
    /// Where to listen; port 0 picks a free port ([`Server::local_addr`] tells which).
    pub addr: SocketAddr,
    pub device: Device,
    /// Most rows in one forward pass; 1 turns batching off.
    pub max_batch: usize,
    /// How long the first request of a batch waits for more.
    pub batch_timeout: Duration,
    /// Most predict requests admitted at once (queued or running); past it, 503.
    pub queue_capacity: usize,
    /// Forward passes that may run at the same time (per version).
    pub workers: usize,
    /// Largest request body; past it, 413.
    pub max_body_bytes: usize,
    /// Longest a request may take; past it, 504.
    pub request_timeout: Duration,
    /// How often the base directory is scanned for new versions (zero: never).
    pub poll_interval: Duration,
    /// A pause before every forward pass, to simulate a slow model (tests, load studies).
    pub forward_delay: Duration,
}

impl ServeConfig {
    /// The defaults of `kiln serve` for a model directory.
    pub fn new(model_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            model_dir: model_dir.into(),
            name: "mnist".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8501)),
            device: Device::Cpu,
            max_batch: 32,
            batch_timeout: Duration::from_millis(2),
            queue_capacity: 1024,
            workers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            forward_delay: Duration::ZERO,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::invalid("serve", m.to_string()));
        if self.name.is_empty() || self.name.contains(['/', ':']) {
            return bad("the model name must be non-empty, without '/' or ':'");
        }
        if self.max_batch == 0 {
            return bad("max_batch must be at least 1");
        }
        if self.workers == 0 {
            return bad("workers must be at least 1");
        }
        Ok(())
    }
}

/// What the request handlers share.
pub(crate) struct AppState {
    pub cfg: ServeConfig,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Admission of predict requests: one permit per request queued or running.
    pub queue: Arc<Semaphore>,
}

/// Stops a running [`Server`] gracefully: no new connections, in-flight requests finish.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A running server (on the current tokio runtime).
pub struct Server {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Server {
    /// Loads the model's versions, binds `cfg.addr` and starts serving.
    pub async fn start(cfg: ServeConfig) -> Result<Server> {
        cfg.check()?;
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::open(&cfg, metrics.clone())?);
        registry.refresh().await;
        if registry.latest().is_none() {
            return Err(Error::invalid(
                "serve",
                format!(
                    "no loadable checkpoint in {} (a checkpoint directory or numbered version directories): {}",
                    cfg.model_dir.display(),
                    registry.failures().join("; ")
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(cfg.addr).await.map_err(|e| Error::io(cfg.addr.to_string(), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(cfg.addr.to_string(), e))?;
        let (tx, rx) = watch::channel(false);
        let state = Arc::new(AppState {
            queue: Arc::new(Semaphore::new(cfg.queue_capacity)),
            cfg,
            registry: registry.clone(),
            metrics,
        });
        let poller = tokio::spawn(registry::poll(registry, state.cfg.poll_interval, rx.clone()));
        let app = routes::router(state);
        let mut stop = rx;
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            poller.abort();
            served.map_err(|e| Error::io(addr.to_string(), e))
        });
        tracing::info!("serving on http://{addr}");
        Ok(Server { addr, shutdown: ShutdownHandle(Arc::new(tx)), task })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after a shutdown, once in-flight requests are done).
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::invalid("serve", format!("the server task failed: {e}"))),
        }
    }

    /// Shuts down gracefully and waits for it.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.shutdown();
        self.wait().await
    }
}

/// `kiln serve`: serves until SIGINT or SIGTERM, then finishes in-flight requests (for at
/// most the request timeout and 5 s more) and returns.
pub async fn run_until_signal(cfg: ServeConfig) -> Result<()> {
    let grace = cfg.request_timeout + Duration::from_secs(5);
    let server = Server::start(cfg).await?;
    let handle = server.shutdown_handle();
    let mut task = tokio::spawn(server.wait());
    tokio::select! {
        r = &mut task => return r.unwrap_or_else(|e| Err(Error::invalid("serve", e.to_string()))),
        s = termination() => {
            tracing::info!("{s}: finishing in-flight requests, then stopping");
        }
    }
    handle.shutdown();
    match tokio::time::timeout(grace, task).await {
        Ok(r) => r.unwrap_or_else(|e| Err(Error::invalid("serve", e.to_string()))),
        Err(_) => {
            tracing::warn!("requests still open after {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, naming which.
async fn termination() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the server");
                ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c().await;
        "Ctrl-C"
    }
}

/// Resolves on Ctrl-C; never, when it cannot be listened for.
async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!("cannot listen for SIGINT: {e}");
        std::future::pending::<()>().await;
    }
}
