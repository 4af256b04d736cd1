"""`fine_tune`: the two-phase recipe (head, then deeper) in one call."""

import contextlib
import dataclasses
import inspect
import numbers
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np

from kft._validation import check_verbose
from kft._validation import fail_argument
from kft._validation import plain_scalar
from kft.data._dataset import ImageDataset
from kft.models.classifier_model import Classifier
from kft.models.batch_augment import BatchAugmentModel
from kft.training.class_weights import resolve_class_weight
from kft.distributed.data_parallel import check_data_batches
from kft.distributed.data_parallel import check_placement
from kft.training.fit_data import as_pair
from kft.training.fit_data import check_data_labels
from kft.training.fit_data import check_label_forms
from kft.training.fit_data import one_hot_labels
from kft.training.fit_data import warn_if_augmentation_unapplied
from kft.training.monitor import check_monitor
from kft.training.fine_tune_checks import PHASE2_ARGUMENTS
from kft.training.fine_tune_checks import check_arguments
from kft.training.fine_tune_checks import check_extras
from kft.training.fine_tune_checks import check_metrics
from kft.training.fine_tune_checks import check_model
from kft.training.fine_tune_checks import check_phase2_arguments
from kft.training.fine_tune_checks import check_rate_setters
from kft.training.fine_tune_checks import check_schedule
from kft.training.fine_tune_checks import warn_if_penalty_monitored
from kft.training.fine_tune_phases import run_phases
from kft.training.fine_tune_phases import steps_per_epoch
from kft.training.phases import Phases


