//! index_select / gather / index_add / scatter_add on the emulated device against the CPU
//! backend, on strided (permuted, narrowed) views, every dim, repeated indices.

use super::{cpu, data, mptr, ptr};
use kiln::backend::cuda::{emu::EmuLauncher, kernels_nn as nn};
use kiln::{DType, Device, Error, Tensor};

/// A non-contiguous view of `dims` (3-D) over a fresh buffer: the buffer is [d2, d1, d0 + 1],
/// permuted to [d0 + 1, d1, d2] and narrowed to skip the first row. Returns (buffer, view).
fn strided(dims: [usize; 3], seed: u64) -> (Vec<f32>, Tensor) {
    let v = data(dims[2] * dims[1] * (dims[0] + 1), seed, -3.0, 3.0);
    let t = cpu(&v, &[dims[2], dims[1], dims[0] + 1]).permute(&[2, 1, 0]).unwrap().narrow(0, 1, dims[0]).unwrap();
    assert!(!t.is_contiguous());
    (v, t)
}

/// `n` indices in 0..size, with repeats.
fn indices(n: usize, size: usize, seed: u64) -> Vec<i64> {
    let mut g = kiln::Generator::new(seed);
    (0..n).map(|_| g.below(size as u64) as i64).collect()
}

fn i64s(v: &[i64], dims: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), dims, Device::Cpu).unwrap()
}

#[test]
fn index_select_and_gather_match_the_cpu_on_strided_views() {
    let dims = [5, 4, 6];
    let (x, t) = strided(dims, 11);
    for dim in 0..3 {
        let idx = indices(7, dims[dim], 12 + dim as u64);
        let mut out_dims = dims.to_vec();
        out_dims[dim] = idx.len();
        let mut y = vec![0f32; out_dims.iter().product()];
        let mut status = [0u64; 2];
        nn::index_select(
            &EmuLauncher,
            DType::F32,
            ptr(&x),
            t.layout(),
            dim,
            ptr(&idx),
            idx.len(),
            mptr(&mut y),
            mptr(&mut status),
        )
        .unwrap();
        nn::index_status("index_select", status, dims[dim]).unwrap();
        let want = t.index_select(dim as isize, &i64s(&idx, &[idx.len()])).unwrap();
        assert_eq!(y, want.to_vec::<f32>().unwrap(), "index_select dim {dim}");

        // gather: an index of x's shape but 3 along dim.
        let mut index_dims = dims.to_vec();
        index_dims[dim] = 3;
        let index = indices(index_dims.iter().product(), dims[dim], 20 + dim as u64);
        let mut y = vec![0f32; index.len()];
        nn::gather(
            &EmuLauncher,
            DType::F32,
            ptr(&x),
            t.layout(),
            dim,
            ptr(&index),
            &index_dims,
            mptr(&mut y),
            mptr(&mut status),
        )
        .unwrap();
        nn::index_status("gather", status, dims[dim]).unwrap();
        let want = t.gather(dim as isize, &i64s(&index, &index_dims)).unwrap();
        assert_eq!(y, want.to_vec::<f32>().unwrap(), "gather dim {dim}");
    }
}

#[test]
fn index_select_covers_many_blocks_and_every_dtype() {
    // 300 rows of 7, 150 picked: 1050 outputs, four blocks and a partial one.
    let x = data(300 * 7, 13, -100.0, 100.0);
    let t = cpu(&x, &[300, 7]);
    let idx = indices(150, 300, 14);
    let it = i64s(&idx, &[150]);
    let mut status = [0u64; 2];
    for dtype in [DType::F16, DType::BF16] {
        let h = t.to_dtype(dtype).unwrap();
        let bits: Vec<u16> = match dtype {
            DType::F16 => h.to_vec::<half::f16>().unwrap().iter().map(|v| v.to_bits()).collect(),
            _ => h.to_vec::<half::bf16>().unwrap().iter().map(|v| v.to_bits()).collect(),
        };
        let mut y = vec![0u16; 150 * 7];
        nn::index_select(
            &EmuLauncher,
            dtype,
            ptr(&bits),
            h.layout(),
            0,
            ptr(&idx),
            150,
            mptr(&mut y),
            mptr(&mut status),
        )
        .unwrap();
        let want = h.index_select(0, &it).unwrap().to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap();
        let got = match dtype {
            DType::F16 => y.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect::<Vec<_>>(),
            _ => y.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
        };
        assert_eq!(got, want, "{dtype:?}");
    }
    // I64 (labels): values beyond f64's 53 bits survive.
    let labels: Vec<i64> = (0..300).map(|i| (1i64 << 60) + i * 7919).collect();
    let mut y = vec![0i64; 150];
    let lt = i64s(&labels, &[300]);
    nn::index_select(
        &EmuLauncher,
        DType::I64,
        ptr(&labels),
        lt.layout(),
        0,
        ptr(&idx),
        150,
        mptr(&mut y),
        mptr(&mut status),
    )
    .unwrap();
    assert_eq!(y, lt.index_select(0, &it).unwrap().to_vec::<i64>().unwrap());
    nn::index_status("index_select", status, 300).unwrap();
}

