"""Time of one training step of a kft classifier, for before/after checks.

Builds `kft.build_classifier(backbone, 10, weights=None)`, freezes it with
`kft.freeze(model, strategy)`, compiles it with SGD (momentum 0.9) and
sparse cross-entropy, and times `model.train_on_batch` on one random
batch: `--warmup` untimed steps (the first compiles), then `--steps` timed
ones; prints the times, the peak RSS of the process (`VmHWM`, reset just
before the first step), the RSS after the steps and the load average. Only that public kft API is
used, so the same command measures the code before and after a change to
kft's internals.

    python benchmarks/bench_step.py --backbone resnet50 --size 64 \
        --batch 16 --strategy full --steps 10
"""

import argparse

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras

import _harness

NUM_CLASSES = 10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--strategy", default="full",
                        choices=["feature_extraction", "partial", "full"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps before the timed ones, the "
                             "first of which compiles (default 2)")
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "step_<backbone>_<size>_<strategy>.json")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = kft.build_classifier(args.backbone, NUM_CLASSES, weights=None,
                                 input_shape=(args.size, args.size, 3))
    kft.freeze(model, args.strategy)
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _harness.random_batch(args.batch, args.size, NUM_CLASSES)
    _harness.reset_peak_rss()
    timing = _harness.time_steps(lambda: model.train_on_batch(x, y),
                                 args.steps, warmup=args.warmup)

    peak, load = _harness.peak_rss_mib(), _harness.loadavg()
    end = _harness.rss_mib()
    first = f", first step {timing['warmup_s'][0]:.1f} s" \
        if timing["warmup_s"] else ""
    print(f"{args.backbone} {args.size}px batch {args.batch} "
          f"{args.strategy}: median {1000 * timing['median_s']:.1f} ms, "
          f"min {1000 * timing['min_s']:.1f} ms, "
          f"max {1000 * timing['max_s']:.1f} ms ({args.steps} steps{first}), "
          f"peak RSS {peak:.0f} MiB, RSS after the steps {end:.0f} MiB, "
          f"load {' '.join(load or ['?'])}")
    out = args.out or _harness.results_path(
        f"step_{args.backbone}_{args.size}_{args.strategy}.json")
    _harness.write_json(out, {"args": vars(args), **timing,
                                "peak_rss_mib": peak, "rss_end_mib": end,
                                "loadavg": load})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
