"""Argument types and checks of the `kft` command, and what every
subcommand shares: the usage error (exit status 2), output folders, the
library started on first use, and library names read as flags."""

import argparse
import math
import os


class Usage(Exception):
    """A problem with the command line or its inputs: exit status 2."""


def int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}. Received: {text!r}")
        return value

    return parse


def float_at_least(minimum, *, above=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        # Finite: "inf" passed here and failed later, in the library's
        # words (a Python argument, or "--end must be above --start").
        if value is None or not math.isfinite(value) or value < minimum or (
                above and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if above else '>='} "
                f"{minimum}. Received: {text!r}")
        return value

    return parse


def rate_or_find(text):
    if text == "find":
        return text
    return float_at_least(0.0, above=True)(text)


def fraction(text):
    value = float_at_least(0.0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1) (0: no validation split). Received: {text!r}")
    return value


# The arguments that name files or folders. "~" in them is the home
# folder, as a shell would read it where it does not (`--out=~/runs`, a
# quoted path, config.toml): a folder named "~" was made instead.
PATH_ARGUMENTS = ("data_dir", "val_dir", "test_dir", "weights", "out",
                  "config", "run", "images", "plot")


def expand_home(args):
    """`args` with "~" expanded in its `PATH_ARGUMENTS`."""
    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) for v in value])
    return args


def writable_directory(text):
    from kft.runs.claim import cannot_write

    text = os.path.expanduser(text)
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"must be an existing directory. Received: {text!r}")
    # A file made, not permission bits: they say nothing for root.
    if cannot_write(text) is not None:
        raise argparse.ArgumentTypeError(
            f"must be a directory you can write to. Received: {text!r}")
    return text


def check_out_folder(path, flag="--out"):
    """A folder to write results into: existing, or a path to create."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise Usage(f"{flag} {path!r} is a file, not a folder; pass a "
                     "folder (it is created if missing)")


def linked(path, shown=None):
    """`path` as shown (`shown`, else its repr), and where it leads if it
    is a symbolic link: a file written there is written through it (a
    folder from elsewhere can hold links pointing anywhere)."""
    shown = repr(path) if shown is None else shown
    if os.path.islink(path):
        return f"{shown} (a link to {os.readlink(path)!r})"
    return shown


def kept_files(out, names, flag, what, overwrite):
    """The files among `names` that `out` already holds (links included);
    raises `Usage` naming them (a link with where it leads) unless
    `overwrite`."""
    kept = [name for name in names
            if os.path.lexists(os.path.join(out, name))]
    if kept and not overwrite:
        raise Usage(f"{flag} {out!r} already holds {what} ("
                    + ", ".join(linked(os.path.join(out, name), name)
                                for name in kept)
                    + "); pass --overwrite to replace it, or another --out")
    return kept


def check_out_outside(path, flag, folders):
    """Refuses an output folder inside one of the image folders
    `folders` (`(flag, path)` pairs, `None` paths skipped): its reports
    and plots would be read as a class by the next load of that folder."""
    from kft.runs.claim import inside

    for name, folder in folders:
        if folder and inside(path, folder):
            raise Usage(f"{flag} {path!r} is inside {name} {folder!r}, "
                        "where it would be read as a class folder; pass a "
                        "path outside the image folders")


# The folders `make_out_folder` made for the running command, deepest
# first: `kft.cli.main` removes those still empty when the command fails
# (an interrupted `kft lr-find --plot new/lr.png` left `new/` behind).
_made = []


def make_out_folder(path, flag="--out"):
    """Creates the folder if missing; raises `Usage` unless files can be
    written there (found before the work, not when its results are)."""
    from kft.runs.claim import cannot_write

    check_out_folder(path, flag)
    missing, folder = [], os.path.abspath(path)
    while not os.path.exists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise Usage(f"{flag} {path!r}: cannot create the folder "
                     f"({error.strerror or error})") from error
    _made.extend(missing)
    problem = cannot_write(path)
    if problem is not None:
        raise Usage(f"{flag} {path!r}: cannot write into the folder "
                     f"({problem})")


def remove_made_folders(failed):
    """Forgets the folders made for the command; removes those still empty
    when it `failed` (a folder kft did not make is never removed)."""
    while _made:
        folder = _made.pop(0)
        if failed:
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty: it holds what the command wrote


def start_library(models=False):
    from kft._compat import keep_interrupts
    from kft._config import enable_compilation_cache

    enable_compilation_cache()
    keep_interrupts()  # Ctrl-C ends a command, as "--resume" lines say
    if models:
        # The `kft` command loads kft's modules on first use; a saved kft
        # model needs every kft Keras class registered before it loads.
        import kft

        for name in kft.__all__:
            getattr(kft, name)


def flag_names(message):
    """Library argument names (`TrainConfig` settings, the arguments of
    `kft.data.from_directory` and `kft.fine_tune` they become) as the
    flags that set them: "`dropout`" reads "--dropout"."""
    import dataclasses

    from kft.runs.config import TrainConfig

    flags = {f.name: "--" + f.name.replace("_", "-")
             for f in dataclasses.fields(TrainConfig)}
    flags.update(data_dir="DATA_DIR", plots="--no-plots",
                 augmentation="--augment", validation_split="--val-split",
                 learning_rate="--lr", head_learning_rate="--head-lr",
                 early_stopping_patience="--early-stopping")
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", flag)
    return message
