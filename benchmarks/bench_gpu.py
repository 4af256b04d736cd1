"""The 224 px bf16 training-step matrix on one GPU: kft vs PyTorch.

Run it through `benchmarks/gpu_check.sh` (which installs the carried
wheels and checks the environment first); `--dry-run` runs the same path
on CPU with tiny sizes. For each backbone x strategy (feature extraction,
full fine-tuning), batch 128 of 224 px images in bf16 mixed precision,
random weights, one synthetic batch kept on the device by both sides:

- kft: `kft.build_classifier(backbone, 10, weights=None)`,
  `kft.freeze(model, strategy)`, policy "mixed_bfloat16", compiled with
  `BlockwiseOptimizer(SGD(momentum=0.9), {"head": 1e-2}, default=1e-3)`
  and `steps_per_execution=K`. Rows: `kft K=<K>` (the compiled train
  function called directly on the device-resident batch, K steps a
  call), `kft K=1` (the same function, one step a call: the single-step
  figure), `kft fit K=<K>` (`model.fit` on a data adapter that hands out
  the device-resident batch) and `kft fit host f32 K=<K>` (`fit` on numpy
  float32 batches, as kft's loaders yield them, which Keras copies to the
  device one batch ahead). Keras runs `steps_per_execution` steps as a
  Python loop of calls of the one-step program (its JAX trainer's
  `iterator_step`), each dispatched without waiting for the one before.
  `--extra-rows` adds the rows that compile or trace the step again
  (12-20 s each for EfficientNetB0's full step on the H200): `kft scan
  K=<K>` (K steps as one program, `jax.lax.scan` over the train step: no
  host work between steps at all), `kft fit K=1`, `kft train_on_batch` (a
  host numpy batch every step, the old `--gpu` path of
  `bench_vs_torch.py`, a few steps only) and `kft fit host f32 K=1` /
  `kft fit host u8 K=1` (float32 and uint8 batches, one step a call).
  `--trace-steps` more steps of the `kft K=<K>` row run under JAX's
  profiler: its top ops (and their GPU kernels) are printed under the
  table.
- PyTorch: the torchvision model with a Linear head, the same blocks
  frozen, BatchNorm frozen (kft's `bn="frozen"`), SGD with two parameter
  groups; channels_last model and batch, `torch.autocast(bfloat16)`,
  `torch.backends.cudnn.benchmark` on (XLA autotunes its convolutions).
  Sides: `torch-eager`, `torch-compile` (default mode) and
  `torch-max-autotune` (`mode="max-autotune"`).

A window of steps ends with a device sync (`jax.block_until_ready`,
`torch.cuda.synchronize`); ms/step is the median window over its steps.
"compile s" is the first call (trace, compile and its K steps, or the
first PyTorch step). Peak device memory: `torch.cuda.max_memory_allocated`
or JAX's `peak_bytes_in_use` (which cannot be reset: the process's, that
is the strategy's, covering all of kft's rows of it).

Each backbone, side and strategy runs in a fresh process with its own
timeout, cut from a time budget (`--budget`) so that a slow one cannot
lose the rest: kft, eager PyTorch and `torch.compile` first, backbone
after backbone, then max-autotune with what is left (with 70 % of the
budget to the first phase when max-autotune is asked for, all of it when
not); a process gets at least the seconds its side needs (`NEEDS`) while
its phase has them, whatever is promised to later ones, so a plan too
big for the budget loses its last processes: one with fewer seconds
left is not started, and its rows say "skipped"; one cut off says
"timeout"; none runs past the budget's end. Up
to `--parallel` processes run at once: their first calls (trace,
compile, the autotuners' trial runs) overlap, and a timed window has the
machine to itself: a file lock keeps other windows out and every other
benchmark process is stopped while it runs (`gpu_wait_s` in the JSON is
the wait for the lock, `paused_processes` how many were stopped). A
process starts only between windows, and the seconds it is stopped do
not count toward its timeout (up to the budget's end) or its "compile
s". A lock alone was not
enough on the H200: with first calls holding it shared, timed windows
waited up to 68 s each, and eager PyTorch's launch-bound
feature-extraction steps were 1.28-1.50x slower with 4 processes at once
than one at a time (the others' CPU work, not held by the lock, is the
likely cause). Overlapping first calls make "compile s" longer than
alone and the autotuners' trials noisier: a window can stop a process
while its autotuner times a kernel, so every row keeps the end of its
process's stderr (`log_tail`) and a row whose stderr has XLA's
autotuner warnings ("delay kernel timed out", "sub-optimal accuracy") is
marked (`autotune_warnings`, and a note under the table);
`--parallel 1` runs one process at a time.
Results: `matrix.json` (rewritten after every process), `rows.jsonl`
(every row as its process makes it, kept if this script is killed) and
`table.md` under `--out-dir` (default `benchmarks/results/gpu/`). A
benchmark process dies with this script. The steps themselves are in
`_gpu_steps.py`.

    bash benchmarks/gpu_check.sh                      # on the GPU machine
    bash benchmarks/gpu_check.sh --dry-run --out-dir /tmp/gpu_dry  # CPU
"""

