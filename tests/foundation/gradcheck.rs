//! Finite-difference gradient checks in F64 for every differentiable op, on random inputs,
//! with broadcast and non-contiguous (transposed, sliced) operands.

use crate::common::{gradcheck, leaf};
use kiln::{Conv2dOptions, DType, Device, Tensor};

#[test]
fn unary_ops() {
    type F = fn(&Tensor) -> kiln::Result<Tensor>;
    let ops: [(&str, F, f64, f64); 17] = [
        ("neg", |x| x.neg(), -2.0, 2.0),
        ("exp", |x| x.exp(), -2.0, 2.0),
        ("log", |x| x.log(), 0.2, 3.0),
        ("sqrt", |x| x.sqrt(), 0.2, 3.0),
        ("abs", |x| x.abs(), 0.1, 2.0),
        ("abs_neg", |x| x.abs(), -2.0, -0.1),
        ("tanh", |x| x.tanh(), -2.0, 2.0),
        ("sigmoid", |x| x.sigmoid(), -3.0, 3.0),
        ("relu_pos", |x| x.relu(), 0.1, 2.0),
        ("relu_neg", |x| x.relu(), -2.0, -0.1),
        ("gelu", |x| x.gelu(), -3.0, 3.0),
        ("silu", |x| x.silu(), -3.0, 3.0),
        ("recip", |x| x.recip(), 0.5, 2.0),
        ("sqr", |x| x.sqr(), -2.0, 2.0),
        ("affine", |x| x.affine(-1.5, 0.25), -2.0, 2.0),
        ("powf", |x| x.powf(2.5), 0.2, 2.0),
        ("mul_scalar", |x| x.mul_scalar(3.0), -2.0, 2.0),
    ];
    for (i, (name, f, lo, hi)) in ops.iter().enumerate() {
        let x = leaf(&[3, 4], i as u64, *lo, *hi);
        gradcheck(name, std::slice::from_ref(&x), |v| f(&v[0]));
        // Non-contiguous input: the transpose of a leaf, and a slice of one.
        gradcheck(&format!("{name} (transposed)"), std::slice::from_ref(&x), |v| f(&v[0].t()?));
        gradcheck(&format!("{name} (narrowed)"), std::slice::from_ref(&x), |v| f(&v[0].narrow(1, 1, 2)?));
    }
}

#[test]
fn binary_ops_with_broadcast() {
    type F = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;
    let ops: [(&str, F, f64, f64); 7] = [
        ("add", |a, b| a.add(b), -2.0, 2.0),
        ("sub", |a, b| a.sub(b), -2.0, 2.0),
        ("mul", |a, b| a.mul(b), -2.0, 2.0),
        ("div", |a, b| a.div(b), 0.5, 2.0),
        ("pow", |a, b| a.pow(b), 0.5, 2.0),
        ("maximum", |a, b| a.maximum(b), -2.0, 2.0),
        ("minimum", |a, b| a.minimum(b), -2.0, 2.0),
    ];
    for (i, (name, f, lo, hi)) in ops.iter().enumerate() {
        let s = 10 * i as u64;
        // Same shape; row broadcast; column broadcast against a transposed view; rank broadcast.
        let (a, b) = (leaf(&[3, 4], s, *lo, *hi), leaf(&[3, 4], s + 1, *lo, *hi));
        gradcheck(name, &[a.clone(), b.clone()], |v| f(&v[0], &v[1]));
        let (a, b) = (leaf(&[3, 4], s + 2, *lo, *hi), leaf(&[4], s + 3, *lo, *hi));
        gradcheck(&format!("{name} [3,4]x[4]"), &[a, b], |v| f(&v[0], &v[1]));
        let (a, b) = (leaf(&[4, 3], s + 4, *lo, *hi), leaf(&[3, 1], s + 5, *lo, *hi));
        gradcheck(&format!("{name} [4,3]ᵀx[3,1]"), &[a, b], |v| f(&v[0].t()?, &v[1]));
        let (a, b) = (leaf(&[2, 1, 3], s + 6, *lo, *hi), leaf(&[4, 1], s + 7, *lo, *hi));
        gradcheck(&format!("{name} [2,1,3]x[4,1]"), &[a, b], |v| f(&v[0], &v[1]));
    }
}

