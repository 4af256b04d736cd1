"""Resolving a `TrainConfig` before a run: paths checked and made
absolute, the backbone's name and size, one source of validation images,
a monitor that each epoch logs, the run folder's name."""

import os

from kft._paths import not_a_folder
from kft._validation import fail_argument
from kft.data._files import VAL_FOLDERS
from kft.data._files import holds_folders
from kft.data._files import split_folder
from kft.data._files import train_folder
from kft.runs.config import TrainConfig

# What `fine_tune` compiles: with `loss`, the names an epoch logs.
METRICS = ("accuracy",)


def _layout(data_dir):
    """Whether `data_dir` holds `train/` and a val folder (any case, as
    `kft.data.from_directory` finds them)."""
    return (train_folder(data_dir) is not None
            and split_folder(data_dir, VAL_FOLDERS) is not None)


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Checks `config` and fills in what depends on the data and backbone.

    Resolved: the backbone's registered name and default image size,
    `data_dir`, `val_dir` and a weights file as absolute paths (a run's
    config.toml then reads the same from any folder), no `val_split` with
    a val folder (or `val_dir`), the monitor without its
    `val_` prefix without validation data (checked against what each
    epoch logs: `loss`, `accuracy`, and `val_` of each with validation
    data), the run folder
    (`runs/<data folder>-<backbone>[-N]`). `strategy="auto"` and
    `lr="find"` need the data and the model: `train_run` resolves them.

    Raises:
        ValueError: a bad value, a missing folder or weights file, a
            `val_split` other than the default with a val folder, a
            `val_dir` beside a data folder's own val folder, a monitor
            that is never logged, or an unknown backbone (with close names
            suggested).

    Example:
    >>> import tempfile
    >>> config = resolve_config(TrainConfig(data_dir=tempfile.mkdtemp(),
    ...                                     backbone="Simple_CNN"))
    >>> config.backbone, config.image_size
    ('simple_cnn', 32)
    """
    from kft.models import registry

    config.check()
    if config.data_dir is None:
        raise ValueError("No data folder given: pass DATA_DIR (a folder of "
                         "<class>/<image files>).")
    check_paths(config)
    spec = registry.get_backbone(config.backbone)
    changes = {"backbone": spec.name, **_absolute_paths(config)}
    if config.image_size is None:
        changes["image_size"] = spec.default_size
    _check_validation(config)
    if config.val_dir is not None or _layout(config.data_dir):
        changes["val_split"] = None
    has_val = (config.val_dir is not None or _layout(config.data_dir)
               or config.val_split is not None)
    monitor = config.monitor
    if not has_val and monitor.startswith("val_"):
        changes["monitor"] = monitor = monitor[len("val_"):]
    logged = ("loss", *METRICS)
    if has_val:
        logged += tuple(f"val_{name}" for name in logged)
    if monitor not in logged:  # found at the first epoch's end otherwise
        fail_argument("monitor", f"a quantity each epoch logs, one of "
                      f"{logged}", config.monitor)
    if config.out is None:
        base = os.path.join("runs", f"{os.path.basename(os.path.abspath(config.data_dir))}-{spec.name}")
        out, n = base, 2
        while os.path.exists(out):
            out, n = f"{base}-{n}", n + 1
        changes["out"] = out
    return config.replace(**changes)


def monitor_change(given: TrainConfig, resolved: TrainConfig):
    """The line that says a `val_` monitor given without validation data
    became the training value (`None` when it did not, or when it was the
    default `val_loss`, which changes quietly)."""
    if (resolved.monitor == given.monitor
            or given.monitor == TrainConfig().monitor):
        return None
    return (f"`monitor` {given.monitor!r}: no validation data (no val "
            "folder and no `val_split`); the run monitors "
            f"{resolved.monitor!r}.")


def check_paths(config, named_in=None):
    """The folders and the weights file of `config` exist (`named_in`: the
    config file that names them, for the message)."""
    where = f" (named in {named_in!r})" if named_in else ""
    for name in ("data_dir", "val_dir"):
        folder = getattr(config, name)
        reason = folder is not None and not_a_folder(folder)
        if reason:
            raise ValueError(f"{'Data' if name == 'data_dir' else 'Val'} "
                             f"folder {folder!r} {reason}{where}.")
    if config.weights not in ("imagenet", "none") and not os.path.isfile(
            config.weights):
        raise ValueError(
            f"Weights {config.weights!r}{where}: not 'imagenet', 'none' or "
            "an existing weights file.")


def _absolute_paths(config):
    """`data_dir`, `val_dir` and a weights file as absolute paths: a run's
    config.toml is read again from other folders (`--resume`, `--config`)."""
    changes = {name: os.path.abspath(getattr(config, name))
               for name in ("data_dir", "val_dir")
               if getattr(config, name) is not None}
    if config.weights not in ("imagenet", "none"):
        changes["weights"] = os.path.abspath(config.weights)
    return changes


def _check_validation(config):
    """One source of validation images: `val_dir` is refused beside the
    data folder's own val folder, and a `val_split` other than the default
    beside either (which would replace it)."""
    val = split_folder(config.data_dir, VAL_FOLDERS)
    train = train_folder(config.data_dir)
    # A val folder of class folders, not a class named "valid".
    split = val is not None and (train is not None or holds_folders(val))
    if config.val_dir is not None and (split or train is not None):
        # With `val_dir` the data folder is read as the class folders:
        # its train/ and val/ would be classes.
        fix = (f"pass {train!r} as the data folder to validate on "
               "`val_dir`" if train is not None else "")
        if split:
            raise ValueError(
                f"Data folder {config.data_dir!r} already has a val folder "
                f"({val!r}): drop `val_dir` ({config.val_dir!r})"
                + (f", or {fix} instead." if fix else "."))
        raise ValueError(f"Data folder {config.data_dir!r} has a train/ "
                         f"folder: {fix}.")
    # The default split is dropped quietly: it is not asked for.
    if config.val_split in (None, TrainConfig().val_split):
        return
    if config.val_dir is not None:
        raise ValueError(
            f"Both `val_split` ({config.val_split:g}) and `val_dir` "
            f"({config.val_dir!r}) give validation images; pass one of "
            "them.")
    if _layout(config.data_dir):
        raise ValueError(
            f"`val_split` ({config.val_split:g}) holds out training images, "
            f"but {config.data_dir!r} has a val folder ({val!r}) that gives "
            "the validation images; drop `val_split`.")
