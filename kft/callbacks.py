"""Gradual unfreezing inside `model.fit`, correct on the JAX backend."""

import json
import os

import keras
import numpy as np
from keras.src.utils import io_utils

from kft.blocks import get_blocks, head_and_body
from kft.freezing import set_trainable_blocks

_STATE_FILE = "gradual_unfreezing.json"


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

    Per-block learning rates: compile with a `kft.BlockwiseOptimizer`, e.g.
    `kft.BlockwiseOptimizer(keras.optimizers.Adam(1e-3),
    kft.layerwise_lr(model, 1e-3, 0.5), model=model)`; each block then
    trains at its own rate from the stage it is unfrozen in (rates falling
    by the decay per depth below the head), with its own Adam step count.

    Resuming: pass `backup_dir` (the directory of your
    `keras.callbacks.BackupAndRestore`). The callback stores the epochs at
    which stages began there and, in a restarted process, re-applies the
    stage of the resumed epoch before `BackupAndRestore` loads the optimizer
    state (in `set_model`, which `fit` calls before `on_train_begin` of any
    callback), so the trainable set, the optimizer slots and the epoch all
    line up.

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
        mode: `"min"`, `"max"` or `"auto"` (max for names containing "acc",
            else min). Defaults to `"auto"`.
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
    >>> model.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True))
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
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(
                f"Argument `every` must be an integer >= 1. Received: "
                f"every={every!r}"
            )
        if milestones is not None:
            milestones = [int(m) for m in milestones]
            if any(m < 1 for m in milestones) or milestones != sorted(
                set(milestones)
            ):
                raise ValueError(
                    "Argument `milestones` must be increasing epochs >= 1. "
                    f"Received: milestones={milestones!r}"
                )
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                "Argument `mode` must be one of 'auto', 'min', 'max'. "
                f"Received: mode={mode!r}"
            )
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
        self._stage = None
        self._restored = False

    # -- stages -------------------------------------------------------------

    def _body(self):
        head, body = head_and_body(get_blocks(self.model, self.patterns))
        if head is None:
            # Without a "head" block, the last block plays the head.
            head, body = body[-1], body[:-1]
        limit = len(body) if self.max_blocks is None else self.max_blocks
        return head, body, min(limit, len(body))

    def _apply_stage(self, stage, epoch):
        head, body, _ = self._body()
        unfrozen = body[len(body) - stage:] if stage else []
        set_trainable_blocks(self.model, unfrozen + [head], bn=self.bn,
                             patterns=self.patterns)
        params = sum(int(np.prod(v.shape))
                     for v in self.model.trainable_variables)
        if self.verbose:
            newest = unfrozen[0] if unfrozen else head
            io_utils.print_msg(
                f"GradualUnfreezing: epoch {epoch + 1}: stage {stage}, "
                f"unfroze {newest!r}, trainable params {params:,}"
            )
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

    def _state_path(self):
        return os.path.join(self.backup_dir, _STATE_FILE)

    def _save_state(self, next_epoch):
        if self.backup_dir is None:
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        tmp = self._state_path() + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"next_epoch": next_epoch,
                       "stage_epochs": self.stage_epochs,
                       "wait": self._wait, "best": self._best}, f)
        os.replace(tmp, self._state_path())

    def set_model(self, model):
        super().set_model(model)
        if self._restored or self.backup_dir is None:
            return
        self._restored = True
        if not os.path.exists(self._state_path()):
            return
        with open(self._state_path()) as f:
            state = json.load(f)
        self.stage_epochs = state["stage_epochs"]
        self._wait, self._best = state["wait"], state["best"]
        # The checkpoint holds the optimizer of the last finished epoch, so
        # that epoch's stage must be in place before BackupAndRestore loads
        # the slots (their number follows the trainable set); the resumed
        # epoch then switches stage as the uninterrupted run did.
        last = max(state["next_epoch"] - 1, 0)
        self._stage = self.stage_at(last)
        self._params = self._apply_stage(self._stage, last)

    # -- callback hooks -----------------------------------------------------

    def on_epoch_begin(self, epoch, logs=None):
        stage = self.stage_at(epoch)
        if stage != self._stage:
            self._stage = stage
            self._params = self._apply_stage(stage, epoch)
            self._save_state(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["unfrozen_blocks"] = self._stage
        logs["trainable_params"] = self._params
        if self.monitor is not None and self._plateaued(logs):
            if self.stage_at(epoch + 1) < self._body()[2]:
                self.stage_epochs.append(epoch + 1)
        self._save_state(epoch + 1)

    def _plateaued(self, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise ValueError(
                f"GradualUnfreezing monitors {self.monitor!r}, which is not "
                f"in the epoch logs. Available: {sorted(logs)}"
            )
        maximize = self.mode == "max" or (
            self.mode == "auto" and "acc" in self.monitor)
        value = float(value)
        better = self._best is None or (
            value > self._best + self.min_delta if maximize
            else value < self._best - self.min_delta)
        if better:
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
