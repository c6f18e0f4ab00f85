//! The CUDA matmul's mapping from Kiln views to cuBLAS calls, run on the emulated device's
//! BLAS (`HostBlas`, the same GemmCall semantics on host memory) and the emulated kernels,
//! against the CPU backend's matmul and a naive f64 triple loop: contiguous, transposed,
//! sliced, copied, batched and broadcast operands, odd and empty sizes, F32/F16/BF16. The
//! calls and copies issued are recorded, so "one strided-batched call, no copy" is checked
//! too. With a GPU and cuBLAS present, a few layouts also run through real cuBLAS.

use super::data;
use kiln::backend::cuda::blas::{self, Blas, Cublas, GemmCall, HostBlas};
use kiln::backend::cuda::emu::EmuLauncher;
use kiln::backend::cuda::launch::{Dim3, Launcher};
use kiln::{DType, Device, Error, Layout, Shape, Tensor};
use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::Mutex;

/// HostBlas, remembering every call.
#[derive(Default)]
struct Recording(Mutex<Vec<GemmCall>>);

impl Blas for Recording {
    fn gemm_strided_batched(&self, dtype: DType, call: &GemmCall) -> kiln::Result<()> {
        self.0.lock().unwrap().push(*call);
        HostBlas.gemm_strided_batched(dtype, call)
    }
}

/// The emulator, remembering the kernels launched.
#[derive(Default)]
struct Kernels(RefCell<Vec<String>>);

impl Launcher for Kernels {
    fn launch(&self, kernel: &str, grid: Dim3, block: Dim3, shared: u32, args: &mut [*mut c_void]) -> kiln::Result<()> {
        self.0.borrow_mut().push(kernel.to_string());
        EmuLauncher.launch(kernel, grid, block, shared, args)
    }
}

/// What one product issued.
#[derive(Debug)]
struct Issued {
    calls: Vec<GemmCall>,
    kernels: Vec<String>,
}

/// A host buffer holding `v` in `dtype` (f32, or f16/bf16 bits), 8-byte aligned.
fn host(v: &[f32], dtype: DType) -> Vec<u64> {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_ne_bytes()).collect(),
        _ => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_ne_bytes()).collect(),
    };
    let mut out = vec![0u64; bytes.len().div_ceil(8).max(1)];
    // SAFETY: `out` holds at least `bytes.len()` bytes; u64 has no invalid bit patterns.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, bytes.len()) };
    out
}

fn read(buf: &[u64], n: usize, dtype: DType) -> Vec<f32> {
    // SAFETY: reading the first n elements of `dtype` of a buffer made for them.
    unsafe {
        match dtype {
            DType::F32 => std::slice::from_raw_parts(buf.as_ptr() as *const f32, n).to_vec(),
            DType::F16 => std::slice::from_raw_parts(buf.as_ptr() as *const u16, n)
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect(),
            _ => std::slice::from_raw_parts(buf.as_ptr() as *const u16, n)
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect(),
        }
    }
}

/// The layouts the tensor op hands the backend: batch dims broadcast to a common shape.
fn broadcast_layouts(a: &Tensor, b: &Tensor) -> (Layout, Layout, Vec<usize>) {
    let (ra, rb) = (a.dims().len(), b.dims().len());
    let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
    let batch =
        Shape::new(a.dims()[..ra - 2].to_vec()).broadcast(&Shape::new(b.dims()[..rb - 2].to_vec()), "t").unwrap();
    let with = |x: usize, y: usize| Shape::new(batch.dims().iter().copied().chain([x, y]).collect());
    let out = with(m, n).dims().to_vec();
    (a.layout().broadcast_as(&with(m, k)), b.layout().broadcast_as(&with(k, n)), out)
}

