"""`fine_tune`: the two-phase recipe (head, then deeper) in one call."""

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Literal

import keras

from kft._compat import print_msg
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument
from kft.data import ImageDataset
from kft.models.batch_augment import BatchAugmentModel
from kft.models.blocks import get_blocks, head_and_body
from kft.optimizers import BlockwiseOptimizer
from kft.optimizers import layerwise_lr
from kft.optimizers.schedules import OneCycle
from kft.optimizers.schedules import Warmup
from kft.training.feature_cache import cache_features
from kft.training.feature_cache import can_cache_features
from kft.training.class_weights import resolve_class_weight
from kft.training.feature_cache import fit_head
from kft.distributed.data_parallel import check_data_batches
from kft.training.fit_data import as_pair
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import check_label_forms
from kft.training.fit_data import one_hot_labels
from kft.training.fit_data import plain_data
from kft.training.freezing import BN_POLICIES
from kft.training.freezing import freeze
from kft.training.monitor import MODES
from kft.training.lr_find import lr_find
from kft.training.phases import EpochRate
from kft.training.phases import Phases
from kft.training.phases import load_best
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreezing import GradualUnfreezing

RECIPES = ("feature_extraction", "partial", "gradual", "full")
# Arguments only phase 2 reads, and the strategies that read each: given
# to another strategy they would be dropped, so `fine_tune` refuses them.
PHASE2_ARGUMENTS = {
    "epochs": RECIPES[1:], "learning_rate": RECIPES[1:],
    "schedule": RECIPES[1:], "warmup": RECIPES[1:],
    "layer_decay": RECIPES[1:], "n_blocks": ("partial",),
    "unfreeze_every": ("gradual",)}
