"""When `GradualUnfreezing` unfreezes the next block: schedule objects.

A schedule answers `stage_at(epoch)`: how many blocks below the head train
during `epoch` (0-based), before the callback caps it at the blocks there
are. `Every` and `Milestones` are fixed; `Plateau` decides at the end of
each epoch from a monitored metric and keeps that state (`state`,
`restore`) for resuming.

Example:
>>> [Every(2).stage_at(e) for e in range(5)]
[0, 0, 1, 1, 2]
>>> [Milestones([1, 3]).stage_at(e) for e in range(5)]
[0, 1, 1, 2, 2]
"""

import warnings
from collections.abc import Sequence
from typing import Literal

import keras

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.training.monitor import MODES
from kft.training.monitor import check_monitor
from kft.training.monitor import improves
from kft.training.monitor import logged_value
from kft.training.monitor import monitor_mode


class UnfreezeSchedule:
    """Base of the schedules: stages from the epoch alone, no state.

    Subclasses implement `stage_at` and `get_config`; a schedule that
    decides during training also overrides `on_epoch_end`, `state`,
    `restore` and `reset`.
    """

    def stage_at(self, epoch: int) -> int:
        """Blocks below the head unfrozen during `epoch`, uncapped."""
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs, model, limit):
        """Called after `epoch` with its logs; `limit` caps the stages."""

    def state(self) -> dict:
        """What must persist between epochs for resuming (JSON-able)."""
        return {}

    def restore(self, records, saved_epoch):
        """Resumes from the `state()` records of a backup, by epoch.

        Args:
            records: `{str(epoch): state()}` of the last epochs saved.
            saved_epoch: The epoch the training checkpoint was saved in.
        """

    def reset(self):
        """Forgets what earlier training decided (a new run from epoch 0)."""

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="kft")
class Every(UnfreezeSchedule):
    """One more block every `n` epochs: stage `epoch // n`.

    Args:
        n: Epochs per stage, at least 1.

    Example:
    >>> [Every(3).stage_at(e) for e in (0, 2, 3, 6)]
    [0, 0, 1, 2]
    """

    def __init__(self, n: int):
        self.n = check_int("n", n, min_value=1)

    def stage_at(self, epoch):
        return epoch // self.n

    def get_config(self):
        return {"n": self.n}


def _check_milestones(name, epochs):
    if isinstance(epochs, (str, bytes)) or not hasattr(epochs, "__iter__"):
        # A string was read as its characters; a number raised
        # "'int' object is not iterable".
        fail_argument(name, "a list of increasing epochs >= 1, e.g. [2, 4]",
                      epochs, TypeError)
    epochs = list(epochs)
    epochs = [check_int(f"{name}[{i}]", m) for i, m in enumerate(epochs)]
    if any(m < 1 for m in epochs) or epochs != sorted(set(epochs)):
        raise ValueError(
            f"Argument `{name}` must be increasing epochs >= 1. "
            f"Received: {name}={epochs!r}"
        )
    return epochs


@keras.saving.register_keras_serializable(package="kft")
class Milestones(UnfreezeSchedule):
    """One more block at each listed epoch (0-based).

    Args:
        epochs: Strictly increasing epochs, each at least 1; at least
            one.

    Example:
    >>> [Milestones([2, 4]).stage_at(e) for e in range(6)]
    [0, 0, 1, 1, 2, 2]
    """

    def __init__(self, epochs: Sequence[int]):
        self.epochs = _check_milestones("epochs", epochs)
        if not self.epochs:  # it would never unfreeze a block
            fail_argument("epochs", "at least one epoch >= 1, e.g. [2, 4]",
                          epochs)

    def stage_at(self, epoch):
        return sum(m <= epoch for m in self.epochs)

    def get_config(self):
        return {"epochs": list(self.epochs)}


