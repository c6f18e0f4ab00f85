"""Reads Kiln's TensorBoard event files with TensorBoard's own loader.

    python tests/tensorboard/check_events.py path/to/kiln

Runs `kiln train` for 2 short epochs into a temporary directory, then checks with
tensorboard's EventAccumulator that the tags, steps and values Kiln logged (summary.json
holds the same numbers) are there, that the text and histogram summaries load, and that a
record whose CRC is broken is reported by TensorBoard's reader. Exit status 0 on success.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

kiln = sys.argv[1]
out = tempfile.mkdtemp(prefix="kiln-tb-")
subprocess.run(
    [kiln, "train", "--quiet", "--epochs", "2", "--histogram-every", "25", "--out", out],
    check=True,
    stdout=subprocess.DEVNULL,
)
summary = json.load(open(os.path.join(out, "summary.json")))
files = glob.glob(os.path.join(out, "events.out.tfevents.*"))
assert len(files) == 1, files

acc = event_accumulator.EventAccumulator(out, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
acc.Reload()
tags = acc.Tags()
for t in ["train/loss", "train/learning_rate", "train/samples_per_second", "epoch/train_loss",
          "epoch/train_accuracy", "epoch/test_loss", "epoch/test_accuracy"]:
    assert t in tags["scalars"], (t, tags["scalars"])
assert any(t.startswith("weights/") for t in tags["histograms"]), tags["histograms"]
assert any(t.startswith("grads/") for t in tags["histograms"]), tags["histograms"]
assert {"config", "model"} <= set(tags["tensors"]), tags["tensors"]

# One loss per step, steps 0..n-1; lr constant at Adam's default 1e-3.
loss = acc.Scalars("train/loss")
steps = [e.step for e in loss]
n_steps = 2 * ((8500 + 127) // 128)
assert steps == list(range(n_steps)), steps[:5]
assert all(abs(e.value - 1e-3) < 1e-9 for e in acc.Scalars("train/learning_rate"))
# Epoch scalars: logged at the step count reached after each epoch, with summary.json's values.
for key in ["test_accuracy", "test_loss", "train_loss", "train_accuracy"]:
    got = acc.Scalars("epoch/" + key)
    assert [e.step for e in got] == [n_steps // 2, n_steps], [e.step for e in got]
    want = [h[key] for h in summary["history"]]
    assert all(abs(g.value - w) <= 1e-6 * max(1.0, abs(w)) for g, w in zip(got, want)), (key, got, want)
h = acc.Histograms("weights/1.weight")[0]
assert h.histogram_value.num == 256 * 784, h.histogram_value.num
text = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
assert '"optimizer": "adam"' in text, text

# A broken payload CRC must be reported by TensorBoard's reader (the intact file reads whole).
intact = list(RawEventFileLoader(files[0]).Load())
assert len(intact) > 100, len(intact)
data = bytearray(open(files[0], "rb").read())
first_len = int.from_bytes(data[0:8], "little")
second = 12 + first_len + 4  # start of the second record
data[second + 12] ^= 0xFF    # flip a payload byte of the second record
bad = os.path.join(out, "corrupt")
os.makedirs(bad)
with open(os.path.join(bad, "events.out.tfevents.0.corrupt"), "wb") as f:
    f.write(data)
reported = False
try:
    records = list(RawEventFileLoader(os.path.join(bad, "events.out.tfevents.0.corrupt")).Load())
    # The loader stops at the damaged record and logs it; only the first record survives.
    reported = len(records) == 1
except Exception as e:  # DataLossError, depending on the TensorBoard version
    reported = "crc" in str(e).lower() or "corrupt" in str(e).lower() or "DataLoss" in type(e).__name__
assert reported, "TensorBoard's reader did not notice the broken CRC"
print(f"tensorboard check: {len(tags['scalars'])} scalar tags, {len(loss)} steps, "
      f"{len(tags['histograms'])} histogram tags, corrupted record reported: ok")
