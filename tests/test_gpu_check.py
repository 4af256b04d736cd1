"""benchmarks/gpu_check.sh and bench_gpu.py: the CPU dry run, the wheel
check, and how the matrix reports missing GPUs, timeouts and budgets."""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.sh"
HAS_TORCH = importlib.util.find_spec("torch") is not None
KFT_VARIANTS = {"kft K=2", "kft K=1", "kft fit K=2", "kft fit host f32 K=2",
                "kft scan K=2", "kft fit K=1", "kft train_on_batch",
                "kft fit host f32 K=1", "kft fit host u8 K=1"}
WHEELS = ("keras-3.15.1-py3-none-any.whl", "namex-0.1.0-py3-none-any.whl",
          "optree-0.20.0-cp312-cp312-manylinux_2_28_x86_64.whl",
          "grain-0.2.18-cp312-cp312-manylinux_2_28_x86_64.whl",
          "array_record-0.8.6-cp312-cp312-manylinux_2_17_x86_64.whl",
          "portpicker-1.6.0-py3-none-any.whl")


def run_script(*args, timeout):
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout, env={**os.environ,
                                         "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry")
    # One strategy and no torch.compile keep it short (torch.compile takes
    # minutes on CPU); the sides run the same code as on the GPU, kft's
    # opt-in rows too.
    proc = run_script("--dry-run", "--out-dir", str(out), "--strategies",
                      "feature_extraction", "--sides", "kft", "torch-eager",
                      "--extra-rows", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_dry_run_writes_the_table_and_json(dry_run):
    proc, out = dry_run
    rows = json.loads((out / "matrix.json").read_text())
    variants = {row["variant"] for row in rows}
    assert KFT_VARIANTS <= variants
    assert ("torch-eager" in variants) == HAS_TORCH
    for row in rows:
        assert (row["backbone"], row["strategy"], row["batch"]) == (
            "simple_cnn", "feature_extraction", 4)
        assert "error" not in row and "commit" in row and row["date"]
        assert row["ms_per_step"] > 0 and all(
            ms > 0 for ms in row["window_ms_per_step"])
        assert math.isfinite(row["loss"]) and row["loss"] > 0
    kft_rows = [row for row in rows if row["side"] == "kft"]
    assert all(row["compile_s"] > 0 for row in kft_rows)
    # The default rows first, then the opt-in ones (each a new compile).
    assert [(row["variant"], row["steps_per_execution"])
            for row in kft_rows] == [
        ("kft K=2", 2), ("kft K=1", 1), ("kft fit K=2", 2),
        ("kft fit host f32 K=2", 2), ("kft scan K=2", 2), ("kft fit K=1", 1),
        ("kft train_on_batch", 1), ("kft fit host f32 K=1", 1),
        ("kft fit host u8 K=1", 1)]
    # Every row as its process made it, also in rows.jsonl; each keeps
    # the end of its process's stderr.
    logged = [json.loads(line) for line in
              (out / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["side"], r["variant"]) for r in logged) == sorted(
        (r["side"], r["variant"]) for r in rows)  # in the order made
    assert all(isinstance(row["log_tail"], str) for row in rows)
    # The floor row carries the profiler's top ops of 2 traced steps.
    traced, = [row for row in kft_rows if "top_ops" in row]
    assert traced["variant"] == "kft K=2" and traced["traced_steps"] == 2
    assert 0 < traced["top_ops"][0][2] <= traced["traced_ms_per_step"]
    assert "trace_error" not in traced
    table = (out / "table.md").read_text()
    assert table.split("\n\n", 1)[1] in proc.stdout  # printed, and written
    assert "Up to 2 processes at once" in table  # the dry run's slots
    assert "Top ops of kft's step" in table and (
        f"`{traced['top_ops'][0][0]}`" in table)
    for variant in variants:
        lines = [line for line in table.splitlines()
                 if f"| {variant} |" in line]
        assert len(lines) == 1
        images_per_s, ms_per_step, compile_s = lines[0].split("|")[4:7]
        assert float(images_per_s) > 0 and float(ms_per_step) > 0
        # The table rounds to 0.1 s: a tiny eager first step prints 0.0.
        assert float(compile_s) >= 0


def test_dry_run_says_when_it_skips_torch(dry_run):
    proc, _ = dry_run
    skipped = ("torch is not installed here: skipping the PyTorch sides "
               "(torch-eager)") in proc.stdout
    assert skipped != HAS_TORCH


def make_wheels(folder, names):
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_run_takes_the_depthwise_benchmark(tmp_path):
    # The same wheels and checks, another script: EfficientNetB0's first
    # two depthwise layers, each variant's output and gradients checked
    # against Keras' convolution (float32 in the dry run).
    out = tmp_path / "dw"
    proc = run_script("--dry-run", "--run", "bench_gpu_depthwise.py",
                      "--backbones", "efficientnetb0", "--limit", "2",
                      "--out-dir", str(out), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "depthwise.json").read_text())
    assert [(r["input"], r["kernel"], r["strides"], r["count"])
            for r in rows] == [([2, 16, 16, 32], [3, 3], [1, 1], 1),
                               ([2, 17, 17, 96], [3, 3], [2, 2], 1)]
    for row in rows:
        for variant in ("xla", "shifted", "kft_vjp"):
            assert row[f"{variant}_train_ms"] > 0
            assert row[f"{variant}_train_max_rel_diff"] < 1e-5
        for variant in ("xla", "shifted"):
            assert row[f"{variant}_forward_ms"] > 0
            assert row[f"{variant}_max_rel_diff"] < 1e-5
        assert "kft_vjp_forward_ms" not in row and row["commit"]
    table = (out / "table.md").read_text()
    assert "| efficientnetb0 | 17x17x96 | 3x3, 2 | 1 |" in table
    assert "| efficientnetb0 | all, weighted by layers | | 2 |" in table


