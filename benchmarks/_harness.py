"""What every benchmark here shares: the timing loop, the fresh-process
runner and the result writer.

Scripts run as `python benchmarks/X.py` from the repository root, so this
folder is `sys.path[0]` and `import _harness` works. Nothing here imports
JAX, Keras or torch at import time: a script may have to set `XLA_FLAGS`
or `KFT_*` variables before they load, and torch-only workers never need
JAX.

- `time_steps` / `time_interleaved`: untimed warm-up calls, then timed
  calls, each waited for on the device (`sync`); median / min / max and
  the raw times.
- `run_isolated`: calls `module:function` in a fresh Python process and
  returns what it produced, for sides that must not share a process
  (XLA flags are read once per process, loaders leave workers behind).
- `write_json` / `write_text`: result files with the machine, versions,
  commit, load average, command line and UTC date.
"""

import collections
import contextlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
_PACKAGES = ("jax", "jaxlib", "keras", "kft", "numpy", "torch", "torchvision")
_RESULT = "RESULT "  # prefix of the result lines a fresh process prints


# Timing.

def sync(out):
    """Waits until `out` (and any queued CUDA work) is computed.

    Only looks at libraries the process already imported, so timing a
    JAX step never loads torch and the other way round.
    """
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.block_until_ready(out)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return out


def _summary(times):
    """Median, min and max of `times` (seconds), with the raw list."""
    return {"median_s": statistics.median(times), "min_s": min(times),
            "max_s": max(times), "times_s": list(times)}


def time_interleaved(steps, n, warmup=1, rotate=False):
    """Times the callables of the dict `steps` one call of each per round.

    `warmup` untimed rounds, then `n` timed rounds; each call is timed up
    to `sync` of what it returns. Interleaving makes load from other
    processes hit every variant alike; `rotate` also turns the order each
    round, so no variant always goes first.
    Returns, per name, the median, min and max of the timed calls and
    their raw times (seconds: `median_s`, `min_s`, `max_s`, `times_s`),
    and the warm-up calls' times, `warmup_s` (the first is the compile /
    start-up call).
    """
    names = list(steps)
    times = {name: [] for name in names}
    for i in range(warmup + n):
        shift = (i - warmup) % len(names) if rotate and i >= warmup else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            sync(steps[name]())
            times[name].append(time.perf_counter() - start)
    return {name: {**_summary(t[warmup:]), "warmup_s": t[:warmup]}
            for name, t in times.items()}


def time_steps(step, n, warmup=1):
    """`time_interleaved` for one callable."""
    return time_interleaved({"step": step}, n, warmup)["step"]


def random_batch(n, size, num_classes, rng=0):
    """`n` float32 images in [0, 255) of `size` x `size` x 3, int labels.

    `rng` is a seed or a `numpy.random.Generator` (to draw several batches
    from one stream).
    """
    rng = np.random.default_rng(rng)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    return x, rng.integers(0, num_classes, n).astype("int64")


# Process measurements.

def loadavg():
    """The 1, 5 and 15 minute load averages as strings, or None."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


def reset_peak_rss():
    """Resets the process's peak RSS (Linux), so each run reports its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mib():
    """Peak RSS since the last `reset_peak_rss` (or the start), in MiB."""
    kib = _proc_value("/proc/self/status", "VmHWM:")
    if kib is None:  # not Linux: since the start, and no reset
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return int(kib.split()[0]) / 1024


def rss_mib():
    """The process's current RSS (Linux), in MiB, or None elsewhere."""
    kib = _proc_value("/proc/self/status", "VmRSS:")
    return None if kib is None else int(kib.split()[0]) / 1024


