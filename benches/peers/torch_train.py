"""PyTorch's side of the training benchmark: the same networks, data, optimizer and loop as
`kiln train`. Prints one JSON line. Usage: torch_train.py mlp|cnn EPOCHS THREADS [DEVICE]
(DEVICE: cpu, the default, or cuda for the GPU section of BENCHMARKS.md)."""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn

from mnist_data import load

workload, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device = torch.device(sys.argv[4] if len(sys.argv) > 4 else "cpu")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
torch.manual_seed(0)
xtr, ytr = (torch.from_numpy(a).to(device) for a in load("train"))
xte, yte = (torch.from_numpy(a).to(device) for a in load("test"))
if workload == "mlp":
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
else:
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1600, 128), nn.ReLU(), nn.Linear(128, 10))
model = model.to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
gen = torch.Generator().manual_seed(0)
train_seconds = 0.0
for epoch in range(epochs):
    model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(xtr), generator=gen).to(device)
    for i in range(0, len(xtr), 128):
        idx = perm[i:i + 128]
        loss = loss_fn(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train_seconds += time.perf_counter() - t0
model.eval()
with torch.no_grad():
    acc = (model(xte).argmax(1) == yte).float().mean().item()
out = {"framework": "pytorch " + torch.__version__, "workload": workload, "epochs": epochs,
       "train_seconds": train_seconds, "test_accuracy": acc, "device": str(device)}
if device.type == "cuda":
    out["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
print(json.dumps(out))
