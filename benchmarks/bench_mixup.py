"""ResNet50 train-step time: batch mixing in the step, on the host, or none.

Variants, each timed with `model.train_on_batch` after warm-up steps; the
timed steps are interleaved (one step of each variant per round, the order
rotating) so that load from other processes hits every variant alike:

- `none`: a plain `kft.build_classifier` model;
- `device`: `batch_augment=kft.layers.MixUpOrCutMix(...)`, mixing inside
  the compiled train step;
- `host`: `keras.layers.MixUp` applied to each batch before the step
  (eager ops outside the compiled step, as in an input pipeline).

    python benchmarks/bench_mixup.py --image-size 64 --batch-size 16
"""

import argparse

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras
import numpy as np

import _harness


def _model(args, batch_augment):
    keras.utils.set_random_seed(0)
    model = kft.build_classifier(
        args.backbone, args.num_classes, weights=None,
        input_shape=(args.image_size, args.image_size, 3),
        batch_augment=batch_augment)
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="+",
                        default=["none", "device", "host"])
    parser.add_argument("--out", default=None,
                        help="JSON file; defaults to benchmarks/results/"
                             "mixup_<backbone>_<size>.json")
    args = parser.parse_args()
    if args.out is None:
        args.out = _harness.results_path(
            f"mixup_{args.backbone}_{args.image_size}.json")

    rng = np.random.default_rng(0)
    batches = [_harness.random_batch(args.batch_size, args.image_size,
                                     args.num_classes, rng)
               for _ in range(args.warmup + args.steps)]
    eye = np.eye(args.num_classes, dtype="float32")
    steps = {}
    for variant in args.variants:
        if variant == "device":
            model = _model(args, kft.layers.MixUpOrCutMix(
                num_classes=args.num_classes, seed=0))

            def step(x, y, model=model):
                model.train_on_batch(x, y)
        elif variant == "none":
            model = _model(args, None)

            def step(x, y, model=model):
                model.train_on_batch(x, eye[y])
        elif variant == "host":
            model = _model(args, None)
            mix = keras.layers.MixUp(alpha=0.8, seed=0)

            def step(x, y, model=model, mix=mix):
                out = mix({"images": x, "labels": eye[y]})
                model.train_on_batch(out["images"], out["labels"])
        else:
            raise ValueError(
                "Argument `variants` must hold 'none', 'device' or 'host'. "
                f"Received: {variant!r}")
        # Every variant steps through the same batches, in order.
        steps[variant] = lambda step=step, it=iter(batches): step(*next(it))
    timings = _harness.time_interleaved(steps, args.steps, args.warmup,
                                        rotate=True)
    results = {}
    for variant, t in timings.items():
        results[variant] = t["median_s"]
        print(f"{variant:7s} median step {1000 * t['median_s']:8.1f} ms "
              f"(min {1000 * t['min_s']:.1f}, "
              f"max {1000 * t['max_s']:.1f}, {len(t['times_s'])} steps)")
    if "none" in results:
        for variant, median in results.items():
            print(f"{variant:7s} / none = {median / results['none']:.3f}")
    record = {
        "args": vars(args),
        "median_s": results,
        "ratio_to_none": ({k: v / results["none"] for k, v in results.items()}
                          if "none" in results else None),
        "step_times_s": {k: t["times_s"] for k, t in timings.items()},
    }
    _harness.write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
