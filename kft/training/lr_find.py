"""`lr_find`: the learning-rate range test, with the model left as it was.

The rate grows exponentially from `start` to `end` over real training
steps; the rate is a schedule the compiled step evaluates at the
optimizer's step count (one compile, not one per step). Losses are
smoothed as fastai does, the test stops when the smoothed loss diverges,
and everything the steps changed (weights, BatchNorm statistics, optimizer
slots and step count, metrics, trainable flags) is put back bit for bit.
"""

import dataclasses
import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from kft import _compat
from kft._plotting import finish
from kft._plotting import new_figure
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft.distributed.data_parallel import check_data_batches
from kft.distributed.data_parallel import check_placement
from kft.training.class_weights import resolve_class_weight
from kft.training.fit_data import as_pair
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import classifier_classes
from kft.training.state import changing_trainable

# Where fastai's `lr_find` looks for suggestions: without the first tenth
# of the steps (the loss has not reacted yet) and the last five (diverging).
SKIP_END = 5


class Suggestion(NamedTuple):
    """A suggested rate, the smoothed loss there, and how it was chosen."""

    learning_rate: float
    loss: float
    rule: str


RULES = {
    "valley": "fastai's valley: the longest stretch over which the smoothed "
              "loss keeps decreasing; halfway down it",
    "steep": "steepest descent: where the smoothed loss falls fastest per "
             "log-step of the rate",
    "minimum": "minimum/10: a tenth of the rate at the lowest smoothed loss",
}


@dataclasses.dataclass(eq=False)  # `==` on its arrays raised
class LRFinderResult:
    """The curve of `lr_find` and its suggestions.

    Attributes:
        learning_rates: The rate of each step taken.
        losses: The smoothed, debiased training loss after each step.
        raw_losses: The loss of each step's batch.
        suggestions: `dict` of `"valley"`, `"steep"` and `"minimum"` to a
            `Suggestion` (rate, smoothed loss, the rule in words).
        stop_reason: Why the test ended before `steps`, or `None`.
    """

    learning_rates: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestions: dict
    stop_reason: str | None = None

    def __str__(self):  # the suggestions, not the arrays
        return _summary(self)

    def __repr__(self):  # a notebook shows the repr: not the arrays
        rates = ", ".join(f"{name}={s.learning_rate:.3g}"
                          for name, s in self.suggestions.items())
        stop = (f", stop_reason={self.stop_reason!r}"
                if self.stop_reason else "")
        return (f"LRFinderResult({len(self.learning_rates)} steps"
                f"{', ' + rates if rates else ''}{stop})")

    def plot(self, path=None):
        """The smoothed loss against the rate (log scale), with the
        suggestions marked; saved to `path` when given.

        Args:
            path: File to save to (`.png`, `.svg`, `.pdf`). Defaults to
                `None` (not saved).

        Returns:
            The matplotlib Figure.
        """
        fig, ax = new_figure(figsize=(6.5, 4))
        ax.plot(self.learning_rates, self.losses, color="tab:blue",
                label="smoothed loss")
        markers = {"valley": ("o", "tab:red"), "steep": ("^", "tab:green"),
                   "minimum": ("s", "tab:purple")}
        for name, suggestion in self.suggestions.items():
            marker, colour = markers.get(name, ("x", "black"))
            ax.plot([suggestion.learning_rate], [suggestion.loss], marker,
                    color=colour, markersize=8,
                    label=f"{name}: {suggestion.learning_rate:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss (smoothed)")
        title = "Learning-rate range test"
        if self.stop_reason:
            title += " (stopped: diverged)"
        ax.set_title(title)
        ax.legend(fontsize="small")
        return finish(fig, path)


class _ExponentialRamp(keras.optimizers.schedules.LearningRateSchedule):
    """`start * (end / start) ** (k / (steps - 1))` at the `k`-th step
    after the optimizer's step count `offset`."""

    def __init__(self, start, end, steps, offset):
        super().__init__()
        self.start, self.end = start, end
        self.steps, self.offset = steps, offset

    def __call__(self, step):
        k = ops.cast(step, "float32") - float(self.offset)
        growth = math.log(self.end / self.start) / (self.steps - 1)
        return ops.exp(math.log(self.start) + growth * k)

    def rate(self, k):
        return self.start * (self.end / self.start) ** (k / (self.steps - 1))

    def get_config(self):
        return {"start": self.start, "end": self.end, "steps": self.steps,
                "offset": self.offset}