@pytest.mark.parametrize("script, message", [
    ("../bench.py", "--run takes a file name in benchmarks/, not "
                    "'../bench.py'"),
    ("nope.py", "--run: no benchmarks/nope.py (there are: bench_gpu.py "
                "bench_gpu_depthwise.py"),
])
def test_run_names_a_script_that_is_not_there(script, message):
    proc = run_script("--dry-run", "--run", script, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr


def test_missing_wheels_stop_at_once_naming_them(tmp_path):
    start = time.perf_counter()
    proc = run_script("--wheels", str(make_wheels(tmp_path / "w", [])),
                      timeout=60)
    assert proc.returncode == 2
    assert ("missing wheel(s) in " + str(tmp_path / "w") + ": keras namex "
            "optree grain array_record portpicker.") in proc.stderr
    assert "pip download" in proc.stderr and "keras==3.15.1" in proc.stderr
    assert time.perf_counter() - start < 10


def test_one_missing_wheel_is_named_alone(tmp_path):
    wheels = make_wheels(tmp_path / "w", [w for w in WHEELS
                                          if not w.startswith("optree")])
    proc = run_script("--wheels", str(wheels), timeout=60)
    assert proc.returncode == 2
    assert f"missing wheel(s) in {wheels}: optree." in proc.stderr
    assert "-d .whl optree==0.20.0" in proc.stderr


def test_two_versions_of_a_wheel_stop_it(tmp_path):
    wheels = make_wheels(tmp_path / "w",
                         WHEELS + ("keras-3.15.0-py3-none-any.whl",))
    proc = run_script("--wheels", str(wheels), timeout=60)
    assert proc.returncode == 2
    assert "2 wheels of keras" in proc.stderr
    assert "keep one version" in proc.stderr


def test_a_broken_wheel_fails_the_install(tmp_path):
    proc = run_script("--wheels", str(make_wheels(tmp_path / "w", WHEELS)),
                      "--install-only", timeout=120)
    assert proc.returncode == 2
    assert "pip could not install the wheels" in proc.stderr


@pytest.fixture
def bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _harness
    import bench_gpu

    calls, kwargs = [], []

    def run_isolated(target, arg=None, env=None, timeout=None,
                     on_start=None, starting=None, paused=None,
                     deadline=None):
        calls.append((target, arg, timeout, env))
        kwargs.append({"starting": starting, "paused": paused,
                       "deadline": deadline})
        return bench_gpu.FAKE(target, arg)

    monkeypatch.setattr(_harness, "run_isolated", run_isolated)
    bench_gpu.calls, bench_gpu.kwargs = calls, kwargs
    yield bench_gpu
    del bench_gpu.calls, bench_gpu.kwargs
    bench_gpu.__dict__.pop("FAKE", None)


def checks(jax=None, torch=None):
    import _harness

    found = {"jax": {"missing": [], "platform": "gpu", "devices": ["H200"]},
             "torch": {"missing": [], "cuda": True, "devices": ["H200"],
                       "versions": {"torch": "2.11"}}}
    found["jax"].update(jax or {})
    found["torch"].update(torch or {})
    return lambda target, arg: _harness.Isolated([found[arg["side"]]], 0,
                                                 None)


@pytest.mark.parametrize("jax, torch, dry_run, message", [
    ({"platform": "cpu", "devices": ["cpu"]}, None, False,
     "JAX sees no GPU (platform 'cpu'"),
    (None, {"cuda": False}, False,
     "PyTorch sees no GPU (torch.cuda.is_available() is False"),
    ({"missing": ["keras (import keras: ModuleNotFoundError: x)"]}, None,
     False, "cannot import what the jax side needs: keras (import keras"),
    (None, {"missing": ["torch (import torch: ModuleNotFoundError: x)"]},
     False, "cannot import what the torch side needs: torch"),
])
def test_environment_checks_say_what_is_wrong(bench_gpu, jax, torch,
                                              dry_run, message):
    bench_gpu.FAKE = checks(jax, torch)
    with pytest.raises(bench_gpu.CheckFailed, match=re.escape(message)):
        bench_gpu.check_environment(dry_run, list(bench_gpu.SIDES))


def test_a_dry_run_without_torch_keeps_the_kft_side(bench_gpu, capsys,
                                                     monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: (
        None if name == "torch" else real(name)))
    sides, _ = bench_gpu.check_environment(True, list(bench_gpu.SIDES))
    assert sides == ["kft"] and bench_gpu.calls == []
    assert "skipping the PyTorch sides (torch-eager, torch-compile, " \
           "torch-max-autotune)" in capsys.readouterr().out


def fake_rows(cfg, strategies):
    return [{"backbone": cfg["backbone"], "strategy": s, "side": cfg["side"],
             "variant": cfg["side"], "batch": cfg["batch"],
             "ms_per_step": 10.0, "compile_s": 1.0, "peak_device_mib": 100.0,
             "loss": 2.3} for s in strategies]


def test_a_timeout_keeps_the_rows_before_it_and_the_rest(bench_gpu, tmp_path):
    import _harness

    def fake(target, cfg):
        key = (cfg["side"], cfg["backbone"], cfg["strategies"])
        if key == ("kft", "resnet50", ["full"]):  # one row, then cut off
            row, = fake_rows(cfg, ["full"])
            return _harness.Isolated([{**row, "variant": "kft K=10"}], None,
                                     "timed out after 9 s")
        if key == ("torch-max-autotune", "resnet50", ["full"]):
            return _harness.Isolated([], None, "timed out after 9 s")
        return _harness.Isolated(fake_rows(cfg, cfg["strategies"]), 0, None)

    bench_gpu.FAKE = fake
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path),
                                 "--backbones", "resnet50", "convnext_tiny",
                                 "--sides", "kft", "torch-max-autotune",
                                 "--parallel", "1"])
    written = []
    rows = bench_gpu.run_matrix(args, args.sides, written.append)
    assert len(rows) == 9 and len(written) == 8
    timeouts = [(r["backbone"], r["side"], r["strategy"], r["status"])
                for r in rows if "error" in r]
    assert timeouts == [("resnet50", "kft", "full", "timeout"),
                        ("resnet50", "torch-max-autotune", "full", "timeout")]
    # One process per backbone, side and strategy: kft first, max-autotune
    # with what is left, each with its own share.
    assert [(c[1]["side"], c[1]["backbone"], c[1]["strategies"])
            for c in bench_gpu.calls] == [
        (side, backbone, [strategy])
        for side in ("kft", "torch-max-autotune")
        for backbone in ("resnet50", "convnext_tiny")
        for strategy in ("feature_extraction", "full")]
    # A process may use its phase's time but what is promised to later ones.
    assert bench_gpu.calls[0][2] == pytest.approx(
        min(args.timeout, 0.7 * args.budget - 3 * bench_gpu.NEEDS["kft"]),
        abs=1)
    # One process at a time: no GPU lock, JAX's memory left as it is.
    assert all(c[1]["gpu_lock"] is None for c in bench_gpu.calls)
    assert all("XLA_PYTHON_CLIENT_MEM_FRACTION" not in c[3]
               for c in bench_gpu.calls)
    assert all(bench_gpu.NEEDS[c[1]["side"]] <= c[2] <= args.timeout
               for c in bench_gpu.calls)
    table = bench_gpu.table(rows)
    assert "| resnet50 | full | torch-max-autotune | timeout | - |" in table
    assert "| resnet50 | full | kft | timeout | - |" in table
    assert "| resnet50 | full | kft K=10 | 12800 | 10.00 | 1.0 | 100 | - |" \
        in table  # measured before the cut
    assert ("| resnet50 | feature_extraction | kft | 12800 | 10.00 | 1.0 | "
            "100 | 1.00x |") in table


