//! Layers against naive implementations, PyTorch's names, and strict state_dict loading.

use crate::{assert_close, randn, t, vec32, CPU};
use kiln::nn::{self, BatchNorm, Dropout, Embedding, LayerNorm, LayerSpec, Linear, Module, Relu, Sequential};
use kiln::{Error, Tensor};

#[test]
fn linear_is_x_wt_plus_b() {
    let l = Linear::new(3, 2, true, CPU).unwrap();
    let x = randn(&[4, 3], 1);
    let (xv, w, b) = (vec32(&x), vec32(&l.weight), vec32(l.bias.as_ref().unwrap()));
    let mut want = vec![0.0f32; 8];
    for i in 0..4 {
        for o in 0..2 {
            want[i * 2 + o] = b[o] + (0..3).map(|k| xv[i * 3 + k] * w[o * 3 + k]).sum::<f32>();
        }
    }
    assert_close("linear", &vec32(&l.forward(&x).unwrap()), &want, 1e-6, 1e-6);
    assert!(matches!(l.forward(&randn(&[4, 5], 2)), Err(Error::ShapeMismatch { op: "Linear", .. })));
}

#[test]
fn default_init_is_kaiming_uniform() {
    kiln::manual_seed(3);
    let l = Linear::new(400, 300, true, CPU).unwrap();
    let w = vec32(&l.weight);
    let bound = 1.0 / 400f32.sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound));
    let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.02, "U(-b, b) has variance b²/3, got {var}");
}

#[test]
fn batchnorm_train_and_eval_follow_pytorch() {
    let bn = BatchNorm::new_2d(2, CPU).unwrap();
    let x = randn(&[3, 2, 2, 2], 4).mul_scalar(3.0).unwrap().add_scalar(1.0).unwrap();
    let xv = vec32(&x);
    let per_channel = |c: usize| -> Vec<f32> {
        (0..3).flat_map(|n| (0..4).map(move |k| (n, k))).map(|(n, k)| xv[n * 8 + c * 4 + k]).collect()
    };
    let y = vec32(&bn.forward(&x).unwrap());
    for c in 0..2 {
        let v = per_channel(c);
        let mean = v.iter().sum::<f32>() / 12.0;
        let var_b = v.iter().map(|a| (a - mean).powi(2)).sum::<f32>() / 12.0;
        let var_u = var_b * 12.0 / 11.0;
        for n in 0..3 {
            for k in 0..4 {
                let i = n * 8 + c * 4 + k;
                let want = (xv[i] - mean) / (var_b + 1e-5).sqrt();
                assert!((y[i] - want).abs() < 1e-4, "train output");
            }
        }
        assert!((vec32(&bn.running_mean)[c] - 0.1 * mean).abs() < 1e-5);
        assert!((vec32(&bn.running_var)[c] - (0.9 + 0.1 * var_u)).abs() < 1e-4);
    }
    assert_eq!(bn.num_batches_tracked.to_scalar::<i64>().unwrap(), 1);
    bn.eval();
    let (rm, rv) = (vec32(&bn.running_mean), vec32(&bn.running_var));
    let y = vec32(&bn.forward(&x).unwrap());
    for i in 0..24 {
        let c = (i / 4) % 2;
        assert!((y[i] - (xv[i] - rm[c]) / (rv[c] + 1e-5).sqrt()).abs() < 1e-4, "eval uses running stats");
    }
    assert_eq!(bn.num_batches_tracked.to_scalar::<i64>().unwrap(), 1, "eval does not count batches");
    let names: Vec<String> = bn.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]);
    assert_eq!(bn.parameters().len(), 2, "buffers are not parameters");
}