/// `a @ b` (views over host copies of `av` / `bv`) on the emulated device, checked against
/// the CPU tensor matmul and a naive f64 loop. `view_a` / `view_b` turn the base tensor into
/// the view under test. Returns what was issued.
fn product(
    what: &str,
    dtype: DType,
    (av, ad): (&[f32], &[usize]),
    view_a: impl Fn(Tensor) -> Tensor,
    (bv, bd): (&[f32], &[usize]),
    view_b: impl Fn(Tensor) -> Tensor,
) -> Issued {
    // The first elements of each data slice form the base tensor.
    let (av, bv) = (&av[..ad.iter().product()], &bv[..bd.iter().product()]);
    let base = |v: &[f32], d: &[usize]| Tensor::from_vec(v.to_vec(), d, Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    let (ta, tb) = (view_a(base(av, ad)), view_b(base(bv, bd)));
    let (ha, hb) = (host(av, dtype), host(bv, dtype));
    let (la, lb, out_dims) = broadcast_layouts(&ta, &tb);
    let count: usize = out_dims.iter().product();
    // C starts as NaN: every element must be written, and beta = 0 must not read it.
    let mut hc = host(&vec![f32::NAN; count], dtype);
    let (rec, ks) = (Recording::default(), Kernels::default());
    let mut scratch_bufs: Vec<Vec<u64>> = Vec::new();
    let mut scratch = |bytes: usize| {
        let v = vec![u64::MAX; bytes.div_ceil(8).max(1)]; // NaN-ish garbage until written
        let p = v.as_ptr() as u64;
        scratch_bufs.push(v);
        Ok(p)
    };
    blas::matmul(
        &rec,
        &ks,
        &mut scratch,
        dtype,
        ha.as_ptr() as u64,
        &la,
        hb.as_ptr() as u64,
        &lb,
        hc.as_mut_ptr() as u64,
    )
    .unwrap_or_else(|e| panic!("{what} {dtype:?}: {e}"));
    let got = read(&hc, count, dtype);

    let want_cpu = ta.matmul(&tb).unwrap();
    assert_eq!(want_cpu.dims(), &out_dims[..], "{what}");
    let want_cpu = want_cpu.to_vec::<f32>().unwrap();
    let (want, scale) = naive(&ta, &tb, &out_dims);
    // Rounding of the result (half types) plus f32 accumulation, relative to sum |a||b|.
    let tol = match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 2e-3,
        _ => 1.6e-2,
    };
    for i in 0..count {
        let bound = tol * (scale[i] as f32 + 1e-6);
        assert!(
            (got[i] as f64 - want[i]).abs() <= bound as f64,
            "{what} {dtype:?}[{i}]: got {}, naive {}",
            got[i],
            want[i]
        );
        assert!((got[i] - want_cpu[i]).abs() <= bound, "{what} {dtype:?}[{i}]: got {}, CPU {}", got[i], want_cpu[i]);
    }
    let calls = rec.0.into_inner().unwrap();
    Issued { calls, kernels: ks.0.into_inner() }
}

/// Naive f64 product of the broadcast views, and sum |a_ip * b_pj| per element (the scale
/// of rounding errors).
fn naive(a: &Tensor, b: &Tensor, out: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let r = out.len();
    let k = a.dims()[a.dims().len() - 1];
    let (m, n) = (out[r - 2], out[r - 1]);
    let mut ad = out.to_vec();
    ad[r - 1] = k;
    let mut bd = out.to_vec();
    bd[r - 2] = k;
    let av = a.broadcast_to(ad).unwrap().to_vec::<f32>().unwrap();
    let bv = b.broadcast_to(bd).unwrap().to_vec::<f32>().unwrap();
    let batch: usize = out[..r - 2].iter().product();
    let (mut c, mut s) = (vec![0f64; batch * m * n], vec![0f64; batch * m * n]);
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let v = av[z * m * k + i * k + p] as f64 * bv[z * k * n + p * n + j] as f64;
                    c[z * m * n + i * n + j] += v;
                    s[z * m * n + i * n + j] += v.abs();
                }
            }
        }
    }
    (c, s)
}

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn id(t: Tensor) -> Tensor {
    t
}

fn t(x: Tensor) -> Tensor {
    x.transpose(-1, -2).unwrap()
}

