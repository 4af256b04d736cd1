"""`EvaluationReport`: every metric of a classifier on one labelled set.

`report_from_predictions` builds it from labels and scores,
`kft.evaluate` (`kft.evaluation.evaluate`) from a model and data.
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from kft._writing import write_file
from kft.evaluation import _format

# Fields held as numpy arrays (lists in JSON).
_ARRAYS = ("precision", "recall", "f1", "support", "predicted",
           "confusion_matrix", "bin_count", "bin_confidence", "bin_accuracy")


class Mistake(NamedTuple):
    """One wrong prediction: which example, its class, the predicted class
    and the predicted class' probability."""

    index: int
    true: int
    predicted: int
    confidence: float


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationReport:
    """A classifier's metrics on one labelled set.

    Built by `kft.evaluate` or `kft.evaluation.report_from_predictions`;
    per-class arrays are indexed by class. No value is NaN: a class never
    predicted has precision 0, a class absent from the labels recall 0,
    and `notes` says which classes that concerns.

    Attributes:
        class_names: One name per class.
        num_examples: Examples evaluated.
        accuracy: Fraction of `argmax` predictions that are right.
        balanced_accuracy: Mean recall over the classes present in the
            labels.
        top_k: The `k` of `top_k_accuracy` (at most the number of classes).
        top_k_accuracy: Fraction of examples whose class is among the `k`
            most probable (ties toward the lower class index, see
            `kft.evaluation.metrics.top_k_accuracy`).
        precision, recall, f1: Per-class scores, float arrays.
        support: True examples per class, int array.
        predicted: Predictions per class, int array.
        macro, weighted: Dicts of mean `precision`, `recall`, `f1` over
            the classes in the labels or the predictions (unweighted, and
            weighted by support).
        confusion_matrix: Counts, row = true class, column = predicted.
        expected_calibration_error: ECE over `bin_*` (equal-width bins of
            the top probability).
        bin_count, bin_confidence, bin_accuracy: Per calibration bin: the
            examples, their mean confidence and their accuracy.
        mistakes: The wrong predictions made with the highest confidence,
            most confident first, as `Mistake(index, true, predicted,
            confidence)`; `index` counts examples in the order evaluated.
        min_support: Classes with fewer true examples are flagged.
        low_support: Names of the flagged classes.
        scores: What the model returned: `"logits"` or `"probabilities"`.
        notes: Sentences explaining zeros, flags and choices.

    Example:
    >>> import numpy as np, kft
    >>> report = kft.evaluation.report_from_predictions(
    ...     [0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]),
    ...     top_k=1, min_support=1)
    >>> round(report.accuracy, 3), report.mistakes[0].index
    (0.667, 2)
    >>> kft.EvaluationReport.from_json(report.to_json()).recall.tolist()
    [1.0, 0.5]
    """

    class_names: tuple
    num_examples: int
    accuracy: float
    balanced_accuracy: float
    top_k: int
    top_k_accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    predicted: np.ndarray
    macro: dict
    weighted: dict
    confusion_matrix: np.ndarray
    expected_calibration_error: float
    bin_count: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    mistakes: tuple
    min_support: int
    low_support: tuple
    scores: str
    notes: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def normalized_confusion_matrix(self) -> np.ndarray:
        """The confusion matrix with each row divided by its support (a
        class absent from the labels has a row of zeros)."""
        from kft.evaluation.metrics import normalize_rows

        return normalize_rows(self.confusion_matrix)

    def to_dict(self) -> dict:
        """Plain Python values (lists, floats, ints, strings) for JSON."""
        result = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _ARRAYS:
                value = np.asarray(value).tolist()
            elif field.name == "mistakes":
                value = [m._asdict() for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            result[field.name] = value
        return result

    @classmethod
    def from_dict(cls, data: dict) -> "EvaluationReport":
        """The report `to_dict` described.

        Raises:
            ValueError: `data` lacks fields of a report (named).
        """
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(
                "Argument `data` must hold every field of an "
                f"EvaluationReport; missing: {missing}. Received: keys "
                f"{sorted(data)}")
        values = {}
        for name in names:
            value = data[name]
            if name in _ARRAYS:
                kind = float if name in ("precision", "recall", "f1") or \
                    name.startswith("bin_") and name != "bin_count" else int
                value = np.asarray(value, dtype=np.float64 if kind is float
                                   else np.int64)
            elif name == "mistakes":
                value = tuple(Mistake(**m) for m in value)
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
        return cls(**values)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON text; also written to `path` when given."""
        text = _format.json_text(self.to_dict())
        if path is not None:
            write_file(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> "EvaluationReport":
        """The report from `to_json`'s text or the file it wrote."""
        text = os.fspath(text_or_path)
        # A file named "{run}.json" is a path, not JSON text.
        if os.path.isfile(text) or not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as file:
                text = file.read()
        return cls.from_dict(json.loads(text))

    load = from_json

    def to_markdown(self, max_classes: int | None = None) -> str:
        """Summary, notes and a per-class table (the `max_classes` classes
        with the lowest F1 when given, an integer >= 1; all by default) in
        Markdown."""
        return _format.markdown(self, max_classes)

    def save_plots(self, folder, data=None, history=None, *,
                   formats: str | Sequence[str] = ("png",)) -> list:
        """Writes the standard plots to `folder`; see
        `kft.evaluation.plots.save_report_plots`."""
        from kft.evaluation.plots import save_report_plots

        return save_report_plots(self, folder, data=data, history=history,
                                 formats=formats)

    def __str__(self):
        return _format.text(self)

    def __repr__(self):
        # Every array in full: 132 KB at 1,000 classes.
        return (f"EvaluationReport({len(self.class_names)} classes, "
                f"{self.num_examples} examples, accuracy={self.accuracy:.4f}"
                f", macro_f1={self.macro['f1']:.4f})")

    def _repr_markdown_(self):  # a notebook shows the summary and table
        # Of many classes, those of lowest F1, as `print` (300 classes: a
        # 335-line table); `to_markdown()` has them all.
        return self.to_markdown(max_classes=20)
