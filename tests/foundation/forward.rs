//! Every forward op against an independent naive implementation (plain loops over f64).

use crate::common::{assert_close, naive_binary, rand_t, vec64, Nd, CPU};
use kiln::{Conv2dOptions, DType, Device, Tensor};

/// erf by its Taylor series (independent of the libm Kiln uses); exact to ~1e-13 for |x| ≤ 3.
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn unary_matches_scalar_math() {
    type K = fn(&Tensor) -> kiln::Result<Tensor>;
    let cases: [(&str, K, fn(f64) -> f64); 14] = [
        ("neg", |x| x.neg(), |v| -v),
        ("exp", |x| x.exp(), f64::exp),
        ("log", |x| x.abs()?.add_scalar(0.1)?.log(), |v| (v.abs() + 0.1).ln()),
        ("sqrt", |x| x.abs()?.sqrt(), |v| v.abs().sqrt()),
        ("abs", |x| x.abs(), f64::abs),
        ("tanh", |x| x.tanh(), f64::tanh),
        ("sigmoid", |x| x.sigmoid(), |v| 1.0 / (1.0 + (-v).exp())),
        ("relu", |x| x.relu(), |v| v.max(0.0)),
        ("gelu", |x| x.gelu(), |v| 0.5 * v * (1.0 + erf_series(v / 2f64.sqrt()))),
        ("silu", |x| x.silu(), |v| v / (1.0 + (-v).exp())),
        (
            "sign",
            |x| x.sign(),
            |v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            },
        ),
        ("sqr", |x| x.sqr(), |v| v * v),
        ("affine", |x| x.affine(2.0, -1.0), |v| 2.0 * v - 1.0),
        ("powf", |x| x.abs()?.powf(1.7), |v| v.abs().powf(1.7)),
    ];
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
        // Scaled to [-3, 3]; the transposed view checks the strided path.
        let x = rand_t(&[7, 9], 1, dtype).mul_scalar(3.0).unwrap();
        for (name, k, f) in cases {
            for (view, xv) in [("contiguous", x.clone()), ("transposed", x.t().unwrap())] {
                let want: Vec<f64> = vec64(&xv).into_iter().map(f).collect();
                let got = vec64(&k(&xv).unwrap());
                assert_close(&format!("{name} {dtype:?} {view}"), &got, &want, tol, tol);
            }
        }
    }
}

#[test]
fn binary_broadcast_matches_naive() {
    type K = fn(&Tensor, &Tensor) -> kiln::Result<Tensor>;
    let cases: [(&str, K, fn(f64, f64) -> f64); 13] = [
        ("add", |a, b| a.add(b), |a, b| a + b),
        ("sub", |a, b| a.sub(b), |a, b| a - b),
        ("mul", |a, b| a.mul(b), |a, b| a * b),
        ("div", |a, b| a.div(b), |a, b| a / b),
        ("pow", |a, b| a.abs()?.pow(b), |a, b| a.abs().powf(b)),
        ("maximum", |a, b| a.maximum(b), f64::max),
        ("minimum", |a, b| a.minimum(b), f64::min),
        ("eq", |a, b| a.eq(b), |a, b| (a == b) as u8 as f64),
        ("ne", |a, b| a.ne(b), |a, b| (a != b) as u8 as f64),
        ("lt", |a, b| a.lt(b), |a, b| (a < b) as u8 as f64),
        ("le", |a, b| a.le(b), |a, b| (a <= b) as u8 as f64),
        ("gt", |a, b| a.gt(b), |a, b| (a > b) as u8 as f64),
        ("ge", |a, b| a.ge(b), |a, b| (a >= b) as u8 as f64),
    ];
    let shapes: [(&[usize], &[usize]); 5] =
        [(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[], &[2, 3]), (&[5, 1, 1], &[1, 6, 7])];
    for (sa, sb) in shapes {
        let a = rand_t(sa, 2, DType::F64);
        // Some equal elements so the comparisons see ties.
        let b = rand_t(sb, 3, DType::F64);
        for (name, k, f) in cases {
            let want = naive_binary(&Nd::of(&a), &Nd::of(&b), f);
            let got = k(&a, &b).unwrap();
            assert_eq!(got.dims(), &want.shape[..], "{name} {sa:?} {sb:?}");
            assert_close(&format!("{name} {sa:?} {sb:?}"), &vec64(&got), &want.data, 1e-12, 1e-12);
        }
    }
    // Ties, and the large parallel path with a strided operand.
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3], CPU).unwrap();
    assert_eq!(a.eq(&a.clone()).unwrap().to_vec::<f32>().unwrap(), vec![1.0; 3]);
    let big = rand_t(&[400, 300], 4, DType::F32);
    let row = rand_t(&[400], 5, DType::F32);
    let got = big.t().unwrap().mul(&row).unwrap();
    let want = naive_binary(&Nd::of(&big.t().unwrap()), &Nd::of(&row), |x, y| x * y);
    assert_close("large strided mul", &vec64(&got), &want.data, 1e-6, 1e-6);
}

