"""What a notebook shows of kft's result objects, and how they are saved:
bounded reprs, `==` that answers, files written whole."""

import copy
import json

import keras
import numpy as np
import pytest

import kft
from kft.adaptation.diagnostic import DomainShiftReport
from kft.evaluation import report_from_predictions
from kft.evaluation.comparison import StrategyComparison
from kft.regularizers.fisher import FisherInformation
from kft.training.lr_find import LRFinderResult
from kft.training.lr_find import suggest


def _report(classes=100, n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    return report_from_predictions(labels, rng.normal(size=(n, classes)),
                                   class_names=[f"c{i}" for i in
                                                range(classes)])


def _comparison(report):
    runs = [{"strategy": s, "seed": seed, "metrics": {"accuracy": a},
             "trainable_params": 10, "train_time": 1.0,
             "histories": [{"loss": list(np.linspace(2, 1, 30))}],
             "report": report.to_dict()}
            for s, seed, a in [("full", 0, 0.9), ("full", 1, 0.8),
                               ("partial", 0, 0.7), ("partial", 1, 0.6)]]
    return StrategyComparison(runs, ["full", "partial"], [0, 1], "accuracy")


def test_reprs_are_bounded_and_notebooks_show_the_tables(tmp_path):
    # A comparison of 100-class runs printed 931 KB; `save` as a cell's
    # last line echoed the whole JSON; a 1,000-class report 132 KB.
    report = _report()
    comparison = _comparison(report)
    assert repr(comparison) == (
        "StrategyComparison(metric='accuracy', strategies=['full', "
        "'partial'], seeds=[0, 1], runs=4, best='full')")
    assert comparison._repr_markdown_() == comparison.to_markdown()
    # A metric some run lacks: `best` raises, the repr must not.
    other = StrategyComparison(comparison.runs, ["full", "partial"], [0, 1],
                               "f1")
    assert repr(other).endswith("seeds=[0, 1], runs=4)")
    assert comparison.save(tmp_path / "c.json") is None
    assert StrategyComparison.load(tmp_path / "c.json").runs == \
        comparison.runs
    assert repr(report) == (f"EvaluationReport(100 classes, 400 examples, "
                            f"accuracy={report.accuracy:.4f}, macro_f1="
                            f"{report.macro['f1']:.4f})")
    # Of 100 classes, the 20 of lowest F1, as `print` shows them.
    assert report._repr_markdown_() == report.to_markdown(max_classes=20)
    fisher = FisherInformation({f"v{i}/kernel": np.ones((64, 64), "float32")
                                for i in range(300)}, num_samples=8)
    assert repr(fisher) == ("FisherInformation(300 variables, 1,228,800 "
                            "values, kind='empirical', num_samples=8, "
                            "normalize=None)")
    result = kft.runs.TrainRunResult(
        out="runs/x", config=kft.runs.TrainConfig(), class_names=["a", "b"],
        best_epoch=1, best_value=0.5, metrics=report.to_dict(),
        history=[{"loss": 1.0}] * 50, reasons=[], files={}, resumed=False,
        train_time=1.0)
    assert len(repr(result)) < 2000 and "metrics" not in repr(result)


def test_equality_answers_instead_of_raising():
    # The generated `==` compared numpy arrays: "truth value of an array
    # is ambiguous".
    rates = np.logspace(-5, 0, 40)
    losses = np.concatenate([np.linspace(2, 0.5, 30), np.full(10, 9.0)])
    found = LRFinderResult(rates, losses, losses, suggest(rates, losses, 40))
    assert found == found and found != copy.deepcopy(found)
    fisher = FisherInformation({"w": np.ones(3)})
    assert fisher == fisher
    short = kft.classification_report(np.array([0, 1]),
                                      np.eye(2) * [[1], [1]])
    assert short == short
    # The summary, not the arrays.
    assert str(found).startswith("lr_find: 40 steps.\n  valley: ")


def test_files_are_written_whole_into_missing_folders(tmp_path,
                                                      monkeypatch):
    report = _report(classes=3, n=20)
    path = tmp_path / "new" / "report.json"
    report.to_json(path)
    # A file named like JSON text is a path.
    braces = tmp_path / "{run}.json"
    report.to_json(braces)
    monkeypatch.chdir(tmp_path)
    assert kft.EvaluationReport.load("{run}.json").accuracy == \
        report.accuracy
    fisher = FisherInformation({"w": np.ones(3, "float32")})
    target = tmp_path / "deeper" / "fisher.npz"
    fisher.save(target)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # A failed write emptied the previous file ("wb" first).
    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="No space"):
        FisherInformation({"w": np.zeros(3, "float32")}).save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["fisher.npz"]
    assert FisherInformation.load(target).values["w"].tolist() == [1, 1, 1]
    json.loads(path.read_text())


