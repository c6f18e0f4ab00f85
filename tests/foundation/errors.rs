//! Bad calls return the right typed error; random calls never panic.

use crate::common::{rand_t, CPU};
use kiln::{Conv2dOptions, DType, Device, Error, Generator, Tensor};

fn f32s(shape: &[usize]) -> Tensor {
    rand_t(shape, 1, DType::F32)
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let e = f32s(&[2, 3]).matmul(&f32s(&[2, 3])).unwrap_err();
    assert!(
        matches!(&e, Error::ShapeMismatch { op: "matmul", lhs, rhs } if lhs.dims() == [2, 3] && rhs.dims() == [2, 3]),
        "{e}"
    );
    assert_eq!(e.to_string(), "matmul: shape mismatch between [2, 3] and [2, 3]");
    let e = f32s(&[2, 3]).add(&f32s(&[4])).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { op: "add", .. }), "{e}");
    assert!(matches!(f32s(&[2, 3]).reshape([4]), Err(Error::ShapeMismatch { op: "reshape", .. })));
    assert!(matches!(Tensor::from_vec(vec![1.0f32; 5], [2, 3], CPU), Err(Error::ElementCount { got: 5, .. })));
    assert!(matches!(Tensor::cat(&[f32s(&[2, 3]), f32s(&[2, 4])], 0), Err(Error::ShapeMismatch { op: "cat", .. })));
    assert!(matches!(f32s(&[2, 3]).squeeze(0), Err(Error::InvalidShape { op: "squeeze", .. })));
    let small = f32s(&[1, 1, 2, 2]);
    let w = f32s(&[1, 1, 3, 3]);
    assert!(matches!(small.conv2d(&w, None, Conv2dOptions::default()), Err(Error::InvalidShape { op: "conv2d", .. })));
    assert!(matches!(
        f32s(&[1, 2, 4, 4]).conv2d(&w, None, Conv2dOptions::default()),
        Err(Error::ShapeMismatch { op: "conv2d", .. })
    ));
    assert!(matches!(f32s(&[3]).backward(), Err(Error::Backward(_))));
}

#[test]
fn index_errors() {
    let x = f32s(&[4, 3]);
    let bad = Tensor::from_vec(vec![0i64, 4], [2], CPU).unwrap();
    assert!(matches!(x.index_select(0, &bad), Err(Error::IndexOutOfRange { index: 4, size: 4, .. })));
    let neg = Tensor::from_vec(vec![-1i64], [1], CPU).unwrap();
    assert!(matches!(x.embedding(&neg), Err(Error::IndexOutOfRange { index: -1, .. })));
    let g = Tensor::from_vec(vec![3i64; 4], [4, 1], CPU).unwrap();
    assert!(matches!(x.gather(1, &g), Err(Error::IndexOutOfRange { index: 3, size: 3, .. })));
    let labels = Tensor::from_vec(vec![0i64, 1, 2, 3], [4], CPU).unwrap();
    assert!(matches!(x.cross_entropy(&labels, 0.0), Err(Error::IndexOutOfRange { index: 3, size: 3, .. })));
    assert!(matches!(x.narrow(1, 2, 2), Err(Error::IndexOutOfRange { op: "narrow", .. })));
    assert!(matches!(x.sum(&[2], false), Err(Error::DimOutOfRange { dim: 2, rank: 2, .. })));
    assert!(matches!(x.softmax(-3), Err(Error::DimOutOfRange { dim: -3, .. })));
    assert!(matches!(x.transpose(0, 5), Err(Error::DimOutOfRange { .. })));
}

