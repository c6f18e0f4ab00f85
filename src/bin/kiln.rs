//! The `kiln` command. For now it runs the demo job: a small MLP trained with autograd and
//! SGD on a synthetic classification task, on the best device present.

use anyhow::Result;
use kiln::{DType, Device, Generator, Tensor};
use std::time::Instant;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let device = Device::best();
    let mut g = Generator::new(0);
    // Data: 10 classes given by the argmax of a hidden linear map of 64 features.
    let (n, features, classes) = (4096, 64, 10);
    let x = Tensor::randn_with([n, features], DType::F32, device, &mut g)?;
    let teacher = Tensor::randn_with([features, classes], DType::F32, device, &mut g)?;
    let y = x.matmul(&teacher)?.argmax(1, false)?;

    // A 64-128-10 MLP, Kaiming-uniform-like init.
    let mut param = |shape: [usize; 2]| -> Result<Tensor> {
        let bound = 1.0 / (shape[0] as f64).sqrt();
        Ok(Tensor::rand_with(shape, DType::F32, device, &mut g)?.affine(2.0 * bound, -bound)?.requires_grad_()?)
    };
    let params = [param([features, 128])?, param([1, 128])?, param([128, classes])?, param([1, classes])?];
    let forward = |x: &Tensor| -> kiln::Result<Tensor> {
        x.matmul(&params[0])?.add(&params[1])?.relu()?.matmul(&params[2])?.add(&params[3])
    };

    let (batch, epochs, lr) = (128, 10, 0.2);
    let start = Instant::now();
    for epoch in 1..=epochs {
        let mut total = 0.0;
        for b in 0..n / batch {
            let (xb, yb) = (x.narrow(0, b * batch, batch)?, y.narrow(0, b * batch, batch)?);
            let loss = forward(&xb)?.cross_entropy(&yb, 0.0)?;
            loss.backward()?;
            kiln::no_grad(|| -> kiln::Result<()> {
                for p in &params {
                    if let Some(grad) = p.grad() {
                        p.sub_(&grad.mul_scalar(lr)?)?;
                    }
                    p.zero_grad();
                }
                Ok(())
            })?;
            total += loss.to_scalar::<f32>()? as f64;
        }
        let acc = kiln::no_grad(|| -> kiln::Result<f64> {
            let pred = forward(&x)?.argmax(1, false)?;
            pred.eq(&y)?.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()
        })?;
        tracing::info!(epoch, loss = total / (n / batch) as f64, accuracy = acc, "epoch done");
    }
    println!("trained {epochs} epochs on {device} in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}
