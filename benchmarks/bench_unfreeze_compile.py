"""Compile cost of gradual unfreezing: one trace + compile per stage.

Runs `model.fit` with `kft.callbacks.GradualUnfreezing(every=1)` on a
backbone (ResNet50 at 224x224 by default) for a few steps per stage and
reports, per stage, JAX's own compile-time events (tracing, lowering to
MLIR, XLA backend compile or persistent-cache load, and cache hits) next to
the first and the median later step times. Run it twice with the same
`--cache-dir`: the second run loads the stage programs from JAX's
persistent compilation cache.

    python benchmarks/bench_unfreeze_compile.py --cache-dir /tmp/kft-cache \
        --json benchmarks/results/unfreeze_compile_cold.json
    python benchmarks/bench_unfreeze_compile.py --cache-dir /tmp/kft-cache \
        --json benchmarks/results/unfreeze_compile_warm.json
"""

import argparse
import os
import statistics
import time

import _harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stages", type=int, default=3,
                        help="stages to run (head only, +1 block, ...)")
    parser.add_argument("--steps", type=int, default=4,
                        help="steps per stage (the first one compiles)")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ["KFT_COMPILATION_CACHE"] = args.cache_dir
    cached_before = len(os.listdir(args.cache_dir)) if os.path.isdir(
        args.cache_dir) else 0

    import kft  # first: selects the JAX backend  # isort: skip
    import jax
    import keras

    keras.utils.set_random_seed(0)
    model = kft.build_classifier(args.backbone, num_classes=10, weights=None,
                                 input_shape=(args.size, args.size, 3))
    model.compile(keras.optimizers.SGD(1e-3, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _harness.random_batch(args.batch * args.steps, args.size, 10)

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.steps[epoch] = []

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            _harness.sync(logs["loss"])  # wait for the step to finish
            self.steps[self.epoch].append(time.perf_counter() - self.t)

    timer = Timer()
    events = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
              "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
              "/jax/core/compile/backend_compile_duration": "compile_s"}
    spent = {}

    def on_duration(event, duration, **kwargs):
        if event in events and hasattr(timer, "epoch"):
            key = (timer.epoch, events[event])
            spent[key] = spent.get(key, 0.0) + duration

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits" and hasattr(
                timer, "epoch"):
            spent[(timer.epoch, "cache_hits")] = spent.get(
                (timer.epoch, "cache_hits"), 0) + 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    started = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=args.stages, shuffle=False,
              verbose=0, callbacks=[
                  kft.callbacks.GradualUnfreezing(every=1, verbose=1), timer])
    total = time.perf_counter() - started
    names = ["head"] + list(reversed(
        [b for b in kft.get_blocks(model) if b != "head"]))
    rows = []
    for stage, steps in timer.steps.items():
        steady = statistics.median(steps[1:])
        row = {"stage": stage, "unfroze": names[stage],
               "first_step_s": steps[0], "steady_step_s": steady}
        for key in ("trace_s", "lower_s", "compile_s", "cache_hits"):
            row[key] = spent.get((stage, key), 0)
        rows.append(row)
    result = {
        "backbone": args.backbone, "size": args.size, "batch": args.batch,
        "cache_dir": args.cache_dir, "cache_entries_before": cached_before,
        "fit_total_s": total, "stages": rows,
    }
    print("| stage | unfroze | trace (s) | lower (s) | XLA compile or cache "
          "load (s) | cache hits | first step (s) | later steps, median (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['unfroze']} | {r['trace_s']:.2f} | "
              f"{r['lower_s']:.2f} | {r['compile_s']:.2f} | "
              f"{r['cache_hits']} | {r['first_step_s']:.2f} | "
              f"{r['steady_step_s']:.2f} |")
    print(f"cache entries before the run: {cached_before}; fit total "
          f"{total:.1f}s")
    if args.json:
        _harness.write_json(args.json, result)


if __name__ == "__main__":
    main()
