//! What `kiln train` writes to TensorBoard: per step loss, learning rate and samples/s; per
//! epoch train/test loss and accuracy; histograms of weights and gradients every N steps;
//! the run's config and architecture as text.

use crate::io::tensorboard::EventWriter;
use crate::nn::Module;
use crate::train::EpochMetrics;
use crate::{DType, Result};

pub struct TrainLogger {
    pub writer: EventWriter,
    /// Histograms every this many steps (0: never).
    pub histogram_every: usize,
}

impl TrainLogger {
    pub fn new(writer: EventWriter, histogram_every: usize) -> TrainLogger {
        TrainLogger { writer, histogram_every }
    }

    /// The run's configuration and the model's architecture, as text (markdown code blocks).
    pub fn describe(&mut self, config: &serde_json::Value, model: &dyn Module) -> Result<()> {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        self.writer.add_text("config", &format!("```\n{}\n```", pretty(config)), 0)?;
        let arch = model.spec().and_then(|s| serde_json::to_value(s).ok()).unwrap_or(serde_json::Value::Null);
        let params: usize = model.parameters().iter().map(|p| p.elem_count()).sum();
        self.writer.add_text("model", &format!("{params} parameters\n\n```\n{}\n```", pretty(&arch)), 0)
    }

    pub fn step(&mut self, step: usize, loss: f64, lr: f64, samples_per_second: f64, model: &dyn Module) -> Result<()> {
        let s = step as i64;
        self.writer.add_scalar("train/loss", loss, s)?;
        self.writer.add_scalar("train/learning_rate", lr, s)?;
        self.writer.add_scalar("train/samples_per_second", samples_per_second, s)?;
        if self.histogram_every > 0 && step.is_multiple_of(self.histogram_every) {
            for (name, p) in model.named_parameters() {
                self.writer.add_histogram(
                    &format!("weights/{name}"),
                    &p.to_dtype(DType::F64)?.to_vec::<f64>()?,
                    30,
                    s,
                )?;
                if let Some(g) = p.grad() {
                    self.writer.add_histogram(&format!("grads/{name}"), &g.to_vec::<f64>()?, 30, s)?;
                }
            }
        }
        Ok(())
    }

    pub fn epoch(&mut self, step: usize, m: &EpochMetrics) -> Result<()> {
        let s = step as i64;
        self.writer.add_scalar("epoch/train_loss", m.train_loss, s)?;
        self.writer.add_scalar("epoch/train_accuracy", m.train_accuracy, s)?;
        if let (Some(l), Some(a)) = (m.test_loss, m.test_accuracy) {
            self.writer.add_scalar("epoch/test_loss", l, s)?;
            self.writer.add_scalar("epoch/test_accuracy", a, s)?;
        }
        self.writer.add_scalar("epoch/samples_per_second", m.samples_per_second, s)?;
        self.writer.flush()
    }
}
