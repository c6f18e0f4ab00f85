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

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Elements below this count are processed on the calling thread: waking rayon workers
/// costs more than it saves for the small tensors of a typical training step.
const PAR_THRESHOLD: usize = 1 << 15;

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

/// `with_min_len` for parallel iterators that always split (one task per image, plane or
/// block): inline, the whole range is one piece, run by the calling thread.
pub(crate) fn min_len() -> usize {
    if is_inline() {
        usize::MAX
    } else {
        1
    }
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
}
