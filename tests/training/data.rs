//! The DataLoader's order and coverage; IDX and CSV readers and their errors.

use crate::{TempDir, CPU};
use kiln::data::{mnist, read_csv, read_idx, DataLoader, Dataset, TensorDataset};
use kiln::{Error, Tensor};
use std::io::Write;
use std::sync::Arc;

fn dataset(n: usize) -> Arc<TensorDataset> {
    let x = Tensor::arange(0.0, n as f64, 1.0, kiln::DType::F32, CPU).unwrap().reshape([n, 1]).unwrap();
    let y = Tensor::arange(0.0, n as f64, 1.0, kiln::DType::I64, CPU).unwrap();
    Arc::new(TensorDataset::new(x, y).unwrap())
}

fn epoch_ids(loader: &DataLoader, epoch: usize) -> Vec<Vec<i64>> {
    loader.epoch(epoch).map(|b| b.unwrap().targets.to_vec::<i64>().unwrap()).collect()
}

#[test]
fn every_sample_once_per_epoch_in_a_seeded_order() {
    let loader = DataLoader::new(dataset(103), 10, true).with_seed(7);
    let e1 = epoch_ids(&loader, 1);
    assert_eq!(e1.len(), 11);
    assert_eq!(e1.last().unwrap().len(), 3, "the last partial batch is kept");
    let mut all: Vec<i64> = e1.concat();
    all.sort();
    assert_eq!(all, (0..103).collect::<Vec<_>>(), "each sample exactly once");
    assert_ne!(e1.concat(), (0..103).collect::<Vec<_>>(), "shuffled");
    assert_eq!(e1, epoch_ids(&loader, 1), "same seed and epoch, same order");
    assert_ne!(e1, epoch_ids(&loader, 2), "a new order each epoch");
    assert_ne!(e1, epoch_ids(&DataLoader::new(dataset(103), 10, true).with_seed(8), 1), "another seed, another order");
    let dl = DataLoader::new(dataset(103), 10, false).with_drop_last(true);
    let ids = epoch_ids(&dl, 1);
    assert_eq!(ids.len(), 10);
    assert_eq!(ids.concat(), (0..100).collect::<Vec<_>>());
    // Stopping early ends the background thread without blocking.
    assert!(loader.epoch(3).next().is_some());
    // Without a thread (prefetch 0) the batches are the same, sharded ones too.
    let mut inline = loader.clone();
    inline.prefetch = 0;
    assert_eq!(epoch_ids(&inline, 1), e1);
    let (a, b) = (loader.clone().with_shard(1, 3), inline.with_shard(1, 3));
    assert_eq!(epoch_ids(&a, 2), epoch_ids(&b, 2));
    assert_eq!(epoch_ids(&b, 2).concat().len(), 10 * 3 + 1, "rank 1: 3 of each batch of 10, 1 of the last 3");
}

fn idx_bytes(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(body);
    b
}

fn write(path: &std::path::Path, bytes: &[u8], gz: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
}

