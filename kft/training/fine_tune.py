"""`fine_tune`: the seeds' two-phase recipe in one call."""

import dataclasses
import math

import keras
import numpy as np
from keras.src.utils import io_utils

from kft.training.monitor import MODES
from kft.training.monitor import improves
from kft.training.monitor import logged_value
from kft.training.monitor import monitor_mode
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_number
from kft.models.blocks import get_blocks, head_and_body
from kft.training.compile_notice import CompileNotice
from kft.training.unfreezing import GradualUnfreezing
from kft.data._dataset import ImageDataset
from kft.training.feature_cache import _check_cacheable
from kft.training.feature_cache import cache_features
from kft.training.feature_cache import fit_head
from kft.training.feature_cache import split_head
from kft.training.freezing import freeze
from kft.models.batch_augment import BatchAugmentModel
from kft.optimizers import BlockwiseOptimizer
from kft.optimizers import layerwise_lr

RECIPES = ("feature_extraction", "partial", "gradual", "full")


@dataclasses.dataclass
class FineTuneResult:
    """What `fine_tune` did.

    Attributes:
        histories: `History.history` dicts of phase 1 and (unless the
            strategy is feature extraction) phase 2. Epochs are numbered
            across both phases.
        best_epoch: Epoch (0-based, across phases) whose weights the model
            holds at the end.
        best_value: The monitored value at that epoch.
        monitor: The monitored metric.
        mode: `"min"` or `"max"`: how `monitor` improves.
    """

    histories: list
    best_epoch: int
    best_value: float
    monitor: str
    mode: str = "min"


class _KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch across several `fit` calls."""

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


class _EpochCosine(keras.callbacks.Callback):
    """Sets the rate of each phase-2 epoch on a cosine and logs it.

    Keras' `LearningRateScheduler` would do the same, but reads the rate
    back through numpy, which warns on every epoch with numpy 2.
    """

    def __init__(self, base, epochs, first_epoch):
        super().__init__()
        self.base, self.epochs, self.first_epoch = base, epochs, first_epoch

    def rate(self, epoch):
        progress = (epoch - self.first_epoch) / self.epochs
        return self.base * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = self.rate(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.rate(epoch)


def _as_pair(data, name):
    """`(x, y)` arrays from a tuple or list pair; anything else unchanged."""
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                f"Argument `{name}` must be an `(x, y)` pair or a dataset of "
                f"(x, y) batches. Received: a {type(data).__name__} of "
                f"length {len(data)}")
        return np.asarray(data[0]), np.asarray(data[1])
    return data


def _check_data_labels(data, num_classes, name):
    """Labels of arrays or a kft dataset must fit the model's classes."""
    if isinstance(data, tuple):
        _, y = data
        if y.ndim == 2:
            if y.shape[1] != num_classes:
                raise ValueError(
                    f"Argument `{name}` has one-hot labels of width "
                    f"{y.shape[1]} for a model with {num_classes} classes.")
        else:
            check_labels(y, num_classes, name=f"{name}[1]")
    elif isinstance(data, ImageDataset) and len(
            data.class_names) > num_classes:
        raise ValueError(
            f"Argument `{name}` has {len(data.class_names)} classes "
            f"({data.class_names}) but the model outputs {num_classes}.")


def _one_hot_labels(data):
    if isinstance(data, tuple):
        return data[1].ndim == 2
    return isinstance(data, ImageDataset) and data.label_mode == "categorical"


def _plain_data(data):
    """Whether `data` is known not to augment: arrays or a plain kft dataset."""
    if data is None:
        return True
    if isinstance(data, tuple):
        return all(isinstance(part, np.ndarray) for part in data)
    return isinstance(data, ImageDataset) and data._augmenter is None


def _head_caches(model, train_data, val_data, mode, batch_size, verbose):
    """Feature caches of the train and validation data, or `None`."""
    if mode not in ("auto", True, False):
        raise ValueError(
            "Argument `cache_features` must be 'auto', True or False. "
            f"Received: cache_features={mode!r}"
        )
    if mode is False:
        return None
    if mode == "auto":
        if not all(_plain_data(data) for data in (train_data, val_data)):
            return None
        try:
            _check_cacheable(model, split_head(model)[0])
        except ValueError:
            return None
    train = cache_features(model, train_data, batch_size=batch_size,
                           verbose=verbose)
    val = None if val_data is None else cache_features(
        model, val_data, batch_size=batch_size, verbose=verbose)
    return train, val


def _default_loss(model, train_data):
    # A batch-mixing model trains on soft labels (it one-hot encodes
    # integer ones itself); a plain model on integer or one-hot labels.
    if isinstance(model, BatchAugmentModel) or _one_hot_labels(train_data):
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _phase2_optimizer(model, learning_rate, weight_decay, layer_decay):
    # Each variable counts its own AdamW steps from when it became
    # trainable: with the shared counter of a plain AdamW, a block unfrozen
    # late would take a first step several times its rate.
    rates = (None if layer_decay is None
             else layerwise_lr(model, learning_rate, layer_decay))
    return BlockwiseOptimizer(
        keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        rates, model=model)


