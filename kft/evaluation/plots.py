"""Plots of an `EvaluationReport` and of training histories.

Every function returns the matplotlib Figure and, given `path=`, saves it
(`.png`, `.svg` or `.pdf`). matplotlib is an optional extra
(`pip install "kft[plots]"`); the Agg backend is used. Class labels are
thinned to at most `max_labels` ticks, so 100 classes stay readable.

Example:
>>> import numpy as np, kft
>>> report = kft.evaluation.report_from_predictions(
...     [0, 1, 1, 2], np.eye(3)[[0, 1, 2, 2]], min_support=0)
>>> fig = kft.evaluation.plots.plot_confusion_matrix(report)
>>> fig.axes[0].get_xlabel()
'predicted class'
"""

import os
from collections.abc import Sequence

import numpy as np

from kft import _plotting
from kft._validation import check_class_names
from kft._validation import check_int
from kft._validation import fail_argument
from kft._writing import output_path
from kft.evaluation import _history
from kft.evaluation import _predict
from kft.evaluation.metrics import normalize_rows

# Cells get their value written in them up to this many classes.
_ANNOTATE_UP_TO = 20
# The files `save_report_plots` writes from a report (learning curves
# need a history).
REPORT_PLOTS = ("confusion_matrix", "confusion_matrix_normalized",
                "per_class_f1", "reliability", "worst_mistakes")


# Longer class names are cut to this many characters on an axis: the
# figure's room for names is capped, and a 150-character name left the
# confusion matrix a tenth of the figure.
_LABEL_CHARS = 40


def _tick_label(name):
    """`name`, or its start and end around an ellipsis: names sharing a
    long start (a taxonomy's "Animalia Chordata ... Felis catus") stay
    apart."""
    name = str(name)
    if len(name) <= _LABEL_CHARS:
        return name
    end = (_LABEL_CHARS - 1) // 2
    return name[:_LABEL_CHARS - 1 - end] + "\u2026" + name[-end:]


def _longest_label(names, max_labels):
    """Characters in the longest tick label shown; a character takes
    about 0.09 inch at the default font size."""
    return max(len(_tick_label(names[i]))
               for i in _plotting.thin_ticks(len(names), max_labels))


def _label_ticks(axis_setter, names, max_labels):
    shown = _plotting.thin_ticks(len(names), max_labels)
    axis_setter(shown, [_tick_label(names[i]) for i in shown])


def plot_confusion_matrix(report, *, normalize: bool = False,
                          class_names: Sequence[str] | None = None,
                          max_labels: int = 25, path=None):
    """Heatmap of the confusion matrix, true classes down, predicted across.

    Args:
        report: An `EvaluationReport`, a `ClassificationReport`, or a
            square matrix of counts.
        normalize: Show each row divided by its support (recall on the
            diagonal) instead of counts. Defaults to `False`.
        class_names: Names for a bare matrix. Defaults to the report's
            names, else `"0"`, `"1"`, ...
        max_labels: Most tick labels per axis. Defaults to `25`.
        path: File to save to, or `None`. Defaults to `None`.

    Returns:
        The Figure: one image of `num_classes x num_classes` cells (values
        written in the cells up to 20 classes) and a color bar.
    """
    matrix = np.asarray(getattr(report, "confusion_matrix", report))
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        fail_argument("report", "a report or a square confusion matrix",
                      f"an array of shape {matrix.shape}")
    if not normalize and not np.isfinite(matrix).all():
        # Counts are written as integers in the cells.
        fail_argument("report", "a confusion matrix of finite counts",
                      "a matrix holding NaN or infinite values")
    n = matrix.shape[0]
    if class_names is None:
        class_names = getattr(report, "class_names", None)
    names = (tuple(str(i) for i in range(n)) if class_names is None
             else check_class_names(class_names, n))
    values = normalize_rows(matrix) if normalize else matrix
    size = min(4 + 0.45 * n, 16)
    # Room for the names shown (down the x axis, across the y axis).
    names_in = min(0.09 * _longest_label(names, max_labels), 8)
    fig, ax = _plotting.new_figure(figsize=(size + 1.5 + names_in,
                                            size + names_in))
    image = ax.imshow(values, cmap="Blues", vmin=0,
                      vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label="fraction of the true class" if normalize
                 else "examples")
    _label_ticks(ax.set_xticks, names, max_labels)
    _label_ticks(ax.set_yticks, names, max_labels)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (rows normalised)" if normalize
                                       else " (counts)"))
    if n <= _ANNOTATE_UP_TO:
        threshold = values.max() / 2
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{value:.2f}" if normalize else f"{int(value)}",
                    ha="center", va="center", fontsize=8,
                    color="white" if value > threshold else "black")
    return _plotting.finish(fig, path)


