"""Several JAX processes training one model: who am I, and starting up.

JAX's multi-controller runtime runs one Python process per host (or per
GPU); every process runs the same script, owns its local devices, and the
compiled step spans all of them (`keras.distribution.DataParallel` over
`jax.devices()`). kft's part:

- `initialize()` joins the processes from the variables a launcher sets
  (`python -m kft.distributed`, see `kft.distributed.launch`), and
  distributes data parallel over every device of every process.
- `process_index()`, `process_count()`, `is_primary()`: only the primary
  process (index 0) writes checkpoints, run folders, reports and plots;
  every process reads them.
- `data_shard()`: which part of each global batch this process loads
  (`kft.data` datasets shard themselves with it); `every_example()`: a
  dataset each process reads whole, for results computed from all of it.

None of these start JAX's backend when it is not running yet: in a
single process they answer "process 0 of 1" without touching JAX, so
`jax.distributed.initialize` can still be called afterwards.
"""

import os
import sys

from kft._validation import check_int
from kft._validation import fail_argument

# Variables a launcher sets for each process.
COORDINATOR_ENV = "KFT_COORDINATOR"
NUM_PROCESSES_ENV = "KFT_NUM_PROCESSES"
PROCESS_ID_ENV = "KFT_PROCESS_ID"


def _jax_started():
    import jax

    from kft import _compat

    return jax.distributed.is_initialized() or \
        _compat.jax_backends_initialised()


def process_count() -> int:
    """Number of JAX processes training together (1 without
    `jax.distributed`).

    >>> import kft
    >>> kft.distributed.process_count()
    1
    """
    if not _jax_started():
        return 1
    import jax

    return jax.process_count()