def _check_arguments(strategy, head_epochs, epochs, unfreeze_every,
                     learning_rates, layer_decay, mode):
    check_choice("strategy", strategy, RECIPES)
    check_choice("mode", mode, MODES)
    head_epochs = check_int("head_epochs", head_epochs, min_value=1)
    epochs = check_int("epochs", epochs, min_value=0)
    unfreeze_every = check_int("unfreeze_every", unfreeze_every, min_value=1)
    for name, value in learning_rates.items():
        check_number(name, value, low=0.0, low_open=True)
    if layer_decay is not None:
        layer_decay = check_number("layer_decay", layer_decay, low=0.0,
                                   high=1.0, low_open=True)
    return head_epochs, epochs, unfreeze_every, layer_decay


def _report_kept(keep, verbose):
    if keep.best_epoch is None:
        raise ValueError(
            f"fine_tune: every epoch's {keep.monitor!r} was NaN; no weights "
            "were kept. Lower the learning rates.")
    later = keep.last_epoch - keep.best_epoch
    if verbose:
        io_utils.print_msg(
            f"fine_tune: kept the weights of epoch {keep.best_epoch + 1} of "
            f"{keep.last_epoch + 1}, the best {keep.monitor}="
            f"{keep.best:.4g} ({keep.mode}imum)"
            + (f"; the {later} epoch(s) after it did not improve on it."
               if later else "."))