#[test]
fn two_d_products_use_transpose_flags_never_copies() {
    let (m, k, n) = (7, 33, 65);
    let a = data(m * k, 1, -1.0, 1.0);
    let b = data(k * n, 2, -1.0, 1.0);
    for dt in DTYPES {
        // (name, a view, b view, cuBLAS trans_a (Kiln b transposed?), trans_b (Kiln a transposed?))
        let i = product("contiguous", dt, (&a, &[m, k]), id, (&b, &[k, n]), id);
        assert_eq!(i.calls.len(), 1);
        let c = i.calls[0];
        assert!(i.kernels.is_empty(), "{:?}", i.kernels);
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS's m is n, its A is Kiln's b.
        assert_eq!(
            (c.trans_a, c.trans_b, c.m, c.n, c.k, c.lda, c.ldb, c.ldc, c.batch),
            (false, false, n, m, k, n, k, n, 1)
        );

        let i = product("transposed a", dt, (&a, &[k, m]), t, (&b, &[k, n]), id);
        assert!(i.kernels.is_empty());
        assert_eq!((i.calls[0].trans_a, i.calls[0].trans_b, i.calls[0].ldb), (false, true, m));

        let i = product("transposed b", dt, (&a, &[m, k]), id, (&b, &[n, k]), t);
        assert!(i.kernels.is_empty());
        assert_eq!((i.calls[0].trans_a, i.calls[0].trans_b, i.calls[0].lda), (true, false, k));

        let i = product("both transposed", dt, (&a, &[k, m]), t, (&b, &[n, k]), t);
        assert!(i.kernels.is_empty());
        assert_eq!((i.calls[0].trans_a, i.calls[0].trans_b), (true, true));
    }
}

#[test]
fn sliced_and_offset_views_use_their_row_stride_as_leading_dim() {
    let (m, k, n) = (7, 33, 65);
    let a = data(10 * 40, 3, -1.0, 1.0);
    let b = data(40 * 70, 4, -1.0, 1.0);
    for dt in DTYPES {
        // a: rows 2..9, cols 3..36 of a [10, 40] matrix (offset 83, ld 40).
        let i = product(
            "sliced",
            dt,
            (&a, &[10, 40]),
            |x| x.narrow(0, 2, m).unwrap().narrow(1, 3, k).unwrap(),
            (&b, &[40, 70]),
            |x| x.narrow(0, 1, k).unwrap().narrow(1, 5, n).unwrap(),
        );
        assert!(i.kernels.is_empty());
        assert_eq!((i.calls[0].lda, i.calls[0].ldb), (70, 40));
        // Sliced and transposed: a = [40, 10]ᵀ sliced, b = [70, 40]ᵀ sliced.
        let i = product(
            "sliced transposed",
            dt,
            (&a, &[40, 10]),
            |x| t(x).narrow(0, 1, m).unwrap().narrow(1, 4, k).unwrap(),
            (&b, &[70, 40]),
            |x| t(x).narrow(0, 2, k).unwrap().narrow(1, 3, n).unwrap(),
        );
        assert!(i.kernels.is_empty());
        assert_eq!((i.calls[0].trans_a, i.calls[0].trans_b, i.calls[0].lda, i.calls[0].ldb), (true, true, 40, 10));
    }
}

#[test]
fn views_with_no_unit_stride_are_copied_first() {
    let (m, k, n) = (7, 33, 5);
    // a: every other element of a [7, 66] matrix (strides [66, 2]); b: the column picked out
    // of a [33, 5, 3] tensor (strides [15, 3]).
    let a = data(m * 2 * k, 5, -1.0, 1.0);
    let b = data(4 * k * 7 * 3, 6, -1.0, 1.0);
    let pick_a = |x: Tensor| x.reshape([m, k, 2]).unwrap().narrow(2, 1, 1).unwrap().squeeze(2).unwrap();
    let pick_b = |x: Tensor| x.narrow(2, 2, 1).unwrap().squeeze(2).unwrap();
    for dt in DTYPES {
        let suffix = match dt {
            DType::F32 => "f32",
            DType::F16 => "f16",
            _ => "bf16",
        };
        let copy = format!("copy_{suffix}_{suffix}");
        let i = product("strided a", dt, (&a, &[m, 2 * k]), pick_a, (&b, &[k, n * 3]), |x| x.narrow(1, 0, n).unwrap());
        assert_eq!(i.kernels, vec![copy.clone()]);
        assert_eq!(i.calls.len(), 1);
        let i = product("strided both", dt, (&a, &[m, 2 * k]), pick_a, (&b, &[k, n, 3]), pick_b);
        assert_eq!(i.kernels, vec![copy.clone(), copy.clone()]);
        // A row broadcast (stride 0, ld 0 < k) is not a cuBLAS matrix either.
        let i = product("row broadcast", dt, (&a[..k], &[1, k]), |x| x.expand([m, k]).unwrap(), (&b, &[k, n * 3]), id);
        assert_eq!(i.kernels, vec![copy.clone()]);
        // A copied batched operand keeps its broadcast batch dim broadcast: the copy holds
        // one matrix, not 4.
        let i = product(
            "strided broadcast",
            dt,
            (&a, &[m, 2 * k]),
            |x| pick_a(x).unsqueeze(0).unwrap().expand([4, m, k]).unwrap(),
            (&b, &[4, k, 7]),
            id,
        );
        assert_eq!(i.kernels, vec![copy.clone()]);
    }
}

