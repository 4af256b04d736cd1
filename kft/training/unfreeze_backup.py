"""`GradualUnfreezing`'s files next to a `BackupAndRestore` checkpoint.

`BackupAndRestore` checkpoints the optimizer built for the trainable set of
the epoch it saved in, so the stage to re-apply is derived from the epoch
*its* metadata names (`checkpoint_epoch`), never from the callback's own
file: the two are written one after the other, and a kill between the two
writes must not pair a checkpoint with another stage's trainable set. The
callback's file only carries the schedule's state (`Plateau`'s stage
starts, wait and best value), kept for the last two epochs so that it
covers the checkpoint's epoch whichever callback wrote first.
"""

import json
import os

from kft.distributed.processes import is_primary

STATE_FILE = "gradual_unfreezing.json"
# Written by `keras.callbacks.BackupAndRestore` in its `backup_dir`.
BACKUP_METADATA = "training_metadata.json"
# Epochs of schedule state kept: the checkpoint's epoch and the one after.
_KEPT = 2


def checkpoint_epoch(backup_dir):
    """The epoch during which `BackupAndRestore` last saved, or `None`."""
    path = os.path.join(backup_dir, BACKUP_METADATA)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    # An end-of-epoch save records the next epoch and batch 0; a save
    # within an epoch records that epoch and the batch it saved after.
    epoch = int(meta["epoch"])
    return epoch if int(meta.get("batch", 0)) > 0 else epoch - 1


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
    with open(path + ".tmp", "w") as f:
        json.dump({"records": records}, f)
    os.replace(path + ".tmp", path)
