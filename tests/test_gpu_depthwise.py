"""benchmarks/bench_gpu_depthwise.py in this process, on CPU: its inputs
and differences (made on the device), the JSON kept after every layer,
and `--budget` (tests/test_gpu_check.py runs it whole, through
gpu_check.sh)."""

import itertools
import json
import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("bench_gpu_depthwise")


@pytest.fixture(autouse=True)
def keep_jax_caches(monkeypatch):
    # The script clears JAX's caches after each layer (on the GPU, the
    # executables of earlier layers need not stay); in this process that
    # would make the worker's later test files compile again.
    import jax

    monkeypatch.setattr(jax, "clear_caches", lambda: None)


def test_inputs_are_standard_normal_in_the_dtype_and_repeat(bench):
    import jax

    inputs = jax.jit(bench._inputs, static_argnums=(1, 2, 3, 4))
    x, k, g = inputs(3, (4, 16, 16, 32), (3, 3, 32, 1), (4, 8, 8, 32),
                     "bfloat16")
    assert [(a.shape, str(a.dtype)) for a in (x, k, g)] == [
        ((4, 16, 16, 32), "bfloat16"), ((3, 3, 32, 1), "bfloat16"),
        ((4, 8, 8, 32), "bfloat16")]
    x32 = np.asarray(x, "float32")
    assert abs(x32.std() - 1) < 0.05 and abs(x32.mean()) < 0.05
    assert len(np.unique(x32)) > 1000  # not bf16 drawn directly (128)
    assert abs(np.asarray(k, "float32").std() - 1 / 9) < 0.03
    np.testing.assert_array_equal(
        x32, np.asarray(inputs(3, (4, 16, 16, 32), (3, 3, 32, 1),
                               (4, 8, 8, 32), "bfloat16")[0], "float32"))
    assert not np.array_equal(
        x32, np.asarray(inputs(4, (4, 16, 16, 32), (3, 3, 32, 1),
                               (4, 8, 8, 32), "bfloat16")[0], "float32"))


def test_rel_diff_is_the_largest_relative_difference(bench):
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((5, 7)).astype("float32")
               for _ in range(3))
    expected = max(np.abs(a - b).max() / np.abs(b).max(),
                   np.abs(c - 2 * c).max() / np.abs(2 * c).max())
    got = bench._rel_diff((jnp.asarray(a), jnp.asarray(c, "bfloat16")),
                          (jnp.asarray(b), jnp.asarray(2 * c, "bfloat16")))
    assert float(got) == pytest.approx(expected, rel=1e-2)
    zero = jnp.zeros((3,))
    assert float(bench._rel_diff((zero + 0.5,), (zero,))) == 0.5


def run_main(bench, tmp_path, *extra):
    out = tmp_path / "dw"
    return out, bench.main(["--dry-run", "--backbones", "efficientnetb0",
                            "--limit", "3", "--calls", "1",
                            "--variants", "xla", "shifted",
                            "--out-dir", str(out), *extra])


def test_a_run_cut_short_keeps_the_layers_it_measured(bench, tmp_path,
                                                      monkeypatch):
    functions = bench._functions
    calls = itertools.count()

    def killed_at_the_second_layer(key):
        if next(calls) == 1:
            raise KeyboardInterrupt
        return functions(key)

    monkeypatch.setattr(bench, "_functions", killed_at_the_second_layer)
    with pytest.raises(KeyboardInterrupt):
        run_main(bench, tmp_path)
    out = tmp_path / "dw"
    rows = json.loads((out / "depthwise.json").read_text())
    assert [r["input"] for r in rows] == [[2, 16, 16, 32]]
    assert rows[0]["shifted_train_ms"] > 0 and rows[0]["commit"]
    assert rows[0]["shifted_train_max_rel_diff"] < 1e-5
    assert sorted(os.listdir(out)) == ["depthwise.json"]  # no .tmp left


def test_budget_stops_starting_layers_and_says_so(bench, tmp_path,
                                                  monkeypatch, capsys):
    checks = itertools.count()
    # Checked before the backbone, its first layer, its second: spent.
    monkeypatch.setattr(bench, "_budget_spent",
                        lambda args, begin: next(checks) >= 2)
    out, code = run_main(bench, tmp_path, "--budget", "100",
                         "--backbones", "efficientnetb0", "convnext_tiny")
    assert code == 0
    rows = json.loads((out / "depthwise.json").read_text())
    assert [(r["backbone"], r.get("skipped"),
             r.get("distinct_layers_skipped")) for r in rows] == [
        ("efficientnetb0", None, None), ("efficientnetb0", "budget", 2),
        ("convnext_tiny", "budget", None)]
    assert rows[1]["budget_s"] == 100 and rows[1]["commit"]
    printed = capsys.readouterr().out
    assert "efficientnetb0: --budget 100 s spent" in printed
    assert "2 distinct layer(s) not started" in printed
    table = (out / "table.md").read_text()
    assert "| efficientnetb0 | 16x16x32 | 3x3, 1 | 1 |" in table
    assert "| efficientnetb0 | all, weighted by layers | | 1 |" in table
    assert ("efficientnetb0 (2 distinct layer(s) not started); "
            "convnext_tiny (not started).") in table


def test_budget_must_be_positive(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--budget", "0"])
    assert "--budget must be more than 0, not 0" in capsys.readouterr().err
