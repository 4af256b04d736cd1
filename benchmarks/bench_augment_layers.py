"""Cost of each layer of an augmentation preset, jit-compiled, on one batch.

Times every layer of `kft.augmentation` preset as the host pipeline runs it
(`stateless_call` under `jax.jit`, one program per layer), median of 5 calls
after a warm-up call, to show where the input pipeline's time goes.

    python benchmarks/bench_augment_layers.py --preset standard --size 224
"""

import argparse
import statistics
import time

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import jax
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="standard",
                        choices=kft.augmentation.PRESETS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    shape = (args.batch_size, args.size, args.size, 3)
    images = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
    preset = kft.augmentation.augmentation(args.preset,
                                           image_size=(args.size, args.size))
    print(f"preset {args.preset!r}, batch {shape}, load average "
          f"{open('/proc/loadavg').read().split()[:3]}")
    total = 0.0
    for layer in preset.layers:
        state = [v.value for v in layer.non_trainable_variables]
        apply = jax.jit(lambda s, x, layer=layer: layer.stateless_call(
            [], s, x, training=True))
        out, state = apply(state, images)
        jax.block_until_ready(out)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out, state = apply(state, images)
            jax.block_until_ready(out)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        total += median
        print(f"{type(layer).__name__:22s} {1000 * median:8.1f} ms per batch")
    print(f"{'all layers':22s} {1000 * total:8.1f} ms per batch = "
          f"{args.batch_size / total:.1f} img/s on augmentation alone")


if __name__ == "__main__":
    main()