SCHEDULES = ("cosine", "one_cycle", "constant")
# The `lr_find` suggestion `fine_tune(learning_rate="find")` trains with.
FIND_SUGGESTION = "valley"


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
        learning_rate: Phase 2's learning rate as used (the `lr_find`
            suggestion with `learning_rate="find"`).
        lr_find: The `LRFinderResult` with `learning_rate="find"`, else
            `None`.
    """

    histories: list
    best_epoch: int
    best_value: float
    monitor: str
    mode: Literal["min", "max"] = "min"
    learning_rate: float | None = None
    lr_find: object = None


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


def phase2_arguments(strategy, arguments: Mapping) -> dict:
    """The entries of `arguments` (`fine_tune` keywords) that `strategy`
    reads: the others, phase 2's, are dropped (feature extraction has no
    phase 2; only "partial" reads `n_blocks`, only "gradual"
    `unfreeze_every`).

    Example:
    >>> phase2_arguments("full", {"n_blocks": 2, "layer_decay": 0.7,
    ...                           "head_epochs": 3})
    {'layer_decay': 0.7, 'head_epochs': 3}
    >>> phase2_arguments("feature_extraction", {"epochs": 5, "bn": "train"})
    {'bn': 'train'}
    """
    check_choice("strategy", strategy, RECIPES)
    return {name: value for name, value in arguments.items()
            if strategy in PHASE2_ARGUMENTS.get(name, RECIPES)}


def _check_phase2_arguments(strategy, given):
    """Refuses a phase 2 argument other than its default for a strategy
    that does not read it: dropping it would ignore the request."""
    for name, value in given.items():
        default = _PHASE2_DEFAULTS[name]
        if (strategy in PHASE2_ARGUMENTS[name] or value == default
                or (name == "epochs" and value == 0)):
            continue
        if strategy == "feature_extraction":
            hint = ("feature extraction has no phase 2 (it trains the "
                    "head alone: its epochs are `head_epochs` and its rate "
                    "`head_learning_rate`)")
        else:
            hint = (f"only strategy={PHASE2_ARGUMENTS[name][0]!r} reads it")
        fail_argument(name, f"left at its default "
                      f"({default!r}) with strategy="
                      f"{strategy!r}: {hint}", value)


def _check_model(model, strategy, n_blocks, learning_rate, epochs):
    """Checks what the phases need of `model`, before anything trains."""
    head, body = head_and_body(get_blocks(model))
    if head is None:
        raise ValueError(
            "Argument `model` must have a \"head\" block: phase 1 trains "
            f"the head alone, and kft.get_blocks finds the blocks {body} "
            "and no head. kft's head is the layers with weights after a kft "
            "backbone: build the model with kft.build_classifier, or put a "
            "kft backbone (kft.create_backbone) before your head layers. "
            f"Received: model={model.name!r}")
    if strategy == "partial" and n_blocks > len(body):
        fail_argument("n_blocks", f"an integer from 1 to {len(body)} (the "
                      f"blocks below the head: {body})", n_blocks)
    if (learning_rate == "find" and strategy != "feature_extraction"
            and epochs and model.dtype_policy.name == "mixed_float16"):
        # Keras wraps the optimizer in a LossScaleOptimizer, whose skipped
        # steps (non-finite gradients) would shift the rate ramp.
        fail_argument(
            "learning_rate", "a number under the 'mixed_float16' dtype "
            "policy: the range test cannot run on the loss-scaled optimizer "
            "Keras compiles then. Pass a rate, or build the model under "
            "'mixed_bfloat16' or 'float32' to use 'find'", learning_rate)


def _default_loss(model, train_data):
    # A batch-mixing model trains on soft labels (it one-hot encodes
    # integer ones itself); a plain model on integer or one-hot labels.
    from kft.deploy.inference import output_kind

    # A model ending in a softmax returns probabilities: a logits loss on
    # them is wrong in value (and so in the epoch it keeps).
    from_logits = output_kind(model) == "logits"
    if isinstance(model, BatchAugmentModel) or one_hot_labels(train_data):
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits)
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=from_logits)


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
        return phases.fit(epochs, 0, [EpochRate()])
    # The batches `fit` would make: a kft dataset's own size and shuffling
    # (`batch_size` is for arrays).
    data = phases.train_data
    own = isinstance(data, ImageDataset)
    return fit_head(
        phases.model, caches[0], validation_data=caches[1],
        batch_size=data.batch_size if own else phases.batch_size,
        shuffle=data.shuffle if own else True, epochs=epochs,
        verbose=phases.verbose, class_weight=phases.class_weight,
        callbacks=phases.callbacks([EpochRate()])).history


def _steps_per_epoch(phases):
    """Batches per epoch of the training data, or `None` if unknown."""
    data = phases.train_data
    if isinstance(data, tuple):
        return math.ceil(len(data[0]) / phases.batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def _phase2_rate(schedule, learning_rate, warmup, total_steps):
    """Phase 2's rate (a float or a schedule over `total_steps` steps) and
    its momentum schedule (one-cycle's, else `None`)."""
    warm = 0 if not warmup else max(1, round(warmup * total_steps))
    momentum = None
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        rate = schedule
    elif schedule == "constant":
        rate = learning_rate
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, total_steps - warm))
    else:
        rate = OneCycle(learning_rate, total_steps)
        # fastai's fit_one_cycle: Adam's beta_1 cycles 0.95 -> 0.85 -> 0.95.
        momentum = rate.momentum_schedule()
    if warm:
        rate = Warmup(rate, warm)
    return rate, momentum


def _phase2_optimizer(model, learning_rate, weight_decay, layer_decay,
                      rate=None, momentum=None):
    # Each variable counts its own AdamW steps from when it became
    # trainable: with the shared counter of a plain AdamW, a block unfrozen
    # late would take a first step several times its rate. A schedule
    # follows the global step and scales every block's rate alike.
    rates = (None if layer_decay is None
             else layerwise_lr(model, learning_rate, layer_decay))
    return BlockwiseOptimizer(
        keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
        rates, model=model, base_learning_rate=learning_rate,
        learning_rate=learning_rate if rate is None else rate,
        momentum_schedule=momentum)


def _first_stage(phases, strategy, n_blocks, bn):
    """Sets phase 2's first trainable set (gradual: head + top block)."""
    if strategy == "gradual":
        freeze(phases.model, "partial", n_blocks=1, bn=bn)
    else:
        freeze(phases.model, strategy, bn=bn,
               n_blocks=n_blocks if strategy == "partial" else None)