#[test]
fn integer_ops() {
    let a = Tensor::from_vec(vec![3i64, -1, 4], [3], CPU).unwrap();
    let b = Tensor::from_vec(vec![3i64, 5, 2], [3], CPU).unwrap();
    assert_eq!(a.add(&b).unwrap().to_vec::<i64>().unwrap(), vec![6, 4, 6]);
    assert_eq!(a.eq(&b).unwrap().to_vec::<i64>().unwrap(), vec![1, 0, 0]);
    assert_eq!(a.argmax(0, false).unwrap().to_scalar::<i64>().unwrap(), 2);
    assert_eq!(a.sum_all().unwrap().to_scalar::<i64>().unwrap(), 6);
}

/// Naive reduction of `x` over `dims` with keepdim, by visiting every element.
fn naive_reduce(x: &Nd, dims: &[usize], init: f64, f: impl Fn(f64, f64) -> f64) -> Nd {
    let kept: Vec<usize> = x.shape.iter().enumerate().map(|(d, &n)| if dims.contains(&d) { 1 } else { n }).collect();
    let mut out = Nd::new(&kept, vec![init; kept.iter().product()]);
    for idx in Nd::indices(&x.shape) {
        let o: Vec<usize> = idx.iter().enumerate().map(|(d, &i)| if dims.contains(&d) { 0 } else { i }).collect();
        let v = f(out.at(&o), x.at(&idx));
        out.set(&o, v);
    }
    out
}

#[test]
fn reductions_match_naive() {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        let x = rand_t(&[4, 5, 6], 6, dtype);
        let nx = Nd::of(&x);
        for dims in [vec![0usize], vec![1], vec![2], vec![0, 2], vec![0, 1, 2]] {
            let idims: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
            let n: usize = dims.iter().map(|&d| nx.shape[d]).product();
            let sum = naive_reduce(&nx, &dims, 0.0, |a, b| a + b);
            let max = naive_reduce(&nx, &dims, f64::NEG_INFINITY, f64::max);
            let min = naive_reduce(&nx, &dims, f64::INFINITY, f64::min);
            let mean: Vec<f64> = sum.data.iter().map(|s| s / n as f64).collect();
            let sq = naive_reduce(&nx, &dims, 0.0, |_, _| 0.0);
            let mut var = sq.clone();
            for idx in Nd::indices(&nx.shape) {
                let o: Vec<usize> =
                    idx.iter().enumerate().map(|(d, &i)| if dims.contains(&d) { 0 } else { i }).collect();
                let dlt = nx.at(&idx) - mean[sum.offset(&o)];
                let cur = var.at(&o);
                var.set(&o, cur + dlt * dlt / (n as f64 - 1.0));
            }
            let ctx = format!("{dtype:?} dims {dims:?}");
            let t = x.sum(&idims, true).unwrap();
            assert_eq!(t.dims(), &sum.shape[..]);
            assert_close(&format!("sum {ctx}"), &vec64(&t), &sum.data, tol, tol);
            assert_close(&format!("mean {ctx}"), &vec64(&x.mean(&idims, false).unwrap()), &mean, tol, tol);
            assert_close(&format!("max {ctx}"), &vec64(&x.max(&idims, true).unwrap()), &max.data, tol, tol);
            assert_close(&format!("min {ctx}"), &vec64(&x.min(&idims, false).unwrap()), &min.data, tol, tol);
            assert_close(
                &format!("var {ctx}"),
                &vec64(&x.var(&idims, true, true).unwrap()),
                &var.data,
                tol,
                10.0 * tol,
            );
        }
        // argmax along each dim: the index of the naive max.
        for d in 0..3 {
            let am = x.argmax(d as isize, false).unwrap().to_vec::<i64>().unwrap();
            let max = naive_reduce(&nx, &[d], f64::NEG_INFINITY, f64::max);
            for (k, o) in Nd::indices(&max.shape).into_iter().enumerate() {
                let mut idx = o.clone();
                idx[d] = am[k] as usize;
                assert_eq!(nx.at(&idx), max.at(&o), "argmax dim {d} at {o:?}");
            }
        }
    }
    // Long rows take the parallel path.
    let big = rand_t(&[600, 300], 7, DType::F32);
    let nb = Nd::of(&big);
    let want = naive_reduce(&nb, &[0], 0.0, |a, b| a + b);
    assert_close("large sum dim 0", &vec64(&big.sum(&[0], true).unwrap()), &want.data, 1e-4, 1e-5);
    // Sums over leading dims add rows into column accumulators: two leading dims, and wide
    // rows split into column blocks (one not a multiple of the block) on the parallel path.
    for (shape, dims) in [(vec![3usize, 20, 30], vec![0usize, 1]), (vec![40, 2500], vec![0])] {
        let x = rand_t(&shape, 8, DType::F32);
        let want = naive_reduce(&Nd::of(&x), &dims, 0.0, |a, b| a + b);
        let idims: Vec<isize> = dims.iter().map(|&d| d as isize).collect();
        assert_close(
            &format!("sum {shape:?} over {dims:?}"),
            &vec64(&x.sum(&idims, true).unwrap()),
            &want.data,
            1e-4,
            1e-5,
        );
    }
}