def _class_weights_of(y, class_weight):
    """Each example's class weight (1 for a class not in `class_weight`),
    read from integer or one-hot labels as `model.fit` reads them."""
    y = np.asarray(y)
    labels = (np.argmax(y, axis=-1) if y.ndim > 1 and y.shape[-1] > 1
              else y.reshape(len(y)))
    return np.array([class_weight.get(int(label), 1.0) for label in labels],
                    dtype="float32")


def _batches(data, batch_size, seed, steps):
    """Endless `(x, y, sample weights or None)` batches: shuffled array
    batches, or a dataset's batches, again and again."""
    if isinstance(data, tuple):
        x, y = data
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(x))
            for first in range(0, len(x), batch_size):
                index = order[first:first + batch_size]
                yield x[index], y[index], None
    seen = 0
    while True:
        count = 0
        for batch in data:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(
                    "Argument `data` must yield (images, labels) batches. "
                    f"Received: a batch of type {type(batch).__name__}")
            count += 1
            yield batch[0], batch[1], (batch[2] if len(batch) > 2
                                       else None)
        if not count:
            if not seen:
                raise ValueError("Argument `data` must yield at least one "
                                 "batch; it yielded none.")
            raise ValueError(
                f"Argument `data` yielded {seen} batches, then none when "
                "iterated again (a one-shot iterator or generator?), fewer "
                f"than steps={steps}. Pass (x, y) arrays, a dataset that "
                "can be iterated again (e.g. kft.data.from_arrays), or an "
                f"iterator of at least {steps} batches.")
        seen += count


def _snapshot(model):
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    groups = (model.variables, optimizer.variables, model.metrics_variables)
    return {
        "values": [[np.array(v.value) for v in group] for group in groups],
        "flags": {layer: layer.trainable
                  for layer in _compat.flatten_layers(model)},
    }


def _restore(model, snapshot):
    flags = snapshot["flags"]
    if any(layer.trainable != flag for layer, flag in flags.items()):
        with changing_trainable(model):
            _compat.set_trainable_flags(flags.items())
    groups = (model.variables, model.optimizer.variables,
              model.metrics_variables)
    for group, values in zip(groups, snapshot["values"]):
        for variable, value in zip(group, values):
            variable.assign(value)
    # The compiled step evaluated the ramp; the next one traces afresh.
    model.train_function = None


def _check_data(model, data):
    """`data` as `(x, y)` arrays or a dataset; raises for images alone, no
    examples or labels outside a classifier's classes."""
    data = as_pair(data, "data")
    if isinstance(data, np.ndarray) or keras.ops.is_tensor(data):
        raise ValueError(
            "Argument `data` must be (images, labels) arrays or a dataset "
            "of (images, labels) batches: the range test trains on the "
            "loss. Received: an array of shape "
            f"{tuple(data.shape)} without labels")
    if isinstance(data, tuple):
        x, y = data
        if len(x) == 0 or len(x) != len(y):
            raise ValueError(
                "Argument `data` must hold at least one image and a label "
                f"per image. Received: {len(x)} images, {len(y)} labels")
    num_classes = classifier_classes(model)
    if num_classes is not None:
        check_data_labels(data, num_classes, "data", model=model)
    return data


def _check(model, start, end, steps, smoothing, divergence, batch_size):
    start = check_number("start", start, low=0.0, low_open=True)
    end = check_number("end", end, low=0.0, low_open=True)
    if end <= start:
        fail_argument("end", f"greater than start={start!r}", end)
    if not isinstance(model, keras.Model):
        fail_argument("model", "a compiled keras.Model", model, TypeError)
    check_placement(model)
    steps = check_int("steps", steps, min_value=10)
    smoothing = check_number("smoothing", smoothing, low=0.0, high=1.0,
                             high_open=True)
    divergence = check_number("divergence", divergence, low=1.0,
                              low_open=True)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ValueError(
            "lr_find needs a compiled model: it ramps the rate of the "
            "optimizer you will train with, on your loss. Compile first, "
            "e.g. model.compile(kft.BlockwiseOptimizer(keras.optimizers."
            "AdamW(1e-3)), keras.losses.SparseCategoricalCrossentropy("
            "from_logits=True)).")
    if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
        # Its skipped steps (non-finite gradients) would shift the ramp.
        raise TypeError(
            "lr_find does not support a LossScaleOptimizer, which Keras "
            "wraps around any optimizer of a model under the "
            "'mixed_float16' dtype policy: build the model under "
            "'mixed_bfloat16' or 'float32' to run it.")
    if _compat.fit_state_pending(model):
        raise RuntimeError("lr_find cannot run inside a running `fit`.")
    return start, end, steps, smoothing, divergence, batch_size


