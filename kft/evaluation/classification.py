"""The short report: accuracy, macro P/R/F1 and the confusion matrix.

`kft.evaluate` (`kft.evaluation.report`) reports more: balanced and top-k
accuracy, weighted averages, calibration and the worst mistakes.
"""

import dataclasses
from collections.abc import Iterator
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import fail_argument
from kft._validation import integer_values
from kft._validation import labels_from_one_hot
from kft._validation import check_class_names
from kft.evaluation import metrics
from kft.evaluation._format import text_cell
from kft.evaluation._predict import check_width
from kft.evaluation._predict import data_class_names
from kft.evaluation._predict import model_class_names
from kft.evaluation._predict import output_width
from kft.evaluation._predict import predict_arrays
from kft.evaluation._predict import predict_batches
from kft.evaluation._predict import split_data

if TYPE_CHECKING:
    import keras


# Per-class rows `str(ClassificationReport)` shows (those of lowest F1).
_SHOWN_CLASSES = 20


@dataclasses.dataclass(frozen=True, eq=False)  # `==` on arrays raised
class ClassificationReport:
    """Metrics of a classifier on one labelled set.

    Macro averages weight every class in the labels or the predictions
    equally (scikit-learn's default, and `kft.evaluate`'s); a class never
    predicted has precision 0 (not skipped), so the averages cannot
    flatter a model that ignores a class. A class in neither has no scores
    to average.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    per_class: dict
    confusion_matrix: np.ndarray
    class_names: tuple

    def __str__(self):
        lines = [f"accuracy {self.accuracy:.4f}  macro precision "
                 f"{self.precision:.4f}  recall {self.recall:.4f}  "
                 f"F1 {self.f1:.4f}"]
        shown = list(self.per_class.items())
        if len(shown) > _SHOWN_CLASSES:  # 300 classes printed 301 lines
            # Classes without examples last: their F1 of 0 crowded out
            # the weak classes the macro F1 counts.
            shown = sorted(shown, key=lambda item: (
                item[1]["support"] == 0, item[1]["f1"]))[:_SHOWN_CLASSES]
            lines.append(f"the {_SHOWN_CLASSES} classes of lowest F1 (of "
                         f"{len(self.per_class)}; `per_class` has all):")
        for name, m in shown:
            lines.append(f"  {text_cell(name):>12}: precision "
                         f"{m['precision']:.3f} "
                         f"recall {m['recall']:.3f} f1 {m['f1']:.3f} "
                         f"support {m['support']}")
        return "\n".join(lines)

    def __repr__(self):  # every class and the whole matrix, in full
        return (f"ClassificationReport({len(self.class_names)} classes, "
                f"accuracy={self.accuracy:.4f}, precision="
                f"{self.precision:.4f}, recall={self.recall:.4f}, "
                f"f1={self.f1:.4f})")


def _rows_to_labels(values, name, scores):
    """`(labels, width)`: 1-D labels as they are (`width` None), a column
    `(n, 1)` flattened, and `(n, k)` rows reduced to their `argmax`, with
    `width` k: one-hot labels, or per-class `scores` (`unusable_scores`
    refused; -inf, a log of 0, is a score)."""
    values = np.asarray(values)
    if values.ndim == 2 and values.dtype.kind in "bV":
        # bool one-hot rows, bfloat16 scores (ml_dtypes, kind "V").
        try:
            values = values.astype(np.float32)
        except (TypeError, ValueError):
            pass  # refused below, its dtype named
    if values.ndim == 2 and values.shape[1] == 1 or values.ndim == 0:
        return values.reshape(-1), None
    if values.ndim == 1:
        return values, None
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"Argument `{name}` must be integer labels of shape (n,) or "
            "numeric rows of shape (n, num_classes) (one-hot labels or "
            f"class scores). Received: {name} of shape {values.shape} and "
            f"dtype {values.dtype}")
    if not scores:
        return labels_from_one_hot(values, name), values.shape[1]
    bad = unusable_scores(values)
    if bad.any():
        raise ValueError(
            f"Argument `{name}` must hold scores to rank (-inf, a log of 0, "
            "is one; NaN, +inf twice or -inf only in a row are not). "
            "Received: "
            f"such rows {np.flatnonzero(bad)[:10].tolist()} (a model that "
            "diverged?)")
    return np.argmax(values, axis=-1), values.shape[1]


def unusable_scores(rows):
    """Rows whose argmax says nothing: NaN, +inf twice or more (a tie of
    overflows), or -inf everywhere (their argmax is class 0, a diverged
    model read as one that predicts class 0)."""
    rows = np.asarray(rows, np.float64)
    return (np.isnan(rows).any(axis=1) | (np.isposinf(rows).sum(axis=1) > 1)
            | np.isneginf(rows).all(axis=1))


def classification_report(y_true, y_pred, num_classes: int | None = None,
                          class_names: Sequence[str] | None = None
                          ) -> ClassificationReport:
    """Metrics from labels and predictions.

    Args:
        y_true: Integer labels `(n,)` in `[0, num_classes)`, or one-hot
            rows `(n, num_classes)`.
        y_pred: Integer predictions `(n,)` in `[0, num_classes)`, or rows
            of class scores `(n, num_classes)` (probabilities, logits or
            one-hot), reduced to their `argmax`.
        num_classes: Defaults to the width of the rows, else
            `len(class_names)`, else the largest label + 1.
        class_names: Names of the classes, one per class. Defaults to `"0"`,
            `"1"`, ...

    Returns:
        A `ClassificationReport`.

    Raises:
        ValueError: labels or predictions outside `[0, num_classes)` (named),
            not integers, of different lengths or empty, rows whose width
            is not `num_classes`, `y_true` rows that are not one-hot (soft
            or mixed labels), score rows with NaN, +inf twice or -inf only,
            or `class_names`
            not of length `num_classes`.

    Example:
    >>> import numpy as np
    >>> from kft.evaluation import classification_report
    >>> classification_report([0, 1, 1], [0, 1, 0]).accuracy
    0.6666666666666666
    >>> classification_report(np.eye(3)[[0, 1, 2]],
    ...                       [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7],
    ...                        [0.2, 0.2, 0.6]]).confusion_matrix.tolist()
    [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    """
    shapes = (f"Received: y_true of shape {np.shape(y_true)}, y_pred of "
              f"shape {np.shape(y_pred)}")
    if isinstance(class_names, Iterator):  # a generator: read once
        class_names = tuple(class_names)
    y_true, true_width = _rows_to_labels(y_true, "y_true", scores=False)
    y_pred, pred_width = _rows_to_labels(y_pred, "y_pred", scores=True)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            "Arguments `y_true` and `y_pred` must be non-empty and of one "
            f"length. Received: y_true of length {y_true.size}, y_pred of "
            f"length {y_pred.size}")
    widths = {w for w in (true_width, pred_width) if w is not None}
    if len(widths) > 1:
        raise ValueError(
            "Arguments `y_true` and `y_pred` must have rows of one width, "
            f"one column per class. {shapes}")
    width = widths.pop() if widths else None
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min_value=1)
        if width is not None and width != num_classes:
            fail_argument("num_classes", f"{width}, the width of the "
                          "rows of `y_true` / `y_pred`", num_classes)
        classes_of = f"num_classes={num_classes}"
    elif width is not None:
        num_classes = width
        classes_of = f"rows of {width} class scores"
    elif class_names is not None:
        num_classes = len(class_names)
        classes_of = f"{num_classes} class names"
    else:
        # Each array checked on its own first, so a bad value is named
        # where it is, not as a label outside a count made up from it.
        accepted = ("integer class labels, or rows of class scores "
                    "(n, num_classes)")
        y_true = integer_values(y_true, "y_true", accepted)
        y_pred = integer_values(y_pred, "y_pred", accepted)
        num_classes = max(int(max(y_true.max(), y_pred.max())) + 1, 1)
        classes_of = f"{num_classes} classes (the largest label + 1)"
    class_names = check_class_names(class_names, num_classes)
    y_true = check_labels(y_true, num_classes, name="y_true",
                          classes_of=classes_of)
    y_pred = check_labels(y_pred, num_classes, name="y_pred",
                          classes_of=classes_of)
    class_names = class_names or tuple(str(i) for i in range(num_classes))
    # kft's metrics, as `kft.evaluate` reports them (scikit-learn's warned
    # of "a single label" for a one-class report).
    confusion = metrics.confusion_matrix(y_true, y_pred, num_classes)
    scores = metrics.per_class_scores(confusion)
    macro = metrics.averages(scores)["macro"]
    return ClassificationReport(
        accuracy=float(np.mean(y_true == y_pred)),
        precision=macro["precision"], recall=macro["recall"],
        f1=macro["f1"],
        per_class={
            name: {"precision": float(scores["precision"][i]),
                   "recall": float(scores["recall"][i]),
                   "f1": float(scores["f1"][i]),
                   "support": int(scores["support"][i])}
            for i, name in enumerate(class_names)
        },
        confusion_matrix=confusion,
        class_names=class_names,
    )


def evaluate_classifier(model: "keras.Model", x, y=None, batch_size: int = 64,
                        class_names: Sequence[str] | None = None
                        ) -> ClassificationReport:
    """Predicts with `model` and reports against the true labels.

    Either arrays (`x` images and `y` labels, or `x=(images, labels)`) or
    a labelled dataset: a `kft.data.ImageDataset`, or any iterable of
    `(images, labels)` batches (a `tf.data.Dataset`, a generator, a list of
    batches), streamed batch by batch with labels and predictions collected
    together, so shuffling does not matter. Labels may be integers or
    one-hot rows.

    Args:
        model: A classifier returning one score (logit or probability) per
            class.
        x: Images, an `(images, labels)` pair, or a labelled dataset (then
            leave `y` out).
        y: Integer labels in `[0, num_classes)` (or one-hot rows) when `x`
            holds images. Defaults to `None`.
        batch_size: Prediction batch size for arrays. Defaults to `64`.
        class_names: One name per class of the model. Defaults to the
            dataset's `class_names` if it has them, else the model's (a
            kft classifier built with `class_names`), else `"0"`, `"1"`,
            ...

    Returns:
        A `ClassificationReport`.

    Raises:
        ValueError: a model with a single output column (a sigmoid
            binary head: build it with `num_classes=2`), a model returning
            NaN or infinite scores, labels outside
            `[0, num_classes)` (named), `y` missing
            for arrays or given with a dataset, a batch that is not
            `(images, labels)`, an empty dataset, or `class_names` of the
            wrong length.

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> report = kft.evaluate_classifier(model, np.zeros((4, 16, 16, 3)),
    ...                                  np.array([0, 1, 0, 1]))
    >>> report.confusion_matrix.shape
    (2, 2)
    >>> data = kft.data.from_arrays(np.zeros((4, 16, 16, 3)),
    ...                             np.array([0, 1, 0, 1]), batch_size=2)
    >>> kft.evaluate_classifier(model, data).class_names
    ('0', '1')
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    num_classes = check_width(output_width(model))
    if num_classes is not None:
        class_names = check_class_names(class_names, num_classes)
    images, labels, dataset = split_data(x, y)
    if dataset is not None:
        from_data = class_names is None
        if from_data:  # checked before predicting when the width is known
            class_names = data_class_names(dataset, num_classes, "x",
                                           model=model)
        labels, scores = predict_batches(model, dataset)
        if from_data:
            class_names = data_class_names(dataset, scores.shape[-1], "x",
                                           model=model)
    else:
        labels, scores = predict_arrays(model, images, labels, batch_size)
        if class_names is None:
            class_names = model_class_names(model, scores.shape[-1])
    scores = np.asarray(scores, np.float32)  # bfloat16 outputs too
    bad = unusable_scores(scores)
    if bad.any():
        raise ValueError(
            f"Model {model.name!r} returned NaN or infinite scores for "
            f"examples {np.flatnonzero(bad)[:10].tolist()} (did training "
            "diverge?): no metric can be computed from them.")
    return classification_report(labels, scores, num_classes=scores.shape[-1],
                                 class_names=class_names)
