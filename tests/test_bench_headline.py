"""Smoke test of benchmarks/bench_headline.py: tiny sizes, both sides if
torch is installed (CI's test environment has no torch: kft side only)."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture(scope="module")
def headline(benchmark_script):
    return benchmark_script("bench_headline")


def test_split_sizes_use_every_class_and_fit_the_smallest(headline):
    full = headline.split_sizes(1797)
    assert full["test_fraction"] == pytest.approx(0.15)
    # The smallest digit (174 scans) keeps 26 for the test split.
    assert full["target_per_class"] + full["val_per_class"] == 174 - 26
    small = headline.split_sizes(60)
    assert (small["target_per_class"], small["val_per_class"]) == (4, 1)


def test_torch_side_loads_the_same_arrays_as_kft(headline):
    cfg = {"size": 16, "images": 300}
    for ours, theirs in zip(headline.load_digits_numpy(cfg),
                            headline.load_digits(cfg)):
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_array_equal(ours[1], theirs[1])
        assert ours[1].dtype == theirs[1].dtype


def test_smoke_run_writes_rows(headline, tmp_path, capsys, monkeypatch):
    # In this process (--in-process): a fresh Python per side would cost
    # a kft import each; the isolated path is the one real runs take.
    out = tmp_path / "headline.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    headline.main(["--backbones", "simple_cnn", "--size", "16", "--images",
                   "60", "--epochs", "2", "--sides", "kft", "torch",
                   "--in-process", "--out", str(out)])
    printed = capsys.readouterr().out
    # Not installed, or a torchvision built for another torch: skipped
    # with the reason (the run crashed on the import).
    has_torch = headline.torch_missing() is None
    sides = ["kft", "torch"] if has_torch else ["kft"]
    if not has_torch:
        assert "torch side skipped" in printed
    rows = json.loads(out.read_text())
    assert [r["side"] for r in rows] == sides
    for row in rows:
        assert "error" not in row, row.get("error")
        assert row["split"] == [40, 10, 10] and row["images_used"] == 60
        assert row["epochs"] == 2 and len(row["val_loss"]) == 2
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert row["wall_s"] >= row["forward_s"] + row["head_s"] > 0
        assert row["peak_rss_mib"] > 0 and "loadavg" in row
    assert "| simple_cnn | kft | 60 (40/10/10) |" in printed
    # The feature cache of its own is removed after the run.
    assert not list(scratch.glob("kft-headline-cache-*"))
    if has_torch:
        wall, cpu = headline.ratios(rows)[("simple_cnn", "kft")]
        assert wall == pytest.approx(rows[1]["wall_s"] / rows[0]["wall_s"])
        assert f"| simple_cnn | kft | {wall:.2f}x | {cpu:.2f}x |" in printed


def test_too_few_images_is_refused():
    run = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_headline.py"),
         "--images", "10"], capture_output=True, text=True, timeout=60,
        cwd=ROOT)
    assert run.returncode == 2
    assert "--images must be at least 60" in run.stderr