def test_domain_shift_takes_finite_images_and_prints_any_score():
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3))
    x[3, 0, 0, 0] = np.nan
    # NaN statistics: a NaN score (and `print` of it raised), NaN moving
    # averages after adapt_batchnorm.
    for call in (lambda: kft.domain_shift(model, x),
                 lambda: kft.adapt_batchnorm(model, x)):
        with pytest.raises(ValueError, match=r"finite pixels\. Images with "
                           r"NaN or inf: 1 of 8 \(the first: image 3\)"):
            call()
    # Batches of any iterable: adapt_batchnorm wrote NaN moving averages.
    batches = [(x[:2], None), (x[2:6], None)]
    for call in (lambda: kft.domain_shift(model, batches),
                 lambda: kft.adapt_batchnorm(model, batches)):
        with pytest.raises(ValueError, match=r"NaN or inf: 1 in a batch of "
                           r"4 \(the first: image 3\)"):
            call()
    assert all(np.isfinite(np.asarray(v)).all() for v in model.weights)
    shown = str(DomainShiftReport({"stem": float("nan"), "block1": 2.0},
                                  {}, {}, 8))
    assert "stem" in shown and "nan" in shown and "#" * 20 in shown


def test_estimate_fisher_shows_one_bar(capsys):
    # verbose=1 printed a line per batch (3,750 for 60k examples).
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x, y = np.ones((40, 4), "float32"), np.arange(40) % 3
    kft.estimate_fisher(model, (x, y), batch_size=4, verbose=2)
    assert capsys.readouterr().out.strip().startswith("40/40 - ")
    kft.estimate_fisher(model, (x, y), batch_size=4, verbose=0)
    assert capsys.readouterr().out == ""


def test_verbose_2_is_one_line_when_done(capsys):
    # verbose=2 drew the same bar as 1 (Keras' 2: a line at the end).
    model = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    model.compile(keras.optimizers.SGD(0.01),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 16, 16, 3)).astype("float32")
    y = np.arange(24) % 3
    data = kft.data.from_arrays(x, y, batch_size=8, shuffle=False)
    calls = {
        "lr_find": lambda verbose: kft.lr_find(model, (x, y), batch_size=8,
                                               steps=10, verbose=verbose),
        "evaluate": lambda verbose: kft.evaluate(model, data,
                                                 verbose=verbose),
        # Of unknown length: Keras' verbose=2 bar never printed.
        "evaluate_generator": lambda verbose: kft.evaluate(
            model, ((x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)),
            verbose=verbose),
        "predict": lambda verbose: kft.predict(model, list(x[:3]),
                                               verbose=verbose)}
    for name, call in calls.items():
        call(2)
        out = capsys.readouterr().out
        bars = [line for line in out.splitlines() if " - " in line]
        assert len(bars) == 1 and "\r" not in out and "\b" not in out, (
            name, out)


def test_a_saved_file_is_written_in_place(tmp_path):
    # Written to a temporary file moved over the target, a symlink became
    # a file, a private file's mode widened, a FIFO or /dev/stdout was
    # replaced.
    import os

    report = _report(classes=3, n=20)
    target = tmp_path / "private.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    report.to_json(link)
    assert link.is_symlink() and target.stat().st_mode & 0o777 == 0o600
    assert kft.EvaluationReport.load(target).accuracy == report.accuracy
    assert sorted(os.listdir(tmp_path)) == ["link.json", "private.json"]
    with pytest.raises(IsADirectoryError, match="'.*out/'"):
        report.to_json(str(tmp_path / "out") + "/")
    assert not (tmp_path / "out").exists()


def test_a_write_cut_off_leaves_the_earlier_file(tmp_path, monkeypatch):
    # Written in place, a full disk left a truncated comparison.json that
    # `kft compare` then took for a finished one.
    import builtins
    import os

    report = _report(classes=3, n=20)
    path = tmp_path / "report.json"
    report.to_json(path)
    good = path.read_bytes()
    real_open = builtins.open

    class Full:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *error):
            self.file.close()

        def write(self, data):
            self.file.write(data[:len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(builtins, "open", lambda *a, **k: Full(
        real_open(*a, **k)))
    with pytest.raises(OSError, match="No space left"):
        _report(classes=3, n=30).to_json(path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["report.json"]