def fine_tune(model, train_data, val_data=None, *, strategy="partial",
              n_blocks=1, head_epochs=3, epochs=10, head_learning_rate=1e-3,
              learning_rate=1e-4, weight_decay=1e-2, layer_decay=None,
              unfreeze_every=1, bn="frozen", loss=None, metrics=("accuracy",),
              monitor=None, mode="auto", early_stopping_patience=None,
              batch_size=32, callbacks=None, cache_features="auto",
              verbose=1):
    """Trains the head, then fine-tunes deeper, keeping the best weights.

    Phase 1 trains the head alone (backbone frozen) with AdamW at
    `head_learning_rate`. Phase 2 (all strategies but feature extraction)
    recompiles with AdamW at the lower `learning_rate`, decayed by a cosine
    over its epochs, and trains

    - `"partial"`: the top `n_blocks` blocks and the head;
    - `"full"`: everything;
    - `"gradual"`: one more block every `unfreeze_every` epochs
      (`kft.callbacks.GradualUnfreezing`).

    Phase 2's AdamW is wrapped in a `kft.BlockwiseOptimizer`: every
    variable counts its own steps from when it became trainable (a block
    unfrozen late starts Adam's bias correction afresh) and, with
    `layer_decay`, each block trains at `learning_rate * layer_decay**d`,
    `d` its depth below the head.

    After both phases the model holds the weights of the best epoch by
    `monitor` (printed at the end when `verbose`); with
    `early_stopping_patience`, each phase stops after that many epochs
    without improvement.

    Args:
        model: A model from `kft.build_classifier` (or one
            `kft.get_blocks` splits into blocks and a head).
        train_data: `(x, y)` arrays (a tuple or list; `y` integer labels
            or one-hot rows), or anything `model.fit` takes as `x` (a
            dataset yielding `(x, y)` batches).
        val_data: Validation data in the same forms. Defaults to `None`.
        strategy: One of `"feature_extraction"`, `"partial"`, `"gradual"`,
            `"full"`. Defaults to `"partial"`.
        n_blocks: Blocks below the head trained in phase 2 of `"partial"`.
            Defaults to `1`.
        head_epochs: Epochs of phase 1. Defaults to `3`.
        epochs: Epochs of phase 2. Defaults to `10`.
        head_learning_rate: Phase 1 rate. Defaults to `1e-3`.
        learning_rate: Phase 2 starting rate (of the head). Defaults to
            `1e-4`.
        weight_decay: AdamW weight decay. Defaults to `1e-2`.
        layer_decay: Phase 2 rate factor per block below the head
            (`kft.layerwise_lr`), in (0, 1]. Defaults to `None` (one rate).
        unfreeze_every: Epochs per stage for `"gradual"`. Defaults to `1`.
        bn: BatchNorm policy, `"frozen"` or `"train"`. Defaults to
            `"frozen"`.
        loss: Defaults to categorical cross-entropy on logits: sparse for
            integer labels, on one-hot rows for one-hot labels or a
            `kft.BatchAugmentModel`.
        metrics: Defaults to `("accuracy",)`.
        monitor: Metric that picks the best epoch. Defaults to
            `"val_loss"` with `val_data`, else `"loss"`.
        mode: `"min"`, `"max"` or `"auto"`: losses are minimised and a
            Keras metric follows the direction it declares; `"auto"` raises
            for a quantity without one. Defaults to `"auto"`.
        early_stopping_patience: Defaults to `None` (no early stopping).
        batch_size: Used when `train_data` are arrays. Defaults to `32`.
        callbacks: Extra callbacks for both phases. Defaults to `None`.
        cache_features: Phase 1 trains only the head, so kft can compute the
            frozen backbone's features once and train the head on them
            (`kft.cache_features`, `kft.fit_head`): `"auto"` does so for
            arrays and `kft.data` datasets without augmentation when the
            model allows it, `True` insists (and raises if it cannot),
            `False` never does. Features are computed in inference mode
            (a backbone's own dropout off). In a cached phase, callbacks
            see the head model. Defaults to `"auto"`.
        verbose: Passed to `fit`; also prints which epoch was kept.
            Defaults to `1`.

    Returns:
        A `FineTuneResult`.

    Raises:
        ValueError: an unknown strategy or mode, a non-positive epoch count
            or rate, labels outside the model's classes, a monitored value
            missing from the logs or without a direction in `"auto"` mode.

    Example:
    >>> import kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=4)
    >>> model = kft.build_classifier("simple_cnn", num_classes=5,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> result = kft.fine_tune(model, data.target_train, data.target_val,
    ...                        strategy="gradual", head_epochs=1, epochs=2,
    ...                        layer_decay=0.7, verbose=0)
    >>> len(result.histories), result.mode
    (2, 'min')
    """
    head_epochs, epochs, unfreeze_every, layer_decay = _check_arguments(
        strategy, head_epochs, epochs, unfreeze_every,
        {"head_learning_rate": head_learning_rate,
         "learning_rate": learning_rate}, layer_decay, mode)
    train_data = _as_pair(train_data, "train_data")
    val_data = _as_pair(val_data, "val_data")
    num_classes = model.outputs[0].shape[-1]
    _check_data_labels(train_data, num_classes, "train_data")
    _check_data_labels(val_data, num_classes, "val_data")
    monitor = monitor or ("val_loss" if val_data is not None else "loss")
    keep = _KeepBest(monitor, mode, model)
    extra = list(callbacks or []) + ([CompileNotice()] if verbose else [])
    loss = loss or _default_loss(model, train_data)

    def stopper():
        if early_stopping_patience is None:
            return []
        return [keras.callbacks.EarlyStopping(
            monitor, patience=early_stopping_patience, mode=keep.mode)]

    def fit(epochs, first_epoch, more_callbacks):
        kwargs = {}
        if isinstance(train_data, tuple):
            x, y = train_data
            kwargs = {"y": y, "batch_size": batch_size}
        else:
            x = train_data
        history = model.fit(
            x, epochs=first_epoch + epochs, initial_epoch=first_epoch,
            validation_data=val_data, verbose=verbose,
            callbacks=more_callbacks + [keep] + stopper() + extra, **kwargs)
        return history.history

    freeze(model, "feature_extraction", bn=bn)
    model.compile(optimizer=keras.optimizers.AdamW(
        head_learning_rate, weight_decay=weight_decay), loss=loss,
        metrics=list(metrics))
    caches = _head_caches(model, train_data, val_data, cache_features,
                          batch_size, verbose)
    if caches is None:
        histories = [fit(head_epochs, 0, [])]
    else:
        histories = [fit_head(
            model, caches[0], validation_data=caches[1],
            batch_size=batch_size, epochs=head_epochs, verbose=verbose,
            callbacks=[keep] + stopper() + extra).history]
    if strategy != "feature_extraction" and epochs:
        phase2 = [_EpochCosine(learning_rate, epochs, head_epochs)]
        # Compiled before the trainable set changes, so that the change
        # builds the new optimizer instead of re-targeting phase 1's.
        model.compile(
            optimizer=_phase2_optimizer(model, learning_rate, weight_decay,
                                        layer_decay),
            loss=loss, metrics=list(metrics))
        if strategy == "gradual":
            _, body = head_and_body(get_blocks(model))
            phase2.insert(0, GradualUnfreezing(
                milestones=[head_epochs + k * unfreeze_every
                            for k in range(len(body))],
                bn=bn, verbose=verbose))
        else:
            freeze(model, strategy, n_blocks=n_blocks if strategy == "partial"
                   else None, bn=bn)
        histories.append(fit(epochs, head_epochs, phase2))
    _report_kept(keep, verbose)
    model.set_weights(keep.weights)
    return FineTuneResult(histories=histories, best_epoch=keep.best_epoch,
                          best_value=keep.best, monitor=monitor,
                          mode=keep.mode)