def test_a_spent_budget_skips_what_is_left(bench_gpu, tmp_path):
    import _harness

    bench_gpu.FAKE = lambda target, cfg: _harness.Isolated(
        fake_rows(cfg, cfg["strategies"]), 0, None)
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path),
                                 "--budget", "10", "--backbones", "resnet50",
                                 "--strategies", "full"])
    rows = bench_gpu.run_matrix(args, args.sides, lambda rows: None)
    assert [r["status"] for r in rows] == ["skipped"] * 4
    assert bench_gpu.calls == []


def test_parallel_slots_overlap_processes_and_keep_plan_order(bench_gpu,
                                                             tmp_path):
    import threading

    import _harness

    running, most = set(), [0]
    guard = threading.Lock()

    def fake(target, cfg):
        with guard:
            running.add((cfg["side"], cfg["backbone"]))
            most[0] = max(most[0], len(running))
        time.sleep(0.3)
        with guard:
            running.discard((cfg["side"], cfg["backbone"]))
        return _harness.Isolated(fake_rows(cfg, cfg["strategies"]), 0, None)

    bench_gpu.FAKE = fake
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path),
                                 "--backbones", "resnet50", "convnext_tiny",
                                 "--sides", "kft", "torch-eager",
                                 "--strategies", "full"])
    assert args.parallel == 3  # the GPU default
    written = []
    rows = bench_gpu.run_matrix(args, args.sides, written.append)
    assert most[0] == 3
    # Rows in plan order whatever order the processes finished in:
    # backbone after backbone, each one's sides together.
    assert [(r["side"], r["backbone"]) for r in rows] == [
        ("kft", "resnet50"), ("torch-eager", "resnet50"),
        ("kft", "convnext_tiny"), ("torch-eager", "convnext_tiny")]
    assert all(r["parallel"] == 3 for r in rows) and len(written) == 4
    locks = {c[1]["gpu_lock"] for c in bench_gpu.calls}
    assert len(locks) == 1 and None not in locks
    assert not os.path.exists(locks.pop())  # removed afterwards
    # Each starts between windows, its stopped seconds off its timeout,
    # and ends by the budget's end whatever.
    for given in bench_gpu.kwargs:
        assert given["starting"] is not None and callable(given["paused"])
        assert 0 < given["deadline"] - time.time() <= args.budget
    # JAX would take 75 % of the GPU at start; three at once must fit.
    for _, cfg, _, env in bench_gpu.calls:
        assert (env.get("XLA_PYTHON_CLIENT_MEM_FRACTION") == "0.27") == (
            cfg["side"] == "kft")