/// Naive batched matmul with broadcast batch dims, for rank >= 2 operands.
fn naive_matmul(a: &Nd, b: &Nd) -> Nd {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = crate::common::broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = Nd::zeros(&shape);
    let pick = |x: &Nd, bi: &[usize], i: usize, j: usize| {
        let r = x.shape.len() - 2;
        let extra = bi.len() - r;
        let mut idx: Vec<usize> = (0..r).map(|d| if x.shape[d] == 1 { 0 } else { bi[extra + d] }).collect();
        idx.extend([i, j]);
        x.at(&idx)
    };
    for bi in Nd::indices(&batch) {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k).map(|p| pick(a, &bi, i, p) * pick(b, &bi, p, j)).sum();
                let mut o = bi.clone();
                o.extend([i, j]);
                out.set(&o, s);
            }
        }
    }
    out
}

#[test]
fn matmul_matches_naive() {
    let cases: [(&[usize], &[usize]); 8] = [
        (&[5, 7], &[7, 3]),
        (&[130, 70], &[70, 150]),         // large enough for the multi-threaded GEMM path
        (&[3, 100, 110], &[3, 110, 100]), // a few mid-size GEMMs: the one-task-per-batch path
        (&[2, 8, 8], &[2, 8, 8]),         // tiny GEMMs: the single-threaded path
        (&[2, 3, 4], &[4, 5]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[1, 6], &[6, 1]),
        (&[420, 400], &[400, 400]), // large: gemm's own threading
    ];
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        for (i, (sa, sb)) in cases.iter().enumerate() {
            let a = rand_t(sa, 10 + i as u64, dtype);
            let b = rand_t(sb, 20 + i as u64, dtype);
            let want = naive_matmul(&Nd::of(&a), &Nd::of(&b));
            let got = a.matmul(&b).unwrap();
            assert_eq!(got.dims(), &want.shape[..]);
            assert_close(&format!("matmul {dtype:?} {sa:?}@{sb:?}"), &vec64(&got), &want.data, tol, tol);
        }
        // Transposed views are multiplied through their strides.
        let a = rand_t(&[70, 130], 30, dtype);
        let b = rand_t(&[150, 70], 31, dtype);
        let want = naive_matmul(
            &Nd::of(&a.t().unwrap().contiguous().unwrap()),
            &Nd::of(&b.t().unwrap().contiguous().unwrap()),
        );
        assert_close("matmul aᵀbᵀ", &vec64(&a.t().unwrap().matmul(&b.t().unwrap()).unwrap()), &want.data, tol, tol);
    }
    // Vectors.
    let v = rand_t(&[4], 40, DType::F64);
    let m = rand_t(&[4, 3], 41, DType::F64);
    let got = v.matmul(&m).unwrap();
    assert_eq!(got.dims(), &[3]);
    let want = naive_matmul(&Nd::new(&[1, 4], vec64(&v)), &Nd::of(&m));
    assert_close("vec @ mat", &vec64(&got), &want.data, 1e-12, 1e-12);
}

