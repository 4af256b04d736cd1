"""`BackupAndRestore` whose files only the primary process writes.

With several JAX processes, saving the model's variables is a
collective: every process must take part (JAX checks that the values
agree), and a process that skipped it would block the others. Keras'
`BackupAndRestore` given to every process would, however, have them all
write the same files at once and delete the folder at the end. This one
has process 0 save into `backup_dir` and the others into a scratch
folder of their own (removed at the end), and every process restore from
`backup_dir`, which must be one folder all of them see (on several hosts,
a shared file system).

JAX runs steps asynchronously: process 0 reaches an epoch's end, and
Keras truncates the checkpoint file to write it anew, before the epoch's
steps have run. If another process died meanwhile, the save fails with
the file half-written. So before saving, this waits for the model's
variables (a dead peer fails there, the files untouched), and it keeps
the previous checkpoint (`double_checkpoint=True` by default), which
Keras restores from when the latest one does not load.
"""

import json
import os
import shutil
import warnings
import weakref

import keras
import numpy as np

from kft import _compat
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft._writing import output_path
from kft._writing import write_file
from kft.distributed.processes import is_primary
from kft.distributed.processes import process_count
from kft.distributed.processes import scratch_dir
from kft.training.unfreeze_backup import BACKUP_METADATA
from kft.training.unfreeze_backup import stamp_checkpoint


# Next to Keras' checkpoint: the training data's passes per epoch, and
# the model's random-layer seed states (Mixup/CutMix, dropout, in-model
# augmentation) per epoch, which Keras' weights file does not hold.
PASSES_FILE = "kft_data_passes.json"
SEEDS_FILE = "kft_seed_states.json"