import argparse
import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
import time

import _gpu_steps
import _harness

BACKBONES = ("resnet50", "efficientnetb0", "convnext_tiny",
             "mobilenetv3large")
DRY_BACKBONES = ("simple_cnn", "mobilenetv3small")
ROWS_LOG = "rows.jsonl"
STRATEGIES = ("feature_extraction", "partial", "full")
TORCH_SIDES = ("torch-eager", "torch-compile", "torch-max-autotune")
SIDES = ("kft",) + TORCH_SIDES
# One process per backbone, side and strategy. Processes start in plan
# order, `--parallel` at a time, a phase's until its fraction of `--budget`
# has passed. One may use what is left of its phase but the seconds
# promised to the phase's later processes (shared among the slots), so a
# slow first backbone neither loses its rows nor takes the others' time;
# it gets at least what it needs while the phase has that much left.
# On the H200 one process per backbone and side, one at a time, did not get
# past eager PyTorch in 450 s (first calls: 5-63 s each), hence the slots,
# the smaller processes and torch.compile in the first phase; with 4 slots
# and a lock shared by first calls, timed windows waited for it (113 s of
# one process's 176 s), hence first calls without it and timed windows
# that stop the others.
# A phase ends at its fraction of the budget only when a later phase has
# processes: without max-autotune the first phase has all of it.
PHASES = ((("kft", "torch-eager", "torch-compile"), 0.7),
          (("torch-max-autotune",), 1.0))
# The fewest seconds a process of each side needs on the GPU (imports,
# first call, timed windows; from the H200 runs: kft's first calls 5-63 s,
# torch.compile's 21-28 s alone): a process with less time left is
# skipped, not started to be cut off, and each later process of a phase
# is promised this much. `--min-timeout` sets one value for every side.
NEEDS = {"kft": 45, "torch-eager": 20, "torch-compile": 45,
         "torch-max-autotune": 90}
# Lines of a process's stderr that say an autotuner's timings are off
# (e.g. a timed window stopped it while it measured): its row is marked.
AUTOTUNE_WARNINGS = ("delay kernel timed out", "sub-optimal accuracy")
GPU_DEFAULTS = {"backbones": list(BACKBONES), "size": 224, "batch": 128,
                "steps": 30, "windows": 3, "steps_per_execution": 10,
                "host_steps": 5, "budget": 450, "min_timeout": None,
                "parallel": 3, "trace_steps": 10}
DRY_DEFAULTS = {"backbones": ["simple_cnn"], "size": 32, "batch": 4,
                "steps": 2, "windows": 1, "steps_per_execution": 2,
                "host_steps": 2, "budget": 600, "min_timeout": 5,
                "parallel": 2, "trace_steps": 2}


class CheckFailed(Exception):
    """The environment cannot run the matrix; the message says why."""


