"""The main job: transfer on real handwritten digits, every strategy compared.

Pretrains `simple_cnn` on digits 0-4, saves its weights to a local file,
then fine-tunes on a small labelled set of digits 5-9 from that file with
each strategy (and from scratch) through `kft.fine_tune`, and reports test
metrics. Source and test images go through `kft.data` datasets. With
`seeds`, `kft.compare_strategies` repeats every strategy over several seeds
and reports means with confidence intervals and paired tests.
"""

import contextlib
import dataclasses
import importlib.util
import os
import tempfile
import time
from typing import Callable

import keras
import numpy as np

from kft import data as kft_data
from kft._plotting import available
from kft._validation import fail_argument
from kft._validation import check_int
from kft.data.digits import digits
from kft.evaluation import evaluate
from kft.evaluation import evaluate_classifier
from kft.evaluation.compare import compare_strategies
from kft.evaluation.comparison import StrategyComparison
from kft.models.classifier import build_classifier
from kft.training.fine_tune import fine_tune
from kft.training.fine_tune_checks import phase2_arguments

STRATEGIES = ("scratch", "feature_extraction", "partial", "full")
# With `seeds`: every kind of strategy `compare_strategies` knows, and
# scratch as a training function.
SEEDED_STRATEGIES = ("feature_extraction", "partial", "gradual", "full",
                     "discriminative")
# Epochs of a two-phase transfer run spent on the head alone.
HEAD_EPOCHS = 10
# One rate for both phases: the network is small and so is the data.
LEARNING_RATE = 3e-3
PRETRAIN_LEARNING_RATE = 3e-3
WEIGHTS_FILE = "simple_cnn_digits04.weights.h5"
_NO_PLOTS = ('Plots skipped: matplotlib, an optional extra, is not installed '
             '(pip install "kft[plots]").')


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

    def dataset(self, arrays, shuffle=True, class_names=None):
        return kft_data.from_arrays(*arrays, batch_size=self.batch_size,
                                    shuffle=shuffle, seed=self.seed,
                                    class_names=class_names)


