//! The queue bound (503), the request timeout (504), and graceful shutdown, provoked with a
//! model made slow by `forward_delay`.

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let dir = TempDir::new("queue");
    save(&dir.0, &mlp());
    let body = instances_body(&instances(1, 1));

    // No room at all: every predict is refused, the rest still answers.
    let mut cfg = config(&dir.0);
    cfg.queue_capacity = 0;
    let h = Harness::start(cfg).await;
    let (c, v) = h.post("/v1/models/mnist:predict", body.clone()).await;
    assert_eq!(c, 503, "{v}");
    assert!(v["error"].as_str().unwrap().contains("queue is full"), "{v}");
    assert_eq!(h.get("/v1/models/mnist").await.0, 200);
    h.server.shutdown().await.unwrap();

    // Room for one slow request: a second one while it runs is refused, the first succeeds.
    let mut cfg = config(&dir.0);
    cfg.queue_capacity = 1;
    cfg.max_batch = 1;
    cfg.forward_delay = Duration::from_millis(600);
    let h = Harness::start(cfg).await;
    let url = format!("{}/v1/models/mnist:predict", h.base);
    let first = tokio::spawn({
        let (client, url, body) = (h.client.clone(), url.clone(), body.clone());
        async move { post(&client, &url, body).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (c, v) = h.post("/v1/models/mnist:predict", body.clone()).await;
    assert_eq!(c, 503, "{v}");
    let (c, v) = first.await.unwrap();
    assert_eq!(c, 200, "{v}");
    assert_eq!(h.metric("kiln_serve_queue_full_total").await, 1.0);
    assert_eq!(h.metric("kiln_serve_queue_depth").await, 0.0);
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_times_out_with_504() {
    let dir = TempDir::new("timeout");
    save(&dir.0, &mlp());
    let mut cfg = config(&dir.0);
    cfg.request_timeout = Duration::from_millis(200);
    cfg.forward_delay = Duration::from_millis(800);
    let h = Harness::start(cfg).await;
    let (c, v) = h.post("/v1/models/mnist:predict", instances_body(&instances(1, 1))).await;
    assert_eq!(c, 504, "{v}");
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let dir = TempDir::new("shutdown");
    let model = mlp();
    save(&dir.0, &model);
    let mut cfg = config(&dir.0);
    cfg.forward_delay = Duration::from_millis(500);
    let h = Harness::start(cfg).await;
    let addr = h.server.local_addr();
    let data = instances(2, 5);
    let in_flight = tokio::spawn({
        let (client, url, body) =
            (h.client.clone(), format!("{}/v1/models/mnist:predict", h.base), instances_body(&data));
        async move { post(&client, &url, body).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = std::time::Instant::now();
    h.server.shutdown().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200), "shutdown did not wait for the request");
    let (c, v) = in_flight.await.unwrap();
    assert_eq!(c, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &forward(&model, &data, 2));
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_model_directories_are_refused_at_start() {
    let dir = TempDir::new("empty");
    let e = Server::start(config(&dir.0)).await.err().expect("an empty directory must be refused");
    assert!(e.to_string().contains("no loadable checkpoint"), "{e}");
    std::fs::create_dir(dir.0.join("1")).unwrap();
    std::fs::write(dir.0.join("1").join("checkpoint.json"), b"{not json").unwrap();
    let e = Server::start(config(&dir.0)).await.err().expect("a broken version must be refused");
    assert!(e.to_string().contains("version 1"), "{e}");
    assert!(Server::start(config(&dir.0.join("missing"))).await.is_err());
}
