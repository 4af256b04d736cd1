"""`fine_tune`: the seeds' two-phase recipe in one call."""

import dataclasses
import math

import keras
import numpy as np

from kft.blocks import get_blocks, head_and_body
from kft.callbacks import GradualUnfreezing
from kft.data._dataset import ImageDataset
from kft.feature_cache import _check_cacheable
from kft.feature_cache import cache_features
from kft.feature_cache import fit_head
from kft.feature_cache import split_head
from kft.freezing import freeze
from kft.models import BatchAugmentModel

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
    """

    histories: list
    best_epoch: int
    best_value: float
    monitor: str


class _KeepBest(keras.callbacks.Callback):
    """Remembers the weights of the best epoch across several `fit` calls."""

    def __init__(self, monitor, maximize, model):
        super().__init__()
        self.monitor, self.maximize = monitor, maximize
        # Not `self.model`: in a cached head phase that is the head model.
        self.target = model
        self.best, self.best_epoch, self.weights = None, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"fine_tune monitors {self.monitor!r}, which is not in the "
                f"epoch logs. Available: {sorted(logs or {})}"
            )
        value = float(value)
        if self.best is None or (value > self.best if self.maximize
                                 else value < self.best):
            self.best, self.best_epoch = value, epoch
            self.weights = self.target.get_weights()


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


def _plain_data(data):
    """Whether `data` is known not to augment: arrays or a plain kft dataset."""
    if data is None:
        return True
    if isinstance(data, tuple):
        return len(data) == 2 and all(
            isinstance(part, np.ndarray) for part in data)
    return isinstance(data, ImageDataset) and data._augmenter is None


def _cosine(base, epochs):
    return lambda epoch: base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _default_loss(model):
    # A batch-mixing model trains on soft labels (it one-hot encodes
    # integer ones itself); a plain model on integer labels.
    if isinstance(model, BatchAugmentModel):
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def fine_tune(model, train_data, val_data=None, *, strategy="partial",
              n_blocks=1, head_epochs=3, epochs=10, head_learning_rate=1e-3,
              learning_rate=1e-4, weight_decay=1e-2, unfreeze_every=1,
              bn="frozen", loss=None, metrics=("accuracy",), monitor=None,
              early_stopping_patience=None, batch_size=32, callbacks=None,
              cache_features="auto", verbose=1):
    """Trains the head, then fine-tunes deeper, keeping the best weights.

    Phase 1 trains the head alone (backbone frozen) with AdamW at
    `head_learning_rate`. Phase 2 (all strategies but feature extraction)
    recompiles with AdamW at the lower `learning_rate`, decayed by a cosine
    over its epochs, and trains

    - `"partial"`: the top `n_blocks` blocks and the head;
    - `"full"`: everything;
    - `"gradual"`: one more block every `unfreeze_every` epochs
      (`kft.callbacks.GradualUnfreezing`).

    After both phases the model holds the weights of the best epoch by
    `monitor`; with `early_stopping_patience`, each phase stops after that
    many epochs without improvement.

    Args:
        model: A model from `kft.build_classifier` (or one
            `kft.get_blocks` splits into blocks and a head).
        train_data: `(x, y)` arrays, or anything `model.fit` takes as `x`
            (a dataset yielding `(x, y)` batches).
        val_data: Validation data in the same forms. Defaults to `None`.
        strategy: One of `"feature_extraction"`, `"partial"`, `"gradual"`,
            `"full"`. Defaults to `"partial"`.
        n_blocks: Blocks below the head trained in phase 2 of `"partial"`.
            Defaults to `1`.
        head_epochs: Epochs of phase 1. Defaults to `3`.
        epochs: Epochs of phase 2. Defaults to `10`.
        head_learning_rate: Phase 1 rate. Defaults to `1e-3`.
        learning_rate: Phase 2 starting rate. Defaults to `1e-4`.
        weight_decay: AdamW weight decay. Defaults to `1e-2`.
        unfreeze_every: Epochs per stage for `"gradual"`. Defaults to `1`.
        bn: BatchNorm policy, `"frozen"` or `"train"`. Defaults to
            `"frozen"`.
        loss: Defaults to categorical cross-entropy on logits (sparse for
            integer labels, soft for a `kft.BatchAugmentModel`).
        metrics: Defaults to `("accuracy",)`.
        monitor: Metric that picks the best epoch. Defaults to
            `"val_loss"` with `val_data`, else `"loss"`.
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
        verbose: Passed to `fit`. Defaults to `1`.

    Returns:
        A `FineTuneResult`.

    Example:
    >>> import kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=4)
    >>> model = kft.build_classifier("simple_cnn", num_classes=5,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> result = kft.fine_tune(model, data.target_train, data.target_val,
    ...                        strategy="gradual", head_epochs=1, epochs=2,
    ...                        verbose=0)
    >>> len(result.histories)
    2
    """
    if strategy not in RECIPES:
        raise ValueError(
            f"Argument `strategy` must be one of {RECIPES}. "
            f"Received: strategy={strategy!r}"
        )
    for name, value in (("head_epochs", head_epochs), ("epochs", epochs),
                        ("unfreeze_every", unfreeze_every)):
        if not isinstance(value, int) or value < (0 if name == "epochs"
                                                  else 1):
            raise ValueError(
                f"Argument `{name}` must be a positive integer. "
                f"Received: {name}={value!r}"
            )
    monitor = monitor or ("val_loss" if val_data is not None else "loss")
    maximize = "acc" in monitor or "f1" in monitor
    keep = _KeepBest(monitor, maximize, model)
    extra = list(callbacks or [])

    def stopper():
        if early_stopping_patience is None:
            return []
        return [keras.callbacks.EarlyStopping(
            monitor, patience=early_stopping_patience,
            mode="max" if maximize else "min")]

    def compile_with(rate):
        model.compile(
            optimizer=keras.optimizers.AdamW(rate, weight_decay=weight_decay),
            loss=loss or _default_loss(model),
            metrics=list(metrics),
        )

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
    compile_with(head_learning_rate)
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
        phase2 = [keras.callbacks.LearningRateScheduler(
            lambda epoch: _cosine(learning_rate, epochs)(epoch - head_epochs))]
        if strategy == "gradual":
            _, body = head_and_body(get_blocks(model))
            phase2.insert(0, GradualUnfreezing(
                milestones=[head_epochs + k * unfreeze_every
                            for k in range(len(body))],
                bn=bn, verbose=verbose))
        else:
            freeze(model, strategy, n_blocks=n_blocks if strategy == "partial"
                   else None, bn=bn)
        compile_with(learning_rate)
        histories.append(fit(epochs, head_epochs, phase2))
    model.set_weights(keep.weights)
    return FineTuneResult(histories=histories, best_epoch=keep.best_epoch,
                          best_value=keep.best, monitor=monitor)
