"""One full fine-tuning step of a kft classifier on CPU under a dtype policy.

Run from a checkout (PYTHONPATH=<checkout>) to compare kft versions:
prints the median seconds of `--steps` `train_on_batch` calls after two
untimed ones (the first compiles). Used for "16-bit sums of the swapped
convolutions" in benchmarks/RESULTS.md.

    KERAS_BACKEND=jax PYTHONPATH=. python benchmarks/results/bf16_sums/bf16_step.py \\
        --backbone efficientnetb0 --size 64 --policy mixed_bfloat16
"""

import argparse
import json
import statistics
import time

import keras
import numpy as np

import kft


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnetb0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--policy", default="mixed_bfloat16")
    args = parser.parse_args()
    keras.mixed_precision.set_global_policy(args.policy)
    keras.utils.set_random_seed(0)
    model = kft.build_classifier(args.backbone, 10, weights=None,
                                 input_shape=(args.size, args.size, 3))
    kft.freeze(model, "full")
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype(
        "float32")
    y = rng.integers(0, 10, args.batch).astype("int32")
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    model.train_on_batch(x, y)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    print(json.dumps({"kft": kft.__file__, "policy": args.policy,
                      "backbone": args.backbone, "size": args.size,
                      "batch": args.batch, "first_s": first,
                      "median_s": statistics.median(times),
                      "times_s": times, "loss": float(loss)}))


if __name__ == "__main__":
    main()
