"""`train_run`: fine-tune on an image folder and leave a run folder.

The run folder (`out`):

- `config.toml`: the settings, every default resolved (repeat the run
  with `kft train --config`);
- `environment.json`: library versions, Python, platform, JAX devices;
- `run.json`: status (`running` / `complete`), what was asked for and
  what was resolved (`strategy="auto"`, `lr="find"`), class names, the
  image files the loader skipped (`skipped_files`), best epoch, timings,
  the files written;
- `checkpoints/`: `kft.runs.RunBackup`'s state while training (what
  `--resume` continues from), removed when the run completes;
- `model.keras`: the model with the kept (best) epoch's weights;
- `history.csv`, `history.json`: every epoch's logs, phase included;
- `evaluation.json`, `evaluation.md`: the report on the validation set;
- `learning_curves.png`, `confusion_matrix.png`: with matplotlib;
- `summary.md`: what ran and where everything is.
"""

import csv
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import time
from typing import Callable

from kft._validation import fail_argument
from kft.distributed.processes import barrier
from kft.distributed.processes import is_primary
from kft.distributed.processes import primary_path
from kft.data._files import TEST_FOLDER
from kft.data._files import VAL_FOLDERS
from kft.data._files import split_folder
from kft.runs.config import TrainConfig
from kft.runs.config import load_config

CHECKPOINTS = "checkpoints"
# What `fine_tune` compiles: with `loss`, the names an epoch logs.
METRICS = ("accuracy",)


class RunSetupError(ValueError):
    """A setting, folder or model problem found before training started
    (`kft train` exits with status 2 on it, 1 on other failures)."""


@dataclasses.dataclass
class TrainRunResult:
    """What `train_run` did and where it wrote it.

    Attributes:
        out: The run folder.
        config: The resolved `TrainConfig` (also `out/config.toml`).
        class_names: Class names in label order.
        best_epoch: Kept epoch (0-based, across phases).
        best_value: Its `config.monitor` value.
        metrics: The evaluation on the validation set (a dict), or `{}`.
        history: Every epoch's logs, in order.
        reasons: Why the strategy was chosen (`"auto"`), else empty.
        files: Name -> path of every file written.
        resumed: Whether the run continued from a checkpoint.
        train_time: Seconds spent in training (this process).
    """

    out: str
    config: TrainConfig
    class_names: list
    best_epoch: int | None
    best_value: float | None
    metrics: dict
    history: list
    reasons: list
    files: dict
    resumed: bool
    train_time: float

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out


def _say_with(print_fn):
    return print_fn if print_fn is not None else (lambda *a, **k: None)


# -- resolving the config -----------------------------------------------------


def _layout(data_dir):
    """Whether `data_dir` holds `train/` and a val folder (any case, as
    `kft.data.from_directory` finds them)."""
    return (split_folder(data_dir, ("train",)) is not None
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
    _check_paths(config)
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


def _check_paths(config, named_in=None):
    """The folders and the weights file of `config` exist (`named_in`: the
    config file that names them, for the message)."""
    where = f" (named in {named_in!r})" if named_in else ""
    for name in ("data_dir", "val_dir"):
        folder = getattr(config, name)
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"{'Data' if name == 'data_dir' else 'Val'} "
                             f"folder {folder!r} does not exist{where}.")
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
    train = split_folder(config.data_dir, ("train",))
    # A val folder of class folders, not a class named "valid".
    split = val is not None and (train is not None or any(
        entry.is_dir() for entry in os.scandir(val)))
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


# -- data and model -------------------------------------------------------------


def _test_beside_classes(data_dir) -> bool:
    """Whether `data_dir` holds `<class>/` folders and a `test/` folder
    (not a class: `load_folder_data` leaves it out)."""
    return (split_folder(data_dir, ("train",)) is None
            and split_folder(data_dir, (TEST_FOLDER,)) is not None)


def _classes_without_test(data_dir):
    """`data_dir`, or for `<class>/` folders next to a `test/` folder a
    temporary folder linking the class folders alone
    (`kft.runs.folder.linked_dir`)."""
    from kft.runs.folder import linked_dir

    if not _test_beside_classes(data_dir):
        return data_dir
    return linked_dir({entry.name: entry.path
                       for entry in os.scandir(data_dir)
                       if entry.is_dir()
                       and entry.name.lower() != TEST_FOLDER})