def check_environment(dry_run, sides, timeout=180):
    """Checks both sides' imports and GPUs, each in a fresh process;
    returns the sides that can run and what was found.

    Raises `CheckFailed` naming what is missing. A dry run checks only
    whether torch is installed (the side processes import the rest
    themselves) and drops the PyTorch sides, with a line saying so, when
    it is not.
    """
    if dry_run:
        torch_sides = [s for s in sides if s in TORCH_SIDES]
        if torch_sides and importlib.util.find_spec("torch") is None:
            print("gpu_check: torch is not installed here: skipping the "
                  f"PyTorch sides ({', '.join(torch_sides)})", flush=True)
            sides = [s for s in sides if s not in TORCH_SIDES]
        return sides, {}
    found = {}
    needed = ["jax"] + (["torch"] if set(sides) & set(TORCH_SIDES) else [])
    for name in needed:
        run = _harness.run_isolated("_gpu_steps:check_side", {"side": name},
                                    timeout=timeout)
        if run.error or not run.results:
            raise CheckFailed(f"the {name} check process failed: "
                              f"{run.error or 'no result'}")
        found[name] = result = run.results[0]
        if result["missing"]:
            raise CheckFailed(
                f"cannot import what the {name} side needs: "
                + "; ".join(result["missing"]) + ". Bring missing packages "
                "as wheels in .whl (DEVELOPERS.md, 'Benchmarks on a lent GPU "
                "machine') and run from the repository root.")
    if found["jax"]["platform"] != "gpu":
        raise CheckFailed(
            f"JAX sees no GPU (platform {found['jax']['platform']!r}, "
            f"devices {found['jax']['devices']}): is jax's CUDA plugin "
            "installed and a GPU visible (nvidia-smi)? Use --dry-run to try "
            "the script on CPU.")
    if "torch" in found and not found["torch"]["cuda"]:
        raise CheckFailed(
            "PyTorch sees no GPU (torch.cuda.is_available() is False, torch "
            f"{found['torch']['versions']['torch']}). Use --dry-run to try "
            "the script on CPU.")
    return sides, found


def schedule(backbones, sides, strategies):
    """The processes in running order, by phase: (phase end, side,
    backbone, strategy). Within a phase, backbone after backbone (each
    one's sides side by side, so that a cut budget loses whole backbones,
    not whole sides); a phase ends at its fraction of the budget only
    when a later phase has processes."""
    phases = [(phase_sides, end) for phase_sides, end in PHASES
              if set(phase_sides) & set(sides)]
    return [(1.0 if i == len(phases) - 1 else end, side, backbone, strategy)
            for i, (phase_sides, end) in enumerate(phases)
            for backbone in backbones
            for side in phase_sides if side in sides
            for strategy in strategies]


def needs(args, side):
    """The fewest seconds a process of `side` is started with."""
    return NEEDS[side] if args.min_timeout is None else args.min_timeout


