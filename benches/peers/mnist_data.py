"""The bundled MNIST split (data/mnist, IDX gzip) as float32 arrays, normalised as Kiln does."""
import gzip
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "mnist")
MEAN, STD = 0.1307, 0.3081


def _idx(name, header):
    with gzip.open(os.path.join(ROOT, name)) as f:
        return np.frombuffer(f.read()[header:], dtype=np.uint8)


def load(split):
    prefix = "train" if split == "train" else "t10k"
    x = _idx(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32)
    y = _idx(f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return (x / 255.0 - MEAN) / STD, y
