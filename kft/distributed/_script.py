"""`python .../kft/distributed/_script.py script.py args...`: runs a launched
script as `python script.py args...` would, except that a failure (an
uncaught exception, `sys.exit` with a non-zero code) ends the process at
once.

Python's normal exit runs JAX's exit handler (`jax.distributed.shutdown`),
which waits for every process, while the others wait in a collective for
this one: the job hung instead of failing. `kft.distributed.initialize`
covers uncaught exceptions (`sys.excepthook`), which `SystemExit` never
reaches; the launcher (`python -m kft.distributed`) runs scripts through
this module for that.
"""

# Nothing from kft here, and run by its path (`-m` would import the kft
# package first): the script may set its environment (XLA_FLAGS,
# KFT_XLA_CPU_FLAGS, KERAS_BACKEND) before it imports kft, JAX or Keras.
import os
import runpy
import sys
import traceback


def _exit_now(code):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        code = stop.code
        if code is None or code == 0:
            raise
        if not isinstance(code, int):  # `sys.exit("message")`
            print(code, file=sys.stderr)
            code = 1
        _exit_now(code)
    except BaseException:  # noqa: BLE001 (any failure ends the process)
        traceback.print_exc()
        _exit_now(1)


if __name__ == "__main__":
    main()