def _find_rate(phases, strategy, n_blocks, weight_decay, layer_decay, bn):
    """Runs `lr_find` on phase 2's optimizer and first trainable set, then
    puts phase 1's set back; returns the finder's result."""
    phases.compile(_phase2_optimizer(phases.model, 1.0, weight_decay,
                                     layer_decay))
    _first_stage(phases, strategy, n_blocks, bn)
    result = lr_find(phases.model, phases.train_data,
                     batch_size=phases.batch_size, verbose=phases.verbose)
    freeze(phases.model, "feature_extraction", bn=bn)
    if FIND_SUGGESTION not in result.suggestions:
        raise ValueError(
            "fine_tune(learning_rate='find'): the range test diverged "
            f"after {len(result.learning_rates)} steps, too few for a "
            "suggestion; pass a learning rate.")
    return result


# Where a `RunBackup` among the callbacks keeps the rate found.
_FOUND_RATE_KEY = "fine_tune_found_learning_rate"


def _recall(callbacks, key):
    """The value a callback with `recall` (`kft.runs.RunBackup`) kept from
    an earlier attempt of the run, or `None`."""
    for callback in callbacks:
        if callable(getattr(callback, "recall", None)):
            value = callback.recall(key)
            if value is not None:
                return value
    return None


def _record(callbacks, key, value):
    for callback in callbacks:
        if callable(getattr(callback, "record", None)):
            callback.record(key, value)


def _train_deeper(phases, strategy, first_epoch, epochs, learning_rate,
                  plan, n_blocks, unfreeze_every, bn):
    """Phase 2: deeper blocks at the lower, scheduled rate."""
    model = phases.model
    total_steps = epochs * (plan["steps_per_epoch"] or 0)
    rate, momentum = _phase2_rate(plan["schedule"], learning_rate,
                                  plan["warmup"], total_steps)
    first = [EpochRate()]
    # Compiled before the trainable set changes, so that the change
    # builds the new optimizer instead of re-targeting phase 1's.
    phases.compile(_phase2_optimizer(model, learning_rate,
                                     plan["weight_decay"],
                                     plan["layer_decay"], rate, momentum))
    if strategy == "gradual":
        _, body = head_and_body(get_blocks(model))
        schedule = Milestones([first_epoch + k * unfreeze_every
                               for k in range(len(body))])
        first.insert(0, GradualUnfreezing(schedule=schedule, bn=bn,
                                          verbose=phases.verbose))
    else:
        _first_stage(phases, strategy, n_blocks, bn)
    return phases.fit(epochs, first_epoch, first)


# Fewest steps of `kft.OneCycle`'s default cycle: its rise (pct_start=0.3
# of the steps) must last more than one step.
ONE_CYCLE_MIN_STEPS = 4


def _check_extras(callbacks, regularizer):
    """Checks the forms of `callbacks` and `regularizer`."""
    if callbacks is not None and (
            isinstance(callbacks, keras.callbacks.Callback)
            or not isinstance(callbacks, Sequence)):
        fail_argument("callbacks", "a list of Keras callbacks (or None)",
                      callbacks, TypeError)
    if regularizer is not None:
        from kft.regularizers import Penalty

        if not isinstance(regularizer, Penalty):
            fail_argument("regularizer", "kft.L2SP(...), kft.EWC(...), "
                          "kft.LwF(...) or None", regularizer, TypeError)


def _check_rate_setters(callbacks, scheduled):
    """Refuses callbacks that set the rate when phase 2 runs on a
    `LearningRateSchedule` (`scheduled`): Keras would raise mid-run."""
    setters = [type(c).__name__ for c in callbacks or () if isinstance(
        c, (keras.callbacks.ReduceLROnPlateau,
            keras.callbacks.LearningRateScheduler))]
    if setters and scheduled:
        fail_argument(
            "callbacks", "callbacks that do not set the learning rate with "
            f"a phase 2 schedule ({', '.join(setters)} would, and Keras "
            "cannot set the rate of a LearningRateSchedule); pass "
            "schedule='constant' and warmup=0 to use them", setters)