def process_index() -> int:
    """This process' index in `[0, process_count())` (0 without
    `jax.distributed`).

    >>> import kft
    >>> kft.distributed.process_index()
    0
    """
    if not _jax_started():
        return 0
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes files: process 0, or a single process.

    Guard every write of a multi-process script with it (kft's run
    folders, backups and reports already are); all processes must still
    call the collective parts (`fit`, `evaluate`, `predict`).

    >>> import kft
    >>> kft.is_primary()
    True
    """
    return process_index() == 0


_scratch = []


def primary_path(path):
    """`path` in the primary process, a scratch path elsewhere.

    With several JAX processes, saving a model's variables
    (`model.save`, `save_weights`) gathers them: a collective every
    process must run. `model.save(primary_path(path))` has all of them
    save, and only process 0 write `path`; the others write a file of
    the same name into a scratch folder of their own (removed at exit).

    >>> primary_path("runs/model.keras")
    'runs/model.keras'
    """
    if is_primary():
        return path
    if not _scratch:
        import atexit
        import shutil

        _scratch.append(scratch_dir("kft-scratch-"))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    return os.path.join(_scratch[0], os.path.basename(os.fspath(path)))


def scratch_dir(prefix: str) -> str:
    """A new temporary folder `<prefix><host>.<pid>-<random>`, after
    removing the folders of `prefix` left on this host by processes that
    are gone: a job that fails with several processes ends them by an
    abort (JAX's distributed service), where no exit handler runs, and
    each attempt would leave its copies of the checkpoints. (Folders of
    other hosts, on a shared temporary folder, are left alone.)

    >>> import os, socket
    >>> path = scratch_dir("kft-doc-")
    >>> os.path.basename(path).startswith(
    ...     f"kft-doc-{socket.gethostname()}.{os.getpid()}-")
    True
    >>> os.rmdir(path)
    """
    import glob
    import shutil
    import socket
    import tempfile

    mine = f"{prefix}{socket.gethostname()}."
    for old in glob.glob(os.path.join(tempfile.gettempdir(),
                                      glob.escape(mine) + "*-*")):
        pid = os.path.basename(old)[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{mine}{os.getpid()}-")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def barrier(name: str) -> None:
    """Waits until every process reached `barrier(name)`; nothing to wait
    for in a single process.

    Put it between process 0 writing a file and the others reading it.

    >>> barrier("after-writing")
    """
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def data_shard(shard="auto") -> tuple[int, int]:
    """`(index, count)`: the part of each global batch this process loads.

    Args:
        shard: `"auto"` (this JAX process of all of them), `None` (no
            sharding: `(0, 1)`), or an explicit `(index, count)`.
            Defaults to `"auto"`.

    Returns:
        `(index, count)` with `0 <= index < count`.

    Raises:
        ValueError: `shard` is none of the above.

    >>> data_shard(), data_shard((1, 2))
    ((0, 1), (1, 2))
    """
    if shard is None:
        return 0, 1
    if isinstance(shard, str) and shard == "auto":
        return process_index(), process_count()
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        fail_argument("shard", '"auto", None or (index, count)', shard)
    count = check_int("shard[1]", shard[1], min_value=1)
    index = check_int("shard[0]", shard[0], min_value=0,
                      max_value=count - 1)
    return index, count


def every_example(data):
    """`data` read whole in every process: a `kft.data` dataset that loads
    every example rather than this process' slice of each global batch
    (same order in every process); other data is returned as it is.

    For results computed from a whole dataset (a report, cached features,
    statistics): each process computes all of them, so every process gets
    what one process would. The dataset returned counts its own passes
    (in one process too): reading it leaves the shuffle order of the
    dataset's next pass as it was, so a `fit` after it draws the same
    orders with any number of processes.

    >>> import numpy as np, kft
    >>> ds = kft.data.from_arrays(np.zeros((3, 2, 2, 3)), [0, 1, 0])
    >>> every_example(ds).num_examples
    3
    """
    if callable(getattr(data, "with_shard", None)):
        return data.with_shard(None)
    return data


def launched_settings(environ=None):
    """`(coordinator, num_processes, process_id)` set by a launcher, or
    `None` when this process was started alone.

    Reads `KFT_COORDINATOR` (`host:port`, else JAX's own
    `JAX_COORDINATOR_ADDRESS`), `KFT_NUM_PROCESSES` and `KFT_PROCESS_ID`.

    Raises:
        ValueError: a coordinator without both numbers, or bad numbers.

    >>> launched_settings({})
    >>> launched_settings({"KFT_COORDINATOR": "127.0.0.1:1234",
    ...                    "KFT_NUM_PROCESSES": "2", "KFT_PROCESS_ID": "1"})
    ('127.0.0.1:1234', 2, 1)
    """
    environ = os.environ if environ is None else environ
    address = environ.get(COORDINATOR_ENV) or environ.get(
        "JAX_COORDINATOR_ADDRESS")
    if not address:
        return None
    numbers = []
    for name in (NUM_PROCESSES_ENV, PROCESS_ID_ENV):
        text = environ.get(name, "")
        if not text.strip().isdigit():
            raise ValueError(
                f"Environment variable {name} must be a non-negative integer "
                f"when {COORDINATOR_ENV} is set. Received: {name}={text!r}")
        numbers.append(int(text))
    count, index = numbers
    if count < 1 or index >= count:
        raise ValueError(
            f"Environment variables must satisfy 0 <= {PROCESS_ID_ENV} < "
            f"{NUM_PROCESSES_ENV}. Received: {PROCESS_ID_ENV}={index}, "
            f"{NUM_PROCESSES_ENV}={count}")
    return address, count, index


def initialize(*, data_parallel: bool = True) -> bool:
    """Joins the other processes of a launched job, if there are any.

    Call it first thing in a script run by `python -m kft.distributed`
    (or on each host with the variables of `launched_settings` set),
    before any JAX computation. It calls `keras.distribution.initialize`
    (which calls `jax.distributed.initialize` and agrees on one random
    seed when none is set), and with `data_parallel` sets
    `keras.distribution.DataParallel` over all devices of all processes,
    with Keras' own dataset sharding off: kft's datasets give each
    process its part of every global batch (`data_shard`). On CPU the
    processes exchange gradients with JAX's gloo collectives.

    Started alone (no launcher variables) it does nothing, so the same
    script runs as one process.

    Args:
        data_parallel: Set the data-parallel distribution (unless one is
            set already). Defaults to `True`.

    Returns:
        `True` when it joined a multi-process job, `False` when alone.

    Raises:
        RuntimeError: JAX already started in this process (initialize
            before any JAX computation).

    Example:
    >>> import kft
    >>> kft.distributed.initialize()  # not launched: nothing to join
    False
    """
    settings = launched_settings()
    if settings is None:
        return False
    import jax
    import keras

    from kft import _compat

    address, count, index = settings
    if not jax.distributed.is_initialized():
        if _compat.jax_backends_initialised():
            raise RuntimeError(
                "kft.distributed.initialize() must run before any JAX "
                "computation (JAX's backend is already running); call it "
                "right after `import kft`.")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(address, count, index)
        _exit_at_uncaught_errors()
    if data_parallel and keras.distribution.distribution() is None:
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=jax.devices(), auto_shard_dataset=False))
    return True


def _exit_at_uncaught_errors():
    """Makes an uncaught exception end this process at once, exit code 1,
    after printing it. Python's normal exit runs JAX's exit handler
    (`jax.distributed.shutdown`), which waits for every process, while the
    others wait in a collective for this one: the job hung instead of
    failing (the launcher stops the others once this one has exited)."""
    if getattr(sys.excepthook, "_kft_exits", False):
        return
    previous = sys.excepthook

    def print_and_exit(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    print_and_exit._kft_exits = True
    sys.excepthook = print_and_exit
