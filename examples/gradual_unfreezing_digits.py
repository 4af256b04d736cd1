"""Gradual unfreezing on real handwritten digits, with the stage log.

Pretrains kft's small `simple_cnn` on digits 0-4, then fine-tunes it on 10
labelled images per class of digits 5-9 with `kft.fine_tune(...,
strategy="gradual")`: the head first, then one block more per epoch.

    python examples/gradual_unfreezing_digits.py
"""

import os
import tempfile

import kft  # first: selects the JAX backend  # isort: skip
import keras


def main():
    keras.utils.set_random_seed(0)
    data = kft.datasets.digits(image_size=32, target_per_class=10)
    source = kft.build_classifier("simple_cnn", num_classes=5, weights=None,
                                  input_shape=(32, 32, 3))
    source.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    source.fit(*data.source, epochs=15, batch_size=32, verbose=0)
    weights = os.path.join(tempfile.mkdtemp(), "simple_cnn.weights.h5")
    source.get_layer("simple_cnn").save_weights(weights)

    model = kft.build_classifier("simple_cnn", num_classes=5, weights=weights,
                                 input_shape=(32, 32, 3), dropout=0.2)
    result = kft.fine_tune(model, data.target_train, data.target_val,
                           strategy="gradual", head_epochs=5, epochs=12,
                           unfreeze_every=3, head_learning_rate=3e-3,
                           learning_rate=1e-3, monitor="val_accuracy",
                           verbose=2)
    stages = result.histories[1]["unfrozen_blocks"]
    print("blocks unfrozen per phase-2 epoch:", stages)
    print(f"best epoch {result.best_epoch + 1} ({result.monitor} "
          f"{result.best_value:.3f})")
    kft.trainable_summary(model)
    print(kft.evaluate_classifier(
        model, *data.target_test,
        class_names=[f"digit {c}" for c in data.target_classes]))


if __name__ == "__main__":
    main()
