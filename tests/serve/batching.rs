//! Dynamic batching: concurrent requests share forward passes, and each gets its own rows.

use crate::*;

/// Sends `n` concurrent one-instance requests; checks every answer against the forward pass.
async fn concurrent(h: &Harness, model: &dyn Module, n: usize) {
    let url = format!("{}/v1/models/mnist:predict", h.base);
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url) = (h.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let data = instances(1, 1000 + i as u64);
            let (c, v) = post(&client, &url, instances_body(&data)).await;
            (data, c, v)
        }));
    }
    for t in tasks {
        let (data, c, v) = t.await.unwrap();
        assert_eq!(c, 200, "{v}");
        assert_rows_close(&rows(&v["predictions"]), &forward(model, &data, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_forward_passes() {
    let dir = TempDir::new("batch");
    let model = mlp();
    save(&dir.0, &model);
    let mut cfg = config(&dir.0);
    cfg.max_batch = 32;
    cfg.batch_timeout = Duration::from_millis(50);
    let h = Harness::start(cfg).await;
    concurrent(&h, &model, 32).await;
    let passes = h.metric("kiln_serve_forward_passes_total").await;
    assert_eq!(h.metric("kiln_serve_predict_rows_total").await, 32.0);
    assert!(passes < 32.0, "32 concurrent requests took {passes} forward passes");
    let singles = h.metric("kiln_serve_batch_size_bucket{le=\"1\"}").await;
    assert!(singles < passes, "every forward pass had one row ({passes} passes)");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_batch_1_turns_batching_off() {
    let dir = TempDir::new("nobatch");
    let model = mlp();
    save(&dir.0, &model);
    let mut cfg = config(&dir.0);
    cfg.max_batch = 1;
    cfg.batch_timeout = Duration::from_millis(50);
    let h = Harness::start(cfg).await;
    concurrent(&h, &model, 12).await;
    assert_eq!(h.metric("kiln_serve_forward_passes_total").await, 12.0);
    assert_eq!(h.metric("kiln_serve_batch_size_bucket{le=\"1\"}").await, 12.0);
    h.server.shutdown().await.unwrap();
}
