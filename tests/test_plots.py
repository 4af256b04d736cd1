import numpy as np
import pytest

import kft
from kft._plotting import thin_ticks
from kft.evaluation import plots
from kft.evaluation import report_from_predictions

pytest.importorskip("matplotlib")


def _report(num_classes, n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 2.0
    names = [f"class_{i}" for i in range(num_classes)]
    return report_from_predictions(y, logits, class_names=names,
                                   min_support=3)


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("num_classes", [10, 100])
def test_confusion_matrix_heatmap(num_classes, tmp_path):
    report = _report(num_classes)
    fig = plots.plot_confusion_matrix(report, path=tmp_path / "cm.png")
    ax = fig.axes[0]
    assert _is_png(tmp_path / "cm.png")
    assert ax.get_xlabel() == "predicted class"
    assert ax.get_ylabel() == "true class"
    (image,) = ax.get_images()
    np.testing.assert_array_equal(image.get_array(), report.confusion_matrix)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[0] == "class_0" and len(labels) <= 25
    # Values written in the cells only while they fit.
    assert len(ax.texts) == (num_classes ** 2 if num_classes <= 20 else 0)
    normalized = plots.plot_confusion_matrix(report, normalize=True,
                                             path=tmp_path / "cm.svg")
    np.testing.assert_allclose(normalized.axes[0].get_images()[0].get_array(),
                               report.normalized_confusion_matrix)
    assert (tmp_path / "cm.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"square confusion matrix.*\(2, 3\)"):
        plots.plot_confusion_matrix(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`path` must end in one of"):
        plots.plot_confusion_matrix(report, path=tmp_path / "cm.xyz")
    # Names for a bare matrix: an array of them raised ("truth value of an
    # array is ambiguous"); a wrong count mislabelled the ticks silently.
    names = np.array([f"c{i}" for i in range(num_classes)])
    fig = plots.plot_confusion_matrix(report.confusion_matrix,
                                      class_names=names)
    assert fig.axes[0].get_xticklabels()[0].get_text() == "c0"
    with pytest.raises(ValueError, match=rf"one name per class "
                       rf"\({num_classes} names"):
        plots.plot_confusion_matrix(report.confusion_matrix,
                                    class_names=["a"])


@pytest.mark.parametrize("num_classes", [10, 100])
def test_per_class_f1_bars(num_classes, tmp_path):
    report = _report(num_classes, n=300)
    fig = plots.plot_per_class_f1(report, sort=True,
                                  path=tmp_path / "f1.png")
    ax = fig.axes[0]
    assert _is_png(tmp_path / "f1.png") and ax.get_ylabel() == "F1"
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == num_classes
    np.testing.assert_allclose(heights, np.sort(report.f1))
    orange = sum(p.get_facecolor()[0] > 0.9 for p in ax.patches)
    assert orange == len(report.low_support)
    assert len(ax.get_xticklabels()) <= 25
    # Every k-th label, k rounded up: at most 25 of any count (rounded
    # down, 30 classes showed all 30).
    assert max(len(thin_ticks(n)) for n in range(1, 201)) == 25
    assert len(thin_ticks(30)) == 15
    # Of many classes, the lowest (a report's plot of 1,000 classes drew
    # bars under 2 pixels wide in class order).
    fig = plots.plot_per_class_f1(report, max_classes=50)
    heights = [p.get_height() for p in fig.axes[0].patches]
    title = fig.axes[0].get_title()
    if num_classes == 100:
        np.testing.assert_allclose(heights, np.sort(report.f1)[:50])
        assert title.startswith("F1 per class, the 50 lowest of 100")
    else:  # fewer: every class, in class order
        np.testing.assert_allclose(heights, report.f1)
        assert "lowest" not in title


def test_reliability_diagram(tmp_path):
    report = _report(10)
    fig = plots.plot_reliability(report, path=tmp_path / "rel.png")
    top, bottom = fig.axes
    assert len(top.patches) == int(np.sum(report.bin_count > 0))
    np.testing.assert_allclose([p.get_height() for p in top.patches],
                               report.bin_accuracy[report.bin_count > 0])
    assert len(bottom.patches) == len(report.bin_count)
    assert "ECE" in top.get_title()
    assert bottom.get_xlabel() == "confidence (top probability)"


def _boundaries(ax, gid):
    return sorted(line.get_xdata()[0] for line in ax.lines
                  if line.get_gid() == gid)


def test_learning_curves_mark_phases_and_stages():
    phase1 = {"loss": [2.0, 1.5], "accuracy": [0.3, 0.5],
              "val_loss": [2.1, 1.7], "val_accuracy": [0.3, 0.4]}
    phase2 = {"loss": [1.2, 1.0, 0.9, 0.8], "accuracy": [0.6, 0.7, 0.7, 0.8],
              "val_loss": [1.5, 1.4, 1.3, 1.3],
              "val_accuracy": [0.5, 0.6, 0.6, 0.7],
              "learning_rate": [1e-3, 8e-4, 5e-4, 2e-4],
              "unfrozen_blocks": [1, 1, 2, 3], "trainable_params": [1] * 4}
    result = kft.FineTuneResult(histories=[phase1, phase2], best_epoch=5,
                                best_value=1.3, monitor="val_loss")
    fig = plots.plot_learning_curves(result)
    loss, accuracy, rate = fig.axes
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "loss", "accuracy", "learning rate"]
    assert fig.axes[-1].get_xlabel() == "epoch"
    # Phase 2 starts at epoch 3; blocks 2 and 3 at epochs 5 and 6.
    for ax in fig.axes:
        assert _boundaries(ax, "phase_boundary") == [2.5]
        assert _boundaries(ax, "stage_boundary") == [4.5, 5.5]
    curves = {line.get_label(): line for line in loss.lines
              if line.get_gid() is None}
    assert set(curves) == {"loss", "val_loss"}
    np.testing.assert_array_equal(curves["loss"].get_xdata(), range(1, 7))
    np.testing.assert_allclose(curves["val_loss"].get_ydata(),
                               [2.1, 1.7, 1.5, 1.4, 1.3, 1.3])
    (lr,) = [line for line in rate.lines if line.get_gid() is None]
    assert np.isnan(lr.get_ydata()[:2]).all() and rate.get_yscale() == "log"
    only = plots.plot_learning_curves(phase1, metrics=["accuracy"])
    assert len(only.axes) == 2 and not _boundaries(only.axes[0],
                                                   "phase_boundary")
    with pytest.raises(ValueError, match=r"`metrics` must be names of "
                       r"logged metrics.*Received: metrics=\['f1'\]"):
        plots.plot_learning_curves(phase1, metrics=["f1"])
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.plot_learning_curves({"loss": []})
    with pytest.raises(TypeError, match=r"`history` must be a keras History"):
        plots.plot_learning_curves(3)
    # A run folder's history.json rows (one dict per epoch) raised
    # "object of type 'int' has no len()".
    rows = [{"epoch": e, "phase": p, **{k: v[i] for k, v in h.items()}}
            for e, (p, h, i) in enumerate(
                [(1, phase1, i) for i in range(2)]
                + [(2, phase2, i) for i in range(4)])]
    from_rows = plots.plot_learning_curves(rows)
    for ax, want in zip(from_rows.axes, fig.axes):
        assert _boundaries(ax, "phase_boundary") == [2.5]
        assert _boundaries(ax, "stage_boundary") == [4.5, 5.5]
        for got, line in zip(ax.lines, want.lines):
            np.testing.assert_array_equal(got.get_ydata(), line.get_ydata())


def test_plots_name_what_they_cannot_draw():
    # Python's and NumPy's errors: "len() of unsized object", "'NoneType'
    # object is not iterable", "cannot convert float NaN to integer".
    with pytest.raises(TypeError, match=r"`report` must be an "
                       r"EvaluationReport.*Received: "
                       r"report='ClassificationReport'"):
        plots.plot_per_class_f1(kft.classification_report([0, 1], [0, 0]))
    with pytest.raises(TypeError, match=r"`data` must be the data the "
                       r"report was made from"):
        plots.plot_worst_mistakes(_report(3), None)
    with pytest.raises(ValueError, match=r"finite counts"):
        plots.plot_confusion_matrix(np.full((2, 2), np.nan))
    perfect = report_from_predictions([0, 1, 2], np.eye(3) * 5)
    with pytest.raises(ValueError, match=r"`report` must be a report with "
                       r"at least one mistake\. Received: report='a report "
                       r"without mistakes'"):
        plots.plot_worst_mistakes(perfect, np.zeros((3, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"`formats` must be a file suffix "
                       r"or a non-empty sequence of them, each one of \[.*"
                       r"'png'.*\]\. Received: formats=3$"):
        plots.save_report_plots(perfect, "unused", formats=3)
    with pytest.raises(ValueError, match=r"`history` must be a history with "
                       r"a loss or metrics\. Received: "
                       r"history=\['unfrozen_blocks'\]"):
        plots.plot_learning_curves({"unfrozen_blocks": [1, 2]})


def test_learning_curves_of_a_keras_history():
    # What `model.fit` returns, the commonest input, was never drawn.
    import keras

    history = keras.callbacks.History()
    history.history = {"loss": [1.0, 0.5], "val_loss": [1.2, 0.9],
                       "accuracy": [0.4, 0.6]}
    fig = plots.plot_learning_curves(history)
    lines = [{line.get_label(): list(line.get_ydata()) for line in ax.lines}
             for ax in fig.axes]
    assert lines == [{"loss": [1.0, 0.5], "val_loss": [1.2, 0.9]},
                     {"accuracy": [0.4, 0.6]}]


def test_worst_mistakes_grid_and_all_plots(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (12, 8, 8, 3)).astype("float32")
    y = np.arange(12) % 3
    logits = rng.normal(size=(12, 3))
    report = report_from_predictions(y, logits, num_mistakes=5,
                                     class_names=["cat", "dog", "fox"])
    fig = plots.plot_worst_mistakes(report, (x, y), columns=3,
                                    path=tmp_path / "m.png")
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == len(report.mistakes) == 5
    first = report.mistakes[0]
    names = report.class_names
    assert shown[0].get_title().startswith(
        f"#{first.index} {names[first.true]} -> {names[first.predicted]}")
    np.testing.assert_allclose(shown[0].get_images()[0].get_array(),
                               x[first.index] / 255)
    dataset = kft.data.from_arrays(x, y, batch_size=5, seed=2)
    from_dataset = plots.plot_worst_mistakes(report, dataset, count=2)
    np.testing.assert_allclose(
        from_dataset.axes[1].get_images()[0].get_array(),
        x[report.mistakes[1].index] / 255)
    with pytest.raises(ValueError, match=r"no example with index"):
        plots.plot_worst_mistakes(report, x[:2])
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}
    written = report.save_plots(tmp_path / "all", data=x, history=history)
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert names == sorted(f"{n}.png" for n in (
        "confusion_matrix", "confusion_matrix_normalized", "per_class_f1",
        "reliability", "worst_mistakes", "learning_curves"))
    assert all(_is_png(tmp_path / "all" / n) for n in names)
    again = kft.EvaluationReport.from_json(report.to_json())
    assert len(plots.save_report_plots(again, tmp_path / "re")) == 4


def test_learning_curves_of_per_class_and_single_name_metrics():
    # keras.metrics.F1Score() logs one value per class each epoch: numpy
    # failed to concatenate its 2-D curve with the 1-D ones.
    history = {"loss": [1.0, 0.8], "f1_score": [np.array([0.2, 0.4, 0.6]),
                                                np.array([0.5, 0.5, 0.8])],
               "val_f1_score": [np.array([0.1, 0.2, 0.3]),
                                np.array([0.4, 0.4, 0.4])]}
    with pytest.warns(UserWarning, match="'f1_score' logs 3 values per "
                      "epoch.*their mean"):
        fig = plots.plot_learning_curves(history)
    curves = {line.get_label(): line.get_ydata() for line in fig.axes[1].lines
              if line.get_gid() is None}
    np.testing.assert_allclose(curves["f1_score"], [0.4, 0.6])
    np.testing.assert_allclose(curves["val_f1_score"], [0.2, 0.4])
    # A single name, not its letters.
    one = plots.plot_learning_curves(history, metrics="f1_score")
    assert [ax.get_ylabel() for ax in one.axes] == ["loss", "f1_score"]


def _inside(fig):
    """Everything drawn (titles, tick labels, colour bars) lies inside
    the figure."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    return (box.x0 >= -0.01 and box.y0 >= -0.01 and box.x1 <= width + 0.01
            and box.y1 <= height + 0.01), (box.bounds, (width, height))


@pytest.mark.parametrize("num_classes,name_length", [(2, 40), (3, 60),
                                                     (120, 40), (3, 150)])
def test_long_class_names_stay_inside_the_figure(num_classes, name_length):
    # The names had a fixed 4-inch height (F1) or a size set by the class
    # count alone (confusion matrix): long ones were cut at the edge.
    rng = np.random.default_rng(0)
    y = rng.integers(0, num_classes, 200)
    names = [f"c{i}_".ljust(name_length, "x") for i in range(num_classes)]
    report = report_from_predictions(y, rng.normal(size=(200, num_classes)),
                                     class_names=names, min_support=3)
    for fig in (plots.plot_confusion_matrix(report),
                plots.plot_confusion_matrix(report, normalize=True),
                plots.plot_per_class_f1(report)):
        inside, sizes = _inside(fig)
        assert inside, sizes
        # Names are cut at 40 characters: 150 left the matrix a tenth of
        # the figure.
        labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        assert max(map(len, labels)) <= 40
        if name_length > 40:
            assert labels[0] == names[0][:20] + "\u2026" + names[0][-19:]
            assert len(set(labels)) == len(labels)  # ends told apart
        width = fig.axes[0].get_position().width
        assert width > (0.3 if num_classes < 100 else 0.15), width


@pytest.mark.parametrize("strategies", [1, 2, 6])
def test_comparison_title_stays_inside_the_figure(strategies):
    # One line of ~110 characters over a 3.8-6.4 inch figure was cut on
    # both sides; it is wrapped to the figure's width.
    names = [f"strategy_{i}" for i in range(strategies)]
    runs = [{"strategy": s, "seed": i, "metrics": {"accuracy": .5 + .01 * j
                                                   + .02 * i}}
            for j, s in enumerate(names) for i in range(3)]
    fig = kft.StrategyComparison(runs, names, [0, 1, 2], "accuracy").plot()
    inside, sizes = _inside(fig)
    assert inside, sizes
    assert "Holm" in fig.axes[0].get_title()


def test_domain_shift_title_stays_inside_the_figure():
    from kft.adaptation.diagnostic import DomainShiftReport

    shift = DomainShiftReport(blocks={"stem": 0.1, "block_1": 0.5},
                              layers={}, block_of_layer={}, num_images=4)
    inside, sizes = _inside(shift.plot())
    assert inside, sizes


def test_saved_figures_are_closed_and_stay_drawable(tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    report = _report(3)
    open_before = plt.get_fignums()
    figs = [plots.plot_confusion_matrix(report, path=tmp_path / "c.png"),
            plots.plot_per_class_f1(report, path=tmp_path / "f.png"),
            plots.plot_reliability(report, path=tmp_path / "r.png")]
    # 20 saved plots warned "More than 20 figures have been opened".
    assert plt.get_fignums() == open_before
    for fig in figs:
        fig.canvas.get_renderer()
        fig.savefig(tmp_path / "again.png")
        assert _is_png(tmp_path / "again.png")
    shown = plots.plot_confusion_matrix(report)  # not saved: kept open
    assert shown.number in plt.get_fignums()
    plt.close(shown)
    # Your own axes' figure stays open even when saved.
    from kft.adaptation.diagnostic import DomainShiftReport

    fig, ax = plt.subplots()
    DomainShiftReport(blocks={"stem": 0.1}, layers={}, block_of_layer={},
                      num_images=4).plot(tmp_path / "s.png", ax=ax)
    assert fig.number in plt.get_fignums()
    plt.close(fig)
    # A bad suffix: refused, and the figure drawn for it not left open.
    with pytest.raises(ValueError, match="must end in one of"):
        plots.plot_reliability(report, path=tmp_path / "r.txt")
    assert plt.get_fignums() == open_before
    # A notebook showed pyplot's open figures at the end of a cell, and
    # the Figure returned as the cell's value: every plot twice. Closed,
    # the value is shown once (saved in a loop: none pile up).
    monkeypatch.setattr(matplotlib, "get_backend", lambda: (
        "module://matplotlib_inline.backend_inline"))
    for path in (tmp_path / "r.png", None):
        shown = plots.plot_reliability(report, path=path)
        assert plt.get_fignums() == open_before
        shown.canvas.print_figure(tmp_path / "shown.png")  # as displayed
        assert _is_png(tmp_path / "shown.png")


@pytest.mark.parametrize("max_labels", [0, -1, 2.5])
def test_max_labels_must_be_a_positive_integer(max_labels):
    report = _report(3)
    for plot in (plots.plot_confusion_matrix, plots.plot_per_class_f1):
        with pytest.raises(ValueError, match=r"`max_labels` must be an "
                           rf"integer >= 1\. Received: max_labels={max_labels}"):
            plot(report, max_labels=max_labels)


class _BrokenMatplotlib:
    """A matplotlib that is installed but fails to import, as one built for
    numpy 1 does under numpy 2."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("numpy.core.multiarray failed to import")
        return None


def _without_matplotlib(monkeypatch):
    import sys

    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)


def test_a_matplotlib_that_fails_to_import_is_said_not_skipped_quietly(
        monkeypatch, tmp_path):
    # kft train / eval wrote no plots and said nothing (exit 0): the
    # failed import was taken for matplotlib not being installed.
    import sys
    import warnings

    from kft._plotting import available
    from kft.runs.report import write_evaluation

    assert available()
    _without_matplotlib(monkeypatch)
    monkeypatch.setattr(sys, "meta_path", [_BrokenMatplotlib(), *sys.meta_path])
    with pytest.warns(UserWarning, match=r"Plots skipped: matplotlib is "
                      r"installed but failed to import \(ImportError: "
                      r"numpy.core.multiarray failed to import\)"):
        assert not available()
    # A plot asked for (`kft lr-find --plot`) names it too.
    from kft._plotting import pyplot

    with pytest.raises(ImportError, match=r"matplotlib is installed but "
                       r"failed to import .*kft\[plots\]"):
        pyplot()
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3))
    with pytest.warns(UserWarning, match="failed to import"):
        _, files = write_evaluation(model, (x, np.array([0, 1, 0, 1])),
                                    ["a", "b"], str(tmp_path))
    assert sorted(files) == ["evaluation.json", "evaluation.md"]
    # Not installed at all: an optional extra, left out without a word.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not available()


