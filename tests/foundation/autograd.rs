//! Autograd semantics: accumulation, no_grad, detach, graph freeing, selective gradients.

use crate::common::{assert_close, leaf, vec64, CPU};
use kiln::{DType, Error, Tensor};

#[test]
fn a_tensor_used_twice_gets_both_gradients() {
    let x = leaf(&[3], 1, -1.0, 1.0);
    // y = x*x + 3x  =>  dy/dx = 2x + 3
    let y = x.mul(&x).unwrap().add(&x.mul_scalar(3.0).unwrap()).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let want: Vec<f64> = vec64(&x).iter().map(|v| 2.0 * v + 3.0).collect();
    // The three contributions (x, x, 3) may be summed in any order: equal up to rounding.
    assert_close("d/dx", &vec64(&x.grad().unwrap()), &want, 1e-15, 1e-15);
}

#[test]
fn gradients_accumulate_across_backward_calls_until_zeroed() {
    let x = leaf(&[2], 2, -1.0, 1.0);
    for _ in 0..3 {
        x.mul_scalar(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    }
    assert_eq!(vec64(&x.grad().unwrap()), vec![6.0, 6.0]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn no_grad_and_detach_record_nothing() {
    let x = leaf(&[2], 3, -1.0, 1.0);
    let y = kiln::no_grad(|| x.exp().unwrap());
    assert!(!y.requires_grad() && y.is_leaf());
    assert!(kiln::is_grad_enabled(), "no_grad restores the mode");
    let d = x.exp().unwrap().detach();
    assert!(!d.requires_grad());
    let z = x.exp().unwrap();
    assert_eq!(z.grad_fn(), Some("exp"));
    assert!(matches!(d.sum_all().unwrap().backward(), Err(Error::Backward(_))));
}

#[test]
fn data_inputs_get_no_gradient() {
    let w = leaf(&[3, 2], 4, -1.0, 1.0);
    let data = Tensor::ones([4, 3], DType::F64, CPU).unwrap();
    data.matmul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(w.grad().is_some());
    assert!(data.grad().is_none(), "the batch never gets a gradient");
}

#[test]
fn the_graph_is_freed_by_backward() {
    let x = leaf(&[64, 64], 5, -1.0, 1.0);
    let before = kiln::memory::thread_net_bytes();
    let loss = x.matmul(&x).unwrap().tanh().unwrap().exp().unwrap().sum_all().unwrap();
    let during = kiln::memory::thread_net_bytes();
    // Alive before backward: what the backwards read, tanh's and exp's outputs; not the
    // matmul's output, which tanh's gradient does not need (1 - tanh² uses its output).
    let m = 64 * 64 * 8;
    assert!(during >= before + 2 * m, "saved outputs are alive before backward: {}", during - before);
    assert!(during < before + 3 * m, "the matmul's output outlived its use: {}", during - before);
    loss.backward().unwrap();
    // Once walked, the graph holds nothing: only the loss scalar and x's gradient remain.
    let after = kiln::memory::thread_net_bytes();
    assert!(after <= before + 64 * 64 * 8 + 64, "backward freed the graph: before {before}, after {after}");
    assert!(matches!(loss.backward(), Err(Error::Backward(_))), "a second backward is an error, not a wrong answer");
}

#[test]
fn in_place_updates_need_no_grad() {
    let w = leaf(&[2], 6, -1.0, 1.0);
    let step = Tensor::full(0.5, [2], DType::F64, CPU).unwrap();
    assert!(matches!(w.sub_(&step), Err(Error::Backward(_))));
    let before = vec64(&w);
    kiln::no_grad(|| w.sub_(&step)).unwrap();
    let after = vec64(&w);
    assert_eq!(after, before.iter().map(|v| v - 0.5).collect::<Vec<_>>());
    assert!(w.requires_grad(), "still a parameter after the update");
}

#[test]
fn backward_with_explicit_gradient() {
    let x = leaf(&[3], 7, -1.0, 1.0);
    let y = x.mul_scalar(2.0).unwrap();
    let g = Tensor::from_vec(vec![1.0f64, 10.0, 100.0], [3], CPU).unwrap();
    y.backward_with(&g).unwrap();
    assert_eq!(vec64(&x.grad().unwrap()), vec![2.0, 20.0, 200.0]);
}

#[test]
fn post_accumulate_grad_hooks_see_the_summed_gradient_once_per_backward() {
    use std::sync::{Arc, Mutex};
    let x = leaf(&[3], 4, -1.0, 1.0);
    let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::default();
    let log = Arc::clone(&seen);
    let id = x
        .register_post_accumulate_grad_hook(move |t| {
            log.lock().unwrap().push(vec64(&t.grad().expect("the gradient is in before the hook runs")));
            Ok(())
        })
        .unwrap();
    // x is used twice: the hook runs once, after both contributions are summed (2x + 3).
    let y = || x.mul(&x).unwrap().add(&x.mul_scalar(3.0).unwrap()).unwrap().sum_all().unwrap();
    y().backward().unwrap();
    let once: Vec<f64> = vec64(&x).iter().map(|v| 2.0 * v + 3.0).collect();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_close("hook, first backward", &seen.lock().unwrap()[0], &once, 1e-15, 1e-15);
    // A second backward: the hook sees the accumulated gradient.
    y().backward().unwrap();
    let twice: Vec<f64> = once.iter().map(|v| 2.0 * v).collect();
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_close("hook, second backward", &seen.lock().unwrap()[1], &twice, 1e-15, 1e-15);
    // Removed, it runs no more.
    x.remove_grad_hook(id);
    y().backward().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A hook's error stops the backward pass with that error.
    x.register_post_accumulate_grad_hook(|_| Err(Error::Backward("refused by the test hook".into()))).unwrap();
    let err = y().backward().unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // Only leaves that require grad take hooks.
    let data = Tensor::from_vec(vec![1.0f32, 2.0], [2], CPU).unwrap();
    assert!(data.register_post_accumulate_grad_hook(|_| Ok(())).is_err());
    let inner = x.mul_scalar(2.0).unwrap();
    assert!(inner.register_post_accumulate_grad_hook(|_| Ok(())).is_err());
}