@keras.saving.register_keras_serializable(package="kft")
class Plateau(UnfreezeSchedule):
    """One more block once `monitor` has not improved for `patience` epochs.

    The comparison restarts with each new stage: its first epoch sets the
    best value afresh. The stages' first epochs (`stage_epochs`), the
    epochs waited and the best value are the state kept for resuming.

    Args:
        monitor: The logged quantity, e.g. `"val_loss"`.
        patience: Epochs without improvement before the next stage, at
            least 1. Defaults to `2`.
        min_delta: Smallest change counted as an improvement. Defaults to
            `0.0`.
        mode: `"min"`, `"max"` or `"auto"`: losses are minimised and a
            compiled Keras metric follows the direction it declares;
            `"auto"` raises for a quantity without one. Defaults to
            `"auto"`.

    Attributes:
        stage_epochs: The epochs at which stage 1, 2, ... began.
        direction: `"min"` or `"max"`, resolved at the first epoch end.

    Example:
    >>> schedule = Plateau("loss", patience=1, mode="min")
    >>> for epoch, loss in enumerate([1.0, 0.5, 0.6, 0.4]):
    ...     schedule.on_epoch_end(epoch, {"loss": loss}, None, limit=3)
    >>> schedule.stage_epochs, schedule.stage_at(3)
    ([3], 1)
    """

    def __init__(self, monitor: str, patience: int = 2,
                 min_delta: float = 0.0,
                 mode: Literal["auto", "min", "max"] = "auto"):
        self.monitor = check_monitor(monitor)
        self.patience = check_int("patience", patience, min_value=1)
        self.min_delta = abs(check_number("min_delta", min_delta))
        self.mode = check_choice("mode", mode, MODES)
        self.direction = None if mode == "auto" else mode
        self.stage_epochs = []
        self.wait = 0
        self.best = None
        self._skipped = False  # warned of an epoch without validation

    def stage_at(self, epoch):
        return sum(e <= epoch for e in self.stage_epochs)

    def on_epoch_end(self, epoch, logs, model, limit):
        if self._plateaued(logs, model) and self.stage_at(epoch + 1) < limit:
            self.stage_epochs.append(epoch + 1)

    def _plateaued(self, logs, model):
        if self.monitor.startswith("val_") and not any(
                key.startswith("val_") for key in logs or {}):
            # No validation this epoch (`validation_freq` > 1): not an
            # epoch without improvement, as for Keras' EarlyStopping.
            if not self._skipped:
                warnings.warn(
                    f"GradualUnfreezing monitors {self.monitor!r}, which "
                    "is not logged at every epoch (validation_freq > 1, or "
                    "no validation data): epochs without it do not count "
                    "towards `patience`.", stacklevel=user_stacklevel())
            self._skipped = True
            return False
        value = logged_value(logs, self.monitor, "GradualUnfreezing")
        if self.direction is None:
            self.direction = monitor_mode(model, self.monitor, self.mode)
        if improves(value, self.best, self.direction, self.min_delta):
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        # A new stage starts a new comparison.
        self.wait, self.best = 0, None
        return True

    def state(self):
        return {"stage_epochs": list(self.stage_epochs), "wait": self.wait,
                "best": self.best}

    def reset(self):
        self.stage_epochs, self.wait, self.best = [], 0, None
        self.direction = None if self.mode == "auto" else self.mode
        self._skipped = False

    def restore(self, records, saved_epoch):
        record = records.get(str(saved_epoch))
        if record is None:
            earlier = [int(k) for k in records if int(k) < saved_epoch]
            if earlier:
                record = records[str(max(earlier))]
            warnings.warn(
                "GradualUnfreezing: no plateau record for epoch "
                f"{saved_epoch + 1}, the epoch the checkpoint was saved in; "
                "the plateau count restarts from the epoch before it.",
                stacklevel=3)
        if record is not None:
            # A stage decided after the checkpoint's epoch is not part of
            # the checkpoint's run.
            self.stage_epochs = [e for e in record["stage_epochs"]
                                 if e <= saved_epoch + 1]
            self.wait, self.best = record["wait"], record["best"]

    def get_config(self):
        return {"monitor": self.monitor, "patience": self.patience,
                "min_delta": self.min_delta, "mode": self.mode}


def schedule_from_arguments(every, milestones, monitor, patience, min_delta,
                            mode, schedule):
    """The one schedule `GradualUnfreezing`'s arguments describe.

    Raises:
        ValueError: not exactly one of `every`, `milestones`, `monitor`
            and `schedule`, plateau arguments next to another way, or no
            milestone.
    """
    if isinstance(every, UnfreezeSchedule) and schedule is None:
        # Passed first, where `every` stands.
        raise TypeError(
            f"Argument `every` must be an integer >= 1; pass the schedule "
            f"object by keyword: GradualUnfreezing(schedule={every!r}). "
            f"Received: every={every!r}")
    given = {"every": every, "milestones": milestones, "monitor": monitor,
             "schedule": schedule}
    if sum(value is not None for value in given.values()) != 1:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(
            "Pass exactly one of `every`, `milestones`, `monitor` or "
            f"`schedule`. Received: {shown}"
        )
    # Checked with every way of giving the schedule: a bad value is never
    # accepted silently.
    check_choice("mode", mode, MODES)
    check_int("patience", patience, min_value=1)
    check_number("min_delta", min_delta)
    if every is not None:
        return Every(check_int("every", every, min_value=1))
    if milestones is not None:
        epochs = _check_milestones("milestones", milestones)
        if not epochs:  # the callback would never unfreeze a block
            fail_argument("milestones", "at least one epoch >= 1, e.g. [2, 4]",
                          milestones)
        return Milestones(epochs)
    if monitor is not None:
        return Plateau(monitor, patience, min_delta, mode)
    if not isinstance(schedule, UnfreezeSchedule):
        raise TypeError(
            "Argument `schedule` must be an `Every`, `Milestones` or "
            f"`Plateau` object. Received: schedule={schedule!r}")
    if (patience, min_delta, mode) != (2, 0.0, "auto"):
        raise ValueError(
            "Arguments `patience`, `min_delta` and `mode` belong to the "
            "plateau schedule; with `schedule=`, pass them to `Plateau`. "
            f"Received: patience={patience!r}, min_delta={min_delta!r}, "
            f"mode={mode!r}")
    return schedule
