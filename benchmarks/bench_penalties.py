"""Step time with each forgetting penalty vs none, and Fisher estimation cost.

Builds one `kft.build_classifier(backbone, 10, weights=None)` per variant
(none, L2-SP, EWC, LwF), full fine-tuning (`kft.freeze(model, "full")`),
SGD with momentum, and times `model.train_on_batch` on one random batch,
the variants taking turns (`_harness.time_interleaved`, rotating order).
Before that, times `kft.estimate_fisher` over `--fisher-images` random
images (empirical Fisher), twice: the first call includes compilation,
the second reuses it through JAX's persistent compilation cache.

    nice -n 5 python benchmarks/bench_penalties.py --backbone resnet50 \
        --size 64 --batch 16 --steps 10
"""

import argparse
import time

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras
import numpy as np

import _harness

NUM_CLASSES = 10


def build(args):
    model = kft.build_classifier(args.backbone, NUM_CLASSES, weights=None,
                                 input_shape=(args.size, args.size, 3))
    kft.freeze(model, "full")
    return model


def time_fisher(model, args):
    x, y = _harness.random_batch(args.fisher_images, args.size, NUM_CLASSES,
                                 rng=1)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fisher = kft.estimate_fisher(model, (x, y),
                                     batch_size=args.fisher_batch)
        times.append(time.perf_counter() - start)
        print(f"estimate_fisher over {len(x)} images, batch "
              f"{args.fisher_batch}: {times[-1]:.1f} s", flush=True)
    return fisher, {"first_s": times[0], "second_s": times[1],
                    "images": len(x), "batch": args.fisher_batch}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fisher-images", type=int, default=512,
                        help="0 skips the Fisher timing (EWC gets ones)")
    parser.add_argument("--fisher-batch", type=int, default=16)
    parser.add_argument("--variants", nargs="+",
                        default=["none", "l2sp", "ewc", "lwf"])
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "penalties_<backbone>_<size>.json")
    args = parser.parse_args()

    begin = time.perf_counter()
    keras.utils.set_random_seed(0)
    if args.fisher_images:
        fisher, fisher_timing = time_fisher(build(args), args)
    else:  # Step times only: the EWC step does not depend on the values.
        # Unfrozen, so BatchNorm's gamma / beta (frozen by `kft.freeze`)
        # are listed too.
        fisher = {v.path: np.ones(v.shape, "float32") for v in
                  kft.build_classifier(args.backbone, NUM_CLASSES,
                                       weights=None,
                                       input_shape=(args.size, args.size, 3)
                                       ).trainable_weights}
        fisher_timing = None
    x, y = _harness.random_batch(args.batch, args.size, NUM_CLASSES)
    steps = {}
    for name in args.variants:
        model = build(args)
        if name == "lwf":
            model = kft.with_source_head(model, model.get_layer(
                "head_dense"))
        penalty = {"none": None, "l2sp": kft.L2SP(0.01, 1e-4),
                   "ewc": kft.EWC(100.0, fisher),
                   "lwf": kft.LwF(2.0, 1.0)}[name]
        if penalty is not None:
            kft.regularize(model, penalty)
        model.compile(keras.optimizers.SGD(1e-3, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        steps[name] = (lambda m=model: m.train_on_batch(x, y))
    timing = _harness.time_interleaved(steps, args.steps, args.warmup,
                                       rotate=True)
    base = timing["none"]["median_s"] if "none" in timing else None
    print(_harness.header(begin))
    print("| variant | median ms | min ms | max ms | ratio to none |")
    print("|---|---|---|---|---|")
    for name, t in timing.items():
        ratio = f"{t['median_s'] / base:.3f}x" if base else "-"
        print(f"| {name} | {1000 * t['median_s']:.0f} | "
              f"{1000 * t['min_s']:.0f} | {1000 * t['max_s']:.0f} | "
              f"{ratio} |")
    if fisher_timing:
        print(f"Fisher ({fisher_timing['images']} images, batch "
              f"{fisher_timing['batch']}): {fisher_timing['first_s']:.1f} s"
              f" first call, {fisher_timing['second_s']:.1f} s second")
    out = args.out or _harness.results_path(
        f"penalties_{args.backbone}_{args.size}.json")
    _harness.write_json(out, {"args": vars(args), "steps": timing,
                              "fisher": fisher_timing})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
