//! Shared test helpers: random inputs, a finite-difference gradient check, and a tiny naive
//! n-d array that the forward tests use as an independent oracle.

use kiln::{DType, Device, Result, Tensor};

pub const CPU: Device = Device::Cpu;

/// Deterministic pseudo-random values in [lo, hi) from `seed` (independent of Kiln's RNG).
pub fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut g = kiln::Generator::new(seed ^ 0xA5A5_5A5A);
    (0..n).map(|_| lo + (hi - lo) * g.uniform()).collect()
}

/// An F64 leaf with random values in [lo, hi) that requires grad.
pub fn leaf(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed, lo, hi), shape, CPU).unwrap().requires_grad_().unwrap()
}

/// A plain tensor (no grad) of the given dtype with random values.
pub fn rand_t(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed, -1.0, 1.0), shape, CPU).unwrap().to_dtype(dtype).unwrap()
}

pub fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// Asserts |a - b| <= atol + rtol·|b| elementwise, naming the first offender.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: got {g}, want {w} (|diff| {})", (g - w).abs());
    }
}

/// Central finite-difference gradient check in F64. `f` maps the leaves to any tensor; the
/// scalar checked is Σ f(x)·r for a fixed random r, so every output element matters.
pub fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let out = f(inputs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let r = Tensor::from_vec(values(out.elem_count(), 99, -1.0, 1.0), out.shape().clone(), CPU).unwrap();
    for x in inputs {
        x.zero_grad();
    }
    out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    let scalar = |xs: &[Tensor]| -> f64 {
        kiln::no_grad(|| f(xs).unwrap().mul(&r).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
    };
    let eps = 1e-6;
    for (i, x) in inputs.iter().enumerate() {
        let analytic = x.grad().map(|g| vec64(&g)).unwrap_or_else(|| vec![0.0; x.elem_count()]);
        let base = vec64(x);
        let mut numeric = Vec::with_capacity(base.len());
        for j in 0..base.len() {
            let at = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs: Vec<Tensor> = inputs.to_vec();
                xs[i] = Tensor::from_vec(v, x.shape().clone(), CPU).unwrap();
                scalar(&xs)
            };
            numeric.push((at(eps) - at(-eps)) / (2.0 * eps));
        }
        assert_close(&format!("{name}: d/d input {i}"), &analytic, &numeric, 1e-6, 1e-5);
    }
}

/// A naive row-major n-d array of f64: the oracle's data type.
#[derive(Clone, Debug)]
pub struct Nd {
    pub data: Vec<f64>,
    pub shape: Vec<usize>,
}

impl Nd {
    pub fn of(t: &Tensor) -> Nd {
        Nd { data: vec64(t), shape: t.dims().to_vec() }
    }
    pub fn new(shape: &[usize], data: Vec<f64>) -> Nd {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        Nd { data, shape: shape.to_vec() }
    }
    pub fn zeros(shape: &[usize]) -> Nd {
        Nd::new(shape, vec![0.0; shape.iter().product()])
    }
    pub fn offset(&self, idx: &[usize]) -> usize {
        idx.iter().zip(&self.shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[self.offset(idx)]
    }
    pub fn set(&mut self, idx: &[usize], v: f64) {
        let o = self.offset(idx);
        self.data[o] = v;
    }
    /// Every multi-index of `shape` in row-major order.
    pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut k| {
                let mut idx = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    idx[d] = k % shape[d];
                    k /= shape[d];
                }
                idx
            })
            .collect()
    }
    /// The element that broadcasting maps output index `idx` to.
    pub fn at_broadcast(&self, idx: &[usize]) -> f64 {
        let extra = idx.len() - self.shape.len();
        let own: Vec<usize> =
            self.shape.iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { idx[extra + d] }).collect();
        self.at(&own)
    }
}

/// NumPy's broadcast shape, computed independently of Kiln.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let db = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            if da == 1 {
                db
            } else {
                da
            }
        })
        .collect()
}

/// Elementwise f over two broadcast operands.
pub fn naive_binary(a: &Nd, b: &Nd, f: impl Fn(f64, f64) -> f64) -> Nd {
    let shape = broadcast_shape(&a.shape, &b.shape);
    let data = Nd::indices(&shape).iter().map(|i| f(a.at_broadcast(i), b.at_broadcast(i))).collect();
    Nd::new(&shape, data)
}
