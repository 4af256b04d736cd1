"""The steps `bench_gpu.py` times, each side in its own process.

`check_side` (what a side imports and which devices it sees), `run_kft`
and `run_torch` (one backbone's rows, strategy after strategy, yielded as
they are measured so that a timeout keeps what was done). They run in the
processes `_harness.run_isolated` starts; kft, Keras, JAX and torch are
imported inside the functions, so a torch process never loads JAX.

When `bench_gpu.py` runs several processes at once (`--parallel`), first
calls (trace, compile and the autotuners' trial runs) run side by side,
and a timed window takes the machine to itself through `timed_section`:
a file lock keeps other windows out, and every other benchmark process is
stopped (SIGSTOP) until the window ends, so that neither their GPU work
nor their compiles on the CPU (which slow eager PyTorch's kernel
launches) fall into it.
"""

import contextlib
import fcntl
import gc
import itertools
import math
import os
import signal
import sys
import tempfile
import time

import _harness

# `check_side` imports Keras before kft, which would choose this itself.
os.environ.setdefault("KERAS_BACKEND", "jax")
NUM_CLASSES = 10
# The timed windows' log in a parallel run's process folder (`timed_section`).
PAUSES = "pauses"

# Modules each side's process needs, with the package that brings each.
JAX_MODULES = (("jax", "jax"), ("numpy", "numpy"),
               ("namex", "namex"), ("optree", "optree"),
               ("ml_dtypes", "ml_dtypes"), ("h5py", "h5py"),
               ("rich", "rich"), ("absl", "absl-py"),
               ("portpicker", "portpicker"),
               ("array_record", "array_record"), ("grain", "grain"),
               ("PIL", "pillow"), ("sklearn", "scikit-learn"),
               ("keras", "keras"), ("kft", "kft"))
TORCH_MODULES = (("torch", "torch"), ("torchvision", "torchvision"))


def check_side(arg):
    """Imports a side's modules; reports what is missing and its devices."""
    modules = JAX_MODULES if arg["side"] == "jax" else TORCH_MODULES
    missing = []
    for module, package in modules:
        try:
            __import__(module)
        except Exception as e:  # any failure makes the side unusable
            missing.append(f"{package} (import {module}: "
                           f"{type(e).__name__}: {e})")
    if missing:
        return {"missing": missing}
    if arg["side"] == "jax":
        import jax

        return {"missing": [], "platform": jax.default_backend(),
                "devices": [d.device_kind for d in jax.devices()],
                "versions": {m: sys.modules[m].__version__
                             for m in ("jax", "keras")}}
    import torch

    return {"missing": [], "cuda": torch.cuda.is_available(),
            "devices": [torch.cuda.get_device_name(i)
                        for i in range(torch.cuda.device_count())],
            "versions": {"torch": torch.__version__}}


@contextlib.contextmanager
def timed_section(cfg):
    """The machine to this process while the block runs; yields a dict
    whose "wait_s" is the seconds spent waiting for it and "paused" the
    number of processes stopped.

    Holds `cfg["gpu_lock"]` (a file) exclusively, so no other timed window
    runs, and stops the process groups registered in `cfg["proc_dir"]`
    (one file per running benchmark process, named by its process group,
    written by `bench_gpu.py`) but its own until the block ends. Work they
    queued on the GPU before they stopped drains in the untimed step each
    window starts with. Without a lock file (one process at a time) it
    holds nothing."""
    waited = {"wait_s": 0.0, "paused": 0}
    path = cfg.get("gpu_lock")
    if not path:
        yield waited
        return
    # flock locks belong to the open file: each section opens its own.
    with open(path, "a") as f:
        start = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited["wait_s"] = time.perf_counter() - start
        proc_dir = cfg.get("proc_dir")
        begin = time.time()
        try:
            waited["paused"] = signal_others(proc_dir, signal.SIGSTOP)
            if waited["paused"]:
                # Open until the closing line: the parent reads it to move
                # the stopped processes' deadlines while they are stopped.
                _log_window(proc_dir, f"{begin} -")
            yield waited
        finally:
            # All of them, not only those stopped here: one whose window
            # was cut off by its timeout could not continue the others.
            signal_others(proc_dir, signal.SIGCONT)
            if proc_dir and waited["paused"]:
                # For the first calls that were stopped: see `_first_call`.
                _log_window(proc_dir, f"{begin} {time.time()}")
            fcntl.flock(f, fcntl.LOCK_UN)


