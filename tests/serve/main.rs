//! `kiln serve` in-process: a real HTTP client against the server on 127.0.0.1, port 0,
//! serving small checkpoints saved into temporary directories.

mod api;
mod batching;
mod errors;
mod lifecycle;
mod versions;

use kiln::io::checkpoint::{self, SaveRequest};
use kiln::nn::{Module, Sequential};
use kiln::serve::{ServeConfig, Server};
use kiln::{DType, Device, Tensor};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

pub const CPU: Device = Device::Cpu;

#[path = "../common/tempdir.rs"]
mod tempdir;
pub use tempdir::TempDir;

/// The MLP of `kiln train --model mlp`, with fresh random weights.
pub fn mlp() -> Sequential {
    kiln::train::models::mlp(CPU).unwrap()
}

pub fn save(dir: &Path, model: &dyn Module) {
    checkpoint::save(
        dir,
        SaveRequest { model, optimizer_state: None, step: 1, epoch: 1, config: serde_json::json!({}), rng: None },
    )
    .unwrap();
}

/// `n` MNIST-sized instances (784 numbers each), deterministic in `seed`.
pub fn instances(n: usize, seed: u64) -> Vec<f32> {
    let t = Tensor::randn_with([n, 784], DType::F32, CPU, &mut kiln::Generator::new(seed)).unwrap();
    t.to_vec::<f32>().unwrap()
}

/// What `kiln eval` computes: the model's logits in eval mode without gradients.
pub fn forward(model: &dyn Module, data: &[f32], n: usize) -> Vec<Vec<f32>> {
    model.eval();
    let x = Tensor::from_vec(data.to_vec(), [n, 1, 28, 28], CPU).unwrap();
    let y = kiln::no_grad(|| model.forward(&x)).unwrap();
    y.to_vec2::<f32>().unwrap()
}

/// Rows of floats from a JSON list of lists.
pub fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

pub fn assert_rows_close(got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "row counts differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "row {i}: lengths differ");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "row {i}[{j}]: got {a}, want {b}");
        }
    }
}

/// A config for tests: port 0 on loopback, quick polling.
pub fn config(dir: &Path) -> ServeConfig {
    let mut c = ServeConfig::new(dir);
    c.addr = "127.0.0.1:0".parse().unwrap();
    c.poll_interval = Duration::from_millis(50);
    c.batch_timeout = Duration::from_millis(1);
    c
}

/// A running server and a client for it.
pub struct Harness {
    pub server: Server,
    pub client: reqwest::Client,
    pub base: String,
}

impl Harness {
    pub async fn start(cfg: ServeConfig) -> Harness {
        let server = Server::start(cfg).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        Harness { server, client: reqwest::Client::new(), base }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        post(&self.client, &format!("{}{path}", self.base), body).await
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.client, &self.base, name).await
    }
}

pub async fn post(client: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `{"instances": [[784 numbers], ...]}`
pub fn instances_body(data: &[f32]) -> String {
    let list: Vec<&[f32]> = data.chunks(784).collect();
    serde_json::json!({ "instances": list }).to_string()
}
