//! The model's versions, laid out as TensorFlow Serving lays them out.
//!
//! - `--model DIR` with `DIR/checkpoint.json`: one checkpoint, served as version 1 (loaded
//!   once; re-saving into it is not picked up).
//! - Otherwise `DIR` is a base directory whose subdirectories named by a number (`1`, `2`,
//!   `17`, ...) are versions. Every loadable version is served; unversioned requests go to
//!   the highest. The directory is rescanned every poll interval: a new version is loaded
//!   (off the async threads) and takes over once it is ready, by swapping an `Arc`, so
//!   requests in flight finish on the version they started on; a version whose directory is
//!   gone is unloaded. A version that fails to load (half-written, corrupt: whatever
//!   `checkpoint::load` refuses) is logged and retried at the next scan, never served.
//!   Versions are immutable once loaded, as in TensorFlow Serving: write a new version into
//!   a temporary name and rename it into place.

use super::batching::{BatchSettings, Batcher, Model};
use super::metrics::Metrics;
use super::ServeConfig;
use crate::io::checkpoint::{self, META_FILE};
use crate::nn::{LayerSpec, Module};
use crate::{DType, Device, Error, Result, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// One loaded version, ready to answer.
pub(crate) struct Servable {
    pub version: u64,
    /// The shape of one instance of the input `x` (without the batch dimension).
    pub input_shape: Vec<usize>,
    /// The shape of one row of the output.
    pub output_shape: Vec<usize>,
    pub batcher: Batcher,
}

enum Source {
    /// A checkpoint directory: version 1.
    Single(PathBuf),
    /// A base directory of numbered versions.
    Base(PathBuf),
}

pub(crate) struct Registry {
    pub name: String,
    source: Source,
    device: Device,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    versions: RwLock<Arc<BTreeMap<u64, Arc<Servable>>>>,
    /// The last load error of each version that failed (logged once per distinct error).
    failed: Mutex<HashMap<u64, String>>,
    /// Serialises refreshes (startup and the poller).
    refreshing: tokio::sync::Mutex<()>,
}

impl Registry {
    pub fn open(cfg: &ServeConfig, metrics: Arc<Metrics>) -> Result<Registry> {
        let dir = &cfg.model_dir;
        if !dir.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
            return Err(Error::io(dir, e));
        }
        let source = if dir.join(META_FILE).exists() { Source::Single(dir.clone()) } else { Source::Base(dir.clone()) };
        let settings = BatchSettings {
            max_batch: cfg.max_batch,
            timeout: cfg.batch_timeout,
            workers: cfg.workers,
            forward_delay: cfg.forward_delay,
        };
        Ok(Registry {
            name: cfg.name.clone(),
            source,
            device: cfg.device,
            settings,
            metrics,
            versions: RwLock::new(Arc::new(BTreeMap::new())),
            failed: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    fn snapshot(&self) -> Arc<BTreeMap<u64, Arc<Servable>>> {
        self.versions.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The highest loaded version.
    pub fn latest(&self) -> Option<Arc<Servable>> {
        self.snapshot().values().next_back().cloned()
    }

    pub fn get(&self, version: u64) -> Option<Arc<Servable>> {
        self.snapshot().get(&version).cloned()
    }

    pub fn loaded_versions(&self) -> Vec<u64> {
        self.snapshot().keys().copied().collect()
    }

    /// The last load error of each version that failed, for the startup error.
    pub fn failures(&self) -> Vec<String> {
        let f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = f.iter().map(|(v, e)| format!("version {v}: {e}")).collect();
        v.sort();
        if v.is_empty() {
            v.push("no version directories found".into());
        }
        v
    }

    /// The versions on disk now: (version, directory).
    fn scan(&self) -> Vec<(u64, PathBuf)> {
        let base = match &self.source {
            Source::Single(dir) => return vec![(1, dir.clone())],
            Source::Base(b) => b,
        };
        let entries = match std::fs::read_dir(base) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}", base.display());
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(v) = name.to_str().and_then(parse_version) else { continue };
            if e.path().is_dir() {
                found.push((v, e.path()));
            }
        }
        found
    }

    /// Brings the loaded versions in line with the disk: loads new ones, unloads removed ones.
    pub async fn refresh(&self) {
        let _one_at_a_time = self.refreshing.lock().await;
        let on_disk = self.scan();
        let on_disk_versions: Vec<u64> = on_disk.iter().map(|(v, _)| *v).collect();
        let current = self.snapshot();
        let mut next: BTreeMap<u64, Arc<Servable>> = BTreeMap::new();
        if matches!(self.source, Source::Single(_)) {
            next = (*current).clone();
        } else {
            for (v, _) in &on_disk {
                if let Some(s) = current.get(v) {
                    next.insert(*v, s.clone());
                }
            }
        }
        for (v, dir) in on_disk {
            if next.contains_key(&v) {
                continue;
            }
            let device = self.device;
            let loaded = tokio::task::spawn_blocking(move || load_version(&dir, device)).await;
            let loaded = loaded.unwrap_or_else(|e| Err(Error::invalid("serve", format!("loading panicked: {e}"))));
            match loaded {
                Ok(model) => {
                    tracing::info!(
                        "model {} version {v} loaded: input x {:?}, output {:?}",
                        self.name,
                        model.input_shape,
                        model.output_shape
                    );
                    self.failed.lock().unwrap_or_else(|e| e.into_inner()).remove(&v);
                    let servable = Servable {
                        version: v,
                        input_shape: model.input_shape.clone(),
                        output_shape: model.output_shape.clone(),
                        batcher: Batcher::spawn(model, self.settings.clone(), self.metrics.clone()),
                    };
                    next.insert(v, Arc::new(servable));
                }
                Err(e) => {
                    self.metrics.version_load_failures.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
                    if failed.get(&v) != Some(&msg) {
                        tracing::warn!("model {} version {v} not loaded (retried at the next scan): {msg}", self.name);
                    } else {
                        tracing::debug!("model {} version {v} still not loadable: {msg}", self.name);
                    }
                    failed.insert(v, msg);
                }
            }
        }
        let removed: Vec<u64> = current.keys().filter(|v| !next.contains_key(v)).copied().collect();
        for v in &removed {
            tracing::info!("model {} version {v} unloaded (its directory is gone)", self.name);
        }
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).retain(|v, _| on_disk_versions.contains(v));
        let changed = next.len() != current.len() || next.keys().zip(current.keys()).any(|(a, b)| a != b);
        if changed {
            self.metrics.versions_loaded.store(next.len() as u64, Ordering::Relaxed);
            self.metrics.latest_version.store(next.keys().next_back().copied().unwrap_or(0), Ordering::Relaxed);
            if let (Some(new), old) = (next.keys().next_back(), current.keys().next_back()) {
                if Some(new) != old {
                    tracing::info!("model {}: unversioned requests now go to version {new}", self.name);
                }
            }
            *self.versions.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        }
    }
}

/// A version directory name: digits only (TensorFlow Serving's rule), so temporary names
/// such as `2.tmp` or `.incoming-2` are never taken for versions.
fn parse_version(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// Rescans every `interval` until `stop` turns true.
pub(crate) async fn poll(registry: Arc<Registry>, interval: Duration, mut stop: watch::Receiver<bool>) {
    if interval.is_zero() || matches!(registry.source, Source::Single(_)) {
        return;
    }
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => registry.refresh().await,
            _ = &mut stopped => return,
        }
    }
}

