"""`fine_tune`'s phases: what they share, keep-best and the logged rate."""

import keras
import numpy as np

from kft import _compat
from kft.data._dataset import ImageDataset
from kft.training.compile_notice import CompileNotice
from kft.training.monitor import improves
from kft.training.monitor import logged_value
from kft.training.monitor import monitor_mode


def weights_finite(model):
    """Whether every weight of `model` is finite (no NaN or infinity), in
    one transfer from the device (not one per weight)."""
    return bool(keras.ops.all(keras.ops.stack([
        keras.ops.all(keras.ops.isfinite(variable.value))
        for variable in model.weights]))) if model.weights else True


class KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch across several `fit` calls.

    An epoch whose weights are not finite is never kept: diverged weights
    predict one class, whose share of an imbalanced validation set can
    look like the best accuracy.

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
        if not improves(value, self.best, self.mode):
            return
        # Not `get_weights()`: numpy 2 warns on Keras variables'
        # `__array__` (no `copy` argument); the values convert cleanly.
        weights = [np.array(v.value) for v in self.target.weights]
        # Checked on the copy already taken: no second pass on the device.
        if all(np.isfinite(w).all() for w in weights):
            self.best, self.best_epoch, self.weights = value, epoch, weights


class EpochRate(keras.callbacks.Callback):
    """Logs `learning_rate`: the optimizer's rate at each epoch's first
    step (a schedule evaluated at the step count then).

    Keras' `LearningRateScheduler` reads the rate back through numpy, which
    warns on every epoch with numpy 2.

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(
    ...     keras.optimizers.schedules.ExponentialDecay(1.0, 2, 0.5)), "mse")
    >>> history = model.fit(np.ones((4, 2)), np.ones(4), batch_size=2,
    ...                     epochs=3, verbose=0, callbacks=[EpochRate()])
    >>> [round(rate, 3) for rate in history.history["learning_rate"]]
    [1.0, 0.5, 0.25]
    """

    def __init__(self):
        super().__init__()
        self.rate = None

    def on_epoch_begin(self, epoch, logs=None):
        # The step count lives in the running step's state until written
        # back (Keras does so at epoch ends already).
        _compat.sync_fit_state(self.model)
        self.rate = float(np.asarray(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.rate is not None:
            logs["learning_rate"] = self.rate


class EpochLogs(keras.callbacks.Callback):
    """`History.history` of one `fit` call.

    `fit` returns a `History` the user passed among the callbacks instead
    of a new one, and its `history` grows over every call it sees: the
    phases' histories would be one dict holding every phase's epochs. Not
    a `History` of kft's own: Keras would take it for its own (and make
    it `model.history`) instead of the user's.
    """

    def __init__(self):
        super().__init__()
        self.history = {}

    def on_train_begin(self, logs=None):
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' `EarlyStopping` that also counts a call's epochs from before
    a restart.

    Keras' callback starts counting at each `fit`: a phase resumed by a
    `kft.runs.RunBackup` after a kill would wait `patience` epochs again,
    and train epochs the uninterrupted run did not. Before its first
    epoch this one replays the monitored values that callbacks with a
    `call_logs` method (`RunBackup`) recorded for the call.

    Args:
        *args, **kwargs: Those of `keras.callbacks.EarlyStopping`.
        earlier: Callbacks to take the earlier epochs' logs from.

    Example:
    >>> import keras, numpy as np
    >>> class Past(keras.callbacks.Callback):
    ...     def call_logs(self, before):
    ...         return [(0, {"loss": 0.5}), (1, {"loss": 0.9})]
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> stop = ResumedEarlyStopping("loss", patience=2, earlier=[Past()])
    >>> history = model.fit(np.ones((4, 2)), np.ones(4) * 9, epochs=6,
    ...                     initial_epoch=2, verbose=0, callbacks=[stop])
    >>> len(history.history["loss"])  # epoch 1 waited already
    1
    """

    def __init__(self, *args, earlier=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.earlier = list(earlier)
        self._replayed = False

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._replayed = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._replayed:
            return
        self._replayed = True
        for callback in self.earlier:
            for past, past_logs in callback.call_logs(before=epoch):
                super().on_epoch_end(past, past_logs)


class Phases:
    """What both phases share: data, loss, metrics and callbacks.

    Every `fit` of either phase runs the same `KeepBest`, so the best epoch
    is chosen across phases, whose epochs are numbered on from phase 1's.
    """

    def __init__(self, model, train_data, val_data, *, loss, metrics,
                 monitor, mode, patience, batch_size, callbacks, verbose,
                 class_weight=None):
        self.model = model
        self.class_weight = class_weight
        self.train_data, self.val_data = train_data, val_data
        self.loss, self.metrics = loss, list(metrics)
        self.keep = KeepBest(monitor, mode, model)
        self.patience, self.batch_size = patience, batch_size
        self.extra = list(callbacks or []) + (
            [CompileNotice()] if verbose else [])
        self.verbose = verbose
        self.logs = EpochLogs()

    def compile(self, optimizer):
        self.model.compile(optimizer=optimizer, loss=self.loss,
                           metrics=self.metrics)

    def callbacks(self, first=()):
        """`first`, then keep-best, early stopping, the user's and the
        recorder of this `fit`'s epochs (`self.logs`); for one `fit`."""
        # A `RunBackup` restarted mid-call holds the call's earlier epochs.
        earlier = [callback for callback in self.extra
                   if callable(getattr(callback, "call_logs", None))]
        stop = [] if self.patience is None else [
            ResumedEarlyStopping(self.keep.monitor, patience=self.patience,
                                 mode=self.keep.mode, earlier=earlier)]
        return list(first) + [self.keep] + stop + self.extra + [self.logs]

    def fit(self, epochs, first_epoch, first_callbacks=()):
        """`History.history` of `epochs` epochs from `first_epoch`."""
        kwargs, x = {}, self.train_data
        if isinstance(x, tuple):
            x, y = x
            kwargs = {"y": y, "batch_size": self.batch_size}
        if self.class_weight is not None:
            # `fit` ignores `class_weight` for an `ImageDataset`: its
            # batches carry the weights instead.
            if isinstance(x, ImageDataset):
                x = x.with_class_weight(self.class_weight)
            else:
                kwargs["class_weight"] = self.class_weight
        self.model.fit(
            x, epochs=first_epoch + epochs, initial_epoch=first_epoch,
            validation_data=self.val_data, verbose=self.verbose,
            callbacks=self.callbacks(first_callbacks), **kwargs)
        return self.logs.history


def _earlier_best(phases):
    """A callback that kept a better epoch than this attempt's (a
    `kft.runs.RunBackup` of a run resumed after a restart: the epochs
    before the restart ran in another process), or `None`."""
    keep = phases.keep
    for callback in phases.extra:
        if not callable(getattr(callback, "load_best", None)) or getattr(
                callback, "best_epoch", None) is None:
            continue
        mode = getattr(callback, "mode", None)
        if (getattr(callback, "monitor", None) != keep.monitor
                or mode not in ("min", "max")
                or keep.mode not in (mode, "auto")):
            continue  # it chose by another quantity or direction
        # On a tie the earlier epoch wins, as in a run never restarted.
        if keep.best_epoch is None or improves(
                callback.best_value, keep.best, mode) or (
                callback.best_value == keep.best
                and callback.best_epoch < keep.best_epoch):
            return callback
    return None


def load_best(phases):
    """Loads the best epoch's weights and says which epoch that was: this
    attempt's, or one a `RunBackup` kept before a restart."""
    keep = phases.keep
    earlier = _earlier_best(phases)
    if earlier is not None and earlier.load_best(phases.model):
        keep.mode = earlier.mode
        keep.best, keep.best_epoch = earlier.best_value, earlier.best_epoch
        keep.weights = [np.array(v.value) for v in phases.model.weights]
        keep.last_epoch = max([keep.last_epoch or 0, *earlier.history])
    if keep.best_epoch is None:
        raise ValueError(
            f"fine_tune: no epoch ended with a {keep.monitor!r} that is not "
            "NaN and weights that are finite; no weights were kept. Lower "
            "the learning rates.")
    later = keep.last_epoch - keep.best_epoch
    if phases.verbose:
        _compat.print_msg(
            f"fine_tune: kept the weights of epoch {keep.best_epoch + 1} of "
            f"{keep.last_epoch + 1}, the best {keep.monitor}="
            f"{keep.best:.4g} ({keep.mode}imum)"
            + (f"; the {later} epoch(s) after it did not improve on it."
               if later else
               "; the last epoch was the best, so training had not levelled "
               "off: more epochs, or higher rates, may do better."
               if keep.last_epoch else "."))
    phases.model.set_weights(keep.weights)
