//! The CUDA side without a GPU: every kernel compiles with NVRTC for compute_80 and
//! compute_90, the emulator holds exactly the kernels NVRTC sees, and each kernel, run on the
//! emulated device through the same launch path a GPU uses, matches the CPU reference.
//! With no driver, asking for a GPU is an error and the CPU is chosen.

use kiln::backend::cuda::{emu::EmuLauncher, kernels, nvrtc, probe};
use kiln::backend::{BinaryOp, ReduceOp, UnaryOp};
use kiln::{DType, Device, Layout, Shape, Tensor};

mod alloc;
mod blas;
mod conv;
mod index;
mod launch_shape;
mod ops;
mod ptx_cache;
mod train;

fn nvrtc_required() -> bool {
    std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// PTX `.entry` names of a compiled source.
fn entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            l.trim_start().strip_prefix(".visible .entry ").or_else(|| l.trim_start().strip_prefix(".entry "))
        })
        .map(|r| r.split(['(', ' ']).next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_is_in_the_emulator() {
    if !nvrtc::available() || nvrtc::include_dirs().is_empty() {
        assert!(
            !nvrtc_required(),
            "KILN_REQUIRE_NVRTC=1 but NVRTC or its headers were not found: {:?}",
            probe::probe()
        );
        eprintln!("skipped: NVRTC not found (pip install nvidia-cuda-nvrtc nvidia-cuda-runtime, then set VIRTUAL_ENV)");
        return;
    }
    let mut emu = kiln::backend::cuda::emu::kernel_names();
    emu.sort();
    let mut all = Vec::new();
    for (file, src) in kernels::SOURCES {
        for arch in ["compute_80", "compute_90"] {
            let ptx = nvrtc::compile(file, src, arch).unwrap_or_else(|e| panic!("{file} for {arch}: {e}"));
            let names = entries(&ptx);
            assert!(!names.is_empty(), "{file}: no kernels in the PTX");
            if arch == "compute_90" {
                all.extend(names);
            }
        }
    }
    all.sort();
    assert_eq!(all, emu, "the emulator registers exactly the kernels NVRTC compiles");
}

/// The rescue path for a driver older than NVRTC (it refuses newer PTX): each file also
/// compiles to the device's own machine code, an ELF image that names every kernel.
#[test]
fn every_kernel_compiles_to_a_cubin_for_sm_90() {
    use kiln::backend::cuda::gpu::{compile_cubin, compile_ptx};
    if !nvrtc::available() || nvrtc::include_dirs().is_empty() {
        assert!(!nvrtc_required(), "KILN_REQUIRE_NVRTC=1 but NVRTC or its headers were not found");
        return;
    }
    for (file, src) in kernels::SOURCES {
        let cubin = compile_cubin(file, src, "sm_90").unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "{file}: not an ELF image");
        for name in entries(&compile_ptx(file, src, "compute_90").unwrap()) {
            let found =
                cubin.windows(name.len() + 1).any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
            assert!(found, "{file}: kernel {name} not in the CUBIN's symbols");
        }
    }
    let e = compile_cubin("x.cu", kernels::SOURCES[0].1, "compute_90").unwrap_err();
    assert!(e.to_string().contains("real architecture"), "{e}");
}

#[test]
fn without_a_driver_cuda_is_an_error_and_the_cpu_is_best() {
    if probe::probe().driver.found.is_some() {
        eprintln!("skipped: a CUDA driver is present");
        return;
    }
    assert!(matches!(Device::cuda(0), Err(kiln::Error::DeviceUnavailable { .. })));
    assert_eq!(Device::best(), Device::Cpu);
    assert_eq!(kiln::backend::cuda::device_count(), 0);
}

/// Host buffers standing in for device memory: the emulator's device pointers.
fn ptr<T>(v: &[T]) -> u64 {
    v.as_ptr() as u64
}

/// A host buffer the kernel writes.
fn mptr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

fn data(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut g = kiln::Generator::new(seed);
    (0..n).map(|_| lo + (hi - lo) * g.uniform() as f32).collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: emulated {g}, CPU {w}"
        );
    }
}

fn cpu(v: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), dims, Device::Cpu).unwrap()
}