def load_folder_data(config: TrainConfig):
    """`(train, val)` `kft.data` datasets of a resolved config.

    A `test/` folder next to the class folders is not a class: it holds
    held-out images (`kft compare` scores on it, `kft eval` takes it).
    With `val_dir`, the two folders are read as one `train/` + `val/`
    layout (`kft.runs.folder.layout_dir`), so val images get the eval
    transform and the class order of the train folder. `kft.data` reads a
    linked folder through its target: messages, skipped files and the
    datasets' paths name the user's files, not the links.
    """
    from kft import data as kft_data

    kwargs = dict(image_size=config.image_size, batch_size=config.batch_size,
                  augmentation=config.augment, seed=config.seed)
    classes = _classes_without_test(config.data_dir)
    try:
        if config.val_dir is None:
            return kft_data.from_directory(
                classes, validation_split=config.val_split, **kwargs)
        from kft.runs.folder import layout_dir

        return kft_data.from_directory(layout_dir(classes, config.val_dir),
                                       **kwargs)
    except ValueError as error:
        if classes == config.data_dir:
            raise
        # Messages name the user's folder, not the links.
        raise ValueError(str(error).replace(
            classes, config.data_dir)) from error


def _batch_augment(config, num_classes):
    from kft.augmentation.mixing import MixUpOrCutMix

    if config.mixup or config.cutmix:
        return MixUpOrCutMix(mixup_alpha=config.mixup,
                             cutmix_alpha=config.cutmix,
                             label_smoothing=config.label_smoothing,
                             num_classes=num_classes, seed=config.seed)
    if config.label_smoothing:
        return MixUpOrCutMix(prob=0.0, label_smoothing=config.label_smoothing,
                             num_classes=num_classes, seed=config.seed)
    return None


def build_run_model(config: TrainConfig, num_classes: int,
                    class_names=None):
    """The classifier a resolved config describes (carrying `class_names`,
    which `kft.export` and `kft.predict` then use).

    Raises:
        ValueError: the backbone cannot take `config.image_size` (the
            message names the size and the backbone's default).
    """
    from kft.models import registry
    from kft.models.classifier import build_classifier

    spec = registry.get_backbone(config.backbone)
    weights = None if config.weights == "none" else config.weights
    size = config.image_size
    try:
        return build_classifier(
            config.backbone, num_classes, weights=weights,
            input_shape=(size, size, 3), dropout=config.dropout,
            batch_augment=_batch_augment(config, num_classes),
            class_names=class_names)
    except ValueError as error:
        if "size" not in str(error).lower() and "shape" not in str(
                error).lower():
            raise
        raise ValueError(
            f"Backbone {spec.name!r} cannot take {size}x{size} images "
            f"({error}). Choose another image size; its default is "
            f"{spec.default_size}.") from error


# -- strategy and learning rate -------------------------------------------------


# `TrainConfig` fields that only phase 2 reads, as `fine_tune` names them
# (feature extraction's `epochs` go to its head phase).
_PHASE2_FIELDS = {"n_blocks": "n_blocks", "lr": "learning_rate",
                  "schedule": "schedule", "layer_decay": "layer_decay",
                  "unfreeze_every": "unfreeze_every"}


def _unused_settings(config):
    """Fields set to other than their defaults that `config.strategy`
    does not read."""
    from kft.training.fine_tune import PHASE2_ARGUMENTS

    defaults = TrainConfig()
    return [field for field, name in _PHASE2_FIELDS.items()
            if config.strategy not in PHASE2_ARGUMENTS[name]
            and getattr(config, field) != getattr(defaults, field)]


def _setting_list(config, fields):
    return ", ".join(f"`{field}` {getattr(config, field)!r}"
                     for field in fields)


def _choose_strategy(config, train, say):
    if config.strategy != "auto":
        unused = _unused_settings(config)
        if unused:
            raise ValueError(
                f"strategy {config.strategy!r} does not read "
                f"{_setting_list(config, unused)}: drop "
                f"{'it' if len(unused) == 1 else 'them'}, or choose a "
                "strategy that uses "
                f"{'it' if len(unused) == 1 else 'them'}.")
        return config, []
    from kft.adaptation.recommend import recommend_strategy

    rec = recommend_strategy(num_images=int(train.num_examples))
    kwargs = rec.fine_tune_kwargs()
    # The recommendation fills in what the settings leave at its default;
    # what the user set stays.
    defaults = TrainConfig()
    changes = {"strategy": kwargs["strategy"]}
    for field in ("bn", "n_blocks", "layer_decay"):
        if field in kwargs and getattr(config, field) == getattr(
                defaults, field):
            changes[field] = kwargs[field]
    reasons = list(rec.reasons)
    say(f"strategy auto -> {changes['strategy']}: " + " ".join(reasons))
    config = config.replace(**changes)
    unused = _unused_settings(config)
    if unused:
        # The config written records what ran.
        say(f"not used by {config.strategy}: "
            f"{_setting_list(config, unused)} (reset to the defaults).")
        config = config.replace(**{field: getattr(defaults, field)
                                   for field in unused})
    return config, reasons