def lr_find(model, data, *, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, batch_size: int = 32, smoothing: float = 0.98,
            divergence: float = 4.0, seed: int = 0,
            class_weight=None, verbose: int = 1) -> LRFinderResult:
    """The learning-rate range test (Smith; fastai's `lr_find`).

    Trains `model` for up to `steps` steps with the rate of its compiled
    optimizer growing exponentially from `start` to `end`, records the
    smoothed loss (exponential moving average with factor `smoothing`,
    debiased: `avg / (1 - smoothing**(k + 1))`), stops when it exceeds
    `divergence` times its minimum (or is not finite), then puts
    everything back: weights and BatchNorm statistics, optimizer slots and
    step count, metrics and the trainable flags are bit for bit as before,
    and a `kft.data` dataset's next pass has the order it would have had.
    Only the trainable set as it is now trains.

    The ramped rate is the optimizer's `learning_rate`: with a
    `kft.BlockwiseOptimizer` its base rate, every block keeping its ratio
    (so the suggestion is the base rate); with a `kft.GroupOptimizer` the
    scale on all groups' rates.

    Suggestions (fastai's rules, on the curve without its first
    `steps // 10` and last 5 points, or on all of it if too short):
    `"valley"` (the default choice of `kft.fine_tune(learning_rate=
    "find")`), `"steep"` and `"minimum"`; see `RULES`.

    Args:
        model: A compiled model (the optimizer and loss you will train
            with); the first call traces one train step for the ramp.
        data: `(x, y)` arrays, or a dataset of `(x, y)` batches (repeated
            if shorter than `steps`, so a one-shot iterator must yield
            `steps` batches).
        start: The first rate, > 0. Defaults to `1e-7`.
        end: The last rate, > `start`. Defaults to `10.0`.
        steps: Steps of the ramp, >= 10. Defaults to `100`.
        batch_size: Batch size for arrays. Defaults to `32`.
        smoothing: Loss smoothing factor in [0, 1). Defaults to `0.98`.
        divergence: Stop when the smoothed loss exceeds this many times its
            minimum, > 1. Defaults to `4.0`.
        seed: Seed of the batch order of arrays. Defaults to `0`.
        class_weight: As `model.fit`'s (or `"balanced"`): the loss of
            each example weighted by its class', as training will weigh
            it. A dataset's own sample weights (a third batch element, as
            `ImageDataset.with_class_weight` adds) are used as they are.
            Defaults to `None`.
        verbose: Show the steps as they run (`1`: a progress bar of the
            rate and smoothed loss; `2`: one line when done), then where it
            stopped and the suggestions. Defaults to `1`.

    Returns:
        An `LRFinderResult`.

    Raises:
        ValueError: a non-positive rate, `end <= start`, `steps < 10`, a
            bad `smoothing` / `divergence`, a model not compiled or without
            trainable weights, data
            without labels or examples (or a one-shot iterator shorter
            than `steps`), or, with a (sparse) categorical cross-entropy
            loss, labels outside the model's classes.
        TypeError: a `LossScaleOptimizer` (the `"mixed_float16"` policy).

    Example:
    >>> import keras, kft, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(), "mse")
    >>> result = kft.lr_find(model, (x, x.sum(axis=1)), start=1e-4, end=10,
    ...                      steps=30, verbose=0)
    >>> sorted(result.suggestions)
    ['minimum', 'steep', 'valley']
    """
    start, end, steps, smoothing, divergence, batch_size = _check(
        model, start, end, steps, smoothing, divergence, batch_size)
    if seed is not None:  # None: a fresh order, as NumPy draws it
        seed = check_seed(seed)
    verbose = check_verbose(verbose)
    if not model.built:
        raise ValueError(
            f"Model {model.name!r} is not built, so it has no weights yet: "
            "give it a keras.Input (or call it on a batch) before the "
            "range test.")
    if not model.trainable_variables:
        # The loss would stay flat at every rate: suggestions of nothing.
        raise ValueError(
            f"Model {model.name!r} has no trainable weights: the range test "
            "needs some to train (kft.freeze(model, 'feature_extraction') "
            "leaves the head trainable).")
    data = _check_data(model, data)
    # Under data parallel, before a step fails deep in JAX.
    check_data_batches(data, batch_size, name="data")
    if class_weight is not None:
        class_weight = resolve_class_weight(class_weight, data,
                                            model.outputs[0].shape[-1])
    if callable(getattr(data, "with_shard", None)):
        # A view with passes of its own: the test must not use up the
        # dataset's shuffle orders (fit after it would see other ones).
        data = data.with_shard(data.shard)
    snapshot = _snapshot(model)
    optimizer = model.optimizer
    ramp = _ExponentialRamp(start, end, steps, int(ops.convert_to_numpy(
        optimizer.iterations.value)))
    previous = _compat.swap_learning_rate(optimizer, ramp)
    model.train_function = None
    rates, raw, smooth = [], [], []
    average, best, reason = 0.0, math.inf, None
    # Up to `steps` training steps: shown as they run.
    # verbose=2, as Keras': one line at the end (a bar was drawn).
    bar = (keras.utils.Progbar(steps, stateful_metrics=["lr", "loss"],
                               verbose=verbose) if verbose else None)
    try:
        batches = _batches(data, batch_size, seed, steps)
        for k in range(steps):
            x, y, weights = next(batches)
            if weights is None and class_weight is not None:
                weights = _class_weights_of(y, class_weight)
            logs = model.train_on_batch(x, y, sample_weight=weights,
                                        return_dict=True)
            loss = float(logs["loss"])
            average = smoothing * average + (1 - smoothing) * loss
            smoothed = average / (1 - smoothing ** (k + 1))
            rates.append(ramp.rate(k))
            raw.append(loss)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if bar is not None:
                bar.update(k + 1, [("lr", rates[-1]), ("loss", smoothed)],
                           finalize=False)
            if not math.isfinite(smoothed):
                reason = (f"the loss was {loss:.4g} at rate {rates[-1]:.3g} "
                          f"(step {k + 1} of {steps})")
                break
            if smoothed > divergence * best:
                reason = (f"the smoothed loss {smoothed:.4g} exceeded "
                          f"{divergence:g} x its minimum {best:.4g} at rate "
                          f"{rates[-1]:.3g} (step {k + 1} of {steps})")
                break
    finally:
        _compat.swap_learning_rate(optimizer, previous)
        _restore(model, snapshot)
    if bar is not None and rates:  # ends the line, also when it stopped
        bar.update(len(rates), [("lr", rates[-1]), ("loss", smooth[-1])],
                   finalize=True)
    result = LRFinderResult(np.array(rates), np.array(smooth), np.array(raw),
                            suggest(np.array(rates), np.array(smooth),
                                    steps), reason)
    if verbose:
        _compat.print_msg(_summary(result))
    return result