def plot_per_class_f1(report, *, sort: bool = False, max_labels: int = 25,
                      max_classes: int | None = None, path=None):
    """Bars of each class' F1; classes with low support drawn in orange.

    Args:
        report: An `EvaluationReport`.
        sort: Order the bars by F1, lowest first. Defaults to `False`
            (class order).
        max_labels: Most class labels under the bars. Defaults to `25`.
        max_classes: Of more classes, draw this many of lowest F1, lowest
            first (1,000 bars were under 2 pixels each). Defaults to
            `None`: every class.
        path: File to save to, or `None`. Defaults to `None`.

    Returns:
        The Figure: one bar per class and a dashed line at the macro F1.

    Example:
    >>> import numpy as np, kft
    >>> report = kft.report_from_predictions([0, 1, 1], np.eye(2)[[0, 1, 0]])
    >>> len(plot_per_class_f1(report).axes[0].patches)
    2
    """
    if not hasattr(report, "low_support"):
        # A ClassificationReport's f1 is one macro number.
        fail_argument("report", "an EvaluationReport (kft.evaluate or "
                      "kft.report_from_predictions), which holds F1 per "
                      "class", type(report).__name__, TypeError)
    f1 = np.asarray(report.f1)
    cut = max_classes is not None and len(f1) > check_int(
        "max_classes", max_classes, min_value=1)
    order = (np.argsort(f1, kind="stable") if sort or cut
             else np.arange(len(f1)))[:max_classes if cut else None]
    names = [report.class_names[i] for i in order]
    low = set(report.low_support)
    colors = ["tab:orange" if name in low else "tab:blue" for name in names]
    # Names run down under the bars: the figure grows with the longest.
    fig, ax = _plotting.new_figure(figsize=(
        min(4 + 0.25 * len(order), 16),
        min(max(4, 3 + 0.09 * _longest_label(names, max_labels)), 12)))
    ax.bar(np.arange(len(order)), f1[order], color=colors)
    ax.axhline(report.macro["f1"], color="black", linestyle="--",
               linewidth=1, label=f"macro F1 {report.macro['f1']:.3f}")
    _label_ticks(ax.set_xticks, names, max_labels)
    ax.tick_params(axis="x", labelrotation=90)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("F1")
    title = "F1 per class"
    if cut:
        title += f", the {len(order)} lowest of {len(f1)}"
    if low:
        title += f" (orange: fewer than {report.min_support} examples)"
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _plotting.finish(fig, path)


