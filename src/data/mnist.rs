//! MNIST from IDX files: `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`,
//! and `t10k-*` for the test split. The repository bundles 10,000 real digits in data/mnist.

use super::{read_idx, TensorDataset};
use crate::{DType, Device, Error, Result, Tensor};
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

/// Loads one split as images [N, 1, 28, 28] F32 (normalised) and labels [N] I64.
pub fn load(dir: impl AsRef<Path>, split: Split, device: Device) -> Result<TensorDataset> {
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
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    let pixels: Vec<f32> = images.data.iter().map(|&p| (p as f32 / 255.0 - MEAN) / STD).collect();
    let x = Tensor::from_vec(pixels, [n, 1, h, w], device)?;
    let y = Tensor::from_vec(labels.data.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n], device)?;
    debug_assert_eq!(y.dtype(), DType::I64);
    TensorDataset::new(x, y)
}