#[test]
fn reductions() {
    let x = leaf(&[3, 4, 5], 1, -2.0, 2.0);
    let xs = std::slice::from_ref(&x);
    for keep in [false, true] {
        gradcheck("sum all", xs, |v| v[0].sum(&[], keep));
        gradcheck("sum 1", xs, |v| v[0].sum(&[1], keep));
        gradcheck("sum 0,2", xs, |v| v[0].sum(&[0, -1], keep));
        gradcheck("mean 2", xs, |v| v[0].mean(&[2], keep));
        gradcheck("mean 0,1", xs, |v| v[0].mean(&[0, 1], keep));
        gradcheck("max 1", xs, |v| v[0].max(&[1], keep));
        gradcheck("max all", xs, |v| v[0].max(&[], keep));
        gradcheck("min 0,2", xs, |v| v[0].min(&[0, 2], keep));
        gradcheck("var 2", xs, |v| v[0].var(&[2], true, keep));
        gradcheck("var 0,1 biased", xs, |v| v[0].var(&[0, 1], false, keep));
    }
    // Reductions of a non-contiguous view.
    gradcheck("sum of permuted", xs, |v| v[0].permute(&[2, 0, 1])?.sum(&[1], false));
    gradcheck("max of transposed", xs, |v| v[0].transpose(0, 2)?.max(&[0], false));
}

#[test]
fn matmul_shapes() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),       // broadcast rhs over the batch
        (&[2, 1, 3, 4], &[3, 4, 2]), // broadcast batch dims on both sides
        (&[4], &[4, 3]),             // vector @ matrix
        (&[2, 3, 4], &[4]),          // batch @ vector
    ];
    for (i, (sa, sb)) in cases.iter().enumerate() {
        let (a, b) = (leaf(sa, 100 + i as u64, -1.0, 1.0), leaf(sb, 200 + i as u64, -1.0, 1.0));
        gradcheck(&format!("matmul {sa:?} @ {sb:?}"), &[a, b], |v| v[0].matmul(&v[1]));
    }
    // Transposed operands (the layouts backward itself produces).
    let (a, b) = (leaf(&[4, 3], 7, -1.0, 1.0), leaf(&[5, 4], 8, -1.0, 1.0));
    gradcheck("matmul aᵀ @ bᵀ", &[a, b], |v| v[0].t()?.matmul(&v[1].t()?));
}

#[test]
fn softmax_and_losses() {
    let x = leaf(&[3, 5], 3, -3.0, 3.0);
    let xs = std::slice::from_ref(&x);
    gradcheck("softmax -1", xs, |v| v[0].softmax(-1));
    gradcheck("softmax 0", xs, |v| v[0].softmax(0));
    gradcheck("log_softmax -1", xs, |v| v[0].log_softmax(-1));
    gradcheck("log_softmax of transposed", xs, |v| v[0].t()?.log_softmax(1));
    let labels = Tensor::from_vec(vec![4i64, 0, 2], [3], Device::Cpu).unwrap();
    for eps in [0.0, 0.1] {
        gradcheck(&format!("cross_entropy ε={eps}"), xs, |v| v[0].cross_entropy(&labels, eps));
    }
    gradcheck("cross_entropy of narrowed logits", xs, |v| {
        v[0].narrow(1, 1, 4)?.cross_entropy(&labels.affine_i64(-1).unwrap(), 0.0)
    });
    gradcheck("nll_loss", xs, |v| v[0].log_softmax(1)?.nll_loss(&labels));
    let t = leaf(&[3, 5], 4, -1.0, 1.0);
    gradcheck("mse_loss", &[x.clone(), t], |v| v[0].mse_loss(&v[1]));
}

/// Labels shifted by `k` and clamped into range (helper for the narrowed case).
trait Shift {
    fn affine_i64(&self, k: i64) -> kiln::Result<Tensor>;
}
impl Shift for Tensor {
    fn affine_i64(&self, k: i64) -> kiln::Result<Tensor> {
        let v: Vec<i64> = self.to_vec::<i64>()?.into_iter().map(|x| (x + k).clamp(0, 3)).collect();
        Tensor::from_vec(v, self.shape().clone(), Device::Cpu)
    }
}

