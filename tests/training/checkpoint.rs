//! Checkpoints: round trips, refusal of damaged files, crash safety, and exact resume.

use crate::{randn, vec32, TempDir, CPU};
use kiln::data::{mnist, read_idx};
use kiln::io::checkpoint::{self, SaveRequest};
use kiln::nn::Module;
use kiln::train::{models, run, RunConfig};
use kiln::Error;
use std::path::Path;

fn save(dir: &Path, model: &dyn Module, step: usize) -> kiln::Result<()> {
    checkpoint::save(
        dir,
        SaveRequest {
            model,
            optimizer_state: None,
            step,
            epoch: 1,
            config: serde_json::json!({"note": "test"}),
            rng: None,
        },
    )
}

#[test]
fn save_load_forward_is_identical() {
    let d = TempDir::new("ckpt");
    let m = models::cnn(CPU).unwrap();
    save(&d.0, &m, 3).unwrap();
    let ck = checkpoint::load(&d.0, CPU).unwrap();
    assert_eq!((ck.meta.step, ck.meta.epoch), (3, 1));
    // Rebuilt from the JSON architecture alone.
    let m2 = ck.build_model(CPU).unwrap();
    let x = randn(&[2, 1, 28, 28], 1);
    assert_eq!(vec32(&m.forward(&x).unwrap()), vec32(&m2.forward(&x).unwrap()));
}

fn model_file(dir: &Path) -> std::path::PathBuf {
    dir.join(checkpoint::read_meta(dir).unwrap().model_file.name)
}

#[test]
fn damaged_files_are_refused_by_name() {
    let d = TempDir::new("damage");
    save(&d.0, &models::mlp(CPU).unwrap(), 1).unwrap();
    let f = model_file(&d.0);
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load(&d.0, CPU).err().unwrap();
    assert!(matches!(&e, Error::Format { path, msg } if path.contains("model-") && msg.contains("truncated")), "{e}");
    let mut flipped = bytes.clone();
    let n = flipped.len() - 10;
    flipped[n] ^= 0x40;
    std::fs::write(&f, &flipped).unwrap();
    let e = checkpoint::load(&d.0, CPU).err().unwrap();
    assert!(matches!(&e, Error::Format { path, msg } if path.contains("model-") && msg.contains("corrupted")), "{e}");
    std::fs::write(d.0.join("checkpoint.json"), b"{\"format\": 1").unwrap();
    let e = checkpoint::load(&d.0, CPU).err().unwrap();
    assert!(matches!(&e, Error::Format { path, .. } if path.ends_with("checkpoint.json")), "{e}");
}

#[test]
fn a_crash_while_saving_leaves_the_previous_checkpoint() {
    let d = TempDir::new("crash");
    let m = models::mlp(CPU).unwrap();
    save(&d.0, &m, 1).unwrap();
    let before = vec32(&checkpoint::load(&d.0, CPU).unwrap().model_state[0].1);
    // Change the weights, then "crash" midway through writing the new weights file.
    kiln::no_grad(|| m.parameters()[0].assign(&m.parameters()[0].add_scalar(1.0).unwrap())).unwrap();
    kiln::io::inject_write_failure(Some(100_000));
    let e = save(&d.0, &m, 2);
    kiln::io::inject_write_failure(None);
    assert!(matches!(e, Err(Error::Io { .. })));
    let ck = checkpoint::load(&d.0, CPU).unwrap();
    assert_eq!(ck.meta.step, 1, "the old checkpoint is still the current one");
    assert_eq!(vec32(&ck.model_state[0].1), before);
    // And no temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // A later save works and replaces it.
    save(&d.0, &m, 3).unwrap();
    assert_eq!(checkpoint::load(&d.0, CPU).unwrap().meta.step, 3);
}

/// A small MNIST directory (the first `n` bundled digits of each split) as plain IDX.
fn small_mnist(dir: &Path, n_train: usize, n_test: usize) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        for (kind, per) in [("images-idx3-ubyte", 784), ("labels-idx1-ubyte", 1)] {
            let a = read_idx(mnist::bundled_dir().join(format!("{prefix}-{kind}.gz"))).unwrap();
            let mut b = (if per == 1 { 0x801u32 } else { 0x803 }).to_be_bytes().to_vec();
            b.extend((n as u32).to_be_bytes());
            if per != 1 {
                b.extend(28u32.to_be_bytes());
                b.extend(28u32.to_be_bytes());
            }
            b.extend(&a.data[..n * per]);
            std::fs::write(dir.join(format!("{prefix}-{kind}")), b).unwrap();
        }
    }
}

#[test]
fn two_epochs_equal_one_plus_resume_plus_one_bit_for_bit() {
    let data = TempDir::new("resume-data");
    small_mnist(&data.0, 640, 128);
    let (a, b, c) = (TempDir::new("run-a"), TempDir::new("run-b"), TempDir::new("run-c"));
    let cfg = |epochs: usize, out: &Path, resume: Option<&Path>| RunConfig {
        data: data.0.clone(),
        epochs,
        batch_size: 64,
        out: out.to_path_buf(),
        resume: resume.map(Path::to_path_buf),
        progress: false,
        seed: 5,
        ..Default::default()
    };
    let full = run(&cfg(2, &a.0, None), CPU).unwrap();
    run(&cfg(1, &b.0, None), CPU).unwrap();
    let resumed = run(&cfg(2, &c.0, Some(&b.0)), CPU).unwrap();
    assert_eq!(full.test_loss.to_bits(), resumed.test_loss.to_bits());
    let (ka, kc) = (checkpoint::load(&a.0, CPU).unwrap(), checkpoint::load(&c.0, CPU).unwrap());
    assert_eq!((ka.meta.step, ka.meta.epoch), (kc.meta.step, kc.meta.epoch));
    for ((na, ta), (nc, tc)) in
        ka.model_state.iter().zip(&kc.model_state).chain(ka.optimizer_state.iter().zip(&kc.optimizer_state))
    {
        assert_eq!(na, nc);
        let (va, vc) = (ta.to_vec::<f64>().unwrap(), tc.to_vec::<f64>().unwrap());
        assert!(va.iter().zip(&vc).all(|(x, y)| x.to_bits() == y.to_bits()), "{na} differs after resume");
    }
    // The summary has what `kiln train` promises.
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(a.0.join("summary.json")).unwrap()).unwrap();
    for key in [
        "test_accuracy",
        "test_loss",
        "train_loss",
        "epochs",
        "seconds",
        "samples_per_second",
        "peak_rss_bytes",
        "device",
    ] {
        assert!(s.get(key).is_some(), "summary.json lacks {key}");
    }
}
