"""TensorFlow/Keras's side of the training benchmark: the same networks, data, optimizer and
batch size as `kiln train`, timed per epoch (fit's own loop). Usage: tf_train.py mlp|cnn EPOCHS THREADS"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

from mnist_data import load  # noqa: E402

workload, epochs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.keras.utils.set_random_seed(0)
xtr, ytr = load("train")
xte, yte = load("test")
# Keras convolutions want channels last.
xtr, xte = xtr.transpose(0, 2, 3, 1), xte.transpose(0, 2, 3, 1)
L = tf.keras.layers
if workload == "mlp":
    layers = [L.Input((28, 28, 1)), L.Flatten(), L.Dense(256, activation="relu"), L.Dense(256, activation="relu"), L.Dense(10)]
else:
    layers = [L.Input((28, 28, 1)), L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2), L.Conv2D(64, 3, activation="relu"),
              L.MaxPooling2D(2), L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10)]
model = tf.keras.Sequential(layers)
model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


class Timer(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.total = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.total += time.perf_counter() - self.t0


timer = Timer()
model.fit(xtr, ytr, batch_size=128, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
_, acc = model.evaluate(xte, yte, batch_size=1000, verbose=0)
print(json.dumps({"framework": "tensorflow " + tf.__version__, "workload": workload, "epochs": epochs,
                  "train_seconds": timer.total, "test_accuracy": float(acc)}))
