//! Whether a CPU op may hand work to rayon's other workers, or must do all of it on the
//! calling thread.
//!
//! Normally ops split work among rayon's workers once it is large enough. [`run_inline`] turns
//! that off for everything its closure calls on this thread: every op then takes the path it
//! takes on a one-thread pool. Why a training loop wants that: on a machine whose cores are
//! shared with other tenants (an oversubscribed VM), a worker's time slices come late and a
//! fork-join op waits for them, so an MLP step measured 1.5x slower on two workers than on one
//! (BENCHMARKS.md, session 6). `train::ThreadTuner` times steps both ways and picks.
//!
//! The results are the same bits either way: every output element is computed by the same
//! operations in the same order however the work is split (a GEMM's blocks keep gemm's
//! blocking of k: `matmul::same_blocking`), and partial sums are combined in a fixed order
//! (tests/training/threads.rs trains both ways and compares every parameter bit for bit).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Elements below this count are processed on the calling thread: waking rayon workers
/// costs more than it saves for the small tensors of a typical training step. A fork-join
/// costs ~5 µs in a quiet minute and ~25 µs in a contended one (the other worker has gone
/// to sleep during the loop's serial code), while a cheap elementwise op (add, ReLU, its
/// backward) on 32k f32 takes 5-10 µs on one core: at 32k the MLP's ReLU backward took 24 µs
/// on two workers and 8 on one. At 128k (~30 µs on one core) splitting starts to pay.
/// Raising it from 32k made the MLP slower on its own (its small parallel ops had been what
/// kept the other worker awake between GEMMs); with [`keep_workers_warm`] it is 9% faster.
const PAR_THRESHOLD: usize = 1 << 17;

/// The same for the optimizer updates: ~5x the work per element of an elementwise op, and
/// their parameters and moments were split between the cores by the previous step (each core
/// keeps its part in cache), so done on one thread half of it comes from the other core's
/// cache: Adam on the MLP's 65k-element W2 took 49 µs split, 93 µs on the loop's thread
/// (and 41 µs with everything on one core from the start).
const PAR_THRESHOLD_OPTIM: usize = 1 << 15;

/// Runs `f` with every CPU op it calls kept on the calling thread (no rayon tasks), then
/// restores the previous setting (also when `f` panics). Nests.
pub fn run_inline<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INLINE.with(|c| c.replace(true)));
    f()
}

/// Whether ops on this thread run inline (inside [`run_inline`]).
pub fn is_inline() -> bool {
    INLINE.with(Cell::get)
}

