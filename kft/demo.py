"""The main job: transfer on real handwritten digits, every strategy compared.

Pretrains `simple_cnn` on digits 0-4, saves its weights to a local file,
then fine-tunes on a small labelled set of digits 5-9 from that file with
each strategy (and from scratch) through `kft.fine_tune`, and reports test
metrics. Source and test images go through `kft.data` datasets.
"""

import contextlib
import dataclasses
import os
import tempfile
import time
import warnings
from typing import Callable

import keras
import numpy as np

from kft import data as kft_data
from kft._validation import fail_argument
from kft._validation import check_int
from kft.data.digits import digits
from kft.evaluation import evaluate_classifier
from kft.models.classifier import build_classifier
from kft.training.fine_tune import fine_tune

STRATEGIES = ("scratch", "feature_extraction", "partial", "full")
# Epochs of a two-phase transfer run spent on the head alone.
HEAD_EPOCHS = 10
# One rate for both phases: the network is small and so is the data.
LEARNING_RATE = 3e-3
PRETRAIN_LEARNING_RATE = 3e-3
WEIGHTS_FILE = "simple_cnn_digits04.weights.h5"


@dataclasses.dataclass(frozen=True)
class _Settings:
    image_size: int
    target_per_class: int
    source_epochs: int
    target_epochs: int
    batch_size: int
    seed: int

    @property
    def input_shape(self):
        return (self.image_size, self.image_size, 3)

    def dataset(self, arrays, shuffle=True):
        return kft_data.from_arrays(*arrays, batch_size=self.batch_size,
                                    shuffle=shuffle, seed=self.seed)


def run_demo(image_size: int = 32, target_per_class: int = 10,
             source_epochs: int = 15, target_epochs: int = 30,
             batch_size: int = 32, seed: int = 0,
             workdir: str | os.PathLike | None = None,
             print_fn: Callable | None = print) -> list:
    """Runs the transfer comparison and returns one result dict per strategy.

    Pretraining and testing read `kft.data.from_arrays` datasets. Each
    strategy is one `kft.fine_tune` call (learning rate 3e-3, the
    validation split picks the best epoch): the head alone first
    (`min(10, target_epochs - 1)` epochs; all of them for feature
    extraction), then the top block (`"partial"`) or everything
    (`"full"`). `"scratch"` is `"full"` from random weights after one head
    epoch (a head on random features learns nothing).

    Args:
        image_size: Side of the digit images, at least 8. Defaults to `32`.
        target_per_class: Labelled target images per class. Defaults to
            `10`.
        source_epochs: Pretraining epochs on the source digits. Defaults
            to `15`.
        target_epochs: Epochs per strategy, head phase included, at least
            2. Defaults to `30`.
        batch_size: Defaults to `32`.
        seed: Seeds Keras, NumPy and the data split. Defaults to `0`.
        workdir: Existing directory the pretrained weights file is written
            to. Defaults to a temporary directory, removed at the end.
        print_fn: Progress and table output; `None` for silence. Defaults
            to `print`.

    Returns:
        List of dicts with keys strategy, trainable, epochs, train_time,
        accuracy, precision, recall, f1.

    Raises:
        ValueError: an argument out of range or a `workdir` that is not an
            existing directory, before anything is trained.

    Example (trains five small models: too slow for a doctest):
    >>> from kft.demo import run_demo
    >>> rows = run_demo(image_size=8, target_per_class=2, source_epochs=1,
    ...                 target_epochs=2, print_fn=None)  # doctest: +SKIP
    >>> [row["strategy"] for row in rows]  # doctest: +SKIP
    ['scratch', 'feature_extraction', 'partial', 'full']
    """
    settings = _Settings(
        image_size=check_int("image_size", image_size, min_value=8),
        target_per_class=check_int("target_per_class", target_per_class,
                                   min_value=1),
        source_epochs=check_int("source_epochs", source_epochs, min_value=1),
        target_epochs=check_int("target_epochs", target_epochs, min_value=2),
        batch_size=check_int("batch_size", batch_size, min_value=1),
        seed=check_int("seed", seed, min_value=0),
    )
    if workdir is not None and not os.path.isdir(workdir):
        fail_argument("workdir", "an existing directory", workdir)
    say = print_fn or (lambda *args: None)
    with contextlib.ExitStack() as stack:
        temporary = ""
        if workdir is None:
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="kft_demo_"))
            temporary = " (a temporary directory, removed at the end)"
        weights_file = os.path.join(workdir, WEIGHTS_FILE)
        return _run(settings, weights_file, temporary, say)