#[test]
fn softmax_family_matches_naive() {
    let x = rand_t(&[4, 6], 50, DType::F64).mul_scalar(5.0).unwrap();
    let nx = Nd::of(&x);
    let mut soft = vec![0.0; 24];
    for r in 0..4 {
        let z: f64 = (0..6).map(|c| nx.at(&[r, c]).exp()).sum();
        for c in 0..6 {
            soft[r * 6 + c] = nx.at(&[r, c]).exp() / z;
        }
    }
    assert_close("softmax", &vec64(&x.softmax(-1).unwrap()), &soft, 1e-12, 1e-12);
    let logs: Vec<f64> = soft.iter().map(|p| p.ln()).collect();
    assert_close("log_softmax", &vec64(&x.log_softmax(1).unwrap()), &logs, 1e-12, 1e-12);
    // Along dim 0: the transpose of the dim-1 answer on xᵀ.
    let col = x.softmax(0).unwrap().t().unwrap();
    let xt = x.t().unwrap().contiguous().unwrap().softmax(1).unwrap();
    assert_close("softmax dim 0", &vec64(&col), &vec64(&xt), 1e-12, 1e-12);
    // Huge logits do not overflow.
    let big = Tensor::from_vec(vec![1000.0f32, 1001.0, 999.0], [1, 3], CPU).unwrap();
    let p = big.softmax(1).unwrap().to_vec::<f32>().unwrap();
    assert!(p.iter().all(|v| v.is_finite()) && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6);

    let labels = vec![5i64, 0, 3, 3];
    let lt = Tensor::from_vec(labels.clone(), [4], CPU).unwrap();
    for eps in [0.0, 0.2] {
        let want: f64 = (0..4)
            .map(|r| {
                let onehot = -(1.0 - eps) * logs[r * 6 + labels[r] as usize];
                let smooth: f64 = (0..6).map(|c| -eps / 6.0 * logs[r * 6 + c]).sum();
                onehot + smooth
            })
            .sum::<f64>()
            / 4.0;
        let got = x.cross_entropy(&lt, eps).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - want).abs() < 1e-12, "cross_entropy ε={eps}: {got} vs {want}");
    }
    let nll = x.log_softmax(1).unwrap().nll_loss(&lt).unwrap().to_scalar::<f64>().unwrap();
    let want_nll = -(0..4).map(|r| logs[r * 6 + labels[r] as usize]).sum::<f64>() / 4.0;
    assert!((nll - want_nll).abs() < 1e-12);
    let y = rand_t(&[4, 6], 51, DType::F64);
    let mse = x.mse_loss(&y).unwrap().to_scalar::<f64>().unwrap();
    let want_mse = vec64(&x).iter().zip(vec64(&y)).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / 24.0;
    assert!((mse - want_mse).abs() < 1e-12);
}

/// Direct convolution: every output element as an explicit sum over its window.
fn naive_conv(x: &Nd, w: &Nd, b: Option<&Nd>, o: Conv2dOptions) -> Nd {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oc, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
    let oh = (h + 2 * o.padding.0 - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1;
    let ow = (wd + 2 * o.padding.1 - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1;
    let ocg = oc / o.groups;
    assert_eq!(cg, c / o.groups);
    let mut out = Nd::zeros(&[n, oc, oh, ow]);
    for bn in 0..n {
        for f in 0..oc {
            let g = f / ocg;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut s = b.map(|b| b.data[f]).unwrap_or(0.0);
                    for ci in 0..cg {
                        for i in 0..kh {
                            for j in 0..kw {
                                let sy = (y * o.stride.0 + i * o.dilation.0) as isize - o.padding.0 as isize;
                                let sx = (xo * o.stride.1 + j * o.dilation.1) as isize - o.padding.1 as isize;
                                if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < wd {
                                    s += x.at(&[bn, g * cg + ci, sy as usize, sx as usize]) * w.at(&[f, ci, i, j]);
                                }
                            }
                        }
                    }
                    out.set(&[bn, f, y, xo], s);
                }
            }
        }
    }
    out
}

#[test]
fn conv2d_matches_direct_convolution() {
    let opts = [
        Conv2dOptions::default(),
        Conv2dOptions { padding: (1, 1), ..Default::default() },
        Conv2dOptions { stride: (2, 3), padding: (2, 0), ..Default::default() },
        Conv2dOptions { dilation: (2, 1), padding: (1, 1), ..Default::default() },
        Conv2dOptions { groups: 3, padding: (1, 1), ..Default::default() },
    ];
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        for (i, o) in opts.iter().enumerate() {
            // Several images: the kernel reuses one scratch buffer for consecutive images,
            // and 11 images spread over both threads.
            let x = rand_t(&[11, 6, 9, 8], 60 + i as u64, dtype);
            let w = rand_t(&[9, 6 / o.groups, 3, 3], 70 + i as u64, dtype);
            let b = rand_t(&[9], 80 + i as u64, dtype);
            let want = naive_conv(&Nd::of(&x), &Nd::of(&w), Some(&Nd::of(&b)), *o);
            let got = x.conv2d(&w, Some(&b), *o).unwrap();
            assert_eq!(got.dims(), &want.shape[..], "{o:?}");
            assert_close(&format!("conv2d {dtype:?} {o:?}"), &vec64(&got), &want.data, tol, tol);
        }
    }
}