#[test]
fn unary_kernels_match_the_cpu_on_strided_views() {
    let ops = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Abs,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluGrad,
        UnaryOp::Silu,
        UnaryOp::SiluGrad,
        UnaryOp::Sign,
        UnaryOp::Step,
        UnaryOp::Recip,
        UnaryOp::Sqr,
        UnaryOp::Affine { mul: 1.5, add: -0.25 },
        UnaryOp::Powf(1.7),
    ];
    // 37 x 29 (not a multiple of the block), read through a transposed view.
    let (r, c) = (37, 29);
    let x = data(r * c, 1, 0.1, 3.0);
    let view = Layout::contiguous(Shape::new(vec![r, c])).permute(&[1, 0]);
    let xt = cpu(&x, &[r, c]).t().unwrap();
    for op in ops {
        let mut y = vec![0f32; r * c];
        kernels::unary(&EmuLauncher, DType::F32, op, ptr(&x), &view, ptr(&y)).unwrap();
        let want = xt.contiguous().unwrap().unary_for_test(op);
        close(&format!("{op:?}"), &y, &want, 2e-6);
        y.fill(0.0);
    }
}

/// The CPU reference of a unary op (through the public tensor methods).
trait UnaryRef {
    fn unary_for_test(&self, op: UnaryOp) -> Vec<f32>;
}
impl UnaryRef for Tensor {
    fn unary_for_test(&self, op: UnaryOp) -> Vec<f32> {
        let t = match op {
            UnaryOp::Neg => self.neg(),
            UnaryOp::Exp => self.exp(),
            UnaryOp::Log => self.log(),
            UnaryOp::Sqrt => self.sqrt(),
            UnaryOp::Abs => self.abs(),
            UnaryOp::Tanh => self.tanh(),
            UnaryOp::Sigmoid => self.sigmoid(),
            UnaryOp::Relu => self.relu(),
            UnaryOp::Gelu => self.gelu(),
            UnaryOp::Silu => self.silu(),
            UnaryOp::Sign => self.sign(),
            UnaryOp::Recip => self.recip(),
            UnaryOp::Sqr => self.sqr(),
            UnaryOp::Affine { mul, add } => self.affine(mul, add),
            UnaryOp::Powf(p) => self.powf(p),
            // Gradient helpers: the closed forms, on the host in f64.
            UnaryOp::Step => return self.to_vec::<f32>().unwrap().iter().map(|&v| (v > 0.0) as u8 as f32).collect(),
            UnaryOp::GeluGrad => {
                return self
                    .to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .map(|&v| {
                        let cdf = 0.5 * (1.0 + libm::erf(v / 2f64.sqrt()));
                        (cdf + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()) as f32
                    })
                    .collect()
            }
            UnaryOp::SiluGrad => {
                return self
                    .to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .map(|&v| {
                        let s = 1.0 / (1.0 + (-v).exp());
                        (s * (1.0 + v * (1.0 - s))) as f32
                    })
                    .collect()
            }
        };
        t.unwrap().to_vec::<f32>().unwrap()
    }
}

#[test]
fn binary_kernels_match_the_cpu_with_broadcast() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::ReluBackward,
    ];
    // a: [5, 1, 7] broadcast against b: [3, 1] (transposed storage) -> [5, 3, 7].
    let a = data(35, 2, 0.5, 2.0);
    let mut b = data(3, 3, 0.5, 2.0);
    b[1] = a[3]; // a tie, for the comparisons
    let out_shape = Shape::new(vec![5, 3, 7]);
    let la = Layout::contiguous(Shape::new(vec![5, 1, 7])).broadcast_as(&out_shape);
    let lb = Layout::contiguous(Shape::new(vec![1, 3])).permute(&[1, 0]).broadcast_as(&out_shape);
    let (ta, tb) = (cpu(&a, &[5, 1, 7]), cpu(&b, &[1, 3]).t().unwrap());
    for op in ops.into_iter().filter(|&o| o != BinaryOp::ReluBackward) {
        let out = vec![0f32; 105];
        kernels::binary(&EmuLauncher, DType::F32, op, ptr(&a), &la, ptr(&b), &lb, ptr(&out)).unwrap();
        let want = match op {
            BinaryOp::Add => ta.add(&tb),
            BinaryOp::Sub => ta.sub(&tb),
            BinaryOp::Mul => ta.mul(&tb),
            BinaryOp::Div => ta.div(&tb),
            BinaryOp::Pow => ta.pow(&tb),
            BinaryOp::Maximum => ta.maximum(&tb),
            BinaryOp::Minimum => ta.minimum(&tb),
            BinaryOp::Eq => ta.eq(&tb),
            BinaryOp::Ne => ta.ne(&tb),
            BinaryOp::Lt => ta.lt(&tb),
            BinaryOp::Le => ta.le(&tb),
            BinaryOp::Gt => ta.gt(&tb),
            BinaryOp::Ge => ta.ge(&tb),
            // g where x > 0: b is all positive here, so shift it to get both signs.
            BinaryOp::ReluBackward => unreachable!("checked below with signed inputs"),
        }
        .unwrap();
        assert_eq!(want.dims(), &[5, 3, 7]);
        close(&format!("{op:?}"), &out, &want.to_vec::<f32>().unwrap(), 1e-6);
    }
}

