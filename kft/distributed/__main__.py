"""`python -m kft.distributed`: run a script as N JAX processes.

    python -m kft.distributed --processes 2 train.py --epochs 3
    # each host of a multi-host job (one process per host):
    python -m kft.distributed --coordinator host0:29500 \\
        --num-processes 4 --process-id 2 train.py --epochs 3

The script calls `kft.distributed.initialize()` first. Exit code 0 when
every process succeeded; otherwise the failing process is named, the
others are stopped and the exit code is 1.
"""

import argparse
import re
import sys

from kft.distributed import _script
from kft.distributed.launch import ProcessFailed
from kft.distributed.launch import launch_command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kft.distributed",
        description="Run a Python script as several JAX processes that "
                    "train together (the script calls "
                    "kft.distributed.initialize()).")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes to start on this host (default: 2 "
                             "locally, 1 with --process-id)")
    parser.add_argument("--coordinator", default=None,
                        help="HOST:PORT of process 0 (default: a free port "
                             "on 127.0.0.1)")
    parser.add_argument("--num-processes", type=int, default=None,
                        help="processes of the whole job, all hosts "
                             "(default: --processes)")
    parser.add_argument("--process-id", type=int, default=0,
                        help="index of this host's first process")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds the others get to exit after one "
                             "failed (default 5)")
    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="arguments of the script")
    args = parser.parse_args(argv)
    count = args.processes
    if count is None:
        count = 1 if args.num_processes is not None else 2
    try:
        return launch_command(
            # Through `_script`: a process that fails exits at once. By
            # its path, not `-m`, which would import kft (and Keras, JAX)
            # before the script could set its environment.
            [sys.executable, _script.__file__, args.script, *args.args],
            count,
            coordinator=args.coordinator, num_processes=args.num_processes,
            first_process_id=args.process_id, grace=args.grace)
    except ProcessFailed as error:
        print(error, file=sys.stderr, flush=True)
        return 1
    except ValueError as error:
        parser.error(_flag_names(str(error)))


# `launch_command`'s arguments as the flags that set them.
_FLAGS = {"first_process_id": "--process-id",
          "num_processes": "--num-processes", "processes": "--processes",
          "grace": "--grace"}


def _flag_names(message):
    """`message` naming flags, not `launch_command`'s arguments."""
    for name, flag in _FLAGS.items():
        message = message.replace(f"`{name}`", flag)
        message = re.sub(rf"(?<![\w-]){name}=", f"{flag} ", message)
    return message


if __name__ == "__main__":
    sys.exit(main())
