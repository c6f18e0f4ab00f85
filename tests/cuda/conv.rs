//! im2col / col2im and pooling on the emulated device against the CPU backend's own
//! functions: strided (NHWC-stored) inputs, non-square kernels, stride, padding, dilation.

use super::{cpu, data, mptr, ptr};
use kiln::backend::cpu::{self as cpub, CpuStorage};
use kiln::backend::cuda::{emu::EmuLauncher, kernels_conv as conv};
use kiln::{DType, Error, Layout, Shape, Tensor, Window2d};

fn win(kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize), dilation: (usize, usize)) -> Window2d {
    Window2d { kernel, stride, padding, dilation }
}

/// Conv geometries: square and not, strided, padded, dilated, 1x1.
fn geometries() -> Vec<Window2d> {
    vec![
        win((3, 3), (1, 1), (1, 1), (1, 1)),
        win((2, 3), (2, 1), (0, 1), (1, 2)),
        win((3, 2), (3, 2), (2, 1), (2, 1)),
        win((1, 1), (1, 1), (0, 0), (1, 1)),
    ]
}

/// x [2, 3, 7, 9] stored as NHWC and viewed as NCHW (not contiguous). Returns (buffer, view).
fn nhwc(seed: u64) -> (Vec<f32>, Tensor) {
    let v = data(2 * 7 * 9 * 3, seed, -2.0, 2.0);
    let t = cpu(&v, &[2, 7, 9, 3]).permute(&[0, 3, 1, 2]).unwrap();
    (v, t)
}

fn storage(v: &[f32]) -> (CpuStorage, Layout) {
    (CpuStorage::from_vec(v.to_vec()), Layout::contiguous(Shape::new(vec![v.len()])))
}

fn read(s: &CpuStorage) -> Vec<f32> {
    s.to_vec::<f32>(&Layout::contiguous(Shape::new(vec![s.len()])))
}

#[test]
fn im2col_and_col2im_equal_the_cpu_bit_for_bit() {
    let (x, t) = nhwc(60);
    for w in geometries() {
        let (oh, ow) = w.out_hw(7, 9).unwrap();
        let rows = 3 * w.kernel.0 * w.kernel.1;
        let mut cols = vec![f32::NAN; 2 * rows * oh * ow];
        conv::im2col(&EmuLauncher, DType::F32, ptr(&x), t.layout(), &w, mptr(&mut cols)).unwrap();
        let want = t.unfold2d(w).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(cols, want, "im2col {w:?}");
        // Rows first: the same columns as [rows, n, oh·ow].
        let mut rows_first = vec![f32::NAN; cols.len()];
        conv::im2col_rows_first(&EmuLauncher, DType::F32, ptr(&x), t.layout(), &w, mptr(&mut rows_first)).unwrap();
        let want = t.unfold2d(w).unwrap().permute(&[1, 0, 2]).unwrap().contiguous().unwrap().to_vec::<f32>().unwrap();
        assert_eq!(rows_first, want, "im2col rows first {w:?}");

        // col2im of random columns, against the CPU's col2im (the same summation order).
        let c = data(cols.len(), 61, -1.0, 1.0);
        let cl = Layout::contiguous(Shape::new(vec![2, rows, oh * ow]));
        let mut gx = vec![f32::NAN; 2 * 3 * 7 * 9];
        conv::col2im(&EmuLauncher, DType::F32, ptr(&c), &[2, 3, 7, 9], &w, mptr(&mut gx)).unwrap();
        let want = cpub::col2im(&CpuStorage::from_vec(c.clone()), &cl, &[2, 3, 7, 9], &w).unwrap();
        assert_eq!(gx, read(&want), "col2im {w:?}");
    }
}