@dataclasses.dataclass
class FineTuneResult:
    """What `fine_tune` did.

    Attributes:
        histories: `History.history` dicts of phase 1 and (unless the
            strategy is feature extraction) phase 2. Epochs are numbered
            across both phases. A run resumed by `kft.runs.RunBackup`
            holds the epochs this call ran (the backup's `history` holds
            the whole run's).
        best_epoch: Epoch (0-based, across phases) whose weights the model
            holds at the end.
        best_value: The monitored value at that epoch.
        monitor: The monitored metric.
        mode: `"min"` or `"max"`: how `monitor` improves.
        learning_rate: Phase 2's learning rate as used (the `lr_find`
            suggestion with `learning_rate="find"`); `None` where phase 2
            did not run (feature extraction, or phase 1 diverged).
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

    def __repr__(self):  # every epoch's every value, best_epoch last
        epochs = sum(len(next(iter(h.values()), ())) for h in self.histories)
        best = ("" if self.best_value is None
                else f"{self.best_value:.4g}")
        return (f"FineTuneResult(phases={len(self.histories)}, epochs="
                f"{epochs}, best_epoch={self.best_epoch}, {self.monitor}="
                f"{best} ({self.mode}), learning_rate={self.learning_rate!r}"
                + (f", lr_find={self.lr_find!r}" if self.lr_find else "")
                + ")")


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
    default; cautious, it can sit well below the best rate of a short
    run: compare it with the printed `"minimum"` suggestion, a tenth of
    the rate at the lowest loss); the model is restored exactly before
    phase 2 starts. A `kft.runs.RunBackup` among the callbacks records
    that rate, so that a run resumed after a restart trains on at it
    instead of testing again.

    The defaults (3 head epochs at 1e-3, then 10 at 1e-4) are the
    reference material's rates for an ImageNet backbone; a small or weakly
    pretrained backbone, or few steps per epoch, needs more epochs or
    higher rates (the kept epoch's message says when the last epoch was
    still the best).

    After both phases the model holds the weights of the best epoch by
    `monitor` (printed at the end when `verbose`); with
    `early_stopping_patience`, each phase stops after that many epochs
    without improvement. Each phase compiles the model anew (a compile of
    the user's is replaced, its `run_eagerly`, `jit_compile` and
    `steps_per_execution` too: Keras' defaults; `loss` and `metrics` say
    what to compile with), and the model is left compiled as its last
    phase was: a `model.fit` after it continues that optimizer where its
    schedule ended (0 after `"cosine"`, so nothing trains): compile it
    again to train on.

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
        bn: BatchNorm policy, `"frozen"` or `"train"`. With `"train"`,
            phase 2 sets the statistics of the BatchNorm layers that
            train to those of the training images before each validation
            while their moving averages are young (since the phase or the
            gradual stage began)
            (`kft.callbacks.PreciseBatchNorm`; not for a one-shot iterator
            or a `DomainAdaptationModel`). Defaults to `"frozen"`.
        loss: Defaults to categorical cross-entropy on logits (on
            probabilities for a model that ends in a softmax): sparse for
            integer labels, on one-hot rows for one-hot labels or a
            `kft.BatchAugmentModel`.
        metrics: Keras metrics (names, objects or functions), or one
            name. Defaults to `("accuracy",)`.
        monitor: Logged quantity that picks the best epoch: `"loss"` or a
            metric's name (as Keras logs it: `"acc"` for `"acc"`), with
            `"val_"` for `val_data`'s. Checked before training. Defaults to
            `"val_loss"` with `val_data`, else `"loss"`.
        mode: `"min"`, `"max"` or `"auto"`: losses are minimised and a
            Keras metric follows the direction it declares; `"auto"` raises
            for a quantity without one. Defaults to `"auto"`.
        early_stopping_patience: Defaults to `None` (no early stopping).
            The schedule is laid out over all `epochs` all the same.
        batch_size: Used when `train_data` are arrays. Defaults to `32`.
        callbacks: Extra callbacks for both phases (each phase is a `fit`
            call: Keras' `CSVLogger` rewrites its file at each, so it
            keeps phase 2; the histories returned hold both). Not a
            `BackupAndRestore`, which resumes one `fit`
            (`kft.runs.RunBackup` resumes a `fine_tune` call), nor a
            `kft.callbacks.GradualUnfreezing` (the strategy sets what
            trains; for another unfreezing schedule, call `model.fit`
            with one). A `ModelCheckpoint` would save the head model in a
            phase on cached features: `cache_features="auto"` does not
            cache with one, `True` refuses it. A callback that sets
            `model.stop_training` (Keras' `EarlyStopping`, a time budget)
            ends the phase it runs in; phase 2 still runs. Defaults to
            `None`.
        cache_features: Phase 1 trains only the head, so kft can compute the
            frozen backbone's features once and train the head on them
            (`kft.cache_features`, `kft.fit_head`): `"auto"` does so for
            arrays and `kft.data` datasets without augmentation or
            balanced sampling when the model allows it
            (`kft.feature_cache.can_cache_features`), `True` insists (and
            raises if it cannot), `False` never does. The head then trains
            on batches of a `kft.data` dataset's batch size, shuffled (when
            the dataset shuffles) in an order fixed by its seed and the
            epoch, so a run resumed inside phase 1 reads the orders the
            uninterrupted one read (Keras draws it from NumPy's global
            generator, seeded for the epoch: `fine_tune` calls in parallel
            threads of one process seed it over one another, so run them
            in processes to repeat their orders). Features are computed in
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
            unbound again, so that a corrected call can bind it. The
            training loss includes it, `val_loss` does not: monitor
            `"val_loss"` or a metric (a warning says so for `"loss"`).
            Defaults to `None`.
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
            schedule, a `BackupAndRestore` or `GradualUnfreezing` among
            them, a `ModelCheckpoint`
            with `cache_features=True` (refused before phase 1 trains),
            NaN or infinite pixels in arrays, labels outside the model's
            classes (arrays and
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
    learning_rate, head_learning_rate, weight_decay = map(
        _python_rate, (learning_rate, head_learning_rate, weight_decay))
    cache_features = plain_scalar(cache_features)
    # Every argument, checked before anything trains.
    phases, counts, plan, layer_decay = _prepare(**locals())
    with _bound(model, regularizer):
        histories, found, learning_rate = run_phases(
            phases, strategy, counts, plan, learning_rate, head_learning_rate,
            weight_decay, layer_decay, bn, cache_features)
    keep = phases.keep
    return FineTuneResult(histories=histories, best_epoch=keep.best_epoch,
                          best_value=keep.best, monitor=keep.monitor,
                          mode=keep.mode,
                          learning_rate=None if learning_rate == "find"
                          else learning_rate, lr_find=found)


def _python_rate(value):
    """A rate as the Python float Keras' optimizers take (they refused an
    int or an np.float32 one, after phase 1 had trained); other values (a
    schedule, "find", a bad value the checks name) as they are."""
    if isinstance(value, numbers.Real) and not isinstance(value, (
            bool, np.bool_)):
        return float(value)  # NaN and inf too: the checks name them
    return value


def _prepare(model, train_data, val_data, *, strategy, n_blocks, head_epochs,
             epochs, head_learning_rate, learning_rate, schedule, warmup,
             weight_decay, layer_decay, unfreeze_every, bn, loss, metrics,
             monitor, mode, early_stopping_patience, batch_size, callbacks,
             cache_features, class_weight, regularizer, verbose):
    """`fine_tune`'s checks: `(phases, counts, plan, layer_decay)`."""
    verbose = check_verbose(verbose)
    counts, layer_decay = check_arguments(
        strategy, mode, cache_features, bn,
        {"head_epochs": (head_epochs, 1), "epochs": (epochs, 0),
         "unfreeze_every": (unfreeze_every, 1), "n_blocks": (n_blocks, 1),
         "batch_size": (batch_size, 1),
         "early_stopping_patience": (early_stopping_patience, 0)},
        {"head_learning_rate": head_learning_rate,
         "weight_decay": weight_decay},
        layer_decay)
    check_phase2_arguments(strategy, {
        "epochs": epochs, "learning_rate": learning_rate,
        "schedule": schedule, "warmup": warmup, "layer_decay": layer_decay,
        "n_blocks": n_blocks, "unfreeze_every": unfreeze_every},
        _PHASE2_DEFAULTS)
    train_data = as_pair(train_data, "train_data", need_labels=True)
    val_data = as_pair(val_data, "val_data", need_labels=True)
    if len(model.outputs) != 1:  # Keras' compile failed on the metrics
        fail_argument("model", "a classifier with one output (its class "
                      "scores)", f"a model with {len(model.outputs)} "
                      "outputs", TypeError)
    check_placement(model)
    num_classes = model.outputs[0].shape[-1]
    check_data_labels(train_data, num_classes, "train_data", model=model)
    check_data_labels(val_data, num_classes, "val_data", model=model)
    if not isinstance(model, BatchAugmentModel):
        # It turns integer labels into one-hot rows itself.
        check_label_forms(train_data, val_data)
    check_model(model, strategy, counts["n_blocks"], learning_rate,
                 counts["epochs"])
    check_extras(callbacks, regularizer, cache_features)
    warn_if_augmentation_unapplied(model, train_data)
    # Under data parallel, before anything trains; a kft model's `fit`
    # reads a kft dataset whole (`ImageDataset.for_fit`).
    check_data_batches(train_data.for_fit() if isinstance(
        train_data, ImageDataset) and isinstance(model, Classifier)
        else train_data, counts["batch_size"], name="train_data")
    check_data_batches(val_data, counts["batch_size"], name="val_data")
    class_weight = resolve_class_weight(class_weight, train_data, num_classes)
    monitor = ("val_loss" if val_data is not None else "loss") if (
        monitor is None) else check_monitor(monitor)
    metrics = check_metrics(model, loss, metrics, monitor,
                            val_data is not None, mode)
    warn_if_penalty_monitored(model, regularizer, monitor, strategy,
                              counts["epochs"])
    phases = Phases(
        model, train_data, val_data,
        loss=loss or _default_loss(model, train_data), metrics=metrics,
        monitor=monitor,
        mode=mode, patience=counts.get("early_stopping_patience"),
        batch_size=counts["batch_size"], callbacks=callbacks,
        verbose=verbose, class_weight=class_weight)
    plan = {"schedule": schedule, "steps_per_epoch": steps_per_epoch(phases),
            "weight_decay": weight_decay, "layer_decay": layer_decay}
    phase2 = 0 if strategy == "feature_extraction" else counts["epochs"]
    plan["warmup"] = check_schedule(
        schedule, learning_rate, warmup, plan["steps_per_epoch"], phase2)
    check_rate_setters(callbacks, phase2 and (schedule != "constant"
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


# Read once: the module's `fine_tune` may be wrapped later (tests do).
_SIGNATURE = inspect.signature(fine_tune)
_PHASE2_DEFAULTS = {name: _SIGNATURE.parameters[name].default
                    for name in PHASE2_ARGUMENTS}
