"""`kft train`: a run folder from an image folder (`kft.train_run`)."""

import json
import os
import re
import shlex
import sys
import tomllib

from kft._paths import not_a_folder
from kft.cli._checks import PATH_ARGUMENTS
from kft.cli._checks import Usage
from kft.cli._checks import check_out_folder
from kft.cli._checks import flag_names
from kft.cli._checks import start_library


def train_command(args, argv):
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "config", "resume", "quiet", "json")}
    if "val_split" in given and given["val_split"] == 0:
        given["val_split"] = None
    from kft.runs.config import TrainConfig
    from kft.runs.config import load_config

    if args.resume:
        extra = sorted(set(given) - {"out"})
        if "out" not in given:
            raise Usage("--resume needs --out, the run folder to continue")
        if extra or args.config:
            raise Usage(
                "--resume continues the run as its config.toml says; drop "
                # DATA_DIR is no flag ("--data-dir" was named).
                + ", ".join([flag_names(f"`{k}`") for k in extra]
                            + (["--config"] if args.config else []))
                + " (or start a new run with another --out)")
    try:
        config = load_config(args.config) if args.config else TrainConfig()
        home = {  # "~" in the file, as on the command line
            name: os.path.expanduser(getattr(config, name))
            for name in PATH_ARGUMENTS
            if isinstance(getattr(config, name, None), str)}
        config = config.replace(**{**home, **given})
        if not args.resume:
            config.check()
    except ValueError as error:
        raise Usage(flag_names(str(error))
                    + _from_config_file(args.config, given, str(error))
                    ) from error
    if not args.resume and config.data_dir is None:
        raise Usage("the following arguments are required: DATA_DIR (or "
                     "data_dir in --config)")
    if not args.resume:
        # Before Keras loads: a typo should not wait for it. (The same
        # check as `kft.runs.resolve_config`.)
        for folder, what in ((config.data_dir, "Data"),
                             (config.val_dir, "Val")):
            reason = folder is not None and not_a_folder(folder)
            if reason:
                raise Usage(f"{what} folder {folder!r} {reason}.")
        if config.out is not None:
            check_out_folder(config.out)
    start_library()
    from kft.runs.backup import STATE_FILE
    from kft.runs.resolve import monitor_change
    from kft.runs.resolve import resolve_config
    from kft.runs.train import CHECKPOINTS
    from kft.runs.train import RunSetupError
    from kft.runs.train import train_run

    quiet = args.quiet or args.json
    if not args.resume:
        given = config
        try:
            config = resolve_config(config)  # the run folder, named below
        except ValueError as error:
            raise Usage(flag_names(str(error))) from error
        notice = monitor_change(given, config)
        if notice and not quiet:
            print(flag_names(notice))
    say = None if args.json else print
    try:
        result = train_run(config, resume=args.resume,
                           verbose=0 if quiet else 1,
                           # Setting names as the flags that set them.
                           print_fn=None if quiet else (
                               lambda line: say(flag_names(line))),
                           command=["kft"] + list(
                               argv if argv is not None else sys.argv[1:]))
    except RunSetupError as error:
        raise Usage(flag_names(str(error))) from error
    except (KeyboardInterrupt, Exception) as error:
        # Epochs are checkpointed: the run continues where it stopped once
        # the cause is dealt with (Ctrl-C, a full disk, a lost mount).
        if os.path.exists(os.path.join(config.out, CHECKPOINTS,
                                       STATE_FILE)):
            hint = ("continue the run with: kft train --resume --out "
                    f"{shlex.quote(config.out)}")
            if isinstance(error, KeyboardInterrupt):
                print(f"kft train: {hint}", file=sys.stderr)
            else:
                error.add_note(hint)
        raise
    from kft.distributed.processes import is_primary

    if not is_primary():  # launched: process 0 wrote the run and says so
        return 0
    if args.json:
        print(json.dumps(_train_summary(result), default=str))
    else:
        print(_train_text(result))
    return 0


def _train_summary(result):
    # Counted from 0, as run.json and `TrainRunResult` (one key, one meaning);
    # the text output counts from 1, as the logs print epochs.
    return {"out": result.out, "best_epoch": result.best_epoch,
            "monitor": result.config.monitor,
            "best_value": result.best_value,
            "strategy": result.config.strategy, "reasons": result.reasons,
            "val": {k: result.metrics.get(k) for k in (
                "accuracy", "balanced_accuracy", "top_k", "top_k_accuracy")}
            if result.metrics else {},
            "train_time_s": round(result.train_time, 2),
            "resumed": result.resumed,
            "files": {k: v for k, v in sorted(result.files.items())}}


def _train_text(result):
    lines = [f"Done: {result.out}"]
    if result.best_epoch is not None:
        lines.append(f"  best epoch {result.best_epoch + 1} of "
                     f"{len(result.history)}: {result.config.monitor} "
                     f"{result.best_value:.4g}")
    m = result.metrics
    if m:
        lines.append(f"  validation ({m['num_examples']} images): accuracy "
                     f"{m['accuracy']:.4f}, balanced accuracy "
                     f"{m['balanced_accuracy']:.4f}, macro F1 "
                     f"{m['macro']['f1']:.4f}")
    lines.append(f"  training time {result.train_time:.1f} s"
                 + (" (this attempt)" if result.resumed else ""))
    lines.append(f"  wrote: {', '.join(sorted(result.files))}")
    # Quoted: a path with spaces must copy as one argument.
    lines.append(f"  next: kft eval {shlex.quote(result.out)} DATA_DIR")
    return "\n".join(lines)


def _from_config_file(path, given, message):
    """" (set in config file PATH)" when a setting the message names came
    from `--config` (the message names the flag, which was not given)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            keys = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return ""  # the message names the file already
    unset = keys.get("unset", [])
    keys = [*keys, *(unset if isinstance(unset, list) else [])]
    named = [k for k in keys if isinstance(k, str) and k not in given
             and re.search(rf"\b{re.escape(k)}=", message)]
    return f" (set in config file {path!r})" if named else ""