#[test]
fn batches_collapse_to_one_strided_call_with_broadcast_stride_zero() {
    let (m, k, n) = (7, 33, 9);
    let a = data(6 * m * k, 7, -1.0, 1.0);
    let b = data(6 * k * n, 8, -1.0, 1.0);
    for dt in DTYPES {
        // 3-D, both batched.
        let i = product("3-d", dt, (&a, &[4, m, k]), id, (&b, &[4, k, n]), id);
        assert_eq!(i.calls.len(), 1);
        let c = i.calls[0];
        assert_eq!((c.batch, c.stride_a, c.stride_b, c.stride_c), (4, (k * n) as i64, (m * k) as i64, (m * n) as i64));
        // 4-D [2, 3] batch: merges into one dim of 6.
        let i = product("4-d", dt, (&a, &[2, 3, m, k]), id, (&b, &[2, 3, k, n]), id);
        assert_eq!((i.calls.len(), i.calls[0].batch), (1, 6));
        // a broadcast over the batch: cuBLAS's B (Kiln's a) gets stride 0.
        let i = product("broadcast a", dt, (&a[..m * k], &[m, k]), id, (&b, &[6, k, n]), id);
        assert_eq!(i.calls.len(), 1);
        assert_eq!((i.calls[0].batch, i.calls[0].stride_b, i.calls[0].stride_a), (6, 0, (k * n) as i64));
        // 4-D with a broadcast over both batch dims ([1, 1] -> [2, 3]): still one call.
        let i = product("broadcast a 4-d", dt, (&a[..m * k], &[1, 1, m, k]), id, (&b, &[2, 3, k, n]), id);
        assert_eq!((i.calls.len(), i.calls[0].batch, i.calls[0].stride_b), (1, 6, 0));
        // b broadcast: the batch of a folds into m, a single plain GEMM of 6*m rows.
        let i = product("broadcast b", dt, (&a, &[2, 3, m, k]), id, (&b[..k * n], &[k, n]), id);
        assert_eq!(i.calls.len(), 1);
        assert_eq!((i.calls[0].batch, i.calls[0].n, i.calls[0].m), (1, 6 * m, n));
        // b broadcast along the inner batch dim only: that dim folds into m, the outer one is
        // the strided batch.
        let i = product("broadcast b inner", dt, (&a, &[2, 3, m, k]), id, (&b[..2 * k * n], &[2, 1, k, n]), id);
        assert_eq!(i.calls.len(), 1);
        let c = i.calls[0];
        assert_eq!(
            (c.batch, c.n, c.stride_b, c.stride_a, c.stride_c),
            (2, 3 * m, (3 * m * k) as i64, (k * n) as i64, (3 * m * n) as i64)
        );
        // b broadcast, a transposed per batch: no fold possible, one call with stride 0.
        let i = product("broadcast b, a transposed", dt, (&a, &[6, k, m]), t, (&b[..k * n], &[k, n]), id);
        assert_eq!(i.calls.len(), 1);
        assert_eq!((i.calls[0].batch, i.calls[0].stride_a, i.calls[0].trans_b), (6, 0, true));
        // m = 1 with b broadcast: the rows of a stack with their batch stride as ld.
        let i = product("broadcast b, m = 1", dt, (&a, &[6, 1, k]), id, (&b[..k * n], &[k, n]), id);
        assert_eq!((i.calls.len(), i.calls[0].batch, i.calls[0].n, i.calls[0].ldb), (1, 1, 6, k));
        assert!(i.kernels.is_empty());
    }
}