def _check_schedule(schedule, learning_rate, warmup, steps_per_epoch,
                    epochs):
    """Checks the phase 2 rate arguments before anything trains; `epochs`
    is phase 2's count (0 without a phase 2)."""
    if not isinstance(schedule,
                      keras.optimizers.schedules.LearningRateSchedule):
        check_choice("schedule", schedule, SCHEDULES)
    if isinstance(learning_rate, str):
        check_choice("learning_rate", learning_rate, ("find",))
        if epochs and isinstance(
                schedule, keras.optimizers.schedules.LearningRateSchedule):
            # The schedule's own values are phase 2's rates: a rate found
            # would be reported and never used.
            fail_argument(
                "learning_rate", "a number with a LearningRateSchedule as "
                "`schedule` (the schedule sets phase 2's rates itself); "
                "pass schedule='cosine', 'one_cycle' or 'constant' to "
                "train at the rate 'find' finds", learning_rate)
    else:
        check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    warmup = check_number("warmup", warmup, low=0.0, high=1.0,
                          high_open=True)
    if warmup and schedule == "one_cycle":
        fail_argument("warmup", "0 with schedule='one_cycle' (one-cycle "
                      "warms up itself: its first 30% of steps)", warmup)
    if steps_per_epoch is None and (warmup or schedule in ("cosine",
                                                           "one_cycle")):
        fail_argument("schedule", "'constant' or a LearningRateSchedule "
                      "(without warm-up) for training data whose number of "
                      "batches is unknown (no len())", schedule)
    total = epochs * (steps_per_epoch or 0)
    if schedule == "one_cycle" and epochs and total < ONE_CYCLE_MIN_STEPS:
        fail_argument(
            "schedule", f"'cosine' or 'constant' for a phase 2 of {total} "
            f"steps (epochs={epochs} x {steps_per_epoch} batches per epoch): "
            f"'one_cycle' needs at least {ONE_CYCLE_MIN_STEPS}; raise "
            "`epochs` or lower `batch_size`", schedule)
    return warmup