def run_matrix(args, sides, write):
    """Runs every (side, backbone, strategy) process within the budget, up
    to `args.parallel` at once; `write` is called with the rows, in plan
    order, after each."""
    plan = schedule(args.backbones, sides, args.strategies)
    done = [None] * len(plan)
    order = iter(range(len(plan)))
    lock = threading.Lock()  # the plan, `done`, printing and `write`
    begin = time.perf_counter()
    # No process runs past the budget's end, however long it was stopped.
    hard_end = time.time() + args.budget
    lock_dir = tempfile.mkdtemp(prefix="kft_gpu_lock_")
    # Every row as its process makes it: kept if this process is killed.
    rows_log = os.path.join(args.out_dir, ROWS_LOG)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(rows_log, "w"):
        pass
    # Several at once: a timed window takes the lock and stops the
    # processes registered in proc_dir (`_gpu_steps.timed_section`).
    shared = {"gpu_lock": None, "proc_dir": None}
    if args.parallel > 1:
        shared = {"gpu_lock": os.path.join(lock_dir, "gpu.lock"),
                  "proc_dir": os.path.join(lock_dir, "procs")}
        os.mkdir(shared["proc_dir"])

    def take():  # the next process and its timeout, or None when done
        with lock:
            i = next(order, None)
            if i is None:
                return None
            end, side = plan[i][:2]
            phase_left = begin + end * args.budget - time.perf_counter()
            # The phase's later processes share `parallel` slots; but a
            # process whose own need fits is never skipped for them (in a
            # plan too big for its phase, the last ones are skipped).
            promised = sum(needs(args, s) for e, s, _, _ in plan[i + 1:]
                           if e == end)
            timeout = phase_left - promised / args.parallel
            if phase_left >= needs(args, side):
                timeout = max(timeout, needs(args, side))
            return i, min(args.timeout, timeout), phase_left

    def run_one(i, timeout, phase_left):
        _, side, backbone, strategy = plan[i]
        cfg = {"side": side, "backbone": backbone,
               "strategies": [strategy], "size": args.size,
               "batch": args.batch, "steps": args.steps,
               "windows": args.windows, "dry_run": args.dry_run,
               "steps_per_execution": args.steps_per_execution,
               "host_steps": args.host_steps, **shared,
               "trace_steps": args.trace_steps,
               "extra_rows": args.extra_rows, "parallel": args.parallel}
        if timeout < needs(args, side):
            return [_missing(cfg, strategy, "skipped",
                             f"skipped: {phase_left:.0f} s left in its phase "
                             f"of --budget (--timeout {args.timeout:g}), a "
                             f"{side} process needs {needs(args, side):g}")]
        with lock:
            print(f"[{time.perf_counter() - begin:5.0f} s] {backbone} "
                  f"{strategy} {side}: up to {timeout:.0f} s", flush=True)
        target = "_gpu_steps:run_kft" if side == "kft" else \
            "_gpu_steps:run_torch"
        env = {"KFT_COMPILATION_CACHE": args.jax_cache,
               _harness.RESULTS_LOG: rows_log}
        if args.parallel > 1 and side == "kft" and not args.dry_run:
            # JAX takes 75 % of the GPU's memory at start: leave room for
            # the other processes.
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = \
                f"{min(0.75, 0.8 / args.parallel):.2f}"
        pids = []

        def register(pid):
            pids.append(pid)
            if shared["proc_dir"]:
                open(os.path.join(shared["proc_dir"], str(pid)), "w").close()

        def paused(pid, start, now):  # by the others' windows
            return _gpu_steps.paused_seconds(shared["proc_dir"], start, now,
                                             pid)

        try:
            # Started with no window running, and registered before the
            # next one starts: every window after its start stops it.
            run = _harness.run_isolated(
                target, cfg, timeout=timeout, env=env, on_start=register,
                starting=_gpu_steps.no_window(shared), paused=paused,
                deadline=hard_end)
        finally:
            for pid in pids:
                # Killed inside its own window, it left the window open:
                # the others' deadlines would move on with it for ever.
                _gpu_steps.close_windows(shared["proc_dir"], pid)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(shared["proc_dir"] or "",
                                           str(pid)))
            # Cut off inside its own window, it left the others stopped.
            _gpu_steps.continue_all(shared)
        warned = [line.strip() for line in run.log.splitlines()
                  if any(w in line.lower() for w in AUTOTUNE_WARNINGS)]
        new = [{**r, "parallel": args.parallel, "log_tail": run.log,
                **({"autotune_warnings": warned[-5:]} if warned else {})}
               for r in run.results]
        if new and run.error is None:
            return new
        # kft's process yields its rows one by one: keep the ones measured.
        status = "timeout" if run.returncode is None else "error"
        return new + [_missing(cfg, strategy, status,
                               run.error or "no result")]

    def slot():
        while (job := take()) is not None:
            new = run_one(*job)
            with lock:
                backbone = plan[job[0]][2]
                for row in new:
                    print(f"   {backbone} {_row_line(row)}", flush=True)
                done[job[0]] = new
                write([r for rows in done if rows for r in rows])

    try:
        threads = [threading.Thread(target=slot)
                   for _ in range(args.parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)
    return [r for rows in done for r in rows]


def _missing(cfg, strategy, status, why):
    return {**_gpu_steps.row_base(cfg, strategy), "side": cfg["side"],
            "variant": cfg["side"], "status": status, "error": why}


def _row_line(row):
    if "error" in row:
        return (f"{row['strategy']} {row['variant']}: {row['status']}: "
                f"{row['error'][-400:]}")
    return (f"{row['strategy']} {row['variant']}: "
            f"{row['ms_per_step']:.2f} ms/step, loss {row['loss']:.3f}")


def table(rows):
    """Markdown: per backbone and strategy, every variant's speed, first
    call and peak device memory, and its speed relative to the fastest
    PyTorch side (above 1: faster than it)."""
    lines = ["| backbone | strategy | side | img/s | ms/step | compile s | "
             "peak MiB | speed vs best torch |",
             "|---|---|---|---|---|---|---|---|"]
    for backbone, strategy in dict.fromkeys(
            (r["backbone"], r["strategy"]) for r in rows):
        group = [r for r in rows if (r["backbone"], r["strategy"])
                 == (backbone, strategy)]
        torch_ms = [r["ms_per_step"] for r in group
                    if r["side"] in TORCH_SIDES and "error" not in r]
        for r in group:
            if "error" in r:
                cells = [r["status"], "-", "-", "-", "-"]
            else:
                peak = r.get("peak_device_mib")
                cells = [f"{1000 * r['batch'] / r['ms_per_step']:.0f}",
                         f"{r['ms_per_step']:.2f}",
                         "-" if r["compile_s"] is None
                         else f"{r['compile_s']:.1f}",
                         "-" if peak is None else f"{peak:.0f}",
                         f"{min(torch_ms) / r['ms_per_step']:.2f}x"
                         if torch_ms else "-"]
            mark = " *" if r.get("autotune_warnings") else ""
            lines.append(f"| {backbone} | {strategy} | {r['variant']}{mark} "
                         "| " + " | ".join(cells) + " |")
    warned = [r for r in rows if r.get("autotune_warnings")]
    if warned:
        lines += ["", "\\* its process's stderr mentions the autotuner "
                  "(timings it chose may be off: rerun it alone with "
                  "`--parallel 1`):"]
        lines += [f"- {r['backbone']} {r['strategy']} {r['variant']}: "
                  + "; ".join(r["autotune_warnings"])[-300:]
                  for r in warned]
    return "\n".join(lines)


def top_ops_text(rows, top=8):
    """Markdown: the ops taking the most time in kft's traced steps."""
    lines = []
    for r in rows:
        if r.get("trace_error"):
            lines.append(f"- {r['backbone']} {r['strategy']}: no trace "
                         f"({r['trace_error']})")
        elif r.get("top_ops"):
            ops = "; ".join(f"`{op}` {ms:.2f}" + (
                f" ({', '.join(kernels)})" if kernels != [op] else "")
                for op, kernels, ms in r["top_ops"][:top])
            lines.append(f"- {r['backbone']} {r['strategy']} ({r['variant']},"
                         f" {r['traced_steps']} steps traced, ops sum "
                         f"{r['traced_ms_per_step']:.2f} ms/step): {ops}")
    if not lines:
        return ""
    return ("Top ops of kft's step, ms per step (JAX's profiler; an op's "
            "kernels in brackets):\n\n" + "\n".join(lines))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes (simple_cnn, 32 px, batch 4, "
                             "2 steps, K=2); PyTorch sides skipped when torch "
                             "is missing")
    parser.add_argument("--out-dir", default=_harness.results_path("gpu"))
    parser.add_argument("--backbones", nargs="+", default=None,
                        choices=BACKBONES + DRY_BACKBONES,
                        help="default: the four benchmark backbones "
                             "(dry run: simple_cnn)")
    parser.add_argument("--strategies", nargs="+",
                        default=["feature_extraction", "full"],
                        choices=STRATEGIES)
    parser.add_argument("--sides", nargs="+", default=list(SIDES),
                        choices=SIDES)
    for name, kind, text in (
            ("size", int, "image size (224; dry run 32)"),
            ("batch", int, "batch size (128; dry run 4)"),
            ("steps", int, "steps per timed window (30; dry run 2)"),
            ("windows", int, "timed windows, median reported (3; dry run 1)"),
            ("steps-per-execution", int, "kft's K (10; dry run 2)"),
            ("host-steps", int, "kft train_on_batch steps (5; dry run 2)"),
            ("trace-steps", int, "kft steps traced with JAX's profiler for "
                                 "the top ops (10; dry run 2; 0: none)"),
            ("budget", float, "seconds for the whole matrix (450; dry run "
                              "600)"),
            ("min-timeout", float, "a process with less time left is "
                                   "skipped (per side: kft 45, torch-eager "
                                   "20, torch-compile 45, max-autotune 90; "
                                   "dry run 5)")):
        parser.add_argument("--" + name, type=kind, default=None, help=text)
    parser.add_argument(
        "--parallel", type=int, default=None,
        help="processes at once (3; dry run 2): first calls (compile, "
             "autotune) overlap, timed windows have the GPU alone; 1 runs "
             "one process at a time")
    parser.add_argument(
        "--extra-rows", action="store_true",
        help="also kft's rows that compile or trace the step again: `kft "
             "scan K` (K steps as one program), `kft fit K=1`, `kft "
             "train_on_batch`, `kft fit host f32/u8 K=1`")
    parser.add_argument("--timeout", type=float, default=300,
                        help="most seconds for one backbone and side")
    parser.add_argument("--jax-cache", default=None,
                        help="JAX compilation cache of this run (default: a "
                             "fresh temporary folder, so first compiles are "
                             "real)")
    args = parser.parse_args(argv)
    defaults = DRY_DEFAULTS if args.dry_run else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.parallel < 1:
        parser.error(f"--parallel must be 1 or more, not {args.parallel}")
    # Each once, in the order of STRATEGIES.
    args.strategies = sorted(set(args.strategies), key=STRATEGIES.index)
    return args


def main(argv=None):
    args = parse_args(argv)
    begin = time.perf_counter()
    own_cache = args.jax_cache is None
    if own_cache:
        args.jax_cache = tempfile.mkdtemp(prefix="kft_gpu_check_jax_cache_")
    try:
        return _run(args, begin)
    except CheckFailed as e:
        print(f"gpu_check: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        if own_cache:
            shutil.rmtree(args.jax_cache, ignore_errors=True)


def _run(args, begin):
    sides, found = check_environment(args.dry_run, args.sides)
    for name, result in found.items():
        print(f"gpu_check: {name} sees {result['devices']} "
              f"({result['versions']})", flush=True)
    json_path = os.path.join(args.out_dir, "matrix.json")

    def write(rows):
        _harness.write_json(json_path, rows)

    args.budget -= time.perf_counter() - begin  # the checks count too
    rows = run_matrix(args, sides, write)
    text = table(rows)
    ops = top_ops_text(rows)
    if ops:
        text += "\n\n" + ops
    header = _harness.header(begin)
    if args.parallel > 1:
        header += (f"\n\nUp to {args.parallel} processes at once: first "
                   "calls overlapped (compile s is longer than alone), "
                   "each timed window had the machine to itself (the "
                   "other processes stopped).")
    print(header + "\n\n" + text)
    _harness.write_text(os.path.join(args.out_dir, "table.md"),
                        header + "\n\n" + text + "\n")
    print(f"gpu_check: wrote {json_path} and table.md", flush=True)
    failed = [r for r in rows if r.get("status") == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