def test_a_run_folders_report_replaces_links_among_its_files(tmp_path):
    # kft train's evaluation.json and plots were written through links
    # (a run folder from elsewhere, a `cp -al` snapshot of one).
    import os

    from kft.runs.report import write_evaluation

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "mine.json").write_text("mine")
    (victim / "mine.png").write_bytes(b"mine")
    os.symlink(victim / "mine.json", tmp_path / "evaluation.json")
    os.link(victim / "mine.png", tmp_path / "reliability.png")
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(8, 8, 3))
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3))
    write_evaluation(model, (x, np.array([0, 1, 0, 1])), ["a", "b"],
                     str(tmp_path))
    assert (victim / "mine.json").read_text() == "mine"
    assert (victim / "mine.png").read_bytes() == b"mine"
    assert _is_png(tmp_path / "reliability.png")
    assert not (tmp_path / "evaluation.json").is_symlink()


def test_a_plot_is_not_written_through_a_link_to_nothing(tmp_path):
    import os

    os.symlink(tmp_path / "elsewhere.png", tmp_path / "cm.png")
    with pytest.raises(FileExistsError, match="which does not exist"):
        plots.plot_confusion_matrix(_report(3), path=tmp_path / "cm.png")
    assert sorted(os.listdir(tmp_path)) == ["cm.png"]
    plots.plot_confusion_matrix(_report(3), path=tmp_path / "new.png")
    assert _is_png(tmp_path / "new.png")


