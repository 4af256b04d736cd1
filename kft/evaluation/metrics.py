"""Classification metrics on numpy arrays: the numbers a report holds.

Every function takes integer labels `y_true` and either integer
predictions or a `(n, num_classes)` array of class probabilities, and
never returns NaN: a ratio whose denominator is 0 (a class never
predicted, a class absent from `y_true`, an empty calibration bin) is 0,
and `kft.evaluation.EvaluationReport` says so in its notes.
"""

import numpy as np

from kft._validation import check_int
from kft._validation import check_labels

# Rows of non-negative scores summing to 1 within this are probabilities
# (within the explicit tolerance for 16-bit scores: a bfloat16 softmax
# drifts by up to ~5e-3).
_PROBABILITY_TOLERANCE = 1e-3
# Rows given as probabilities may drift more (a float16 softmax); they are
# renormalized.
_EXPLICIT_TOLERANCE = 1e-2


def to_probabilities(scores, kind="auto"):
    """Class probabilities from a model's scores, and what the scores were.

    kft classifiers return logits; Keras models ending in a softmax return
    probabilities. `kind="auto"` takes the scores as probabilities when
    every row is non-negative and sums to 1 (within 1e-3; 1e-2 for 16-bit
    scores), and applies a softmax otherwise. `kind="probabilities"` renormalizes rows that sum
    to 1 within 1e-2 and refuses any other row.

    Args:
        scores: `(n, num_classes)` logits or probabilities.
        kind: `"auto"`, `"logits"` or `"probabilities"`. Defaults to
            `"auto"`.

    Returns:
        `(probabilities, kind)`: float64 rows summing to 1, and
        `"logits"` or `"probabilities"`.

    Raises:
        ValueError: `kind="probabilities"` with a negative row or one not
            summing to 1 (within 1e-2).

    Example:
    >>> p, kind = to_probabilities(np.array([[0.0, 0.0], [2.0, 0.0]]))
    >>> kind, p.round(3).tolist()
    ('logits', [[0.5, 0.5], [0.881, 0.119]])
    """
    scores = np.asarray(scores)
    tolerance = (_EXPLICIT_TOLERANCE if scores.dtype.itemsize <= 2
                 else _PROBABILITY_TOLERANCE)
    scores = scores.astype(np.float64)
    if kind == "auto":
        sums = scores.sum(axis=-1)
        is_probability = bool(np.all(scores >= 0) and np.all(
            np.abs(sums - 1.0) <= tolerance))
        kind = "probabilities" if is_probability else "logits"
    # In place on the float64 copy: each softmax step made another array
    # of the scores' size (50,000 x 1,000: 400 MB each).
    if kind == "probabilities":
        _check_probabilities(scores)
    else:
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores, kind


def _check_probabilities(scores):
    """Refuses rows that are not probabilities: normalizing logits by
    their sum would give "probabilities" above 1 or below 0 (and an ECE
    above 1) without a word."""
    sums = scores.sum(axis=-1)
    bad = np.flatnonzero(np.any(scores < 0, axis=-1) | ~(
        np.abs(sums - 1.0) <= _EXPLICIT_TOLERANCE))
    if bad.size:
        raise ValueError(
            'Argument `scores="probabilities"` needs rows of non-negative '
            "scores summing to 1 (a model ending in a softmax); pass "
            '`scores="logits"` (or "auto") for logits. Received: row '
            f"{int(bad[0])} = {np.round(scores[bad[0]], 4).tolist()} (sum "
            f"{sums[bad[0]]:.4g}); {bad.size} such rows")


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts: row `i`, column `j` is how often class `i` was predicted `j`.

    Raises:
        ValueError: `y_true` or `y_pred` not 1-D integer labels in
            `[0, num_classes)` (the bad values named), or of two lengths.

    Example:
    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 3).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    """
    num_classes = check_int("num_classes", num_classes, min_value=1)
    # Unchecked, a label >= num_classes would count in the next row.
    y_true = check_labels(y_true, num_classes, name="y_true")
    y_pred = check_labels(y_pred, num_classes, name="y_pred")
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(
            "Arguments `y_true` and `y_pred` must be 1-D integer labels of "
            f"one length. Received: y_true of shape {y_true.shape}, y_pred "
            f"of shape {y_pred.shape}")
    flat = np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def normalize_rows(matrix):
    """Each row divided by its sum; a row of zeros stays zeros (not NaN).

    >>> normalize_rows(np.array([[1, 3], [0, 0]])).tolist()
    [[0.25, 0.75], [0.0, 0.0]]
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix),
                     where=sums > 0)


