"""`RunBackup`: resuming a multi-phase recipe such as `kft.fine_tune`.

`keras.callbacks.BackupAndRestore` resumes one `fit` call. A recipe makes
several (`fine_tune`: the head phase, then the deeper one), each with its
own optimizer and trainable set, its epochs numbered on across calls.
`RunBackup`, given to every call (`fine_tune(callbacks=[...])`), keeps
one `BackupAndRestore` directory per call, never deleted when the call
ends, so that in a restarted process:

- a call that had finished restores its end state and runs no epoch;
- the interrupted call restores the trainable set recorded for its
  checkpoint's epoch before `BackupAndRestore` loads the optimizer slots
  (which follow that set; the same order `GradualUnfreezing` uses), then
  continues at the next epoch;
- every epoch's logs and the best epoch's weights (by `monitor`) are kept
  in the directory too, so the history and the kept weights cover the
  epochs before the kill.

Order of writes at an epoch end: the logs and best weights first, then the
checkpoint. A resume drops logs of the call's epochs at or after the one it
restarts at, so an epoch whose checkpoint was lost is logged once, from its
rerun. A call that stopped early (`EarlyStopping`, or any callback setting
`model.stop_training`) is recorded as such, and resumes as finished; in
a call resumed mid-way, `fine_tune`'s early stopping counts its patience
on from the epochs before the restart (`call_logs`).
"""

import json
import math
import os
import shutil
import warnings

import keras

from kft import _compat
from kft._validation import check_choice
from kft._writing import output_path
from kft._writing import write_file
from kft._writing import written_beside
from kft.distributed.backup import BackupAndRestore
from kft.distributed.backup import check_backup_data
from kft.distributed.processes import is_primary
from kft.distributed.processes import primary_path
from kft.runs.report import read_json
from kft.training.monitor import MODES
from kft.training.monitor import check_monitor
from kft.training.monitor import improves
from kft.training.monitor import monitor_mode
from kft.training.phases import weights_finite
from kft.training.state import changing_trainable
from kft.training.unfreeze_backup import checkpoint_epoch
from kft.training.unfreeze_backup import recover_checkpoint

