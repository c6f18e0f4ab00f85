//! MNIST from IDX files: `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`,
//! and `t10k-*` for the test split. The repository bundles 10,000 real digits in data/mnist.

use super::{read_idx, Batch, Dataset};
use crate::{Device, Error, Result, Tensor};
use std::path::{Path, PathBuf};

/// The usual MNIST normalisation (mean and std of the training pixels in [0, 1]).
pub const MEAN: f32 = 0.1307;
pub const STD: f32 = 0.3081;

/// Which half of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// The directory holding the bundled digits (data/mnist in the source tree).
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join("mnist")
}

fn find(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(stem)
    }
}

/// One split of MNIST as read from its IDX files: 1 byte per pixel, a quarter of the memory
/// of f32 images (RSS, and the cache misses of gathering random rows into a batch); pixels
/// become normalised f32, `(p / 255 - MEAN) / STD`, as batches are cut.
#[derive(Clone, Debug)]
pub struct MnistDataset {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    /// Images are [1, h, w].
    hw: (usize, usize),
    device: Device,
}

impl MnistDataset {
    /// The normalised value of pixel byte `p`.
    #[inline(always)]
    pub fn normalise(p: u8) -> f32 {
        (p as f32 / 255.0 - MEAN) / STD
    }
    fn image_len(&self) -> usize {
        self.hw.0 * self.hw.1
    }
    /// Images `indices` as [len, 1, h, w] F32 and their labels [len] I64, on the dataset's device.
    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let (il, n) = (self.image_len(), self.labels.len());
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::IndexOutOfRange { op: "MnistDataset::get_batch", index: bad as i64, size: n });
        }
        let mut x = Vec::with_capacity(indices.len() * il);
        for &i in indices {
            let row = &self.pixels[i * il..(i + 1) * il];
            // Vectorised arithmetic, 8 pixels per instruction (a table lookup per pixel ran
            // element by element: 170 µs per batch of 128 on the loader thread, ~4x this).
            crate::backend::cpu::vectorize(
                #[inline(always)]
                || x.extend(row.iter().map(|&p| MnistDataset::normalise(p))),
            );
        }
        let y: Vec<i64> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Batch {
            inputs: Tensor::from_vec(x, [indices.len(), 1, self.hw.0, self.hw.1], self.device)?,
            targets: Tensor::from_vec(y, [indices.len()], self.device)?,
        })
    }
    /// Every image, [N, 1, h, w] F32, normalised.
    pub fn inputs(&self) -> Result<Tensor> {
        Ok(self.batch(&(0..self.labels.len()).collect::<Vec<_>>())?.inputs)
    }
    /// Every label, [N] I64.
    pub fn targets(&self) -> Result<Tensor> {
        Tensor::from_vec(self.labels.clone(), [self.labels.len()], self.device)
    }
}

impl Dataset for MnistDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn get_batch(&self, indices: &[usize]) -> Result<Batch> {
        self.batch(indices)
    }
}

/// Loads one split: images [N, 1, 28, 28] F32 (normalised) and labels [N] I64 in batches.
pub fn load(dir: impl AsRef<Path>, split: Split, device: Device) -> Result<MnistDataset> {
    let dir = dir.as_ref();
    let prefix = if split == Split::Train { "train" } else { "t10k" };
    let (ip, lp) =
        (find(dir, &format!("{prefix}-images-idx3-ubyte")), find(dir, &format!("{prefix}-labels-idx1-ubyte")));
    let images = read_idx(&ip)?;
    let labels = read_idx(&lp)?;
    if images.dims.len() != 3 {
        return Err(Error::format(
            &ip,
            format!("images must have 3 dims (count, rows, cols), found {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::format(&lp, format!("labels must have 1 dim, found {:?}", labels.dims)));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(Error::format(
            &lp,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims[0], ip.display()),
        ));
    }
    if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(Error::format(&lp, format!("label {l} of sample {i} (offset {}) is not a digit", 8 + i)));
    }
    Ok(MnistDataset {
        pixels: images.data,
        labels: labels.data.iter().map(|&l| l as i64).collect(),
        hw: (images.dims[1], images.dims[2]),
        device,
    })
}
