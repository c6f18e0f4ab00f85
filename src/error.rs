//! The typed error every fallible Kiln call returns. Each variant names the op and the
//! offending values (shapes, dtypes, devices, indices) so a user can fix the call from
//! the message alone.

use crate::{DType, Device, Shape};

/// Kiln's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands whose shapes cannot be combined (broadcast, matmul, cat, ...).
    #[error("{op}: shape mismatch between {lhs} and {rhs}")]
    ShapeMismatch { op: &'static str, lhs: Shape, rhs: Shape },

    /// A shape that is wrong for the op on its own (e.g. matmul of a 0-d tensor).
    #[error("{op}: invalid shape {shape}: {msg}")]
    InvalidShape { op: &'static str, shape: Shape, msg: String },

    /// The number of elements does not match the requested shape.
    #[error("{op}: {got} elements cannot form shape {shape}")]
    ElementCount { op: &'static str, shape: Shape, got: usize },

    /// Two operands of different dtypes (Kiln never promotes silently).
    #[error("{op}: dtype mismatch, {lhs:?} vs {rhs:?}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },

    /// An op that does not exist for this dtype (e.g. `exp` on I64).
    #[error("{op}: unsupported dtype {dtype:?}{}", if .msg.is_empty() { String::new() } else { format!(" ({})", .msg) })]
    UnsupportedDType { op: &'static str, dtype: DType, msg: &'static str },

    /// Operands on different devices.
    #[error("{op}: device mismatch, {lhs} vs {rhs}")]
    DeviceMismatch { op: &'static str, lhs: Device, rhs: Device },

    /// A dimension index outside `-rank..rank`.
    #[error("{op}: dimension {dim} out of range for a tensor of rank {rank}")]
    DimOutOfRange { op: &'static str, dim: isize, rank: usize },

    /// An element index outside `0..size` (index_select, gather, embedding, labels, narrow).
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange { op: &'static str, index: i64, size: usize },

    /// Any other invalid argument, with a sentence saying what was wrong.
    #[error("{op}: {msg}")]
    InvalidArgument { op: &'static str, msg: String },

    /// Autograd misuse: backward of a non-scalar without a gradient, etc.
    #[error("backward: {0}")]
    Backward(String),

    /// A device that cannot be used (no driver, no GPU, index too large).
    #[error("device {device}: {msg}")]
    DeviceUnavailable { device: Device, msg: String },

    /// A file whose contents are wrong (bad magic, truncated, corrupt header...), naming the
    /// file and, where known, the byte offset.
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },

    /// A model state that does not fit the model (missing, unexpected or mis-shaped tensors).
    #[error("load_state_dict: {0}")]
    StateDict(String),

    /// Training diverged: a NaN or infinite loss.
    #[error("non-finite loss {loss} at epoch {epoch}, step {step}")]
    NonFiniteLoss { loss: f64, epoch: usize, step: usize },

    /// A kernel launch that failed (on the GPU, or the emulator's report of a deadlock, an
    /// invalid warp operation...), naming the kernel.
    #[error("kernel {kernel}: {msg}")]
    Kernel { kernel: String, msg: String },

    /// Data-parallel communication failed: a peer left or failed, a timeout, a rendezvous
    /// that could not complete, or ranks that disagree (versions, configs, collectives).
    #[error("distributed, rank {rank}: {msg}")]
    Dist { rank: usize, kind: DistErrorKind, msg: String },

    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What kind of distributed failure an [`Error::Dist`] reports. `PeerLost` is usually the
/// echo of another rank's failure; the other kinds are causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistErrorKind {
    /// A peer closed its connection or its worker ended (often because it failed first).
    PeerLost,
    /// Nothing arrived within the configured timeout.
    Timeout,
    /// Rendezvous could not complete (port in use, peer never came, bad environment).
    Rendezvous,
    /// Ranks disagree: Kiln versions, configs, world sizes, or the collective being run.
    Mismatch,
    /// A worker's own code failed or panicked.
    WorkerFailed,
}

/// `Result` with Kiln's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    pub(crate) fn format(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().display().to_string(), msg: msg.into() }
    }
    pub(crate) fn dist(rank: usize, kind: DistErrorKind, msg: impl Into<String>) -> Self {
        Error::Dist { rank, kind, msg: msg.into() }
    }
    pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument { op, msg: msg.into() }
    }
}