def _fine_tune_kwargs(config):
    from kft.training.fine_tune import phase2_arguments

    # A config holds every setting; `fine_tune` refuses those the strategy
    # does not read (phase 2's for feature extraction).
    return phase2_arguments(config.strategy, dict(
        strategy=config.strategy, n_blocks=config.n_blocks,
        # Feature extraction is the head phase alone: it gets every epoch.
        head_epochs=config.head_epochs + (
            config.epochs if config.strategy == "feature_extraction" else 0),
        epochs=config.epochs,
        head_learning_rate=config.head_lr, learning_rate=config.lr,
        weight_decay=config.weight_decay, layer_decay=config.layer_decay,
        unfreeze_every=config.unfreeze_every, bn=config.bn,
        metrics=METRICS, monitor=config.monitor,
        early_stopping_patience=config.early_stopping,
        batch_size=config.batch_size, schedule=config.schedule))


def _describe_recipe(config, model):
    from kft.models.blocks import get_blocks

    phase2 = {"feature_extraction": None,
              "partial": f"partial (top {config.n_blocks} block(s) + head)",
              "gradual": f"gradual (one more block every "
                         f"{config.unfreeze_every} epoch(s))",
              "full": "full (every block)"}[config.strategy]
    head = config.head_epochs + (
        config.epochs if config.strategy == "feature_extraction" else 0)
    text = (f"recipe: head {head} epoch(s) at "
            f"{config.head_lr:g}")
    if phase2 and config.epochs:
        text += (f", then {phase2} {config.epochs} epoch(s) at "
                 f"{config.lr if isinstance(config.lr, str) else f'{config.lr:g}'}"
                 f" ({config.schedule}), BatchNorm {config.bn}")
        if config.layer_decay is not None:
            from kft.optimizers import layerwise_lr

            base = 1.0 if config.lr == "find" else config.lr
            rates = layerwise_lr(model, base, config.layer_decay)
            text += "; rate per block: " + ", ".join(
                f"{k} {v:.3g}" for k, v in rates.items())
    blocks = list(get_blocks(model))
    return text + f"; blocks: {' > '.join(blocks)}"


# -- the run folder -------------------------------------------------------------


def environment() -> dict:
    """Versions of Python, kft, Keras, JAX, NumPy; platform; JAX devices.

    Example:
    >>> sorted(environment())[:3]
    ['devices', 'jax', 'jaxlib']
    """
    import jax
    import keras
    import numpy

    import kft

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    return {
        "kft": kft.__version__, "keras": keras.__version__,
        "keras_backend": keras.backend.backend(), "jax": jax.__version__,
        "jaxlib": jaxlib_version, "numpy": numpy.__version__,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
    }


def _write_json(path, value):
    if not is_primary():  # several processes: process 0 writes
        return
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _write_history(out, rows):
    files = {}
    path = os.path.join(out, "history.json")
    _write_json(path, rows)
    files["history.json"] = path
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    path = os.path.join(out, "history.csv")
    files["history.csv"] = path
    if not is_primary():
        return files
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    files["history.csv"] = path
    return files


def phase_histories(history: list) -> list:
    """`history.json` rows as one `History.history` dict per phase (what
    `kft.evaluation.plots.plot_learning_curves` takes)."""
    phases = {}
    for row in history:
        logs = phases.setdefault(row.get("phase", 1), {})
        for key, value in row.items():
            if key not in ("epoch", "phase"):
                logs.setdefault(key, []).append(value)
    return [phases[k] for k in sorted(phases)]


