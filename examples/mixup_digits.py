"""Fine-tuning on a small digits target set, with and without batch mixing.

Pretrains `simple_cnn` on digits 0-4, then fine-tunes it on a few labelled
images of digits 5-9 with no mixing, MixUp, CutMix and MixUpOrCutMix (all
inside the compiled train step) and prints target test accuracy per seed.

    python examples/mixup_digits.py --image-size 32 --seeds 0 1 2
"""

import argparse
import os
import tempfile

import kft  # noqa: I001  (selects the JAX backend before Keras loads)
import keras
import numpy as np


def _variants(num_classes, seed):
    return {
        "none": None,
        "mixup": kft.layers.MixUp(0.4, num_classes=num_classes, seed=seed),
        "cutmix": kft.layers.CutMix(1.0, num_classes=num_classes, seed=seed),
        "mixup_or_cutmix": kft.layers.MixUpOrCutMix(
            0.4, 1.0, label_smoothing=0.1, num_classes=num_classes,
            seed=seed),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--target-per-class", type=int, default=10)
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--target-epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    data = kft.datasets.digits(image_size=args.image_size,
                               target_per_class=args.target_per_class)
    shape = (args.image_size, args.image_size, 3)
    classes = len(data.target_classes)
    source = kft.build_classifier("simple_cnn", len(data.source_classes),
                                  weights=None, input_shape=shape)
    source.compile(keras.optimizers.Adam(3e-3),
                   keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True))
    source.fit(*data.source, epochs=args.source_epochs,
               batch_size=args.batch_size, verbose=0)
    weights = os.path.join(tempfile.mkdtemp(), "simple_cnn.weights.h5")
    source.get_layer("simple_cnn").save_weights(weights)
    print(f"target: {len(data.target_train[1])} train images, "
          f"{len(data.target_test[1])} test images; "
          f"{args.target_epochs} epochs, seeds {args.seeds}")

    results = {}
    for seed in args.seeds:
        for name, layer in _variants(classes, seed).items():
            keras.utils.set_random_seed(seed)
            model = kft.build_classifier(
                "simple_cnn", classes, weights=weights, input_shape=shape,
                dropout=0.2, batch_augment=layer)
            kft.freeze(model, "full")  # BatchNorm statistics stay frozen
            loss = (keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True) if layer is None
                    else keras.losses.CategoricalCrossentropy(
                        from_logits=True))
            model.compile(keras.optimizers.Adam(1e-3), loss,
                          metrics=["accuracy"])
            model.fit(*data.target_train, epochs=args.target_epochs,
                      batch_size=args.batch_size, verbose=0)
            report = kft.evaluate_classifier(model, *data.target_test)
            results.setdefault(name, []).append(report.accuracy)
            print(f"seed {seed} {name:16s} test accuracy "
                  f"{report.accuracy:.3f}", flush=True)
    print("\nvariant           mean   min    max   (target test accuracy)")
    for name, accs in results.items():
        print(f"{name:16s} {np.mean(accs):.3f}  {min(accs):.3f}  "
              f"{max(accs):.3f}")


if __name__ == "__main__":
    main()
