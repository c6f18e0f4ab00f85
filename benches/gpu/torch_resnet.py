"""PyTorch's side of `kiln bench-resnet`: ResNet-18 for 32x32 inputs (3x3 stem, no max pool,
10 classes; the same layers as kiln::nn::ResNet), Adam 1e-3, training steps on one fixed
random batch; prints the same JSON fields (peak_tensor_bytes = torch.cuda.max_memory_allocated
on a GPU). Usage: torch_resnet.py [DEVICE=cuda] [BATCH=128] [STEPS=20] [tf32] [benchmark]
(benchmark: torch.backends.cudnn.benchmark = True, each convolution's algorithm measured, as
Kiln does by default; PyTorch's default picks by heuristics, like KILN_CUDNN_BENCHMARK=0)"""
import json
import sys
import time

import torch
from torch import nn

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 128
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
tf32 = "tf32" in sys.argv[4:]
cudnn_benchmark = "benchmark" in sys.argv[4:]
torch.backends.cudnn.benchmark = cudnn_benchmark
torch.backends.cuda.matmul.allow_tf32 = tf32
torch.backends.cudnn.allow_tf32 = tf32
torch.manual_seed(0)


def conv(cin, cout, k, stride):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = conv(3, 64, 3, 1), nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, cout in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.layer4(self.layer3(self.layer2(self.layer1(y))))
        return self.fc(y.mean(dim=(2, 3)))


model = ResNet18().to(dev).train()
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(dev)
y = torch.tensor([(i * 7 + 3) % 10 for i in range(batch)], dtype=torch.long).to(dev)
loss_fn = nn.CrossEntropyLoss()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


first = step()
step()
sync()
if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
last = first
for _ in range(steps):
    last = step()
sync()
secs = time.perf_counter() - t0
peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
print(json.dumps({
    "framework": "pytorch " + torch.__version__, "workload": "resnet18", "device": str(dev), "tf32": tf32,
    "cudnn_benchmark": cudnn_benchmark,
    "batch": batch, "steps": steps, "parameters": sum(p.numel() for p in model.parameters()),
    "step_ms": secs / steps * 1e3, "samples_per_second": batch * steps / secs,
    "first_loss": first, "last_loss": last, "peak_tensor_bytes": peak,
}), flush=True)