def _summary(result):
    lines = [f"lr_find: {len(result.learning_rates)} steps"
             + (f"; stopped: {result.stop_reason}" if result.stop_reason
                else ".")]
    for name, s in result.suggestions.items():
        lines.append(f"  {name}: {s.learning_rate:.3g} ({s.rule})")
    return "\n".join(lines)


def suggest(rates, losses, steps):
    """fastai's suggestions on a recorded curve: `dict` of rule name to
    `Suggestion` (empty for fewer than 2 finite points).

    Example:
    >>> rates = np.logspace(-5, 0, 40)
    >>> losses = np.concatenate([np.linspace(2, 0.5, 30), np.full(10, 9.)])
    >>> round(suggest(rates, losses, 40)["valley"].learning_rate, 4)
    0.0008
    """
    window = slice(steps // 10, len(rates) - SKIP_END)
    if len(rates[window]) >= 3:
        rates, losses = rates[window], losses[window]
    finite = np.isfinite(losses)
    rates, losses = rates[finite], losses[finite]
    if len(rates) < 2:
        return {}
    lowest = int(np.argmin(losses))
    slopes = np.diff(losses) / np.diff(np.log(rates))
    steep = int(np.argmin(slopes))
    valley = _valley_index(losses)

    def make(name, rate):
        # The loss on the curve at `rate` (minimum/10 lies between points).
        loss = np.interp(np.log(rate), np.log(rates), losses)
        return Suggestion(float(rate), float(loss), RULES[name])

    return {"valley": make("valley", rates[valley]),
            "steep": make("steep", rates[steep]),
            "minimum": make("minimum", rates[lowest] / 10.0)}


def _valley_index(losses):
    """fastai's valley: the longest decreasing subsequence of the losses,
    then 1/3 + 1/6 of the way along it (O(n^2), n <= a few hundred)."""
    n = len(losses)
    lengths = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[max_end] < lengths[i]:
                max_end = i
                max_start = max_end - lengths[max_end]
    sections = (max_end - max_start) / 3
    # fastai's start is one before the stretch: for one that starts at
    # the first point, its index could be -1, the last (highest) rate.
    return max(0, max_start + int(sections) + int(sections / 2))
