"""Starting N processes of one script, and failing them together.

`python -m kft.distributed --processes N script.py args...` starts N
local copies of `script.py`, each with the variables
`kft.distributed.initialize()` reads (`KFT_COORDINATOR` on a free
loopback port, `KFT_NUM_PROCESSES`, `KFT_PROCESS_ID`), prints their output
line by line prefixed with `[i]`, and returns when all have exited.
JAX processes wait for each other inside every collective, so when one
dies (an error, `kill -9`, out of memory) the others would wait until
JAX's heartbeat timeout: the launcher ends them at once and exits
non-zero, naming the process and its exit code or signal.

On several hosts run one launcher per host with `--coordinator
HOST:PORT --num-processes N --process-id I` (one process each); the
launcher then only sets the variables and watches its one process.
"""

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from kft import _config
from kft._validation import check_int
from kft._validation import check_number
from kft.distributed import processes as _processes


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now.

    >>> 1024 <= free_port() < 65536
    True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _describe(returncode):
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class ProcessFailed(RuntimeError):
    """A launched process failed; the others were stopped."""

    def __init__(self, index, returncode):
        self.index = index
        self.returncode = returncode
        super().__init__(
            f"kft.distributed: process {index} {_describe(returncode)}; "
            "stopped the other processes")


def _stream(index, pipe, out, lock):
    for line in iter(pipe.readline, ""):
        with lock:
            out.write(f"[{index}] {line}")
            out.flush()
    pipe.close()


def _stop(children, grace):
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def launch_command(command: Sequence[str], processes: int = 2, *,
                   coordinator: str | None = None,
                   num_processes: int | None = None,
                   first_process_id: int = 0, env=None,
                   out=None, grace: float = 5.0) -> int:
    """Runs `processes` copies of `command` as one JAX job; returns 0.

    Args:
        command: The program and its arguments, e.g.
            `[sys.executable, "train.py"]`.
        processes: Processes to start on this host. Defaults to `2`.
        coordinator: `host:port` of process 0's coordinator, or `None` for
            a free port on 127.0.0.1 (all processes on this host).
            Defaults to `None`.
        num_processes: Processes of the whole job (all hosts), or `None`
            for `processes`. Defaults to `None`.
        first_process_id: Index of this host's first process. Defaults to
            `0`.
        env: Environment of the processes, or `None` for this one's.
            Defaults to `None`.
        out: Stream for their prefixed output. Defaults to `sys.stdout`.
        grace: Seconds the others get to exit after one failed, before
            they are killed. Defaults to `5.0`.

    Returns:
        0 when every process exited with code 0.

    Raises:
        ProcessFailed: a process exited non-zero or was killed; the
            others were stopped first.

    Example:
    >>> import sys
    >>> launch_command([sys.executable, "-c", "import os; print("
    ...                 "os.environ['KFT_PROCESS_ID'], 'of', "
    ...                 "os.environ['KFT_NUM_PROCESSES'])"], processes=1)
    [0] 0 of 1
    0
    """
    processes_here = check_int("processes", processes, min_value=1)
    total = check_int("num_processes",
                      processes_here if num_processes is None
                      else num_processes, min_value=processes_here)
    first = check_int("first_process_id", first_process_id, min_value=0,
                      max_value=total - processes_here)
    grace = check_number("grace", grace, low=0)
    out = sys.stdout if out is None else out
    loopback = coordinator is None
    if loopback:
        coordinator = f"127.0.0.1:{free_port()}"
    # This process' environment without the XLA flags its import of kft
    # added: each process' own import decides (a script may set
    # KFT_XLA_CPU_FLAGS before it). An `env` given is taken as it is.
    base = (_config.environ_without_kft_flags(os.environ) if env is None
            else dict(env))
    base.update({_processes.COORDINATOR_ENV: coordinator,
                 _processes.NUM_PROCESSES_ENV: str(total),
                 "PYTHONUNBUFFERED": "1"})
    if loopback:
        # JAX's coordination service (no authentication) binds every
        # interface, "[::]:port", unless told: here only loopback, on the
        # port chosen (one inherited, from a launcher that launched this
        # one, named another).
        base["JAX_COORDINATOR_BIND_ADDRESS"] = coordinator
    children, threads, lock = [], [], threading.Lock()
    # `kill` (SIGTERM) of the launcher ends its processes too (Python's
    # default would exit without the `finally`, leaving them running).
    # The handler only queues it: an exception raised in a handler can
    # land in a garbage-collection callback, which ignores it.
    ended, previous = queue.Queue(), None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(
            signal.SIGTERM, lambda signum, frame: ended.put((None, signum)))
    try:
        for offset in range(processes_here):
            child_env = dict(base)
            child_env[_processes.PROCESS_ID_ENV] = str(first + offset)
            child = subprocess.Popen(
                list(command), env=child_env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1)
            children.append(child)
            thread = threading.Thread(
                target=_stream, args=(first + offset, child.stdout, out,
                                      lock), daemon=True)
            thread.start()
            threads.append(thread)
        failed = _wait(children, ended)
    finally:
        _stop(children, grace)
        for thread in threads:
            thread.join(timeout=5)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if failed is not None:
        raise ProcessFailed(first + failed, children[failed].returncode)
    return 0


def _wait(children, ended):
    """Index of the first child to fail, or `None` once all succeeded;
    `SystemExit` when `ended` gets `(None, signal number)` first.

    One thread per child waits for it and puts `(index, exit code)` in
    `ended`, so failures come in the order they happened: after one
    process fails the others fail too, in a collective, and polling them
    in turn named the wrong one.
    """
    for index, child in enumerate(children):
        threading.Thread(target=lambda i=index, c=child: ended.put(
            (i, c.wait())), daemon=True).start()
    for _ in children:
        while True:
            try:  # a timeout keeps Ctrl-C handled
                index, code = ended.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        if index is None:
            raise SystemExit(128 + code)
        if code != 0:
            return index
    return None
