//! Checkpoints: a directory with the model's weights and the optimizer's state as safetensors,
//! and `checkpoint.json` naming them (with sizes and CRC-32s), the architecture, step, epoch,
//! config and RNG state: enough to rebuild the model without the code that made it, and to
//! resume exactly.
//!
//! Crash safety: each save writes new, uniquely named weight files first (atomically), then
//! replaces `checkpoint.json` atomically: that rename is the commit. Until it happens the old
//! JSON still names the old files, which are only deleted after it. A crash at any point
//! leaves a loadable checkpoint.

use super::safetensors::parse_bytes;
use super::{tensors_to_safetensors_bytes, write_atomic};
use crate::nn::{LayerSpec, Module};
use crate::{Device, Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The JSON file that commits a checkpoint.
pub const META_FILE: &str = "checkpoint.json";
const FORMAT: &str = "kiln-checkpoint-1";

/// One data file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// What `checkpoint.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub model: LayerSpec,
    pub step: usize,
    pub epoch: usize,
    /// The training configuration (free-form JSON).
    pub config: serde_json::Value,
    /// The global RNG state at save time.
    pub rng: Option<[u64; 4]>,
    pub model_file: FileEntry,
    pub optimizer_file: Option<FileEntry>,
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub model_state: Vec<(String, Tensor)>,
    pub optimizer_state: Vec<(String, Tensor)>,
}

/// What to save.
pub struct SaveRequest<'a> {
    pub model: &'a dyn Module,
    pub optimizer_state: Option<Vec<(String, Tensor)>>,
    pub step: usize,
    pub epoch: usize,
    pub config: serde_json::Value,
    pub rng: Option<[u64; 4]>,
}

/// Saves a checkpoint into `dir` (created if needed), crash-safely.
pub fn save(dir: impl AsRef<Path>, req: SaveRequest<'_>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let spec = req.model.spec().ok_or_else(|| {
        Error::invalid("checkpoint", "the model has no LayerSpec (a custom module); save its state_dict instead")
    })?;
    let tag = unique_tag(req.step);
    let meta_map = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    let model_file = write_file(dir, &format!("model-{tag}.safetensors"), &req.model.state_dict(), &meta_map)?;
    let optimizer_file = match &req.optimizer_state {
        Some(s) => Some(write_file(dir, &format!("optimizer-{tag}.safetensors"), s, &meta_map)?),
        None => None,
    };
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        model: spec,
        step: req.step,
        epoch: req.epoch,
        config: req.config,
        rng: req.rng,
        model_file,
        optimizer_file,
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
    write_atomic(&dir.join(META_FILE), &json)?;
    remove_unreferenced(dir, &meta);
    Ok(())
}

fn unique_tag(step: usize) -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{step:08}-{:x}{nanos:08x}", std::process::id())
}

fn write_file(
    dir: &Path,
    name: &str,
    tensors: &[(String, Tensor)],
    meta: &HashMap<String, String>,
) -> Result<FileEntry> {
    let bytes = tensors_to_safetensors_bytes(tensors, meta)?;
    write_atomic(&dir.join(name), &bytes)?;
    Ok(FileEntry { name: name.to_string(), bytes: bytes.len() as u64, crc32: crc32fast::hash(&bytes) })
}

/// Deletes weight files of earlier checkpoints (best effort: a leftover file is harmless).
fn remove_unreferenced(dir: &Path, meta: &CheckpointMeta) {
    let keep: Vec<&str> = std::iter::once(meta.model_file.name.as_str())
        .chain(meta.optimizer_file.as_ref().map(|f| f.name.as_str()))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = (name.starts_with("model-") || name.starts_with("optimizer-")) && name.ends_with(".safetensors");
            if ours && !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Reads `dir/checkpoint.json` and the files it names, checking sizes and CRC-32s: a
/// truncated or corrupted file is refused with an error naming it.
pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Checkpoint> {
    let meta = read_meta(dir.as_ref())?;
    let dir = dir.as_ref();
    let model_state = read_checked(dir, &meta.model_file, device)?;
    let optimizer_state = match &meta.optimizer_file {
        Some(f) => read_checked(dir, f, device)?,
        None => Vec::new(),
    };
    Ok(Checkpoint { meta, model_state, optimizer_state })
}

/// Just the JSON part of a checkpoint.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&text).map_err(|e| Error::format(&path, format!("invalid checkpoint JSON: {e}")))?;
    if meta.format != FORMAT {
        return Err(Error::format(&path, format!("format `{}` is not `{FORMAT}`", meta.format)));
    }
    Ok(meta)
}

fn read_checked(dir: &Path, f: &FileEntry, device: Device) -> Result<Vec<(String, Tensor)>> {
    let path: PathBuf = dir.join(&f.name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() as u64 != f.bytes {
        return Err(Error::format(
            &path,
            format!("{} bytes, the checkpoint recorded {} (truncated or replaced)", bytes.len(), f.bytes),
        ));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != f.crc32 {
        return Err(Error::format(
            &path,
            format!("CRC-32 {crc:08x} does not match the recorded {:08x} (corrupted)", f.crc32),
        ));
    }
    Ok(parse_bytes(&path, &bytes, device)?.0)
}

impl Checkpoint {
    /// Rebuilds the model from its spec and loads the weights.
    pub fn build_model(&self, device: Device) -> Result<Box<dyn Module>> {
        let m = self.meta.model.build(device)?;
        m.load_state_dict(&self.model_state)?;
        Ok(m)
    }
}