def _log_window(proc_dir, text):
    """Appends "owner begin end" (end "-" while it runs) to the windows'
    log, in one write."""
    with open(os.path.join(proc_dir, PAUSES), "a") as log:
        log.write(f"{os.getpgid(0)} {text}\n")


def close_windows(proc_dir, pid):
    """Closes, as of now, the timed windows process group `pid` left open
    (killed inside one: its `timed_section` never ended)."""
    left_open = [begin for (owner, begin), end
                 in _logged_windows(proc_dir).items()
                 if owner == str(pid) and end is None]
    if left_open:
        with open(os.path.join(proc_dir, PAUSES), "a") as log:
            log.write("".join(f"{pid} {begin} {time.time()}\n"
                              for begin in left_open))


def signal_others(proc_dir, signum):
    """Sends `signum` to the process groups registered in `proc_dir` but
    this process's own; returns how many it reached."""
    if not proc_dir:
        return 0
    own, reached = os.getpgid(0), 0
    for name in os.listdir(proc_dir):  # PAUSES is not a number
        if name.isdigit() and int(name) != own:
            try:
                os.killpg(int(name), signum)
                reached += 1
            except (ProcessLookupError, PermissionError):
                pass  # ended since it was listed
    return reached


def continue_all(cfg):
    """Continues every registered process once no timed window runs (its
    end continues them; this waits for it): for a process that ended
    inside its own window, killed by its timeout, with the others
    stopped."""
    path = cfg.get("gpu_lock")
    if not path or not os.path.exists(path):
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            signal_others(cfg.get("proc_dir"), signal.SIGCONT)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def no_window(cfg):
    """Holds the GPU lock (when there is one) so that no timed window
    runs: `bench_gpu.py` starts and registers a process inside it, so
    that the newcomer's imports and compile never fall into a window and
    every window that starts later stops it."""
    path = cfg.get("gpu_lock")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _timed(cfg, run, windows, steps, warmup=1):
    """`_windows` with the machine to itself; the wait for it and the
    number of processes stopped meanwhile are kept."""
    with timed_section(cfg) as waited:
        timed = _windows(run, windows, steps, warmup=warmup)
    return {**timed, "gpu_wait_s": waited["wait_s"],
            "paused_processes": waited["paused"]}


def _top_ops(cfg, run, steps, top=15):
    """Where `run()` (`steps` steps) spends its time, from JAX's profiler:
    `{"top_ops": [[op, its kernels, ms per step], ...], "traced_ms_per_step":
    all ops' ms per step, "traced_steps": steps}`, or `{"trace_error": why}`
    (the trace is extra: a profiler that cannot run loses no row)."""
    import jax
    import profile_step

    kernels = {}
    try:
        with timed_section(cfg), \
                tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                run()
            totals = profile_step.thunk_times(trace_dir, kernels=kernels)
    except Exception as e:  # noqa: BLE001 - reported in the row
        return {"trace_error": f"{type(e).__name__}: {e}"[-500:]}
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {"top_ops": [[op, sorted(kernels[op])[:3], 1000 * t / steps]
                        for op, t in ranked],
            "traced_ms_per_step": 1000 * sum(totals.values()) / steps,
            "traced_steps": steps}


def _first_call(cfg, run):
    """Seconds of `run()` (a first call: trace, compile, autotune, run),
    less the time other processes' timed windows kept it stopped. Other
    processes' first calls may overlap it (longer than alone)."""
    start = time.time()  # the wall clock: the windows' log is in it too
    run()
    end = time.time()
    return end - start - paused_seconds(cfg.get("proc_dir"), start, end,
                                        os.getpgid(0))


def _logged_windows(proc_dir):
    """`{(owner, begin): end}` of the windows' log (strings as written;
    end None while the window is open), or `{}` without a log."""
    try:
        with open(os.path.join(proc_dir or "", PAUSES)) as log:
            lines = [line.split() for line in log]
    except FileNotFoundError:
        return {}
    windows = {}
    for owner, begin, end in (line for line in lines if len(line) == 3):
        if end != "-" or (owner, begin) not in windows:  # closed wins
            windows[owner, begin] = None if end == "-" else end
    return windows


