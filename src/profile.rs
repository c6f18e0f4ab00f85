//! The op profiler behind `kiln train --profile`: the time of every backend op (forward and,
//! inside `backward()`, the op whose gradient it computes), the memory high-water mark, a
//! table of the top ops, and a Chrome trace (`trace.json`, for Perfetto or chrome://tracing).
//! Off by default; when off each op pays one relaxed atomic load.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<Recording>> = Mutex::new(None);

thread_local! {
    /// The graph node whose backward is running on this thread, if any.
    static BACKWARD_OF: Cell<Option<&'static str>> = const { Cell::new(None) };
}

struct Recording {
    start: Instant,
    events: Vec<OpEvent>,
}

/// One timed op.
#[derive(Debug, Clone)]
pub struct OpEvent {
    pub name: &'static str,
    /// None in the forward pass; the graph node's name in backward.
    pub backward_of: Option<&'static str>,
    pub start_us: f64,
    pub dur_us: f64,
    pub thread: u64,
    pub bytes_in_use: usize,
}

/// Starts recording (clears what an earlier recording held).
pub fn start() {
    crate::memory::reset_cpu_peak();
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Recording { start: Instant::now(), events: Vec::new() });
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops recording and returns what was recorded.
pub fn stop() -> Profile {
    ENABLED.store(false, Ordering::Relaxed);
    let rec = STATE.lock().unwrap_or_else(|p| p.into_inner()).take();
    Profile { events: rec.map(|r| r.events).unwrap_or_default(), peak_bytes: crate::memory::cpu_peak_bytes() }
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Times the enclosing op until dropped (None, and free, when the profiler is off).
pub(crate) fn scope(name: &'static str) -> Option<Scope> {
    is_enabled().then(|| Scope { name, start: Instant::now() })
}

pub(crate) struct Scope {
    name: &'static str,
    start: Instant,
}

impl Drop for Scope {
    fn drop(&mut self) {
        let end = Instant::now();
        let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = st.as_mut() {
            rec.events.push(OpEvent {
                name: self.name,
                backward_of: BACKWARD_OF.with(|b| b.get()),
                start_us: self.start.saturating_duration_since(rec.start).as_secs_f64() * 1e6,
                dur_us: (end - self.start).as_secs_f64() * 1e6,
                thread: thread_id(),
                bytes_in_use: crate::memory::cpu_bytes_in_use(),
            });
        }
    }
}

fn thread_id() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::thread::current().id().hash(&mut h);
    h.finish() % 100_000
}

/// Marks ops on this thread as part of `node`'s backward until the guard drops.
pub(crate) fn backward_of(node: &'static str) -> impl Drop {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BACKWARD_OF.with(|b| b.set(self.0));
        }
    }
    Restore(BACKWARD_OF.with(|b| b.replace(Some(node))))
}

/// A finished recording.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub events: Vec<OpEvent>,
    /// The most bytes CPU tensors held at once while recording.
    pub peak_bytes: usize,
}

impl Profile {
    /// Only the events recorded on the calling thread: what this thread's work ran, when
    /// other threads (other tests, a server) use the process's backends at the same time.
    pub fn this_thread(&self) -> Profile {
        let t = thread_id();
        Profile { events: self.events.iter().filter(|e| e.thread == t).cloned().collect(), peak_bytes: self.peak_bytes }
    }

    /// (label, calls, total ms) per op, largest total first. Labels: `matmul` in forward,
    /// `matmul ← linear.backward`-style `op [backward of NODE]` in backward.
    pub fn totals(&self) -> Vec<(String, usize, f64)> {
        let mut m: HashMap<String, (usize, f64)> = HashMap::new();
        for e in &self.events {
            let label = match e.backward_of {
                None => e.name.to_string(),
                Some(n) => format!("{} [backward of {n}]", e.name),
            };
            let s = m.entry(label).or_default();
            s.0 += 1;
            s.1 += e.dur_us / 1e3;
        }
        let mut v: Vec<(String, usize, f64)> = m.into_iter().map(|(k, (c, t))| (k, c, t)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }

    /// A plain-text table of the `n` most expensive ops.
    pub fn table(&self, n: usize) -> String {
        let totals = self.totals();
        let all: f64 = totals.iter().map(|t| t.2).sum();
        let mut s = format!("{:<44} {:>8} {:>11} {:>9} {:>6}\n", "op", "calls", "total ms", "mean µs", "%");
        for (label, calls, ms) in totals.iter().take(n) {
            s += &format!(
                "{:<44} {:>8} {:>11.2} {:>9.1} {:>5.1}%\n",
                label,
                calls,
                ms,
                ms * 1e3 / *calls as f64,
                100.0 * ms / all.max(1e-12)
            );
        }
        s += &format!("memory high-water mark: {:.1} MB of tensor storage\n", self.peak_bytes as f64 / 1e6);
        s
    }

    /// Chrome trace-event JSON: one complete ("X") event per op and a counter ("C") track
    /// of tensor memory.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let mut ev: Vec<serde_json::Value> = Vec::with_capacity(self.events.len() * 2);
        for e in &self.events {
            let cat = if e.backward_of.is_some() { "backward" } else { "forward" };
            let mut args = serde_json::json!({ "bytes_in_use": e.bytes_in_use });
            if let Some(n) = e.backward_of {
                args["backward_of"] = serde_json::Value::from(n);
            }
            ev.push(serde_json::json!({
                "name": e.name, "cat": cat, "ph": "X", "ts": e.start_us, "dur": e.dur_us,
                "pid": std::process::id(), "tid": e.thread, "args": args,
            }));
            ev.push(serde_json::json!({
                "name": "tensor memory", "ph": "C", "ts": e.start_us + e.dur_us, "pid": std::process::id(),
                "args": { "MB": e.bytes_in_use as f64 / 1e6 },
            }));
        }
        serde_json::json!({ "traceEvents": ev, "displayTimeUnit": "ms" })
    }
}
