//! CPU ops kept on the calling thread (`run_inline`, what `ThreadTuner` switches to on an
//! oversubscribed machine) compute the same bits as ops spread over rayon's workers: the
//! tuner's choice may change speed, never results.

use super::CPU;
use kiln::backend::cpu::run_inline;
use kiln::nn::Module;
use kiln::optim::{Adam, Optimizer};
use kiln::train::models;
use kiln::{DType, Tensor};

/// Trains `steps` Adam steps of a fresh model (seeded init, seeded random batches) and
/// returns every parameter's bits.
fn train(model: &str, batch: usize, steps: usize, inline: bool) -> Vec<Vec<u32>> {
    kiln::rng::scoped(11, || {
        let net = match model {
            "mlp" => models::mlp(CPU),
            _ => models::cnn(CPU),
        }
        .unwrap();
        let mut opt = Adam::simple(net.parameters(), 1e-3);
        for s in 0..steps {
            let x = Tensor::randn([batch, 1, 28, 28], DType::F32, CPU).unwrap();
            let y = Tensor::from_vec((0..batch).map(|i| ((i * 7 + s) % 10) as i64).collect::<Vec<_>>(), [batch], CPU)
                .unwrap();
            let mut step = || {
                opt.zero_grad();
                net.forward(&x).unwrap().cross_entropy(&y, 0.0).unwrap().backward().unwrap();
                opt.step().unwrap();
            };
            if inline {
                run_inline(step)
            } else {
                step()
            }
        }
        net.parameters().iter().map(|p| p.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()).collect()
    })
}

#[test]
fn inline_steps_equal_pool_steps_bit_for_bit() {
    // Four workers, so that the pool's paths split work (row blocks of the GEMMs, chunked
    // elementwise ops and Adam, one task per image or Winograd block) whatever the machine.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    pool.install(|| {
        // Batch 128: the MLP's activations (128 x 256) pass the elementwise split threshold.
        // Batch 32: the CNN's second conv has 288 tiles, enough for the Winograd route.
        for (model, batch) in [("mlp", 128), ("cnn", 32)] {
            let (a, b) = (train(model, batch, 3, false), train(model, batch, 3, true));
            assert_eq!(a.len(), b.len());
            for (i, (pa, pb)) in a.iter().zip(&b).enumerate() {
                assert!(pa == pb, "{model}: parameter {i} differs between pool and inline steps");
            }
            // And training moved the parameters (equal because nothing happened would prove nothing).
            assert_ne!(a, train(model, batch, 0, false), "{model}: three steps changed nothing");
        }
    });
}

/// `a @ b` for `a` [m, k] and `b` [k, n] in the given layouts ("n": row-major, "t": the
/// transposed view of a row-major matrix), from seeded values.
fn operands(m: usize, k: usize, n: usize, layout: &str) -> (Tensor, Tensor) {
    kiln::rng::scoped(3, || {
        let r = |d: [usize; 2]| Tensor::randn(d, DType::F32, CPU).unwrap();
        let a = if layout.starts_with('t') { r([k, m]).t().unwrap() } else { r([m, k]) };
        let b = if layout.ends_with('t') { r([n, k]).t().unwrap() } else { r([k, n]) };
        (a, b)
    })
}

#[test]
fn every_way_of_splitting_a_matmul_gives_the_inline_bits() {
    // Shapes that take each of the CPU matmul's parallel paths on 4 workers: blocks of
    // result columns (B a transposed view), blocks of rows, splits that would move gemm onto
    // its small-block path (k > 512: a different summation), and gemm's own threading.
    let shapes: [(usize, usize, usize, &str); 6] = [
        (128, 784, 256, "nt"),
        (256, 128, 784, "tn"),
        (128, 256, 256, "nn"),
        (32, 1600, 128, "nt"),
        (128, 600, 48, "nn"),
        (512, 512, 512, "nn"),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    pool.install(|| {
        for (m, k, n, layout) in shapes {
            let (a, b) = operands(m, k, n, layout);
            let split = a.matmul(&b).unwrap().to_vec::<f32>().unwrap();
            let inline = run_inline(|| a.matmul(&b).unwrap().to_vec::<f32>().unwrap());
            let what = format!("{m}x{k}x{n} {layout}");
            assert!(split.iter().zip(&inline).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: bits differ");
            // And both are the product: against a naive f64 loop.
            let (av, bv) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
            for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3), (m / 3, n - 1)] {
                let want: f64 = (0..k).map(|p| av[i * k + p] as f64 * bv[p * n + j] as f64).sum();
                let got = split[i * n + j] as f64;
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{what} [{i}, {j}]: {got} vs {want}");
            }
        }
    });
}