def paused_seconds(proc_dir, start, end, pid=None):
    """Seconds of [start, end] (`time.time()`) inside the timed windows
    logged in `proc_dir` by processes other than `pid`, during which a
    process registered before them (`pid`) was stopped; a window still
    running counts up to `end`."""
    return sum(
        max(0.0, min(end, end if close is None else float(close))
            - max(start, float(begin)))
        for (owner, begin), close in _logged_windows(proc_dir).items()
        if pid is None or owner != str(pid))


def run_kft(cfg):
    """kft's rows for one backbone, strategy after strategy (a generator)."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    for strategy in cfg["strategies"]:
        yield from _kft_rows(cfg, strategy)
        gc.collect()


def _kft_model(cfg, strategy):
    import keras

    import kft

    keras.utils.set_random_seed(0)
    size = cfg["size"]
    model = kft.build_classifier(cfg["backbone"], NUM_CLASSES, weights=None,
                                 input_shape=(size, size, 3))
    kft.freeze(model, strategy)
    model.compile(
        kft.BlockwiseOptimizer(keras.optimizers.SGD(1e-2, momentum=0.9),
                               {"head": 1e-2}, default=1e-3, model=model),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=cfg["steps_per_execution"])
    return model


def _kft_rows(cfg, strategy):
    import jax

    from kft import _compat

    k = cfg["steps_per_execution"]
    model = _kft_model(cfg, strategy)
    x_host, y_host = _harness.random_batch(cfg["batch"], cfg["size"],
                                           NUM_CLASSES)
    y_host = y_host.astype("int32")  # int64 labels would trace once more
    # Placed as Keras places a batch (default device, not committed to
    # it): a committed batch makes the step compile again once the state
    # is the step's own output.
    x, y = jax.device_put((x_host, y_host))
    batches = _repeated_batches(x, y)
    row = {**row_base(cfg, strategy), "device": jax.devices()[0].device_kind,
           "trainable_params": int(sum(
               math.prod(v.shape) for v in model.trainable_variables))}
    steps = max(1, cfg["steps"] // k) * k

    def fit(steps, batches=batches):
        history = model.fit(batches(steps), epochs=1, verbose=0)
        jax.block_until_ready([v.value for v in model.variables])
        return history.history["loss"][-1]

    # The first fit builds the loss and optimizer and compiles the step.
    compile_s = _first_call(cfg, lambda: fit(k))

    state = _compat.train_state(model)
    step_data = itertools.repeat((x, y))

    def direct(calls=steps // k, data=lambda: step_data):
        nonlocal state
        for _ in range(calls):
            logs, state = model.train_function(state, data())
        jax.block_until_ready(state)
        return logs["loss"]

    timed = _timed(cfg, direct, cfg["windows"], steps)
    if cfg.get("trace_steps"):
        calls = max(1, cfg["trace_steps"] // k)
        timed.update(_top_ops(cfg, lambda: direct(calls), calls * k))
    yield _kft_row(row, f"kft K={k}", k, compile_s, timed)
    # One step a call of the same compiled step (Keras' loop over K steps
    # ends at the iterator's end): the single-step figure, no new trace.
    timed = _timed(cfg, lambda: direct(steps, lambda: iter([(x, y)])),
                   cfg["windows"], steps)
    _compat.set_train_state(model, state)
    yield _kft_row(row, "kft K=1", 1, compile_s, timed)
    timed = _timed(cfg, lambda: fit(steps), cfg["windows"], steps)
    yield _kft_row(row, f"kft fit K={k}", k, compile_s, timed)

    # What a host input pipeline costs: `fit` on numpy batches, which Keras
    # copies to the device one batch ahead of the step (float32, as kft's
    # loaders yield them; the same compiled step).
    def host_fit(dtype, k=k):
        host_batches = _repeated_batches(x_host.astype(dtype), y_host)
        first_s = _first_call(cfg, lambda: fit(1, host_batches))
        timed = _timed(cfg, lambda: fit(steps, host_batches),
                       cfg["windows"], steps)
        short = {"float32": "f32", "uint8": "u8"}[dtype]
        return _kft_row(row, f"kft fit host {short} K={k}", k, first_s,
                        timed)

    yield host_fit("float32")
    if not cfg.get("extra_rows"):
        return
    # Each of these compiles or traces the step again (12-20 s each for
    # EfficientNetB0's full step on the H200), hence opt-in, last.
    yield _scan_row(cfg, model, row, x, y, steps)
    model.steps_per_execution = 1  # a new step function: traced again
    model.make_train_function(force=True)
    first_s = _first_call(cfg, lambda: fit(1))
    timed = _timed(cfg, lambda: fit(steps), cfg["windows"], steps)
    yield _kft_row(row, "kft fit K=1", 1, first_s, timed)

    def host():
        for _ in range(cfg["host_steps"]):
            loss = model.train_on_batch(x_host, y_host)
        return loss

    first_s = _first_call(cfg, host)  # Keras' own step function: traced
    timed = _timed(cfg, host, 1, cfg["host_steps"])
    yield _kft_row(row, "kft train_on_batch", 1, first_s, timed)
    # uint8 would copy 4x less, but is a new input dtype: a new compile.
    # random_batch's pixels are in [0, 255). Both host rows at K=1 here.
    yield host_fit("float32", 1)
    yield host_fit("uint8", 1)


def _scan_row(cfg, model, row, x, y, steps):
    """K steps as one compiled program (`jax.lax.scan` over the model's
    train step): no host work at all between them. Keras'
    `steps_per_execution` runs its K steps as a Python loop of calls of
    the one-step program (`keras/src/backend/jax/trainer.py`), which an
    asynchronous dispatch mostly hides on a GPU; this row shows what is
    left to win."""
    import jax

    from kft import _compat

    k = cfg["steps_per_execution"]

    def k_steps(state, x, y):
        def body(state, _):
            logs, state = model.train_step(state, (x, y))
            return state, logs["loss"]

        state, losses = jax.lax.scan(body, state, length=k)
        return losses[-1], state

    function = jax.jit(k_steps, donate_argnums=0)
    state = _compat.train_state(model)

    def run(calls=steps // k):
        nonlocal state
        for _ in range(calls):
            loss, state = function(state, x, y)
        jax.block_until_ready(state)
        return loss

    first_s = _first_call(cfg, lambda: run(1))
    timed = _timed(cfg, run, cfg["windows"], steps)
    _compat.set_train_state(model, state)
    return _kft_row(row, f"kft scan K={k}", k, first_s, timed)


def _repeated_batches(x, y):
    """`steps -> data adapter` handing out `(x, y)` as they are `steps`
    times: device arrays (`fit` copies nothing from the host) or numpy
    ones (Keras copies each to the device, one batch ahead on a GPU)."""
    from kft import _compat

    class RepeatedBatches(_compat.data_adapter_class()):
        def __init__(self, steps):
            self.steps = steps

        def get_jax_iterator(self):
            return itertools.repeat((x, y), self.steps)

        get_numpy_iterator = get_jax_iterator

        @property
        def num_batches(self):
            return self.steps

        @property
        def batch_size(self):
            return int(x.shape[0])

        @property
        def has_partial_batch(self):
            return False

        @property
        def partial_batch_size(self):
            return None

    return RepeatedBatches


def _kft_row(row, variant, k, compile_s, timed):
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {**row, **timed, "side": "kft", "variant": variant,
            "steps_per_execution": k, "compile_s": compile_s,
            "peak_device_mib": None if peak is None else peak / 2**20,
            "peak_scope": "strategy"}


def _windows(run, windows, steps, warmup=0):
    """Times `windows` calls of `run` (each `steps` steps, ending in a
    device sync) after `warmup` untimed ones (their seconds are kept: a
    slow one would show a step compiled again); the loss it returned
    last."""
    warmup_s = []
    for _ in range(warmup):
        start = time.perf_counter()
        run()
        warmup_s.append(time.perf_counter() - start)
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        loss = run()
        times.append(time.perf_counter() - start)
    ms = sorted(1000 * t / steps for t in times)
    median = ms[len(ms) // 2] if len(ms) % 2 else (
        ms[len(ms) // 2 - 1] + ms[len(ms) // 2]) / 2
    return {"ms_per_step": median, "window_ms_per_step": ms,
            "steps_per_window": steps, "warmup_s": warmup_s,
            "loss": float(loss)}


def row_base(cfg, strategy):
    return {"backbone": cfg["backbone"], "strategy": strategy,
            "size": cfg["size"], "batch": cfg["batch"],
            "dtype": "mixed_bfloat16", "dry_run": cfg["dry_run"]}


def torch_model(name):
    """A torchvision model (or the twin of kft's `simple_cnn`) with a Linear
    head: (model, head)."""
    from torch import nn

    if name == "simple_cnn":
        layers, width = [], 3
        for i, out in enumerate((16, 16, 32, 64)):
            layers += [nn.Conv2d(width, out, 3, stride=1 if i == 0 else 2,
                                 padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        head = nn.Linear(64, NUM_CLASSES)
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             head), head
    if name == "mobilenetv3small":
        from torchvision import models

        model = models.mobilenet_v3_small(weights=None)
        model.classifier = nn.Linear(576, NUM_CLASSES)
        return model, model.classifier
    import _vs_torch

    model, head, _ = _vs_torch.torch_model(name)
    return model, head


def run_torch(cfg):
    """One PyTorch side's rows for one backbone (a generator)."""
    import torch

    # cuDNN picks its fastest convolution algorithms, as XLA's autotuner
    # does for kft.
    torch.backends.cudnn.benchmark = True
    for strategy in cfg["strategies"]:
        yield from _torch_rows(cfg, strategy)
        gc.collect()
        if cfg["side"] != "torch-eager":
            torch._dynamo.reset()
        if not cfg["dry_run"]:
            torch.cuda.empty_cache()


def _torch_rows(cfg, strategy):
    import torch
    from torch import nn

    gpu = not cfg["dry_run"]
    device = "cuda" if gpu else "cpu"
    mode = {"torch-compile": "default",
            "torch-max-autotune": "max-autotune"}.get(cfg["side"])
    torch.manual_seed(0)
    model, head = torch_model(cfg["backbone"])
    import _vs_torch

    # Only feature_extraction and full here: no `top` block needed.
    _vs_torch.freeze_torch(model, head, None, strategy)
    model = model.to(device, memory_format=torch.channels_last)
    x, y = _harness.random_batch(cfg["batch"], cfg["size"], NUM_CLASSES)
    # kft's models scale pixels themselves; torchvision's expect it done
    # (on raw [0, 255) pixels the H200 run's ResNet50 full loss was nan).
    x = torch.from_numpy((x / 127.5 - 1).astype("float32"))
    x = x.permute(0, 3, 1, 2).to(device, memory_format=torch.channels_last)
    y = torch.from_numpy(y).to(device)
    head_ids = {id(p) for p in head.parameters()}
    rest = [p for p in model.parameters()
            if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": list(head.parameters()), "lr": 1e-2}]
    if rest:
        groups.append({"params": rest, "lr": 1e-3})
    optimizer = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    forward = model if mode is None else torch.compile(model, mode=mode)
    loss_fn = nn.CrossEntropyLoss()
    mark_step = (torch.compiler.cudagraph_mark_step_begin
                 if mode == "max-autotune" and gpu else lambda: None)

    def step():
        mark_step()  # CUDA graphs: a new iteration, old outputs free
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        return loss

    def window(steps):
        for _ in range(steps):
            loss = step()
        if gpu:
            torch.cuda.synchronize()
        return loss.item()

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    compile_s = _first_call(cfg, lambda: window(1))
    timed = _timed(cfg, lambda: window(cfg["steps"]), cfg["windows"],
                   cfg["steps"])
    yield {**row_base(cfg, strategy), **timed, "side": cfg["side"],
           "variant": cfg["side"], "compile_s": compile_s,
           "device": torch.cuda.get_device_name() if gpu else "cpu",
           "peak_device_mib": (torch.cuda.max_memory_allocated() / 2**20
                               if gpu else None),
           "peak_scope": "strategy" if gpu else None,
           "trainable_params": sum(p.numel() for p in model.parameters()
                                   if p.requires_grad),
           "threads": torch.get_num_threads(),
           "cudnn_benchmark": torch.backends.cudnn.benchmark}
