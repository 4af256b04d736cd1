"""Honest evaluation of a classifier: accuracy, macro P/R/F1, confusion."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """Metrics of a classifier on one labelled set.

    Macro averages weight every class equally; a class never predicted has
    precision 0 (not skipped), so the averages cannot flatter a model that
    ignores a class.
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
        for name, m in self.per_class.items():
            lines.append(f"  {name:>12}: precision {m['precision']:.3f} "
                         f"recall {m['recall']:.3f} f1 {m['f1']:.3f} "
                         f"support {m['support']}")
        return "\n".join(lines)


def classification_report(y_true, y_pred, num_classes=None, class_names=None):
    """Metrics from integer labels and predictions.

    Args:
        y_true: Integer labels, shape `(n,)`.
        y_pred: Integer predictions, shape `(n,)`.
        num_classes: Defaults to `len(class_names)` or the largest label + 1.
        class_names: Names of the classes. Defaults to `"0"`, `"1"`, ...

    Returns:
        A `ClassificationReport`.

    Example:
    >>> from kft.evaluation import classification_report
    >>> classification_report([0, 1, 1], [0, 1, 0]).accuracy
    0.6666666666666666
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true).astype(int).reshape(-1)
    y_pred = np.asarray(y_pred).astype(int).reshape(-1)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(
            "`y_true` and `y_pred` must be non-empty and of one length. "
            f"Received lengths {y_true.size} and {y_pred.size}."
        )
    if num_classes is None:
        num_classes = (len(class_names) if class_names is not None
                       else int(max(y_true.max(), y_pred.max())) + 1)
    class_names = tuple(class_names or (str(i) for i in range(num_classes)))
    labels = list(range(num_classes))
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return ClassificationReport(
        accuracy=float(np.mean(y_true == y_pred)),
        precision=float(np.mean(p)),
        recall=float(np.mean(r)),
        f1=float(np.mean(f)),
        per_class={
            name: {"precision": float(p[i]), "recall": float(r[i]),
                   "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels),
        class_names=class_names,
    )


def evaluate_classifier(model, x, y, batch_size=64, class_names=None):
    """Runs `model.predict` on `x` and reports against labels `y`.

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> report = kft.evaluate_classifier(model, np.zeros((4, 16, 16, 3)),
    ...                                  np.array([0, 1, 0, 1]))
    >>> report.confusion_matrix.shape
    (2, 2)
    """
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return classification_report(
        y, np.argmax(logits, axis=-1), num_classes=logits.shape[-1],
        class_names=class_names,
    )