#[test]
fn batches_that_do_not_merge_loop_over_the_smaller_dims() {
    let (m, k, n) = (5, 6, 7);
    let a = data(3 * 5 * m * k, 9, -1.0, 1.0);
    let b = data(4 * 5 * k * n, 10, -1.0, 1.0);
    for dt in DTYPES {
        // [3, 1] x [1, 4] -> [3, 4]: a steps along dim 0 only, b along dim 1 only.
        let i =
            product("outer broadcast", dt, (&a[..3 * m * k], &[3, 1, m, k]), id, (&b[..4 * k * n], &[1, 4, k, n]), id);
        assert_eq!(i.calls.len(), 3, "one call of 4 per row of the [3, 4] batch");
        assert!(i.calls.iter().all(|c| c.batch == 4 && c.stride_b == 0));
        // Permuted batch dims: a is [5, 3] in memory, viewed [3, 5].
        let i = product(
            "permuted batch",
            dt,
            (&a, &[5, 3, m, k]),
            |x| x.permute(&[1, 0, 2, 3]).unwrap(),
            (&b[..3 * 5 * k * n], &[3, 5, k, n]),
            id,
        );
        assert_eq!(i.calls.len(), 3);
        assert!(i.calls.iter().all(|c| c.batch == 5 && c.stride_b == (3 * m * k) as i64));
        // Three non-merging dims, including a transposed operand.
        let i = product(
            "3 batch dims",
            dt,
            (&a[..2 * 3 * m * k], &[3, 2, k, m]),
            |x| t(x.permute(&[1, 0, 2, 3]).unwrap()).unsqueeze(0).unwrap().expand([2, 2, 3, m, k]).unwrap(),
            (&b, &[2, 2, 3, k, n]),
            |x| x.narrow(0, 0, 2).unwrap(),
        );
        assert!(i.kernels.is_empty());
        assert!(i.calls.len() > 1);
    }
}

#[test]
fn odd_sizes_match() {
    let sizes = [1, 7, 33, 65];
    let a = data(65 * 65 * 2, 11, -1.0, 1.0);
    let b = data(65 * 65 * 2, 12, -1.0, 1.0);
    for &m in &sizes {
        for &k in &sizes {
            for &n in &sizes {
                let what = format!("{m}x{k}x{n}");
                product(&what, DType::F32, (&a[..m * k], &[m, k]), id, (&b[..k * n], &[k, n]), id);
                product(&what, DType::F32, (&a[..m * k], &[k, m]), t, (&b[..k * n], &[n, k]), t);
                product(&what, DType::F16, (&a[..2 * m * k], &[2, m, k]), id, (&b[..k * n], &[n, k]), t);
            }
        }
    }
}

#[test]
fn vectors_reshaped_by_the_tensor_op_need_no_copy() {
    // What a 1-D operand becomes before it reaches the backend: [k] -> [1, k] on the left,
    // [k] -> [k, 1] on the right, here from strided vectors (a column of a matrix).
    let (k, n) = (33, 9);
    let v = data(k * 3, 13, -1.0, 1.0);
    let w = data(k * n, 14, -1.0, 1.0);
    let col = |x: Tensor| x.narrow(1, 1, 1).unwrap().squeeze(1).unwrap();
    for dt in DTYPES {
        let i = product("vector @ matrix", dt, (&v, &[k, 3]), |x| col(x).unsqueeze(0).unwrap(), (&w, &[k, n]), id);
        assert!(i.kernels.is_empty());
        let i = product("matrix @ vector", dt, (&w, &[n, k]), id, (&v, &[k, 3]), |x| col(x).unsqueeze(1).unwrap());
        assert!(i.kernels.is_empty());
        let i = product(
            "vector @ vector",
            dt,
            (&v, &[k, 3]),
            |x| col(x).unsqueeze(0).unwrap(),
            (&w, &[k, n]),
            |x| x.narrow(1, 4, 1).unwrap(),
        );
        assert!(i.kernels.is_empty());
        assert_eq!(i.calls.len(), 1);
    }
}

