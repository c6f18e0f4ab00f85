//! `kiln bench-ops`: the device's memory bandwidth and GEMM rates, one JSON line each, for
//! the GPU section of BENCHMARKS.md (issue 4's goals: elementwise ops at >= 80% of the
//! device's copy bandwidth, matmul within 5% of torch.matmul; benches/gpu/torch_ops.py
//! prints the same lines for PyTorch on the same GPU). Runs on any device (on the CPU and
//! the emulated device it measures those; use a small `--mb` there).

use anyhow::Result;
use kiln::{DType, Device, Tensor};
use std::time::Instant;

/// Seconds per call of `f`: a warm-up call, then as many as fit ~0.5 s (at least 3),
/// the device synchronized around the timed calls.
fn time(device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let (start, mut n) = (Instant::now(), 0u32);
    while n < 3 || start.elapsed().as_secs_f64() < 0.5 {
        f()?;
        n += 1;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / f64::from(n))
}

fn line(device: Device, op: &str, extra: serde_json::Value) {
    let mut v = serde_json::json!({"impl": format!("kiln {}", env!("CARGO_PKG_VERSION")), "device": device.to_string(), "op": op});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    println!("{v}");
}

pub fn run(device: Device, mb: usize, gemm: &[usize]) -> Result<()> {
    anyhow::ensure!((1..=1 << 20).contains(&mb), "--mb must be 1..=1048576 (MiB per operand), not {mb}");
    let n = (mb << 20) / 4;
    let a = Tensor::randn(vec![n], DType::F32, Device::Cpu)?.to_device(device)?;
    let b = Tensor::randn(vec![n], DType::F32, Device::Cpu)?.to_device(device)?;
    let bytes = (n * 4) as f64;
    let gbs = |moved: f64, s: f64| moved / s / 1e9;
    kiln::no_grad(|| -> Result<()> {
        // The baseline: the device's own copy (cuMemcpyDtoD; a plain memcpy on the CPU).
        let s = if device.is_cpu() {
            let (src, mut dst) = (vec![1f32; n], vec![0f32; n]);
            time(device, || {
                dst.copy_from_slice(&src);
                black_box(&dst);
                Ok(())
            })?
        } else {
            let dev = kiln::backend::cuda::device::get(device)?;
            let (src, dst) = (dev.alloc(n * 4)?, dev.alloc(n * 4)?);
            time(device, || Ok(dev.dtod(dst.ptr(), src.ptr(), n * 4)?))?
        };
        let copy = gbs(2.0 * bytes, s);
        line(device, "copy", serde_json::json!({"mb": mb, "seconds": s, "gb_per_s": copy}));
        // Kiln's own copy kernel (what `contiguous()` and dtype casts run).
        let s = time(device, || {
            black_box(a.copy()?);
            Ok(())
        })?;
        let kcopy = gbs(2.0 * bytes, s);
        line(
            device,
            "copy_kernel",
            serde_json::json!({"mb": mb, "seconds": s, "gb_per_s": kcopy, "of_copy": kcopy / copy}),
        );
        let s = time(device, || {
            black_box(a.add(&b)?);
            Ok(())
        })?;
        let add = gbs(3.0 * bytes, s);
        line(device, "add", serde_json::json!({"mb": mb, "seconds": s, "gb_per_s": add, "of_copy": add / copy}));
        let s = time(device, || {
            black_box(a.relu()?);
            Ok(())
        })?;
        let relu = gbs(2.0 * bytes, s);
        line(device, "relu", serde_json::json!({"mb": mb, "seconds": s, "gb_per_s": relu, "of_copy": relu / copy}));
        Ok(())
    })?;
    drop((a, b));
    for &size in gemm {
        for (dtype, tf32) in [(DType::F32, false), (DType::F32, true), (DType::F16, false), (DType::BF16, false)] {
            if device.is_cpu() && (tf32 || dtype != DType::F32) {
                continue;
            }
            let x = Tensor::randn(vec![size, size], DType::F32, Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
            kiln::allow_tf32(tf32);
            let s = kiln::no_grad(|| {
                time(device, || {
                    black_box(x.matmul(&x)?);
                    Ok(())
                })
            });
            kiln::allow_tf32(false);
            let s = s?;
            let tflops = 2.0 * (size as f64).powi(3) / s / 1e12;
            let name = if tf32 { "tf32".to_string() } else { format!("{dtype:?}").to_lowercase() };
            line(device, "matmul", serde_json::json!({"n": size, "dtype": name, "seconds": s, "tflops": tflops}));
        }
    }
    Ok(())
}

fn black_box<T>(t: T) -> T {
    std::hint::black_box(t)
}