def per_class_scores(confusion):
    """Precision, recall, F1 and support per class, from a confusion matrix.

    A class never predicted has precision 0, a class absent from the
    labels recall 0, and F1 is 0 when precision + recall is 0
    (scikit-learn's `zero_division=0`).

    Returns:
        A dict of arrays `precision`, `recall`, `f1`, `support` (true
        examples) and `predicted` (how often each class was predicted).

    Example:
    >>> scores = per_class_scores(np.array([[2, 0], [1, 0]]))
    >>> scores["precision"].round(3).tolist(), scores["recall"].tolist()
    ([0.667, 0.0], [1.0, 0.0])
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    zeros = np.zeros_like(hits)
    precision = np.divide(hits, predicted, out=zeros.copy(),
                          where=predicted > 0)
    recall = np.divide(hits, support, out=zeros.copy(), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=zeros.copy(),
                   where=both > 0)
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": support.astype(np.int64),
            "predicted": predicted.astype(np.int64)}


def averages(scores):
    """Macro and support-weighted means of precision, recall and F1.

    The means run over the classes that occur in the labels or the
    predictions (scikit-learn's default `labels`): a class in neither has
    no scores to average; a class only predicted counts with recall 0.

    Returns:
        `{"macro": {...}, "weighted": {...}}`, each with `precision`,
        `recall` and `f1`.

    Example:
    >>> averages(per_class_scores(np.array([[2, 0, 0], [1, 0, 0],
    ...                                     [0, 0, 0]])))["macro"]["f1"]
    0.4
    """
    used = (scores["support"] > 0) | (scores["predicted"] > 0)
    support = scores["support"][used]
    result = {"macro": {}, "weighted": {}}
    for name in ("precision", "recall", "f1"):
        values = scores[name][used]
        result["macro"][name] = float(values.mean()) if values.size else 0.0
        result["weighted"][name] = (
            float(np.sum(values * support) / support.sum())
            if support.sum() else 0.0)
    return result


def balanced_accuracy(confusion):
    """Mean recall over the classes present in the labels.

    Classes absent from the labels are left out (scikit-learn's
    `balanced_accuracy_score` does the same and warns).

    >>> balanced_accuracy(np.array([[3, 1], [0, 0]]))
    0.75
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    support = confusion.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float(np.mean(np.diag(confusion)[present] / support[present]))


def _labels_and_scores(y_true, probabilities):
    """`(labels, scores)` checked: one row of class scores per label, the
    labels in range (unchecked, a gather past the last class would
    raise an IndexError or count another class)."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2:
        raise ValueError(
            "Argument `probabilities` must be one row of class scores per "
            f"example (2-D). Received: shape {probabilities.shape}")
    y_true = check_labels(y_true, probabilities.shape[1], name="y_true")
    if y_true.shape != probabilities.shape[:1]:
        raise ValueError(
            "Argument `y_true` must be one integer label per row of "
            f"`probabilities`. Received: y_true of shape {y_true.shape}, "
            f"probabilities of shape {probabilities.shape}")
    return y_true, probabilities


def top_k_accuracy(y_true, probabilities, k):
    """Fraction of examples whose true class is among the `k` top scores.

    Ties are broken toward the lower class index, as `argmax` breaks
    them, so `k=1` equals the accuracy of `argmax` predictions: with
    scores `[0.4, 0.3, 0.3]` and `k=2` the top two are classes 0 and 1,
    not 2. (scikit-learn's `top_k_accuracy_score` breaks ties toward the
    higher index.) `k` at or above the number of classes gives 1.

    >>> top_k_accuracy([2, 1], np.array([[0.4, 0.3, 0.3],
    ...                                  [0.4, 0.3, 0.3]]), 2)
    0.5
    """
    k = check_int("k", k, min_value=1)
    y_true, probabilities = _labels_and_scores(y_true, probabilities)
    classes = np.arange(probabilities.shape[1])[None, :]
    hits, block = 0, 4096
    # Rows in blocks: the comparisons make four boolean arrays of the
    # block's size (of all rows: 200 MB at 50,000 x 1,000).
    for start in range(0, len(y_true), block):
        rows = probabilities[start:start + block]
        labels = y_true[start:start + block]
        true_score = rows[np.arange(len(labels)), labels][:, None]
        # Classes ranked before the true one: higher score, or the same
        # score and a lower index.
        ahead = (rows > true_score) | (
            (rows == true_score) & (classes < labels[:, None]))
        hits += int(np.count_nonzero(ahead.sum(axis=1) < k))
    return hits / len(y_true)


def calibration_bins(y_true, probabilities, num_bins=15):
    """Confidence (top probability) against accuracy in equal-width bins.

    Bin `b` holds the examples whose confidence lies in
    `(b / num_bins, (b + 1) / num_bins]` (the first bin also holds 0).

    Returns:
        A dict of arrays over the bins: `count`, `confidence` (mean top
        probability; 0 for an empty bin) and `accuracy` (fraction of
        correct predictions; 0 for an empty bin).

    Example:
    >>> bins = calibration_bins([0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]),
    ...                         num_bins=2)
    >>> bins["count"].tolist(), bins["accuracy"].tolist()
    ([0, 2], [0.0, 0.5])
    """
    num_bins = check_int("num_bins", num_bins, min_value=1)
    y_true, probabilities = _labels_and_scores(y_true, probabilities)
    probabilities = probabilities.astype(np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    which = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1,
                    0, num_bins - 1)
    count = np.bincount(which, minlength=num_bins)
    total_confidence = np.bincount(which, confidence, minlength=num_bins)
    total_correct = np.bincount(which, correct, minlength=num_bins)
    mean = lambda total: np.divide(  # noqa: E731
        total, count, out=np.zeros(num_bins), where=count > 0)
    return {"count": count, "confidence": mean(total_confidence),
            "accuracy": mean(total_correct)}


def expected_calibration_error(bins):
    """ECE: the count-weighted mean gap between confidence and accuracy.

    `sum_b n_b / n * |accuracy_b - confidence_b|` over the bins of
    `calibration_bins` (Guo et al., 2017, use 15 equal-width bins).

    >>> bins = calibration_bins([0, 1], np.array([[0.9, 0.1], [0.8, 0.2]]),
    ...                         num_bins=2)
    >>> round(expected_calibration_error(bins), 3)
    0.35

    References:
        Guo et al., On Calibration of Modern Neural Networks, ICML 2017.
    """
    count = np.asarray(bins["count"], dtype=np.float64)
    if count.sum() == 0:
        return 0.0
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(
        bins["confidence"]))
    return float(np.sum(count * gap) / count.sum())