#[test]
fn empty_products_write_nothing_and_k_zero_gives_zeros() {
    let a = data(64, 15, -1.0, 1.0);
    for dt in DTYPES {
        // m = 0, n = 0, batch = 0: nothing issued at all.
        for (ad, bd) in [([0, 5], [5, 3]), ([3, 5], [5, 0])] {
            let i = product("empty", dt, (&a, &ad), id, (&a, &bd), id);
            assert!(i.calls.is_empty() && i.kernels.is_empty());
        }
        let i = product("empty batch", dt, (&[], &[0, 2, 3]), id, (&a, &[3, 4]), id);
        assert!(i.calls.is_empty() && i.kernels.is_empty());
        // k = 0: C (NaN before) must be zeros; no GEMM.
        let i = product("k = 0", dt, (&[], &[3, 0]), id, (&[], &[0, 4]), id);
        assert!(i.calls.is_empty());
        assert!(i.kernels.contains(&"fill_f32".to_string()));
        let i = product("k = 0 batched", dt, (&[], &[2, 3, 0]), id, (&[], &[2, 0, 5]), id);
        assert!(i.calls.is_empty());
    }
}

fn call(m: usize, n: usize, k: usize, buf: &mut [f32]) -> GemmCall {
    let p = buf.as_mut_ptr() as u64;
    GemmCall {
        trans_a: false,
        trans_b: false,
        m,
        n,
        k,
        alpha: 1.0,
        a: p,
        lda: m.max(1),
        stride_a: 0,
        b: p,
        ldb: k.max(1),
        stride_b: 0,
        beta: 0.0,
        c: p,
        ldc: m.max(1),
        stride_c: (m * n) as i64,
        batch: 1,
    }
}

#[test]
fn host_blas_rejects_what_cublas_rejects() {
    let mut buf = vec![0f32; 4096];
    let ok = call(4, 5, 6, &mut buf);
    let mut c_out = vec![0f32; 20];
    let good = GemmCall { c: c_out.as_mut_ptr() as u64, ..ok };
    HostBlas.gemm_strided_batched(DType::F32, &good).unwrap();
    let bad = [
        ("lda < m", GemmCall { lda: 3, ..good }),
        ("lda < k when A is transposed", GemmCall { trans_a: true, lda: 4, ..good }),
        ("ldb < k", GemmCall { ldb: 5, ..good }),
        ("ldb < n when B is transposed", GemmCall { trans_b: true, ldb: 4, ..good }),
        ("ldc < m", GemmCall { ldc: 3, ..good }),
        ("lda = 0 with m = 0", GemmCall { m: 0, lda: 0, ..good }),
        ("m beyond int", GemmCall { m: 1 << 31, lda: 1 << 31, ldc: 1 << 31, ..good }),
        ("batch beyond int", GemmCall { batch: 1 << 31, ..good }),
        ("overlapping C matrices", GemmCall { batch: 2, stride_c: 19, ..good }),
        ("C stride 0", GemmCall { batch: 2, stride_c: 0, ..good }),
        ("null C", GemmCall { c: 0, ..good }),
    ];
    for (what, c) in bad {
        let e = HostBlas.gemm_strided_batched(DType::F32, &c);
        assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{what}: {e:?}");
    }
    for dt in [DType::F64, DType::I64] {
        let e = HostBlas.gemm_strided_batched(dt, &good);
        assert!(matches!(e, Err(Error::UnsupportedDType { .. })), "{dt:?}: {e:?}");
    }
    // What BLAS allows: empty products, a batch of 1 with any C stride, alpha/beta scaling.
    HostBlas.gemm_strided_batched(DType::F32, &GemmCall { m: 0, batch: 3, stride_c: 0, ..good }).unwrap();
    HostBlas.gemm_strided_batched(DType::F32, &GemmCall { stride_c: 0, ..good }).unwrap();
    let (a, b, mut c) = (vec![2f32; 6], vec![3f32; 6], vec![1f32; 1]);
    let dot = GemmCall {
        m: 1,
        n: 1,
        lda: 1,
        ldb: 6,
        ldc: 1,
        a: a.as_ptr() as u64,
        b: b.as_ptr() as u64,
        c: c.as_mut_ptr() as u64,
        alpha: 0.5,
        beta: 2.0,
        ..good
    };
    HostBlas.gemm_strided_batched(DType::F32, &dot).unwrap();
    assert_eq!(c[0], 0.5 * 36.0 + 2.0);
}