def fine_tune(
        model, train_data, val_data=None, *,
        strategy: Literal["feature_extraction", "partial", "gradual",
                          "full"] = "partial",
        n_blocks: int = 1, head_epochs: int = 3, epochs: int = 10,
        head_learning_rate: float = 1e-3,
        learning_rate: float | Literal["find"] = 1e-4,
        schedule: Literal["cosine", "one_cycle", "constant"]
        | keras.optimizers.schedules.LearningRateSchedule = "cosine",
        warmup: float = 0.0,
        weight_decay: float = 1e-2, layer_decay: float | None = None,
        unfreeze_every: int = 1, bn: Literal["frozen", "train"] = "frozen",
        loss=None, metrics: Sequence = ("accuracy",),
        monitor: str | None = None,
        mode: Literal["auto", "min", "max"] = "auto",
        early_stopping_patience: int | None = None, batch_size: int = 32,
        callbacks: Sequence[keras.callbacks.Callback] | None = None,
        cache_features: Literal["auto"] | bool = "auto",
        class_weight: Literal["balanced"] | Mapping[int, float] | None = None,
        regularizer=None,
        verbose: int = 1) -> FineTuneResult:
    """Trains the head, then fine-tunes deeper, keeping the best weights.

    Phase 1 trains the head alone (backbone frozen) with AdamW at the
    constant `head_learning_rate`. Phase 2 (all strategies but feature
    extraction) recompiles with AdamW at the lower `learning_rate` on a
    per-step `schedule` (by default a cosine from `learning_rate` to 0 over
    all of phase 2's steps), and trains

    - `"partial"`: the top `n_blocks` blocks and the head;
    - `"full"`: everything;
    - `"gradual"`: one more block every `unfreeze_every` epochs
      (`kft.callbacks.GradualUnfreezing`).

    Phase 2's AdamW is wrapped in a `kft.BlockwiseOptimizer`: every
    variable counts its own steps from when it became trainable (a block
    unfrozen late starts Adam's bias correction afresh) and, with
    `layer_decay`, each block trains at `learning_rate * layer_decay**d`,
    `d` its depth below the head. The schedule follows phase 2's global
    step and scales every block's rate alike, so the ratios hold at every
    step and a block unfrozen at step `s` starts at the schedule's value
    at `s` times its ratio.

    With `learning_rate="find"`, `kft.lr_find` runs after phase 1 on phase
    2's optimizer and first trainable set (gradual: the head and the top
    block), and phase 2 trains at its `"valley"` suggestion (fastai's
    default); the model is restored exactly before phase 2 starts. A
    `kft.runs.RunBackup` among the callbacks records that rate, so that a
    run resumed after a restart trains on at it instead of testing again.

    After both phases the model holds the weights of the best epoch by
    `monitor` (printed at the end when `verbose`); with
    `early_stopping_patience`, each phase stops after that many epochs
    without improvement.

    Args:
        model: A model from `kft.build_classifier` (or one
            `kft.get_blocks` splits into blocks and a head).
        train_data: `(x, y)` arrays (a tuple or list; `y` integer labels,
            shaped `(n,)` or `(n, 1)`, or one-hot rows), or anything
            `model.fit` takes as `x` (a dataset yielding `(x, y)` batches).
        val_data: Validation data in the same forms, its labels in the
            form of `train_data`'s. Defaults to `None`.
        strategy: One of `"feature_extraction"`, `"partial"`, `"gradual"`,
            `"full"`. Defaults to `"partial"`.
        n_blocks: Blocks below the head trained in phase 2 of `"partial"`.
            Defaults to `1`.
        head_epochs: Epochs of phase 1, at least 1. Defaults to `3`.
        epochs: Epochs of phase 2. Defaults to `10`.
        head_learning_rate: Phase 1 rate. Defaults to `1e-3`.
        learning_rate: Phase 2's rate of the head (the peak rate with
            `"one_cycle"`; the rate the `layer_decay` ratios refer to with
            a schedule object), or `"find"` (see above). Defaults to
            `1e-4`.
        schedule: Phase 2's rate per step: `"cosine"` (Keras'
            `CosineDecay` from `learning_rate` to 0 over phase 2),
            `"one_cycle"` (`kft.OneCycle` peaking at `learning_rate`, with
            AdamW's `beta_1` cycled 0.95 -> 0.85 -> 0.95 as in fastai's
            `fit_one_cycle`), `"constant"`, or a
            `keras.optimizers.schedules.LearningRateSchedule` (its step 0 is
            phase 2's first step). `"cosine"` and `"one_cycle"` need the
            number of batches per epoch (arrays, or data with `len()`);
            `"one_cycle"` needs at least 4 steps in phase 2.
            Defaults to `"cosine"`.
        warmup: Fraction of phase 2's steps of linear warm-up
            (`kft.Warmup`) before the schedule, in [0, 1); not with
            `"one_cycle"`. Defaults to `0.0`.
        weight_decay: AdamW weight decay. Defaults to `1e-2`.
        layer_decay: Phase 2 rate factor per block below the head
            (`kft.layerwise_lr`), in (0, 1]. Defaults to `None` (one rate).
        unfreeze_every: Epochs per stage for `"gradual"`. Defaults to `1`.
        bn: BatchNorm policy, `"frozen"` or `"train"`. Defaults to
            `"frozen"`.
        loss: Defaults to categorical cross-entropy on logits (on
            probabilities for a model that ends in a softmax): sparse for
            integer labels, on one-hot rows for one-hot labels or a
            `kft.BatchAugmentModel`.
        metrics: Defaults to `("accuracy",)`.
        monitor: Metric that picks the best epoch. Defaults to
            `"val_loss"` with `val_data`, else `"loss"`.
        mode: `"min"`, `"max"` or `"auto"`: losses are minimised and a
            Keras metric follows the direction it declares; `"auto"` raises
            for a quantity without one. Defaults to `"auto"`.
        early_stopping_patience: Defaults to `None` (no early stopping).
            The schedule is laid out over all `epochs` all the same.
        batch_size: Used when `train_data` are arrays. Defaults to `32`.
        callbacks: Extra callbacks for both phases. Defaults to `None`.
        cache_features: Phase 1 trains only the head, so kft can compute the
            frozen backbone's features once and train the head on them
            (`kft.cache_features`, `kft.fit_head`): `"auto"` does so for
            arrays and `kft.data` datasets without augmentation or
            balanced sampling when the model allows it
            (`kft.feature_cache.can_cache_features`), `True` insists (and
            raises if it cannot), `False` never does. The head then trains
            on batches as `fit` would make them (a `kft.data` dataset's
            own batch size and shuffling). Features are computed in
            inference mode (a backbone's own dropout off). In a cached
            phase, callbacks see the head model. Defaults to `"auto"`.
        class_weight: `"balanced"` (`kft.balanced_class_weight` of the
            training labels), `{class index: weight}` or `None`: each
            example's loss is multiplied by its class' weight in both phases
            (a `kft.data` dataset carries the weights in its batches).
            Defaults to `None`.
        regularizer: `None`, or a penalty against forgetting
            (`kft.L2SP(...)`, `kft.EWC(...)`, or `kft.LwF(...)` for a
            `kft.with_source_head` model), bound with `kft.regularize`
            before phase 1, so its anchors are the weights `fine_tune`
            starts from. It stays bound afterwards (`regularizer.save(path)`
            writes its side file), unless `fine_tune` raises: then it is
            unbound again, so that a corrected call can bind it. Defaults
            to `None`.
        verbose: Passed to `fit`; also prints which epoch was kept.
            Defaults to `1`.

    Returns:
        A `FineTuneResult`.

    Each phase's History has `learning_rate`: the rate of each epoch's
    first step.

    Raises:
        ValueError: an unknown strategy, schedule, mode or BatchNorm
            policy, a bad count (epochs, blocks, batch size, patience), rate,
            warm-up fraction or decay, a model without a head block,
            `"one_cycle"` over fewer than 4 steps, `learning_rate="find"`
            under the `"mixed_float16"` policy or with a
            `LearningRateSchedule`, an argument the strategy does not read
            set to other than its default (`n_blocks` without
            `"partial"`, `unfreeze_every` without `"gradual"`, phase 2's
            `epochs`, rate, schedule, warm-up or `layer_decay` with
            `"feature_extraction"`: see `phase2_arguments`),
            `ReduceLROnPlateau` or
            `LearningRateScheduler` among the callbacks with a phase 2
            schedule, labels outside the model's classes (arrays and
            `kft.data` datasets: other datasets are not read ahead) or in
            different forms (integer, one-hot) in `train_data` and
            `val_data`, `cache_features=True` for a dataset that augments
            or resamples (`sampling="balanced"`), a monitored value missing
            from the logs or without a direction in `"auto"` mode.
            Arguments are checked before anything trains.
        TypeError: `callbacks` that is not a list, a `regularizer` that
            is not a kft penalty.

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
    # Every argument, checked before anything trains.
    phases, counts, plan, layer_decay = _prepare(**locals())
    with _bound(model, regularizer):
        histories, found, learning_rate = _run_phases(
            phases, strategy, counts, plan, learning_rate, head_learning_rate,
            weight_decay, layer_decay, bn, cache_features)
    keep = phases.keep
    return FineTuneResult(histories=histories, best_epoch=keep.best_epoch,
                          best_value=keep.best, monitor=keep.monitor,
                          mode=keep.mode,
                          learning_rate=None if learning_rate == "find"
                          else learning_rate, lr_find=found)


def _prepare(model, train_data, val_data, *, strategy, n_blocks, head_epochs,
             epochs, head_learning_rate, learning_rate, schedule, warmup,
             weight_decay, layer_decay, unfreeze_every, bn, loss, metrics,
             monitor, mode, early_stopping_patience, batch_size, callbacks,
             cache_features, class_weight, regularizer, verbose):
    """`fine_tune`'s checks: `(phases, counts, plan, layer_decay)`."""
    counts, layer_decay = _check_arguments(
        strategy, mode, cache_features, bn,
        {"head_epochs": (head_epochs, 1), "epochs": (epochs, 0),
         "unfreeze_every": (unfreeze_every, 1), "n_blocks": (n_blocks, 1),
         "batch_size": (batch_size, 1),
         "early_stopping_patience": (early_stopping_patience, 0)},
        {"head_learning_rate": head_learning_rate,
         "weight_decay": weight_decay},
        layer_decay)
    _check_phase2_arguments(strategy, {
        "epochs": epochs, "learning_rate": learning_rate,
        "schedule": schedule, "warmup": warmup, "layer_decay": layer_decay,
        "n_blocks": n_blocks, "unfreeze_every": unfreeze_every})
    train_data = as_pair(train_data, "train_data")
    val_data = as_pair(val_data, "val_data")
    if len(model.outputs) != 1:  # Keras' compile failed on the metrics
        fail_argument("model", "a classifier with one output (its class "
                      "scores)", f"a model with {len(model.outputs)} "
                      "outputs", TypeError)
    num_classes = model.outputs[0].shape[-1]
    check_data_labels(train_data, num_classes, "train_data")
    check_data_labels(val_data, num_classes, "val_data")
    if not isinstance(model, BatchAugmentModel):
        # It turns integer labels into one-hot rows itself.
        check_label_forms(train_data, val_data)
    _check_model(model, strategy, counts["n_blocks"], learning_rate,
                 counts["epochs"])
    _check_extras(callbacks, regularizer)
    # Under data parallel, before anything trains.
    check_data_batches(train_data, counts["batch_size"], name="train_data")
    check_data_batches(val_data, counts["batch_size"], name="val_data")
    class_weight = resolve_class_weight(class_weight, train_data, num_classes)
    phases = Phases(
        model, train_data, val_data,
        loss=loss or _default_loss(model, train_data), metrics=metrics,
        monitor=monitor or ("val_loss" if val_data is not None else "loss"),
        mode=mode, patience=counts.get("early_stopping_patience"),
        batch_size=counts["batch_size"], callbacks=callbacks,
        verbose=verbose, class_weight=class_weight)
    plan = {"schedule": schedule, "steps_per_epoch": _steps_per_epoch(phases),
            "weight_decay": weight_decay, "layer_decay": layer_decay}
    phase2 = 0 if strategy == "feature_extraction" else counts["epochs"]
    plan["warmup"] = _check_schedule(
        schedule, learning_rate, warmup, plan["steps_per_epoch"], phase2)
    _check_rate_setters(callbacks, phase2 and (schedule != "constant"
                                                or plan["warmup"]))
    return phases, counts, plan, layer_decay


