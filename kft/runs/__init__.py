"""Run folders: `train_run` (what `kft train` calls), its `TrainConfig`,
`RunBackup` (resuming a multi-phase recipe), `load_run` and `find_rate`
(`kft lr-find`).

Names load on first use, so that `kft train` reads its settings
(`kft.runs.config`, standard library only) and rejects a bad command line
before Keras and JAX are imported.
"""

import importlib

_NAMES = {
    "RunBackup": "kft.runs.backup",
    "TrainConfig": "kft.runs.config",
    "load_config": "kft.runs.config",
    "LoadedRun": "kft.runs.folder",
    "load_eval_folder": "kft.runs.folder",
    "load_run": "kft.runs.folder",
    "find_rate": "kft.runs.lr",
    "RunSetupError": "kft.runs.train",
    "TrainRunResult": "kft.runs.train",
    "environment": "kft.runs.report",
    "load_folder_data": "kft.runs.recipe",
    "resolve_config": "kft.runs.resolve",
    "train_run": "kft.runs.train",
}


def __getattr__(name):
    if name not in _NAMES:
        raise AttributeError(f"module 'kft.runs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))


__all__ = sorted(_NAMES)