#[test]
fn dtype_and_device_errors() {
    let a = f32s(&[2]);
    let b = rand_t(&[2], 2, DType::F64);
    assert!(matches!(a.add(&b), Err(Error::DTypeMismatch { op: "add", lhs: DType::F32, rhs: DType::F64 })));
    assert!(matches!(a.matmul(&b), Err(Error::DTypeMismatch { .. })));
    let i = Tensor::from_vec(vec![1i64, 2], [2], CPU).unwrap();
    assert!(matches!(i.exp(), Err(Error::UnsupportedDType { op: "exp", dtype: DType::I64, .. })));
    assert!(matches!(i.div(&i), Err(Error::UnsupportedDType { op: "div", .. })));
    assert!(matches!(i.set_requires_grad(true), Err(Error::UnsupportedDType { .. })));
    let fidx = Tensor::from_vec(vec![0.0f32], [1], CPU).unwrap();
    assert!(matches!(a.index_select(0, &fidx), Err(Error::UnsupportedDType { .. })));
    assert!(matches!(f32s(&[1, 2]).cross_entropy(&fidx, 0.0), Err(Error::UnsupportedDType { .. })));
    // No GPU here: asking for one is an error, and best() falls back to the CPU.
    assert!(matches!(Device::cuda(0), Err(Error::DeviceUnavailable { .. })));
    assert_eq!(Device::best(), Device::Cpu);
    assert!(Tensor::zeros([2], DType::F32, Device::Cuda(0)).is_err());
}

/// Random ops on random shapes, dims and indices: each call is Ok or Err, never a panic.
#[test]
fn random_calls_never_panic() {
    let mut g = Generator::new(2024);
    let shape = |g: &mut Generator| -> Vec<usize> { (0..g.below(5)).map(|_| g.below(4) as usize).collect() };
    let dtypes = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64];
    let mut oks = 0;
    for round in 0..3000 {
        let (sa, sb) = (shape(&mut g), shape(&mut g));
        let da = dtypes[g.below(5) as usize];
        let db = if g.below(4) == 0 { dtypes[g.below(5) as usize] } else { da };
        let a = Tensor::zeros(sa.clone(), DType::F64, CPU).unwrap().add_scalar(0.5).unwrap().to_dtype(da).unwrap();
        let b = Tensor::ones(sb.clone(), db, CPU).unwrap();
        let d = g.below(9) as isize - 4;
        let k = g.below(4) as usize;
        let idx = Tensor::from_vec((0..k).map(|_| g.below(6) as i64 - 1).collect::<Vec<_>>(), [k], CPU).unwrap();
        let op = g.below(24);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> kiln::Result<Tensor> {
            match op {
                0 => a.add(&b),
                1 => a.matmul(&b),
                2 => a.sum(&[d], d % 2 == 0),
                3 => a.max(&[d], false),
                4 => a.softmax(d),
                5 => a.transpose(d, d + 1),
                6 => a.narrow(d, k, 1),
                7 => a.reshape(sb.clone()),
                8 => a.broadcast_to(sb.clone()),
                9 => a.index_select(d, &idx),
                10 => Tensor::cat(&[a.clone(), b.clone()], d),
                11 => Tensor::stack(&[a.clone(), b.clone()], d),
                12 => a.squeeze(d),
                13 => a.unsqueeze(d),
                14 => a.cross_entropy(&idx, 0.1),
                15 => a.conv2d(&b, None, Conv2dOptions { padding: (k, k), ..Default::default() }),
                16 => a.max_pool2d((k, k), (k, k), (0, 0)),
                17 => a.avg_pool2d((k, 1), (1, k), (0, 0)),
                18 => a.gather(d, &idx),
                19 => a.argmax(d, true),
                20 => a.var(&[d], true, false),
                21 => Tensor::where_cond(&b, &a, &a),
                22 => a.flatten(d, d + 1),
                _ => a.embedding(&idx),
            }
        }));
        match result {
            Ok(Ok(_)) => oks += 1,
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Err(_) => panic!("round {round}: op {op} panicked on {sa:?} {da:?} / {sb:?} {db:?}, d={d}, k={k}"),
        }
    }
    assert!(oks > 300, "the fuzzer should also hit valid calls ({oks})");
}
