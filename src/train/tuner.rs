//! Chooses, while a CPU training run goes on, whether each step's ops use rayon's workers or
//! all stay on the loop's thread ([`crate::backend::cpu::run_inline`]).
//!
//! On two dedicated cores the workers make an MLP step 1.4x faster. On a VM whose two vCPUs
//! share the host's cores with other tenants, the same step measured 1.5x *slower* on two
//! workers than on one (each fork-join op waits for the other vCPU's late time slice), and
//! which of the two a machine is can change within minutes. So the tuner measures: it keeps
//! the way it chose for a window of steps, timing the last few; then it runs a few steps the
//! other way and switches if their median is lower. The first step after a switch is not
//! timed: it pays for the switch (a worker still spinning from the pool's last op competes
//! with the first inline step; alternating step by step made inline look 15% slower than it
//! runs). The window doubles while the choice holds (up to [`MAX_WINDOW`] steps) and starts
//! over when it flips, so the other way costs a few percent of steps at most. Both ways
//! compute the same bits, so the choice changes speed only.
//!
//! `KILN_CPU_INLINE=0` keeps the pool always, `=1` runs inline always, unset or `auto` tunes.
//!
//! On the pool, each step first keeps the other workers polling for work between its ops
//! (`KILN_CPU_WARM=0` turns that off): MLP on the workers 1.86 -> 1.72 s median, tuned 1.99 -> 1.80
//! (BENCHMARKS.md, session 7).

use std::time::Duration;

/// Steps timed the other way per measurement (after [`SETTLE_STEPS`] untimed ones).
const PROBE_STEPS: usize = 3;
/// Steps run untimed right after a switch.
const SETTLE_STEPS: usize = 1;
/// Steps of the current way whose median it is judged by (the last ones of its window).
const RECENT_STEPS: usize = 5;
/// Steps between the first measurements.
const MIN_WINDOW: usize = 32;
/// Longest stretch between measurements while the choice holds.
pub const MAX_WINDOW: usize = 512;
/// How long the pool's other workers keep polling for work after their last job of a
/// pooled step ([`crate::backend::cpu::keep_workers_warm`]): longer than the serial stretches
/// inside a step (the batch cut, ~30 µs), short enough that evaluation and logging between
/// epochs find them asleep. OpenMP runtimes do the same (GNU's spins ~300k rounds, Intel's
/// KMP_BLOCKTIME is 200 ms).
const WARM_IDLE: Duration = Duration::from_micros(200);
/// The longest a spinner lives before it needs re-arming by a later step: bounds how long it
/// can hold up a join it was run on top of (see keep_workers_warm).
const WARM_LIFE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuThreadsMode {
    /// Measure and choose.
    Auto,
    /// Always split ops among rayon's workers (Kiln's behaviour without a tuner).
    Pool,
    /// Always keep every op on the loop's thread.
    Inline,
}

impl CpuThreadsMode {
    /// From `KILN_CPU_INLINE`: "0" pool, "1" inline, unset or "auto" tune; anything else is
    /// reported and tuned.
    pub fn from_env() -> CpuThreadsMode {
        match std::env::var("KILN_CPU_INLINE").as_deref() {
            Err(_) | Ok("auto") | Ok("") => CpuThreadsMode::Auto,
            Ok("0") => CpuThreadsMode::Pool,
            Ok("1") => CpuThreadsMode::Inline,
            Ok(other) => {
                tracing::warn!("KILN_CPU_INLINE={other:?} is not 0, 1 or auto: tuning");
                CpuThreadsMode::Auto
            }
        }
    }
}

/// Per-step choice between the pool and inline; see the module doc.
#[derive(Debug)]
pub struct ThreadTuner {
    mode: CpuThreadsMode,
    /// How the next step runs.
    inline: bool,
    /// Running the other way to time it.
    probing: bool,
    /// Times of the current way's last steps (at most RECENT_STEPS).
    recent: Vec<f64>,
    /// Times of the other way's steps in this measurement.
    probe: Vec<f64>,
    /// Untimed steps left after a switch.
    settle: usize,
    /// Steps of the current way left before the next measurement.
    left: usize,
    window: usize,
    /// Measurements taken, and how many chose inline (for the log and tests).
    pub measurements: usize,
    pub chose_inline: usize,
    /// Keep the other workers polling between the ops of a pooled step (`KILN_CPU_WARM`).
    warm: bool,
}

impl ThreadTuner {
    /// A tuner in `mode`. With one rayon worker there is nothing to choose: it stays on the pool.
    pub fn new(mode: CpuThreadsMode) -> ThreadTuner {
        let mode = if rayon::current_num_threads() <= 1 { CpuThreadsMode::Pool } else { mode };
        ThreadTuner {
            mode,
            inline: mode == CpuThreadsMode::Inline,
            probing: false,
            recent: Vec::new(),
            probe: Vec::new(),
            settle: SETTLE_STEPS,
            // The first measurement comes as soon as the pool's own steps have been timed.
            left: SETTLE_STEPS + RECENT_STEPS,
            window: MIN_WINDOW,
            measurements: 0,
            chose_inline: 0,
            warm: std::env::var("KILN_CPU_WARM").map_or(true, |v| v != "0"),
        }
    }

