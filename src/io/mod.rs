//! Files: atomic writes, safetensors, checkpoints.

mod atomic;
pub mod checkpoint;
mod safetensors;
pub mod tensorboard;

pub use atomic::{inject_write_failure, write_atomic};
pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use safetensors::{load_safetensors, save_safetensors, tensors_to_safetensors_bytes};