def plot_reliability(report, *, path=None):
    """Reliability diagram: accuracy against confidence per bin.

    Args:
        report: An `EvaluationReport`.
        path: File to save to, or `None`. Defaults to `None`.

    Returns:
        The Figure: top axes with one accuracy bar per non-empty bin and
        the diagonal of perfect calibration (ECE in the title); bottom
        axes with the examples per bin.

    Example:
    >>> import numpy as np, kft
    >>> report = kft.report_from_predictions(
    ...     [0, 1], np.array([[0.9, 0.1], [0.6, 0.4]]), num_bins=5)
    >>> len(plot_reliability(report).axes[0].patches)  # 2 non-empty bins
    2
    """
    count = np.asarray(report.bin_count)
    bins = len(count)
    centers = (np.arange(bins) + 0.5) / bins
    used = count > 0
    fig, (top, bottom) = _plotting.new_figure(
        2, 1, figsize=(5, 6), sharex=True,
        gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers[used], np.asarray(report.bin_accuracy)[used],
            width=1 / bins, edgecolor="black", color="tab:blue",
            label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.plot(centers[used], np.asarray(report.bin_confidence)[used], "o",
             color="tab:red", markersize=3, label="mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability (ECE {report.expected_calibration_error:.3f}"
                  f", {bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(centers, count, width=1 / bins, color="gray")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("examples")
    return _plotting.finish(fig, path)


def plot_learning_curves(history, *, metrics: Sequence[str] | None = None,
                         path=None):
    """Train and validation curves, with phase and unfreezing boundaries.

    Epochs are numbered from 1 across phases. A solid gray line marks the
    start of each later phase (between its first epoch and the one
    before); a dotted line each gradual-unfreezing stage (an epoch whose
    logged `unfrozen_blocks` grew). Logged learning rates
    (`learning_rate`, or keys starting with `learning_rate` or `lr`, one
    line per group) get their own log-scale panel; they are absent where
    a phase did not log them.

    Args:
        history: A `keras.callbacks.History`, its `history` dict, a
            `kft.FineTuneResult`, a list of `history` dicts (phases), or
            a run folder's `history.json` rows as `json.load` reads them
            (one dict of numbers per epoch, with its `phase`).
        metrics: Metrics to draw besides the loss. Defaults to every
            logged one (with its `val_` twin on the same panel).
        path: File to save to, or `None`. Defaults to `None`.

    Returns:
        The Figure: a loss panel, one panel per metric and, when logged, a
        learning-rate panel, all with epoch on the x axis. Boundary lines
        carry the gid `"phase_boundary"` or `"stage_boundary"`.

    Raises:
        ValueError: an empty history, or a metric that was not logged.

    Example:
    >>> fig = plot_learning_curves([{"loss": [2.0, 1.0]},
    ...                             {"loss": [0.8], "unfrozen_blocks": [1]}])
    >>> [line.get_xdata()[0] for line in fig.axes[0].lines
    ...  if line.get_gid() == "phase_boundary"]
    [2.5]
    """
    curves, phase_starts = _history.merge(history)
    stage_starts = _history.stage_starts(curves, phase_starts)
    panels = _history.panels(curves, metrics)
    fig, axes = _plotting.new_figure(
        len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True,
        squeeze=False)
    epochs = np.arange(1, len(next(iter(curves.values()))) + 1)
    for ax, (title, keys, log) in zip(axes[:, 0], panels):
        for key in keys:
            ax.plot(epochs, curves[key], marker="o", markersize=3, label=key)
        for start in phase_starts:
            ax.axvline(start + 0.5, color="gray", linewidth=1.5,
                       gid="phase_boundary")
        for start in stage_starts:
            ax.axvline(start + 0.5, color="gray", linestyle=":",
                       linewidth=1, gid="stage_boundary")
        if log:
            ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("epoch")
    axes[0, 0].set_title("learning curves" + (
        " (solid: new phase, dotted: block unfrozen)"
        if phase_starts or stage_starts else ""))
    return _plotting.finish(fig, path)


def _images_at(data, wanted):
    """`{index: image}` for the example indices in `wanted`, streamed."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            _predict.is_array(data[0]):
        data = data[0]
    if _predict.is_array(data):
        return {i: np.asarray(data[i]) for i in wanted if i < len(data)}
    # Indices name files (`data.paths`) of a `kft.data` dataset; a pass
    # leaves out those that failed to load (`_predict.stored_indices`).
    position = {i: i for i in wanted}
    paths = getattr(data, "paths", None)
    if paths is not None:
        failed = {s.path for s in getattr(data, "skipped", ())}
        kept = [i for i, path in enumerate(paths) if path not in failed]
        where = {index: row for row, index in enumerate(kept)}
        position = {i: where[i] for i in wanted if i in where}
    found, seen = {}, 0
    for batch in _predict.ordered(data):
        images = np.asarray(batch[0])
        for i, row in position.items():
            if seen <= row < seen + len(images):
                found[i] = images[row - seen]
        seen += len(images)
        if len(found) == len(position):
            break
    return found


def _displayable(image):
    image = np.asarray(image, dtype=np.float64)
    if image.max(initial=0) > 1.0:
        image = image / 255.0
    image = np.clip(image, 0.0, 1.0)
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 \
        else image


def plot_worst_mistakes(report, data, *, count: int | None = None,
                        columns: int = 4, path=None):
    """A grid of the most confident mistakes with their images.

    Args:
        report: An `EvaluationReport` (its `mistakes`).
        data: The data the report was made from, in the same order: the
            images array, an `(images, labels)` pair, a `kft.data` dataset
            (read in stored order, as `kft.evaluate` reads it) or a
            re-iterable of `(images, labels)` batches.
        count: Mistakes to show. Defaults to all in the report.
        columns: Images per row. Defaults to `4`.
        path: File to save to, or `None`. Defaults to `None`.

    Returns:
        The Figure: one image per mistake titled "#index true -> predicted
        (confidence)".

    Raises:
        ValueError: the report has no mistakes, or `data` has fewer
            examples than a mistake's index.

    Example:
    >>> import numpy as np, kft
    >>> report = kft.report_from_predictions([0, 1], np.eye(2)[[1, 1]])
    >>> fig = plot_worst_mistakes(report, np.zeros((2, 8, 8, 3)))
    >>> fig.axes[0].get_title()
    '#0 0 -> 1\\n(1.00)'
    """
    columns = check_int("columns", columns, min_value=1)
    if data is None:  # "'NoneType' object is not iterable"
        fail_argument("data", "the data the report was made from (images, "
                      "an (images, labels) pair or a dataset)", data,
                      TypeError)
    mistakes = list(report.mistakes)
    if count is not None:
        mistakes = mistakes[:check_int("count", count, min_value=1)]
    if not mistakes:
        fail_argument("report", "a report with at least one mistake",
                      "a report without mistakes")
    images = _images_at(data, sorted({m.index for m in mistakes}))
    missing = sorted({m.index for m in mistakes} - set(images))
    if missing:
        raise ValueError(
            f"Argument `data` must hold the examples the report was made "
            f"from; it has no example with index {missing[:10]}.")
    rows = -(-len(mistakes) // columns)
    fig, axes = _plotting.new_figure(
        rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    names = [str(name)[:14] for name in report.class_names]
    for ax, mistake in zip(axes.flat, mistakes):
        image = _displayable(images[mistake.index])
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(f"#{mistake.index} {names[mistake.true]} -> "
                     f"{names[mistake.predicted]}\n({mistake.confidence:.2f})",
                     fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("most confident mistakes (true -> predicted)")
    return _plotting.finish(fig, path)


def _check_formats(formats):
    """`formats` as a tuple of suffixes without dots; one string is one
    suffix (not its letters)."""
    from matplotlib.backend_bases import FigureCanvasBase

    if isinstance(formats, str):
        formats = (formats,)
    supported = FigureCanvasBase.get_supported_filetypes()
    what = (f"a file suffix or a non-empty sequence of them, each one of "
            f"{sorted(supported)}")
    try:
        suffixes = tuple(f.lstrip(".").lower() for f in formats)
    except (TypeError, AttributeError):
        fail_argument("formats", what, formats)
    if not suffixes or any(s not in supported for s in suffixes):
        fail_argument("formats", what, formats)
    return suffixes


def save_report_plots(report, folder, *, data=None, history=None,
                      formats: str | Sequence[str] = ("png",)) -> list:
    """Writes every standard plot of a report into `folder`.

    Writes `confusion_matrix`, `confusion_matrix_normalized`,
    `per_class_f1` (of more than 50 classes, the 50 of lowest F1) and
    `reliability`; `worst_mistakes` when `data` is
    given and the report has mistakes; `learning_curves` when `history`
    is given. Each in every format of `formats`.

    Args:
        report: An `EvaluationReport`.
        folder: Folder to write to (created if missing).
        data: The evaluated data, for the mistakes grid. Defaults to
            `None`.
        history: A history for `plot_learning_curves`. Defaults to `None`.
        formats: A file suffix matplotlib writes (`"png"`, `"pdf"`,
            `"svg"`, ...) or a sequence of them. Defaults to `("png",)`.

    Returns:
        The paths written, in the order above.

    Example:
    >>> import numpy as np, tempfile, kft
    >>> report = kft.report_from_predictions([0, 1], np.eye(2)[[0, 1]])
    >>> [p.rsplit("/", 1)[1] for p in save_report_plots(
    ...     report, tempfile.mkdtemp())][:2]
    ['confusion_matrix.png', 'confusion_matrix_normalized.png']
    """
    plt = _plotting.pyplot()
    formats = _check_formats(formats)
    folder = output_path(folder, "folder")
    os.makedirs(folder, exist_ok=True)
    jobs = list(zip(REPORT_PLOTS, [
        lambda: plot_confusion_matrix(report),
        lambda: plot_confusion_matrix(report, normalize=True),
        lambda: plot_per_class_f1(report, max_classes=50),
        lambda: plot_reliability(report)]))
    if data is not None and report.mistakes:
        jobs.append((REPORT_PLOTS[4],
                     lambda: plot_worst_mistakes(report, data)))
    if history is not None:
        jobs.append(("learning_curves",
                     lambda: plot_learning_curves(history)))
    written = []
    for name, draw in jobs:
        fig = draw()
        for suffix in formats:
            path = os.path.join(folder, f"{name}.{suffix.lstrip('.')}")
            _plotting.finish(fig, path)
            written.append(path)
        plt.close(fig)
    return written