/// The fused training-mode batch norm (F32, two passes each way) against the same formula
/// composed from f64 tensor ops, whose gradients autograd derives op by op: outputs,
/// statistics and the gradients of x, weight and bias, for [n, c] and [n, c, h, w], a
/// permuted (non-contiguous) input, and an upstream gradient that is not all ones.
#[test]
fn fused_batch_norm_matches_the_composed_formula() {
    use kiln::DType::F64;
    for (shape, permuted) in [(vec![6, 3], false), (vec![4, 3, 5, 2], false), (vec![4, 3, 5, 2], true)] {
        let mut x = randn(&shape, 20).mul_scalar(2.0).unwrap().add_scalar(0.5).unwrap();
        if permuted {
            // The same values seen through a transposed view of a [n, c, w, h] buffer.
            let mut d = shape.clone();
            d.swap(2, 3);
            x = randn(&d, 20).transpose(2, 3).unwrap();
        }
        let c = shape[1];
        let w = randn(&[c], 21).add_scalar(1.0).unwrap();
        let b = randn(&[c], 22);
        let up = randn(&shape, 23);
        let eps = 1e-5;

        let leaf = |t: &Tensor| t.detach().requires_grad_().unwrap();
        let (xf, wf, bf) = (leaf(&x), leaf(&w), leaf(&b));
        let (y, mean, var) = xf.batch_norm_train(&wf, &bf, eps).unwrap();
        y.backward_with(&up).unwrap();

        let to64 = |t: &Tensor| t.to_dtype(F64).unwrap().detach().requires_grad_().unwrap();
        let (x64, w64, b64) = (to64(&x), to64(&w), to64(&b));
        let dims: Vec<isize> = (0..shape.len() as isize).filter(|&d| d != 1).collect();
        let mut bshape = vec![1; shape.len()];
        bshape[1] = c;
        let m64 = x64.mean(&dims, true).unwrap();
        let v64 = x64.var(&dims, false, true).unwrap();
        let y64 = x64
            .sub(&m64)
            .unwrap()
            .div(&v64.add_scalar(eps).unwrap().sqrt().unwrap())
            .unwrap()
            .mul(&w64.reshape(bshape.clone()).unwrap())
            .unwrap()
            .add(&b64.reshape(bshape).unwrap())
            .unwrap();
        y64.backward_with(&up.to_dtype(F64).unwrap()).unwrap();

        let v = |t: &Tensor| t.to_dtype(kiln::DType::F32).unwrap().to_vec::<f32>().unwrap();
        let tag = format!("{shape:?} permuted {permuted}");
        assert_close(&format!("y {tag}"), &vec32(&y), &v(&y64), 2e-5, 2e-5);
        assert_close(&format!("mean {tag}"), &vec32(&mean), &v(&m64.reshape([c]).unwrap()), 1e-5, 1e-5);
        assert_close(&format!("var {tag}"), &vec32(&var), &v(&v64.reshape([c]).unwrap()), 1e-5, 1e-5);
        assert_close(&format!("dx {tag}"), &vec32(&xf.grad().unwrap()), &v(&x64.grad().unwrap()), 5e-5, 1e-4);
        assert_close(&format!("dweight {tag}"), &vec32(&wf.grad().unwrap()), &v(&w64.grad().unwrap()), 5e-5, 1e-4);
        assert_close(&format!("dbias {tag}"), &vec32(&bf.grad().unwrap()), &v(&b64.grad().unwrap()), 5e-5, 1e-4);
    }
    // Bad input is an error naming the op.
    let x = randn(&[4, 3], 1);
    assert!(matches!(
        x.batch_norm_train(&randn(&[2], 2), &randn(&[3], 3), 1e-5),
        Err(Error::InvalidShape { op: "batch_norm", .. })
    ));
    let x64 = x.to_dtype(kiln::DType::F64).unwrap();
    assert!(matches!(
        x64.batch_norm_train(&randn(&[3], 2), &randn(&[3], 3), 1e-5),
        Err(Error::UnsupportedDType { op: "batch_norm", .. })
    ));
}

#[test]
fn layernorm_embedding_dropout() {
    let ln = LayerNorm::new(&[4], true, CPU).unwrap();
    let x = randn(&[3, 4], 5);
    let xv = vec32(&x);
    let y = vec32(&ln.forward(&x).unwrap());
    for r in 0..3 {
        let row = &xv[r * 4..r * 4 + 4];
        let m = row.iter().sum::<f32>() / 4.0;
        let v = row.iter().map(|a| (a - m).powi(2)).sum::<f32>() / 4.0;
        for k in 0..4 {
            assert!((y[r * 4 + k] - (row[k] - m) / (v + 1e-5).sqrt()).abs() < 1e-5);
        }
    }
    let e = Embedding::new(5, 3, CPU).unwrap();
    let ids = Tensor::from_vec(vec![4i64, 0], [2], CPU).unwrap();
    let out = vec32(&e.forward(&ids).unwrap());
    let w = vec32(&e.weight);
    assert_eq!(out, [&w[12..15], &w[0..3]].concat());
    let d = Dropout::new(0.5);
    d.eval();
    assert_eq!(vec32(&d.forward(&x).unwrap()), xv);
    d.train();
    let dropped = vec32(&d.forward(&Tensor::ones([1000], kiln::DType::F32, CPU).unwrap()).unwrap());
    let zeros = dropped.iter().filter(|&&v| v == 0.0).count();
    assert!((400..600).contains(&zeros), "about half dropped: {zeros}");
}

