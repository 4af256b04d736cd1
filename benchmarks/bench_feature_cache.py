"""Head epochs on cached features vs a full forward pass every epoch.

Feature extraction (backbone frozen) trained two ways on the same images:
`model.fit` (the frozen backbone runs every epoch), and `kft.cache_features`
once + `kft.fit_head` on the stored features. Epoch times come from a
callback; the first epoch (compile) is reported apart and the median of the
later ones is compared.

    python benchmarks/bench_feature_cache.py --backbone resnet50 --size 64
"""

import argparse
import statistics
import time

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras

import _harness


class _EpochTimes(keras.callbacks.Callback):
    """Seconds of each epoch of the last fit. No batch hooks: defining one
    turns off Keras' asynchronous dispatch of steps."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def on_train_begin(self, logs=None):
        self.times = []


def _model(args):
    keras.utils.set_random_seed(0)
    model = kft.build_classifier(args.backbone, args.num_classes,
                                 weights=None,
                                 input_shape=(args.size, args.size, 3))
    kft.freeze(model, "feature_extraction")
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    x, y = _harness.random_batch(args.images, args.size, args.num_classes)
    load = [_harness.loadavg()]

    timer = _EpochTimes()
    plain = _model(args)
    plain.fit(x, y, batch_size=args.batch_size, epochs=args.epochs,
              callbacks=[timer], verbose=0)
    plain_times = timer.times

    cached = _model(args)
    start = time.perf_counter()
    cache = kft.cache_features(cached, (x, y), batch_size=args.batch_size,
                               verbose=0)
    cache_s = time.perf_counter() - start
    kft.fit_head(cached, cache, batch_size=args.batch_size,
                 epochs=args.epochs, callbacks=[timer], verbose=0)
    head_times = timer.times
    load.append(_harness.loadavg())

    plain_median = statistics.median(plain_times[1:])
    head_median = statistics.median(head_times[1:])
    result = {
        "args": vars(args),
        "plain_epoch_s": plain_times,
        "cache_features_s": cache_s,
        "cached_head_epoch_s": head_times,
        "plain_median_later_epochs_s": plain_median,
        "cached_median_later_epochs_s": head_median,
        "speedup_per_epoch": plain_median / head_median,
        "features": list(cache.features.shape),
        "loadavg_before_after": load,
    }
    print(f"frozen-backbone fit: first epoch {plain_times[0]:.2f} s, later "
          f"epochs median {plain_median:.3f} s")
    print(f"cache_features: {cache_s:.2f} s once; head on features: first "
          f"epoch {head_times[0]:.3f} s, later epochs median "
          f"{head_median:.4f} s")
    print(f"speed-up per head epoch after the first: "
          f"{plain_median / head_median:.1f}x (target >= 20x)")
    out = args.out or _harness.results_path(
        f"feature_cache_{args.backbone}_{args.size}.json")
    _harness.write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
