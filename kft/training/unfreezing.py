"""Gradual unfreezing inside `model.fit`, correct on the JAX backend."""

import os
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np

from kft import _compat
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft._writing import output_path
from kft.models.blocks import get_blocks, head_and_body
from kft.training import unfreeze_backup
from kft.training.freezing import BN_POLICIES
from kft.training.freezing import set_trainable_blocks
from kft.training.unfreeze_schedules import Plateau
from kft.training.unfreeze_schedules import UnfreezeSchedule
from kft.training.unfreeze_schedules import schedule_from_arguments


def _check_unused_plateau_options(built, given, patience, min_delta, mode):
    """Plateau options next to `every` or `milestones` would be ignored
    (`schedule_from_arguments` checks them next to `schedule=`)."""
    if given is not None or isinstance(built, Plateau):
        return
    changed = {name: value for name, value, default in (
        ("patience", patience, 2), ("min_delta", min_delta, 0.0),
        ("mode", mode, "auto")) if value != default}
    if changed:
        shown = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        raise ValueError(
            "Arguments `patience`, `min_delta` and `mode` belong to the "
            "plateau schedule (`monitor=`); `every` and `milestones` do not "
            f"use them. Received: {shown}")


@keras.saving.register_keras_serializable(package="kft")
class GradualUnfreezing(keras.callbacks.Callback):
    """Starts with the head trainable and unfreezes blocks top-down.

    The head is `kft.get_blocks`' block named `"head"`; in a model without
    one, the last block plays the head (stage k trains the top k + 1
    blocks).

    A new block is unfrozen at the start of an epoch, when the schedule
    says so: every `n` epochs (`Every(n)`, or `every=n`), at listed epochs
    (`Milestones([...])`, or `milestones=`), or once a metric has not
    improved by `min_delta` for `patience` epochs (`Plateau(monitor, ...)`,
    or `monitor=` with `patience`, `min_delta`, `mode`). The schedule
    classes are in `kft.training.unfreeze_schedules`; give exactly one of
    `every`, `milestones`, `monitor` and `schedule`. The callback keeps its
    schedule object (`self.schedule`), whose state a `Plateau` updates.

    Each switch goes through `kft.changing_trainable`: the running step's
    state is written back, the optimizer keeps the slots of variables that
    stay trainable and makes fresh ones for the new block, and the train
    step is re-traced once for the stage (one compile per stage, none per
    epoch; with validation data Keras' evaluation step compiles once per
    stage too).

    Each stage is printed (epoch, block, trainable parameters) and every
    epoch's logs, hence the `History`, carry `unfrozen_blocks` and
    `trainable_params`.

    Compile with a `kft.BlockwiseOptimizer` (as in the example): each
    variable then counts its own Adam steps from the stage it is unfrozen
    in. A plain Keras Adam shares one step counter, so a block unfrozen
    after many steps starts with a bias correction meant for late training
    and a first update several times its learning rate. For per-block
    learning rates give it `kft.layerwise_lr(model, rate, decay)`: each
    block then trains at its own rate from the stage it is unfrozen in.

    Resuming: pass `backup_dir` (the directory of your
    `kft.callbacks.BackupAndRestore`; Keras' own works too, but a kill
    between its weights and metadata writes goes unnoticed there and the
    epoch trains again from its end). In a restarted process the callback
    reads which epoch `BackupAndRestore`'s checkpoint was saved in and
    re-applies that epoch's stage before the optimizer state is loaded (in
    `set_model`, which `fit` calls before `on_train_begin` of any callback),
    so the trainable set, the optimizer slots and the epoch line up in
    either callback order, also after a kill between the two callbacks'
    writes. Checkpoints within an epoch (an integer `save_freq`) resume
    with that epoch's stage; give `kft.callbacks.BackupAndRestore` then,
    since Keras' callback records epoch 0 for such saves in the first
    epoch of a resumed run (the next resume raises on that). Plateau state
    (stage starts, patience count, best value) is kept in the same
    directory. If the optimizer state was nevertheless not restored (a
    different schedule or directory), the first resumed epoch raises
    instead of training on with fresh slots.

    Args:
        every: Unfreeze one more block every `every` epochs. Defaults to
            `None`.
        milestones: Epochs (0-based, increasing, from 1) at which one more
            block unfreezes. Defaults to `None`.
        monitor: Metric of a plateau schedule, e.g. `"val_loss"`. Defaults
            to `None`.
        patience: Epochs without improvement before unfreezing (with
            `monitor`; an epoch without a monitored `val_` value, under
            `validation_freq` > 1, does not count, with a warning).
            Defaults to `2`.
        min_delta: Smallest change counted as an improvement (with
            `monitor`). Defaults to `0.0`.
        mode: `"min"`, `"max"` or `"auto"` (with `monitor`): losses are
            minimised and a compiled Keras metric follows the direction it
            declares (e.g. accuracy, top-k accuracy and F1 are maximised);
            `"auto"` raises for a quantity without one. Defaults to
            `"auto"`.
        max_blocks: Stop after this many blocks below the head. Defaults to
            all of them.
        bn: BatchNorm policy of unfrozen blocks, `"frozen"` or `"train"`.
            Defaults to `"frozen"`.
        patterns: Block patterns for `kft.get_blocks`. Defaults to `None`.
        backup_dir: Where the stage record is kept for resuming: the
            `backup_dir` of the `BackupAndRestore`. Defaults to `None`.
        verbose: Print each stage (`0`/`False`: no). Defaults to `1`.
        schedule: An `Every`, `Milestones` or `Plateau` object, instead of
            `every`, `milestones` or `monitor`. Defaults to `None`.

    Raises:
        ValueError: not exactly one way of giving the schedule, plateau
            options (`patience`, `min_delta`, `mode`) without `monitor`, or
            a bad argument.
        RuntimeError: when resuming, a checkpoint whose optimizer state or
            epoch does not fit this callback's schedule and records.

    Example:
    >>> import keras, kft
    >>> from kft.training.unfreeze_schedules import Milestones
    >>> data = kft.datasets.digits(image_size=16, target_per_class=4)
    >>> model = kft.build_classifier("simple_cnn", num_classes=5,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> model.compile(
    ...     kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3), model=model),
    ...     keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> history = model.fit(*data.target_train, epochs=3, verbose=0,
    ...     callbacks=[kft.callbacks.GradualUnfreezing(every=1, verbose=0)])
    >>> history.history["unfrozen_blocks"]
    [0, 1, 2]
    >>> callback = kft.callbacks.GradualUnfreezing(
    ...     schedule=Milestones([2]), verbose=0)
    >>> [callback.schedule.stage_at(epoch) for epoch in range(3)]
    [0, 0, 1]
    """

    def __init__(self, every: int | None = None,
                 milestones: Sequence[int] | None = None,
                 monitor: str | None = None, patience: int = 2,
                 min_delta: float = 0.0,
                 mode: Literal["auto", "min", "max"] = "auto",
                 max_blocks: int | None = None,
                 bn: Literal["frozen", "train"] = "frozen",
                 patterns=None, backup_dir: str | None = None,
                 verbose: int = 1, *,
                 schedule: UnfreezeSchedule | None = None):
        super().__init__()
        if isinstance(milestones, np.ndarray):
            milestones = milestones.tolist()  # as `Milestones` takes one
        if milestones is not None and (
                isinstance(milestones, (str, bytes))
                or not isinstance(milestones, Sequence)):
            fail_argument("milestones", "a list of increasing epochs >= 1",
                          milestones)
        self.schedule = schedule_from_arguments(
            every, milestones, monitor, patience, min_delta, mode, schedule)
        _check_unused_plateau_options(self.schedule, schedule, patience,
                                      min_delta, mode)
        if max_blocks is not None:
            max_blocks = check_int("max_blocks", max_blocks, min_value=0)
        self.max_blocks = max_blocks
        self.bn = check_choice("bn", bn, BN_POLICIES)
        self.patterns = patterns
        if backup_dir is not None:
            if not isinstance(backup_dir, (str, os.PathLike)):
                fail_argument("backup_dir", "a directory path or `None`",
                              backup_dir, TypeError)
            backup_dir = output_path(backup_dir, "backup_dir")
        self.backup_dir = backup_dir
        self.verbose = check_verbose(verbose)
        self._stage = None
        self._params = None
        self._restored = False
        self._restored_for_fit = False  # the stage `set_model` restored
        self._resumed_from = None
        self._checked_resume = False
        self._records = {}

    # -- stages -------------------------------------------------------------

    def _body(self):
        head, body = head_and_body(get_blocks(self.model, self.patterns))
        if head is None:
            # Without a "head" block, the last block plays the head.
            head, body = body[-1], body[:-1]
        limit = len(body) if self.max_blocks is None else self.max_blocks
        return head, body, min(limit, len(body))

    def _apply_stage(self, stage, epoch, resumed=None):
        """Sets `stage`'s trainable set and prints it; `resumed` is
        `"after"` or `"within"` when `epoch` is a checkpoint's."""
        params = self._set_stage(stage)
        if self.verbose:
            head, body, _ = self._body()
            newest = body[len(body) - stage] if stage else head
            where = {
                None: f"epoch {epoch + 1}",
                "after": f"resumed after epoch {epoch + 1} (training "
                         f"continues at epoch {epoch + 2})",
                "within": f"resumed within epoch {epoch + 1} (training "
                          "reruns it from its first batch)"}[resumed]
            _compat.print_msg(
                f"GradualUnfreezing: {where}: stage {stage}, unfroze "
                f"{newest!r}, trainable params {params:,}")
        return params

    def _set_stage(self, stage):
        head, body, _ = self._body()
        unfrozen = body[len(body) - stage:] if stage else []
        set_trainable_blocks(self.model, unfrozen + [head], bn=self.bn,
                             patterns=self.patterns)
        return sum(int(np.prod(v.shape))
                   for v in self.model.trainable_variables)

    def stage_at(self, epoch: int) -> int:
        """Number of blocks below the head unfrozen during `epoch` (the
        callback needs its model: after `fit` starts, or `set_model`)."""
        if self.model is None:
            raise ValueError(
                "GradualUnfreezing.stage_at needs the model, whose blocks "
                "cap the stages: call it once fit has started, or after "
                "callback.set_model(model).")
        return min(self.schedule.stage_at(epoch), self._body()[2])

    # -- resuming -----------------------------------------------------------

    def set_model(self, model):
        super().set_model(model)
        if self._restored or self.backup_dir is None:
            return
        self._restored = True
        # A checkpoint cut short by a kill is replaced by the previous one
        # first, as BackupAndRestore would restore it: the stage must be
        # the one of the checkpoint that loads.
        unfreeze_backup.recover_checkpoint(self.backup_dir)
        position = unfreeze_backup.checkpoint_position(self.backup_dir)
        if position is None:
            return
        epoch, batch = position
        self._records = unfreeze_backup.load_records(self.backup_dir)
        unfreeze_backup.check_records_fit(self.backup_dir, self._records,
                                          epoch)
        if epoch > 0:
            # A checkpoint after epoch `epoch - 1` or within `epoch` both
            # follow the schedule's state at the end of `epoch - 1`.
            self.schedule.restore(self._records, epoch - 1)
        # The checkpoint's optimizer slots follow this trainable set, so it
        # must be in place before BackupAndRestore loads them (`fit` calls
        # `set_model` before any callback's `on_train_begin`).
        self._stage, within = self._checkpoint_stage(epoch, batch)
        self._restored_for_fit = True
        self._resumed_from = epoch if within else epoch - 1
        self._params = self._apply_stage(
            self._stage, self._resumed_from,
            resumed="within" if within else "after")

    def _checkpoint_stage(self, epoch, batch):
        """(stage, saved within `epoch`?) of the checkpoint at `(epoch,
        batch)`: batch 0 is an end-of-epoch save or one after the first
        batch of `epoch` (an integer `save_freq`); where their stages
        differ, the optimizer state that loads tells which."""
        within = self.stage_at(epoch)
        if batch > 0 or epoch == 0:
            return within, True
        after = self.stage_at(epoch - 1)
        if after != within:
            for stage, is_within in ((after, False), (within, True)):
                self._set_stage(stage)
                if unfreeze_backup.optimizer_state_loads(self.model,
                                                         self.backup_dir):
                    return stage, is_within
        # Neither loads: the first epoch's check raises.
        return after, False

    def _check_optimizer_restored(self, epoch):
        # Keras only warns when a checkpoint's optimizer does not fit the
        # optimizer it loads into, and trains on with fresh slots.
        optimizer = self.model.optimizer
        # A BackupAndRestore resumed the run (it sets the epoch `fit`
        # starts at) without this callback's checkpoint: `backup_dir`
        # missing or another directory. The stage was not restored first,
        # so the checkpoint's optimizer slots did not load either.
        keras_resumed = (epoch > 0 and self._resumed_from is None
                         and _compat.restored_initial_epoch(self.model))
        if ((self._resumed_from is None and not keras_resumed)
                or optimizer is None or int(optimizer.iterations) > 0):
            return
        where = ("the checkpoint in " + repr(self.backup_dir)
                 if self._resumed_from is not None else
                 "the BackupAndRestore checkpoint: this GradualUnfreezing "
                 "has " + ("no `backup_dir`" if self.backup_dir is None
                           else f"`backup_dir` {self.backup_dir!r}, which "
                           "holds no checkpoint"))
        raise RuntimeError(
            "GradualUnfreezing: resuming at epoch "
            f"{epoch + 1} but the optimizer state was not restored from "
            f"{where} (its step count is 0). "
            "Pass the same `backup_dir` as `keras.callbacks.BackupAndRestore`"
            " and the same schedule as the interrupted run, or delete the "
            "backup directory to start over.")

    # -- callback hooks -----------------------------------------------------

    def on_train_begin(self, logs=None):
        self._checked_resume = False

    def on_train_end(self, logs=None):
        # A restoring fit that ran no epoch (its checkpoint after the
        # last): the next fit from epoch 0 is a new run all the same.
        self._restored_for_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._checked_resume:
            self._checked_resume = True
            if (epoch == 0 and self._stage is not None
                    and not self._restored_for_fit):
                # Another `fit` from epoch 0 with this callback: a new run
                # (a plateau of the last one unfroze blocks in this one,
                # and its best value was compared with this run's), maybe
                # of another model or of one unfrozen since: its stage 0 is
                # set again (the last run's was kept, the whole model
                # trained). A fit from a later epoch (`initial_epoch`, a
                # resume) goes on.
                self.schedule.reset()
                self._stage = None
                self._resumed_from = None  # not a resume: nothing restored
            self._restored_for_fit = False
            self._check_optimizer_restored(epoch)
        stage = self.stage_at(epoch)
        if stage != self._stage:
            self._stage = stage
            self._params = self._apply_stage(stage, epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["unfrozen_blocks"] = self._stage
        logs["trainable_params"] = self._params
        self.schedule.on_epoch_end(epoch, logs, self.model, self._body()[2])
        if self.backup_dir is not None:
            unfreeze_backup.save_record(self.backup_dir, self._records, epoch,
                                        self.schedule.state())

    # -- serialization ------------------------------------------------------

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "max_blocks": self.max_blocks, "bn": self.bn,
            "patterns": self.patterns, "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        schedule = config.pop("schedule", None)
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        return cls(schedule=schedule, **config)