#[test]
fn losses_match_formulas() {
    let x = t(&[0.5, -2.0, 3.0, 0.0], &[4]);
    let y = t(&[1.0, 0.0, 0.0, 1.0], &[4]);
    let want: f32 = [(0.5f32, 1.0f32), (-2.0, 0.0), (3.0, 0.0), (0.0, 1.0)]
        .iter()
        .map(|&(x, y)| -(y * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - y) * (1.0 - 1.0 / (1.0 + (-x).exp())).ln()))
        .sum::<f32>()
        / 4.0;
    let got = nn::loss::bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-6, "bce {got} vs {want}");
    // Extreme logits stay finite.
    let big = nn::loss::bce_with_logits(&t(&[100.0, -100.0], &[2]), &t(&[0.0, 1.0], &[2])).unwrap();
    assert!((big.to_scalar::<f32>().unwrap() - 100.0).abs() < 1e-3);
}

#[test]
fn sequential_names_specs_and_strict_loading() {
    let m =
        Sequential::new().add(Linear::new(4, 3, true, CPU).unwrap()).add(Relu).add(BatchNorm::new_1d(3, CPU).unwrap());
    let names: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked"]
    );

    // The spec survives JSON and rebuilds a model with the same tensors.
    let spec = m.spec().unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: LayerSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    let m2 = back.build(CPU).unwrap();
    m2.load_state_dict(&m.state_dict()).unwrap();
    let x = randn(&[5, 4], 6);
    m.eval();
    m2.eval();
    assert_eq!(vec32(&m.forward(&x).unwrap()), vec32(&m2.forward(&x).unwrap()));

    let before = vec32(&m2.named_parameters()[0].1);
    let mut state = m.state_dict();
    state.pop();
    let e = m2.load_state_dict(&state).unwrap_err();
    assert!(matches!(&e, Error::StateDict(s) if s.contains("2.num_batches_tracked")), "{e}");
    let mut state = m.state_dict();
    state.push(("extra.weight".into(), randn(&[1], 7)));
    assert!(matches!(m2.load_state_dict(&state), Err(Error::StateDict(s)) if s.contains("extra.weight")));
    let mut state = m.state_dict();
    state[0].1 = randn(&[3, 5], 8);
    let e = m2.load_state_dict(&state).unwrap_err();
    assert!(matches!(&e, Error::StateDict(s) if s.contains("0.weight") && s.contains("[3, 5]")), "{e}");
    assert_eq!(vec32(&m2.named_parameters()[0].1), before, "a refused load changes nothing");
}

#[test]
fn resnet18_has_torchvisions_parameters_names_and_shapes() {
    let m = nn::ResNet::resnet18(3, 10, CPU).unwrap();
    // torchvision's resnet18 has 11,689,512 parameters (7x7 stem, 1000 classes); the 32x32
    // variant's 3x3 stem has 1,728 instead of 9,408 and its 10-class head 5,130 instead of
    // 513,000: 11,173,962.
    let n: usize = m.parameters().iter().map(|p| p.elem_count()).sum();
    assert_eq!(n, 11_689_512 - (9_408 - 1_728) - (513_000 - 5_130));
    let sd: Vec<(String, Vec<usize>)> = m.state_dict().into_iter().map(|(k, t)| (k, t.dims().to_vec())).collect();
    let has = |k: &str, dims: &[usize]| {
        assert!(sd.iter().any(|(n, d)| n == k && d == dims), "{k} {dims:?} missing: {:?}", &sd[..6]);
    };
    has("conv1.weight", &[64, 3, 3, 3]);
    has("bn1.running_var", &[64]);
    has("layer1.1.conv2.weight", &[64, 64, 3, 3]);
    has("layer2.0.downsample.0.weight", &[128, 64, 1, 1]);
    has("layer2.0.downsample.1.bias", &[128]);
    has("layer4.1.bn2.num_batches_tracked", &[]);
    has("fc.weight", &[10, 512]);
    // Three stride-2 stages: 32x32 -> 4x4 before the global pool; any batch size.
    let x = randn(&[2, 3, 32, 32], 5);
    assert_eq!(m.forward(&x).unwrap().dims(), &[2, 10]);
    // eval() reaches every block's BatchNorm: the output no longer depends on the batch.
    m.eval();
    let both = vec32(&m.forward(&x).unwrap());
    let first = vec32(&m.forward(&x.narrow(0, 0, 1).unwrap()).unwrap());
    assert_close("resnet18 eval, one image vs two", &first, &both[..10], 1e-5, 1e-4);
}
