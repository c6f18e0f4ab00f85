//! End to end: a small MLP learns a synthetic task with plain autograd and manual SGD,
//! and a long run holds memory flat.

use crate::common::CPU;
use kiln::{DType, Generator, Tensor};

/// A teacher task: 4 classes given by the argmax of a fixed random linear map of x.
fn dataset(n: usize, g: &mut Generator) -> (Tensor, Tensor) {
    let x = Tensor::randn_with([n, 8], DType::F32, CPU, g).unwrap();
    let teacher = Tensor::randn_with([8, 4], DType::F32, CPU, g).unwrap();
    let y = x.matmul(&teacher).unwrap().argmax(1, false).unwrap();
    (x, y)
}

struct Mlp {
    params: Vec<Tensor>,
}

impl Mlp {
    fn new(g: &mut Generator) -> Mlp {
        let mut p = |shape: [usize; 2], scale: f64| {
            Tensor::randn_with(shape, DType::F32, CPU, g).unwrap().mul_scalar(scale).unwrap().requires_grad_().unwrap()
        };
        let params = vec![p([8, 32], 0.35), p([1, 32], 0.0), p([32, 4], 0.18), p([1, 4], 0.0)];
        Mlp { params }
    }
    fn forward(&self, x: &Tensor) -> kiln::Result<Tensor> {
        let p = &self.params;
        x.matmul(&p[0])?.add(&p[1])?.relu()?.matmul(&p[2])?.add(&p[3])
    }
    fn sgd_step(&self, lr: f64) {
        kiln::no_grad(|| {
            for p in &self.params {
                p.sub_(&p.grad().unwrap().mul_scalar(lr).unwrap()).unwrap();
                p.zero_grad();
            }
        });
    }
}

fn accuracy(logits: &Tensor, y: &Tensor) -> f64 {
    let pred = logits.argmax(1, false).unwrap().to_vec::<i64>().unwrap();
    let y = y.to_vec::<i64>().unwrap();
    pred.iter().zip(&y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

#[test]
fn mlp_learns_with_manual_sgd() {
    let mut g = Generator::new(11);
    let (x, y) = dataset(512, &mut g);
    let model = Mlp::new(&mut g);
    let first = model.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap().to_scalar::<f32>().unwrap();
    let mut last = first;
    for _ in 0..300 {
        let loss = model.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap();
        loss.backward().unwrap();
        model.sgd_step(0.5);
        last = loss.to_scalar::<f32>().unwrap();
    }
    let acc = kiln::no_grad(|| accuracy(&model.forward(&x).unwrap(), &y));
    assert!(last < 0.3 * first, "loss {first} -> {last}");
    assert!(acc > 0.9, "train accuracy {acc}");
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

#[test]
fn memory_is_flat_over_1000_steps() {
    let mut g = Generator::new(12);
    let (x, y) = dataset(128, &mut g);
    let model = Mlp::new(&mut g);
    let mut at_step_10 = (0, 0);
    for step in 0..1000 {
        let loss = model.forward(&x).unwrap().cross_entropy(&y, 0.1).unwrap();
        loss.backward().unwrap();
        model.sgd_step(0.1);
        drop(loss);
        if step == 10 {
            at_step_10 = (kiln::memory::thread_net_bytes(), rss_bytes());
        }
    }
    let (bytes, rss) = (kiln::memory::thread_net_bytes(), rss_bytes());
    // Tensor storage: exactly the same live bytes (parameters only) after 990 more steps.
    assert_eq!(bytes, at_step_10.0, "tensor bytes grew from {} to {bytes}", at_step_10.0);
    // Process memory: no leak outside tensor storage either (loose: other tests run too).
    assert!(rss < at_step_10.1 + (64 << 20), "RSS grew from {} to {rss}", at_step_10.1);
}
