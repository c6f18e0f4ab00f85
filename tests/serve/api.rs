//! The endpoints' documents, and predictions against the model's own forward pass.

use crate::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_equal_the_forward_pass_in_both_forms() {
    let dir = TempDir::new("forms");
    let model = mlp();
    save(&dir.0, &model);
    let h = Harness::start(config(&dir.0)).await;
    let data = instances(3, 7);
    let want = forward(&model, &data, 3);

    // Row form, flat instances.
    let (code, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
    assert_eq!(code, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &want);
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");

    // Row form, instances as images [1, 28, 28], as [28, 28], and named {"x": ...}.
    let image = |i: usize| -> Vec<Vec<f32>> { data[i * 784..(i + 1) * 784].chunks(28).map(|r| r.to_vec()).collect() };
    let body = json!({
        "signature_name": "serving_default",
        "instances": [[image(0)], image(1), {"x": image(2)}],
    });
    let (code, v) = h.post("/v1/models/mnist:predict", body.to_string()).await;
    assert_eq!(code, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &want);

    // Columnar form, bare and named, on the versioned path.
    let batch: Vec<&[f32]> = data.chunks(784).collect();
    for body in [json!({ "inputs": batch }), json!({ "inputs": { "x": batch } })] {
        let (code, v) = h.post("/v1/models/mnist/versions/1:predict", body.to_string()).await;
        assert_eq!(code, 200, "{v}");
        assert_rows_close(&rows(&v["outputs"]), &want);
        assert!(v.get("predictions").is_none());
    }
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cnn_checkpoint_is_served_too() {
    let dir = TempDir::new("cnn");
    let model = kiln::train::models::cnn(CPU).unwrap();
    save(&dir.0, &model);
    let h = Harness::start(config(&dir.0)).await;
    let data = instances(2, 3);
    let (code, v) = h.post("/v1/models/mnist:predict", instances_body(&data)).await;
    assert_eq!(code, 200, "{v}");
    assert_rows_close(&rows(&v["predictions"]), &forward(&model, &data, 2));
    h.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metadata_and_health_documents() {
    let dir = TempDir::new("docs");
    save(&dir.0, &mlp());
    let mut cfg = config(&dir.0);
    cfg.name = "digits".into();
    let h = Harness::start(cfg).await;
    let status = json!({"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]});
    for path in ["/v1/models/digits", "/v1/models/digits/versions/1"] {
        assert_eq!(h.get(path).await, (200, status.clone()), "{path}");
    }
    let dims = |d: &[i64]| -> Value {
        json!({"dim": d.iter().map(|s| json!({"size": s.to_string(), "name": ""})).collect::<Vec<_>>(), "unknown_rank": false})
    };
    let metadata = json!({
        "model_spec": {"name": "digits", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": dims(&[-1, 1, 28, 28]), "name": "x"}},
            "outputs": {"logits": {"dtype": "DT_FLOAT", "tensor_shape": dims(&[-1, 10]), "name": "logits"}},
            "method_name": "tensorflow/serving/predict"
        }}}}
    });
    for path in ["/v1/models/digits/metadata", "/v1/models/digits/versions/1/metadata"] {
        assert_eq!(h.get(path).await, (200, metadata.clone()), "{path}");
    }
    // TensorFlow Serving's field order, too.
    let text = h.client.get(format!("{}/v1/models/digits", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.starts_with(r#"{"model_version_status":[{"version":"1","state":"AVAILABLE","#), "{text}");
    let (code, v) = h.get("/healthz").await;
    assert_eq!(code, 200, "{v}");
    h.server.shutdown().await.unwrap();
}