#[test]
fn index_add_and_scatter_add_match_the_cpu_with_repeated_indices() {
    let dims = [5, 4, 6];
    let base = data(120, 30, -1.0, 1.0);
    let bt = cpu(&base, &dims);
    for dim in 0..3 {
        // index_add: 9 source slices (so indices repeat) added into `dims[dim]` slots.
        let mut src_dims = dims;
        src_dims[dim] = 9;
        let (s, st) = strided(src_dims, 31 + dim as u64);
        let idx = indices(9, dims[dim], 32 + dim as u64);
        let mut out = base.clone();
        let mut status = [0u64; 2];
        nn::index_add(
            &EmuLauncher,
            DType::F32,
            mptr(&mut out),
            &dims,
            dim,
            ptr(&idx),
            ptr(&s),
            st.layout(),
            mptr(&mut status),
        )
        .unwrap();
        nn::index_status("index_add", status, dims[dim]).unwrap();
        let want = bt.index_add(dim as isize, &i64s(&idx, &[9]), &st).unwrap();
        super::close(&format!("index_add dim {dim}"), &out, &want.to_vec::<f32>().unwrap(), 1e-6);

        // scatter_add: an index with src's shape (3 along dim), values in 0..dims[dim].
        let mut src_dims = dims;
        src_dims[dim] = 3;
        let (s, st) = strided(src_dims, 33 + dim as u64);
        let index = indices(st.elem_count(), dims[dim], 34 + dim as u64);
        let mut out = base.clone();
        nn::scatter_add(
            &EmuLauncher,
            DType::F32,
            mptr(&mut out),
            &dims,
            dim,
            ptr(&index),
            ptr(&s),
            st.layout(),
            mptr(&mut status),
        )
        .unwrap();
        nn::index_status("scatter_add", status, dims[dim]).unwrap();
        let want = bt.scatter_add(dim as isize, &i64s(&index, &src_dims), &st).unwrap();
        super::close(&format!("scatter_add dim {dim}"), &out, &want.to_vec::<f32>().unwrap(), 1e-6);
    }
}

#[test]
fn embedding_backward_is_index_add_over_many_blocks() {
    // Embedding gradient: 700 ids into a 10 x 3 table, so each row gets ~70 atomic adds.
    let (vocab, width, n) = (10, 3, 700);
    let ids = indices(n, vocab, 40);
    let g = data(n * width, 41, -1.0, 1.0);
    let mut out = vec![0f32; vocab * width];
    let mut status = [0u64; 2];
    let gt = cpu(&g, &[n, width]);
    nn::index_add(
        &EmuLauncher,
        DType::F32,
        mptr(&mut out),
        &[vocab, width],
        0,
        ptr(&ids),
        ptr(&g),
        gt.layout(),
        mptr(&mut status),
    )
    .unwrap();
    let table = cpu(&data(vocab * width, 42, -1.0, 1.0), &[vocab, width]).requires_grad_().unwrap();
    let emb = table.embedding(&i64s(&ids, &[n])).unwrap();
    emb.mul(&gt).unwrap().sum_all().unwrap().backward().unwrap();
    super::close("embedding grad", &out, &table.grad().unwrap().to_vec::<f32>().unwrap(), 1e-5);
}

#[test]
fn bad_indices_and_shapes_are_typed_errors() {
    let x = data(12, 50, 0.0, 1.0);
    let t = cpu(&x, &[3, 4]);
    let idx = vec![1i64, 3, -1, 2];
    let mut y = vec![0f32; 16];
    let mut status = [0u64; 2];
    nn::index_select(&EmuLauncher, DType::F32, ptr(&x), t.layout(), 0, ptr(&idx), 4, mptr(&mut y), mptr(&mut status))
        .unwrap();
    // 3 and -1 are both out of range for size 3; whichever a thread saw first is reported.
    let e = nn::index_status("index_select", status, 3).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { op: "index_select", index: 3 | -1, size: 3 }), "{e:?}");
    assert_eq!(&y[..4], &x[4..8], "rows with good indices are still copied");

    let mut status = [0u64; 2];
    let index = vec![0i64, 1, 2, 9, 0, 1, 2, 0];
    let src = data(8, 51, 0.0, 1.0);
    let mut out = vec![0f32; 12];
    let sl = cpu(&src, &[2, 4]);
    nn::scatter_add(
        &EmuLauncher,
        DType::F32,
        mptr(&mut out),
        &[3, 4],
        0,
        ptr(&index),
        ptr(&src),
        sl.layout(),
        mptr(&mut status),
    )
    .unwrap();
    assert!(matches!(nn::index_status("scatter_add", status, 4), Err(Error::IndexOutOfRange { index: 9, .. })));

    assert!(matches!(
        nn::index_add(&EmuLauncher, DType::F16, 0, &[3, 4], 0, 0, 0, t.layout(), 0),
        Err(Error::UnsupportedDType { op: "index_add", .. })
    ));
    assert!(matches!(
        nn::gather(&EmuLauncher, DType::F32, 0, t.layout(), 1, 0, &[2, 4], 0, 0),
        Err(Error::ShapeMismatch { op: "gather", .. })
    ));
    assert!(matches!(
        nn::index_select(&EmuLauncher, DType::F32, 0, t.layout(), 2, 0, 1, 0, 0),
        Err(Error::DimOutOfRange { op: "index_select", dim: 2, rank: 2 })
    ));
    assert!(matches!(
        nn::index_select(&EmuLauncher, DType::F64, 0, t.layout(), 0, 0, 1, 0, 0),
        Err(Error::UnsupportedDType { .. })
    ));
}
