"""`train_run`: fine-tune on an image folder and leave a run folder.

The run folder (`out`):

- `config.toml`: the settings, every default resolved (repeat the run
  with `kft train --config`);
- `environment.json`: library versions, Python, platform, JAX devices;
- `run.json`: status (`running` / `complete`), what was asked for and
  what was resolved (`strategy="auto"`, `lr="find"`), class names, the
  image files the loader skipped (`skipped_files`), best epoch (0-based,
  as `TrainRunResult.best_epoch` and `kft train --json`; `summary.md` and the
  console count from 1, as the logs print epochs), timings,
  the files written;
- `checkpoints/`: `kft.runs.RunBackup`'s state while training (what
  `--resume` continues from), removed when the run completes;
- `model.keras`: the model with the kept (best) epoch's weights;
- `history.csv`, `history.json`: every epoch's logs, phase included;
- `evaluation.json`, `evaluation.md`: the report on the validation set;
- `learning_curves.png`, `confusion_matrix.png`: with matplotlib;
- `summary.md`: what ran and where everything is.
"""

import dataclasses
import datetime
import os
import shutil
import time
from typing import Callable

from kft._validation import check_verbose
from kft._writing import write_file
from kft._writing import written_beside
from kft.distributed.processes import barrier
from kft.distributed.processes import is_primary
from kft.distributed.processes import primary_path
from kft.data._files import SYSTEM_FILES
from kft.data._files import TEST_FOLDER
from kft.runs.claim import FolderInUse
from kft.runs.claim import cannot_write
from kft.runs.claim import inside
from kft.runs.claim import lock_folder
from kft.runs.claim import unlock_folder
from kft.runs.config import TrainConfig
from kft.runs.config import load_config
from kft.runs.recipe import build_run_model
from kft.runs.recipe import choose_strategy
from kft.runs.recipe import describe_recipe
from kft.runs.recipe import fine_tune_kwargs
from kft.runs.recipe import load_folder_data
from kft.runs.recipe import test_beside_classes
from kft.runs.report import environment
from kft.runs.report import read_json
from kft.runs.report import run_summary
from kft.runs.report import skipped_files
from kft.runs.report import write_evaluation
from kft.runs.report import write_history
from kft.runs.report import write_json
from kft.runs.resolve import check_paths
from kft.runs.resolve import monitor_change
from kft.runs.resolve import resolve_config
from kft.runs.same_data import check_same_data
from kft.runs.same_data import data_record

