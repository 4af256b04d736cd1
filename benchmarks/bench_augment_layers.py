"""Cost of each layer of an augmentation preset, jit-compiled, on one batch.

Times every layer of `kft.augmentation` preset as the host pipeline runs it
(`stateless_call` under `jax.jit`, one program per layer, on a device array
as the layers pass on), median of `--repeats` calls after a warm-up call, to
show where the input pipeline's time goes; also the first call (compile +
one run). The `keras` column times the stock `keras.layers` class with the
same config, where kft subclasses it (`RandomErasing` there with Keras'
default noise fill, since Keras 3.15 fails on a colour).

    python benchmarks/bench_augment_layers.py --preset standard --size 224
"""

import argparse
import os

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import jax
import keras

import _harness


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard",
                        choices=kft.augmentation.PRESETS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=None,
                        help="JSON file; default benchmarks/results/"
                             "augment_layers_<preset>_<size>.json")
    args = parser.parse_args()

    shape = (args.batch_size, args.size, args.size, 3)
    images, _ = _harness.random_batch(args.batch_size, args.size,
                                      num_classes=1)  # labels unused
    images = jax.device_put(images)
    preset = kft.augmentation.augmentation(args.preset,
                                           image_size=(args.size, args.size))
    print(f"preset {args.preset!r}, batch {shape}, load average "
          f"{_harness.loadavg()}")
    print(f"{'layer':22s} {'kft ms':>8s} {'keras ms':>9s} "
          f"{'kft first s':>12s} {'keras first s':>14s}")
    totals = {"kft": 0.0, "keras": 0.0}
    rows = []
    for layer in preset.layers:
        name = type(layer).__name__
        stock = layer
        # kft's torchvision-style layers (`kft.augmentation.torch_style`)
        # have no Keras counterpart: timed once, in both columns.
        if (hasattr(keras.layers, name)
                and type(layer) is not getattr(keras.layers, name)):
            config = layer.get_config()
            if name == "RandomErasing":
                config["fill_value"] = None
            stock = getattr(keras.layers, name).from_config(config)
            stock.build(shape)
        kft_ms, kft_first = ms_per_batch(layer, images, args.repeats)
        keras_ms, keras_first = (kft_ms, kft_first) if stock is layer \
            else ms_per_batch(stock, images, args.repeats)
        totals["kft"] += kft_ms
        totals["keras"] += keras_ms
        rows.append({"layer": name, "kft_ms": kft_ms, "keras_ms": keras_ms,
                     "kft_first_s": kft_first, "keras_first_s": keras_first})
        print(f"{name:22s} {kft_ms:8.1f} {keras_ms:9.1f} {kft_first:12.1f} "
              f"{keras_first:14.1f}", flush=True)
    print(f"{'all layers':22s} {totals['kft']:8.1f} {totals['keras']:9.1f}"
          f"   img/s on augmentation alone: kft "
          f"{1000 * args.batch_size / totals['kft']:.1f}, keras "
          f"{1000 * args.batch_size / totals['keras']:.1f}")
    out = args.out or _harness.results_path(
        f"augment_layers_{args.preset}_{args.size}.json")
    _harness.write_json(out, {"args": vars(args), "layers": rows,
                              "total_ms": totals,
                              "xla_flags": os.environ.get("XLA_FLAGS")})
    print(f"wrote {out}")


def ms_per_batch(layer, images, repeats):
    state = [v.value for v in layer.non_trainable_variables]
    apply = jax.jit(lambda s, x: layer.stateless_call([], s, x,
                                                      training=True))

    def step():  # the layer's seed state moves on, as in the pipeline
        nonlocal state
        out, state = apply(state, images)
        return out

    times = _harness.time_steps(step, repeats, warmup=1)
    return 1000 * times["median_s"], times["warmup_s"][0]


if __name__ == "__main__":
    main()