def run_demo(image_size: int = 32, target_per_class: int = 10,
             source_epochs: int = 15, target_epochs: int = 30,
             batch_size: int = 32, seed: int = 0,
             workdir: str | os.PathLike | None = None,
             print_fn: Callable | None = print, seeds: int | None = None,
             output_dir: str | os.PathLike | None = None,
             plots: bool = True) -> list | StrategyComparison:
    """Runs the transfer comparison and returns one result dict per strategy.

    Pretraining and testing read `kft.data.from_arrays` datasets. Each
    strategy is one `kft.fine_tune` call (learning rate 3e-3, the
    validation split picks the best epoch): the head alone first
    (`min(10, target_epochs - 1)` epochs; all of them for feature
    extraction), then the top block (`"partial"`) or everything
    (`"full"`). `"scratch"` is `"full"` from random weights after one head
    epoch (a head on random features learns nothing), its BatchNorm
    layers trained (`bn="train"`, as kft advises for `weights=None`; their
    frozen init statistics normalise nothing), the others with kft's
    default `bn="frozen"`.

    With `seeds`, `kft.compare_strategies` runs feature extraction,
    partial, gradual, full, discriminative (full with layer-wise rates,
    decay 0.7) and scratch (a training function) once per seed `seed`,
    `seed + 1`, ...; the data split stays that of `seed`. It prints the
    table of means, 95% confidence intervals and paired t-tests against
    the best strategy, and writes `comparison.json` and the chart.

    Plots (matplotlib, an optional extra: skipped with a message when it
    is missing) go to `output_dir`: the strategy chart `strategies.png`
    and, in a folder named for the best strategy, its confusion matrices,
    per-class F1, reliability diagram and learning curves.

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
        seeds: Number of seeds (at least 2) for the comparison with
            confidence intervals. Defaults to `None` (one run each).
        output_dir: Directory for the plots and `comparison.json`, created
            if missing. Defaults to `workdir` when given, else a new
            `kft_demo_output_*` directory in the system's temporary
            directory (kept; its path is printed).
        plots: Whether to write the plots. Defaults to `True`.

    Returns:
        List of dicts with keys strategy, trainable, epochs, train_time,
        accuracy, precision, recall, f1; with `seeds`, the
        `kft.StrategyComparison`.

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
    if seeds is not None:
        seeds = check_int("seeds", seeds, min_value=2)
    if workdir is not None and not os.path.isdir(workdir):
        fail_argument("workdir", "an existing directory", workdir)
    if output_dir is not None and os.path.exists(output_dir) and not \
            os.path.isdir(output_dir):
        fail_argument("output_dir", "a directory (or a path to create one)",
                      output_dir)
    if print_fn is not None and not callable(print_fn):
        fail_argument("print_fn", "a function such as print, or None",
                      print_fn, TypeError)
    say = print_fn or (lambda *args: None)
    with contextlib.ExitStack() as stack:
        temporary = ""
        if output_dir is None and workdir is not None:
            output_dir = workdir
        if workdir is None:
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="kft_demo_"))
            temporary = " (a temporary directory, removed at the end)"
        weights_file = os.path.join(workdir, WEIGHTS_FILE)
        output = _Output(output_dir, plots, seeds is not None, say)
        if seeds is None:
            return _run(settings, weights_file, temporary, say, output)
        return _run_seeds(settings, weights_file, temporary, say, output,
                          seeds)


class _Output:
    """Where the demo's files go; the directory is made before training,
    so that a path that cannot be made fails early."""

    def __init__(self, directory, plots, writes_json, say):
        self.directory, self.say = directory, say
        self.plots = plots and available()
        if plots and not _have_matplotlib():  # a broken one: a warning
            say(_NO_PLOTS)
        if directory is None and (self.plots or writes_json):
            self.directory = tempfile.mkdtemp(prefix="kft_demo_output_")
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)

    def path(self, *names):
        return os.path.join(self.directory, *names)

    def write_plots(self, comparison, report, history, strategy):
        """The strategy chart and the report plots of `strategy`."""
        if not self.plots:
            return
        from kft._plotting import pyplot
        from kft.evaluation.plots import save_report_plots

        pyplot().close(comparison.plot(self.path("strategies.png")))
        folder = self.path(strategy)
        written = [os.path.relpath(path, self.directory) for path in
                   save_report_plots(report, folder, history=history)]
        self.say(f"Plots written to {self.directory}: strategies.png "
                 f"(the comparison chart) and, for {strategy}, "
                 f"{', '.join(written)}")


def _have_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


def _prepare(settings, weights_file, temporary, say):
    """Splits the digits, pretrains; `(splits, test dataset)`."""
    keras.utils.set_random_seed(settings.seed)
    splits = digits(image_size=settings.image_size,
                    target_per_class=settings.target_per_class,
                    seed=settings.seed)
    # Named by their digits, as the models' classes are.
    test = settings.dataset(splits.target_test, shuffle=False, class_names=[
        str(c) for c in splits.target_classes])
    say(f"Source task: digits {splits.source_classes}, "
        f"{len(splits.source[1])} images. Target task: digits "
        f"{splits.target_classes}, {len(splits.target_train[1])} labelled "
        f"images, {len(splits.target_val[1])} validation images, "
        f"{len(splits.target_test[1])} test images.")
    _pretrain(settings, splits, weights_file, temporary, say)
    return splits, test


def _run(settings, weights_file, temporary, say, output):
    splits, test = _prepare(settings, weights_file, temporary, say)
    transfer_head = min(HEAD_EPOCHS, settings.target_epochs - 1)
    say(f"Each strategy: kft.fine_tune on the labelled arrays, "
        f"{transfer_head} head epochs + "
        f"{settings.target_epochs - transfer_head} fine-tuning epochs "
        f"(scratch: 1 + {settings.target_epochs - 1}; feature extraction: "
        f"{settings.target_epochs} head epochs), best epoch by validation "
        f"loss.")
    rows, best = [], None
    for strategy in STRATEGIES:
        head_epochs = {"scratch": 1,
                       "feature_extraction": settings.target_epochs}.get(
                           strategy, transfer_head)
        row, model, result = _transfer(settings, splits, test, strategy,
                                       head_epochs, weights_file)
        rows.append(row)
        if best is None or row["accuracy"] > best[0]["accuracy"]:
            best = (row, model, result)
        say(f"  {strategy}: done in {rows[-1]['train_time']:.1f}s")
    say(format_table(rows))
    if output.plots:
        runs = [{"strategy": r["strategy"], "seed": settings.seed,
                 "metrics": {"accuracy": r["accuracy"]},
                 "trainable_params": r["trainable"],
                 "train_time": r["train_time"]} for r in rows]
        one_seed = StrategyComparison(runs, list(STRATEGIES),
                                      [settings.seed], "accuracy")
        output.write_plots(one_seed, evaluate(best[1], test),
                           best[2], best[0]["strategy"])
    return rows


def _run_seeds(settings, weights_file, temporary, say, output, count):
    splits, _ = _prepare(settings, weights_file, temporary, say)
    head = min(HEAD_EPOCHS, settings.target_epochs - 1)
    classes = len(splits.target_classes)

    def build():
        # Named by their digits: reports and plots say "5", not "0".
        return build_classifier("simple_cnn", classes, weights=weights_file,
                                input_shape=settings.input_shape,
                                dropout=0.2, class_names=[
                                    str(c) for c in splits.target_classes])

    def scratch(model, train, val, seed):
        fresh = build_classifier("simple_cnn", classes, weights=None,
                                 input_shape=settings.input_shape,
                                 dropout=0.2)
        for variable, value in zip(model.weights, fresh.weights):
            variable.assign(value.value)
        return fine_tune(model, train, val, strategy="full", head_epochs=1,
                         epochs=settings.target_epochs - 1, bn="train",
                         head_learning_rate=LEARNING_RATE,
                         learning_rate=LEARNING_RATE,
                         batch_size=settings.batch_size, verbose=0)

    seeds = list(range(settings.seed, settings.seed + count))
    say(f"Comparing {len(SEEDED_STRATEGIES) + 1} strategies over seeds "
        f"{seeds}: {settings.target_epochs} epochs each ({head} on the head "
        f"first; feature extraction: all on the head).")
    comparison = compare_strategies(
        build, splits.target_train, splits.target_val, splits.target_test,
        strategies=[*SEEDED_STRATEGIES, scratch], seeds=seeds,
        epochs=settings.target_epochs, head_epochs=head,
        head_learning_rate=LEARNING_RATE, learning_rate=LEARNING_RATE,
        batch_size=settings.batch_size, print_fn=say)
    say(comparison.to_markdown())
    comparison.save(output.path("comparison.json"))
    say(f"Comparison saved to {output.path('comparison.json')} "
        "(kft.StrategyComparison.load reads it back).")
    best = comparison.best
    if output.plots and best is not None:
        from kft.evaluation.report import EvaluationReport

        run = next(r for r in comparison.runs
                   if r["strategy"] == best and "error" not in r)
        output.write_plots(comparison,
                           EvaluationReport.from_dict(run["report"]),
                           run["histories"], best)
    return comparison


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
    """Fine-tunes a new classifier with one strategy; its result row, the
    model and the `FineTuneResult`."""
    keras.utils.set_random_seed(settings.seed)
    model = build_classifier(
        "simple_cnn", len(splits.target_classes),
        weights=None if strategy == "scratch" else weights_file,
        input_shape=settings.input_shape, dropout=0.2,
        class_names=[str(c) for c in splits.target_classes],
    )
    start = time.perf_counter()
    # Arrays, not datasets: with a couple of batches an epoch, a
    # pipeline's per-epoch start-up would dominate the training time.
    recipe = "full" if strategy == "scratch" else strategy
    # Random init statistics, frozen, normalise nothing: scratch trains
    # its BatchNorm layers (with exact statistics for validation,
    # `PreciseBatchNorm`): on this task 0.86 test accuracy against 0.68
    # frozen, mean of 3 data seeds.
    result = fine_tune(
        model, splits.target_train, splits.target_val, strategy=recipe,
        head_epochs=head_epochs, head_learning_rate=LEARNING_RATE,
        batch_size=settings.batch_size, verbose=0,
        bn="train" if strategy == "scratch" else "frozen",
        **phase2_arguments(recipe, {
            "epochs": settings.target_epochs - head_epochs,
            "learning_rate": LEARNING_RATE}))
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
    }, model, result


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