def test_saved_files_do_not_record_a_temporary_name(tmp_path, monkeypatch):
    # EPS records the file's name as its title and svgz's gzip header
    # the name it was written to: never the temporary file's.
    import gzip
    import os

    report = _report(3)
    for name in ("cm.eps", "cm.ps", "cm.svgz"):
        plots.plot_confusion_matrix(report, path=tmp_path / name)
        data = (tmp_path / name).read_bytes()
        assert b".tmp" not in data
    assert b"<svg" in gzip.decompress((tmp_path / "cm.svgz").read_bytes())
    assert sorted(os.listdir(tmp_path)) == ["cm.eps", "cm.ps", "cm.svgz"]
    # PGF names its image files after the file and refers to them: saved
    # at the path itself (LaTeX, which it needs, is not installed here).
    from matplotlib.figure import Figure

    saved = []
    monkeypatch.setattr(Figure, "savefig",
                        lambda self, target, **kw: saved.append(target))
    plots.plot_confusion_matrix(report, path=tmp_path / "sub" / "cm.pgf")
    assert saved == [str(tmp_path / "sub" / "cm.pgf")]
    assert (tmp_path / "sub").is_dir()


def test_a_phase_start_is_not_drawn_as_a_stage_start_too():
    # Phase 2 begins with one block more than the head phase had: that
    # growth is the phase line; only the unfreezing inside phase 2 (epoch
    # 4, counted from 0) gets a stage line.
    from kft.evaluation._history import merge
    from kft.evaluation._history import stage_starts

    curves, phase_starts = merge([
        {"loss": [1.0, 1.0], "unfrozen_blocks": [0, 0]},
        {"loss": [1.0, 1.0, 1.0], "unfrozen_blocks": [1, 1, 2]}])
    assert phase_starts == [2]
    assert stage_starts(curves, phase_starts) == [4]
