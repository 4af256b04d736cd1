"""`fine_tune`'s argument checks, run before anything trains, and the
names and choices they check against."""

import warnings
from collections.abc import Mapping
from collections.abc import Sequence

import keras

from kft import _compat
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.models.blocks import get_blocks, head_and_body
from kft.training.freezing import BN_POLICIES
from kft.training.monitor import MODES

RECIPES = ("feature_extraction", "partial", "gradual", "full")
# Arguments only phase 2 reads, and the strategies that read each: given
# to another strategy they would be dropped, so `fine_tune` refuses them.
PHASE2_ARGUMENTS = {
    "epochs": RECIPES[1:], "learning_rate": RECIPES[1:],
    "schedule": RECIPES[1:], "warmup": RECIPES[1:],
    "layer_decay": RECIPES[1:], "n_blocks": ("partial",),
    "unfreeze_every": ("gradual",)}
SCHEDULES = ("cosine", "one_cycle", "constant")


def check_arguments(strategy, mode, cache_mode, bn, counts, rates,
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
    # Only early stopping's patience may be None (no early stopping).
    counts = {name: check_int(name, value, min_value=minimum)
              for name, (value, minimum) in counts.items()
              if value is not None or name != "early_stopping_patience"}
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


def check_phase2_arguments(strategy, given, defaults):
    """Refuses a phase 2 argument other than its default (`defaults`:
    name -> `fine_tune`'s default) for a strategy that does not read it:
    dropping it would ignore the request."""
    for name, value in given.items():
        default = defaults[name]
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


def check_model(model, strategy, n_blocks, learning_rate, epochs):
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


# Fewest steps of `kft.OneCycle`'s default cycle: its rise (pct_start=0.3
# of the steps) must last more than one step.
ONE_CYCLE_MIN_STEPS = 4


def savers(callbacks):
    """Names of the `ModelCheckpoint`s among `callbacks`."""
    return [type(c).__name__ for c in callbacks or ()
            if isinstance(c, keras.callbacks.ModelCheckpoint)]


def check_extras(callbacks, regularizer, cache_features=False):
    """Checks the forms of `callbacks` and `regularizer`, and refuses a
    `ModelCheckpoint` with `cache_features=True`: phase 1's `fit` is then
    the head model's, so the checkpoint would hold the head alone (features
    in, class scores out), not the classifier (`"auto"` does not cache
    with one)."""
    if callbacks is not None and (
            isinstance(callbacks, keras.callbacks.Callback)
            or not isinstance(callbacks, Sequence)):
        fail_argument("callbacks", "a list of Keras callbacks (or None)",
                      callbacks, TypeError)
    from kft.distributed.backup import BackupAndRestore

    # Each resumes one `fit`; fine_tune runs several (the head, then deeper
    # blocks): restarted, phase 1 restored phase 2's checkpoint into the
    # head and phase 2 trained again from its start, without a word.
    resumers = [type(c).__name__ for c in callbacks or () if isinstance(
        c, (keras.callbacks.BackupAndRestore, BackupAndRestore))]
    if resumers:
        fail_argument(
            "callbacks", "callbacks without a BackupAndRestore (it resumes "
            "one fit; fine_tune runs one per phase): for a run that "
            "resumes after a crash, pass kft.runs.RunBackup(directory, "
            "model) among the callbacks, or use kft train ... --resume",
            resumers)
    from kft.training.unfreezing import GradualUnfreezing

    # Phase 2 sets its own trainable blocks (and, for "gradual", runs its
    # own unfreezer): a second one overrode `n_blocks` or unfroze blocks
    # beside it while the history logged the recipe's stages.
    unfreezers = [type(c).__name__ for c in callbacks or ()
                  if isinstance(c, GradualUnfreezing)]
    if unfreezers:
        fail_argument(
            "callbacks", "callbacks without a GradualUnfreezing (fine_tune "
            "sets what trains itself: strategy='gradual' unfreezes one "
            "block every `unfreeze_every` epochs); for a milestone or "
            "plateau schedule, compile the model and pass the callback to "
            "model.fit", unfreezers)
    if cache_features is True and savers(callbacks):
        fail_argument(
            "callbacks", "callbacks that do not save the model while phase 1 "
            "trains the head on cached features (a ModelCheckpoint there "
            "would save the head model alone, not the classifier); "
            "fine_tune keeps the best epoch's weights in the model, so save "
            "it afterwards with model.save(...), or pass "
            "cache_features='auto' or False", savers(callbacks))
    if regularizer is not None:
        from kft.regularizers import Penalty

        if not isinstance(regularizer, Penalty):
            fail_argument("regularizer", "kft.L2SP(...), kft.EWC(...), "
                          "kft.LwF(...) or None", regularizer, TypeError)


# Logged by kft's callbacks in both phases, before the one keeping the
# best epoch runs (gradual unfreezing's stage is logged in phase 2 only).
_CALLBACK_LOGS = ("learning_rate",)


def _metric_name_and_direction(metric):
    """The name `compile` logs `metric` under and the direction its Keras
    metric declares (`"up"`, `"down"` or `None`)."""
    if isinstance(metric, str):
        if metric.lower() in ("accuracy", "acc"):
            return metric, "up"  # Keras picks the accuracy for the labels
        try:
            found = keras.metrics.get(metric)
        except ValueError:
            fail_argument("metrics", "Keras metric names or objects, "
                          "e.g. ['accuracy']", metric)
        # Keras logs a string metric under the string.
        return metric, _direction(found)
    if isinstance(metric, keras.metrics.Metric):
        return metric.name, _compat.metric_direction(metric)
    if not callable(metric):
        fail_argument("metrics", "Keras metric names, objects or functions",
                      metric, TypeError)
    # Keras wraps a function in a `MeanMetricWrapper` named after it.
    return _compat.metric_name(metric), _direction(metric)


def _direction(found):
    if isinstance(found, type):
        try:
            found = found()
        except TypeError:  # needs arguments (Keras' compile fails too)
            return None
    if not isinstance(found, keras.metrics.Metric):
        found = keras.metrics.MeanMetricWrapper(found)
    return _compat.metric_direction(found)


def check_metrics(model, loss, metrics, monitor, has_val, mode="auto"):
    """`metrics` as a list, the loss and the monitor checked against what
    the epochs will log (Keras found a bad one at compile, after the
    head was frozen; an unlogged monitor, or one without a direction
    under `mode="auto"`, at the first epoch's end): the loss, the
    metrics, and what the model tracks itself (a
    `DomainAdaptationModel`'s `domain_loss`)."""
    if isinstance(metrics, (str, keras.metrics.Metric)):
        metrics = [metrics]  # Keras' `compile` wants a list
    if isinstance(metrics, Mapping) or not isinstance(metrics, Sequence):
        fail_argument("metrics", "a list of Keras metrics, e.g. "
                      "['accuracy']", metrics, TypeError)
    metrics = list(metrics)
    if isinstance(loss, str) and loss.lower() not in ("crossentropy", "ce"):
        try:
            keras.losses.get(loss)
        except ValueError:
            fail_argument("loss", "a Keras loss name, object or function "
                          "(or None for kft's cross-entropy)", loss)
    directions = {"loss": "down"}
    for metric in metrics:
        name, direction = _metric_name_and_direction(metric)
        directions.setdefault(name, direction)
    compiled = list(directions)  # in the training and validation logs
    # The model's own metrics (a DomainAdaptationModel's domain_loss),
    # which it may log in training only, or only some of.
    tracked = {m.name: _compat.metric_direction(m)
               for m in getattr(model, "metrics", [])}
    own = getattr(model, "logged_metrics", None)
    own_train, own_val = own() if callable(own) else (tracked, tracked)
    for name in own_train:
        directions.setdefault(name, tracked.get(name))
    logged = [*compiled, *(n for n in own_train if n not in compiled)]
    if has_val:
        logged += [f"val_{name}" for name in (
            *compiled, *(n for n in own_val if n not in compiled))]
    if monitor not in (*logged, *_CALLBACK_LOGS):
        fail_argument("monitor", f"a quantity each epoch logs, one of "
                      f"{logged}", monitor)
    name = monitor.removeprefix("val_") if has_val else monitor
    is_loss = name == "loss" or name.endswith("_loss")
    if mode == "auto" and not is_loss and directions.get(name) is None:
        fail_argument(
            "mode", f"'max' or 'min' for monitor={monitor!r}: it declares "
            "no direction (a metric function, a Keras metric without one, "
            "or the logged learning rate), so 'auto' cannot tell whether "
            "it is maximised or minimised", mode)
    return metrics


def check_rate_setters(callbacks, scheduled):
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


def check_schedule(schedule, learning_rate, warmup, steps_per_epoch,
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


def warn_if_penalty_monitored(model, regularizer, monitor, strategy,
                              epochs):
    """Warns where the kept epoch would be picked on the training loss
    while a forgetting penalty is bound (`regularizer`, or one bound
    before with `kft.regularize`): the training loss holds it, and its
    backbone part is 0 while the backbone is frozen (the head phase),
    then grows as the backbone moves."""
    from kft.regularizers.attach import PENALTY_ATTRIBUTE

    penalty = regularizer or getattr(model, PENALTY_ATTRIBUTE, None)
    if (penalty is None or monitor != "loss"
            or strategy == "feature_extraction" or not epochs):
        return
    warnings.warn(
        "monitor='loss' is the training loss, which includes the "
        f"{type(penalty).__name__} penalty: its backbone part is 0 in the "
        "head phase (the backbone is frozen) and grows as the backbone "
        "moves, so the kept epoch leans to the head phase. Monitor "
        "'val_loss' (with val_data; it leaves the penalty out) or a metric "
        "such as 'accuracy'.", UserWarning, stacklevel=user_stacklevel())