#[test]
fn conv2d_few_taps_matches_direct_convolution() {
    // First-layer shapes (few input channels, stride 1, output rows at least 8 wide) take the
    // CPU's direct route instead of im2col + GEMM: rows that are and are not multiples of 8
    // wide, padding, groups, channel counts that are not multiples of 4, kernels 3, 4 and 5
    // wide (taps in blocks of 3 with a remainder).
    let cases: [(&[usize], &[usize], Conv2dOptions); 6] = [
        (&[5, 1, 12, 13], &[6, 1, 3, 3], Conv2dOptions::default()),
        (&[3, 3, 9, 10], &[5, 3, 3, 3], Conv2dOptions { padding: (1, 1), ..Default::default() }),
        (&[3, 4, 8, 9], &[6, 2, 3, 3], Conv2dOptions { padding: (1, 2), groups: 2, ..Default::default() }),
        (&[2, 1, 12, 12], &[3, 1, 5, 5], Conv2dOptions::default()),
        (&[2, 1, 6, 12], &[4, 1, 2, 4], Conv2dOptions { padding: (0, 1), ..Default::default() }),
        (&[9, 1, 28, 28], &[32, 1, 3, 3], Conv2dOptions::default()),
    ];
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
        for (i, (xs, ws, o)) in cases.iter().enumerate() {
            let x = rand_t(xs, 90 + i as u64, dtype);
            let w = rand_t(ws, 100 + i as u64, dtype);
            let b = rand_t(&[ws[0]], 110 + i as u64, dtype);
            let want = naive_conv(&Nd::of(&x), &Nd::of(&w), Some(&Nd::of(&b)), *o);
            let got = x.conv2d(&w, Some(&b), *o).unwrap();
            assert_eq!(got.dims(), &want.shape[..], "{xs:?} {ws:?} {o:?}");
            assert_close(&format!("conv2d {dtype:?} {xs:?} {ws:?} {o:?}"), &vec64(&got), &want.data, tol, tol);
        }
    }
}

#[test]
fn conv2d_winograd_matches_direct_convolution() {
    // 3x3 stride-1 convolutions with at least 16 input and output channels and 256 tiles
    // of 4x4 outputs take the CPU's Winograd F(4x4, 3x3) route: output sides that are and
    // are not multiples of 4 (tiles cut at the edge), padding on one side only, padding
    // wider than the kernel reaches (tiles over nothing but zeros), channel counts that are
    // no multiple of anything, and many blocks (of 32-64 tiles).
    let cases: [(&[usize], &[usize], (usize, usize)); 4] = [
        (&[20, 16, 16, 16], &[16, 16, 3, 3], (1, 1)),
        (&[29, 32, 13, 13], &[24, 32, 3, 3], (0, 0)),
        (&[52, 16, 5, 18], &[17, 16, 3, 3], (0, 2)),
        (&[64, 20, 6, 6], &[16, 20, 3, 3], (2, 2)),
    ];
    for dtype in [DType::F64, DType::F32] {
        // The transforms' constants (up to 8 and 1/24) cost accuracy: f32 sums of 144-288
        // products of values in [-1, 1] (sums of |terms| ~ 40) land within ~5e-5 of the exact
        // result, where direct summation lands within ~1e-6 (the im2col route's bound above
        // is 1e-5). A wrong transform is off by O(1).
        let (atol, rtol) = if dtype == DType::F64 { (1e-12, 1e-12) } else { (1e-4, 1e-5) };
        for (i, (xs, ws, padding)) in cases.iter().enumerate() {
            let o = Conv2dOptions { padding: *padding, ..Default::default() };
            let x = rand_t(xs, 120 + i as u64, dtype);
            let w = rand_t(ws, 130 + i as u64, dtype);
            let b = rand_t(&[ws[0]], 140 + i as u64, dtype);
            let want = naive_conv(&Nd::of(&x), &Nd::of(&w), Some(&Nd::of(&b)), o);
            let got = x.conv2d(&w, Some(&b), o).unwrap();
            assert_eq!(got.dims(), &want.shape[..], "{xs:?} {ws:?} {o:?}");
            assert_close(&format!("conv2d {dtype:?} {xs:?} {ws:?} {o:?}"), &vec64(&got), &want.data, atol, rtol);
        }
    }
}