/// Loads a checkpoint and works out its input and output shapes (blocking).
fn load_version(dir: &Path, device: Device) -> Result<Model> {
    let ck = checkpoint::load(dir, device)?;
    let module = ck.build_model(device)?;
    module.eval();
    let dtype = module.parameters().first().map(|p| p.dtype()).unwrap_or(DType::F32);
    let mut tried = Vec::new();
    for shape in candidate_input_shapes(&ck.meta.model) {
        if tried.contains(&shape) {
            continue;
        }
        match probe(module.as_ref(), &shape, dtype, device) {
            Ok(output_shape) => {
                return Ok(Model { module: Arc::from(module), input_shape: shape, output_shape, dtype, device })
            }
            Err(e) => tracing::debug!("{}: input shape {shape:?} does not fit: {e}", dir.display()),
        }
        tried.push(shape);
    }
    Err(Error::invalid(
        "serve",
        format!("{}: cannot work out the model's input shape (tried {tried:?})", dir.display()),
    ))
}

/// Input shapes to try, most likely first: from the first layers of the architecture,
/// then MNIST's image and flat forms (what `kiln train` trains on).
fn candidate_input_shapes(spec: &LayerSpec) -> Vec<Vec<usize>> {
    let mut layers = Vec::new();
    flatten_spec(spec, &mut layers);
    let mut out = Vec::new();
    let first_linear = layers.iter().find_map(|l| match l {
        LayerSpec::Linear { in_features, .. } => Some(*in_features),
        _ => None,
    });
    match layers.first() {
        Some(LayerSpec::Linear { in_features, .. }) => out.push(vec![*in_features]),
        Some(LayerSpec::Conv2d { in_channels, .. }) => out.push(vec![*in_channels, 28, 28]),
        Some(LayerSpec::Embedding { .. }) => {}
        _ => {
            if let Some(n) = first_linear {
                if n == 784 {
                    out.push(vec![1, 28, 28]);
                }
                out.push(vec![n]);
            }
        }
    }
    out.push(vec![1, 28, 28]);
    out.push(vec![784]);
    out
}

fn flatten_spec<'a>(spec: &'a LayerSpec, out: &mut Vec<&'a LayerSpec>) {
    match spec {
        LayerSpec::Sequential { layers } => layers.iter().for_each(|l| flatten_spec(l, out)),
        other => out.push(other),
    }
}

/// Runs one zero instance through the model; the output's row shape, or why it failed.
fn probe(model: &dyn Module, shape: &[usize], dtype: DType, device: Device) -> Result<Vec<usize>> {
    let mut dims = vec![1];
    dims.extend_from_slice(shape);
    let y = crate::no_grad(|| model.forward(&Tensor::zeros(dims, dtype, device)?))?;
    match y.dims().split_first() {
        Some((1, rest)) => Ok(rest.to_vec()),
        _ => Err(Error::invalid("serve", format!("output shape {} has no batch dimension of 1", y.shape()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_are_digits_only() {
        assert_eq!(parse_version("12"), Some(12));
        for bad in ["", "2.tmp", ".2", "-1", "v2", "2 "] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn shapes_of_the_builtin_models() -> Result<()> {
        for (m, shape, out) in [
            (crate::train::models::mlp(Device::Cpu)?, vec![1, 28, 28], vec![10]),
            (crate::train::models::cnn(Device::Cpu)?, vec![1, 28, 28], vec![10]),
        ] {
            let spec = m.spec().ok_or_else(|| Error::invalid("test", "no spec"))?;
            let first = candidate_input_shapes(&spec).remove(0);
            assert_eq!(first, shape);
            assert_eq!(probe(&m, &first, DType::F32, Device::Cpu)?, out);
        }
        Ok(())
    }
}
