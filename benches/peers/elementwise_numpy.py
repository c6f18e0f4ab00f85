"""numpy's side of the `elementwise` criterion group: add and relu on 16M f32 elements.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/peers/elementwise_numpy.py

Prints the median of 15 calls for each, and the bandwidth counted as criterion counts it
(add: 3 x 4 bytes per element; relu: 2 x 4). numpy's ufuncs run on one thread.
"""
import time

import numpy as np

n = 16 * 1024 * 1024
a = np.random.rand(n).astype(np.float32)
b = np.random.rand(n).astype(np.float32)
for name, f, bytes_per in [("add", lambda: a + b, 12), ("relu", lambda: np.maximum(a, 0), 8)]:
    times = []
    for _ in range(15):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]
    print(f"numpy {name}: {med * 1e3:.2f} ms, {bytes_per * n / med / 2**30:.1f} GiB/s")