#[test]
fn idx_reader_and_its_errors() {
    let d = TempDir::new("idx");
    let img: Vec<u8> = (0..2 * 4).map(|i| i as u8 * 30).collect();
    write(&d.0.join("train-images-idx3-ubyte.gz"), &idx_bytes(0x803, &[2, 2, 2], &img), true);
    write(&d.0.join("train-labels-idx1-ubyte"), &idx_bytes(0x801, &[2], &[7, 1]), false);
    let a = read_idx(d.0.join("train-images-idx3-ubyte.gz")).unwrap();
    assert_eq!((a.dims.clone(), a.data.clone()), (vec![2, 2, 2], img.clone()));
    let ds = mnist::load(&d.0, mnist::Split::Train, CPU).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.targets().unwrap().to_vec::<i64>().unwrap(), vec![7, 1]);
    let px = ds.inputs().unwrap().to_vec::<f32>().unwrap();
    assert!((px[1] - (30.0 / 255.0 - mnist::MEAN) / mnist::STD).abs() < 1e-6);
    // A batch is the rows asked for, in that order, normalised, with their labels.
    let b = ds.get_batch(&[1, 0, 1]).unwrap();
    assert_eq!(b.inputs.dims(), &[3, 1, 2, 2]);
    let want: Vec<f32> = [&img[4..8], &img[..4], &img[4..8]]
        .concat()
        .iter()
        .map(|&p| (p as f32 / 255.0 - mnist::MEAN) / mnist::STD)
        .collect();
    assert_eq!(b.inputs.to_vec::<f32>().unwrap(), want);
    assert_eq!(b.targets.to_vec::<i64>().unwrap(), vec![1, 7, 1]);
    let e = ds.get_batch(&[0, 2]).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { index: 2, size: 2, .. }), "{e}");

    let bad = d.0.join("bad");
    write(&bad, &idx_bytes(0x1234_0803, &[2], &[0, 0]), false);
    let e = read_idx(&bad).unwrap_err();
    assert!(matches!(&e, Error::Format { path, msg } if path.ends_with("bad") && msg.contains("magic")), "{e}");
    write(&bad, &idx_bytes(0x803, &[2, 28, 28], &[0; 100]), false);
    let e = read_idx(&bad).unwrap_err();
    assert!(matches!(&e, Error::Format { msg, .. } if msg.contains("truncated") && msg.contains("1568")), "{e}");
    write(&d.0.join("train-labels-idx1-ubyte"), &idx_bytes(0x801, &[3], &[7, 1, 2]), false);
    let e = mnist::load(&d.0, mnist::Split::Train, CPU).unwrap_err();
    assert!(
        matches!(&e, Error::Format { path, msg } if path.contains("labels") && msg.contains("3 labels for 2 images")),
        "{e}"
    );
    assert!(matches!(read_idx(d.0.join("missing")), Err(Error::Io { .. })));
}

#[test]
fn the_bundled_digits_load() {
    let train = mnist::load(mnist::bundled_dir(), mnist::Split::Train, CPU).unwrap();
    let test = mnist::load(mnist::bundled_dir(), mnist::Split::Test, CPU).unwrap();
    assert_eq!((train.len(), test.len()), (8500, 1500));
    assert_eq!(train.inputs().unwrap().dims(), &[8500, 1, 28, 28]);
    let labels = test.targets().unwrap().to_vec::<i64>().unwrap();
    assert!((0..10).all(|c| labels.iter().filter(|&&l| l == c).count() > 100), "every digit is in the test split");
}

#[test]
fn csv_reader() {
    let d = TempDir::new("csv");
    let p = d.0.join("a.csv");
    std::fs::write(&p, "f1,f2,label\n1.5,2,0\n-3,4e-1,2\n").unwrap();
    let ds = read_csv(&p, -1, true, CPU).unwrap();
    assert_eq!(ds.inputs.to_vec::<f32>().unwrap(), vec![1.5, 2.0, -3.0, 0.4]);
    assert_eq!(ds.targets.to_vec::<i64>().unwrap(), vec![0, 2]);
    std::fs::write(&p, "1,2,0\n1,x,1\n").unwrap();
    let e = read_csv(&p, -1, false, CPU).unwrap_err();
    assert!(matches!(&e, Error::Format { msg, .. } if msg.contains("line 2, column 2")), "{e}");
    std::fs::write(&p, "1,2,0\n1,1\n").unwrap();
    assert!(matches!(read_csv(&p, -1, false, CPU), Err(Error::Format { .. })));
}

#[test]
fn a_nan_loss_stops_training_naming_the_step() {
    use kiln::optim::Adam;
    use kiln::train::{train_epoch, EpochHooks};
    // Sample 5 is poisoned: the batch holding it gives a NaN loss.
    let mut x = vec![0.5f32; 16 * 3];
    x[5 * 3] = f32::NAN;
    let ds = Arc::new(
        TensorDataset::new(
            Tensor::from_vec(x, [16, 3], CPU).unwrap(),
            Tensor::zeros([16], kiln::DType::I64, CPU).unwrap(),
        )
        .unwrap(),
    );
    let model = kiln::nn::Linear::new(3, 2, true, CPU).unwrap();
    let mut opt = Adam::simple(kiln::nn::Module::parameters(&model), 0.1);
    let loader = DataLoader::new(ds, 4, false);
    let mut step = 10;
    let e = train_epoch(&model, &mut opt, &loader, 1, &mut step, EpochHooks::default()).unwrap_err();
    assert!(matches!(e, Error::NonFiniteLoss { epoch: 1, step: 11, .. }), "{e}");
    assert!(e.to_string().contains("step 11"));
}
