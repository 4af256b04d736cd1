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
- from scratch (random weights, same budget, its BatchNorm layers
  trained: `bn="train"`).

It prints the table (mean, std, 95% t-interval, paired t-test against the
best), then time and the train-validation accuracy gap at the kept epoch
(overfitting), and writes `comparison.json` and `strategies.png`.

    python examples/compare_strategies.py [output_dir] [--quick]

`--quick` runs a tiny version (16 px, 2 seeds, 4 epochs) to check the
script works; `--image-size`, `--seeds`, `--epochs`, `--head-epochs`,
`--source-epochs` and `--strategies` override single settings of either
(`--batch-size`: of the fine-tuning runs, 32 in both).
"""

import argparse
import os
import tempfile
import time

import kft  # first: selects the JAX backend  # isort: skip
import keras
import numpy as np

LEARNING_RATE = 3e-3
# (image size, seeds, epochs, head epochs, source epochs)
SETTINGS = {"full": (32, [0, 1, 2, 3, 4], 30, 10, 15),
            "quick": (16, [0, 1], 4, 2, 2)}
STRATEGIES = ["feature_extraction", "partial:2", "gradual", "full",
              "discriminative", "scratch"]


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


def main(output_dir, quick=False, image_size=None, seeds=None, epochs=None,
         head_epochs=None, source_epochs=None, strategies=STRATEGIES,
         batch_size=32):
    given = (image_size, seeds, epochs, head_epochs, source_epochs)
    size, seeds, epochs, head, source_epochs = (
        preset if value is None else value for value, preset in
        zip(given, SETTINGS["quick" if quick else "full"]))
    input_shape = (size, size, 3)
    data = kft.datasets.digits(image_size=size, target_per_class=10)
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "simple_cnn.weights.h5")
        start = time.perf_counter()
        pretrain(data, input_shape, source_epochs, weights)
        print(f"pretrained on digits 0-4 in "
              f"{time.perf_counter() - start:.1f}s")
        comparison = _compare(data, input_shape, weights, strategies, seeds,
                              epochs, head, batch_size)
    print(comparison)
    print("\nOverfitting: train minus validation accuracy at the kept "
          "epoch (mean over seeds)")
    for strategy in comparison.strategies:
        runs = [r for r in comparison.runs if r["strategy"] == strategy]
        gaps = [g for g in map(overfitting_gap, runs) if g is not None]
        print(f"  {strategy:>20}: {np.mean(gaps):+.3f}" if gaps else
              f"  {strategy:>20}: n/a")
    os.makedirs(output_dir, exist_ok=True)
    comparison.save(os.path.join(output_dir, "comparison.json"))
    comparison.plot(path=os.path.join(output_dir, "strategies.png"))
    print(f"\nwrote {output_dir}/comparison.json and strategies.png "
          f"(kft.StrategyComparison.load re-plots without training)")
    return comparison


def _compare(data, input_shape, weights, strategies, seeds, epochs, head,
             batch_size):
    """`kft.compare_strategies` of `strategies` ("scratch": random
    weights, full training) from the pretrained `weights`."""

    def build():
        return kft.build_classifier("simple_cnn", 5, weights=weights,
                                    input_shape=input_shape, dropout=0.2)

    def scratch(model, train, val, seed):
        """Random weights, then full training in the same budget."""
        fresh = kft.build_classifier("simple_cnn", 5, weights=None,
                                     input_shape=input_shape, dropout=0.2)
        for variable, value in zip(model.weights, fresh.weights):
            variable.assign(value.value)
        # Its BatchNorm layers train: frozen, random-init statistics
        # normalise nothing.
        return kft.fine_tune(
            model, train, val, strategy="full", head_epochs=1,
            epochs=epochs - 1, bn="train", head_learning_rate=LEARNING_RATE,
            learning_rate=LEARNING_RATE, batch_size=batch_size, verbose=0)

    return kft.compare_strategies(
        build, data.target_train, data.target_val, data.target_test,
        strategies=[scratch if s == "scratch" else s for s in strategies],
        seeds=seeds, epochs=epochs, head_epochs=head, batch_size=batch_size,
        head_learning_rate=LEARNING_RATE, learning_rate=LEARNING_RATE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default=None,
                        help="where comparison.json and strategies.png go "
                             "(default: a new temporary folder)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings: 16 px, 2 seeds, 4 epochs")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--epochs", type=int,
                        help="epochs of every run, head phase included")
    parser.add_argument("--head-epochs", type=int)
    parser.add_argument("--source-epochs", type=int,
                        help="pretraining epochs on digits 0-4")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES,
                        help=f"default: {' '.join(STRATEGIES)}")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    main(args.output_dir or tempfile.mkdtemp(prefix="kft_compare_"),
         quick=args.quick, image_size=args.image_size, seeds=args.seeds,
         epochs=args.epochs, head_epochs=args.head_epochs,
         source_epochs=args.source_epochs, strategies=args.strategies,
         batch_size=args.batch_size)