STATE_FILE = "run_state.json"
BEST_WEIGHTS = "best.weights.h5"
class RunBackup(keras.callbacks.Callback):
    """Checkpoints every `fit` call of a recipe for resuming after a crash.

    Args:
        directory: Where the checkpoints, logs and best weights go (one
            directory per run; reuse it to resume).
        model: The model whose best weights are kept (in a phase trained
            on cached features the callbacks see the head model instead).
        monitor: Quantity that picks the best epoch. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (from the Keras metric).
            Defaults to `"auto"`.
        print_fn: Where resume and phase lines go, or `None`. Defaults to
            Keras' `print_msg`.
        data: The `kft.data` dataset the recipe trains on, or `None`.
            Given, a resumed run reads the passes (shuffled orders,
            balanced draws, host augmentation) the uninterrupted run would
            have read after the checkpoint, so it continues the same run;
            without it the passes start again from the first. Arrays
            cannot be given: Keras shuffles them from a fresh generator, so
            a run on arrays resumes in other orders than the uninterrupted
            run's (`kft.data.from_arrays` makes them a dataset). Defaults
            to `None`.

    Attributes:
        history: `{epoch: logs}` of every epoch of the run so far (a
            resumed `fine_tune`'s result holds the epochs it ran).
        best_epoch, best_value: The best epoch so far and its value.

    Example:
    >>> import tempfile, kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=4)
    >>> model = kft.build_classifier("simple_cnn", num_classes=5,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> backup = RunBackup(tempfile.mkdtemp(), model, print_fn=None)
    >>> _ = kft.fine_tune(model, data.target_train, data.target_val,
    ...                   head_epochs=1, epochs=1, verbose=0,
    ...                   callbacks=[backup])
    >>> sorted(backup.history), backup.phases_finished
    ([0, 1], 2)
    """

    def __init__(self, directory, model, monitor="val_loss", mode="auto",
                 print_fn=_compat.print_msg, data=None):
        super().__init__()
        # Absolute: a relative one followed a later `os.chdir` (a notebook
        # cell, a callback), splitting the run between two folders.
        self.directory = os.path.abspath(output_path(directory, "directory"))
        check_backup_folder(self.directory)
        self.target = model
        # Its passes are numbered on from where the checkpoint was taken
        # (by each call's BackupAndRestore).
        self._data = check_backup_data(data)
        self.monitor = check_monitor(monitor)
        # Anything but "max" read as "min": "MAX" kept the worst epoch.
        self.mode = check_choice("mode", mode, MODES)
        self.print_fn = print_fn
        self.phase = -1
        self.phases_finished = 0
        self._inner = None
        self._start_checked = False
        state = self._read_state()
        self.history = {int(k): v for k, v in state["history"].items()}
        self._trainable = state["trainable"]
        self.best_epoch = state["best_epoch"]
        self.best_value = state["best_value"]
        self._values = state["values"]
        # Call -> the epoch after which it stopped early.
        self._stopped = state["stopped"]
        if state["mode"] in ("min", "max"):
            self.mode = state["mode"]

    # -- files --------------------------------------------------------------

    def phase_dir(self, phase: int) -> str:
        """The `BackupAndRestore` directory of call `phase` (0-based)."""
        return os.path.join(self.directory, f"phase{phase}")

    def resumable(self) -> bool:
        """Whether the directory holds a checkpoint to resume from."""
        return checkpoint_epoch(self.phase_dir(0)) is not None

    @property
    def best_weights_path(self) -> str:
        return os.path.join(self.directory, BEST_WEIGHTS)

    def _read_state(self):
        path = os.path.join(self.directory, STATE_FILE)
        state = {"history": {}, "trainable": {}, "best_epoch": None,
                 "best_value": None, "mode": None, "values": {},
                 "stopped": {}}
        if os.path.exists(path):
            state.update(read_json(path, (
                f"delete {self.directory!r} to train the run again from "
                "its first epoch")))
        return state

    def _write_state(self):
        if not is_primary():  # several processes: process 0 writes
            return
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, STATE_FILE)
        state = {"history": {str(k): v for k, v in self.history.items()},
                 "trainable": self._trainable, "best_epoch": self.best_epoch,
                 "best_value": self.best_value, "mode": self.mode,
                 "values": self._values, "stopped": self._stopped}
        # Replaced atomically: a kill leaves the old file or the new one.
        write_file(path, json.dumps(state), replace_links=True)

    def record(self, key: str, value):
        """Keeps a value a recipe computed once (a JSON value) for the
        attempts after a restart: `fine_tune(learning_rate="find")` records
        the rate it found, so that a resumed run trains on at that rate
        instead of running the range test again."""
        self._values[key] = value
        self._write_state()

    def recall(self, key: str):
        """The value `record` kept under `key`, or `None`."""
        return self._values.get(key)

    def call_logs(self, before: int):
        """`[(epoch, logs)]` of the running call's epochs before `before`,
        in order: those a restarted call ran before the restart
        (`kft.fine_tune`'s early stopping counts its patience on from
        them)."""
        return sorted((epoch, logs) for epoch, logs in self.history.items()
                      if epoch < before and logs.get("phase") == self.phase + 1)

    # -- trainable set ------------------------------------------------------

    def _flat_layers(self):
        return _compat.flatten_layers(self.model)

    def _record_trainable(self, epoch):
        # Per call, the last two epochs: the checkpoint's epoch is one of
        # them whichever of the two end-of-epoch writes a kill followed.
        records = self._trainable.setdefault(str(self.phase), {})
        records[str(epoch)] = [
            [layer.path, bool(layer.trainable), type(layer).__name__]
            for layer in self._flat_layers()]
        for key in sorted(records, key=int)[:-2]:
            del records[key]

    def _restore_trainable(self, epoch):
        flags = self._trainable.get(str(self.phase), {}).get(str(epoch))
        if flags is None:
            return False
        layers = self._flat_layers()
        # Layer classes, not paths: a model built again in the same process
        # (a notebook resuming after an interrupt) gets other automatic
        # names ("rescaling_1") for the same layers. The model's own class
        # is left out: `build_classifier` returned a plain `Functional`
        # before `kft.Classifier`, and the model's layers are what the
        # checkpoint holds.
        classes = [type(layer).__name__ for layer in layers]
        recorded = [record[2] if len(record) > 2 else name  # older files
                    for record, name in zip(flags, classes)]
        if len(layers) != len(flags) or classes[1:] != recorded[1:]:
            raise RuntimeError(
                f"RunBackup: the model's layers differ from those recorded "
                f"in {self.directory!r} ({_first_difference(flags, layers)}); "
                "resume with the same model and settings (and the kft "
                "version that wrote the checkpoint if it was another), or "
                "delete the directory to start over.")
        with changing_trainable(self.model):
            _compat.set_trainable_flags(
                (layer, record[1]) for layer, record in zip(layers, flags))
        return True

    # -- callback hooks -----------------------------------------------------

    def _say(self, message):
        if self.print_fn is not None:
            self.print_fn(message)

    def on_train_begin(self, logs=None):
        self.phase += 1
        self._start_checked = False
        repaired = recover_checkpoint(self.phase_dir(self.phase))
        if repaired:
            self._say(f"RunBackup: phase {self.phase + 1}: {repaired}.")
        self._inner = BackupAndRestore(
            self.phase_dir(self.phase), delete_checkpoint=False,
            double_checkpoint=True, data=self._data)
        self._inner.set_model(self.model)
        self._inner.set_params(self.params)
        saved = checkpoint_epoch(self.phase_dir(self.phase))
        if saved is not None and saved >= 0:
            self._restore_trainable(saved)
        self._inner.on_train_begin(logs)
        self._saved = saved
        if saved is not None and self._stopped.get(str(self.phase)) == saved:
            # Early stopping ended this call before the kill: training on
            # would run the epochs it cut off (and keep another epoch).
            _compat.skip_remaining_epochs(self.model, self.params["epochs"])
            self._say(f"RunBackup: phase {self.phase + 1} had stopped early "
                      f"after epoch {saved + 1}; nothing left to train.")
        if saved is not None and saved >= 0:
            optimizer = self.model.optimizer
            if optimizer is not None and int(optimizer.iterations) == 0:
                raise RuntimeError(
                    f"RunBackup: the checkpoint in "
                    f"{self.phase_dir(self.phase)!r} did not restore the "
                    "optimizer state; resume with the same settings, or "
                    "delete the directory to start over.")

    def on_epoch_begin(self, epoch, logs=None):
        if self._start_checked:
            return
        self._start_checked = True
        # Counted at the first epoch, after the callbacks before this one
        # set it (gradual unfreezing's first stage), in the model of this
        # call: a phase trained on cached features trains the head alone.
        count = sum(int(math.prod(v.shape))
                    for v in self.model.trainable_weights)
        # A recipe numbers its calls' epochs on: a call starting at an
        # epoch another call of the run already logged is another run
        # (this callback given to a second `fine_tune`), whose epochs
        # would replace the first run's logs and best weights.
        taken = sorted(k + 1 for k, logs in self.history.items()
                       if k >= epoch and logs.get("phase") != self.phase + 1)
        if taken:
            raise ValueError(
                f"RunBackup: this `fit` starts at epoch {epoch + 1}, but "
                f"epochs {taken} of the run in {self.directory!r} were "
                "trained by an earlier call: a RunBackup records one run "
                "(its calls numbering their epochs on, as `kft.fine_tune`'s"
                "). To resume that run after an interrupt, make a new "
                "RunBackup on the same directory; for a new run, one on "
                "another directory.")
        self._say(f"phase {self.phase + 1} starts: {count:,} trainable "
                  f"parameters ({self.model.name})")
        # Logs of this call's epochs from this one on come from this
        # attempt (another call's are its own).
        stale = [k for k, logs in self.history.items()
                 if k >= epoch and logs.get("phase") == self.phase + 1]
        for key in stale:
            del self.history[key]
        if self._stopped.get(str(self.phase), -1) >= epoch:
            # Its epoch is rerun (its checkpoint was lost): not stopped.
            del self._stopped[str(self.phase)]
        if self._saved is not None and self._saved >= 0:
            self._say(f"RunBackup: resumed phase {self.phase + 1} from its "
                      f"checkpoint after epoch {self._saved + 1}; training "
                      f"continues at epoch {epoch + 1}.")

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self.mode == "auto":
            self.mode = monitor_mode(self.model, self.monitor, self.mode)
        self.history[epoch] = {
            "phase": self.phase + 1,
            **{k: float(v) for k, v in logs.items()
               if isinstance(v, (int, float)) or hasattr(v, "__float__")}}
        value = logs.get(self.monitor)
        # Saved only when better: a rerun of the best epoch (its checkpoint
        # lost in a kill) had replaced the kept weights with its own under
        # the first attempt's value.
        # Nor with weights that are not finite (as `fine_tune`'s KeepBest).
        if value is not None and improves(float(value), self.best_value,
                                          self.mode) and weights_finite(
                                              self.target):
            self.best_epoch, self.best_value = epoch, float(value)
            # Saving is a collective: every process saves, process 0 into
            # the run folder (`primary_path`).
            if is_primary():
                os.makedirs(self.directory, exist_ok=True)
            best = primary_path(self.best_weights_path)
            # The file name only: a folder may hold ".weights.h5" too.
            tmp = best.removesuffix(".weights.h5") + ".tmp.weights.h5"
            if os.path.lexists(tmp):  # a link there would be written through
                os.remove(tmp)
            # The weights alone: `load_best` reads nothing else, and the
            # optimizer's slots were 2/3 of the file (Adam), rewritten at
            # every improving epoch.
            _compat.save_weights_only(self.target, tmp)
            os.replace(tmp, best)
        self._record_trainable(epoch)
        if self.model.stop_training:
            # Set by a callback before this one (`fine_tune` puts its
            # `EarlyStopping` there); written before the checkpoint.
            self._stopped[str(self.phase)] = epoch
        self._write_state()
        self._inner.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self._inner.on_train_end(logs)
        last = max((k for k, logs in self.history.items()
                    if logs.get("phase") == self.phase + 1), default=None)
        if (self.model.stop_training and last is not None
                and self._stopped.get(str(self.phase)) != last):
            # A callback after this one stopped the call.
            self._stopped[str(self.phase)] = last
            self._write_state()
        self.phases_finished += 1
        # The next call of the recipe starts at its own `initial_epoch`.
        _compat.reset_initial_epoch(self.model)

    def load_best(self, model=None) -> bool:
        """Loads the best epoch's weights into `model` (default: the
        target); `False` when none were saved."""
        if not os.path.exists(self.best_weights_path):
            return False
        with warnings.catch_warnings():
            # The file holds no optimizer (files of older runs: that of
            # their epoch's phase); only the weights are wanted.
            warnings.filterwarnings(
                "ignore", message="Skipping variable loading for optimizer")
            (model or self.target).load_weights(self.best_weights_path)
        return True


