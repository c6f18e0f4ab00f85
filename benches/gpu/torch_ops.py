"""PyTorch's side of `kiln bench-ops`: the same JSON lines (copy, add, relu bandwidth on MB-sized
f32 tensors; square matmul TFLOP/s in f32, TF32, f16, bf16) on the same GPU.
Usage: torch_ops.py [MB] [SIZES, e.g. 1024,4096,8192]"""
import json
import sys
import time

import torch

mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
sizes = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "1024,4096,8192").split(",")]
dev = torch.device("cuda")
impl = "pytorch " + torch.__version__


def timed(f):
    f()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < 0.5:
        f()
        n += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def line(op, **kw):
    print(json.dumps({"impl": impl, "device": "cuda:0", "op": op, **kw}), flush=True)


n = (mb << 20) // 4
a, b, out = (torch.randn(n, device=dev) for _ in range(3))
nbytes = n * 4
s = timed(lambda: out.copy_(a))
copy = 2 * nbytes / s / 1e9
line("copy", mb=mb, seconds=s, gb_per_s=copy)
for op, f, moved in [("add", lambda: torch.add(a, b), 3), ("relu", lambda: torch.relu(a), 2)]:
    s = timed(f)
    gbs = moved * nbytes / s / 1e9
    line(op, mb=mb, seconds=s, gb_per_s=gbs, of_copy=gbs / copy)
del a, b, out
for size in sizes:
    for name, dtype, tf32 in [("f32", torch.float32, False), ("tf32", torch.float32, True),
                              ("f16", torch.float16, False), ("bf16", torch.bfloat16, False)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(size, size, device=dev, dtype=dtype)
        s = timed(lambda: torch.matmul(x, x))
        line("matmul", n=size, dtype=name, seconds=s, tflops=2 * size ** 3 / s / 1e12)
torch.backends.cuda.matmul.allow_tf32 = False