def write_evaluation(model, data, class_names, out, *, history=None,
                     prefix="evaluation", top_k=5, plots=True):
    """Evaluates `model` on `data` (`kft.evaluate`) and writes the report
    (`<prefix>.json`, `<prefix>.md`) and, with matplotlib, its plots
    (`kft.evaluation.plots.save_report_plots`: confusion matrix, per-class
    F1, reliability, worst mistakes, learning curves from `history` rows)
    into `out` unless `plots=False`. Returns `(report, {name: path})`."""
    from kft.evaluation import evaluate

    report = evaluate(model, data, class_names=class_names, top_k=top_k)
    files = {}
    if not is_primary():  # all processes evaluate, process 0 writes
        return report, files
    path = os.path.join(out, f"{prefix}.json")
    report.to_json(path)
    files[f"{prefix}.json"] = path
    path = os.path.join(out, f"{prefix}.md")
    with open(path, "w") as f:
        f.write(report.to_markdown())
    files[f"{prefix}.md"] = path
    if not plots:
        return report, files
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return report, files
    written = report.save_plots(
        out, data=data,
        history=phase_histories(history) if history else None)
    files.update({os.path.basename(p): p for p in written})
    return report, files


def _skipped_files(*datasets):
    """`[{"path", "reason"}]` of the image files the loaders left out."""
    return [{"path": s.path, "reason": s.reason} for data in datasets
            if data is not None for s in getattr(data, "skipped", ())]


def _summary(result, env, requested, skipped=()):
    config = result.config
    lines = [f"# kft run: {os.path.basename(os.path.abspath(result.out))}",
             "",
             f"Fine-tuned `{config.backbone}` ("
             + ("random-init" if config.weights == "none"
                else f"{config.weights}") + " weights) on "
             f"`{config.data_dir}` ({len(result.class_names)} classes) at "
             f"{config.image_size}x{config.image_size}, strategy "
             f"`{config.strategy}`"
             + (" (chosen by `auto`)" if requested.get("strategy") == "auto"
                else "") + ".", ""]
    if result.reasons:
        lines += ["Why this strategy:", ""]
        lines += [f"- {r}" for r in result.reasons] + [""]
    if result.best_epoch is not None:
        lines.append(f"Kept epoch {result.best_epoch + 1} of "
                     f"{len(result.history)} ({config.monitor} = "
                     f"{result.best_value:.4g}).")
    metrics = result.metrics
    if metrics:
        lines.append(
            f"Validation ({metrics['num_examples']} images): accuracy "
            f"{metrics['accuracy']:.4f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f}, macro F1 "
            f"{metrics['macro']['f1']:.4f}, top-{metrics['top_k']} "
            f"{metrics['top_k_accuracy']:.4f} (`evaluation.md`).")
    if skipped:
        lines += ["", f"Skipped {len(skipped)} image file(s) the loader "
                  "could not use (all listed in `run.json`, "
                  "`skipped_files`):", ""]
        lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"- ... and {len(skipped) - 10} more")
    lines += ["", "Files:", ""]
    lines += [f"- `{name}`" for name in sorted(result.files)]
    lines += ["", f"kft {env['kft']}, Keras {env['keras']}, JAX {env['jax']}"
              f", devices {', '.join(env['devices'])}.", "",
              "Repeat: `kft train --config config.toml --out runs/NEW`; "
              "evaluate: `kft eval <this folder> DATA_DIR`; predict: "
              "`kft predict <this folder> IMAGES`.", ""]
    return "\n".join(lines)


# -- train_run ------------------------------------------------------------------


def _prepare_out(config, resume, say):
    """`(config, run_info, resumed, created)`: the folder made (`created`:
    by this call), or read to resume."""
    out = config.out
    status_path = os.path.join(out, "run.json")
    if resume:
        if not os.path.exists(os.path.join(out, "config.toml")):
            raise ValueError(
                f"Nothing to resume in {out!r}: no config.toml there. Start "
                "the run without --resume.")
        path = os.path.join(out, "config.toml")
        # The run continues in `out` wherever it is now, not in the folder
        # its config names (relative to where it started).
        saved = load_config(path).replace(out=out)
        info = _read_json(status_path) if os.path.exists(status_path) else {}
        if info.get("status") != "complete":
            _check_paths(saved, named_in=path)
        return saved, info, True, False
    if not is_primary():  # process 0 checks and makes the folder
        return config, {}, False, False
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"Run folder {out!r} is a file; pass another "
                         "--out (a folder to create, or an empty one).")
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(
            f"Run folder {out!r} exists and is not empty: continue it with "
            "--resume, or pass another --out.")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Run folder {out!r} cannot be created "
                         f"({error.strerror or error}); pass another "
                         "--out.") from error
    return config, {}, False, created


