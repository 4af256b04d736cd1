"""Command line: `kft train`, `eval`, `predict`, `export`, `compare`,
`lr-find`, `backbones`, `demo`.

Only the standard library is imported here: each subcommand imports the
parts of kft it needs, so `kft --help` does not wait for Keras and JAX.
Every subcommand is a thin layer over a library function (`kft.train_run`,
`kft.evaluate`, `kft.compare_strategies`, ...).

Exit status: 0 done; 2 the command line or its inputs are wrong (bad
option, missing folder, unreadable image file, fewer than two classes,
unknown backbone, an image size the backbone cannot take, a file to write
that exists without `--overwrite`), found before any training; 1 a
failure while working.
"""

import os
import sys
import warnings

from kft.cli._checks import Usage
from kft.cli._checks import expand_home
from kft.cli._checks import remove_made_folders
from kft.cli._deploy import eval_command
from kft.cli._deploy import export_command
from kft.cli._deploy import predict_command
from kft.cli._explore import backbones_command
from kft.cli._explore import compare_command
from kft.cli._explore import demo_command
from kft.cli._explore import lr_find_command
from kft.cli._parser import build_parser
from kft.cli._train import train_command


def _fail(parser, message):
    """Exits with status 2 and a usage line, as argparse does."""
    parser.error(message)


def _join_launched_job(command):
    """Under `python -m kft.distributed`, `kft train` joins the job (each
    process trains on its slice of every global batch; process 0 writes
    the run folder). Without it every process ran a job of its own, and
    they fought over the run folder; the other commands run in one
    process."""
    from kft.distributed.processes import COORDINATOR_ENV

    # The launcher's own variable: JAX's JAX_COORDINATOR_ADDRESS may be a
    # cluster's, set for every program.
    if not os.environ.get(COORDINATOR_ENV):
        return
    if command != "train":
        raise Usage(f"kft {command} runs in one process: start it without "
                    "python -m kft.distributed (kft train joins a launched "
                    "job)")
    from kft.cli._checks import start_library

    start_library()
    from kft.distributed.processes import initialize

    initialize()


def _report(command, error):
    print(f"kft {command}: error: {type(error).__name__}: {error}",
          file=sys.stderr)
    for note in getattr(error, "__notes__", ()):  # what to do next
        print(f"kft {command}: {note}", file=sys.stderr)
    return 1


def _stdout_reader_gone():
    """Whether stdout is a pipe whose reader has closed it (`poll` flags
    the write end with POLLERR then)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no poll (Windows) or no descriptor: as before


def main(argv: list[str] | None = None) -> int:
    """Runs the `kft` command on `argv` (defaults to `sys.argv[1:]`).

    Returns the exit status (0 done, 1 a failure while working); a bad
    command line or bad inputs exit with status 2 (`SystemExit`), before
    anything is trained.

    Example:
    >>> main(["backbones", "simple_cnn"])  # doctest: +NORMALIZE_WHITESPACE
    simple_cnn 32px stem > block1 > block2 > block3
    0
    """
    parser, parsers = build_parser()
    args = expand_home(parser.parse_args(argv))
    command = args.command
    handler = {"train": train_command, "eval": eval_command,
               "predict": predict_command, "export": export_command,
               "lr-find": lr_find_command, "compare": compare_command,
               "demo": demo_command,
               "backbones": lambda args, argv: backbones_command(
                   args.pattern, args.params)}[command]
    # Warnings as the command's lines: "kft train: UserWarning: ...", not
    # a file and line of kft's (or of the `kft` script) and its source.
    format_warning = warnings.formatwarning
    warnings.formatwarning = (
        lambda message, category, *_, **__:
        f"kft {command}: {category.__name__}: {message}\n")
    status = 1
    try:
        _join_launched_job(command)
        status = handler(args, argv)
        sys.stdout.flush()  # a closed pipe raises here, not at exit
        return status
    except Usage as error:
        _fail(parsers[command], str(error))
    except KeyboardInterrupt:
        print(f"kft {command}: interrupted.", file=sys.stderr)
        return 1
    except BrokenPipeError as error:
        if not _stdout_reader_gone():
            # Another pipe (a launched process, a FIFO as an output path):
            # the command's failure, reported as any other.
            return _report(command, error)
        # The reader went away (`kft predict ... | head`): not a failure of
        # the command to report. Later output (Python's flush at exit) goes
        # nowhere, as the Python docs' recipe does it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:  # noqa: BLE001 - the command's failure
        return _report(command, error)
    finally:
        warnings.formatwarning = format_warning
        remove_made_folders(failed=status != 0)
