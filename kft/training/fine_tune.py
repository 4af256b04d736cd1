"""`fine_tune`: the two-phase recipe (head, then deeper) in one call."""

import dataclasses
from collections.abc import Sequence
from typing import Literal

import keras

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft.models.batch_augment import BatchAugmentModel
from kft.models.blocks import get_blocks, head_and_body
from kft.optimizers import BlockwiseOptimizer
from kft.optimizers import layerwise_lr
from kft.training.feature_cache import cache_features
from kft.training.feature_cache import can_cache_features
from kft.training.feature_cache import fit_head
from kft.training.fit_data import as_pair
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import one_hot_labels
from kft.training.fit_data import plain_data
from kft.training.freezing import BN_POLICIES
from kft.training.freezing import freeze
from kft.training.monitor import MODES
from kft.training.phases import EpochCosine
from kft.training.phases import Phases
from kft.training.phases import load_best
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreezing import GradualUnfreezing

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
    mode: Literal["min", "max"] = "min"


def _check_arguments(strategy, mode, cache_mode, bn, counts, rates,
                     layer_decay):
    """Checks them; returns `counts` (name -> integer) and `layer_decay`.

    `counts` maps a name to `(value, smallest allowed)`, `rates` a name to
    a value that must be positive (`weight_decay`: at least 0).
    """
    check_choice("strategy", strategy, RECIPES)
    check_choice("mode", mode, MODES)
    check_choice("bn", bn, BN_POLICIES)
    if not (isinstance(cache_mode, bool) or (
            isinstance(cache_mode, str) and cache_mode == "auto")):
        raise ValueError(
            "Argument `cache_features` must be 'auto', True or False. "
            f"Received: cache_features={cache_mode!r}"
        )
    counts = {name: check_int(name, value, min_value=minimum)
              for name, (value, minimum) in counts.items()
              if value is not None}
    for name, value in rates.items():
        check_number(name, value, low=0.0,
                     low_open=name != "weight_decay")
    if layer_decay is not None:
        layer_decay = check_number("layer_decay", layer_decay, low=0.0,
                                   high=1.0, low_open=True)
    return counts, layer_decay


def _default_loss(model, train_data):
    # A batch-mixing model trains on soft labels (it one-hot encodes
    # integer ones itself); a plain model on integer or one-hot labels.
    if isinstance(model, BatchAugmentModel) or one_hot_labels(train_data):
        return keras.losses.CategoricalCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _head_caches(phases, mode):
    """Feature caches of the train and validation data, or `None`."""
    if mode is False:
        return None
    if mode == "auto" and not (
            plain_data(phases.train_data) and plain_data(phases.val_data)
            and can_cache_features(phases.model)[0]):
        return None
    # `True` insists: `cache_features` raises if the model cannot be cached.
    kwargs = {"batch_size": phases.batch_size, "verbose": phases.verbose}
    train = cache_features(phases.model, phases.train_data, **kwargs)
    val = None if phases.val_data is None else cache_features(
        phases.model, phases.val_data, **kwargs)
    return train, val


def _train_head(phases, epochs, learning_rate, weight_decay, bn, cache_mode):
    """Phase 1: the head alone; its `History.history`."""
    freeze(phases.model, "feature_extraction", bn=bn)
    phases.compile(keras.optimizers.AdamW(learning_rate,
                                          weight_decay=weight_decay))
    caches = _head_caches(phases, cache_mode)
    if caches is None:
        return phases.fit(epochs, 0)
    return fit_head(
        phases.model, caches[0], validation_data=caches[1],
        batch_size=phases.batch_size, epochs=epochs, verbose=phases.verbose,
        callbacks=phases.callbacks()).history


def _phase2_optimizer(model, learning_rate, weight_decay, layer_decay):
    # Each variable counts its own AdamW steps from when it became
    # trainable: with the shared counter of a plain AdamW, a block unfrozen
    # late would take a first step several times its rate.
    rates = (None if layer_decay is None
             else layerwise_lr(model, learning_rate, layer_decay))
    return BlockwiseOptimizer(
        keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        rates, model=model)