    /// Whether the next step runs inline.
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// Runs one step's work the way the tuner chose for it.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.inline {
            crate::backend::cpu::run_inline(f)
        } else {
            if self.warm {
                crate::backend::cpu::keep_workers_warm(WARM_IDLE, WARM_LIFE);
            }
            f()
        }
    }

    /// Records how long the step just run took and picks the way of the next one.
    pub fn record(&mut self, step_time: Duration) {
        if self.mode != CpuThreadsMode::Auto {
            return;
        }
        let secs = step_time.as_secs_f64();
        if self.settle > 0 {
            self.settle -= 1;
        } else if self.probing {
            self.probe.push(secs);
        } else {
            if self.recent.len() == RECENT_STEPS {
                self.recent.remove(0);
            }
            self.recent.push(secs);
        }
        if !self.probing {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 && !self.recent.is_empty() {
                // Time the other way.
                self.probing = true;
                self.probe.clear();
                self.settle = SETTLE_STEPS;
                self.inline = !self.inline;
            }
            return;
        }
        if self.probe.len() < PROBE_STEPS {
            return;
        }
        let (current, other) = (median(&mut self.recent), median(&mut self.probe));
        let other_is_inline = self.inline;
        let choose_inline = if other < current { other_is_inline } else { !other_is_inline };
        let (pool_ms, inline_ms) =
            if other_is_inline { (current * 1e3, other * 1e3) } else { (other * 1e3, current * 1e3) };
        // The window grows while measurements keep the way that ran before them.
        let kept = choose_inline != other_is_inline;
        self.window = if kept { (self.window * 2).min(MAX_WINDOW) } else { MIN_WINDOW };
        if self.inline != choose_inline {
            // Back from the probe to the way that ran before: a switch, untimed first step.
            self.settle = SETTLE_STEPS;
        }
        self.measurements += 1;
        self.chose_inline += usize::from(choose_inline);
        self.inline = choose_inline;
        self.probing = false;
        self.recent.clear();
        self.left = self.window;
        tracing::debug!(pool_ms, inline_ms, inline = choose_inline, window = self.window, "CPU ops: median step times");
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` steps that take `pool_ms` on the pool and `inline_ms` inline; returns how
    /// many ran inline.
    fn drive(t: &mut ThreadTuner, steps: usize, pool_ms: u64, inline_ms: u64) -> usize {
        let mut inline_steps = 0;
        for _ in 0..steps {
            inline_steps += usize::from(t.inline());
            t.record(Duration::from_millis(if t.inline() { inline_ms } else { pool_ms }));
        }
        inline_steps
    }

    fn two_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(f)
    }

    /// Steps from a decision to the next one while the choice holds: the window, then the
    /// other way (settling + timed), then one settling step back.
    fn cycle(window: usize) -> usize {
        window + SETTLE_STEPS + PROBE_STEPS
    }

    #[test]
    fn picks_the_faster_way_and_measures_less_often_while_the_choice_holds() {
        two_workers(|| {
            let mut t = ThreadTuner::new(CpuThreadsMode::Auto);
            assert!(!t.inline(), "starts on the pool");
            // Inline is faster: the first measurement (pool steps, then inline ones) switches.
            let first = SETTLE_STEPS + RECENT_STEPS + SETTLE_STEPS + PROBE_STEPS;
            assert_eq!(drive(&mut t, first, 3, 2), SETTLE_STEPS + PROBE_STEPS);
            assert!(t.inline());
            assert_eq!((t.measurements, t.chose_inline, t.window), (1, 1, MIN_WINDOW));
            // The next measurement runs a few pool steps and stays inline: the window doubles.
            let n = cycle(MIN_WINDOW);
            assert_eq!(drive(&mut t, n, 3, 2), n - SETTLE_STEPS - PROBE_STEPS);
            assert!(t.inline());
            assert_eq!((t.measurements, t.window), (2, 2 * MIN_WINDOW));
            // It keeps doubling up to MAX_WINDOW.
            for _ in 0..8 {
                let w = t.window;
                drive(&mut t, cycle(w), 3, 2);
            }
            assert_eq!((t.window, t.inline()), (MAX_WINDOW, true));
            // The machine changes: the pool is faster now. By the end of the window the tuner
            // is back on the pool, measuring often again.
            drive(&mut t, cycle(MAX_WINDOW), 3, 5);
            assert_eq!((t.inline(), t.window), (false, MIN_WINDOW));
            // While the pool wins, only the probes run inline: 4 of every ~36 steps.
            let inline_steps = drive(&mut t, 10 * cycle(MIN_WINDOW), 3, 5);
            assert!(inline_steps <= 10 * (SETTLE_STEPS + PROBE_STEPS), "{inline_steps} inline steps");
        });
    }

    #[test]
    fn the_first_step_after_a_switch_and_one_outlier_are_not_counted() {
        two_workers(|| {
            let mut t = ThreadTuner::new(CpuThreadsMode::Auto);
            // Pool steps: a slow first step (not timed), then 3 ms with one 50 ms outlier (a
            // page-fault storm, a preemption). Inline: its first step 40 ms (the switch), then
            // 4 ms. The pool wins: 3 < 4, though a mean would say otherwise.
            for ms in [90, 3, 50, 3, 3, 3, 40, 4, 4, 4] {
                t.record(Duration::from_millis(ms));
            }
            assert_eq!(t.measurements, 1);
            assert!(!t.inline());
        });
    }

    #[test]
    fn fixed_modes_and_a_single_worker_never_switch() {
        two_workers(|| {
            for (mode, inline) in [(CpuThreadsMode::Pool, false), (CpuThreadsMode::Inline, true)] {
                let mut t = ThreadTuner::new(mode);
                // The other way would be 9x faster: a fixed mode ignores that.
                drive(&mut t, 200, if inline { 1 } else { 9 }, if inline { 9 } else { 1 });
                assert_eq!(t.inline(), inline);
                assert_eq!(t.measurements, 0);
            }
        });
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        one.install(|| {
            let mut t = ThreadTuner::new(CpuThreadsMode::Auto);
            assert_eq!(drive(&mut t, 200, 9, 1), 0, "one worker: nothing to choose, never inline");
        });
    }
}