def _proc_value(path, key):
    """What follows `key` on its line of a /proc file, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line[len(key):].strip(" \t:\n")
    except OSError:
        pass
    return None


# Fresh processes.

Isolated = collections.namedtuple("Isolated", "results returncode error log",
                                  defaults=("",))
# Set in a child of `run_isolated`: the parent's pid, and a file each
# result is also appended to (one JSON line) as soon as it is made.
_PARENT = "KFT_HARNESS_PARENT"
RESULTS_LOG = "KFT_HARNESS_RESULTS_LOG"


def run_isolated(target, arg=None, env=None, timeout=None, on_start=None,
                 starting=None, paused=None, deadline=None):
    """Calls `target` ("module:function" in this folder) in a fresh Python.

    The function gets `arg` (JSON round-tripped) and returns one JSON
    value, or yields several: each is sent back as soon as it is made, so
    a timeout or crash keeps what was done before it. `env` updates the
    child's environment; a value of None removes that variable (with
    `RESULTS_LOG` naming a file, the child also appends each result to it,
    so that a kill of this process keeps them too).
    `on_start(pid)` is called once the process has started (its process
    group has the same number), inside the context manager `starting` if
    one is given. `paused(pid, start, now)` (`time.time()` values), if
    given, is how many seconds the process was kept stopped since it
    started: they do not count toward `timeout`, but the process is cut
    off at `deadline` (a `time.time()`) whatever it was.
    The child is killed when this process (the thread that started it)
    dies, on Linux: a killed benchmark leaves no process holding the GPU.
    Returns `Isolated(results, returncode, error, log)`: `returncode` is
    None on a timeout, `error` None when the process exited with 0, else
    why not; `log` is the end of what the process wrote to stderr.
    """
    child_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            child_env.pop(key, None)
        else:
            child_env[key] = value
    child_env[_PARENT] = str(os.getpid())
    command = [sys.executable, os.path.join(HERE, "_harness.py"), target,
               json.dumps(arg)]
    with starting or contextlib.nullcontext():
        # Its own process group: a timeout kills what it started too
        # (torch.compile's compile workers), which would otherwise run on.
        proc = subprocess.Popen(command, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=child_env, start_new_session=True)
        start = time.time()
        if on_start is not None:
            on_start(proc.pid)
    stderr = ""

    def seconds_left():
        now = time.time()
        left = None if timeout is None else timeout - (now - start) + (
            paused(proc.pid, start, now) if paused else 0.0)
        if deadline is not None:
            left = deadline - now if left is None else min(left,
                                                           deadline - now)
        return left

    while True:
        left = seconds_left()
        try:
            # Retried after a timeout without losing output (its docs).
            stdout, stderr = proc.communicate(
                timeout=None if left is None else max(left, 0.0))
            returncode = proc.returncode
            error = None if returncode == 0 else (
                f"exit code {returncode}: " + (stderr or stdout)[-2000:])
            break
        except subprocess.TimeoutExpired as e:
            left = seconds_left()
            if left > 0:
                continue  # stopped meanwhile: its deadline moved
            at_deadline = deadline is not None and time.time() >= deadline
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                stdout, stderr = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired as again:
                # Something outside the group holds the pipe: what was read.
                stdout = again.stdout or e.stdout or ""
            # `stdout` is bytes even with text=True on some Pythons.
            if isinstance(stdout, bytes):
                stdout = stdout.decode(errors="replace")
            returncode = None
            if at_deadline:
                error = (f"cut off at its deadline, after "
                         f"{time.time() - start:.0f} s")
            else:
                error = f"timed out after {timeout} s"
            break
    results = [json.loads(line[len(_RESULT):])
               for line in stdout.splitlines() if line.startswith(_RESULT)]
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return Isolated(results, returncode, error, (stderr or "")[-2000:])


def _die_with_parent():
    """Asks Linux to kill this process when the one that started it dies
    (a child of `run_isolated` has its own session, so a kill of the
    parent's group would not reach it); exits at once if it already has."""
    parent = os.environ.get(_PARENT)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        os._exit(1)


def _child(target, arg):
    _die_with_parent()
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(
        json.loads(arg))
    log = os.environ.get(RESULTS_LOG)
    for item in result if inspect.isgenerator(result) else [result]:
        if item is not None:
            line = json.dumps(item)
            if log:
                with open(log, "a") as f:  # one write of one line
                    f.write(line + "\n")
            print(_RESULT + line, flush=True)


# Results.

def results_path(*parts):
    """A path under benchmarks/results/."""
    return os.path.join(RESULTS_DIR, *parts)


def environment():
    """Where and how a result was measured."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "commit": _commit(),
        "machine": platform.machine(),
        "cpu": (_proc_value("/proc/cpuinfo", "model name")
                or platform.processor() or None),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "loadavg": loadavg(),
        "command": shlex.join(sys.orig_argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def _commit():
    """The repository's HEAD, "+changes" when the work tree differs."""
    def git(*args):  # no optional locks: never blocks a concurrent commit
        return subprocess.run(
            ["git", "--no-optional-locks", "-C", HERE, *args],
            capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+changes" if changed else "")) if head else None


def write_json(path, record):
    """Writes `record` (a dict, or a list of per-run dicts) with the
    `environment` added to each dict; a key the record already has (say a
    load average taken in the worker right after its run) is kept."""
    env = environment()

    def with_env(r):
        return {**r, **{k: v for k, v in env.items() if k not in r}}

    record = ([with_env(r) for r in record] if isinstance(record, list)
              else with_env(record))
    return write_text(path, json.dumps(record, indent=1))


def write_text(path, text):
    """Writes `text` to `path`, making its folder; returns `path`. Written
    beside it, then renamed: a kill while writing leaves the previous
    file whole (results rewritten as a run goes keep what was measured)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return path


def header(begin):
    """The first line of a markdown result: machine, cores, Python, UTC
    date, command and seconds since `begin` (a `time.perf_counter()`)."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"`{shlex.join(sys.argv)}`, {time.perf_counter() - begin:.0f} s")


if __name__ == "__main__":  # the child side of `run_isolated`
    _child(*sys.argv[1:])
