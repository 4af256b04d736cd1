"""`fine_tune`'s phases: what they share, keep-best and the cosine rate."""

import math

import keras
import numpy as np

from kft import _compat
from kft.training.compile_notice import CompileNotice
from kft.training.monitor import improves
from kft.training.monitor import logged_value
from kft.training.monitor import monitor_mode


class KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch across several `fit` calls.

    Args:
        monitor: The logged quantity that picks the best epoch.
        mode: `"min"`, `"max"` or `"auto"` (see `kft.training.monitor`);
            `"auto"` is resolved at the first epoch end.
        model: The model whose weights are kept.

    Attributes:
        best, best_epoch, weights: The best value, its epoch and the
            model's weights then (`None` before a value that is not NaN).
        last_epoch: The last epoch seen.

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> keep = KeepBest("loss", "auto", model)
    >>> _ = model.fit(np.ones((4, 2)), np.ones(4), epochs=2, verbose=0,
    ...               callbacks=[keep])
    >>> keep.mode, keep.last_epoch, len(keep.weights)
    ('min', 1, 2)
    """

    def __init__(self, monitor, mode, model):
        super().__init__()
        self.monitor, self.mode = monitor, mode
        # Not `self.model`: in a cached head phase that is the head model.
        self.target = model
        self.best, self.best_epoch, self.weights = None, None, None
        self.last_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = logged_value(logs, self.monitor, "fine_tune")
        if self.mode == "auto":
            # Resolved on the first epoch, when compiled metrics exist.
            self.mode = monitor_mode(self.model, self.monitor, self.mode)
        self.last_epoch = epoch
        if improves(value, self.best, self.mode):
            self.best, self.best_epoch = value, epoch
            # Not `get_weights()`: numpy 2 warns on Keras variables'
            # `__array__` (no `copy` argument); the values convert cleanly.
            self.weights = [np.array(v.value) for v in self.target.weights]


class EpochCosine(keras.callbacks.Callback):
    """Sets the rate of each epoch on a cosine and logs it.

    Keras' `LearningRateScheduler` would do the same, but reads the rate
    back through numpy, which warns on every epoch with numpy 2.

    Args:
        base: The rate of `first_epoch`.
        epochs: Epochs the cosine spans (down to 0 after the last).
        first_epoch: The epoch the cosine starts at.

    Example:
    >>> cosine = EpochCosine(1.0, epochs=4, first_epoch=2)
    >>> [round(cosine.rate(epoch), 3) for epoch in range(2, 6)]
    [1.0, 0.854, 0.5, 0.146]
    """

    def __init__(self, base, epochs, first_epoch):
        super().__init__()
        self.base, self.epochs, self.first_epoch = base, epochs, first_epoch

    def rate(self, epoch):
        """The rate of `epoch`."""
        progress = (epoch - self.first_epoch) / self.epochs
        return self.base * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.rate(epoch)


class Phases:
    """What both phases share: data, loss, metrics and callbacks.

    Every `fit` of either phase runs the same `KeepBest`, so the best epoch
    is chosen across phases, whose epochs are numbered on from phase 1's.
    """

    def __init__(self, model, train_data, val_data, *, loss, metrics,
                 monitor, mode, patience, batch_size, callbacks, verbose):
        self.model = model
        self.train_data, self.val_data = train_data, val_data
        self.loss, self.metrics = loss, list(metrics)
        self.keep = KeepBest(monitor, mode, model)
        self.patience, self.batch_size = patience, batch_size
        self.extra = list(callbacks or []) + (
            [CompileNotice()] if verbose else [])
        self.verbose = verbose

    def compile(self, optimizer):
        self.model.compile(optimizer=optimizer, loss=self.loss,
                           metrics=self.metrics)

    def callbacks(self, first=()):
        """`first`, then keep-best, early stopping and the user's."""
        stop = [] if self.patience is None else [
            keras.callbacks.EarlyStopping(self.keep.monitor,
                                          patience=self.patience,
                                          mode=self.keep.mode)]
        return list(first) + [self.keep] + stop + self.extra

    def fit(self, epochs, first_epoch, first_callbacks=()):
        """`History.history` of `epochs` epochs from `first_epoch`."""
        kwargs, x = {}, self.train_data
        if isinstance(x, tuple):
            x, y = x
            kwargs = {"y": y, "batch_size": self.batch_size}
        history = self.model.fit(
            x, epochs=first_epoch + epochs, initial_epoch=first_epoch,
            validation_data=self.val_data, verbose=self.verbose,
            callbacks=self.callbacks(first_callbacks), **kwargs)
        return history.history


def load_best(phases):
    """Loads the best epoch's weights and says which epoch that was."""
    keep = phases.keep
    if keep.best_epoch is None:
        raise ValueError(
            f"fine_tune: every epoch's {keep.monitor!r} was NaN; no weights "
            "were kept. Lower the learning rates.")
    later = keep.last_epoch - keep.best_epoch
    if phases.verbose:
        _compat.print_msg(
            f"fine_tune: kept the weights of epoch {keep.best_epoch + 1} of "
            f"{keep.last_epoch + 1}, the best {keep.monitor}="
            f"{keep.best:.4g} ({keep.mode}imum)"
            + (f"; the {later} epoch(s) after it did not improve on it."
               if later else "."))
    phases.model.set_weights(keep.weights)
