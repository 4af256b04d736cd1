"""`GradualUnfreezing`'s files next to a `BackupAndRestore` checkpoint.

`BackupAndRestore` checkpoints the optimizer built for the trainable set of
the epoch it saved in, so the stage to re-apply is derived from the epoch
*its* metadata names (`checkpoint_epoch`), never from the callback's own
file: the two are written one after the other, and a kill between the two
writes must not pair a checkpoint with another stage's trainable set. The
callback's file only carries the schedule's state (`Plateau`'s stage
starts, wait and best value), kept for the last two epochs so that it
covers the checkpoint's epoch whichever callback wrote first.

The metadata is ambiguous in one case: an end-of-epoch save records the
next epoch and batch 0, and so does a save right after the first batch of
that epoch (an integer `save_freq`). `optimizer_state_loads` tells the two
apart by the trainable set the checkpoint's optimizer state fits.
"""

import json
import os
import shutil
import warnings

from kft._writing import write_file
from kft._writing import written_beside
from kft.distributed.processes import is_primary

STATE_FILE = "gradual_unfreezing.json"
# Written by `keras.callbacks.BackupAndRestore` in its `backup_dir`.
BACKUP_METADATA = "training_metadata.json"
BACKUP_WEIGHTS = "latest.weights.h5"
# Epochs of schedule state kept: the checkpoint's epoch and the one after.
_KEPT = 2


def checkpoint_position(backup_dir):
    """`(epoch, batch)` of `BackupAndRestore`'s metadata, or `None`.

    A save at the end of epoch `e` records `(e + 1, 0)`; a save after
    batch `b` of epoch `e` (an integer `save_freq`) records `(e, b)`.
    """
    path = os.path.join(backup_dir, BACKUP_METADATA)
    if not os.path.exists(path):
        return None
    return _position(path)


def _position(metadata_path):
    with open(metadata_path) as f:
        meta = json.load(f)
    return int(meta["epoch"]), int(meta.get("batch", 0))