def test_parallel_must_be_positive(bench_gpu, capsys):
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--parallel", "0"])
    assert "--parallel must be 1 or more, not 0" in capsys.readouterr().err


def test_the_first_phase_has_the_whole_budget_without_max_autotune(
        bench_gpu):
    def phases(sides):
        return [(end, side) for end, side, _, _ in bench_gpu.schedule(
            ["resnet50"], sides, ["full"])]

    assert phases(["kft", "torch-compile"]) == [(1.0, "kft"),
                                                (1.0, "torch-compile")]
    assert phases(["kft", "torch-max-autotune"]) == [
        (0.7, "kft"), (1.0, "torch-max-autotune")]
    assert phases(["torch-max-autotune"]) == [(1.0, "torch-max-autotune")]


@pytest.mark.parametrize("side, started", [("torch-eager", True),
                                           ("torch-compile", False)])
def test_a_process_starts_only_with_the_seconds_its_side_needs(
        bench_gpu, tmp_path, side, started):
    import _harness

    bench_gpu.FAKE = lambda target, cfg: _harness.Isolated(
        fake_rows(cfg, cfg["strategies"]), 0, None)
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path), "--budget",
                                 "40", "--backbones", "resnet50",
                                 "--strategies", "full", "--sides", side])
    row, = bench_gpu.run_matrix(args, args.sides, lambda rows: None)
    assert ("error" not in row) == started == bool(bench_gpu.calls)
    if not started:  # 40 s < the 45 torch.compile needs
        assert row["status"] == "skipped"
    assert bench_gpu.needs(args, "torch-compile") == 45
    args.min_timeout = 7.0  # --min-timeout: one value for every side
    assert bench_gpu.needs(args, "torch-compile") == 7.0


