//! Kiln's MLP and CNN against PyTorch: the fixtures (made by tests/fixtures/
//! make_torch_fixtures.py) hold PyTorch's weights, an input batch, its logits, loss (label
//! smoothing 0.1) and every parameter's gradient.

use crate::{assert_close, vec32, CPU};
use kiln::io::load_safetensors;
use kiln::nn::Module;
use kiln::train::models;
use std::collections::HashMap;

fn check(file: &str, model: &dyn Module) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
    let (tensors, meta) = load_safetensors(&path, CPU).unwrap();
    assert_eq!(meta.get("label_smoothing").map(String::as_str), Some("0.1"));
    let by: HashMap<String, kiln::Tensor> = tensors.into_iter().collect();
    // PyTorch's parameter names are Kiln's: the state_dict loads as it is.
    let params: Vec<(String, kiln::Tensor)> =
        by.iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone()))).collect();
    model.load_state_dict(&params).unwrap();
    let logits = model.forward(&by["input"]).unwrap();
    assert_close(&format!("{file} logits"), &vec32(&logits), &vec32(&by["logits"]), 1e-4, 1e-4);
    let loss = logits.cross_entropy(&by["labels"], 0.1).unwrap();
    assert_close(&format!("{file} loss"), &vec32(&loss), &vec32(&by["loss"]), 1e-4, 1e-4);
    loss.backward().unwrap();
    for (name, p) in model.named_parameters() {
        let want = &by[&format!("grad.{name}")];
        assert_close(&format!("{file} grad {name}"), &vec32(&p.grad().unwrap()), &vec32(want), 1e-4, 1e-4);
    }
}

#[test]
fn mlp_matches_pytorch() {
    check("torch_mlp.safetensors", &models::mlp(CPU).unwrap());
}

#[test]
fn cnn_matches_pytorch() {
    check("torch_cnn.safetensors", &models::cnn(CPU).unwrap());
}

#[test]
fn kiln_weights_round_trip_through_safetensors_names() {
    let m = models::cnn(CPU).unwrap();
    let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"]);
    let w = &m.named_parameters()[0].1;
    assert_eq!(w.dims(), &[32, 1, 3, 3], "Conv2d weight is [out, in/groups, kh, kw]");
}
