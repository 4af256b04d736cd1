"""Smoke test of benchmarks/bench_python_side.py at tiny sizes."""


def test_the_benchmark_measures_both_parts(capsys, benchmark_script):
    bench_python_side = benchmark_script("bench_python_side")
    bench_python_side.main(["--examples", "300", "--classes", "20",
                            "--images", "30"])
    out = capsys.readouterr().out
    assert "report_from_predictions 300 x 20: scores 0 MiB" in out
    # One image per <class>/s<i>/cam/obj, 30 classes (of up to 100): 4 x 30.
    assert "list_images 30 images in 120 folders" in out
