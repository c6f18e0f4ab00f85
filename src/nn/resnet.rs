//! ResNet-18 for 32x32 images (the CIFAR variant: a 3x3 stem, no max pool), with
//! torchvision's parameter names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
//! `layer2.0.downsample.0`, `fc`). The larger workload of the GPU benchmarks (issue 5):
//! ~0.56 GFLOP per 32x32 image forward, 11.2M parameters for 10 classes.

use super::{join, BatchNorm, Conv2d, Linear, Module, TensorKind};
use crate::{Conv2dOptions, Device, Result, Tensor};

/// conv3x3 → BN → ReLU → conv3x3 → BN, plus the input (through a strided 1x1 conv + BN
/// where the shape changes), then ReLU.
pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub conv2: Conv2d,
    pub bn2: BatchNorm,
    pub downsample: Option<(Conv2d, BatchNorm)>,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: Device) -> Result<Conv2d> {
    let o = Conv2dOptions { stride: (stride, stride), padding: (k / 2, k / 2), ..Default::default() };
    Conv2d::new(cin, cout, (k, k), o, false, device)
}

impl BasicBlock {
    pub fn new(cin: usize, cout: usize, stride: usize, device: Device) -> Result<BasicBlock> {
        let downsample = if stride != 1 || cin != cout {
            Some((conv(cin, cout, 1, stride, device)?, BatchNorm::new_2d(cout, device)?))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(cin, cout, 3, stride, device)?,
            bn1: BatchNorm::new_2d(cout, device)?,
            conv2: conv(cout, cout, 3, 1, device)?,
            bn2: BatchNorm::new_2d(cout, device)?,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?)?;
        let identity = match &self.downsample {
            Some((c, bn)) => bn.forward(&c.forward(x)?)?,
            None => x.clone(),
        };
        y.add(&identity)?.relu()
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        self.conv1.visit(&join(prefix, "conv1"), f);
        self.bn1.visit(&join(prefix, "bn1"), f);
        self.conv2.visit(&join(prefix, "conv2"), f);
        self.bn2.visit(&join(prefix, "bn2"), f);
        if let Some((c, bn)) = &self.downsample {
            c.visit(&join(prefix, "downsample.0"), f);
            bn.visit(&join(prefix, "downsample.1"), f);
        }
    }
    fn set_training(&self, on: bool) {
        for bn in [&self.bn1, &self.bn2].into_iter().chain(self.downsample.as_ref().map(|(_, bn)| bn)) {
            bn.set_training(on);
        }
    }
}

/// ResNet-18: stem (conv3x3 64, BN, ReLU), four stages of two [`BasicBlock`]s (64, 128, 256,
/// 512 channels; the last three start with stride 2), global average pool, Linear.
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    /// layer1..layer4, two blocks each.
    pub layers: Vec<Vec<BasicBlock>>,
    pub fc: Linear,
}

impl ResNet {
    pub fn resnet18(in_channels: usize, classes: usize, device: Device) -> Result<ResNet> {
        let mut layers = Vec::new();
        let mut cin = 64;
        for (i, cout) in [64, 128, 256, 512].into_iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            layers.push(vec![BasicBlock::new(cin, cout, stride, device)?, BasicBlock::new(cout, cout, 1, device)?]);
            cin = cout;
        }
        Ok(ResNet {
            conv1: conv(in_channels, 64, 3, 1, device)?,
            bn1: BatchNorm::new_2d(64, device)?,
            layers,
            fc: Linear::new(512, classes, true, device)?,
        })
    }
}

impl Module for ResNet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        for block in self.layers.iter().flatten() {
            y = block.forward(&y)?;
        }
        // Global average pooling: [N, 512, H, W] -> [N, 512].
        self.fc.forward(&y.mean(&[2, 3], false)?)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor, TensorKind)) {
        self.conv1.visit(&join(prefix, "conv1"), f);
        self.bn1.visit(&join(prefix, "bn1"), f);
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, block) in layer.iter().enumerate() {
                block.visit(&join(prefix, &format!("layer{}.{j}", i + 1)), f);
            }
        }
        self.fc.visit(&join(prefix, "fc"), f);
    }
    fn set_training(&self, on: bool) {
        self.bn1.set_training(on);
        for block in self.layers.iter().flatten() {
            block.set_training(on);
        }
    }
}
