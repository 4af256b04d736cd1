"""Smoke test of benchmarks/bench_python_side.py at tiny sizes."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def test_the_benchmark_measures_both_parts(capsys):
    sys.path.insert(0, BENCH)
    try:
        import bench_python_side
    finally:
        sys.path.remove(BENCH)
    bench_python_side.main(["--examples", "300", "--classes", "20",
                            "--images", "30"])
    out = capsys.readouterr().out
    assert "report_from_predictions 300 x 20: scores 0 MiB" in out
    # One image per <class>/s<i>/cam/obj, 30 classes (of up to 100): 4 x 30.
    assert "list_images 30 images in 120 folders" in out