def _train_deeper(phases, strategy, first_epoch, epochs, learning_rate,
                  weight_decay, layer_decay, n_blocks, unfreeze_every, bn):
    """Phase 2: deeper blocks at the lower, cosine-decayed rate."""
    model = phases.model
    first = [EpochCosine(learning_rate, epochs, first_epoch)]
    # Compiled before the trainable set changes, so that the change
    # builds the new optimizer instead of re-targeting phase 1's.
    phases.compile(_phase2_optimizer(model, learning_rate, weight_decay,
                                     layer_decay))
    if strategy == "gradual":
        _, body = head_and_body(get_blocks(model))
        schedule = Milestones([first_epoch + k * unfreeze_every
                               for k in range(len(body))])
        first.insert(0, GradualUnfreezing(schedule=schedule, bn=bn,
                                          verbose=phases.verbose))
    else:
        freeze(model, strategy, bn=bn,
               n_blocks=n_blocks if strategy == "partial" else None)
    return phases.fit(epochs, first_epoch, first)


def fine_tune(
        model, train_data, val_data=None, *,
        strategy: Literal["feature_extraction", "partial", "gradual",
                          "full"] = "partial",
        n_blocks: int = 1, head_epochs: int = 3, epochs: int = 10,
        head_learning_rate: float = 1e-3, learning_rate: float = 1e-4,
        weight_decay: float = 1e-2, layer_decay: float | None = None,
        unfreeze_every: int = 1, bn: Literal["frozen", "train"] = "frozen",
        loss=None, metrics: Sequence = ("accuracy",),
        monitor: str | None = None,
        mode: Literal["auto", "min", "max"] = "auto",
        early_stopping_patience: int | None = None, batch_size: int = 32,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        cache_features: Literal["auto"] | bool = "auto",
        verbose: int = 1) -> FineTuneResult:
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
        head_epochs: Epochs of phase 1, at least 1. Defaults to `3`.
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
            model allows it (`kft.feature_cache.can_cache_features`),
            `True` insists (and raises if it cannot), `False` never does.
            Features are computed in inference mode (a backbone's own
            dropout off). In a cached phase, callbacks see the head model.
            Defaults to `"auto"`.
        verbose: Passed to `fit`; also prints which epoch was kept.
            Defaults to `1`.

    Returns:
        A `FineTuneResult`.

    Raises:
        ValueError: an unknown strategy, mode or BatchNorm policy, a bad
            count (epochs, blocks, batch size, patience), rate or decay,
            labels outside the model's classes, a monitored value missing
            from the logs or without a direction in `"auto"` mode. Arguments
            are checked before anything trains.

    Example:
    >>> import kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=4)
    >>> model = kft.build_classifier("simple_cnn", num_classes=5,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> result = kft.fine_tune(model, data.target_train, data.target_val,
    ...                        strategy="gradual", head_epochs=1, epochs=2,
    ...                        layer_decay=0.7, verbose=0)
    >>> len(result.histories), result.histories[1]["unfrozen_blocks"]
    (2, [1, 2])
    >>> result.monitor, result.mode
    ('val_loss', 'min')
    """
    counts, layer_decay = _check_arguments(
        strategy, mode, cache_features, bn,
        {"head_epochs": (head_epochs, 1), "epochs": (epochs, 0),
         "unfreeze_every": (unfreeze_every, 1), "n_blocks": (n_blocks, 1),
         "batch_size": (batch_size, 1),
         "early_stopping_patience": (early_stopping_patience, 0)},
        {"head_learning_rate": head_learning_rate,
         "learning_rate": learning_rate, "weight_decay": weight_decay},
        layer_decay)
    train_data = as_pair(train_data, "train_data")
    val_data = as_pair(val_data, "val_data")
    num_classes = model.outputs[0].shape[-1]
    check_data_labels(train_data, num_classes, "train_data")
    check_data_labels(val_data, num_classes, "val_data")
    phases = Phases(
        model, train_data, val_data,
        loss=loss or _default_loss(model, train_data), metrics=metrics,
        monitor=monitor or ("val_loss" if val_data is not None else "loss"),
        mode=mode, patience=counts.get("early_stopping_patience"),
        batch_size=counts["batch_size"], callbacks=callbacks,
        verbose=verbose)
    histories = [_train_head(phases, counts["head_epochs"],
                             head_learning_rate, weight_decay, bn,
                             cache_features)]
    if strategy != "feature_extraction" and counts["epochs"]:
        histories.append(_train_deeper(
            phases, strategy, counts["head_epochs"], counts["epochs"],
            learning_rate, weight_decay, layer_decay, counts["n_blocks"],
            counts["unfreeze_every"], bn))
    load_best(phases)
    keep = phases.keep
    return FineTuneResult(histories=histories, best_epoch=keep.best_epoch,
                          best_value=keep.best, monitor=keep.monitor,
                          mode=keep.mode)
