//! The training loop: epochs of batches from a DataLoader, loss, backward, optimizer step,
//! evaluation after each epoch, metrics, a progress bar and `tracing` logs. A NaN or
//! infinite loss stops training with an error naming the step.

mod logger;
pub mod models;
mod run;
mod tuner;

pub use logger::TrainLogger;
pub use run::{peak_rss_bytes, run, run_distributed, RunConfig, Summary};
pub use tuner::{CpuThreadsMode, ThreadTuner};

use crate::data::{DataLoader, Dataset};
use crate::dist::DataParallel;
use crate::nn::Module;
use crate::optim::{LrSchedule, Optimizer};
use crate::{no_grad, DType, Error, Result, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;

/// Metrics of one epoch.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub samples_per_second: f64,
    pub seconds: f64,
}

/// Loss settings of the loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopConfig {
    pub label_smoothing: f64,
    pub clip_grad_norm: Option<f64>,
    /// Show an indicatif progress bar (drawn only on a terminal).
    pub progress: bool,
    /// Stop once the global step count reaches this.
    pub max_steps: Option<usize>,
}

/// What else an epoch does besides training: settings, a learning-rate schedule (per
/// step), a TensorBoard logger, for data-parallel training the rank's [`DataParallel`]
/// (the loader must then be sharded with `with_shard(rank, world_size)`), and for CPU
/// training a [`ThreadTuner`] that runs each step on rayon's workers or inline, whichever
/// is faster on this machine now (without one, ops use the workers).
#[derive(Default)]
pub struct EpochHooks<'a> {
    pub cfg: LoopConfig,
    pub schedule: Option<&'a dyn LrSchedule>,
    pub logger: Option<&'a mut TrainLogger>,
    pub dist: Option<&'a mut DataParallel>,
    pub tuner: Option<&'a mut ThreadTuner>,
}