def _discard_unstarted(out, created):
    """Removes what a new run wrote before its first epoch ended (nothing
    to resume), so that the same `out` takes a corrected run."""
    from kft.runs.backup import STATE_FILE

    if not is_primary() or os.path.exists(
            os.path.join(out, CHECKPOINTS, STATE_FILE)):
        return
    shutil.rmtree(os.path.join(out, CHECKPOINTS), ignore_errors=True)
    for name in ("config.toml", "environment.json", "run.json"):
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    if created and not os.listdir(out):
        os.rmdir(out)


def train_run(config: TrainConfig | None = None, *, resume: bool = False,
              verbose: int = 1, print_fn: Callable | None = print,
              command: list | None = None, **settings) -> TrainRunResult:
    """Fine-tunes a backbone on an image folder; writes a run folder.

    Reads `data_dir` with `kft.data.from_directory`, builds the classifier
    (`kft.build_classifier`), picks the strategy with
    `kft.recommend_strategy` for `strategy="auto"`, runs `kft.fine_tune`
    with a `kft.runs.RunBackup` checkpointing every epoch, keeps the best
    epoch's weights, evaluates on the validation set and writes the run
    folder (see the module docstring).

    Resuming: `resume=True` with the same `out` reads the folder's
    `config.toml` (other settings are ignored) and continues from the last
    epoch checkpointed, with its weights, optimizer state, trainable set
    and history; a run that completed is reported and not retrained. The
    data order after a resume is not the uninterrupted run's (the input
    pipeline starts anew). A new run that fails (or is interrupted) before
    its first epoch ends removes what it wrote, so `out` takes the
    corrected run without `resume`.

    Args:
        config: A `TrainConfig`. Defaults to `TrainConfig()`.
        resume: Continue the run in `out`. Defaults to `False`.
        verbose: Keras progress bars (1), one line per epoch (2) or
            nothing (0). Defaults to `1`.
        print_fn: Where kft's own lines go (`None`: nowhere). Defaults to
            `print`.
        command: The command line, recorded in `run.json`.
        **settings: `TrainConfig` fields overriding `config`'s.

    Returns:
        A `TrainRunResult`.

    Raises:
        ValueError: a bad setting (a `monitor` no epoch logs included),
            missing folder, fewer than two classes, unknown backbone, an
            image size the backbone cannot take, or a run folder that
            exists (without `resume`) or cannot be created (a file).

    Example (trains; see tests/test_cli_train.py):
    >>> import kft
    >>> result = kft.train_run(data_dir="photos", backbone="simple_cnn",
    ...                        weights="none", out="runs/photos"
    ...                        )  # doctest: +SKIP
    >>> sorted(result.files)  # doctest: +SKIP
    ['config.toml', 'environment.json', 'evaluation.json', ...]
    """
    say = _say_with(print_fn)
    try:
        config = (config or TrainConfig()).replace(**settings)
        if resume and config.out is None:
            raise ValueError("resume needs the run folder: pass out=.")
        if not resume:
            config = resolve_config(config)
        config, info, resumed, created = _prepare_out(config, resume, say)
    except ValueError as error:
        raise RunSetupError(str(error)) from error
    if resumed and info.get("status") == "complete":
        say(f"Run {config.out!r} is complete; nothing to resume.")
        return _completed_result(config, info)
    try:
        return _train(config, info, resumed, verbose, say, command)
    except BaseException:
        if not resumed:
            _discard_unstarted(config.out, created)
        raise


def _setup(config, info, say):
    """Data, strategy, model and rate: `(config, train, val, model,
    reasons)`; a `ValueError` here is a `RunSetupError`."""
    import keras

    keras.utils.set_random_seed(config.seed)
    try:
        train, val = load_folder_data(config)
        say(f"data: {train.num_examples} training images in "
            f"{len(train.class_names)} classes"
            + (f", {val.num_examples} validation images" if val else "")
            + f" ({config.data_dir}"
            + (f"; {TEST_FOLDER}/ is held out, not a class"
               if _test_beside_classes(config.data_dir) else "")
            + f"); image size {config.image_size}")
        config, reasons = _choose_strategy(config, train, say)
        model = build_run_model(config, len(train.class_names),
                                class_names=list(train.class_names))
        # fine_tune's own checks, before the run folder is written: a
        # bad setting is a usage error, not a failed run.
        from kft.training.fine_tune import check_fine_tune_arguments

        check_fine_tune_arguments(model, train, val,
                                  **_fine_tune_kwargs(config))
    except ValueError as error:
        raise RunSetupError(str(error)) from error
    return config, train, val, model, reasons or info.get("reasons", [])


