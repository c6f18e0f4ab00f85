//! Every error answer with its status code, and a server that keeps answering after abuse.

use crate::*;
use serde_json::json;

fn assert_error(code: u16, v: &Value, want_code: u16, want_text: &str, what: &str) {
    assert_eq!(code, want_code, "{what}: {v}");
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no \"error\" string in {v}"));
    assert!(msg.contains(want_text), "{what}: error {msg:?} does not mention {want_text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_as_tensorflow_serving_answers_them() {
    let dir = TempDir::new("errors");
    save(&dir.0, &mlp());
    let h = Harness::start(config(&dir.0)).await;
    let good: Vec<f32> = vec![0.5; 784];
    let predict = "/v1/models/mnist:predict";
    let posts: Vec<(&str, String, u16, &str)> = vec![
        (predict, r#"{"instances": [[1, 2"#.into(), 400, "not valid JSON"),
        (predict, "".into(), 400, "not valid JSON"),
        (predict, "[1, 2]".into(), 400, "JSON object"),
        (predict, r#"{"instances": [[1, 2, 3]]}"#.into(), 400, "instance 0 has shape [3]"),
        (predict, json!({"instances": [good, vec![0.5; 783]]}).to_string(), 400, "instance 1 has shape [783]"),
        (predict, json!({"instances": [vec![vec!["a"; 28]; 28]]}).to_string(), 400, "found the string \"a\""),
        (predict, r#"{"instances": [[true]]}"#.into(), 400, "DT_FLOAT"),
        (predict, r#"{"instances": [[[1, 2], [3]]]}"#.into(), 400, "ragged"),
        (predict, r#"{"instances": {"x": 1}}"#.into(), 400, "a list of instances"),
        (predict, r#"{"instances": []}"#.into(), 400, "empty"),
        (predict, json!({"instances": [good], "inputs": [good]}).to_string(), 400, "both"),
        (predict, r#"{"signature_name": "serving_default"}"#.into(), 400, "neither"),
        (predict, json!({"inputs": good}).to_string(), 400, "\"inputs\" has shape [784]"),
        (predict, json!({"signature_name": "classify_x", "instances": [good]}).to_string(), 400, "classify_x"),
        (predict, json!({"instances": [{"y": good}]}).to_string(), 400, "\"x\""),
        ("/v1/models/other:predict", json!({"instances": [good]}).to_string(), 404, "\"other\" not found"),
        ("/v1/models/mnist/versions/9:predict", json!({"instances": [good]}).to_string(), 404, "no version 9"),
        ("/v1/models/mnist:classify", json!({"examples": []}).to_string(), 400, ":classify is not supported"),
        ("/v1/models/mnist:frobnicate", "{}".into(), 404, "malformed request path"),
        ("/v1/models/mnist/labels/stable:predict", "{}".into(), 404, "label"),
    ];
    for (path, body, code, text) in posts {
        let (c, v) = h.post(path, body.clone()).await;
        assert_error(c, &v, code, text, &format!("POST {path} {}", &body[..body.len().min(60)]));
    }
    let gets = [
        ("/v1/models/other", 404, "\"other\" not found"),
        ("/v1/models/other/metadata", 404, "\"other\" not found"),
        ("/v1/models/mnist/versions/2", 404, "no version 2"),
        ("/v1/models/mnist/versions/2/metadata", 404, "no version 2"),
        ("/v1/models/mnist/versions/two", 404, "malformed"),
        ("/v1/models/mnist:predict", 405, "use POST"),
        ("/v2/models/mnist", 404, "no such endpoint"),
    ];
    for (path, code, text) in gets {
        let (c, v) = h.get(path).await;
        assert_error(c, &v, code, text, &format!("GET {path}"));
    }
    // The metrics counted them.
    assert!(h.metric("kiln_serve_forward_passes_total").await == 0.0);
    let text = h.client.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("kiln_serve_requests_total{endpoint=\"predict\",code=\"400\"} 15\n"), "{text}");
    assert!(text.contains("kiln_serve_request_duration_seconds_bucket{endpoint=\"predict\",le=\"+Inf\"}"), "{text}");
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_and_the_server_goes_on() {
    let dir = TempDir::new("413");
    let model = mlp();
    save(&dir.0, &model);
    let mut cfg = config(&dir.0);
    cfg.max_body_bytes = 64 << 10;
    let h = Harness::start(cfg).await;
    let big = instances_body(&instances(16, 1));
    assert!(big.len() > 64 << 10);
    let (c, v) = h.post("/v1/models/mnist:predict", big).await;
    assert_error(c, &v, 413, "larger than 65536 bytes", "big body");
    let data = instances(2, 2);
    let (c, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
    assert_eq!(c, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &forward(&model, &data, 2));
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_interleaved_with_good_ones() {
    let dir = TempDir::new("fuzz");
    let model = mlp();
    save(&dir.0, &model);
    let h = Harness::start(config(&dir.0)).await;
    let deep = format!("{{\"instances\": {}{}}}", "[".repeat(5000), "]".repeat(5000));
    let garbage: Vec<Vec<u8>> = vec![
        b"\xff\xfe\x00garbage".to_vec(),
        b"{\"instances\": [[1e999]]}".to_vec(),
        b"{\"instances\": [[NaN]]}".to_vec(),
        deep.into_bytes(),
        b"{\"instances\": [[0.5, \"0.5\"]]}".to_vec(),
        b"{\"inputs\": null}".to_vec(),
        b"{\"instances\": [[-0.0]], \"instances\": 3}".to_vec(),
        b"null".to_vec(),
        (0..3000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
    ];
    let mut good = 0;
    for round in 0..36u64 {
        if round % 2 == 0 {
            let body = garbage[(round / 2) as usize % garbage.len()].clone();
            let (c, v) = h.post("/v1/models/mnist:predict", body).await;
            assert_eq!(c, 400, "garbage {round}: {v}");
            assert!(v["error"].is_string(), "{v}");
        } else {
            let data = instances(1 + round as usize % 3, round);
            let n = data.len() / 784;
            let (c, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
            assert_eq!(c, 200, "good {round}: {v}");
            assert_rows_close(&rows(&v["predictions"]), &forward(&model, &data, n));
            good += 1;
        }
    }
    // Bytes that are not HTTP at all, on a raw connection: refused, and nothing else breaks.
    let addr = h.server.local_addr();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"\x16\x03\x01 NOT HTTP \r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    })
    .await
    .unwrap();
    let data = instances(4, 99);
    let (c, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
    assert_eq!(c, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &forward(&model, &data, 4));
    assert_eq!(h.get("/v1/models/mnist").await.0, 200);
    assert_eq!(h.metric("kiln_serve_request_errors_total{endpoint=\"predict\"}").await, 18.0);
    assert_eq!(good, 18);
    h.server.shutdown().await.unwrap();
}