def _run(settings, weights_file, temporary, say):
    keras.utils.set_random_seed(settings.seed)
    splits = digits(image_size=settings.image_size,
                    target_per_class=settings.target_per_class,
                    seed=settings.seed)
    test = settings.dataset(splits.target_test, shuffle=False)
    say(f"Source task: digits {splits.source_classes}, "
        f"{len(splits.source[1])} images. Target task: digits "
        f"{splits.target_classes}, {len(splits.target_train[1])} labelled "
        f"images, {len(splits.target_val[1])} validation images, "
        f"{len(splits.target_test[1])} test images.")
    _pretrain(settings, splits, weights_file, temporary, say)
    transfer_head = min(HEAD_EPOCHS, settings.target_epochs - 1)
    say(f"Each strategy: kft.fine_tune on the labelled arrays, "
        f"{transfer_head} head epochs + "
        f"{settings.target_epochs - transfer_head} fine-tuning epochs "
        f"(scratch: 1 + {settings.target_epochs - 1}; feature extraction: "
        f"{settings.target_epochs} head epochs), best epoch by validation "
        f"loss.")
    rows = []
    for strategy in STRATEGIES:
        head_epochs = {"scratch": 1,
                       "feature_extraction": settings.target_epochs}.get(
                           strategy, transfer_head)
        rows.append(_transfer(settings, splits, test, strategy, head_epochs,
                              weights_file))
        say(f"  {strategy}: done in {rows[-1]['train_time']:.1f}s")
    say(format_table(rows))
    return rows


def _pretrain(settings, splits, weights_file, temporary, say):
    """Trains simple_cnn on the source digits; saves its backbone weights."""
    source = build_classifier("simple_cnn", len(splits.source_classes),
                              weights=None, input_shape=settings.input_shape)
    source.compile(
        optimizer=keras.optimizers.Adam(PRETRAIN_LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    source.fit(settings.dataset(splits.source), epochs=settings.source_epochs,
               verbose=0)
    report = evaluate_classifier(source, settings.dataset(splits.source))
    say(f"Pretrained simple_cnn on the source task in "
        f"{time.perf_counter() - start:.1f}s (train accuracy "
        f"{report.accuracy:.3f}); weights saved to {weights_file}"
        f"{temporary}")
    source.get_layer("simple_cnn").save_weights(weights_file)


def _transfer(settings, splits, test, strategy, head_epochs, weights_file):
    """Fine-tunes a new classifier with one strategy; its result row."""
    keras.utils.set_random_seed(settings.seed)
    model = build_classifier(
        "simple_cnn", len(splits.target_classes),
        weights=None if strategy == "scratch" else weights_file,
        input_shape=settings.input_shape, dropout=0.2,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        # BatchNorm stays frozen for scratch too: a few dozen steps are too
        # few for its moving statistics to settle, so frozen BN is the
        # stronger baseline.
        warnings.filterwarnings(
            "ignore", message=r"Model .* was built with weights=None",
            category=UserWarning)
        # Arrays, not datasets: with a couple of batches an epoch, a
        # pipeline's per-epoch start-up would dominate the training time.
        fine_tune(
            model, splits.target_train, splits.target_val,
            strategy="full" if strategy == "scratch" else strategy,
            n_blocks=1, head_epochs=head_epochs,
            epochs=settings.target_epochs - head_epochs,
            head_learning_rate=LEARNING_RATE, learning_rate=LEARNING_RATE,
            batch_size=settings.batch_size, verbose=0)
    train_time = time.perf_counter() - start
    report = evaluate_classifier(model, test)
    return {
        "strategy": strategy,
        "trainable": sum(int(np.prod(v.shape))
                         for v in model.trainable_variables),
        "epochs": settings.target_epochs,
        "train_time": train_time,
        "accuracy": report.accuracy,
        "precision": report.precision,
        "recall": report.recall,
        "f1": report.f1,
    }


def format_table(rows: list) -> str:
    """A markdown table of `run_demo` results.

    Example:
    >>> row = {"strategy": "full", "trainable": 23_000, "epochs": 2,
    ...        "train_time": 1.5, "accuracy": 0.9, "precision": 0.91,
    ...        "recall": 0.9, "f1": 0.9}
    >>> print(format_table([row]).splitlines()[-1])
    | full | 23,000 | 2 | 1.5 | 0.900 | 0.910 | 0.900 | 0.900 |
    """
    lines = [
        "| strategy | trainable params | epochs | train time (s) | test "
        "accuracy | macro precision | macro recall | macro F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['trainable']:,} | {r['epochs']} | "
            f"{r['train_time']:.1f} | {r['accuracy']:.3f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |"
        )
    return "\n".join(lines)
