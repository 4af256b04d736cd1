"""The two phases of `fine_tune`: the head alone (on cached features
where it can), then deeper blocks at a lower, scheduled rate (found by
`lr_find` for `learning_rate="find"`)."""

import math
import warnings
from collections.abc import Iterator

import keras
import numpy as np

from kft._compat import print_msg
from kft._validation import user_stacklevel
from kft.data import ImageDataset
from kft.models.blocks import get_blocks, head_and_body
from kft.optimizers import BlockwiseOptimizer
from kft.optimizers import layerwise_lr
from kft.optimizers.schedules import OneCycle
from kft.optimizers.schedules import Warmup
from kft.training.feature_cache import cache_features
from kft.training.feature_cache import can_cache_features
from kft.training.feature_cache import fit_head
from kft.training.fine_tune_checks import savers
from kft.training.fit_data import plain_data
from kft.training.freezing import freeze
from kft.training.lr_find import lr_find
from kft.training.phases import EpochRate
from kft.training.phases import load_best
from kft.training.phases import weights_finite
from kft.training.precise_bn import PreciseBatchNorm
from kft.training.unfreeze_schedules import Milestones
from kft.training.unfreezing import GradualUnfreezing

# The `lr_find` suggestion `fine_tune(learning_rate="find")` trains with.
FIND_SUGGESTION = "valley"


def _head_caches(phases, mode):
    """Feature caches of the train and validation data, or `None`."""
    if mode is False:
        return None
    if mode == "auto" and not (
            plain_data(phases.train_data) and plain_data(phases.val_data)
            and can_cache_features(phases.model)[0]
            and not savers(phases.extra)):
        # A ModelCheckpoint would save the head model (`True` refuses it).
        return None
    # `True` insists: `cache_features` raises if the model cannot be cached.
    kwargs = {"batch_size": phases.batch_size, "verbose": phases.verbose}
    caches = []
    for name, data in (("train_data", phases.train_data),
                       ("val_data", phases.val_data)):
        if data is None:
            caches.append(None)
            continue
        if phases.verbose:  # the bars alone did not say what they count
            print_msg(f"fine_tune: caching the frozen backbone's features "
                      f"of {name} (phase 1 trains the head on them)")
        caches.append(cache_features(phases.model, data, **kwargs))
    return tuple(caches)


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
    first = [EpochRate()]
    shuffle = EpochSeededShuffle(data.shuffle_seed) if (
        own and data.shuffle) else None
    if shuffle is not None:
        first.append(shuffle)
    try:
        fit_head(phases.model, caches[0], validation_data=caches[1],
                 batch_size=data.batch_size if own else phases.batch_size,
                 shuffle=data.shuffle if own else True, epochs=epochs,
                 verbose=phases.verbose, class_weight=phases.class_weight,
                 callbacks=phases.callbacks(first))
    finally:
        if shuffle is not None:
            # A fit stopped by an error calls no `on_train_end`: the
            # user's NumPy state was left seeded by (seed, epoch).
            shuffle.restore()
    return phases.logs.history


class EpochSeededShuffle(keras.callbacks.Callback):
    """Makes Keras' shuffled order of in-memory arrays a function of
    `(seed, epoch)`.

    Keras draws an epoch's order from NumPy's global generator when the
    epoch's first batch is read; seeded from the dataset's seed and the
    epoch for that draw (its state put back after the first batch), a fit
    resumed at epoch k reads the orders the uninterrupted fit read.
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = seed
        self._saved = None

    def on_epoch_begin(self, epoch, logs=None):
        self._saved = np.random.get_state()
        np.random.seed(np.random.SeedSequence(
            [self.seed, epoch]).generate_state(1)[0])

    def on_train_batch_end(self, batch, logs=None):
        self.restore()

    def on_train_end(self, logs=None):
        self.restore()

    def restore(self):
        """Puts NumPy's global state back, if it is still seeded."""
        if self._saved is not None:
            np.random.set_state(self._saved)
            self._saved = None


def steps_per_epoch(phases):
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


def find_rate(phases, strategy, n_blocks, weight_decay, layer_decay, bn):
    """Runs `lr_find` on phase 2's optimizer and first trainable set, then
    puts phase 1's set back; returns the finder's result."""
    phases.compile(_phase2_optimizer(phases.model, 1.0, weight_decay,
                                     layer_decay))
    _first_stage(phases, strategy, n_blocks, bn)
    result = lr_find(phases.model, phases.train_data,
                     batch_size=phases.batch_size,
                     class_weight=phases.class_weight,
                     verbose=phases.verbose)
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
    starts = first_epoch
    if strategy == "gradual":
        _, body = head_and_body(get_blocks(model))
        starts = [first_epoch + k * unfreeze_every for k in range(len(body))]
        first.insert(0, GradualUnfreezing(schedule=Milestones(starts), bn=bn,
                                          verbose=phases.verbose))
    else:
        _first_stage(phases, strategy, n_blocks, bn)
    if bn == "train" and _rereadable(phases):
        # Before keep-best and the user's savers: they keep the exact
        # statistics of a young run. Young again at each unfreezing.
        first.append(PreciseBatchNorm(phases.train_data, first_epoch=starts,
                                      batch_size=phases.batch_size))
    return phases.fit(epochs, first_epoch, first)


def _rereadable(phases):
    """Whether `PreciseBatchNorm` can measure phase 2's training images: not
    for a one-shot iterator, nor for a `DomainAdaptationModel` (its
    BatchNorm layers train on both domains' batches)."""
    from kft.adaptation.dann import DomainAdaptationModel

    return not isinstance(phases.train_data, Iterator) and not isinstance(
        phases.model, DomainAdaptationModel)


def _finite_or_warn(model):
    """Whether every weight of `model` is finite; warns that phase 2 is
    skipped where not (it could only train on from NaN weights)."""
    if weights_finite(model):
        return True
    warnings.warn(
        "fine_tune: phase 1 ended with weights that are NaN or infinite "
        "(it diverged; TerminateOnNaN, if given, stopped it there), so "
        "phase 2 is skipped; the best epoch with finite weights is kept. "
        "Lower the learning rates.", stacklevel=user_stacklevel())
    return False


def run_phases(phases, strategy, counts, plan, learning_rate,
                head_learning_rate, weight_decay, layer_decay, bn,
                cache_features):
    """Both phases and the best epoch's weights: `(histories, lr_find
    result or None, phase 2's rate)`."""
    histories = [_train_head(phases, counts["head_epochs"],
                             head_learning_rate, weight_decay, bn,
                             cache_features)]
    found = None
    if (strategy == "feature_extraction" or not counts["epochs"]
            or not _finite_or_warn(phases.model)):
        learning_rate = None  # no phase 2
    else:
        if learning_rate == "find":
            learning_rate = _recall(phases.extra, _FOUND_RATE_KEY)
            if learning_rate is None:
                found = find_rate(phases, strategy, counts["n_blocks"],
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