def check_backup_folder(directory):
    """Refuses a symbolic link among the files a `RunBackup` in
    `directory` and Keras' checkpoints write, and gives a file there that
    has other hard links (a `cp -al` snapshot of the run) a copy of its
    own: Keras writes its checkpoint files in place, through both (a
    folder from elsewhere can hold links pointing anywhere)."""
    # (The best weights' temporary file is removed before each save.)
    paths = [os.path.join(directory, name)
             for name in (STATE_FILE, BEST_WEIGHTS)]
    if os.path.isdir(directory):
        for entry in os.listdir(directory):
            phase = os.path.join(directory, entry)
            if entry.startswith("phase"):
                paths.append(phase)
                for folder, subfolders, files in os.walk(phase):
                    paths += [os.path.join(folder, name)
                              for name in subfolders + files]
    for path in paths:
        if os.path.islink(path):
            raise ValueError(
                f"RunBackup: {path!r} is a symbolic link (to "
                f"{os.readlink(path)!r}); checkpoints would be written "
                "through it. A run folder holds no links: remove it.")
        if os.path.isfile(path) and os.stat(path).st_nlink > 1:
            with written_beside(path, replace_links=True) as copy:
                shutil.copy2(path, copy)


def _first_difference(records, layers):
    """Where the recorded layers `[path, trainable, class]` and the model's
    first differ, in words."""
    if len(records) != len(layers):
        return f"{len(records)} layers recorded, the model has {len(layers)}"
    for index, (record, layer) in enumerate(zip(records, layers)):
        if index and len(record) > 2 and record[2] != type(layer).__name__:
            return (f"layer {index} was a {record[2]} ({record[0]}), the "
                    f"model's is a {type(layer).__name__} ({layer.path})")
    return "no difference"