#[test]
fn max_pool_2x2_ties_and_nan() {
    // The 2x2 / stride-2 fast path keeps the general rules: the first of equal values wins
    // (its gradient goes there), and a NaN wins over numbers.
    let x = Tensor::from_vec(vec![1.0f64, 1.0, 4.0, 2.0, 1.0, 1.0, f64::NAN, 3.0], [1, 1, 2, 4], CPU)
        .unwrap()
        .requires_grad_()
        .unwrap();
    let y = x.max_pool2d((2, 2), (2, 2), (0, 0)).unwrap();
    let v = vec64(&y);
    assert_eq!(v[0], 1.0);
    assert!(v[1].is_nan());
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(vec64(&x.grad().unwrap()), vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn pooling_matches_naive() {
    let x = rand_t(&[2, 3, 7, 6], 90, DType::F64);
    let nx = Nd::of(&x);
    for (k, s, p) in [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 1), (1, 1)), ((3, 2), (1, 2), (1, 0))] {
        let oh = (7 + 2 * p.0 - k.0) / s.0 + 1;
        let ow = (6 + 2 * p.1 - k.1) / s.1 + 1;
        let (mut mx, mut av) = (Nd::zeros(&[2, 3, oh, ow]), Nd::zeros(&[2, 3, oh, ow]));
        for idx in Nd::indices(&[2, 3, oh, ow]) {
            let (mut m, mut sum) = (f64::NEG_INFINITY, 0.0);
            for i in 0..k.0 {
                for j in 0..k.1 {
                    let sy = (idx[2] * s.0 + i) as isize - p.0 as isize;
                    let sx = (idx[3] * s.1 + j) as isize - p.1 as isize;
                    if sy >= 0 && sx >= 0 && sy < 7 && sx < 6 {
                        let v = nx.at(&[idx[0], idx[1], sy as usize, sx as usize]);
                        m = m.max(v);
                        sum += v;
                    }
                }
            }
            mx.set(&idx, m);
            av.set(&idx, sum / (k.0 * k.1) as f64);
        }
        assert_close(&format!("max_pool2d {k:?}"), &vec64(&x.max_pool2d(k, s, p).unwrap()), &mx.data, 1e-12, 1e-12);
        assert_close(&format!("avg_pool2d {k:?}"), &vec64(&x.avg_pool2d(k, s, p).unwrap()), &av.data, 1e-12, 1e-12);
    }
}

#[test]
fn indexing_matches_naive() {
    let x = rand_t(&[4, 5], 100, DType::F64);
    let nx = Nd::of(&x);
    let idx = vec![3i64, 0, 3];
    let it = Tensor::from_vec(idx.clone(), [3], CPU).unwrap();
    let rows = vec64(&x.index_select(0, &it).unwrap());
    let want: Vec<f64> =
        idx.iter().flat_map(|&r| (0..5).map(move |c| (r as usize, c))).map(|(r, c)| nx.at(&[r, c])).collect();
    assert_eq!(rows, want);
    let cols = vec64(&x.index_select(1, &it).unwrap());
    let want: Vec<f64> =
        (0..4).flat_map(|r| idx.iter().map(move |&c| (r, c as usize))).map(|(r, c)| nx.at(&[r, c])).collect();
    assert_eq!(cols, want);

    let g = vec![4i64, 0, 1, 1, 2, 3, 0, 0];
    let gt = Tensor::from_vec(g.clone(), [4, 2], CPU).unwrap();
    let got = vec64(&x.gather(1, &gt).unwrap());
    let want: Vec<f64> = (0..8).map(|k| nx.at(&[k / 2, g[k] as usize])).collect();
    assert_eq!(got, want);

    let src = rand_t(&[4, 2], 101, DType::F64);
    let ns = Nd::of(&src);
    let mut want = nx.clone();
    for k in 0..8 {
        let (r, c) = (k / 2, g[k] as usize);
        let v = want.at(&[r, c]) + ns.at(&[r, k % 2]);
        want.set(&[r, c], v);
    }
    assert_close("scatter_add", &vec64(&x.scatter_add(1, &gt, &src).unwrap()), &want.data, 1e-12, 0.0);

    let add = rand_t(&[3, 5], 102, DType::F64);
    let na = Nd::of(&add);
    let mut want = nx.clone();
    for (j, &r) in idx.iter().enumerate() {
        for c in 0..5 {
            let v = want.at(&[r as usize, c]) + na.at(&[j, c]);
            want.set(&[r as usize, c], v);
        }
    }
    assert_close("index_add (repeated index)", &vec64(&x.index_add(0, &it, &add).unwrap()), &want.data, 1e-12, 0.0);

    let ids = Tensor::from_vec(vec![1i64, 3, 3, 0], [2, 2], CPU).unwrap();
    let e = x.embedding(&ids).unwrap();
    assert_eq!(e.dims(), &[2, 2, 5]);
    let want: Vec<f64> =
        [1usize, 3, 3, 0].iter().flat_map(|&r| (0..5).map(move |c| (r, c))).map(|(r, c)| nx.at(&[r, c])).collect();
    assert_eq!(vec64(&e), want);

    let cond = Tensor::from_vec(vec![1.0f64, 0.0, 1.0, 0.0, 0.0], [5], CPU).unwrap();
    let y = rand_t(&[4, 5], 103, DType::F64);
    let ny = Nd::of(&y);
    let got = vec64(&Tensor::where_cond(&cond, &x, &y).unwrap());
    let want: Vec<f64> =
        Nd::indices(&[4, 5]).iter().map(|i| if i[1] % 2 == 0 && i[1] != 4 { nx.at(i) } else { ny.at(i) }).collect();
    assert_eq!(got, want);
    let got = vec64(&x.masked_fill(&cond, 9.0).unwrap());
    let want: Vec<f64> =
        Nd::indices(&[4, 5]).iter().map(|i| if i[1] % 2 == 0 && i[1] != 4 { 9.0 } else { nx.at(i) }).collect();
    assert_eq!(got, want);
}