def optimizer_state_loads(model, backup_dir):
    """Whether the checkpoint's optimizer state loads into `model`'s
    optimizer built for the current trainable set.

    Loads the checkpoint (as `BackupAndRestore` is about to): Keras skips,
    with a warning, an optimizer state whose variables do not match, which
    leaves the step count at the sentinel set here.
    """
    path = os.path.join(backup_dir, BACKUP_WEIGHTS)
    optimizer = model.optimizer
    if optimizer is None or not os.path.exists(path):
        return False
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    before = optimizer.iterations.value
    optimizer.iterations.assign(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # The skip warning of a miss.
        try:
            model.load_weights(path)
        except (OSError, ValueError):  # a file cut short: no state loads
            pass
    if int(optimizer.iterations.value) >= 0:
        return True
    optimizer.iterations.assign(before)
    return False


def checkpoint_epoch(backup_dir):
    """The epoch during which `BackupAndRestore` last saved, or `None`.

    Reads batch 0 as an end-of-epoch save (see `checkpoint_position`).
    """
    position = checkpoint_position(backup_dir)
    if position is None:
        return None
    epoch, batch = position
    return epoch if batch > 0 else epoch - 1


def check_records_fit(backup_dir, records, epoch):
    """Raises if `records` show an epoch after `epoch`, the checkpoint's,
    had ended: the checkpoint's metadata is wrong."""
    ended = max((int(k) for k in records), default=-1)
    if ended <= epoch:
        return
    raise RuntimeError(
        f"GradualUnfreezing: the checkpoint in {backup_dir!r} says it was "
        f"saved in epoch {epoch + 1}, but epoch {ended + 1} had already "
        "ended. `keras.callbacks.BackupAndRestore` with an integer "
        "`save_freq` records epoch 1 for the saves in the first epoch of a "
        "resumed run, so Keras would train again from epoch 1. Use "
        "`kft.callbacks.BackupAndRestore`, which records the epoch it saves "
        "in; delete the backup directory to start over.")


def load_records(backup_dir):
    """`{str(epoch): schedule state}` saved in `backup_dir`, or `{}`."""
    path = os.path.join(backup_dir, STATE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("records", {})


def save_record(backup_dir, records, epoch, state):
    """Adds `state` as `epoch`'s record to `records` and writes them.

    Only the last `_KEPT` epochs stay. The file is replaced atomically, so
    a kill leaves the previous file or the new one, never half of one.
    With several processes only the primary one writes (all keep
    `records`).
    """
    records[str(epoch)] = state
    for key in sorted(records, key=int)[:-_KEPT]:
        del records[key]
    if not is_primary():
        return
    os.makedirs(backup_dir, exist_ok=True)
    path = os.path.join(backup_dir, STATE_FILE)
    write_file(path, json.dumps({"records": records}), replace_links=True)


# `BackupAndRestore`'s files; with `double_checkpoint` it keeps the
# previous pair as `<name>.bkp`.
CHECKPOINT_FILES = (BACKUP_WEIGHTS, BACKUP_METADATA)


# Attribute of the weights file: the `(epoch, batch)` of the metadata
# written with it (`stamp_checkpoint`).
STAMP = "kft_checkpoint_position"


def stamp_checkpoint(backup_dir):
    """Writes the metadata's `(epoch, batch)` into the weights file.

    `BackupAndRestore` writes the weights, then the metadata: a kill
    between the two left the new weights with the previous epoch's
    metadata, both readable, and a resume trained an epoch again from the
    later weights (or failed on another stage's optimizer state).
    `recover_checkpoint` compares the two.
    """
    import h5py

    position = checkpoint_position(backup_dir)
    path = os.path.join(backup_dir, BACKUP_WEIGHTS)
    if position is None or not os.path.exists(path):
        return
    with h5py.File(path, "a") as f:
        f.attrs[STAMP] = list(position)


def _stamp(path):
    """The weights file's `stamp_checkpoint` position, or `None`."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            stamp = f.attrs.get(STAMP)
    except (OSError, ValueError):
        return None
    return None if stamp is None else tuple(int(v) for v in stamp)


def _paired(weights, metadata):
    """Whether a readable weights file and metadata file were written
    together: the stamp names the metadata's position (an unstamped pair
    is taken as it is, unless the previous weights were stamped: then the
    save stopped before its stamp)."""
    stamp = _stamp(weights)
    if stamp is None:
        return _stamp(weights + ".bkp") is None
    return stamp == _position(metadata)


def _readable(path):
    try:
        if path.removesuffix(".bkp").endswith(".json"):
            with open(path) as f:
                json.load(f)
        else:
            import h5py

            with h5py.File(path, "r"):
                pass
        return True
    except (OSError, ValueError):
        return False


def recover_checkpoint(directory) -> str | None:
    """Repairs a `BackupAndRestore` directory a kill left half-written.

    `save_weights` and the metadata file are not written atomically: a
    kill during the write leaves a truncated file, which would fail every
    resume, and a kill between the two writes leaves weights whose stamp
    (`stamp_checkpoint`) is not the metadata's position. The previous
    checkpoint (`double_checkpoint=True` keeps it) replaces the pair then;
    without one the pair is removed, so the call starts again. Returns
    what was done, or `None` when nothing was needed. With several
    processes, process 0 repairs the folder (they all read it) and the
    others wait for it and return `None`.

    Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "training_metadata.json"), "w") as f:
    ...     _ = f.write('{"epoch": ')  # cut short
    >>> recover_checkpoint(folder)
    'removed a checkpoint cut short; the phase starts again'
    """
    from kft.distributed.processes import barrier
    from kft.distributed.processes import is_primary

    # Every process repairing the shared folder raced: one found the
    # other's `.tmp` already moved (FileNotFoundError), and the job died.
    done = _recover(directory) if is_primary() else None
    barrier("kft-recover-checkpoint")
    return done


def _recover(directory):
    paths = [os.path.join(directory, name) for name in CHECKPOINT_FILES]
    present = [os.path.exists(p) for p in paths]
    if not any(present) or (all(present) and all(map(_readable, paths))
                            and _paired(*paths)):
        return None
    previous = [p + ".bkp" for p in paths]
    if all(os.path.exists(p) and _readable(p) for p in previous) and (
            _paired(*previous)):
        for old, path in zip(previous, paths):
            with written_beside(path, replace_links=True) as target:
                shutil.copyfile(old, target)
        return "restored the previous checkpoint (the last was cut short)"
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    return "removed a checkpoint cut short; the phase starts again"