def test_a_plan_too_big_for_its_phase_loses_its_last_processes(
        bench_gpu, tmp_path, monkeypatch):
    import types

    import _harness

    clock = [1000.0]  # each process takes 100 s of it
    monkeypatch.setattr(bench_gpu, "time", types.SimpleNamespace(
        perf_counter=lambda: clock[0], time=lambda: clock[0]))

    def fake(target, cfg):
        clock[0] += 100
        return _harness.Isolated(fake_rows(cfg, cfg["strategies"]), 0, None)

    bench_gpu.FAKE = fake
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path), "--budget",
                                 "100", "--parallel", "1", "--sides", "kft",
                                 "--strategies", "full"])
    rows = bench_gpu.run_matrix(args, args.sides, lambda rows: None)
    # 4 kft processes promised 45 s each: the first still gets its 45.
    assert [r.get("status") for r in rows] == [None] + ["skipped"] * 3
    assert [c[2] for c in bench_gpu.calls] == [45]
    assert "0 s left in its phase" in rows[1]["error"]


def test_rows_whose_process_warned_about_the_autotuner_are_marked(
        bench_gpu, tmp_path):
    import _harness

    warning = ("W1206 gemm_fusion_autotuner.cc:1 Delay kernel timed out: "
               "measured time has sub-optimal accuracy.")
    bench_gpu.FAKE = lambda target, cfg: _harness.Isolated(
        fake_rows(cfg, cfg["strategies"]), 0, None,
        "loading\n" + (warning if cfg["side"] == "kft" else "") + "\n")
    args = bench_gpu.parse_args(["--out-dir", str(tmp_path), "--backbones",
                                 "resnet50", "--strategies", "full",
                                 "--sides", "kft", "torch-eager"])
    rows = bench_gpu.run_matrix(args, args.sides, lambda rows: None)
    assert [r.get("autotune_warnings") for r in rows] == [[warning], None]
    assert rows[1]["log_tail"] == "loading\n\n"
    table = bench_gpu.table(rows)
    assert "| resnet50 | full | kft * | 12800 |" in table
    assert "| resnet50 | full | torch-eager | 12800 |" in table
    assert f"- resnet50 full kft: {warning}" in table


def test_paused_seconds_counts_other_processes_windows(tmp_path):
    import _gpu_steps

    log = tmp_path / _gpu_steps.PAUSES
    log.write_text("1 100.0 -\n2 50.0 60.0\n2 70.0 -\n")  # open ones
    with open(log, "a") as f:
        f.write("2 70.0 80.0\n")  # 2's second window ended
    assert _gpu_steps.paused_seconds(str(tmp_path), 90, 130, 3) == 30
    assert _gpu_steps.paused_seconds(str(tmp_path), 0, 130, 3) == 50
    assert _gpu_steps.paused_seconds(str(tmp_path), 0, 130, 1) == 20
    with open(log, "a") as f:
        f.write("1 100.0 110.0\n")  # it ended
    assert _gpu_steps.paused_seconds(str(tmp_path), 90, 130, 3) == 10
    # A process killed inside its window never closes it: the others'
    # deadlines would move with it for ever. Its end closes it.
    with open(log, "a") as f:
        f.write("4 200.0 -\n")
    now = time.time()
    _gpu_steps.close_windows(str(tmp_path), 4)
    assert _gpu_steps.paused_seconds(str(tmp_path), 150, now + 1000, 3) \
        == pytest.approx(now - 200, abs=5)
    _gpu_steps.close_windows(str(tmp_path), 2)  # closed ones stay
    _gpu_steps.close_windows(str(tmp_path / "none"), 2)  # no log yet


