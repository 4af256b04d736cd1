"""Every script in examples/ runs, in-process, at tiny settings.

The examples are not part of the library, so nothing else notices when an
API change breaks one. Each test runs a script as `python examples/X.py
...` would (`runpy`, `__name__ == "__main__"`, its own command line) with
8 px images, one seed and one or two epochs, in a temporary working
folder, and checks what it wrote or printed: the rows and keys expected,
numbers finite, accuracies in [0, 1]. The measured results under
examples/results/ come from the default settings (minutes each).
"""

import json
import math
import pathlib
import re
import runpy
import sys
import warnings

import pytest

import kft

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
KFT = pathlib.Path(kft.__file__).resolve().parent
NUMBER = r"[-+]?\d+\.\d+"


@pytest.fixture
def run_example(monkeypatch, tmp_path, capsys):
    """`run_example(name, *args)`: the script's stdout. Runs in `tmp_path`
    (so a default output folder cannot land in examples/results/), and
    fails on a `UserWarning` from kft or the script (kft warns about
    arguments that do not do what they seem to)."""

    def run(name, *args):
        path = EXAMPLES / f"{name}.py"
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
        monkeypatch.chdir(tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", UserWarning)
            runpy.run_path(str(path), run_name="__main__")
        ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                if pathlib.Path(w.filename).resolve().is_relative_to(KFT)
                or pathlib.Path(w.filename).resolve().is_relative_to(
                    EXAMPLES)]
        assert not ours
        return capsys.readouterr().out

    return run


def _accuracy(value):
    assert math.isfinite(value) and 0.0 <= value <= 1.0, value
    return value


def _table_rows(text, first_cells):
    """The markdown rows of `text` starting with `first_cells`, as lists
    of cells (first cell dropped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in first_cells:
            rows[cells[0]] = cells[1:]
    assert list(rows) == list(first_cells), text
    return rows


def test_compare_strategies(run_example, tmp_path):
    out = run_example("compare_strategies", tmp_path / "out",
                      "--image-size", 8, "--seeds", 0, "--epochs", 2,
                      "--head-epochs", 1, "--source-epochs", 1,
                      "--batch-size", 64)
    names = ["feature_extraction", "partial:2", "gradual", "full",
             "discriminative", "scratch"]
    comparison = kft.StrategyComparison.load(
        tmp_path / "out" / "comparison.json")
    assert comparison.strategies == names
    assert [r["strategy"] for r in comparison.runs] == names
    assert comparison.settings["epochs"] == 2
    for run in comparison.runs:
        _accuracy(run["metrics"]["accuracy"])
        assert run["seed"] == 0 and run["trainable_params"] > 0
        # Feature extraction has no phase 2; the two-phase runs 1 + 1.
        one_phase = run["strategy"] == "feature_extraction"
        assert [len(h["loss"]) for h in run["histories"]] == (
            [2] if one_phase else [1, 1])
    # Feature extraction trains the head alone; the others more.
    params = {r["strategy"]: r["trainable_params"] for r in comparison.runs}
    assert params["feature_extraction"] < params["partial:2"] < params["full"]
    assert (tmp_path / "out" / "strategies.png").stat().st_size > 0
    gaps = re.findall(rf"^\s+(\S+): ({NUMBER}|n/a)$", out, re.M)
    assert [name for name, _ in gaps] == names


def test_domain_adaptation(run_example, tmp_path):
    run_example("domain_adaptation", "--seeds", 0, "--image-size", 8,
                "--pretrain-epochs", 1, "--adapt-epochs", 1,
                "--hidden", 8, "--batch-size", 25, "--out", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    methods = ["source_only", "adabn", "dann_reversal", "dann_confusion",
               "mmd", "coral"]
    assert list(results["table"]) == methods
    for values in results["table"].values():
        assert len(values) == 1
        _accuracy(values[0])
    extra = results["extras"]["0"]
    assert set(extra["diagnostic"]) == {"digits", "digits_m"}
    for name in ("dann_reversal", "dann_confusion"):
        assert len(extra[f"{name}_domain_accuracy"]) == 1
        assert all(math.isfinite(v)
                   for v in extra[f"{name}_last_epoch"].values())
    for png in ("accuracy", "embedding", "shift_digits", "shift_digits_m"):
        assert (tmp_path / f"{png}.png").stat().st_size > 0


def test_forgetting(run_example, tmp_path):
    # No weight-decay rows (`--weight-decay` with no values): that method
    # is Keras' AdamW alone, and each method costs seconds here.
    run_example("forgetting", "--seeds", 0, "--image-size", 8,
                "--source-epochs", 1, "--target-epochs", 1,
                "--weight-decay", "--l2sp", 0.1, "--ewc", 0.2, "--lwf", 1.0,
                "--batch-size", 10, "--out-dir", tmp_path)
    results = json.loads((tmp_path / "forgetting.json").read_text())
    assert [(r["method"], r["strength"]) for r in results["rows"]] == [
        ("none", 0.0), ("l2sp", 0.1), ("ewc", 0.2), ("lwf", 1.0)]
    for row in results["rows"]:
        _accuracy(row["target_acc"])
        _accuracy(row["source_acc"])
    assert len(results["source_before"]) == 1
    _accuracy(results["source_before"][0])
    table = (tmp_path / "forgetting.md").read_text()
    _table_rows(table, ["none", "l2sp", "ewc", "lwf",
                        "pretrained (before fine-tuning)"])
    assert (tmp_path / "forgetting.png").stat().st_size > 0


def test_gradual_unfreezing_digits(run_example):
    out = run_example("gradual_unfreezing_digits", "--image-size", 8,
                      "--source-epochs", 1, "--head-epochs", 1,
                      "--epochs", 2, "--unfreeze-every", 1,
                      "--batch-size", 64)
    assert "blocks unfrozen per phase-2 epoch: [1, 2]" in out
    best = re.search(rf"best epoch (\d) \(val_accuracy ({NUMBER})\)", out)
    assert best and 1 <= int(best[1]) <= 3
    _accuracy(float(best[2]))
    _accuracy(float(re.search(rf"^accuracy ({NUMBER})", out, re.M)[1]))


def test_mixup_digits(run_example):
    out = run_example("mixup_digits", "--image-size", 8, "--source-epochs",
                      1, "--target-epochs", 1, "--seeds", 0,
                      "--batch-size", 64)
    variants = ["none", "mixup", "cutmix", "mixup_or_cutmix"]
    means = re.findall(rf"^(\w+) +({NUMBER})  ({NUMBER})  ({NUMBER})$", out,
                       re.M)
    assert [m[0] for m in means] == variants
    for _, mean, low, high in means:
        # One seed: mean, min and max are its accuracy.
        assert _accuracy(float(mean)) == float(low) == float(high)


def test_schedules(run_example, tmp_path):
    out = run_example("schedules", "--seeds", 0, "--size", 8,
                      "--source-epochs", 1, "--epochs", 1,
                      "--out", tmp_path)
    rows = _table_rows(out, ["constant", "cosine", "one_cycle",
                             "warmup_cosine"])
    for mean_std, per_seed in rows.values():
        mean, std = re.fullmatch(rf"({NUMBER}) ± ({NUMBER})",
                                 mean_std).groups()
        assert float(std) == 0.0  # one seed
        assert _accuracy(float(per_seed)) == float(mean)
    assert re.search(r"^lr_find: \d+ steps", out, re.M)
    assert (tmp_path / "lr_find_digits.png").stat().st_size > 0
