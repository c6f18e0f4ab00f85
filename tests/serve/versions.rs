//! Model versions: a new one dropped into the base directory takes over while clients keep
//! sending requests, none failing; a broken one is ignored; a removed one is unloaded.

use crate::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn close(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| x.iter().zip(y).all(|(p, q)| (p - q).abs() <= 1e-5 + 1e-5 * q.abs()))
}

/// Writes a checkpoint crash-safely into `base/version`: into a temporary name first, then
/// renamed into place (the rename is what the server can see).
fn publish(base: &Path, version: u64, write: impl FnOnce(&Path)) {
    let tmp = base.join(format!(".incoming-{version}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    write(&tmp);
    std::fs::rename(&tmp, base.join(version.to_string())).unwrap();
}

/// Waits until `f` holds, polling every 20 ms, for at most 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_takes_over_without_failing_a_request() {
    let base = TempDir::new("versions");
    let (m1, m2) = (mlp(), mlp());
    publish(&base.0, 1, |d| save(d, &m1));
    let h = Harness::start(config(&base.0)).await;
    let data = instances(2, 11);
    let (want1, want2) = (forward(&m1, &data, 2), forward(&m2, &data, 2));
    assert!(!close(&want1, &want2), "the two versions must answer differently");

    // Two clients keep predicting; each records which version answered, in order.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::new(std::sync::Mutex::new(vec![Vec::new(), Vec::new()]));
    let mut clients = Vec::new();
    for c in 0..2 {
        let (client, url, body) =
            (h.client.clone(), format!("{}/v1/models/mnist:predict", h.base), instances_body(&data));
        let (stop, seen, want1, want2) = (stop.clone(), seen.clone(), want1.clone(), want2.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let (code, v) = post(&client, &url, body.clone()).await;
                assert_eq!(code, 200, "client {c}, request {n}: {v}");
                let got = rows(&v["predictions"]);
                let which = if close(&got, &want1) {
                    1
                } else if close(&got, &want2) {
                    2
                } else {
                    panic!("client {c}, request {n}: an answer of neither version: {v}")
                };
                seen.lock().unwrap()[c].push(which);
                n += 1;
            }
        }));
    }
    let count = |v: u8| seen.lock().unwrap().iter().flatten().filter(|&&w| w == v).count();
    eventually("answers from version 1", || count(1) >= 10).await;

    publish(&base.0, 2, |d| save(d, &m2));
    eventually("answers from version 2", || count(2) >= 10).await;

    // A broken version 3 (garbage checkpoint.json) is ignored: version 2 keeps answering.
    publish(&base.0, 3, |d| std::fs::write(d.join("checkpoint.json"), b"\x00garbage{").unwrap());
    // Refused at a scan, and retried at the next ones.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.metric("kiln_serve_version_load_failures_total").await < 2.0 {
        assert!(std::time::Instant::now() < deadline, "version 3 was never tried twice");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = count(2);
    eventually("more answers after the broken version", || count(2) >= after + 10).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    for (c, order) in seen.lock().unwrap().iter().enumerate() {
        let first2 = order.iter().position(|&w| w == 2).unwrap_or(order.len());
        assert!(order[first2..].iter().all(|&w| w == 2), "client {c} went back to version 1: {order:?}");
    }
    assert_eq!(h.metric("kiln_serve_latest_version").await, 2.0);
    let (code, v) = h.get("/v1/models/mnist").await;
    assert_eq!(code, 200);
    let versions: Vec<&str> =
        v["model_version_status"].as_array().unwrap().iter().map(|s| s["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1", "2"], "{v}");
    assert_eq!(h.get("/v1/models/mnist/versions/3").await.0, 404);
    assert_eq!(h.get("/v1/models/mnist/metadata").await.1["model_spec"]["version"], "2");

    // Each loaded version still answers on its own path.
    let (code, v) = h.post("/v1/models/mnist/versions/1:predict", instances_body(&data)).await;
    assert_eq!(code, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &want1);

    // Version 2 removed: unloaded, version 1 answers again.
    std::fs::remove_dir_all(base.0.join("2")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
        assert_eq!(code, 200, "{v}");
        if close(&rows(&v["predictions"]), &want1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "version 2 was never unloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.get("/v1/models/mnist/versions/2").await.0, 404);
    h.server.shutdown().await.unwrap();
}