#[test]
fn half_precision_im2col_and_col2im_match_the_cpu() {
    let w = win((3, 2), (2, 1), (1, 1), (1, 2));
    let dims = [1, 2, 6, 5];
    let (oh, ow) = w.out_hw(6, 5).unwrap();
    let x = data(60, 62, -3.0, 3.0);
    let xl = Layout::contiguous(Shape::new(dims.to_vec()));
    let n_cols = 2 * 6 * oh * ow;
    let cl = Layout::contiguous(Shape::new(vec![1, 12, oh * ow]));
    let c = data(n_cols, 63, -3.0, 3.0);
    for dtype in [DType::F16, DType::BF16] {
        let to16 = |v: &[f32]| -> (Vec<u16>, CpuStorage) {
            let s = CpuStorage::from_vec(v.to_vec()).cast(&Layout::contiguous(Shape::new(vec![v.len()])), dtype);
            let bits = match dtype {
                DType::F16 => s
                    .to_vec::<half::f16>(&Layout::contiguous(Shape::new(vec![v.len()])))
                    .iter()
                    .map(|h| h.to_bits())
                    .collect(),
                _ => s
                    .to_vec::<half::bf16>(&Layout::contiguous(Shape::new(vec![v.len()])))
                    .iter()
                    .map(|h| h.to_bits())
                    .collect(),
            };
            (bits, s)
        };
        let from16 = |v: &[u16]| -> Vec<f32> {
            match dtype {
                DType::F16 => v.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
                _ => v.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
            }
        };
        let (xb, xs) = to16(&x);
        let mut cols = vec![0u16; n_cols];
        conv::im2col(&EmuLauncher, dtype, ptr(&xb), &xl, &w, mptr(&mut cols)).unwrap();
        assert_eq!(from16(&cols), read(&cpub::im2col(&xs, &xl, &w).unwrap()), "im2col {dtype:?}");
        let (cb, cs) = to16(&c);
        let mut gx = vec![0u16; 60];
        conv::col2im(&EmuLauncher, dtype, ptr(&cb), &dims, &w, mptr(&mut gx)).unwrap();
        assert_eq!(from16(&gx), read(&cpub::col2im(&cs, &cl, &dims, &w).unwrap()), "col2im {dtype:?}");
    }
}

/// Pool geometries: the common 2x2/2, padded 3x3/2, non-square, dilated, overlapping.
fn pools() -> Vec<Window2d> {
    vec![
        win((2, 2), (2, 2), (0, 0), (1, 1)),
        win((3, 3), (2, 2), (1, 1), (1, 1)),
        win((3, 2), (1, 2), (1, 0), (1, 1)),
        win((2, 2), (1, 1), (0, 0), (2, 1)),
        win((3, 3), (1, 1), (1, 1), (1, 1)),
    ]
}

#[test]
fn max_pool_and_its_backward_equal_the_cpu_with_ties_and_nans() {
    let (mut x, _) = nhwc(64);
    // Coarse values make ties; a few NaNs (some in one window) test the NaN rule.
    for v in x.iter_mut() {
        *v = (*v * 2.0).round() / 2.0;
    }
    for i in [5, 8, 11, 200, 203, 301] {
        x[i] = f32::NAN;
    }
    let t = cpu(&x, &[2, 7, 9, 3]).permute(&[0, 3, 1, 2]).unwrap();
    let xs = CpuStorage::from_vec(x.clone());
    for w in pools() {
        let (oh, ow) = w.out_hw(7, 9).unwrap();
        let n_out = 2 * 3 * oh * ow;
        let (mut vals, mut idx) = (vec![0f32; n_out], vec![-7i64; n_out]);
        conv::max_pool2d(&EmuLauncher, DType::F32, ptr(&x), t.layout(), &w, mptr(&mut vals), mptr(&mut idx)).unwrap();
        let (wv, wi) = cpub::max_pool2d(&xs, t.layout(), &w).unwrap();
        let ol = Layout::contiguous(Shape::new(vec![n_out]));
        let wv = wv.to_vec::<f32>(&ol);
        for (i, (g, e)) in vals.iter().zip(&wv).enumerate() {
            assert!(g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan()), "max_pool2d {w:?} [{i}]: {g} vs {e}");
        }
        let wi = wi.to_vec::<i64>(&ol);
        assert_eq!(idx, wi, "argmax {w:?}");

        let g = data(n_out, 65, -1.0, 1.0);
        let mut gx = vec![f32::NAN; 2 * 3 * 7 * 9];
        conv::max_pool2d_backward(&EmuLauncher, DType::F32, ptr(&g), ptr(&idx), &[2, 3, 7, 9], &w, mptr(&mut gx))
            .unwrap();
        let (gs, gl) = storage(&g);
        let want = cpub::max_pool2d_backward(&gs, &gl, &CpuStorage::from_vec(wi.clone()), 6, 63).unwrap();
        assert_eq!(gx, read(&want), "max_pool2d_backward {w:?}");
    }
}

