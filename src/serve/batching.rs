//! Dynamic batching: predict requests for one version queue up for its batcher task, which
//! gathers them into one forward pass of at most `max_batch` rows, waiting at most
//! `timeout` after the first, and hands each caller its rows back over a oneshot channel.
//!
//! Forward passes run on tokio's blocking threads (the model is CPU-bound), at most
//! `workers` at once; while all are busy, requests pile up in the queue and the next batch
//! takes them together. A request bigger than `max_batch` rows runs alone, unsplit; one
//! whose caller has gone (timed out, disconnected) is dropped before it is computed. With
//! `max_batch` 1 every request is its own forward pass.

use super::metrics::Metrics;
use crate::nn::Module;
use crate::{DType, Device, Result, Tensor};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// A loaded model and the shapes it takes and gives (per instance).
pub(crate) struct Model {
    pub module: Arc<dyn Module>,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub dtype: DType,
    pub device: Device,
}

#[derive(Debug, Clone)]
pub(crate) struct BatchSettings {
    pub max_batch: usize,
    pub timeout: Duration,
    pub workers: usize,
    pub forward_delay: Duration,
}

/// The output rows of one request, or why the forward pass failed.
pub(crate) type Reply = std::result::Result<Vec<f32>, String>;

struct Job {
    rows: usize,
    data: Vec<f32>,
    reply: oneshot::Sender<Reply>,
}

/// The queue of one version's batcher task. The task ends when this is dropped (the
/// version unloaded and its last request answered).
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    pub fn spawn(model: Model, settings: BatchSettings, metrics: Arc<Metrics>) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(model), settings, metrics, rx));
        Batcher { tx }
    }

    /// Queues `rows` instances (flattened in `data`); the receiver gets their output rows.
    /// The queue's bound is the server's admission semaphore, taken before this.
    pub fn submit(&self, rows: usize, data: Vec<f32>) -> std::result::Result<oneshot::Receiver<Reply>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { rows, data, reply }).map_err(|_| "the model version is shutting down".to_string())?;
        Ok(rx)
    }
}

async fn run(model: Arc<Model>, s: BatchSettings, metrics: Arc<Metrics>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let workers = Arc::new(Semaphore::new(s.workers.max(1)));
    let mut held: Option<Job> = None;
    loop {
        // Wait for a free worker first: meanwhile requests gather in the queue.
        let Ok(permit) = workers.clone().acquire_owned().await else { return };
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut rows = first.rows;
        let mut jobs = vec![first];
        if s.max_batch > 1 {
            let deadline = Instant::now() + s.timeout;
            while rows < s.max_batch {
                let next = match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten()
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                };
                let Some(j) = next else { break };
                if j.reply.is_closed() {
                    continue;
                }
                if rows + j.rows > s.max_batch {
                    held = Some(j);
                    break;
                }
                rows += j.rows;
                jobs.push(j);
            }
        }
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (model, metrics, delay) = (model.clone(), metrics.clone(), s.forward_delay);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let rows: usize = jobs.iter().map(|j| j.rows).sum();
            metrics.batch(rows);
            match forward(&model, &jobs, rows) {
                Ok(out) => {
                    let per_row: usize = model.output_shape.iter().product();
                    let mut rest = out.as_slice();
                    for j in jobs {
                        let (mine, tail) = rest.split_at(j.rows * per_row);
                        rest = tail;
                        let _ = j.reply.send(Ok(mine.to_vec()));
                    }
                }
                Err(e) => {
                    metrics.forward_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!("forward pass of {rows} rows failed: {e}");
                    for j in jobs {
                        let _ = j.reply.send(Err(format!("the forward pass failed: {e}")));
                    }
                }
            }
        });
    }
}

/// One forward pass over the jobs' rows, stacked; the outputs as f32, row-major.
fn forward(model: &Model, jobs: &[Job], rows: usize) -> Result<Vec<f32>> {
    let mut data = Vec::with_capacity(jobs.iter().map(|j| j.data.len()).sum());
    for j in jobs {
        data.extend_from_slice(&j.data);
    }
    let mut dims = vec![rows];
    dims.extend_from_slice(&model.input_shape);
    let out = crate::no_grad(|| -> Result<Vec<f32>> {
        let mut x = Tensor::from_vec(data, dims, model.device)?;
        if model.dtype != DType::F32 {
            x = x.to_dtype(model.dtype)?;
        }
        let y = model.module.forward(&x)?;
        y.to_dtype(DType::F32)?.to_vec::<f32>()
    })?;
    let want = rows * model.output_shape.iter().product::<usize>();
    if out.len() != want {
        return Err(crate::Error::invalid(
            "serve",
            format!("the model gave {} numbers for {rows} rows of output shape {:?}", out.len(), model.output_shape),
        ));
    }
    Ok(out)
}
