//! The new kernels give the same results whatever grid and block they are launched with:
//! grid-stride kernels on 2 blocks of 96 threads (so every thread loops over many
//! elements, and the last warp is partial), block-per-row kernels with 64 threads. A kernel
//! that forgot its grid-stride loop, or indexed by threadIdx alone, fails here.

use super::{close, cpu, data, mptr, ptr};
use kiln::backend::cuda::launch::{Dim3, Launcher};
use kiln::backend::cuda::{emu::EmuLauncher, kernels_conv as conv, kernels_nn as nn, kernels_train as kt};
use kiln::backend::AdamStep;
use kiln::{DType, Result, Window2d};
use std::ffi::c_void;

struct Reshaped;

impl Launcher for Reshaped {
    fn launch(&self, kernel: &str, grid: Dim3, _block: Dim3, shared: u32, args: &mut [*mut c_void]) -> Result<()> {
        if kernel.starts_with("cross_entropy") {
            // One block per row is the kernel's contract; only the block size may change.
            EmuLauncher.launch(kernel, grid, (64, 1, 1), shared, args)
        } else {
            EmuLauncher.launch(kernel, (2, 1, 1), (96, 1, 1), shared, args)
        }
    }
}

/// Runs `f` with the normal and the reshaped launcher and returns both outputs.
fn both<T: Clone>(init: Vec<T>, f: impl Fn(&dyn Launcher, &mut Vec<T>)) -> (Vec<T>, Vec<T>) {
    let (mut a, mut b) = (init.clone(), init);
    f(&EmuLauncher, &mut a);
    f(&Reshaped, &mut b);
    (a, b)
}

