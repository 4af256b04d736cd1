"""`compare_strategies`: every strategy x seed from the same weights.

One `kft.fine_tune` run (or a user's training function) per strategy and
seed, each on a fresh model from `build_model`, in one epoch budget; the
test report of each run, its trainable parameters, training time and peak
memory go into a `kft.StrategyComparison`, which turns them into means,
confidence intervals and paired tests (`kft.evaluation.comparison`).
"""

import gc
import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Sequence

import keras
import numpy as np

from kft import _compat
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument
from kft.evaluation._strategies import METRICS
from kft.evaluation._strategies import OWN_ARGUMENTS
from kft.evaluation._strategies import check_data
from kft.evaluation._strategies import check_seeds
from kft.evaluation._strategies import parse_strategies
from kft.evaluation.comparison import StrategyComparison
from kft.training.fine_tune import fine_tune
from kft.training.fine_tune_checks import phase2_arguments


class _ModelReturnedAgain(ValueError):
    """Stops the comparison (not one run's recorded error)."""


def _build(build_model, seed, built):
    """A fresh model from `build_model()` or `build_model(seed)`; `built`
    (a `WeakSet`) holds the models built so far."""
    try:
        parameters = [p for p in inspect.signature(build_model).parameters
                      .values() if p.kind in (p.POSITIONAL_ONLY,
                                              p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature: called without one
        parameters = []
    model = build_model(seed) if parameters else build_model()
    if not isinstance(model, keras.Model):
        fail_argument("build_model", "a function returning a keras.Model",
                      f"{build_model!r} returning {type(model).__name__}",
                      TypeError)
    if model in built:
        # Its weights (unless reset), trainable flags, compile and random
        # generators' states go from one run to the next: the run would
        # not start where the others do, nor pair with them by seed.
        raise _ModelReturnedAgain(
            f"`build_model` must return a new model at every call: "
            f"{build_model!r} returned the model {model.name!r} again, "
            "which carries the last run's trainable flags and random "
            "generators' states (and its trained weights unless reset). "
            "Build the model inside the function (e.g. "
            "`kft.build_classifier(...)`, or `keras.models.clone_model("
            "pretrained)` then `.set_weights(pretrained.get_weights())`).")
    built.add(model)
    return model


class _PeakMemory:
    """Peak resident memory of this process while a run trains, sampled.

    A thread reads the resident set size (RSS) every `interval` seconds;
    `delta_mib` is the largest sample minus the RSS at the start. It
    counts everything the process holds: XLA's compiled code and buffers,
    the feature cache, the data copies Keras makes. Each run starts after
    `malloc_trim` has returned the memory earlier runs freed (where glibc
    runs); a peak shorter than `interval` can be missed.
    """

    def __init__(self, interval=0.01):
        self.interval, self.start, self.peak = interval, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss():
        """This process's RSS in bytes, or `None` where it cannot be read."""
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:
            pass
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self):
        self.start = self.peak = self.rss()
        if self.start is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self.peak = max(self.peak, self.rss())

    @property
    def delta_mib(self):
        if self.start is None:
            return None
        return (self.peak - self.start) / 2**20


class _TimeBudget(keras.callbacks.Callback):
    """Stops `fit` at the first batch end after `seconds` since `start`."""

    def __init__(self, seconds, start):
        super().__init__()
        self.seconds, self.start, self.spent = seconds, start, False

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.spent = True
            self.model.stop_training = True


def _history_dicts(result):
    """Histories of a `FineTuneResult`, a `History` or nothing, as floats."""
    histories = getattr(result, "histories", None)
    if histories is None and isinstance(result, keras.callbacks.History):
        histories = [result.history]
    def floats(values):
        try:
            return np.asarray(values, dtype=float).tolist()
        except (TypeError, ValueError):
            return None  # not numbers: left out of the JSON record

    return [{key: v for key, v in ((k, floats(x)) for k, x in h.items())
             if v is not None} for h in histories or []]


def _test_metrics(model, test, batch_size):
    """Scalar test metrics and the whole report (a dict), of one run."""
    from kft.evaluation import evaluate

    report = evaluate(model, tuple(test) if isinstance(test, list) else test,
                      batch_size=batch_size)
    metrics = {"accuracy": report.accuracy,
               "balanced_accuracy": report.balanced_accuracy,
               "top_k_accuracy": report.top_k_accuracy,
               "macro_precision": report.macro["precision"],
               "macro_recall": report.macro["recall"],
               "macro_f1": report.macro["f1"],
               "weighted_f1": report.weighted["f1"],
               "expected_calibration_error":
                   report.expected_calibration_error}
    return {k: float(v) for k, v in metrics.items()}, report.to_dict()


def _train(model, strategy, train, val, seed, budget):
    """Trains one run; `(histories, best_epoch, time budget spent)`."""
    label, overrides, train_fn = strategy
    start = time.perf_counter()
    timer = (None if budget["time_budget"] is None
             else _TimeBudget(budget["time_budget"], start))
    if train_fn is not None:
        result = train_fn(model, train, val, seed)
        return _history_dicts(result), getattr(result, "best_epoch",
                                               None), False
    kwargs = _fine_tune_arguments(overrides, budget)
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + (
        [timer] if timer else [])
    result = fine_tune(model, train, val, **kwargs)
    if kwargs.get("regularizer") is not None:
        from kft.regularizers import regularize

        # One penalty for every run: bound to this run's model by
        # `fine_tune`, freed for the next run's (its anchors are taken
        # again from each fresh model).
        regularize(model, None)
    return (_history_dicts(result), result.best_epoch,
            bool(timer and timer.spent))


def _fine_tune_arguments(overrides, budget):
    """The `fine_tune` keywords of a strategy's run: the shared ones it
    reads (feature extraction has no phase 2 for a `layer_decay` to apply
    to), its own, and its share of the epoch budget."""
    kwargs = {**phase2_arguments(overrides["strategy"],
                                 budget["fine_tune_kwargs"]), **overrides}
    head = budget["head_epochs"]
    if kwargs["strategy"] == "feature_extraction":
        head = budget["epochs"]  # the whole budget on the head
    return {**kwargs, "head_epochs": head, "epochs": budget["epochs"] - head,
            "verbose": 0}


def _check_runs(build_model, parsed, seeds, data, budget, built):
    """Before any run trains: `build_model` returns a new model at each
    call (two calls, of the first two seeds), and `fine_tune`'s own checks
    of every strategy's arguments (blocks the model has, keywords it
    takes, arguments the strategy reads) pass on one model."""
    from kft.training.fine_tune import check_fine_tune_arguments

    try:
        model = _build(build_model, seeds[0], built)
        _build(build_model, seeds[min(1, len(seeds) - 1)], built)
    except _ModelReturnedAgain as error:
        raise ValueError(str(error)) from None
    specs = [(label, overrides) for label, overrides, train_fn in parsed
             if train_fn is None]
    train, val, _ = data
    for label, overrides in specs:
        try:
            check_fine_tune_arguments(model, train, val,
                                      **_fine_tune_arguments(overrides,
                                                             budget))
        except (TypeError, ValueError) as error:
            raise type(error)(f"Strategy {label!r}: {error}") from error
    del model
    gc.collect()


def _seeded(data, seed):
    """A `kft.data` dataset read from its first pass with `seed`: every
    run of a seed gets the same batches, whatever ran before it."""
    with_seed = getattr(data, "with_seed", None)
    return with_seed(seed) if callable(with_seed) else data


def _one_run(build_model, strategy, seed, data, budget, built):
    train, val, test = data
    train, val = _seeded(train, seed), _seeded(val, seed)
    keras.utils.set_random_seed(seed)
    model = _build(build_model, seed, built)
    gc.collect()
    trim = _compat.malloc_trim_function()
    if trim is not None:
        # Memory an earlier run freed went uncounted when this run reused
        # it (kft keeps freed memory for reuse): a strategy's peak then
        # depended on the strategies run before it, by up to 100x.
        trim(0)
    with _PeakMemory() as memory:
        start = time.perf_counter()
        histories, best_epoch, spent = _train(model, strategy, train, val,
                                              seed, budget)
        train_time = time.perf_counter() - start
    metrics, report = _test_metrics(model, test, budget["batch_size"])
    return {
        "strategy": strategy[0], "seed": seed, "metrics": metrics,
        "trainable_params": int(sum(np.prod(v.shape)
                                    for v in model.trainable_variables)),
        "train_time": train_time, "peak_memory_mib": memory.delta_mib,
        "time_budget_spent": spent, "best_epoch": best_epoch,
        "histories": histories, "report": report,
    }


def compare_strategies(
        build_model: Callable, train, val, test, *,
        strategies: Sequence = ("feature_extraction", "partial", "gradual",
                                "full", "discriminative"),
        seeds: Sequence[int] = (0, 1, 2), epochs: int = 10,
        head_epochs: int = 3, metric: str = "accuracy",
        time_budget: float | None = None, batch_size: int = 32,
        print_fn: Callable | None = print,
        **fine_tune_kwargs) -> StrategyComparison:
    """Fine-tunes with every strategy and seed; means, intervals, tests.

    Each run seeds Keras, NumPy and Python (`keras.utils.set_random_seed`),
    builds a fresh model from `build_model` (the same pretrained weights
    every time; the seed only changes the new head and the data order),
    trains it and evaluates it on `test`. Runs are paired by seed, so
    `StrategyComparison.table` can test each strategy against the best:
    `kft.data` datasets are read with `dataset.with_seed(seed)` (the same
    shuffled order and augmentation for every strategy at a seed; arrays
    are shuffled by the seeded `fit`). Other iterables keep their own
    order, which then differs between runs.

    Strategies:

    - `"feature_extraction"`: the head alone for all `epochs` (phase 1 of
      `kft.fine_tune`, on cached backbone features for arrays and plain
      `kft.data` datasets: `cache_features="auto"`).
    - `"partial"`, `"partial:N"`: the head for `head_epochs`, then the top
      N blocks (default `n_blocks` of `fine_tune_kwargs`, else 1).
    - `"gradual"`: the head, then one more block per `unfreeze_every`.
    - `"full"`: the head, then everything at one rate.
    - `"discriminative"`, `"discriminative:D"`: `"full"` with layer-wise
      rates, each block `learning_rate * D**depth` (`layer_decay`, default
      0.7).
    - a dict `{"name": "top2_slow", "strategy": "partial", "n_blocks": 2,
      "learning_rate": 1e-4}`: `fine_tune` arguments for this strategy.
    - a function `f(model, train, val, seed)` (or `{"name": ..., "train":
      f}`) that trains `model` in place; its name labels it. It owns its
      budget (`epochs` and `time_budget` are not passed to it); returning
      a `FineTuneResult` or `History` records its learning curves.

    Args:
        build_model: Returns a fresh `keras.Model` holding the pretrained
            weights: a function of no arguments, or of one (the seed). A
            model it returned before is refused (it carries the last
            run's trainable flags, random generators' states and trained
            weights); checked with two calls before any run trains.
        train: Training data in any form `kft.fine_tune` takes.
        val: Validation data (picks the best epoch), or `None`.
        test: Held-out labelled data: arrays `(x, y)` or a dataset of
            `(x, y)` batches.
        strategies: Defaults to the five named above.
        seeds: Distinct seeds, one run per strategy and seed; two or more
            for intervals and tests. Defaults to `(0, 1, 2)`.
        epochs: Epochs of every `fine_tune` run, head phase included.
            Defaults to `10`.
        head_epochs: Head epochs of the two-phase strategies, less than
            `epochs`. Defaults to `3`.
        metric: The test metric compared. Defaults to `"accuracy"`.
        time_budget: Seconds of training per `fine_tune` run; training
            stops at the first batch end past it (that epoch is still
            validated; a later phase trains one batch). Defaults to `None`
            (epochs only).
        batch_size: Training and test batch size. Defaults to `32`.
        print_fn: Prints one line per run; `None` for silence. Defaults to
            `print`.
        **fine_tune_kwargs: Passed to every `kft.fine_tune` run (rates,
            `weight_decay`, `monitor`, `callbacks`, ...).

    Returns:
        A `kft.StrategyComparison`.

    A run that raises (a diverged loss, a training function's error) is
    recorded with its error and the comparison goes on; its statistics
    leave it out (`StrategyComparison.failures` lists it).

    Raises:
        ComparisonInterrupted: Ctrl-C (a `KeyboardInterrupt`); its
            `comparison` holds the runs that finished.
        ValueError: an unknown or malformed strategy (the accepted forms
            are listed), repeated strategy names, no seeds or a repeated
            seed, empty data, a bad budget, a `fine_tune_kwargs` key
            that this function sets itself, or a strategy's arguments
            that `kft.fine_tune` refuses (e.g. `"partial:9"` for a model
            of 5 blocks); before anything trains.
        TypeError: a keyword `kft.fine_tune` does not take.

    Example:
    >>> import kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=2)
    >>> build = lambda: kft.build_classifier(
    ...     "simple_cnn", 5, weights=None, input_shape=(16, 16, 3))
    >>> result = kft.compare_strategies(
    ...     build, data.target_train, data.target_val, data.target_test,
    ...     strategies=["feature_extraction", "partial:2"], seeds=[0, 1],
    ...     epochs=2, head_epochs=1, print_fn=None)  # doctest: +SKIP
    >>> [row["strategy"] for row in result.table()]  # doctest: +SKIP
    ['feature_extraction', 'partial:2']
    """
    # A built model is callable too: each run needs a fresh one.
    if not callable(build_model) or isinstance(build_model, keras.Layer):
        fail_argument("build_model", "a function returning a fresh model "
                      "(called once per run, e.g. `lambda: kft."
                      "build_classifier(...)`), not a model",
                      build_model if not isinstance(build_model, keras.Layer)
                      else f"the {type(build_model).__name__} "
                      f"{build_model.name!r}", TypeError)
    parsed = parse_strategies(strategies)
    seeds = check_seeds(seeds)
    check_choice("metric", metric, METRICS)
    epochs = check_int("epochs", epochs, min_value=1)
    head_epochs = check_int("head_epochs", head_epochs, min_value=1)
    if any(o and o["strategy"] != "feature_extraction"
           for _, o, _ in parsed) and head_epochs >= epochs:
        fail_argument("head_epochs", f"less than epochs={epochs} for the "
                      "two-phase strategies", head_epochs)
    if time_budget is not None:
        time_budget = check_number("time_budget", time_budget, low=0.0,
                                   low_open=True)
    for name in OWN_ARGUMENTS:
        if name in fine_tune_kwargs:
            fail_argument(name, "left out: compare_strategies sets it for "
                          "every run", fine_tune_kwargs[name])
    for name, data in (("train", train), ("test", test)):
        check_data(name, data)
    check_data("val", val, required=False)
    budget = {"epochs": epochs, "head_epochs": head_epochs,
              "time_budget": time_budget,
              "batch_size": check_int("batch_size", batch_size, min_value=1),
              "fine_tune_kwargs": {**fine_tune_kwargs,
                                   "batch_size": batch_size}}
    built = weakref.WeakSet()
    _check_runs(build_model, parsed, seeds, (train, val, test), budget,
                built)
    say = print_fn or (lambda *args: None)
    runs, total = [], len(parsed) * len(seeds)
    settings = {"epochs": epochs, "head_epochs": head_epochs,
                "time_budget": time_budget, "batch_size": batch_size,
                "fine_tune_kwargs": {k: repr(v) for k, v in
                                     fine_tune_kwargs.items()}}

    def comparison():
        return StrategyComparison(
            runs=list(runs), strategies=[label for label, _, _ in parsed],
            seeds=seeds, metric=metric, settings=dict(settings))

    try:
        # Seed-major: an interrupted comparison has whole pairs.
        for seed in seeds:
            for strategy in parsed:
                runs.append(_recorded_run(build_model, strategy, seed,
                                          (train, val, test), budget, built))
                say(_run_line(runs[-1], len(runs), total, metric))
    except KeyboardInterrupt as interrupt:
        # Hours of finished runs were lost with the Ctrl-C.
        settings["interrupted"] = f"after {len(runs)} of {total} runs"
        raise ComparisonInterrupted(comparison()) from interrupt
    return comparison()


class ComparisonInterrupted(KeyboardInterrupt):
    """Ctrl-C during `kft.compare_strategies`, with what had finished.

    A `KeyboardInterrupt`, so the program stops as on any Ctrl-C; catch it
    to keep the runs done so far.

    Attributes:
        comparison: A `kft.StrategyComparison` of the runs that finished
            (its `settings["interrupted"]` says after how many).

    Example:
    >>> from kft.evaluation.comparison import StrategyComparison
    >>> error = ComparisonInterrupted(StrategyComparison(
    ...     [], ["full"], [0], "accuracy", {"interrupted": "after 0 of 1"}))
    >>> isinstance(error, KeyboardInterrupt), error.comparison.runs
    (True, [])
    """

    def __init__(self, comparison):
        super().__init__(f"compare_strategies interrupted "
                         f"{comparison.settings.get('interrupted', '')}")
        self.comparison = comparison


def _recorded_run(build_model, strategy, seed, data, budget, built):
    try:
        return _one_run(build_model, strategy, seed, data, budget, built)
    except _ModelReturnedAgain as error:
        raise ValueError(str(error)) from None  # not a run's error
    except Exception as error:  # noqa: BLE001 - recorded, go on
        # A run that diverges (or a training function that raises) is a
        # result: the other runs still count.
        return {"strategy": strategy[0], "seed": seed,
                "error": f"{type(error).__name__}: {error}"}


def _run_line(run, done, total, metric):
    head = f"[{done}/{total}] {run['strategy']} seed {run['seed']}: "
    if "error" in run:
        return head + f"failed: {run['error']}"
    return head + (f"{metric} {run['metrics'][metric]:.4f}, trained in "
                   f"{run['train_time']:.1f}s")
