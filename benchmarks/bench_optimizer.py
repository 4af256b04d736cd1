"""Times a ResNet50 training step: per-block rates vs the plain optimizer.

Builds two identical ResNet50 classifiers (random weights, every block
trainable), one compiled with the plain Keras optimizer and one with
`kft.BlockwiseOptimizer` over its blocks (stem, conv2..conv5, head: 6
groups, `kft.layerwise_lr`), then alternates single `train_on_batch` steps
between them after a warm-up, so machine load hits both alike. Prints the
median step time of each and their ratio.

Usage:
    python benchmarks/bench_optimizer.py [--image-size 64] [--batch-size 8]
        [--steps 15] [--warmup 3] [--optimizer adam]
"""

import argparse
import statistics
import time

import kft
import keras
import numpy as np

OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-3),
    "adamw": lambda: keras.optimizers.AdamW(1e-3, weight_decay=0.05),
    "sgd": lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
}


def build(args, blockwise):
    model = kft.build_classifier("resnet50", num_classes=10, weights=None,
                                 input_shape=(args.image_size,) * 2 + (3,))
    kft.freeze(model, "full", bn="train")
    optimizer = OPTIMIZERS[args.optimizer]()
    if blockwise:
        rates = kft.layerwise_lr(model, 1e-3, 0.7)
        optimizer = kft.BlockwiseOptimizer(optimizer, rates, model=model)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    return model


def main(args):
    keras.utils.set_random_seed(0)
    models = {"plain": build(args, False), "blockwise": build(args, True)}
    groups = list(models["blockwise"].optimizer.learning_rates)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch_size, args.image_size,
                             args.image_size, 3)).astype("float32")
    y = rng.integers(0, 10, args.batch_size)
    times = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            float(model.train_on_batch(x, y))  # float() waits for the step.
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"groups: {len(groups)} {groups}")
    print(f"optimizer={args.optimizer} image_size={args.image_size} "
          f"batch_size={args.batch_size} steps={args.steps} "
          f"warmup={args.warmup}")
    for name, median in medians.items():
        print(f"{name:10s} median step {median * 1e3:8.1f} ms "
              f"(min {min(times[name]) * 1e3:.1f}, "
              f"max {max(times[name]) * 1e3:.1f})")
    ratio = medians["blockwise"] / medians["plain"]
    print(f"ratio blockwise/plain: {ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                        default="adam")
    main(parser.parse_args())