def check_fine_tune_arguments(model, train_data, val_data=None, **kwargs):
    """Raises what `fine_tune(model, train_data, val_data, **kwargs)` would
    raise before training, and trains nothing (the `kft train` command
    checks a run's settings with it before writing the run folder).

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> data = (np.zeros((4, 16, 16, 3)), np.array([0, 1, 0, 1]))
    >>> check_fine_tune_arguments(model, data, n_blocks=9)
    Traceback (most recent call last):
    ...
    ValueError: Argument `n_blocks` must be an integer from 1 to 4 ...
    """
    arguments = _SIGNATURE.bind(model, train_data, val_data, **kwargs)
    arguments.apply_defaults()
    _prepare(**arguments.arguments)


@contextlib.contextmanager
def _bound(model, regularizer):
    """`regularizer` bound to `model` for the run (after every check), and
    unbound again if the run fails: a corrected call can then bind it (a
    bound penalty is refused a second time)."""
    if regularizer is None:
        yield
        return
    from kft.regularizers import regularize

    # Anchors (theta_0) are the weights fine-tuning starts from.
    regularize(model, regularizer)
    try:
        yield
    except BaseException:
        regularize(model, None)
        raise


def _run_phases(phases, strategy, counts, plan, learning_rate,
                head_learning_rate, weight_decay, layer_decay, bn,
                cache_features):
    """Both phases and the best epoch's weights: `(histories, lr_find
    result or None, phase 2's rate)`."""
    histories = [_train_head(phases, counts["head_epochs"],
                             head_learning_rate, weight_decay, bn,
                             cache_features)]
    found = None
    if strategy != "feature_extraction" and counts["epochs"]:
        if learning_rate == "find":
            learning_rate = _recall(phases.extra, _FOUND_RATE_KEY)
            if learning_rate is None:
                found = _find_rate(phases, strategy, counts["n_blocks"],
                                   weight_decay, layer_decay, bn)
                learning_rate = found.suggestions[
                    FIND_SUGGESTION].learning_rate
                _record(phases.extra, _FOUND_RATE_KEY, float(learning_rate))
            elif phases.verbose:
                print_msg(f"fine_tune(learning_rate='find'): "
                          f"{learning_rate:.3g}, the rate found before the "
                          "restart (RunBackup)")
        histories.append(_train_deeper(
            phases, strategy, counts["head_epochs"], counts["epochs"],
            learning_rate, plan, counts["n_blocks"],
            counts["unfreeze_every"], bn))
    load_best(phases)
    return histories, found, learning_rate


# Read once: the module's `fine_tune` may be wrapped later (tests do).
_SIGNATURE = inspect.signature(fine_tune)
_PHASE2_DEFAULTS = {name: _SIGNATURE.parameters[name].default
                    for name in PHASE2_ARGUMENTS}
