"""Times a ResNet50 training step: per-block rates vs the plain optimizer.

Builds two identical ResNet50 classifiers (random weights, every block
trainable), one compiled with the plain Keras optimizer and one with
`kft.BlockwiseOptimizer` over its blocks (stem, conv2..conv5, head: 6
groups, `kft.layerwise_lr`), then alternates single `train_on_batch` steps
between them after a warm-up, so machine load hits both alike. Prints the
median step time of each and their ratio.

Usage:
    python benchmarks/bench_optimizer.py [--image-size 64] [--batch-size 8]
        [--steps 15] [--warmup 3] [--optimizer adam] [--out FILE]
"""

import argparse

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras

import _harness

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
    x, y = _harness.random_batch(args.batch_size, args.image_size, 10)
    timings = _harness.time_interleaved(
        {name: lambda model=model: model.train_on_batch(x, y)
         for name, model in models.items()}, args.steps, args.warmup)
    medians = {name: t["median_s"] for name, t in timings.items()}
    print(f"groups: {len(groups)} {groups}")
    print(f"optimizer={args.optimizer} image_size={args.image_size} "
          f"batch_size={args.batch_size} steps={args.steps} "
          f"warmup={args.warmup}")
    for name, t in timings.items():
        print(f"{name:10s} median step {t['median_s'] * 1e3:8.1f} ms "
              f"(min {t['min_s'] * 1e3:.1f}, "
              f"max {t['max_s'] * 1e3:.1f})")
    ratio = medians["blockwise"] / medians["plain"]
    print(f"ratio blockwise/plain: {ratio:.3f}")
    out = args.out or _harness.results_path(
        f"optimizer_{args.optimizer}_{args.image_size}.json")
    _harness.write_json(out, {
        "args": vars(args), "groups": groups, "median_s": medians,
        "ratio_blockwise_to_plain": ratio,
        "step_times_s": {k: t["times_s"] for k, t in timings.items()}})
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                        default="adam")
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "optimizer_<optimizer>_<image size>.json")
    main(parser.parse_args())