SLEEPER = """\
import os, time
def run(arg):
    yield {"pid": os.getpid()}
    time.sleep(arg["s"])
    yield {"slept": arg["s"]}
"""


def test_seconds_stopped_do_not_count_toward_a_timeout(tmp_path,
                                                       monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _harness

    (tmp_path / "sleeper.py").write_text(SLEEPER)
    env = {"PYTHONPATH": str(tmp_path)}
    run = _harness.run_isolated("sleeper:run", {"s": 2}, env=env,
                                timeout=1.0)
    assert run.returncode is None and len(run.results) <= 1
    run = _harness.run_isolated("sleeper:run", {"s": 2}, env=env,
                                timeout=1.0, paused=lambda *_: 8.0)
    assert run.error is None and run.results[-1] == {"slept": 2}
    # But not past the budget's end.
    start = time.time()
    run = _harness.run_isolated("sleeper:run", {"s": 30}, env=env,
                                timeout=1.0, paused=lambda *_: 60.0,
                                deadline=start + 1.5)
    assert run.returncode is None and time.time() - start < 15
    assert run.error.startswith("cut off at its deadline, after ")


def test_a_killed_benchmark_leaves_no_process_and_keeps_the_rows(
        tmp_path):
    # A device command cut off by its own limit kills the script; its
    # benchmark processes (their own sessions) would hold the GPU on.
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    rows = tmp_path / "rows.jsonl"
    parent = subprocess.Popen([sys.executable, "-c", (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); "
        "import _harness; _harness.run_isolated('sleeper:run', {'s': 120}, "
        f"env={{'PYTHONPATH': {str(tmp_path)!r}, "
        f"_harness.RESULTS_LOG: {str(rows)!r}}})")])
    try:
        deadline = time.perf_counter() + 60
        while (not rows.exists() or not rows.read_text()) and \
                time.perf_counter() < deadline:
            time.sleep(0.1)
        pid = json.loads(rows.read_text())["pid"]  # the row made so far
        assert process_state(pid) != "Z"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.perf_counter() + 10
    while alive(pid) and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not alive(pid)


def alive(pid):
    try:
        return process_state(pid) != "Z"
    except FileNotFoundError:
        return False


TICKER = """\
import os, time
def tick(arg):
    # Appends the time every 10 ms until told to stop: what a process
    # compiling beside a timed window would do with the CPU.
    with open(arg["log"], "a") as log:
        while not os.path.exists(arg["stop"]):
            log.write(f"{time.time()}\\n")
            log.flush()
            time.sleep(0.01)
    return {"pgid": os.getpgid(0)}
"""