#[test]
fn relu_backward_kernel_matches_the_cpu_gradient() {
    // The gradient of sum(relu(x) * g) w.r.t. x, on the CPU through autograd, against the
    // fused kernel fed g and x.
    let x = data(300, 6, -1.0, 1.0);
    let g = data(300, 7, -2.0, 2.0);
    let xt = cpu(&x, &[300]).requires_grad_().unwrap();
    xt.relu().unwrap().mul(&cpu(&g, &[300])).unwrap().sum_all().unwrap().backward().unwrap();
    let want = xt.grad().unwrap().to_vec::<f32>().unwrap();
    let l = Layout::contiguous(Shape::new(vec![300]));
    let out = vec![0f32; 300];
    kernels::binary(&EmuLauncher, DType::F32, BinaryOp::ReluBackward, ptr(&g), &l, ptr(&x), &l, ptr(&out)).unwrap();
    close("relu_backward", &out, &want, 0.0);
}

#[test]
fn half_precision_copies_round_like_the_cpu() {
    let x = data(1000, 4, -70000.0, 70000.0);
    let l = Layout::contiguous(Shape::new(vec![1000]));
    for (dt, name) in [(DType::F16, "f16"), (DType::BF16, "bf16")] {
        let half = vec![0u16; 1000];
        kernels::copy(&EmuLauncher, DType::F32, dt, ptr(&x), &l, ptr(&half)).unwrap();
        let back = vec![0f32; 1000];
        kernels::copy(&EmuLauncher, dt, DType::F32, ptr(&half), &l, ptr(&back)).unwrap();
        let want = cpu(&x, &[1000]).to_dtype(dt).unwrap().to_vec::<f32>().unwrap();
        for (i, (g, w)) in back.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits(), "{name}[{i}]: emulated {g}, CPU (half crate) {w}");
        }
    }
}

#[test]
fn row_reductions_and_softmax_match_the_cpu() {
    // Row lengths below, at and above the block size, and not multiples of a warp.
    for (rows, cols) in [(3, 1), (5, 33), (4, 256), (2, 1000)] {
        let x = data(rows * cols, 5, -4.0, 4.0);
        let t = cpu(&x, &[rows, cols]);
        for (op, want) in [
            (ReduceOp::Sum, t.sum(&[1], false)),
            (ReduceOp::Max, t.max(&[1], false)),
            (ReduceOp::Min, t.min(&[1], false)),
        ] {
            let out = vec![0f32; rows];
            kernels::reduce_rows(&EmuLauncher, DType::F32, op, rows, cols, ptr(&x), ptr(&out)).unwrap();
            close(&format!("{op:?} {rows}x{cols}"), &out, &want.unwrap().to_vec::<f32>().unwrap(), 1e-5);
        }
        for log in [false, true] {
            let y = vec![0f32; rows * cols];
            kernels::softmax_rows(&EmuLauncher, DType::F32, log, rows, cols, ptr(&x), ptr(&y)).unwrap();
            let want = if log { t.log_softmax(1) } else { t.softmax(1) }.unwrap().to_vec::<f32>().unwrap();
            close(&format!("softmax log={log} {rows}x{cols}"), &y, &want, 1e-5);
        }
    }
}

#[test]
fn emulator_reports_bad_launches() {
    let x = vec![0f32; 4];
    let l = Layout::contiguous(Shape::new(vec![4]));
    // A dtype with no kernel is a typed error before any launch.
    assert!(matches!(
        kernels::unary(&EmuLauncher, DType::F64, UnaryOp::Neg, ptr(&x), &l, ptr(&x)),
        Err(kiln::Error::UnsupportedDType { .. })
    ));
    let e = kiln::backend::cuda::launch::Launcher::launch(
        &EmuLauncher,
        "no_such_kernel",
        (1, 1, 1),
        (32, 1, 1),
        0,
        &mut [],
    );
    assert!(matches!(e, Err(kiln::Error::Kernel { .. })), "{e:?}");
    // Too few arguments for a real kernel is refused, not run.
    let e = kiln::backend::cuda::launch::Launcher::launch(&EmuLauncher, "fill_f32", (1, 1, 1), (32, 1, 1), 0, &mut []);
    assert!(matches!(e, Err(kiln::Error::InvalidArgument { .. })), "{e:?}");
}