def _train(config, info, resumed, verbose, say, command):
    from kft.runs.backup import RunBackup
    from kft.training.fine_tune import fine_tune

    out = config.out
    requested = info.get("requested") or {"strategy": config.strategy,
                                          "lr": config.lr}
    config, train, val, model, reasons = _setup(config, info, say)
    class_names = list(train.class_names)
    kwargs = _fine_tune_kwargs(config)
    env = environment()
    files = {}
    if not resumed and is_primary():
        path = os.path.join(out, "config.toml")
        with open(path, "w") as f:
            f.write(config.to_toml())
        files["config.toml"] = path
        path = os.path.join(out, "environment.json")
        _write_json(path, env)
        files["environment.json"] = path
    run_info = {"status": "running", "requested": requested,
                "reasons": reasons, "class_names": class_names,
                "image_size": config.image_size, "backbone": config.backbone,
                "command": command or info.get("command"),
                # The run folder says which files did not train (the
                # loader's warning scrolls by).
                "skipped_files": _skipped_files(train, val),
                "started": info.get("started")
                or datetime.datetime.now().isoformat(timespec="seconds")}
    _write_json(os.path.join(out, "run.json"), run_info)
    say(_describe_recipe(config, model))
    backup = RunBackup(os.path.join(out, CHECKPOINTS), model,
                       monitor=config.monitor,
                       print_fn=say)
    if resumed and not backup.resumable():
        say("no checkpoint yet: starting the run from its first epoch.")
    start = time.perf_counter()
    tuned = fine_tune(model, train, val, callbacks=[backup],
                      verbose=verbose, **kwargs)
    if config.lr == "find" and getattr(tuned, "learning_rate", None):
        # The rate the finder chose, so that the config repeats the run.
        say(f"lr find -> {tuned.learning_rate:.3g}")
        config = config.replace(lr=float(tuned.learning_rate))
        if is_primary():
            with open(os.path.join(out, "config.toml"), "w") as f:
                f.write(config.to_toml())
    train_time = time.perf_counter() - start
    barrier("kft-train-run-fitted")  # process 0's last writes are done
    # The best epoch over the whole run, epochs before a resume included.
    backup.load_best(model)
    model_path = os.path.join(out, "model.keras")
    model.save(primary_path(model_path))  # a collective: every process
    files["model.keras"] = model_path
    history = [dict(epoch=epoch + 1, **backup.history[epoch])
               for epoch in sorted(backup.history)]
    files.update(_write_history(out, history))
    metrics = {}
    if val is not None:
        report, eval_files = write_evaluation(model, val, class_names, out,
                                              history=history,
                                              plots=config.plots)
        files.update(eval_files)
        metrics = report.to_dict()
    for name in ("config.toml", "environment.json", "run.json"):
        files[name] = os.path.join(out, name)
    result = TrainRunResult(
        out=out, config=config, class_names=class_names,
        best_epoch=backup.best_epoch, best_value=backup.best_value,
        metrics=metrics, history=history, reasons=reasons, files=files,
        resumed=resumed, train_time=train_time)
    path = os.path.join(out, "summary.md")
    files["summary.md"] = path
    if is_primary():
        with open(path, "w") as f:
            f.write(_summary(result, env, requested,
                             run_info["skipped_files"]))
        shutil.rmtree(os.path.join(out, CHECKPOINTS), ignore_errors=True)
    run_info.update(
        status="complete", best_epoch=backup.best_epoch,
        best_value=backup.best_value, monitor=config.monitor,
        train_time_s=round(train_time, 2), resumed=resumed,
        files=sorted(files),
        finished=datetime.datetime.now().isoformat(timespec="seconds"))
    _write_json(os.path.join(out, "run.json"), run_info)
    return result


def _completed_result(config, info):
    out = config.out
    history_path = os.path.join(out, "history.json")
    history = _read_json(history_path) if os.path.exists(
        history_path) else []
    metrics_path = os.path.join(out, "evaluation.json")
    metrics = _read_json(metrics_path) if os.path.exists(
        metrics_path) else {}
    return TrainRunResult(
        out=out, config=config, class_names=info.get("class_names", []),
        best_epoch=info.get("best_epoch"), best_value=info.get("best_value"),
        metrics=metrics, history=history, reasons=info.get("reasons", []),
        files={name: os.path.join(out, name) for name in info.get("files", [])},
        resumed=True, train_time=0.0)
