"""Constant vs cosine vs one-cycle vs warm-up cosine on the digits transfer
task, several seeds; then the learning-rate range test on it.

For each seed: pretrain `simple_cnn` on digits 0-4, then fine-tune a copy on
10 labelled images per class of digits 5-9 with `kft.fine_tune(
strategy="full")` and each phase-2 schedule at the same peak rate, and
report test accuracy (mean and standard deviation over seeds). Finally
`kft.lr_find` runs on the pretrained model (phase 2's optimizer and
trainable set) and its curve is saved as a PNG.

Usage:
    python examples/schedules.py [--seeds 0 1 2] [--out examples/results/schedules]
"""

import argparse
import os
import time

import kft  # first: it selects Keras' JAX backend

import keras
import numpy as np

SCHEDULES = {
    "constant": {"schedule": "constant"},
    "cosine": {"schedule": "cosine"},
    "one_cycle": {"schedule": "one_cycle"},
    "warmup_cosine": {"schedule": "cosine", "warmup": 0.1},
}
RATE = 3e-3


def pretrained(data, seed, size, epochs):
    keras.utils.set_random_seed(seed)
    model = kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                 input_shape=(size, size, 3))
    model.compile(keras.optimizers.AdamW(RATE),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data.source, batch_size=32, epochs=epochs, verbose=0)
    return model.get_weights()


def run(args):
    rows = {name: [] for name in SCHEDULES}
    for seed in args.seeds:
        data = kft.datasets.digits(image_size=args.size, seed=seed)
        weights = pretrained(data, seed, args.size, args.source_epochs)
        for name, options in SCHEDULES.items():
            keras.utils.set_random_seed(seed)
            model = kft.build_classifier("simple_cnn", num_classes=5,
                                         weights=None,
                                         input_shape=(args.size, args.size,
                                                      3))
            model.set_weights(weights)
            start = time.perf_counter()
            kft.fine_tune(model, data.target_train, data.target_val,
                          strategy="full", bn="train", head_epochs=5,
                          epochs=args.epochs, head_learning_rate=RATE,
                          learning_rate=RATE, batch_size=10, verbose=0,
                          **options)
            report = kft.evaluate_classifier(model, *data.target_test)
            rows[name].append(report.accuracy)
            print(f"seed {seed} {name:>13}: test accuracy "
                  f"{report.accuracy:.3f} ({time.perf_counter() - start:.1f}"
                  " s)", flush=True)
    print("\n| phase-2 schedule | test accuracy (mean ± std over "
          f"{len(args.seeds)} seeds) | per seed |\n|---|---:|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.3f} ± {np.std(values):.3f} | "
              + ", ".join(f"{v:.3f}" for v in values) + " |")
    return weights, data


def find(weights, data, args):
    model = kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                 input_shape=(args.size, args.size, 3))
    model.set_weights(weights)
    kft.freeze(model, "full", bn="train")
    model.compile(kft.BlockwiseOptimizer(keras.optimizers.AdamW(RATE)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = kft.lr_find(model, data.target_train, start=1e-6, end=10.0,
                         steps=100, batch_size=10)
    path = os.path.join(args.out, "lr_find_digits.png")
    result.plot(path)
    print(f"saved {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default=os.path.join("examples", "results", "schedules"))
    args = parser.parse_args()
    start = time.perf_counter()
    weights, data = run(args)
    find(weights, data, args)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