#[test]
fn conv2d_variants() {
    let opts = [
        Conv2dOptions::default(),
        Conv2dOptions { stride: (2, 1), padding: (1, 2), ..Default::default() },
        Conv2dOptions { dilation: (2, 2), padding: (1, 1), ..Default::default() },
        Conv2dOptions { groups: 2, padding: (1, 1), ..Default::default() },
    ];
    for (i, opt) in opts.iter().enumerate() {
        let s = 300 + 10 * i as u64;
        let x = leaf(&[2, 4, 5, 6], s, -1.0, 1.0);
        let w = leaf(&[4, 4 / opt.groups, 3, 2], s + 1, -1.0, 1.0);
        let b = leaf(&[4], s + 2, -1.0, 1.0);
        let opt = *opt;
        gradcheck(&format!("conv2d {opt:?}"), &[x, w, b], |v| v[0].conv2d(&v[1], Some(&v[2]), opt));
    }
    // A non-contiguous input (channels and height swapped back into place).
    let x = leaf(&[2, 5, 3, 4], 350, -1.0, 1.0);
    let w = leaf(&[2, 3, 2, 2], 351, -1.0, 1.0);
    gradcheck("conv2d of permuted input", &[x, w], |v| {
        v[0].permute(&[0, 2, 1, 3])?.conv2d(&v[1], None, Conv2dOptions::default())
    });
}

#[test]
fn conv2d_batched_backward() {
    // More images than one backward task takes (8): the weight and bias gradients are summed
    // over several blocks of images, the last one partial.
    let opt = Conv2dOptions { padding: (1, 1), stride: (1, 2), ..Default::default() };
    let x = leaf(&[11, 2, 4, 5], 360, -1.0, 1.0);
    let w = leaf(&[3, 2, 3, 3], 361, -1.0, 1.0);
    let b = leaf(&[3], 362, -1.0, 1.0);
    gradcheck("conv2d, 11 images", &[x.clone(), w.clone(), b.clone()], |v| v[0].conv2d(&v[1], Some(&v[2]), opt));
    // An input without gradient (a first layer's data): only the weight and bias gradients.
    let xd = x.detach();
    gradcheck("conv2d, constant input", &[w.clone(), b], |v| xd.conv2d(&v[0], Some(&v[1]), opt));
    // A frozen weight: only the input gradient.
    let wd = w.detach();
    gradcheck("conv2d, frozen weight", &[x], |v| v[0].conv2d(&wd, None, opt));
}

#[test]
fn conv2d_few_taps_backward() {
    // The CPU's direct route (few input channels, stride 1, rows at least 8 wide): its weight
    // gradient masks the lanes where a row's last 8-wide chunk overlaps the one before it
    // (10 wide here), sums kernel taps in blocks of 3 (16 taps: a block of 1 left), and adds
    // over more images than one backward task takes.
    let opt = Conv2dOptions { padding: (1, 0), ..Default::default() };
    let x = leaf(&[10, 2, 4, 13], 390, -1.0, 1.0);
    let w = leaf(&[5, 2, 2, 4], 391, -1.0, 1.0);
    let b = leaf(&[5], 392, -1.0, 1.0);
    gradcheck("conv2d, few taps", &[x.clone(), w.clone(), b.clone()], |v| v[0].conv2d(&v[1], Some(&v[2]), opt));
    // The MNIST CNN's first layer: ReLU and 2x2 pooling fused, an input without gradient.
    let xd = leaf(&[3, 1, 12, 11], 393, -1.0, 1.0).detach();
    let w = leaf(&[6, 1, 3, 3], 394, -1.0, 1.0);
    let b = leaf(&[6], 395, -1.0, 1.0);
    gradcheck("conv2d_relu_maxpool2, few taps", &[w, b], |v| {
        xd.conv2d_relu_maxpool2(&v[0], Some(&v[1]), Conv2dOptions::default())
    });
}