CHECKPOINTS = "checkpoints"


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
        train_time: Seconds spent in training by this call (a resumed
            run's earlier attempts not included).
    """

    out: str
    config: TrainConfig
    class_names: list
    best_epoch: int | None
    best_value: float | None
    # Left out of the repr: 40 KB of report at 100 classes.
    metrics: dict = dataclasses.field(repr=False)
    history: list = dataclasses.field(repr=False)
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


def _prepare_out(config, resume, say):
    """`(config, run_info, resumed, created, lock)`: the folder made
    (`created`: by this call), or read to resume, and this process's lock
    on it (see `_claim`)."""
    out = config.out
    status_path = os.path.join(out, "run.json")
    if resume:
        if not os.path.exists(os.path.join(out, "config.toml")):
            raise ValueError(_nothing_to_resume(out))
        path = os.path.join(out, "config.toml")
        # The run continues in `out` wherever it is now, not in the folder
        # its config names (relative to where it started).
        saved = load_config(path).replace(out=out)
        finished = _finished(out)
        info = read_json(status_path, (
            "the run finished (its model.keras is whole): restore run.json "
            "to report it, or start a new run with another --out"
            if finished else "restore it, or delete it to resume without "
            "its record of the run (the classes a resume checks the data "
            "against, its command and start)")) if os.path.exists(
                status_path) else {}
        if info.get("status") == "complete":
            return saved, info, True, False, None  # read, not written
        if not info and finished:
            # Resuming trained it again from its first epoch and replaced
            # the model.
            raise ValueError(
                f"Run folder {out!r} holds a model.keras and no "
                "checkpoints: a run that finished, whose run.json (which "
                "records that) is gone. Resuming would train it again from "
                "its first epoch and replace model.keras: restore run.json, "
                "or start a new run with another --out.")
        check_paths(saved, named_in=path)
        # Before anything is loaded or written.
        from kft.runs.backup import check_backup_folder

        check_backup_folder(os.path.join(out, CHECKPOINTS))
        # Process 0 writes the folder (several processes: one lock).
        lock = _claim(out, created=False, resume=True) if is_primary() \
            else None
        return saved, info, True, False, lock
    for flag, folder in (("DATA_DIR", config.data_dir),
                         ("--val-dir", config.val_dir)):
        if folder and inside(out, folder):
            # Its files (and the folders above them, made here) would be
            # read as a class by this run and every later one.
            raise ValueError(
                f"Run folder {out!r} is inside {flag} {folder!r}, where it "
                "would be read as a class folder; pass an --out outside "
                "the image folders.")
    if not is_primary():  # process 0 checks and makes the folder
        return config, {}, False, False, None
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"Run folder {out!r} is a file; pass another "
                         "--out (a folder to create, or an empty one).")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Run folder {out!r} cannot be created "
                         f"({error.strerror or error}); pass another "
                         "--out.") from error
    # Checked under the lock: two runs started together both found the
    # folder empty and wrote into each other's.
    lock = _claim(out, created)
    # Hidden entries and Windows' folder files aside: Finder's .DS_Store
    # or Jupyter's .ipynb_checkpoints in a folder the user sees as empty
    # sent them from "not empty: --resume" to "nothing to resume".
    held = sorted(name for name in os.listdir(out)
                  if not name.startswith(".")
                  and name.lower() not in SYSTEM_FILES)
    if held:
        unlock_folder(lock)
        raise ValueError(
            f"Run folder {out!r} exists and is not empty (it holds "
            f"{', '.join(held[:3])}{', ...' if len(held) > 3 else ''}): "
            "continue it with --resume, or pass another --out.")
    return config, {}, False, created, lock


def _nothing_to_resume(out):
    held = [name for name in ("run.json", CHECKPOINTS, "model.keras")
            if os.path.exists(os.path.join(out, name))]
    if not held:
        return (f"Nothing to resume in {out!r}: no config.toml there. "
                "Start the run without --resume.")
    # Not "start without --resume": a new run there is refused as a
    # folder that holds a run (the user went round in circles).
    return (f"Run folder {out!r} holds a run ({', '.join(held)}) but no "
            "config.toml, the settings a resume reads: restore it (run.json "
            "names the command that started the run), or start a new run "
            "with another --out.")


def _finished(out):
    """Whether the files of `out` say its run finished (run.json aside):
    a model.keras, and the checkpoints removed (they go once the run is
    recorded complete)."""
    from kft.runs.backup import STATE_FILE

    return os.path.exists(os.path.join(out, "model.keras")) and not \
        os.path.exists(os.path.join(out, CHECKPOINTS, STATE_FILE))


def _claim(out, created, resume=False):
    """This process's lock on `out`, once files can be written there;
    raises `ValueError` (removing a folder it `created`) otherwise."""
    instead = ("make it writable to resume" if resume
               else "pass another --out")
    problem = cannot_write(out)
    if problem is not None:
        # Found now, not when the first file is written after loading
        # the data and building the model.
        if created:
            os.rmdir(out)
        raise ValueError(f"Run folder {out!r} is not writable ({problem}); "
                         f"{instead}.")
    try:
        return lock_folder(out)
    except FolderInUse:
        # Not removed even if `created`: both runs may have made it.
        raise ValueError(
            f"Run folder {out!r} is being written by another process (a "
            "kft run or resume started on it); wait for it to end"
            + ("." if resume else ", or pass another --out.")) from None


def _complete(out):
    path = os.path.join(out, "run.json")
    return os.path.exists(path) and read_json(path).get(
        "status") == "complete"


def _discard_unstarted(out, created):
    """Removes what a new run wrote before its first epoch ended (nothing
    to resume), so that the same `out` takes a corrected run."""
    from kft.runs.backup import STATE_FILE

    if not is_primary() or os.path.exists(
            os.path.join(out, CHECKPOINTS, STATE_FILE)) or _complete(out):
        return  # something to resume, or a run that finished
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
    and history, and its training data go on with the passes (shuffled
    orders, augmentation draws) the uninterrupted run would have read; a
    run that completed is reported and not retrained. A new run that
    fails (or is interrupted) before its first epoch ends removes what it
    wrote, so `out` takes the corrected run without `resume`. The run
    seeds Keras, NumPy and Python with `config.seed`
    (`keras.utils.set_random_seed`, process-wide), as `kft train --seed`
    does.

    Args:
        config: A `TrainConfig`. Defaults to `TrainConfig()`.
        resume: Continue the run in `out`. Defaults to `False`.
        verbose: Keras progress bars (1, also `"auto"` and `True`), one
            line per epoch (2) or nothing (0). Defaults to `1`.
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
    >>> sorted(result.files)[:3]  # doctest: +SKIP
    ['config.toml', 'confusion_matrix.png', 'confusion_matrix_normalized.png']
    """
    say = _say_with(print_fn)
    try:
        verbose = check_verbose(verbose)
        config = (config or TrainConfig()).replace(**settings)
        # Paths as text: the result (`to_dict`, JSON) and config.toml hold
        # strings, and a config read back must equal the run's.
        config = config.replace(**{
            name: os.fspath(getattr(config, name))
            for name in ("data_dir", "val_dir", "weights", "out")
            if isinstance(getattr(config, name), os.PathLike)})
        if resume and config.out is None:
            raise ValueError("resume needs the run folder: pass out=.")
        if not resume:
            given = config
            config = resolve_config(config)
            notice = monitor_change(given, config)
            if notice:
                say(notice)
        config, info, resumed, created, lock = _prepare_out(config, resume,
                                                            say)
    except ValueError as error:
        raise RunSetupError(str(error)) from error
    try:
        if resumed and info.get("status") == "complete":
            say(f"Run {config.out!r} is complete; nothing to resume.")
            return _completed_result(config, info)
        try:
            return _train(config, info, resumed, verbose, say, command)
        except BaseException:
            if not resumed:
                _discard_unstarted(config.out, created)
            raise
    finally:
        unlock_folder(lock)


def _setup(config, info, say):
    """Data, strategy, model and rate: `(config, train, val, model,
    reasons)`; a `ValueError` here is a `RunSetupError`."""
    import keras

    keras.utils.set_random_seed(config.seed)
    try:
        train, val = load_folder_data(config)
        if info:  # resumed: the data the run began with
            check_same_data(info, config, train, val)
        say(f"data: {train.num_examples} training images in "
            f"{len(train.class_names)} classes"
            + (f", {val.num_examples} validation images" if val else "")
            + f" ({config.data_dir}"
            + (f"; {TEST_FOLDER}/ is held out, not a class"
               if test_beside_classes(config.data_dir) else "")
            + f"); image size {config.image_size}")
        config, reasons = choose_strategy(config, train, say)
        model = build_run_model(config, len(train.class_names),
                                class_names=list(train.class_names))
        # fine_tune's own checks, before the run folder is written: a
        # bad setting is a usage error, not a failed run.
        from kft.training.fine_tune import check_fine_tune_arguments

        check_fine_tune_arguments(model, train, val,
                                  **fine_tune_kwargs(config))
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
    kwargs = fine_tune_kwargs(config)
    env = environment()
    files = {}
    if not resumed and is_primary():
        path = os.path.join(out, "config.toml")
        write_file(path, config.to_toml(), replace_links=True)
        files["config.toml"] = path
        path = os.path.join(out, "environment.json")
        write_json(path, env)
        files["environment.json"] = path
    run_info = {"status": "running", "requested": requested,
                "reasons": reasons, "class_names": class_names,
                "data": data_record(train, val),
                "image_size": config.image_size, "backbone": config.backbone,
                # The command that started the run; a resume's own are
                # listed after it.
                "command": info.get("command") if resumed else command,
                # The run folder says which files did not train (the
                # loader's warning scrolls by).
                "skipped_files": skipped_files(train, val),
                "started": info.get("started")
                or datetime.datetime.now().isoformat(timespec="seconds")}
    if resumed:
        run_info["resume_commands"] = info.get("resume_commands", []) + (
            [command] if command is not None else [])
    write_json(os.path.join(out, "run.json"), run_info)
    say(describe_recipe(config, model))
    backup = RunBackup(os.path.join(out, CHECKPOINTS), model,
                       monitor=config.monitor,
                       print_fn=say, data=train)
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
            write_file(os.path.join(out, "config.toml"), config.to_toml(),
                       replace_links=True)
    train_time = time.perf_counter() - start
    barrier("kft-train-run-fitted")  # process 0's last writes are done
    # The best epoch over the whole run, epochs before a resume included.
    backup.load_best(model)
    model_path = os.path.join(out, "model.keras")
    # Beside, then moved over (a kill or a reader during the save saw a
    # truncated model.keras); a collective: every process saves.
    with written_beside(primary_path(model_path),
                        replace_links=True) as target:
        model.save(target)
    files["model.keras"] = model_path
    history = [dict(epoch=epoch + 1, **backup.history[epoch])
               for epoch in sorted(backup.history)]
    files.update(write_history(out, history))
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
        # Escaped: a skipped file's name of another encoding failed here,
        # after training, on every resume too.
        write_file(path, run_summary(result, env, requested,
                                     run_info["skipped_files"]),
                   replace_links=True)
    run_info.update(
        status="complete", best_epoch=backup.best_epoch,
        best_value=backup.best_value, monitor=config.monitor,
        train_time_s=round(train_time, 2), resumed=resumed,
        files=sorted(files),
        finished=datetime.datetime.now().isoformat(timespec="seconds"))
    write_json(os.path.join(out, "run.json"), run_info)
    # After the run is marked complete: a kill while the checkpoints went
    # read as a run with nothing saved (or a broken one) and trained again.
    _remove_checkpoints(out)
    return result


def _remove_checkpoints(out):
    if is_primary():
        shutil.rmtree(os.path.join(out, CHECKPOINTS), ignore_errors=True)


def _completed_result(config, info):
    out = config.out
    _remove_checkpoints(out)  # what a kill at the very end left
    history_path = os.path.join(out, "history.json")
    # Reports of the run, not needed to report it.
    remedy = "delete it to report the run without it"
    history = read_json(history_path, remedy) if os.path.exists(
        history_path) else []
    metrics_path = os.path.join(out, "evaluation.json")
    metrics = read_json(metrics_path, remedy) if os.path.exists(
        metrics_path) else {}
    return TrainRunResult(
        out=out, config=config, class_names=info.get("class_names", []),
        best_epoch=info.get("best_epoch"), best_value=info.get("best_value"),
        metrics=metrics, history=history, reasons=info.get("reasons", []),
        files={name: os.path.join(out, name) for name in info.get("files", [])},
        resumed=True, train_time=0.0)
