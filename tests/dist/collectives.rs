//! Ring all-reduce, broadcast and barrier over worker threads and over TCP, checked against
//! plain loops; and what happens when a worker fails, hangs or panics.

use super::{free_port, random_f32};
use kiln::dist::{run_workers, tcp, thread_group, Communicator, DistEnv, ReduceOp};
use kiln::{DistErrorKind, Error};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Each rank's input for one case, and the plain sum in f64.
fn inputs(seed: u64, n: usize, len: usize) -> (Vec<Vec<f32>>, Vec<f64>) {
    let per_rank: Vec<Vec<f32>> = (0..n).map(|r| random_f32(seed * 31 + r as u64, len)).collect();
    let sum = (0..len).map(|i| per_rank.iter().map(|v| v[i] as f64).sum()).collect();
    (per_rank, sum)
}

/// Every rank's result equals the plain sum (to f32 rounding) and all ranks hold the same bits.
fn check_all_reduce(results: &[Vec<f32>], sum: &[f64], scale: f64, what: &str) {
    for (r, got) in results.iter().enumerate() {
        assert_eq!(got.len(), sum.len(), "{what}: rank {r} length");
        for (i, (&g, &s)) in got.iter().zip(sum).enumerate() {
            let want = s * scale;
            assert!((g as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what}: rank {r} [{i}] = {g}, want {want}");
        }
        assert!(
            got.iter().zip(&results[0]).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: rank {r} differs from rank 0 in some bit"
        );
    }
}

/// Lengths 0..10,000 including the edge cases: empty, shorter than the world, odd sizes; and
/// one long enough (5 x 65,536 + 3) that chunks travel as several 65,536-element segments
/// (3 for 2 ranks, 2 for 3 and 4, exactly one full segment for 5).
fn lengths() -> Vec<usize> {
    let mut v = vec![0, 1, 2, 3, 4, 5, 7, 64, 1000, 9999, 5 * kiln::dist::ring::SEGMENT + 3];
    v.extend(random_f32(99, 6).iter().map(|x| ((x + 1.0) * 5000.0) as usize));
    v
}

#[test]
fn thread_ring_all_reduce_equals_plain_sum() {
    for n in 1..=5 {
        for (case, len) in lengths().into_iter().enumerate() {
            let (per_rank, sum) = inputs(case as u64 + 10 * n as u64, n, len);
            for op in [ReduceOp::Sum, ReduceOp::Mean] {
                let results = run_workers(n, T, |rank, mut comm| {
                    let mut buf = per_rank[rank].clone();
                    comm.all_reduce(&mut buf, op)?;
                    Ok(buf)
                })
                .unwrap();
                let scale = if op == ReduceOp::Mean { 1.0 / n as f64 } else { 1.0 };
                check_all_reduce(&results, &sum, scale, &format!("threads n={n} len={len} {op:?}"));
            }
        }
    }
}

#[test]
fn broadcast_and_barrier_over_threads() {
    for n in 1..=4 {
        for root in 0..n {
            let results = run_workers(n, T, |rank, mut comm| {
                let mut buf = random_f32(rank as u64, 1001);
                comm.broadcast(&mut buf, root)?;
                comm.barrier()?;
                Ok(buf)
            })
            .unwrap();
            let want = random_f32(root as u64, 1001);
            for (r, got) in results.iter().enumerate() {
                assert_eq!(got, &want, "n={n} root={root}: rank {r}");
            }
        }
    }
    // A root outside the world is an error, not a hang.
    let err = run_workers(2, T, |_, mut comm| comm.broadcast(&mut [1.0], 5)).unwrap_err();
    assert!(matches!(err, Error::Dist { kind: DistErrorKind::Mismatch, .. }), "{err}");
}

#[test]
fn barrier_waits_for_every_rank() {
    // Rank 2 arrives late; nobody may leave the barrier before it has entered.
    let entered_late = Mutex::new(None::<Instant>);
    let left: Vec<Instant> = run_workers(3, T, |rank, mut comm| {
        if rank == 2 {
            std::thread::sleep(Duration::from_millis(300));
            *entered_late.lock().unwrap() = Some(Instant::now());
        }
        comm.barrier()?;
        Ok(Instant::now())
    })
    .unwrap();
    let late = entered_late.lock().unwrap().unwrap();
    assert!(left.iter().all(|&t| t >= late), "a rank left the barrier before rank 2 entered it");
}

#[test]
fn mismatched_collectives_are_reported() {
    // Rank 1 reduces a longer buffer than the others: a Mismatch error, not mixed data.
    let err = run_workers(3, T, |rank, mut comm| {
        let mut buf = vec![1.0f32; if rank == 1 { 12 } else { 9 }];
        comm.all_reduce(&mut buf, ReduceOp::Sum)
    })
    .unwrap_err();
    assert!(matches!(err, Error::Dist { kind: DistErrorKind::Mismatch, .. }), "{err}");
    assert!(err.to_string().contains("elements"), "{err}");
    // One rank broadcasts while the other all-reduces.
    let err = run_workers(2, T, |rank, mut comm| {
        let mut buf = vec![1.0f32; 4];
        if rank == 0 {
            comm.all_reduce(&mut buf, ReduceOp::Sum)
        } else {
            comm.broadcast(&mut buf, 0)
        }
    })
    .unwrap_err();
    assert!(err.to_string().contains("broadcast") && err.to_string().contains("all_reduce"), "{err}");
}

/// Runs `n` workers that all-reduce 20 times; `fail` may end a worker early. Returns the
/// overall error and, per rank, how long after the start it stopped and how.
fn failing_run(
    n: usize,
    timeout: Duration,
    fail: impl Fn(usize, usize) -> Option<kiln::Result<()>> + Sync,
) -> (Error, Vec<(Duration, String)>) {
    let start = Instant::now();
    let log = Mutex::new(vec![(Duration::ZERO, String::new()); n]);
    let err = run_workers(n, timeout, |rank, mut comm| {
        let r = (|| -> kiln::Result<()> {
            for step in 0..20 {
                if let Some(r) = fail(rank, step) {
                    r?;
                }
                let mut buf = vec![rank as f32; 5000];
                comm.all_reduce(&mut buf, ReduceOp::Sum)?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        })();
        log.lock().unwrap()[rank] = (start.elapsed(), r.as_ref().err().map(|e| e.to_string()).unwrap_or_default());
        r
    })
    .unwrap_err();
    (err, log.into_inner().unwrap())
}

#[test]
fn a_failing_worker_stops_the_others_at_once() {
    let (err, log) = failing_run(4, Duration::from_secs(30), |rank, step| {
        (rank == 2 && step == 3).then(|| Err(Error::InvalidArgument { op: "test", msg: "worker 2 fails".into() }))
    });
    // The error returned is the failing worker's own, not an echo.
    assert!(matches!(&err, Error::InvalidArgument { msg, .. } if msg == "worker 2 fails"), "{err}");
    for (rank, (t, e)) in log.iter().enumerate() {
        assert!(!e.is_empty(), "rank {rank} finished without an error");
        // Far inside the 30 s timeout: the closed link travels round the ring.
        assert!(*t < Duration::from_secs(5), "rank {rank} took {t:?} to stop ({e})");
    }
}

#[test]
fn a_hanging_worker_is_caught_by_the_timeout() {
    let timeout = Duration::from_millis(500);
    let (err, log) = failing_run(3, timeout, |rank, step| {
        if rank == 1 && step == 2 {
            std::thread::sleep(Duration::from_secs(3));
        }
        None
    });
    assert!(matches!(err, Error::Dist { kind: DistErrorKind::Timeout, .. }), "{err}");
    // The rank after the hung one waits on it alone, so its timeout names it.
    assert!(log[2].1.contains("nothing from rank 1"), "{}", log[2].1);
    for rank in [0, 2] {
        let (t, e) = &log[rank];
        assert!(!e.is_empty(), "rank {rank} did not fail");
        assert!(*t < Duration::from_millis(2500), "rank {rank} stopped only after {t:?} ({e})");
    }
}

#[test]
fn a_panicking_worker_is_an_error_not_a_hang() {
    let (err, _) = failing_run(3, Duration::from_secs(30), |rank, step| {
        if rank == 0 && step == 1 {
            panic!("worker 0 panics on purpose");
        }
        None
    });
    assert!(matches!(err, Error::Dist { kind: DistErrorKind::WorkerFailed, rank: 0, .. }), "{err}");
    assert!(err.to_string().contains("panics on purpose"), "{err}");
}

/// `n` ranks joining a TCP ring on loopback from threads of this process.
fn tcp_ring<T: Send>(
    n: usize,
    config: impl Fn(usize) -> serde_json::Value + Sync,
    work: impl Fn(usize, &mut dyn Communicator) -> kiln::Result<T> + Sync,
) -> Vec<kiln::Result<T>> {
    let port = free_port();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|rank| {
                let (config, work) = (&config, &work);
                s.spawn(move || {
                    let env = DistEnv {
                        rank,
                        world_size: n,
                        local_rank: rank,
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                    };
                    let mut comm = tcp::connect(&env, &config(rank), Duration::from_secs(20))?;
                    work(rank, &mut comm)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn tcp_ring_all_reduce_equals_plain_sum() {
    for n in 1..=4 {
        let cases: Vec<(Vec<Vec<f32>>, Vec<f64>)> =
            lengths().into_iter().enumerate().map(|(c, len)| inputs(c as u64 + 100 * n as u64, n, len)).collect();
        let results = tcp_ring(
            n,
            |_| serde_json::json!({"same": true}),
            |rank, comm| {
                let mut out = Vec::new();
                for (per_rank, _) in &cases {
                    let mut buf = per_rank[rank].clone();
                    comm.all_reduce(&mut buf, ReduceOp::Sum)?;
                    out.push(buf);
                }
                let mut b = random_f32(rank as u64, 300);
                comm.broadcast(&mut b, n - 1)?;
                assert_eq!(b, random_f32(n as u64 - 1, 300), "tcp broadcast, rank {rank}");
                Ok(out)
            },
        );
        let results: Vec<Vec<Vec<f32>>> = results.into_iter().map(|r| r.unwrap()).collect();
        for (c, (_, sum)) in cases.iter().enumerate() {
            let per_case: Vec<Vec<f32>> = results.iter().map(|r| r[c].clone()).collect();
            check_all_reduce(&per_case, sum, 1.0, &format!("tcp n={n} case {c}"));
        }
    }
}

#[test]
fn thread_group_of_one_needs_no_peers() {
    let mut comms = thread_group(1, T);
    let mut buf = vec![1.5f32, -2.0];
    comms[0].all_reduce(&mut buf, ReduceOp::Mean).unwrap();
    comms[0].barrier().unwrap();
    assert_eq!(buf, vec![1.5, -2.0]);
}

/// NCCL: without a GPU (CI), a clean error and no panic; with GPUs, a real all-reduce over
/// all of them in this process, checked against the plain sum: of host buffers, and of
/// gradients in GPU memory through `DataParallel` (NCCL on the device, ordered by events
/// against Kiln's stream).
#[test]
fn nccl_all_reduce_or_a_clean_error() {
    let gpus = kiln::backend::cuda::device_count();
    if gpus == 0 {
        let err = kiln::dist::nccl::NcclComm::for_devices(&[0]).err().expect("NCCL without a GPU must be an Err");
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err}");
        return;
    }
    let comms = kiln::dist::nccl::NcclComm::for_devices(&(0..gpus).collect::<Vec<_>>()).unwrap();
    let (per_rank, sum) = inputs(5, gpus, 100_003);
    let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                let mut buf = per_rank[rank].clone();
                let device = kiln::Device::Cuda(rank);
                let grad = per_rank[rank].clone();
                s.spawn(move || {
                    comm.all_reduce(&mut buf, ReduceOp::Sum).unwrap();
                    comm.barrier().unwrap();
                    // A parameter whose gradient is this rank's input: loss = Σ p·c.
                    let n = grad.len();
                    let c = kiln::Tensor::from_vec(grad, [n], device).unwrap();
                    let p = kiln::Tensor::zeros([c.elem_count()], kiln::DType::F32, device).unwrap();
                    p.set_requires_grad(true).unwrap();
                    let mut dp = kiln::dist::DataParallel::new(Box::new(comm), vec![p.clone()], 1 << 20).unwrap();
                    assert!(dp.buckets_on_device());
                    dp.begin_backward(1.0).unwrap();
                    p.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
                    dp.finish_gradients().unwrap();
                    let g = p.grad().unwrap();
                    assert_eq!(g.device(), device);
                    (buf, g.to_vec::<f32>().unwrap())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let (host, device): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    check_all_reduce(&host, &sum, 1.0, &format!("nccl, {gpus} GPU(s)"));
    check_all_reduce(&device, &sum, 1.0, &format!("nccl on device buffers, {gpus} GPU(s)"));
}