def seed_states(model):
    """The state variables of `model`'s seed generators: its variables
    that are not weights (`save_weights` leaves them out)."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def check_backup_data(data):
    """`data` if a resumed run can continue its passes (a `kft.data`
    dataset or `kft.adaptation.domain_pairs`) or `None`; raises for other
    data (arrays: Keras reshuffles them from a fresh generator, so a
    resume reads other orders whatever is checkpointed)."""
    if data is not None and not hasattr(data, "continue_passes_at"):
        fail_argument("data", "the training data when it is a kft.data "
                      "dataset or kft.adaptation.domain_pairs(...) (or "
                      "None)", type(data).__name__, TypeError)
    return data


class BackupAndRestore(keras.callbacks.Callback):
    """`keras.callbacks.BackupAndRestore` for one or several processes.

    Same arguments, files and behaviour as Keras' callback, except that a
    save within an epoch (an integer `save_freq`) records that epoch also
    in the first epoch of a resumed run (Keras' records epoch 0 there, and
    the next resume would start over). With several processes
    (`kft.distributed`) all of them restore from `backup_dir`; process 0
    (`kft.is_primary()`) writes and deletes it, the others save the same
    state to a scratch folder of their own.

    The model's seed generator states (Mixup/CutMix draws, dropout masks,
    augmentation inside the model), which Keras' checkpoint leaves out,
    are checkpointed with each epoch: a `fit` resumed at an epoch's start
    draws what the uninterrupted one would have. (With an integer
    `save_freq`, Keras reruns the interrupted epoch from its first batch
    on weights saved within it, so that epoch differs anyway.)

    With `data`, the training data's pass count is checkpointed with the
    epochs, and a resumed `fit` reads the passes (shuffled orders,
    balanced draws, host augmentation) the uninterrupted run would have
    read: it ends on the same weights (with epochs of whole passes:
    a `steps_per_epoch` shorter than one is warned about, since a resume
    starts a new pass). Without it a `kft.data` dataset or
    `domain_pairs` numbers its passes from 0 again in the new process, and
    the resumed epochs repeat the first epochs' orders. (`domain_pairs`
    shuffles itself: give `fit` `shuffle=False`, or Keras also shuffles
    its batch order, with Python's `random`, which no checkpoint holds.)

    Args:
        backup_dir: Folder of the checkpoint, shared by all processes.
        double_checkpoint: Keep the previous checkpoint too. Defaults to
            `True` (Keras: `False`).
        data: The training data given to `fit`, when it is a `kft.data`
            dataset or `kft.adaptation.domain_pairs(...)` (anything with
            `passes_begun` and `continue_passes_at`). Defaults to `None`.
        **kwargs: `save_freq`, `delete_checkpoint` of
            `keras.callbacks.BackupAndRestore`.

    Example:
    >>> import tempfile, kft
    >>> backup = kft.distributed.BackupAndRestore(tempfile.mkdtemp())
    >>> backup.backup_dir == backup.restore_from.backup_dir
    True
    """

    def __init__(self, backup_dir, *, double_checkpoint=True, data=None,
                 **kwargs):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)):
            fail_argument("backup_dir", "a folder path (str or os.PathLike)",
                          backup_dir, TypeError)
        if not os.fspath(backup_dir):
            fail_argument("backup_dir", "a folder path, not empty",
                          backup_dir)
        output_path(backup_dir, "backup_dir")
        if not isinstance(double_checkpoint, (bool, np.bool_)):
            # Keras takes any truthy value ("no" kept two checkpoints).
            fail_argument("double_checkpoint", "True or False",
                          double_checkpoint, TypeError)
        self.data = check_backup_data(data)
        self.backup_dir = backup_dir
        kwargs["double_checkpoint"] = double_checkpoint
        self._kwargs = kwargs
        self.restore_from = keras.callbacks.BackupAndRestore(backup_dir,
                                                             **kwargs)
        self._writer = None
        self._stamped = None  # the metadata's mtime when last stamped
        self._scratch = None  # a `weakref.finalize` removing the folder

    def set_model(self, model):
        super().set_model(model)
        self.restore_from.set_model(model)

    def on_train_begin(self, logs=None):
        self._check_steps()
        self.restore_from.on_train_begin(logs)
        first = _compat.restored_initial_epoch(self.model)
        if self.data is not None and first:
            # Resumed at epoch `first`: it reads the pass that began after
            # epoch `first - 1` ended.
            passes = self._record(PASSES_FILE).get(str(first - 1))
            if passes is not None:
                self.data.continue_passes_at(passes)
        if first:
            self._restore_seeds(self._record(SEEDS_FILE).get(str(first - 1)))
        if is_primary():
            self._writer = self.restore_from
        else:
            # `fit` skips `on_train_end` when it raises: the folder goes
            # at the next `fit`, when the callback is collected, or at exit
            # (after an abort: when a later process makes its own).
            self._remove_scratch()
            scratch = scratch_dir("kft-backup-")
            self._scratch = weakref.finalize(self, shutil.rmtree, scratch,
                                             ignore_errors=True)
            self._writer = keras.callbacks.BackupAndRestore(scratch,
                                                            **self._kwargs)
            self._writer.set_model(self.model)

    def _check_steps(self):
        """Warns where an epoch ends inside a pass over `data`: only
        whole passes are checkpointed."""
        steps = (self.params or {}).get("steps")
        try:
            length = len(self.data) if self.data is not None else None
        except TypeError:  # no length: nothing to compare
            length = None
        if steps and length and steps < length:
            warnings.warn(
                f"fit's steps_per_epoch={steps} is shorter than a pass over "
                f"`data` ({length} batches): epochs end inside a pass, and a "
                "resumed fit starts a new pass where the uninterrupted run "
                "read on in the old one, so it trains on other batches and "
                "ends on other weights. For a resume that reads what the "
                "uninterrupted run would have, let each epoch read whole "
                "passes (steps_per_epoch=None).",
                UserWarning, stacklevel=user_stacklevel())

    def on_epoch_begin(self, epoch, logs=None):
        if self._writer is not None:  # see `set_backup_epoch`
            _compat.set_backup_epoch(self._writer, epoch)

    def _settle(self):
        if process_count() > 1:
            import jax

            jax.block_until_ready([v.value for v in self.model.variables])

    def on_epoch_end(self, epoch, logs=None):
        self._settle()
        if is_primary():
            # Before the checkpoint: a kill between the two leaves a
            # record the checkpoint's epoch finds (one epoch ahead of it
            # does no harm).
            if self.data is not None:
                self._add_record(PASSES_FILE, epoch, self.data.passes_begun)
            states = seed_states(self.model)
            if states:
                self._add_record(SEEDS_FILE, epoch, [
                    np.asarray(v.value).tolist() for v in states])
        self._writer.on_epoch_end(epoch, logs)
        self._stamp()

    def _record(self, name):
        """`{epoch: value at its end}` of the checkpoint's file `name`."""
        try:
            with open(os.path.join(self.backup_dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _add_record(self, name, epoch, value):
        record = self._record(name)
        record[str(epoch)] = value
        path = os.path.join(self.backup_dir, name)
        os.makedirs(self.backup_dir, exist_ok=True)
        write_file(path, json.dumps(record), replace_links=True)

    def _restore_seeds(self, saved):
        states = seed_states(self.model)
        if saved is None or not states:
            return
        if len(saved) != len(states) or any(
                np.shape(s) != tuple(v.shape) for s, v in zip(saved, states)):
            warnings.warn(
                f"The checkpoint in {self.backup_dir!r} holds "
                f"{len(saved)} seed states where model {self.model.name!r} "
                f"has {len(states)}: its random layers (Mixup/CutMix, "
                "dropout) start their draws afresh instead of where the "
                "interrupted run left them.", UserWarning,
                stacklevel=user_stacklevel())
            return
        for value, variable in zip(saved, states):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_train_batch_end(self, batch, logs=None):
        by_batch = self._kwargs.get("save_freq", "epoch") != "epoch"
        if by_batch:
            self._settle()
        self._writer.on_train_batch_end(batch, logs)
        if by_batch:
            self._stamp()

    def _stamp(self):
        """Marks the weights just saved with their metadata's position
        (`recover_checkpoint` then finds a pair a kill split)."""
        path = os.path.join(self.backup_dir, BACKUP_METADATA)
        if self._writer is not self.restore_from or not os.path.exists(path):
            return
        written = os.stat(path).st_mtime_ns
        if written != self._stamped:  # a save since the last stamp
            stamp_checkpoint(self.backup_dir)
            self._stamped = written

    def on_train_end(self, logs=None):
        self._writer.on_train_end(logs)
        self._remove_scratch()

    def _remove_scratch(self):
        if self._scratch is not None:
            self._scratch()
            self._scratch = None
