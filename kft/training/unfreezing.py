"""Gradual unfreezing inside `model.fit`, correct on the JAX backend."""

import json
import os
import warnings

import keras
import numpy as np
from keras.src.utils import io_utils

from kft.training.monitor import MODES
from kft.training.monitor import improves
from kft.training.monitor import logged_value
from kft.training.monitor import monitor_mode
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft.models.blocks import get_blocks, head_and_body
from kft.training.freezing import set_trainable_blocks

_STATE_FILE = "gradual_unfreezing.json"
# Written by `keras.callbacks.BackupAndRestore` in its `backup_dir`.
_BACKUP_METADATA = "training_metadata.json"


@keras.saving.register_keras_serializable(package="kft")
class GradualUnfreezing(keras.callbacks.Callback):
    """Starts with the head trainable and unfreezes blocks top-down.

    A new block is unfrozen at the start of an epoch: every `every` epochs,
    at the epochs listed in `milestones`, or once `monitor` has not improved
    by `min_delta` for `patience` epochs. Each switch goes through
    `kft.changing_trainable`: the running step's state is written back, the
    optimizer keeps the slots of variables that stay trainable and makes
    fresh ones for the new block, and the train step is re-traced once for
    the stage (one compile per stage, none per epoch).

    Each stage is printed (epoch, block, trainable parameters) and every
    epoch's logs, hence the `History`, carry `unfrozen_blocks` and
    `trainable_params`.

    Compile with a `kft.BlockwiseOptimizer` (as in the example): each
    variable then counts its own Adam steps from the stage it is unfrozen
    in. A plain Keras Adam shares one step counter, so a block unfrozen
    after many steps starts with a bias correction meant for late training
    and a first update several times its learning rate.

    Per-block learning rates: compile with a `kft.BlockwiseOptimizer`, e.g.
    `kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
    kft.layerwise_lr(model, 1e-3, 0.5), model=model)`; each block then
    trains at its own rate from the stage it is unfrozen in (rates falling
    by the decay per depth below the head), with its own Adam step count.

    Resuming: pass `backup_dir` (the directory of your
    `keras.callbacks.BackupAndRestore`). In a restarted process the callback
    reads which epoch `BackupAndRestore`'s checkpoint was saved in and
    re-applies that epoch's stage before the optimizer state is loaded (in
    `set_model`, which `fit` calls before `on_train_begin` of any callback),
    so the trainable set, the optimizer slots and the epoch line up in
    either callback order, also after a kill between the two callbacks'
    writes. Plateau state (stage starts, patience count, best value) is kept
    in the same directory. If the optimizer state was nevertheless not
    restored (a different schedule or directory), the first resumed epoch
    raises instead of training on with fresh slots.

    Args:
        every: Unfreeze one more block every `every` epochs. Defaults to
            `None`.
        milestones: Epochs (0-based) at which one more block unfreezes.
            Defaults to `None`.
        monitor: Metric for plateau mode, e.g. `"val_loss"`. Defaults to
            `None`.
        patience: Epochs without improvement before unfreezing (plateau
            mode). Defaults to `2`.
        min_delta: Smallest change counted as an improvement. Defaults to
            `0.0`.
        mode: `"min"`, `"max"` or `"auto"`: losses are minimised and a
            compiled Keras metric follows the direction it declares (e.g.
            accuracy, top-k accuracy and F1 are maximised); `"auto"` raises
            for a quantity without a declared direction. Defaults to
            `"auto"`.
        max_blocks: Stop after this many blocks below the head. Defaults to
            all of them.
        bn: BatchNorm policy of unfrozen blocks, `"frozen"` or `"train"`.
            Defaults to `"frozen"`.
        patterns: Block patterns for `kft.get_blocks`. Defaults to `None`.
        backup_dir: Where the stage record is kept for resuming. Defaults to
            `None`.
        verbose: Print each stage. Defaults to `1`.

    Example:
    >>> import keras, kft
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
    """

    def __init__(self, every=None, milestones=None, monitor=None, patience=2,
                 min_delta=0.0, mode="auto", max_blocks=None, bn="frozen",
                 patterns=None, backup_dir=None, verbose=1):
        super().__init__()
        given = [every is not None, milestones is not None,
                 monitor is not None]
        if sum(given) != 1:
            raise ValueError(
                "Pass exactly one of `every`, `milestones` or `monitor`. "
                f"Received: every={every!r}, milestones={milestones!r}, "
                f"monitor={monitor!r}"
            )
        if every is not None:
            every = check_int("every", every, min_value=1)
        if milestones is not None:
            milestones = [check_int("milestones[i]", m) for m in milestones]
            if any(m < 1 for m in milestones) or milestones != sorted(
                set(milestones)
            ):
                raise ValueError(
                    "Argument `milestones` must be increasing epochs >= 1. "
                    f"Received: milestones={milestones!r}"
                )
        check_choice("mode", mode, MODES)
        patience = check_int("patience", patience, min_value=1)
        min_delta = check_number("min_delta", min_delta)
        if max_blocks is not None:
            max_blocks = check_int("max_blocks", max_blocks, min_value=0)
        self.every = every
        self.milestones = milestones
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.mode = mode
        self.max_blocks = max_blocks
        self.bn = bn
        self.patterns = patterns
        self.backup_dir = backup_dir
        self.verbose = verbose
        # Epochs at which stage 1, 2, ... began: the whole schedule state.
        self.stage_epochs = []
        self._wait = 0
        self._best = None
        self._direction = None
        self._stage = None
        self._restored = False
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

    def _apply_stage(self, stage, epoch, resumed=False):
        head, body, _ = self._body()
        unfrozen = body[len(body) - stage:] if stage else []
        set_trainable_blocks(self.model, unfrozen + [head], bn=self.bn,
                             patterns=self.patterns)
        params = sum(int(np.prod(v.shape))
                     for v in self.model.trainable_variables)
        if self.verbose:
            newest = unfrozen[0] if unfrozen else head
            where = (f"resumed after epoch {epoch + 1} (training continues "
                     f"at epoch {epoch + 2})" if resumed
                     else f"epoch {epoch + 1}")
            io_utils.print_msg(
                f"GradualUnfreezing: {where}: stage {stage}, unfroze "
                f"{newest!r}, trainable params {params:,}")
        return params

    def stage_at(self, epoch):
        """Number of blocks below the head unfrozen during `epoch`."""
        _, _, limit = self._body()
        if self.every is not None:
            stage = epoch // self.every
        elif self.milestones is not None:
            stage = sum(m <= epoch for m in self.milestones)
        else:
            stage = sum(e <= epoch for e in self.stage_epochs)
        return min(stage, limit)

    # -- persistence --------------------------------------------------------
    #
    # `BackupAndRestore` checkpoints the optimizer built for the trainable
    # set of the epoch it saved in, so the stage to re-apply is derived from
    # the epoch *its* metadata names, never from this callback's own file:
    # the two are written one after the other and a kill between them must
    # not pair a checkpoint with another stage's trainable set. The file here
    # only carries plateau state (stage starts, wait, best), kept for the
    # last two epochs so that it covers the checkpoint in either order.

    def _state_path(self):
        return os.path.join(self.backup_dir, _STATE_FILE)

    def _save_state(self, epoch):
        if self.backup_dir is None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        self._records[str(epoch)] = {
            "stage_epochs": list(self.stage_epochs),
            "wait": self._wait,
            "best": self._best,
        }
        for key in sorted(self._records, key=int)[:-2]:
            del self._records[key]
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"records": self._records}, f)
        os.replace(tmp, self._state_path())

    def _checkpoint_epoch(self):
        """The epoch during which `BackupAndRestore` last saved, or None."""
        path = os.path.join(self.backup_dir, _BACKUP_METADATA)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            meta = json.load(f)
        # An end-of-epoch save records the next epoch and batch 0; a save
        # within an epoch records that epoch and the batch it saved after.
        epoch = int(meta["epoch"])
        return epoch if int(meta.get("batch", 0)) > 0 else epoch - 1

    def set_model(self, model):
        super().set_model(model)
        if self._restored or self.backup_dir is None:
            return
        self._restored = True
        saved = self._checkpoint_epoch()
        if saved is None or saved < 0:
            return
        self._resumed_from = saved
        records = {}
        if os.path.exists(self._state_path()):
            with open(self._state_path()) as f:
                records = json.load(f).get("records", {})
        self._records = records
        record = records.get(str(saved))
        if record is None and self.monitor is not None:
            earlier = [int(k) for k in records if int(k) < saved]
            if earlier:
                record = records[str(max(earlier))]
            warnings.warn(
                "GradualUnfreezing: no plateau record for epoch "
                f"{saved + 1}, the epoch the checkpoint was saved in; the "
                "plateau count restarts from the epoch before it.",
                stacklevel=2)
        if record is not None:
            self.stage_epochs = [e for e in record["stage_epochs"]
                                 if e <= saved + 1]
            self._wait, self._best = record["wait"], record["best"]
        # The checkpoint's optimizer slots follow this trainable set, so it
        # must be in place before BackupAndRestore loads them (`fit` calls
        # `set_model` before any callback's `on_train_begin`).
        self._stage = self.stage_at(saved)
        self._params = self._apply_stage(self._stage, saved, resumed=True)

    def on_train_begin(self, logs=None):
        self._checked_resume = False

    # -- callback hooks -----------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        if not self._checked_resume:
            self._checked_resume = True
            self._check_optimizer_restored(epoch)
        stage = self.stage_at(epoch)
        if stage != self._stage:
            self._stage = stage
            self._params = self._apply_stage(stage, epoch)

    def _check_optimizer_restored(self, epoch):
        # Keras only warns when a checkpoint's optimizer does not fit the
        # optimizer it loads into, and trains on with fresh slots.
        optimizer = self.model.optimizer
        if (self._resumed_from is None or epoch == 0 or optimizer is None
                or int(optimizer.iterations) > 0):
            return
        raise RuntimeError(
            "GradualUnfreezing: resuming at epoch "
            f"{epoch + 1} but the optimizer state was not restored from "
            f"the checkpoint in {self.backup_dir!r} (its step count is 0). "
            "Pass the same `backup_dir` as `keras.callbacks.BackupAndRestore`"
            " and the same schedule as the interrupted run, or delete the "
            "backup directory to start over.")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["unfrozen_blocks"] = self._stage
        logs["trainable_params"] = self._params
        if self.monitor is not None and self._plateaued(logs):
            if self.stage_at(epoch + 1) < self._body()[2]:
                self.stage_epochs.append(epoch + 1)
        self._save_state(epoch)

    def _plateaued(self, logs):
        value = logged_value(logs, self.monitor, "GradualUnfreezing")
        if self._direction is None:
            self._direction = monitor_mode(self.model, self.monitor,
                                           self.mode)
        if improves(value, self._best, self._direction, self.min_delta):
            self._best, self._wait = value, 0
            return False
        self._wait += 1
        if self._wait < self.patience:
            return False
        # A new stage starts a new comparison.
        self._wait, self._best = 0, None
        return True

    def get_config(self):
        return {
            "every": self.every, "milestones": self.milestones,
            "monitor": self.monitor, "patience": self.patience,
            "min_delta": self.min_delta, "mode": self.mode,
            "max_blocks": self.max_blocks, "bn": self.bn,
            "patterns": self.patterns, "backup_dir": self.backup_dir,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