#[test]
fn cublas_without_a_driver_or_library_is_an_error() {
    let p = kiln::backend::cuda::probe::probe();
    if p.driver.found.is_some() && p.cublas.found.is_some() && kiln::backend::cuda::device_count() > 0 {
        eprintln!("skipped: a GPU and cuBLAS are present (see cublas_matches_the_host_blas_on_a_gpu)");
        return;
    }
    for tf32 in [false, true] {
        let e = Cublas::new(0, tf32);
        assert!(matches!(e, Err(Error::DeviceUnavailable { .. })), "{e:?}");
    }
}

/// A launcher for layouts that need no kernel (the GPU launch path is not part of this test).
struct NoKernels;
impl Launcher for NoKernels {
    fn launch(&self, kernel: &str, _: Dim3, _: Dim3, _: u32, _: &mut [*mut c_void]) -> kiln::Result<()> {
        panic!("{kernel}: no kernel expected for these layouts")
    }
}

#[test]
fn cublas_matches_the_host_blas_on_a_gpu() {
    let p = kiln::backend::cuda::probe::probe();
    if p.driver.found.is_none() || p.cublas.found.is_none() || kiln::backend::cuda::device_count() == 0 {
        eprintln!("skipped: no GPU with cuBLAS");
        return;
    }
    let (m, k, n) = (33, 65, 7);
    let a = data(4 * m * k, 16, -1.0, 1.0);
    let b = data(4 * k * n, 17, -1.0, 1.0);
    for tf32 in [false, true] {
        let blas = Cublas::new(0, tf32).unwrap();
        let stream = blas.stream().clone();
        let (da, db) = (stream.clone_htod(&a).unwrap(), stream.clone_htod(&b).unwrap());
        // Batched, transposed a, broadcast b (fold), both transposed and batched.
        let cases: [(Layout, Layout); 4] = [
            (Layout::contiguous([4, m, k].into()), Layout::contiguous([4, k, n].into())),
            (Layout::contiguous([4, k, m].into()).permute(&[0, 2, 1]), Layout::contiguous([4, k, n].into())),
            (Layout::contiguous([4, m, k].into()), Layout::contiguous([k, n].into()).broadcast_as(&[4, k, n].into())),
            (
                Layout::contiguous([4, k, m].into()).permute(&[0, 2, 1]),
                Layout::contiguous([4, n, k].into()).permute(&[0, 2, 1]),
            ),
        ];
        for (la, lb) in cases {
            let dc = stream.alloc_zeros::<f32>(4 * m * n).unwrap();
            {
                use cudarc::driver::DevicePtr;
                let (pa, _ga) = da.device_ptr(&stream);
                let (pb, _gb) = db.device_ptr(&stream);
                let (pc, _gc) = dc.device_ptr(&stream);
                let mut no_scratch = |_: usize| -> kiln::Result<u64> { panic!("no scratch expected") };
                blas::matmul(&blas, &NoKernels, &mut no_scratch, DType::F32, pa, &la, pb, &lb, pc).unwrap();
            }
            let got = stream.clone_dtoh(&dc).unwrap();
            let mut want = vec![0f32; 4 * m * n];
            let mut none = |_: usize| -> kiln::Result<u64> { panic!("no scratch expected") };
            let (ha, hb) = (a.as_ptr() as u64, b.as_ptr() as u64);
            blas::matmul(&HostBlas, &NoKernels, &mut none, DType::F32, ha, &la, hb, &lb, want.as_mut_ptr() as u64)
                .unwrap();
            let tol = if tf32 { 1e-3 } else { 1e-5 };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= tol * (1.0 + w.abs()) * k as f32, "tf32 {tf32} {la:?} [{i}]: {g} vs {w}");
            }
        }
    }
}