#[test]
fn views_and_joins_match_naive() {
    let x = rand_t(&[2, 3, 4], 110, DType::F64);
    let nx = Nd::of(&x);
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert!(!p.is_contiguous() && p.same_storage(&x), "permute is a view");
    let want: Vec<f64> = Nd::indices(&[4, 2, 3]).iter().map(|i| nx.at(&[i[1], i[2], i[0]])).collect();
    assert_eq!(vec64(&p), want);
    assert_eq!(vec64(&p.contiguous().unwrap()), want);
    let nr = x.narrow(2, 1, 2).unwrap();
    let want: Vec<f64> = Nd::indices(&[2, 3, 2]).iter().map(|i| nx.at(&[i[0], i[1], i[2] + 1])).collect();
    assert_eq!(vec64(&nr), want);
    let e = x.narrow(1, 0, 1).unwrap().expand([2, 5, 4]).unwrap();
    let want: Vec<f64> = Nd::indices(&[2, 5, 4]).iter().map(|i| nx.at(&[i[0], 0, i[2]])).collect();
    assert_eq!(vec64(&e), want);
    assert_eq!(x.unsqueeze(1).unwrap().dims(), &[2, 1, 3, 4]);
    assert_eq!(x.unsqueeze(-1).unwrap().dims(), &[2, 3, 4, 1]);
    assert_eq!(x.unsqueeze(1).unwrap().squeeze(1).unwrap().dims(), &[2, 3, 4]);
    // Reshape of a non-contiguous view copies in the view's order.
    let tr = x.t_last().reshape([24]).unwrap();
    let want: Vec<f64> = Nd::indices(&[2, 4, 3]).iter().map(|i| nx.at(&[i[0], i[2], i[1]])).collect();
    assert_eq!(vec64(&tr), want);

    let y = rand_t(&[2, 2, 4], 111, DType::F64);
    let ny = Nd::of(&y);
    let c = Tensor::cat(&[x.clone(), y.clone()], 1).unwrap();
    let want: Vec<f64> = Nd::indices(&[2, 5, 4])
        .iter()
        .map(|i| if i[1] < 3 { nx.at(i) } else { ny.at(&[i[0], i[1] - 3, i[2]]) })
        .collect();
    assert_eq!(vec64(&c), want);
    let s = Tensor::stack(&[x.clone(), x.mul_scalar(2.0).unwrap()], 0).unwrap();
    assert_eq!(s.dims(), &[2, 2, 3, 4]);
    let want: Vec<f64> = Nd::indices(&[2, 2, 3, 4]).iter().map(|i| nx.at(&i[1..]) * (i[0] + 1) as f64).collect();
    assert_eq!(vec64(&s), want);
}

/// x with its last two dims swapped (a view).
trait TLast {
    fn t_last(&self) -> Tensor;
}
impl TLast for Tensor {
    fn t_last(&self) -> Tensor {
        self.transpose(-1, -2).unwrap()
    }
}