#[test]
fn half_precision_max_pool_matches_the_cpu() {
    let w = win((3, 3), (2, 2), (1, 1), (1, 1));
    let x = data(2 * 3 * 7 * 9, 66, -5.0, 5.0);
    let xl = Layout::contiguous(Shape::new(vec![2, 3, 7, 9]));
    let (oh, ow) = w.out_hw(7, 9).unwrap();
    let n_out = 2 * 3 * oh * ow;
    let ol = Layout::contiguous(Shape::new(vec![n_out]));
    let xs = CpuStorage::from_vec(x.iter().map(|&v| half::bf16::from_f32(v)).collect::<Vec<_>>());
    let xb: Vec<u16> = x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let (mut vals, mut idx) = (vec![0u16; n_out], vec![0i64; n_out]);
    conv::max_pool2d(&EmuLauncher, DType::BF16, ptr(&xb), &xl, &w, mptr(&mut vals), mptr(&mut idx)).unwrap();
    let (wv, wi) = cpub::max_pool2d(&xs, &xl, &w).unwrap();
    let got: Vec<f32> = vals.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
    assert_eq!(got, wv.to_vec::<f32>(&ol));
    assert_eq!(idx, wi.to_vec::<i64>(&ol));
    let g: Vec<u16> = data(n_out, 67, -1.0, 1.0).iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let gs = CpuStorage::from_vec(g.iter().map(|&b| half::bf16::from_bits(b)).collect::<Vec<_>>());
    let mut gx = vec![0u16; x.len()];
    conv::max_pool2d_backward(&EmuLauncher, DType::BF16, ptr(&g), ptr(&idx), xl.dims(), &w, mptr(&mut gx)).unwrap();
    let want = cpub::max_pool2d_backward(&gs, &ol, &wi, 6, 63).unwrap();
    let got: Vec<f32> = gx.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
    assert_eq!(got, read(&want));
}

#[test]
fn avg_pool_and_its_backward_match_the_cpu_autograd() {
    let (x, t) = nhwc(68);
    for w in pools().into_iter().filter(|w| w.dilation == (1, 1)) {
        let (oh, ow) = w.out_hw(7, 9).unwrap();
        let n_out = 2 * 3 * oh * ow;
        let mut y = vec![0f32; n_out];
        conv::avg_pool2d(&EmuLauncher, DType::F32, ptr(&x), t.layout(), &w, mptr(&mut y)).unwrap();
        let tg = t.detach().requires_grad_().unwrap();
        let want = tg.avg_pool2d(w.kernel, w.stride, w.padding).unwrap();
        super::close(&format!("avg_pool2d {w:?}"), &y, &want.to_vec::<f32>().unwrap(), 1e-6);

        let g = data(n_out, 69, -1.0, 1.0);
        want.mul(&cpu(&g, want.dims())).unwrap().sum_all().unwrap().backward().unwrap();
        let mut gx = vec![0f32; 2 * 3 * 7 * 9];
        conv::avg_pool2d_backward(&EmuLauncher, DType::F32, ptr(&g), &[2, 3, 7, 9], &w, mptr(&mut gx)).unwrap();
        let want = tg.grad().unwrap().contiguous().unwrap().to_vec::<f32>().unwrap();
        super::close(&format!("avg_pool2d_backward {w:?}"), &gx, &want, 1e-6);
    }
}

#[test]
fn bad_windows_are_typed_errors() {
    let l = Layout::contiguous(Shape::new(vec![3, 7, 9]));
    let w = win((3, 3), (1, 1), (0, 0), (1, 1));
    assert!(matches!(
        conv::im2col(&EmuLauncher, DType::F32, 0, &l, &w, 0),
        Err(Error::InvalidShape { op: "im2col", .. })
    ));
    let l = Layout::contiguous(Shape::new(vec![1, 1, 2, 9]));
    assert!(matches!(conv::avg_pool2d(&EmuLauncher, DType::F32, 0, &l, &w, 0), Err(Error::InvalidShape { .. })));
    let zero = win((3, 0), (1, 1), (0, 0), (1, 1));
    assert!(matches!(
        conv::col2im(&EmuLauncher, DType::F32, 0, &[1, 1, 5, 5], &zero, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let padded = win((2, 2), (1, 1), (2, 0), (1, 1));
    assert!(matches!(
        conv::max_pool2d(&EmuLauncher, DType::F32, 0, &Layout::contiguous(Shape::new(vec![1, 1, 5, 5])), &padded, 0, 0),
        Err(Error::InvalidArgument { op: "max_pool2d", .. })
    ));
    assert!(matches!(
        conv::col2im(&EmuLauncher, DType::F64, 0, &[1, 1, 5, 5], &w, 0),
        Err(Error::UnsupportedDType { .. })
    ));
}
