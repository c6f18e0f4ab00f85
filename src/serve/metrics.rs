//! Counters and histograms of the server, written in Prometheus' text exposition format
//! (version 0.0.4) at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the request latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the batch size histogram, in rows.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// A cumulative histogram with fixed buckets.
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct Requests {
    /// (endpoint, status code) → count.
    by_status: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// Everything `/metrics` reports.
pub(crate) struct Metrics {
    requests: Mutex<Requests>,
    batches: Mutex<Histogram>,
    pub forward_passes: AtomicU64,
    pub forward_errors: AtomicU64,
    pub rows: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub version_load_failures: AtomicU64,
    pub versions_loaded: AtomicU64,
    pub latest_version: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Mutex::default(),
            batches: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
            forward_passes: AtomicU64::new(0),
            forward_errors: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            version_load_failures: AtomicU64::new(0),
            versions_loaded: AtomicU64::new(0),
            latest_version: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// One finished request.
    pub fn request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.by_status.entry((endpoint, status)).or_insert(0) += 1;
        r.latency.entry(endpoint).or_insert_with(|| Histogram::new(&LATENCY_BUCKETS)).observe(elapsed.as_secs_f64());
    }

    /// One forward pass of `rows` rows.
    pub fn batch(&self, rows: usize) {
        self.forward_passes.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).observe(rows as f64);
    }

    /// The text exposition, `queued` being the predict requests admitted now.
    pub fn render(&self, queued: usize) -> String {
        let mut o = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        {
            let r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
            o.push_str("# HELP kiln_serve_requests_total HTTP requests by endpoint and status code.\n");
            o.push_str("# TYPE kiln_serve_requests_total counter\n");
            for ((ep, code), n) in &r.by_status {
                let _ = writeln!(o, "kiln_serve_requests_total{{endpoint=\"{ep}\",code=\"{code}\"}} {n}");
            }
            o.push_str("# HELP kiln_serve_request_errors_total HTTP requests answered with a 4xx or 5xx status.\n");
            o.push_str("# TYPE kiln_serve_request_errors_total counter\n");
            let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
            for ((ep, code), n) in &r.by_status {
                if *code >= 400 {
                    *errors.entry(ep).or_insert(0) += n;
                }
            }
            for (ep, n) in errors {
                let _ = writeln!(o, "kiln_serve_request_errors_total{{endpoint=\"{ep}\"}} {n}");
            }
            o.push_str("# HELP kiln_serve_request_duration_seconds Time from request to response.\n");
            o.push_str("# TYPE kiln_serve_request_duration_seconds histogram\n");
            for (ep, h) in &r.latency {
                h.write(&mut o, "kiln_serve_request_duration_seconds", &format!("endpoint=\"{ep}\""));
            }
        }
        o.push_str("# HELP kiln_serve_batch_size Rows per forward pass.\n");
        o.push_str("# TYPE kiln_serve_batch_size histogram\n");
        self.batches.lock().unwrap_or_else(|e| e.into_inner()).write(&mut o, "kiln_serve_batch_size", "");
        let mut scalar = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        scalar("kiln_serve_forward_passes_total", "counter", "Forward passes run.", load(&self.forward_passes));
        scalar("kiln_serve_forward_errors_total", "counter", "Forward passes that failed.", load(&self.forward_errors));
        scalar("kiln_serve_predict_rows_total", "counter", "Rows (instances) predicted.", load(&self.rows));
        scalar(
            "kiln_serve_queue_full_total",
            "counter",
            "Predict requests refused because the queue was full.",
            load(&self.rejected_queue_full),
        );
        scalar("kiln_serve_queue_depth", "gauge", "Predict requests queued or running now.", queued as u64);
        scalar(
            "kiln_serve_version_load_failures_total",
            "counter",
            "Failed attempts to load a model version.",
            load(&self.version_load_failures),
        );
        scalar("kiln_serve_versions_loaded", "gauge", "Model versions being served.", load(&self.versions_loaded));
        scalar(
            "kiln_serve_latest_version",
            "gauge",
            "The version unversioned requests go to.",
            load(&self.latest_version),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        for rows in [1, 3, 3, 40] {
            m.batch(rows);
        }
        let text = m.render(0);
        assert!(text.contains("kiln_serve_batch_size_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("kiln_serve_batch_size_bucket{le=\"4\"} 3\n"), "{text}");
        assert!(text.contains("kiln_serve_batch_size_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("kiln_serve_batch_size_sum 47\n"), "{text}");
        assert!(text.contains("kiln_serve_forward_passes_total 4\n"), "{text}");
    }
}