#[test]
fn creation_ops() {
    let a = Tensor::arange(0.0, 5.0, 1.0, DType::I64, CPU).unwrap();
    assert_eq!(a.to_vec::<i64>().unwrap(), vec![0, 1, 2, 3, 4]);
    let a = Tensor::arange(1.0, 2.0, 0.25, DType::F32, CPU).unwrap();
    assert_eq!(a.to_vec::<f32>().unwrap(), vec![1.0, 1.25, 1.5, 1.75]);
    assert_eq!(Tensor::full(2.5, [2, 2], DType::F64, CPU).unwrap().to_vec::<f64>().unwrap(), vec![2.5; 4]);
    assert_eq!(Tensor::zeros([3], DType::BF16, CPU).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    assert_eq!(Tensor::ones([3], DType::F16, CPU).unwrap().to_vec::<f32>().unwrap(), vec![1.0; 3]);

    // Seeded: same seed, same numbers; moments of U[0,1) and N(0,1) on 100k samples.
    let n = 100_000;
    let mut g = kiln::Generator::new(5);
    let u = vec64(&Tensor::rand_with([n], DType::F64, CPU, &mut g).unwrap());
    let mut g2 = kiln::Generator::new(5);
    assert_eq!(u, vec64(&Tensor::rand_with([n], DType::F64, CPU, &mut g2).unwrap()));
    let mean = u.iter().sum::<f64>() / n as f64;
    let var = u.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(u.iter().all(|&v| (0.0..1.0).contains(&v)));
    assert!((mean - 0.5).abs() < 0.01 && (var - 1.0 / 12.0).abs() < 0.005, "uniform mean {mean} var {var}");
    let z = vec64(&Tensor::randn_with([n], DType::F64, CPU, &mut g).unwrap());
    let mean = z.iter().sum::<f64>() / n as f64;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "normal mean {mean} var {var}");
}

#[test]
fn dropout_statistics() {
    let x = Tensor::ones([200, 100], DType::F32, CPU).unwrap();
    let y = vec64(&x.dropout_with(0.3, &mut kiln::Generator::new(1)).unwrap());
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.3).abs() < 0.02, "dropped fraction {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6), "kept values are scaled by 1/(1-p)");
    assert_eq!(vec64(&x.dropout(0.3, false).unwrap()), vec![1.0; 20_000], "eval mode is the identity");
}

#[test]
fn half_types_compute_in_f32() {
    for dtype in [DType::F16, DType::BF16] {
        // bf16 keeps 8 mantissa bits, f16 11: tolerance ~ a few ulps of the output.
        let tol = if dtype == DType::F16 { 4e-3 } else { 3e-2 };
        let a = rand_t(&[8, 16], 120, dtype);
        let b = rand_t(&[16, 4], 121, dtype);
        // The oracle: the same (already rounded) inputs in f64.
        let (a64, b64) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        let mm = a.matmul(&b).unwrap();
        assert_eq!(mm.dtype(), dtype);
        assert_close(&format!("{dtype:?} matmul"), &vec64(&mm), &vec64(&a64.matmul(&b64).unwrap()), tol, tol);
        assert_close(
            &format!("{dtype:?} softmax"),
            &vec64(&a.softmax(1).unwrap()),
            &vec64(&a64.softmax(1).unwrap()),
            tol,
            tol,
        );
        assert_close(&format!("{dtype:?} gelu"), &vec64(&a.gelu().unwrap()), &vec64(&a64.gelu().unwrap()), tol, tol);
        assert_close(
            &format!("{dtype:?} sum"),
            &vec64(&a.sum(&[1], false).unwrap()),
            &vec64(&a64.sum(&[1], false).unwrap()),
            tol * 4.0,
            tol,
        );
        let x = rand_t(&[1, 2, 5, 5], 122, dtype);
        let w = rand_t(&[3, 2, 3, 3], 123, dtype);
        let (x64, w64) = (x.to_dtype(DType::F64).unwrap(), w.to_dtype(DType::F64).unwrap());
        let o = Conv2dOptions::default();
        assert_close(
            &format!("{dtype:?} conv2d"),
            &vec64(&x.conv2d(&w, None, o).unwrap()),
            &vec64(&x64.conv2d(&w64, None, o).unwrap()),
            tol * 4.0,
            tol,
        );
    }
    // Conversion round trip: values representable in f16 survive exactly.
    let v = vec![0.5f64, -2.0, 1024.0, 0.125];
    let t = Tensor::from_vec(v.clone(), [4], Device::Cpu).unwrap();
    assert_eq!(vec64(&t.to_dtype(DType::F16).unwrap()), v);
    assert_eq!(vec64(&t.to_dtype(DType::BF16).unwrap()), v);
}

#[test]
fn large_integers_read_back_exactly() {
    // 2^53 + 1 has no f64 representation: reading I64 must not go through f64.
    let big = (1i64 << 53) + 1;
    let t = Tensor::from_vec(vec![big, -big], [2], CPU).unwrap();
    assert_eq!(t.to_vec::<i64>().unwrap(), vec![big, -big]);
    assert_eq!(t.narrow(0, 1, 1).unwrap().to_scalar::<i64>().unwrap(), -big);
}
