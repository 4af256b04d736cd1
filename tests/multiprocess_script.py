"""Data-parallel training of simple_cnn as one of several JAX processes.

Run by tests/test_multiprocess.py through `kft.distributed.launch_command`
(`python -m kft.distributed --processes 2 tests/multiprocess_script.py
OUT --epochs 3`). Prints, for the test to read: the example ids its data
shard yields in one shuffled pass (`SHARD`), the epochs it trained
(`EPOCHS`), a digest of its final weights (`WEIGHTS`), what it computes
from a whole dataset with them (`RESULTS`) and the files it
wrote, created, renamed or removed under OUT (`WRITES`, from Python's
audit hooks). Process 0 also saves the final weights to OUT/final.npy.
`--kill-epoch E` makes process 1 SIGKILL itself as epoch E (0-based)
begins.
"""

import argparse
import hashlib
import json
import os
import signal
import sys
import time

import kft
import keras
import numpy as np


def make_data():
    """44 images (5 global batches of 8 and one of 4, which splits evenly
    over 2 or 4 processes), pixel (0, 0, 0) holding each one's id."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (44, 16, 16, 3)).astype("float32")
    x[:, 0, 0, 0] = np.arange(len(x))
    return x, np.arange(len(x)) % 3


def make_model():
    keras.utils.set_random_seed(0)
    model = kft.build_classifier("simple_cnn", num_classes=3, weights=None,
                                 input_shape=(16, 16, 3))
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main():
    joined = kft.distributed.initialize()
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--kill-epoch", type=int, default=-1)
    args = parser.parse_args()
    writes = record_writes(os.path.realpath(args.out))
    index = kft.distributed.process_index()
    print("JOINED", joined, index, kft.distributed.process_count(),
          flush=True)
    x, y = make_data()
    probe = kft.data.from_arrays(x, y, batch_size=8, shuffle=True, seed=3)
    print("SHARD", json.dumps([int(v) for images, _ in probe
                               for v in images[:, 0, 0, 0]]), flush=True)
    model = make_model()
    data = kft.data.from_arrays(x, y, batch_size=8, shuffle=False)
    history = model.fit(
        data, epochs=args.epochs, verbose=0,
        callbacks=[kft.distributed.BackupAndRestore(
            os.path.join(args.out, "backup")), KillAt(args.kill_epoch)])
    print("EPOCHS", json.dumps(history.epoch), flush=True)
    weights = np.concatenate([np.ravel(w) for w in model.get_weights()])
    print("WEIGHTS", hashlib.sha256(weights.tobytes()).hexdigest(),
          flush=True)
    if kft.is_primary():
        np.save(os.path.join(args.out, "final.npy"), weights)
    print("RESULTS", json.dumps(whole_data_results(model, x, y)), flush=True)
    print("WRITES", json.dumps(writes), flush=True)


def whole_data_results(model, x, y):
    """What kft computes from a whole dataset: every process must get what
    one process gets. 43 examples: the last global batch of 3 does not
    split over 2 or 4 processes."""
    x, y = x[:43], y[:43]
    data = kft.data.from_arrays(x, y, batch_size=8, shuffle=False)
    report = kft.evaluate(model, data)
    arrays = kft.evaluate(model, (x, y), batch_size=8)
    predicted = kft.predict(model, x[:5], batch_size=4)
    fisher = kft.estimate_fisher(model, (x, y), batch_size=8)
    from kft.adaptation.batchnorm import batch_statistics

    _, means, variances, seen = batch_statistics(model, data, batch_size=8)
    kft.freeze(model, "feature_extraction")
    cache = kft.cache_features(model, data, verbose=0)
    # Host augmentation: its seed states, built under the processes'
    # distribution, are on every process's devices, and the first CPU
    # device was process 0's (every other process failed).
    augmented = [np.asarray(images) for images, _ in kft.data.from_arrays(
        x[:16], y[:16], batch_size=8, augmentation="light", seed=1)]
    return {"accuracy": report.accuracy,
            "confusion": report.confusion_matrix.tolist(),
            "mistakes": [m.index for m in report.mistakes],
            "arrays_confusion": arrays.confusion_matrix.tolist(),
            "cache_shape": list(cache.features.shape),
            "cache_labels": cache.labels.tolist(),
            "cache_sum": round(float(cache.features.astype("float64").sum()),
                               3),
            "fisher_sum": float(sum(v.sum() for v in fisher.values.values())),
            "predicted": [np.asarray(p.probabilities).tolist()
                          for p in predicted],
            "bn_images": int(seen),
            "augmented": [sum(map(len, augmented)),
                          bool(all(np.isfinite(a).all() for a in augmented))],
            "bn_sum": float(sum(m.sum() + v.sum()
                                for m, v in zip(means, variances)))}


def record_writes(root):
    """Files opened for writing, made, renamed or removed under `root`,
    as Python's audit hooks see them (HDF5 writes from C are not, but the
    folder and metadata writes next to them are)."""
    writes = []

    def under_root(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(root)
        except (TypeError, ValueError):
            return False

    def audit(event, event_args):
        if event == "open":
            path, mode, flags = event_args
            writing = (any(c in mode for c in "wax+")
                       if isinstance(mode, str) else
                       bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
            if writing and under_root(path):
                writes.append(("open", os.fsdecode(path)))
        elif event in ("os.mkdir", "os.remove", "os.rename", "os.rmdir",
                       "shutil.rmtree", "shutil.copyfile"):
            if event_args and under_root(event_args[0]):
                writes.append((event, os.fsdecode(event_args[0])))

    sys.addaudithook(audit)
    return writes


class KillAt(keras.callbacks.Callback):
    """Process 1 SIGKILLs itself as epoch `kill_epoch` begins."""

    def __init__(self, kill_epoch):
        super().__init__()
        self.kill_epoch = kill_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.kill_epoch:
            return
        # JAX runs steps asynchronously: wait until process 0 has written
        # the checkpoint of the epoch before, so the kill tests resuming
        # from it.
        kft.distributed.barrier("checkpoint-written")
        if kft.distributed.process_index() == 1:
            print("KILLING", time.time(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