def test_a_timed_window_stops_the_other_processes(tmp_path, monkeypatch):
    import fcntl
    import signal
    import threading

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _gpu_steps
    import _harness

    (tmp_path / "ticker.py").write_text(TICKER)
    procs = tmp_path / "procs"
    procs.mkdir()
    cfg = {"gpu_lock": str(tmp_path / "gpu.lock"), "proc_dir": str(procs)}
    log, stop = tmp_path / "ticks.log", tmp_path / "stop"
    runs = []

    def register(pid):
        (procs / str(pid)).touch()

    thread = threading.Thread(target=lambda: runs.append(
        _harness.run_isolated("ticker:tick", {"log": str(log),
                                              "stop": str(stop)},
                              env={"PYTHONPATH": str(tmp_path)}, timeout=60,
                              on_start=register)))
    thread.start()
    deadline = time.perf_counter() + 30
    while (not log.exists() or not log.read_text()) and \
            time.perf_counter() < deadline:
        time.sleep(0.05)
    # This process is registered too: a window never stops its own group.
    (procs / str(os.getpgid(0))).touch()
    (procs / "999999999").touch()  # ended since: skipped
    outer_begin = time.time()
    with _gpu_steps.timed_section(cfg) as held:
        begin = time.time()
        time.sleep(0.6)
        end = time.time()
    outer_end = time.time()
    assert held["paused"] == 1 and held["wait_s"] < 0.5
    deadline = time.perf_counter() + 30  # continued: it ticks again
    while not [t for t in map(float, log.read_text().split()) if t > end] \
            and time.perf_counter() < deadline:
        time.sleep(0.05)
    stop.touch()
    thread.join()
    run, = runs
    assert run.error is None, run.error
    ticks = [float(t) for t in log.read_text().split()]
    assert not [t for t in ticks if begin + 0.05 < t < end]
    assert [t for t in ticks if t > end]
    # First calls count the time they were stopped out of "compile s".
    # (The logged window spans the signals sent around the `with` body.)
    assert end - begin <= _gpu_steps.paused_seconds(
        str(procs), begin - 1, end + 1) <= outer_end - outer_begin
    assert _gpu_steps.paused_seconds(str(procs), end + 1, end + 2) == 0
    assert _gpu_steps.paused_seconds(None, begin, end) == 0
    # Not its own window: the window's owner was never stopped.
    assert _gpu_steps.paused_seconds(str(procs), begin - 1, end + 1,
                                     os.getpgid(0)) == 0

    # Another window waits for the lock; a process that died inside its
    # window (its timeout) left the others stopped: `continue_all` sends
    # them on unless a window is running.
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True)
    try:
        register(sleeper.pid)
        os.killpg(sleeper.pid, signal.SIGSTOP)
        with open(cfg["gpu_lock"]) as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # a window elsewhere
            waiter = threading.Thread(target=_gpu_steps.continue_all,
                                      args=(cfg,))
            waiter.start()
            time.sleep(0.3)
            # It waits for the window's end (which continues them too).
            assert waiter.is_alive() and process_state(sleeper.pid) == "T"
            fcntl.flock(f, fcntl.LOCK_UN)
        waiter.join(10)
        assert not waiter.is_alive()
        deadline = time.perf_counter() + 5
        while process_state(sleeper.pid) == "T" and \
                time.perf_counter() < deadline:
            time.sleep(0.05)
        assert process_state(sleeper.pid) != "T"
    finally:
        sleeper.kill()
        sleeper.wait()
    # Without a lock file (one process at a time) nothing is held.
    with _gpu_steps.timed_section({}) as held:
        assert held == {"wait_s": 0.0, "paused": 0}


def process_state(pid):  # "T" when stopped
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_timeout_kills_what_the_process_started(tmp_path, monkeypatch):
    # torch.compile's compile workers would otherwise run on (holding CPU,
    # and any lock they inherited) after their process is cut off.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _harness

    (tmp_path / "spawner.py").write_text(
        "import subprocess, sys, time\n"
        "def run(arg):\n"
        "    child = subprocess.Popen([sys.executable, '-c',\n"
        "                              'import time; time.sleep(120)'])\n"
        "    yield {'grandchild': child.pid}\n"
        "    time.sleep(120)\n")
    start = time.perf_counter()
    run = _harness.run_isolated("spawner:run", {}, timeout=8,
                                env={"PYTHONPATH": str(tmp_path)})
    assert time.perf_counter() - start < 60
    assert run.returncode is None and run.error == "timed out after 8 s"
    pid = run.results[0]["grandchild"]  # the row made before the cut

    def alive():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.perf_counter() + 10
    while alive() and time.perf_counter() < deadline:
        time.sleep(0.1)
    assert not alive()


def test_top_ops_text_says_when_the_profiler_failed(bench_gpu):
    rows = [{"backbone": "resnet50", "strategy": "full", "variant": "kft K=10",
             "top_ops": [["fusion.1", ["sm90_conv"], 2.5],
                         ["dot.2", ["dot.2"], 1.0]],
             "traced_ms_per_step": 4.0, "traced_steps": 10},
            {"backbone": "convnext_tiny", "strategy": "full",
             "variant": "kft K=10", "trace_error": "RuntimeError: no CUPTI"},
            {"backbone": "convnext_tiny", "strategy": "full",
             "variant": "torch-eager"}]
    text = bench_gpu.top_ops_text(rows)
    assert ("- resnet50 full (kft K=10, 10 steps traced, ops sum 4.00 "
            "ms/step): `fusion.1` 2.50 (sm90_conv); `dot.2` 1.00") in text
    assert "- convnext_tiny full: no trace (RuntimeError: no CUPTI)" in text
    assert bench_gpu.top_ops_text(rows[2:]) == ""
