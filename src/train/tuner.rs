//! Chooses, while a CPU training run goes on, whether each step's ops use rayon's workers or
//! all stay on the loop's thread ([`crate::backend::cpu::run_inline`]).
//!
//! On two dedicated cores the workers make an MLP step 1.4x faster. On a VM whose two vCPUs
//! share the host's cores with other tenants, the same step measured 1.5x *slower* on two
//! workers than on one (each fork-join op waits for the other vCPU's late time slice), and
//! which of the two a machine is can change within minutes. So the tuner measures: it times a
//! few steps each way, alternating, takes the faster by the median, keeps it for a window of
//! steps, then measures again. The window doubles while the choice holds (up to
//! [`MAX_WINDOW`] steps) and starts over when it flips, so measuring costs a few percent of
//! steps at most. Both ways compute the same bits, so the choice changes speed only.
//!
//! `KILN_CPU_INLINE=0` keeps the pool always, `=1` runs inline always, unset or `auto` tunes.

use std::time::Duration;

/// Steps timed each way per measurement.
const PROBE_STEPS: usize = 3;
/// Steps between the first measurements.
const MIN_WINDOW: usize = 32;
/// Longest stretch between measurements while the choice holds.
pub const MAX_WINDOW: usize = 512;

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
    inline: bool,
    /// Steps timed on the pool and inline in the current measurement (empty between them).
    pool_times: Vec<f64>,
    inline_times: Vec<f64>,
    /// Steps left before the next measurement.
    left: usize,
    window: usize,
    /// The choice of the last measurement.
    last_inline: bool,
    /// Measurements taken and how many chose inline (for the log and tests).
    pub measurements: usize,
    pub chose_inline: usize,
}

impl ThreadTuner {
    /// A tuner in `mode`. With one rayon worker there is nothing to choose: it stays on the pool.
    pub fn new(mode: CpuThreadsMode) -> ThreadTuner {
        let mode = if rayon::current_num_threads() <= 1 { CpuThreadsMode::Pool } else { mode };
        ThreadTuner {
            mode,
            inline: mode == CpuThreadsMode::Inline,
            pool_times: Vec::new(),
            inline_times: Vec::new(),
            // Measure at once: the first steps decide for the next window.
            left: 0,
            window: MIN_WINDOW,
            last_inline: false,
            measurements: 0,
            chose_inline: 0,
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
            f()
        }
    }

    /// Records how long the step just run took and picks the way of the next one.
    pub fn record(&mut self, step_time: Duration) {
        if self.mode != CpuThreadsMode::Auto {
            return;
        }
        if self.left > 0 {
            self.left -= 1;
            if self.left == 0 {
                // Start measuring: alternate, beginning with the other way than the current.
                self.inline = !self.inline;
            }
            return;
        }
        let secs = step_time.as_secs_f64();
        if self.inline { &mut self.inline_times } else { &mut self.pool_times }.push(secs);
        if self.pool_times.len() < PROBE_STEPS || self.inline_times.len() < PROBE_STEPS {
            self.inline = !self.inline;
            return;
        }
        let (pool, inline) = (median(&mut self.pool_times), median(&mut self.inline_times));
        self.pool_times.clear();
        self.inline_times.clear();
        let choose_inline = inline < pool;
        self.window = if self.measurements > 0 && choose_inline == self.last_inline {
            (self.window * 2).min(MAX_WINDOW)
        } else {
            MIN_WINDOW
        };
        self.measurements += 1;
        self.chose_inline += usize::from(choose_inline);
        self.last_inline = choose_inline;
        self.inline = choose_inline;
        self.left = self.window;
        tracing::debug!(
            pool_ms = pool * 1e3,
            inline_ms = inline * 1e3,
            inline = choose_inline,
            window = self.window,
            "CPU ops: median step time on the pool vs inline"
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the tuner steps that take `pool_ms` / `inline_ms` until `steps` have run;
    /// returns how many ran inline.
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

    #[test]
    fn picks_the_faster_way_and_measures_less_often_while_the_choice_holds() {
        two_workers(|| {
            let mut t = ThreadTuner::new(CpuThreadsMode::Auto);
            assert!(!t.inline(), "starts on the pool");
            // Inline is faster: after one measurement (3 + 3 alternating steps) it stays inline.
            drive(&mut t, 2 * PROBE_STEPS, 3, 2);
            assert!(t.inline());
            assert_eq!((t.measurements, t.chose_inline, t.window), (1, 1, MIN_WINDOW));
            // The window runs inline, then a measurement (3 steps back on the pool) confirms:
            // the window doubles.
            assert_eq!(drive(&mut t, MIN_WINDOW + 2 * PROBE_STEPS, 3, 2), MIN_WINDOW + PROBE_STEPS);
            assert_eq!((t.measurements, t.window), (2, 2 * MIN_WINDOW));
            // It keeps doubling up to MAX_WINDOW.
            for _ in 0..8 {
                let w = t.window;
                drive(&mut t, w + 2 * PROBE_STEPS, 3, 2);
            }
            assert_eq!(t.window, MAX_WINDOW);
            assert!(t.inline());
            // The machine changes: the pool is faster now. Within one window plus one
            // measurement the tuner is back on the pool, measuring often again.
            drive(&mut t, MAX_WINDOW + 2 * PROBE_STEPS, 3, 5);
            assert!(!t.inline());
            assert_eq!(t.window, MIN_WINDOW);
            // While the pool wins, only the probe steps run inline: 3 in every window + 6.
            let inline_steps = drive(&mut t, 10 * (MIN_WINDOW + 2 * PROBE_STEPS), 3, 5);
            assert!(inline_steps <= 10 * PROBE_STEPS, "{inline_steps} inline steps");
        });
    }

    #[test]
    fn the_median_ignores_one_outlier_step() {
        two_workers(|| {
            let mut t = ThreadTuner::new(CpuThreadsMode::Auto);
            // Pool steps 3 ms but one of them 50 ms (a page-fault storm, a preemption);
            // inline steps 4 ms: the pool still wins.
            let times = [3, 4, 50, 4, 3, 4];
            for ms in times {
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