/// HostBlas against the GemmCall definition written out independently: op(A) and op(B) are
/// chosen logical matrices, stored column-major (transposed when the flag says so) with
/// padded leading dims and a batch stride, and C_i = alpha op(A_i) op(B_i) + beta C_i.
#[test]
fn host_blas_follows_the_column_major_definition() {
    let (m, n, k, batch) = (3, 4, 5, 2);
    let opa = |i: usize, r: usize, p: usize| (1 + i * 100 + r * 10 + p) as f32 * 0.01;
    let opb = |i: usize, p: usize, j: usize| (2 + i * 50 + p * 7 + j) as f32 * 0.02 - 1.0;
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        // Stored shape (rows x cols, column-major) of A and B, one row of padding in ld.
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (a_rows + 1, b_rows + 1, m + 2);
        let (sa, sb, sc) = (lda * a_cols + 3, ldb * b_cols, ldc * n + 1);
        let mut a = vec![f32::NAN; sa * batch];
        let mut b = vec![f32::NAN; sb * batch];
        let mut c = vec![0.5f32; sc * batch];
        for i in 0..batch {
            for r in 0..m {
                for p in 0..k {
                    let at = if ta { p + r * lda } else { r + p * lda };
                    a[i * sa + at] = opa(i, r, p);
                }
            }
            for p in 0..k {
                for j in 0..n {
                    let at = if tb { j + p * ldb } else { p + j * ldb };
                    b[i * sb + at] = opb(i, p, j);
                }
            }
        }
        let call = GemmCall {
            trans_a: ta,
            trans_b: tb,
            m,
            n,
            k,
            alpha: 1.5,
            a: a.as_ptr() as u64,
            lda,
            stride_a: sa as i64,
            b: b.as_ptr() as u64,
            ldb,
            stride_b: sb as i64,
            beta: -2.0,
            c: c.as_mut_ptr() as u64,
            ldc,
            stride_c: sc as i64,
            batch,
        };
        HostBlas.gemm_strided_batched(DType::F32, &call).unwrap();
        for i in 0..batch {
            for r in 0..ldc {
                for j in 0..n {
                    let got = c[i * sc + r + j * ldc];
                    let want = if r < m {
                        1.5 * (0..k).map(|p| opa(i, r, p) as f64 * opb(i, p, j) as f64).sum::<f64>() - 1.0
                    } else {
                        0.5 // padding rows untouched
                    };
                    assert!((got as f64 - want).abs() < 1e-5, "ta {ta} tb {tb} batch {i} ({r}, {j}): {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn matmul_refuses_bad_shapes_and_dtypes() {
    let x = vec![0f32; 64];
    let p = x.as_ptr() as u64;
    let l = |d: &[usize]| Layout::contiguous(Shape::new(d.to_vec()));
    let mut none = |_: usize| -> kiln::Result<u64> { panic!("no scratch expected") };
    let mm = |dt: DType, la: &Layout, lb: &Layout, none: &mut dyn FnMut(usize) -> kiln::Result<u64>| {
        blas::matmul(&HostBlas, &NoKernels, none, dt, p, la, p, lb, p)
    };
    for (la, lb) in
        [(l(&[2, 3]), l(&[4, 2])), (l(&[2, 2, 3]), l(&[3, 3, 2])), (l(&[3]), l(&[3])), (l(&[2, 3]), l(&[1, 3, 2]))]
    {
        let e = mm(DType::F32, &la, &lb, &mut none);
        assert!(matches!(e, Err(Error::ShapeMismatch { .. })), "{la:?} {lb:?}: {e:?}");
    }
    let e = mm(DType::F64, &l(&[2, 3]), &l(&[3, 2]), &mut none);
    assert!(matches!(e, Err(Error::UnsupportedDType { .. })), "{e:?}");
}
