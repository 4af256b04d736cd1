"""Gradual unfreezing on real handwritten digits, with the stage log.

Pretrains kft's small `simple_cnn` on digits 0-4, then fine-tunes it on 10
labelled images per class of digits 5-9 with `kft.fine_tune(...,
strategy="gradual")`: the head first, then one block more every 3 epochs
(`--unfreeze-every`).

    python examples/gradual_unfreezing_digits.py [--image-size 32]
"""

import argparse
import os
import tempfile

import kft  # first: selects the JAX backend  # isort: skip
import keras


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12,
                        help="phase-2 epochs")
    parser.add_argument("--unfreeze-every", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="of pretraining and fine-tuning")
    args = parser.parse_args(argv)
    shape = (args.image_size, args.image_size, 3)

    keras.utils.set_random_seed(0)
    data = kft.datasets.digits(image_size=args.image_size,
                               target_per_class=10)
    source = kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                  input_shape=shape)
    source.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    source.fit(*data.source, epochs=args.source_epochs,
               batch_size=args.batch_size, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "simple_cnn.weights.h5")
        source.get_layer("simple_cnn").save_weights(weights)
        model = kft.build_classifier("simple_cnn", num_classes=5,
                                     weights=weights, input_shape=shape,
                                     dropout=0.2)
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="gradual", head_epochs=args.head_epochs,
                           epochs=args.epochs,
                           unfreeze_every=args.unfreeze_every,
                           head_learning_rate=3e-3, learning_rate=1e-3,
                           monitor="val_accuracy",
                           batch_size=args.batch_size, verbose=2)
    stages = result.histories[1]["unfrozen_blocks"]
    print("blocks unfrozen per phase-2 epoch:", stages)
    print(f"best epoch {result.best_epoch + 1} ({result.monitor} "
          f"{result.best_value:.3f})")
    kft.trainable_summary(model)
    report = kft.evaluate_classifier(
        model, *data.target_test,
        class_names=[f"digit {c}" for c in data.target_classes])
    print(report)
    return result, report


if __name__ == "__main__":
    main()
