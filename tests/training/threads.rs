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