/// For inputs too large to difference element by element: the analytic gradient's
/// component along random directions v against the central difference of the whole
/// function along v, (f(x + εv) - f(x - εv)) / 2ε, for every input in turn.
fn directional_gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> kiln::Result<Tensor>) {
    use crate::common::{assert_close, values, vec64};
    let out = f(inputs).unwrap();
    let r = Tensor::from_vec(values(out.elem_count(), 98, -1.0, 1.0), out.shape().clone(), Device::Cpu).unwrap();
    for x in inputs {
        x.zero_grad();
    }
    out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let scalar = |xs: &[Tensor]| {
        kiln::no_grad(|| f(xs).unwrap().mul(&r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
    };
    let eps = 1e-6;
    for (i, x) in inputs.iter().enumerate() {
        let analytic = vec64(&x.grad().unwrap());
        let base = vec64(x);
        for seed in 0..3 {
            let v = values(base.len(), 500 + 10 * i as u64 + seed, -1.0, 1.0);
            let at = |sign: f64| {
                let moved: Vec<f64> = base.iter().zip(&v).map(|(b, d)| b + sign * eps * d).collect();
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_vec(moved, x.shape().clone(), Device::Cpu).unwrap();
                scalar(&xs)
            };
            let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
            let along: f64 = analytic.iter().zip(&v).map(|(g, d)| g * d).sum();
            assert_close(&format!("{name}: d/d input {i} along direction {seed}"), &[along], &[numeric], 1e-6, 1e-6);
        }
    }
}

#[test]
fn conv2d_winograd_backward() {
    // The CPU's Winograd route (3x3, stride 1, >= 16 channels in and out, >= 256 tiles of
    // 4x4 outputs in the call): its backward is the exact gradient of the tiled forward.
    // 9x9 outputs: 3x3 tiles, the last row and column of tiles cut; 29 images: 261 tiles in
    // blocks of 8 images, several blocks per backward task, so the transformed weight
    // gradient is summed over blocks and tasks before it is transformed back.
    let opt = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let x = leaf(&[29, 16, 9, 9], 400, -1.0, 1.0);
    let w = leaf(&[16, 16, 3, 3], 401, -1.0, 1.0);
    let b = leaf(&[16], 402, -1.0, 1.0);
    directional_gradcheck("conv2d, winograd", &[x, w, b], |v| v[0].conv2d(&v[1], Some(&v[2]), opt));
    // The MNIST CNN's second layer, smaller: no padding, ReLU and 2x2 pooling fused; the
    // bias element by element as well.
    let x = leaf(&[29, 16, 13, 13], 403, -1.0, 1.0);
    let w = leaf(&[16, 16, 3, 3], 404, -1.0, 1.0);
    let b = leaf(&[16], 405, -1.0, 1.0);
    let f = |v: &[Tensor]| v[0].conv2d_relu_maxpool2(&v[1], Some(&v[2]), Conv2dOptions::default());
    directional_gradcheck("conv2d_relu_maxpool2, winograd", &[x.clone(), w.clone(), b.clone()], f);
    let xd = x.detach();
    let wd = w.detach();
    gradcheck("conv2d_relu_maxpool2, winograd, bias", &[b], |v| {
        xd.conv2d_relu_maxpool2(&wd, Some(&v[0]), Conv2dOptions::default())
    });
}

#[test]
fn conv2d_winograd_backward_f32() {
    // The f32 route has its own code (8 x 8 register transposes into and out of the
    // channels-last blocks): its gradients against the f64 ones (checked by finite
    // differences above) on the same values. 20 channels in: a partial lane group; 11x11
    // outputs: planes whose length is no multiple of 8.
    use crate::common::{assert_close, vec64};
    let grads = |dtype: DType| {
        let x = leaf(&[29, 20, 13, 13], 410, -1.0, 1.0).detach().to_dtype(dtype).unwrap().requires_grad_().unwrap();
        let w = leaf(&[24, 20, 3, 3], 411, -1.0, 1.0).detach().to_dtype(dtype).unwrap().requires_grad_().unwrap();
        let b = leaf(&[24], 412, -1.0, 1.0).detach().to_dtype(dtype).unwrap().requires_grad_().unwrap();
        let y = x.conv2d_relu_maxpool2(&w, Some(&b), Conv2dOptions::default()).unwrap();
        let r = Tensor::from_vec(crate::common::values(y.elem_count(), 413, -1.0, 1.0), y.shape().clone(), Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        [x, w, b].map(|t| vec64(&t.grad().unwrap()))
    };
    let (lo, hi) = (grads(DType::F32), grads(DType::F64));
    for (name, (l, h)) in ["d/dx", "d/dw", "d/db"].iter().zip(lo.iter().zip(&hi)) {
        assert_close(&format!("winograd f32 {name}"), l, h, 1e-3, 1e-4);
    }
}

/// `out`'s values and the gradients of `leaves` under the upstream gradient `r` (a random
/// tensor of out's shape): what a fused op and its unfused ops must agree on.
fn value_and_grads(out: Tensor, r: &Tensor, leaves: [&Tensor; 3]) -> Vec<Vec<f64>> {
    for t in leaves {
        t.zero_grad();
    }
    out.mul(r).unwrap().sum_all().unwrap().backward().unwrap();
    let mut v = vec![crate::common::vec64(&out)];
    v.extend(leaves.iter().map(|t| crate::common::vec64(&t.grad().unwrap())));
    v
}

/// Asserts that the fused and unfused results (value, d/dx, d/dw, d/db) agree.
fn same(what: &str, fused: &[Vec<f64>], apart: &[Vec<f64>]) {
    for (name, (f, a)) in ["output", "d/dx", "d/dw", "d/db"].iter().zip(fused.iter().zip(apart)) {
        crate::common::assert_close(&format!("{what} {name}"), f, a, 1e-12, 1e-12);
    }
}

fn upstream(shape: [usize; 4], seed: u64) -> Tensor {
    Tensor::from_vec(crate::common::values(shape.iter().product(), seed, -1.0, 1.0), shape, Device::Cpu).unwrap()
}

#[test]
fn conv2d_relu_fused() {
    let opt = Conv2dOptions { padding: (1, 1), ..Default::default() };
    let x = leaf(&[10, 2, 5, 4], 380, -1.0, 1.0);
    let w = leaf(&[3, 2, 3, 3], 381, -1.0, 1.0);
    let b = leaf(&[3], 382, -1.0, 1.0);
    gradcheck("conv2d_relu", &[x.clone(), w.clone(), b.clone()], |v| v[0].conv2d_relu(&v[1], Some(&v[2]), opt));
    // Sequential fuses a Conv2d followed by a Relu: the same values and gradients as the two
    // ops one after the other.
    use kiln::nn::{Conv2d, MaxPool2d, Module, Relu, Sequential};
    let conv = Conv2d { weight: w.clone(), bias: Some(b.clone()), options: opt };
    let model = Sequential::new().add(conv).add(Relu);
    let r = upstream([10, 3, 5, 4], 383);
    let fused = value_and_grads(model.forward(&x).unwrap(), &r, [&x, &w, &b]);
    let apart = value_and_grads(x.conv2d(&w, Some(&b), opt).unwrap().relu().unwrap(), &r, [&x, &w, &b]);
    same("Sequential conv+relu", &fused, &apart);

    // With a 2x2 max pool after the ReLU (odd 5x4 output: the last row is dropped).
    gradcheck("conv2d_relu_maxpool2", &[x.clone(), w.clone(), b.clone()], |v| {
        v[0].conv2d_relu_maxpool2(&v[1], Some(&v[2]), opt)
    });
    let unfused =
        |x: &Tensor| x.conv2d(&w, Some(&b), opt).unwrap().relu().unwrap().max_pool2d((2, 2), (2, 2), (0, 0)).unwrap();
    let conv = Conv2d { weight: w.clone(), bias: Some(b.clone()), options: opt };
    let model = Sequential::new().add(conv).add(Relu).add(MaxPool2d::new(2));
    let r = upstream([10, 3, 2, 2], 384);
    let fused = value_and_grads(model.forward(&x).unwrap(), &r, [&x, &w, &b]);
    same("Sequential conv+relu+pool", &fused, &value_and_grads(unfused(&x), &r, [&x, &w, &b]));
    // An odd 5x5 output: the last row and the last column belong to no window.
    let x = leaf(&[3, 2, 5, 5], 385, -1.0, 1.0);
    gradcheck("conv2d_relu_maxpool2, 5x5", &[x, w.clone(), b.clone()], |v| {
        v[0].conv2d_relu_maxpool2(&v[1], Some(&v[2]), opt)
    });
    // 43 such images: several backward tasks of 8 images (the last one shorter), each
    // image reusing its task's scratch buffers; against the unfused ops.
    let x = leaf(&[43, 2, 5, 5], 386, -1.0, 1.0);
    let r = upstream([43, 3, 2, 2], 387);
    let fused = value_and_grads(x.conv2d_relu_maxpool2(&w, Some(&b), opt).unwrap(), &r, [&x, &w, &b]);
    same("43 images conv+relu+pool", &fused, &value_and_grads(unfused(&x), &r, [&x, &w, &b]));
}

#[test]
fn conv2d_f32_gradients_match_f64() {
    // The f32 kernels against the f64 ones, which the finite differences above check: the
    // im2col + GEMM route, and the direct route of few-tap layers (its f32 loops are
    // hand-written AVX2 on CPUs that have it), rows 13 wide (a last chunk overlapping).
    let cases = [
        ([9, 4, 6, 5], [6, 2, 3, 3], Conv2dOptions { padding: (1, 1), groups: 2, ..Default::default() }),
        ([7, 2, 9, 13], [7, 2, 2, 2], Conv2dOptions { padding: (1, 1), ..Default::default() }),
    ];
    for (i, (xs, ws, opt)) in cases.into_iter().enumerate() {
        let s = 370 + 10 * i as u64;
        let f64s = [leaf(&xs, s, -1.0, 1.0), leaf(&ws, s + 1, -1.0, 1.0), leaf(&[ws[0]], s + 2, -1.0, 1.0)];
        let f32s: Vec<Tensor> =
            f64s.iter().map(|t| t.detach().to_dtype(DType::F32).unwrap().requires_grad_().unwrap()).collect();
        let out_len = f64s[0].conv2d(&f64s[1], None, opt).unwrap().elem_count();
        let r = crate::common::values(out_len, s + 3, -1.0, 1.0);
        for set in [&f64s[..], &f32s[..]] {
            let out = set[0].conv2d(&set[1], Some(&set[2]), opt).unwrap();
            let r =
                Tensor::from_vec(r.clone(), out.shape().clone(), Device::Cpu).unwrap().to_dtype(out.dtype()).unwrap();
            out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        }
        for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(f32s.iter().zip(&f64s)) {
            let (ga, gb) = (crate::common::vec64(&a.grad().unwrap()), crate::common::vec64(&b.grad().unwrap()));
            crate::common::assert_close(&format!("f32 conv2d {xs:?} {ws:?} d/d {name}"), &ga, &gb, 1e-4, 1e-4);
        }
    }
}

#[test]
fn pooling() {
    let x = leaf(&[2, 3, 6, 5], 400, -1.0, 1.0);
    let xs = std::slice::from_ref(&x);
    gradcheck("max_pool2d 2x2", xs, |v| v[0].max_pool2d((2, 2), (2, 2), (0, 0)));
    gradcheck("max_pool2d 3x3 s1 p1", xs, |v| v[0].max_pool2d((3, 3), (1, 1), (1, 1)));
    gradcheck("max_pool2d of transposed", xs, |v| v[0].transpose(2, 3)?.max_pool2d((2, 2), (2, 1), (0, 0)));
    gradcheck("avg_pool2d 2x2", xs, |v| v[0].avg_pool2d((2, 2), (2, 2), (0, 0)));
    gradcheck("avg_pool2d 3x2 s1 p1", xs, |v| v[0].avg_pool2d((3, 2), (1, 1), (1, 1)));
}

#[test]
fn indexing_and_selection() {
    let x = leaf(&[4, 3], 500, -1.0, 1.0);
    let xs = std::slice::from_ref(&x);
    let idx = Tensor::from_vec(vec![2i64, 0, 2, 3], [4], Device::Cpu).unwrap();
    gradcheck("index_select 0 (repeats)", xs, |v| v[0].index_select(0, &idx));
    let idx1 = Tensor::from_vec(vec![1i64, 1, 0], [3], Device::Cpu).unwrap();
    gradcheck("index_select 1 of transposed", xs, |v| v[0].t()?.index_select(1, &idx1));
    let gidx = Tensor::from_vec(vec![0i64, 2, 1, 1, 2, 0, 0, 0], [4, 2], Device::Cpu).unwrap();
    gradcheck("gather 1", xs, |v| v[0].gather(1, &gidx));
    let src = leaf(&[4, 2], 501, -1.0, 1.0);
    gradcheck("scatter_add", &[x.clone(), src], |v| v[0].scatter_add(1, &gidx, &v[1]));
    let add_src = leaf(&[4, 4], 502, -1.0, 1.0);
    gradcheck("index_add", &[x.clone(), add_src], |v| v[0].t()?.index_add(1, &idx, &v[1].narrow(0, 0, 3)?));
    let table = leaf(&[5, 3], 503, -1.0, 1.0);
    let ids = Tensor::from_vec(vec![4i64, 0, 4, 2, 1, 1], [2, 3], Device::Cpu).unwrap();
    gradcheck("embedding", std::slice::from_ref(&table), |v| v[0].embedding(&ids));
    let (a, b) = (leaf(&[3, 4], 504, -1.0, 1.0), leaf(&[4], 505, -1.0, 1.0));
    let cond = Tensor::from_vec(vec![1.0f64, 0.0, 0.0, 1.0], [4], Device::Cpu).unwrap();
    gradcheck("where (broadcast)", &[a.clone(), b], |v| Tensor::where_cond(&cond, &v[0], &v[1]));
    gradcheck("masked_fill", std::slice::from_ref(&a), |v| v[0].masked_fill(&cond, -7.0));
}

#[test]
fn movement_ops() {
    let x = leaf(&[2, 3, 4], 600, -1.0, 1.0);
    let y = leaf(&[2, 1, 4], 601, -1.0, 1.0);
    let xs = std::slice::from_ref(&x);
    gradcheck("reshape", xs, |v| v[0].reshape([4, 6]));
    gradcheck("reshape of transposed (copies)", xs, |v| v[0].transpose(0, 2)?.reshape([24]));
    gradcheck("flatten", xs, |v| v[0].flatten(1, 2));
    gradcheck("permute", xs, |v| v[0].permute(&[2, 0, 1]));
    gradcheck("narrow", xs, |v| v[0].narrow(1, 1, 2));
    gradcheck("broadcast_to", std::slice::from_ref(&y), |v| v[0].broadcast_to([3, 2, 5, 4]));
    gradcheck("squeeze/unsqueeze", std::slice::from_ref(&y), |v| v[0].squeeze(1)?.unsqueeze(0));
    gradcheck("contiguous", xs, |v| v[0].transpose(1, 2)?.contiguous());
    gradcheck("cat", &[x.clone(), y.clone()], |v| Tensor::cat(&[v[0].clone(), v[1].clone(), v[0].narrow(1, 0, 1)?], 1));
    gradcheck("stack", std::slice::from_ref(&x), |v| Tensor::stack(&[v[0].clone(), v[0].mul_scalar(2.0)?], 1));
}

#[test]
fn dropout_gradient_uses_the_same_mask() {
    let x = leaf(&[4, 5], 700, -1.0, 1.0);
    gradcheck("dropout", std::slice::from_ref(&x), |v| v[0].dropout_with(0.4, &mut kiln::Generator::new(3)));
}

#[test]
fn dtype_cast_passes_gradient_back() {
    let x = leaf(&[3], 800, -1.0, 1.0);
    let y = x.to_dtype(DType::F32).unwrap().mul_scalar(2.0).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F64);
    assert_eq!(g.to_vec::<f64>().unwrap(), vec![2.0; 3]);
}
