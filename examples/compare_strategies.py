"""The strategy-comparison exercise on real digits, with error bars.

The exercise: train the same pretrained model several ways on a small
labelled set and compare accuracy, training time and overfitting. Here
`simple_cnn` is pretrained on digits 0-4 (the "pretrained weights"), then
fine-tuned on 10 labelled images per class of digits 5-9 with every
strategy `kft.compare_strategies` knows, plus training from scratch as a
user-given function, each over 5 seeds in the same 30-epoch budget:

- feature extraction (only the head trains, on cached features);
- partial fine-tuning of the last 2 blocks (`"partial:2"`);
- gradual unfreezing (one more block per epoch after the head);
- full fine-tuning, and full with layer-wise (discriminative) rates;
- from scratch (random weights, same budget).

It prints the table (mean, std, 95% t-interval, paired t-test against the
best), then time and the train-validation accuracy gap at the kept epoch
(overfitting), and writes `comparison.json` and `strategies.png`.

    python examples/compare_strategies.py [output_dir] [--quick]

`--quick` runs a tiny version (16 px, 2 seeds, 4 epochs) to check the
script works.
"""

import os
import sys
import tempfile
import time
import warnings

import kft  # first: selects the JAX backend  # isort: skip
import keras
import numpy as np

LEARNING_RATE = 3e-3


def pretrain(data, input_shape, epochs, path):
    """simple_cnn on the source digits; saves the backbone weights."""
    keras.utils.set_random_seed(0)
    source = kft.build_classifier("simple_cnn", 5, weights=None,
                                  input_shape=input_shape)
    source.compile(keras.optimizers.Adam(LEARNING_RATE),
                   keras.losses.SparseCategoricalCrossentropy(
                       from_logits=True))
    source.fit(*data.source, epochs=epochs, batch_size=32, verbose=0)
    source.get_layer("simple_cnn").save_weights(path)


def overfitting_gap(run):
    """Train minus validation accuracy at the epoch whose weights were
    kept, or `None`. Epochs are numbered across phases; without early
    stopping phase 2 starts right after phase 1's last epoch."""
    epoch, histories = run["best_epoch"], run["histories"]
    if epoch is None or not histories:
        return None
    first = histories[0]
    phase, index = (first, epoch) if epoch < len(first["loss"]) else (
        histories[-1], epoch - len(first["loss"]))
    if "val_accuracy" not in phase or index >= len(phase["val_accuracy"]):
        return None
    return phase["accuracy"][index] - phase["val_accuracy"][index]


def main(output_dir, quick=False):
    size, seeds, epochs, head, source_epochs = (
        (16, [0, 1], 4, 2, 2) if quick else (32, [0, 1, 2, 3, 4], 30, 10,
                                              15))
    input_shape = (size, size, 3)
    data = kft.datasets.digits(image_size=size, target_per_class=10)
    weights = os.path.join(tempfile.mkdtemp(), "simple_cnn.weights.h5")
    start = time.perf_counter()
    pretrain(data, input_shape, source_epochs, weights)
    print(f"pretrained on digits 0-4 in {time.perf_counter() - start:.1f}s")

    def build():
        return kft.build_classifier("simple_cnn", 5, weights=weights,
                                    input_shape=input_shape, dropout=0.2)

    def scratch(model, train, val, seed):
        """Random weights, then full training in the same budget."""
        fresh = kft.build_classifier("simple_cnn", 5, weights=None,
                                     input_shape=input_shape, dropout=0.2)
        for variable, value in zip(model.weights, fresh.weights):
            variable.assign(value.value)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weights=None")
            return kft.fine_tune(
                model, train, val, strategy="full", head_epochs=1,
                epochs=epochs - 1, head_learning_rate=LEARNING_RATE,
                learning_rate=LEARNING_RATE, verbose=0)

    comparison = kft.compare_strategies(
        build, data.target_train, data.target_val, data.target_test,
        strategies=["feature_extraction", "partial:2", "gradual", "full",
                    "discriminative", scratch],
        seeds=seeds, epochs=epochs, head_epochs=head,
        head_learning_rate=LEARNING_RATE, learning_rate=LEARNING_RATE)
    print(comparison)
    print("\nOverfitting: train minus validation accuracy at the kept "
          "epoch (mean over seeds)")
    for strategy in comparison.strategies:
        runs = [r for r in comparison.runs if r["strategy"] == strategy]
        gaps = [g for g in map(overfitting_gap, runs) if g is not None]
        print(f"  {strategy:>20}: {np.mean(gaps):+.3f}" if gaps else
              f"  {strategy:>20}: n/a")
    comparison.save(os.path.join(output_dir, "comparison.json"))
    comparison.plot(path=os.path.join(output_dir, "strategies.png"))
    print(f"\nwrote {output_dir}/comparison.json and strategies.png "
          f"(kft.StrategyComparison.load re-plots without training)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    main(args[0] if args else tempfile.mkdtemp(prefix="kft_compare_"),
         quick="--quick" in sys.argv)
