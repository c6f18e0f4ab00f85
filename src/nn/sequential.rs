//! Keras-style container: `Sequential::new().add(layer).add(layer)`; children are named
//! "0", "1", ... as in PyTorch's nn.Sequential.

use super::{join, LayerSpec, Module, TensorKind};
use crate::{Result, Tensor};

#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential { layers: Vec::new() }
    }
    /// Appends a layer (builder style, as Keras' `model.add(layer)`).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }
    /// Appends an already boxed layer.
    pub fn push(&mut self, layer: Box<dyn Module>) {
        self.layers.push(layer);
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            // A layer with fused forms (Conv2d) may take the next layers (ReLU, pooling) with
            // it. Only the two layers after it can take part.
            let next: Vec<Option<LayerSpec>> = self.layers[i + 1..].iter().take(2).map(|l| l.spec()).collect();
            if let Some((out, covered)) = self.layers[i].forward_fused(&h, &next) {
                h = out?;
                i += 1 + covered;
                continue;
            }
            h = self.layers[i].forward(&h)?;
            i += 1;
        }
        Ok(h)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit(&join(prefix, &i.to_string()), f);
        }
    }
    fn set_training(&self, on: bool) {
        for l in &self.layers {
            l.set_training(on);
        }
    }
    fn spec(&self) -> Option<LayerSpec> {
        Some(LayerSpec::Sequential { layers: self.layers.iter().map(|l| l.spec()).collect::<Option<Vec<_>>>()? })
    }
}
