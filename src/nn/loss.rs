//! Loss functions (mean reduction), PyTorch's names and formulas.

use crate::{Error, Result, Tensor};

/// Cross-entropy of logits [N, C] against I64 class indices [N], with label smoothing.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    logits.cross_entropy(labels, label_smoothing)
}

/// Negative log-likelihood of log-probabilities [N, C] at I64 labels [N].
pub fn nll_loss(log_probs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    log_probs.nll_loss(labels)
}

/// Mean squared error.
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    pred.mse_loss(target)
}

/// Binary cross-entropy on logits, in the stable form
/// max(x, 0) - x·y + log(1 + e^(-|x|)).
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.shape() != targets.shape() {
        return Err(Error::ShapeMismatch {
            op: "bce_with_logits",
            lhs: logits.shape().clone(),
            rhs: targets.shape().clone(),
        });
    }
    let softplus_neg_abs = logits.abs()?.neg()?.exp()?.add_scalar(1.0)?.log()?;
    logits.relu()?.sub(&logits.mul(targets)?)?.add(&softplus_neg_abs)?.mean_all()
}