/// How many threads an op started on this thread may use.
pub(crate) fn threads() -> usize {
    if is_inline() {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// Elements below which an elementwise-like op stays on the calling thread.
pub(crate) fn par_threshold() -> usize {
    if is_inline() {
        usize::MAX
    } else {
        PAR_THRESHOLD
    }
}

/// Elements below which an optimizer update stays on the calling thread.
pub(crate) fn par_threshold_optim() -> usize {
    if is_inline() {
        usize::MAX
    } else {
        PAR_THRESHOLD_OPTIM
    }
}

/// `with_min_len` for parallel iterators that always split (one task per image, plane or
/// block): inline, the whole range is one piece, run by the calling thread.
pub(crate) fn min_len() -> usize {
    if is_inline() {
        usize::MAX
    } else {
        1
    }
}

thread_local! {
    /// This worker runs a spinner (perhaps suspended under a job the spinner picked up).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// Workers spinning now, in all pools together: exact while one training loop warms one
/// pool at a time, as Kiln's do.
static WARM_LIVE: AtomicUsize = AtomicUsize::new(0);

/// Keeps the pool's other workers polling for work, instead of going to sleep, until none
/// has come for `idle` or `max_life` has passed. A training step calls it at its start:
/// between its parallel ops the loop's thread runs serial code for tens of µs, long enough
/// for rayon's idle workers to go to sleep, and waking one for the next op costs more than
/// that op's split saves (a ReLU backward on 32k elements: 8 µs on one core, 24 split
/// between a running and a sleeping one). OpenMP runtimes spin-wait the same way.
///
/// Each worker gets one spinner job in its own broadcast queue (`rayon::spawn_broadcast`:
/// no other worker can steal it, so spinners never stack up on one thread), and a copy that
/// reaches a worker already spinning, or the loop's own thread, returns at once. A spinner
/// calls `rayon::yield_now()` (run one pending job, if any) in a loop, with a short
/// back-off while idle. It is an ordinary job, so a worker waiting in a join can run it on
/// top of that join; `max_life` bounds how long the join then waits. With one loop per pool
/// that does not happen (every copy is taken between the step's ops), but pools shared with
/// other work (tests running side by side) can see it.
pub fn keep_workers_warm(idle: std::time::Duration, max_life: std::time::Duration) {
    let others = rayon::current_num_threads().saturating_sub(1);
    // Only from a worker (the loop's thread): outside the pool there is no loop to follow.
    let Some(caller) = rayon::current_thread_index() else { return };
    if is_inline() || others == 0 || WARM_LIVE.load(Ordering::Relaxed) >= others {
        return;
    }
    rayon::spawn_broadcast(move |ctx| {
        if ctx.index() == caller || SPINNING.with(|s| s.replace(true)) {
            return; // the running spinner's yield_now counts this as work: it re-arms it
        }
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                SPINNING.with(|s| s.set(false));
                WARM_LIVE.fetch_sub(1, Ordering::Relaxed);
            }
        }
        WARM_LIVE.fetch_add(1, Ordering::Relaxed);
        let _done = Done;
        #[cfg(test)]
        tests::spun(ctx.index());
        let start = std::time::Instant::now();
        let (mut last, mut pause) = (start, 1u32);
        while start.elapsed() < max_life {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => (last, pause) = (std::time::Instant::now(), 1),
                Some(rayon::Yield::Idle) if last.elapsed() < idle => {
                    // Each poll sweeps every worker's deque: not back to back on big pools.
                    for _ in 0..pause {
                        std::hint::spin_loop();
                    }
                    pause = (pause * 2).min(64);
                }
                _ => break,
            }
        }
    });
    // The loop's own copy (a no-op) now, rather than whenever this thread next looks for
    // work: otherwise copies could pile up in its queue in steps where nothing is stolen.
    let _ = rayon::yield_local();
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn inline_keeps_every_piece_on_the_calling_thread_and_restores() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        pool.install(|| {
            let me = rayon::current_thread_index();
            let seen = |inline: bool| {
                let f = || {
                    (0..64)
                        .into_par_iter()
                        .with_min_len(min_len())
                        .map(|_| {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            rayon::current_thread_index()
                        })
                        .collect::<Vec<_>>()
                };
                if inline {
                    run_inline(f)
                } else {
                    f()
                }
            };
            assert!(seen(true).iter().all(|&t| t == me));
            assert!(!is_inline(), "the setting is restored");
            assert_eq!((threads(), par_threshold()), (4, PAR_THRESHOLD));
            // Outside, 64 sleeping pieces on 4 workers spread (the test would pass vacuously
            // if min_len() did not matter).
            assert!(seen(false).iter().any(|&t| t != me));
            run_inline(|| {
                assert_eq!((threads(), par_threshold(), min_len()), (1, usize::MAX, usize::MAX));
                run_inline(|| assert!(is_inline()));
                assert!(is_inline(), "nested run_inline restores the outer setting");
            });
        });
    }

    /// The warming tests share WARM_LIVE: one at a time.
    static WARM_TEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    /// Worker indices that started spinning (test builds record them).
    static SPUN: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

    pub(super) fn spun(index: usize) {
        SPUN.lock().unwrap_or_else(|p| p.into_inner()).push(index);
    }

    fn wait_until_no_spinner(within: std::time::Duration) {
        let t0 = std::time::Instant::now();
        while WARM_LIVE.load(Ordering::Relaxed) > 0 {
            assert!(t0.elapsed() < within, "spinners still alive {within:?} after the work");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Every other worker of a big pool spins, each exactly once (none stacked on another's
    /// thread, none on the caller's), and a second call while they spin adds none.
    #[test]
    fn one_spinner_per_other_worker_never_on_the_caller() {
        let _serial = WARM_TEST.lock().unwrap_or_else(|p| p.into_inner());
        SPUN.lock().unwrap().clear();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(8).build().unwrap();
        let (idle, life) = (std::time::Duration::from_millis(300), std::time::Duration::from_secs(2));
        let caller = pool.install(|| {
            keep_workers_warm(idle, life);
            let t0 = std::time::Instant::now();
            while WARM_LIVE.load(Ordering::Relaxed) < 7 {
                assert!(t0.elapsed().as_secs() < 10, "only {} of 7 workers spin", WARM_LIVE.load(Ordering::Relaxed));
                std::thread::yield_now();
            }
            keep_workers_warm(idle, life);
            assert!(WARM_LIVE.load(Ordering::Relaxed) <= 7);
            rayon::current_thread_index().unwrap()
        });
        wait_until_no_spinner(std::time::Duration::from_secs(10));
        let mut spun = SPUN.lock().unwrap().clone();
        spun.sort_unstable();
        let want: Vec<usize> = (0..8).filter(|&i| i != caller).collect();
        assert_eq!(spun, want, "each other worker spun once");
    }

    /// Spinners must never hold up a join: nested parallel loops (a GEMM's blocks inside a
    /// batch loop) run to the right sums with spinners armed before every one of them, all
    /// spinners end once idle, and none are spawned inline. A hang fails after 60 s.
    #[test]
    fn warm_workers_never_block_joins_and_stop_when_idle() {
        let _serial = WARM_TEST.lock().unwrap_or_else(|p| p.into_inner());
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
            let (idle, life) = (std::time::Duration::from_millis(2), std::time::Duration::from_millis(20));
            pool.install(|| {
                let want: u64 = (0..64u64).map(|i| (0..100u64).map(|j| i * j + 1).sum::<u64>()).sum();
                for _ in 0..300 {
                    keep_workers_warm(idle, life);
                    assert!(WARM_LIVE.load(Ordering::Relaxed) <= 3, "at most one spinner per other worker");
                    let got: u64 = (0..64u64)
                        .into_par_iter()
                        .map(|i| (0..100u64).into_par_iter().map(|j| i * j + 1).sum::<u64>())
                        .sum();
                    assert_eq!(got, want);
                }
                wait_until_no_spinner(std::time::Duration::from_secs(10));
                run_inline(|| {
                    keep_workers_warm(idle, life);
                    assert_eq!(WARM_LIVE.load(Ordering::Relaxed), 0, "inline arms nothing");
                });
            });
            done.send(()).unwrap();
        });
        wait.recv_timeout(std::time::Duration::from_secs(60)).expect("nested joins with warm workers hung or failed");
    }
}