/// Trains one epoch; `step` is the global step count, advanced per batch.
pub fn train_epoch(
    model: &dyn Module,
    opt: &mut dyn Optimizer,
    loader: &DataLoader,
    epoch: usize,
    step: &mut usize,
    hooks: EpochHooks<'_>,
) -> Result<EpochMetrics> {
    let EpochHooks { cfg, schedule, mut logger, mut dist, mut tuner } = hooks;
    if let Some(dp) = dist.as_deref() {
        if dp.world_size() > 1 && loader.shard != Some((dp.rank(), dp.world_size())) {
            return Err(Error::invalid(
                "train_epoch",
                format!(
                    "rank {} of {} needs a loader sharded with with_shard({}, {})",
                    dp.rank(),
                    dp.world_size(),
                    dp.rank(),
                    dp.world_size()
                ),
            ));
        }
    }
    model.train();
    let start = Instant::now();
    let bar = if cfg.progress { ProgressBar::new(loader.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(epoch.to_string());
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let mut step_start = Instant::now();
    for (b, batch) in loader.epoch(epoch).enumerate() {
        if cfg.max_steps.is_some_and(|m| *step >= m) {
            break;
        }
        let batch = batch?;
        let work_start = Instant::now();
        if let Some(s) = schedule {
            opt.set_lr(s.lr(*step));
        }
        let n = batch.targets.elem_count();
        opt.zero_grad();
        if let Some(dp) = dist.as_deref_mut() {
            // Each rank's loss is the mean over its share; weighting by the share makes the
            // sum the mean over the global batch. Armed before backward, so that buckets are
            // all-reduced while backward still runs.
            dp.begin_backward(n as f64 / loader.global_batch_len(b).max(1) as f64)?;
        }
        // A rank whose share of a short last batch is empty still joins the all-reduce.
        // The loss is read here only where that is free (on the CPU): a non-finite one then
        // stops training before it reaches the parameters. On a GPU a read is a sync (the host
        // waits for the forward pass, and the GPU then idles while backward is queued), so the
        // loss and the step's correct count are read together once the whole step is queued.
        let forward_backward = || -> Result<Option<(Tensor, Tensor)>> {
            if n == 0 {
                return Ok(None);
            }
            let logits = model.forward(&batch.inputs)?;
            let loss = logits.cross_entropy(&batch.targets, cfg.label_smoothing)?;
            if loss.device() == crate::Device::Cpu {
                finite(loss.to_scalar::<f64>()?, epoch, *step, &bar)?;
            }
            loss.backward()?;
            Ok(Some((loss, logits)))
        };
        let out = match tuner.as_deref() {
            Some(t) => t.run(forward_backward)?,
            None => forward_backward()?,
        };
        if let Some(dp) = dist.as_deref_mut() {
            dp.finish_gradients()?;
        }
        if let Some(max) = cfg.clip_grad_norm {
            crate::optim::clip_grad_norm(&model.parameters(), max)?;
        }
        let mut update = || -> Result<(f64, usize)> {
            opt.step()?;
            let Some((loss, logits)) = &out else { return Ok((0.0, 0)) };
            let logits = logits.detach();
            if loss.device() == crate::Device::Cpu {
                return Ok((loss.to_scalar::<f64>()?, count_correct(&logits, &batch.targets)?));
            }
            // [loss, correct] in one download.
            let loss = loss.to_dtype(DType::F32)?.reshape([1])?;
            let stats = Tensor::cat(&[loss, correct_count(&logits, &batch.targets)?], 0)?.to_vec::<f32>()?;
            Ok((stats[0] as f64, stats[1] as usize))
        };
        let (l, hits) = match tuner.as_deref() {
            Some(t) => t.run(update)?,
            None => update()?,
        };
        // On a GPU this check comes after the update, which a non-finite loss has then
        // reached; training stops here all the same (PyTorch loops that call `.item()` after
        // `step()` behave alike).
        finite(l, epoch, *step, &bar)?;
        correct += hits;
        if let Some(t) = tuner.as_deref_mut() {
            t.record(work_start.elapsed());
        }
        loss_sum += l * n as f64;
        seen += n;
        if let Some(lg) = logger.as_deref_mut() {
            let sps = n as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
            lg.step(*step, l, opt.lr(), sps, model)?;
        }
        step_start = Instant::now();
        *step += 1;
        bar.inc(1);
        bar.set_message(format!("loss {:.4}", loss_sum / seen.max(1) as f64));
        tracing::trace!(epoch, step = *step, loss = l, lr = opt.lr(), "step");
    }
    if let Some(dp) = dist {
        let mut sums = [loss_sum, correct as f64, seen as f64];
        dp.all_reduce_f64(&mut sums)?;
        (loss_sum, correct, seen) = (sums[0], sums[1].round() as usize, sums[2].round() as usize);
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    Ok(EpochMetrics {
        epoch,
        train_loss: loss_sum / seen.max(1) as f64,
        train_accuracy: correct as f64 / seen.max(1) as f64,
        test_loss: None,
        test_accuracy: None,
        samples_per_second: seen as f64 / seconds.max(1e-9),
        seconds,
    })
}

/// Batch size of the evaluation passes of `kiln train` and `kiln eval`. Small on purpose:
/// without gradients each batch's activations are freed as soon as the next layer has read
/// them, so the largest activation sets the memory high-water mark (the CNN's first conv
/// output alone is 86 MB at 1,000 images, 11 MB at 128); larger batches run no faster.
pub const EVAL_BATCH_SIZE: usize = 128;

/// Mean cross-entropy (no smoothing) and accuracy of `model` on `data`, in eval mode.
pub fn evaluate(model: &dyn Module, data: &dyn Dataset, batch_size: usize) -> Result<(f64, f64)> {
    model.eval();
    let n = data.len();
    let (mut loss_sum, mut correct) = (0.0, 0);
    no_grad(|| -> Result<()> {
        let idx: Vec<usize> = (0..n).collect();
        // On a GPU each batch's [loss, correct] stays there until the end: one read in all
        // instead of two syncs a batch.
        let mut on_device = Vec::new();
        for chunk in idx.chunks(batch_size.max(1)) {
            let b = data.get_batch(chunk)?;
            let logits = model.forward(&b.inputs)?;
            let loss = logits.cross_entropy(&b.targets, 0.0)?;
            if loss.device() == crate::Device::Cpu {
                loss_sum += loss.to_scalar::<f64>()? * chunk.len() as f64;
                correct += count_correct(&logits, &b.targets)?;
            } else {
                let loss = loss.to_dtype(DType::F32)?.reshape([1])?;
                on_device.push((Tensor::cat(&[loss, correct_count(&logits, &b.targets)?], 0)?, chunk.len()));
            }
        }
        if !on_device.is_empty() {
            let all: Vec<Tensor> = on_device.iter().map(|(t, _)| t.clone()).collect();
            let stats = Tensor::cat(&all, 0)?.to_vec::<f32>()?;
            for (s, (_, len)) in stats.chunks_exact(2).zip(&on_device) {
                loss_sum += s[0] as f64 * *len as f64;
                correct += s[1] as usize;
            }
        }
        Ok(())
    })?;
    Ok((loss_sum / n.max(1) as f64, correct as f64 / n.max(1) as f64))
}

fn count_correct(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    Ok(correct_count(logits, targets)?.to_scalar::<f32>()? as usize)
}

/// How many rows' argmax equal their targets, as one F32 element on the logits' device
/// (exact: batches are far below 2^24 rows); nothing read back.
fn correct_count(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.argmax(1, false)?.eq(targets)?.to_dtype(DType::F32)?.sum_all()?.reshape([1])
}

/// NonFiniteLoss for a NaN or infinite loss, with the progress bar left where it stopped.
fn finite(loss: f64, epoch: usize, step: usize, bar: &ProgressBar) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    bar.abandon();
    Err(Error::NonFiniteLoss { loss, epoch, step })
}