#[test]
fn results_do_not_depend_on_the_launch_shape() {
    let dims = [4, 6, 5];
    let x = data(120, 100, -2.0, 2.0);
    let t = cpu(&x, &dims).permute(&[2, 0, 1]).unwrap(); // [5, 4, 6], strided
    let idx: Vec<i64> = (0..9).map(|i| (i * 7 % 4) as i64).collect();
    let st = [0u64; 2];

    let (a, b) = both(vec![0f32; 5 * 9 * 6], |k, y| {
        let mut s = st;
        nn::index_select(k, DType::F32, ptr(&x), t.layout(), 1, ptr(&idx), 9, mptr(y), mptr(&mut s)).unwrap();
    });
    assert_eq!(a, b, "index_select");
    let index: Vec<i64> = (0..120).map(|i| (i * 5 % 4) as i64).collect();
    let (a, b) = both(vec![0f32; 120], |k, y| {
        let mut s = st;
        nn::gather(k, DType::F32, ptr(&x), t.layout(), 1, ptr(&index), &[5, 4, 6], mptr(y), mptr(&mut s)).unwrap();
    });
    assert_eq!(a, b, "gather");
    let (a, b) = both(vec![0f32; 5 * 4 * 6], |k, out| {
        let mut s = st;
        nn::scatter_add(k, DType::F32, mptr(out), &[5, 4, 6], 1, ptr(&index), ptr(&x), t.layout(), mptr(&mut s))
            .unwrap();
    });
    close("scatter_add", &a, &b, 1e-6);
    let src = data(5 * 9 * 6, 101, -1.0, 1.0);
    let sl = cpu(&src, &[5, 9, 6]);
    let (a, b) = both(vec![0f32; 5 * 4 * 6], |k, out| {
        let mut s = st;
        nn::index_add(k, DType::F32, mptr(out), &[5, 4, 6], 1, ptr(&idx), ptr(&src), sl.layout(), mptr(&mut s))
            .unwrap();
    });
    close("index_add", &a, &b, 1e-6);

    let img = data(2 * 3 * 7 * 9, 102, -2.0, 2.0);
    let il = cpu(&img, &[2, 7, 9, 3]).permute(&[0, 3, 1, 2]).unwrap();
    let w = Window2d { kernel: (3, 3), stride: (2, 1), padding: (1, 1), dilation: (1, 1) };
    let (oh, ow) = w.out_hw(7, 9).unwrap();
    let (a, b) = both(vec![0f32; 2 * 27 * oh * ow], |k, c| {
        conv::im2col(k, DType::F32, ptr(&img), il.layout(), &w, mptr(c)).unwrap();
    });
    assert_eq!(a, b, "im2col");
    let (a, b) = both(vec![0f32; img.len()], |k, x| {
        conv::col2im(k, DType::F32, ptr(&a), &[2, 3, 7, 9], &w, mptr(x)).unwrap();
    });
    assert_eq!(a, b, "col2im");
    let n_out = 2 * 3 * oh * ow;
    let (mut idx_a, mut idx_b) = (vec![0i64; n_out], vec![0i64; n_out]);
    let (mut vals_a, mut vals_b) = (vec![0f32; n_out], vec![0f32; n_out]);
    conv::max_pool2d(&EmuLauncher, DType::F32, ptr(&img), il.layout(), &w, mptr(&mut vals_a), mptr(&mut idx_a))
        .unwrap();
    conv::max_pool2d(&Reshaped, DType::F32, ptr(&img), il.layout(), &w, mptr(&mut vals_b), mptr(&mut idx_b)).unwrap();
    assert_eq!((vals_a, &idx_a), (vals_b, &idx_b), "max_pool2d");
    let g = data(n_out, 103, -1.0, 1.0);
    let (a, b) = both(vec![0f32; img.len()], |k, gx| {
        conv::max_pool2d_backward(k, DType::F32, ptr(&g), ptr(&idx_a), &[2, 3, 7, 9], &w, mptr(gx)).unwrap();
    });
    assert_eq!(a, b, "max_pool2d_backward");
    let (a, b) = both(vec![0f32; n_out], |k, y| {
        conv::avg_pool2d(k, DType::F32, ptr(&img), il.layout(), &w, mptr(y)).unwrap();
    });
    assert_eq!(a, b, "avg_pool2d");
    let (a, b) = both(vec![0f32; img.len()], |k, gx| {
        conv::avg_pool2d_backward(k, DType::F32, ptr(&g), &[2, 3, 7, 9], &w, mptr(gx)).unwrap();
    });
    assert_eq!(a, b, "avg_pool2d_backward");

    // Rows of 300 classes: longer than the 64-thread block.
    let (rows, cols) = (3, 300);
    let logits = data(rows * cols, 104, -5.0, 5.0);
    let labels = vec![0i64, 299, 17];
    let (a, b) = both(vec![0f32; rows * (cols + 1)], |k, out| {
        let (loss, grad) = out.split_at_mut(rows);
        let mut s = st;
        kt::cross_entropy(
            k,
            DType::F32,
            rows,
            cols,
            0.1,
            0.25,
            ptr(&labels),
            ptr(&logits),
            mptr(loss),
            mptr(grad),
            mptr(&mut s),
        )
        .unwrap();
    });
    close("cross_entropy", &a, &b, 1e-6);

    let (a, b) = both(vec![0f32; img.len()], |k, y| {
        kt::dropout(k, DType::F32, 0.4, 11, 12, ptr(&img), il.layout(), mptr(y)).unwrap();
    });
    assert_eq!(a, b, "dropout");

    let grad = data(img.len(), 105, -1.0, 1.0);
    let (a, b) = both([img.clone(), vec![0.0; img.len()], vec![0.0; img.len()]].concat(), |k, s| {
        let (p, mv) = s.split_at_mut(img.len());
        let (m, v) = mv.split_at_mut(img.len());
        let h =
            AdamStep { lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, decoupled: true, step: 1.0 };
        kt::adam(k, DType::F32, img.len(), &h, mptr(p), ptr(&grad), mptr(m), mptr(v)).unwrap();
        let sh = kt::SgdStep {
            lr: 0.1,
            weight_decay: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            first_step: true,
        };
        kt::sgd(k, DType::F32, img.len(), &sh, mptr(p), ptr(&grad), mptr(m)).unwrap();
    });
    assert_eq!(a, b, "adam + sgd");
}
