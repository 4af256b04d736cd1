"""Class weights for imbalanced data: `"balanced"` or your own, checked.

A weight multiplies the loss of each example of its class, so a class
with weight 2 counts as if it had twice the examples. For a
`kft.data.ImageDataset`, `model.fit` ignores `class_weight`: use
`dataset.with_class_weight(weights)`, which puts them in the batches.
"""

from collections.abc import Mapping
from typing import Literal

import numpy as np

from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_number
from kft._validation import labels_from_one_hot
from kft._validation import fail_argument


def balanced_class_weight(labels, num_classes: int) -> dict[int, float]:
    """Weights `n / (k * count)`, scikit-learn's `"balanced"`.

    `k` is the number of classes present in `labels`, so every present
    class carries the same total weight `n / k` and the weights average 1
    over the examples (the loss keeps its scale). A class absent from
    `labels` gets weight 1.0: it has no examples to weight, and the entry
    keeps the dict complete for `model.fit`.

    Args:
        labels: Integer labels `(n,)` in `[0, num_classes)`, or one-hot
            rows `(n, num_classes)`.
        num_classes: Number of classes.

    Returns:
        `{class index: weight}` for every class.

    Raises:
        ValueError: no labels, labels outside `[0, num_classes)` (named),
            or 2-D labels that are not one-hot rows of width
            `num_classes`.

    Example:
    >>> balanced_class_weight([0, 0, 0, 1], 3)
    {0: 0.6666666666666666, 1: 2.0, 2: 1.0}
    """
    num_classes = check_int("num_classes", num_classes, min_value=1)
    labels = class_indices(labels, num_classes, "labels")
    if not labels.size:
        fail_argument("labels", "at least one label", labels.tolist())
    counts = np.bincount(labels, minlength=num_classes)
    present = int(np.count_nonzero(counts))
    return {c: (float(labels.size / (present * counts[c]))
                if counts[c] else 1.0) for c in range(num_classes)}


def count_labels(data, num_classes: int) -> np.ndarray:
    """Examples per class of training data.

    An `(x, y)` pair is counted from `y`; a `kft.data.ImageDataset` from
    its `class_counts` (no pass over the images); any other dataset by
    iterating it once and counting the labels of its `(x, y)` batches,
    which reads every batch (and consumes a one-shot iterator: give such
    data as arrays or an `ImageDataset` instead).

    >>> import numpy as np
    >>> count_labels((np.zeros((3, 2)), np.array([0, 2, 2])), 3).tolist()
    [1, 0, 2]
    """
    num_classes = check_int("num_classes", num_classes, min_value=1)
    if isinstance(data, (tuple, list)) and len(data) == 2 and hasattr(
            data[1], "__len__") and not isinstance(data[1], tuple):
        return _bincount(data[1], num_classes, "train_data[1]")
    counts = getattr(data, "class_counts", None)
    if isinstance(counts, Mapping):
        values = list(counts.values())
        if len(values) > num_classes:
            fail_argument("train_data", f"a dataset of at most {num_classes}"
                          " classes", f"a dataset of {len(values)} classes")
        return np.asarray(values + [0] * (num_classes - len(values)))
    total = np.zeros(num_classes, dtype=np.int64)
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            fail_argument("train_data", "(x, y) pairs or a dataset of (x, y)"
                          " batches", f"a batch of type {type(batch).__name__}")
        total += _bincount(batch[1], num_classes, "train_data labels")
    return total


def _bincount(y, num_classes, name):
    return np.bincount(class_indices(y, num_classes, name),
                       minlength=num_classes)


def class_indices(labels, num_classes, name):
    """Checked integer labels `(n,)` from integer labels `(n,)` or
    `(n, 1)`, or one-hot rows `(n, num_classes)`.

    Other 2-D labels raise rather than being flattened: one-hot rows of
    another width would count every 0 and 1 as a label.

    >>> class_indices(np.eye(3)[[2, 0]], 3, "y").tolist()
    [2, 0]
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    elif labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(
                f"Argument `{name}` must be integer labels, shaped (n,) or "
                f"(n, 1), or one-hot rows of width {num_classes} (the number "
                f"of classes). Received: {name} of shape {labels.shape}")
        labels = labels_from_one_hot(labels, name)
    elif labels.ndim > 2:
        raise ValueError(
            f"Argument `{name}` must be integer labels, shaped (n,) or "
            f"(n, 1), or one-hot rows of width {num_classes}. Received: "
            f"{name} of shape {labels.shape}")
    return check_labels(labels.reshape(-1), num_classes, name=name)


def resolve_class_weight(
        class_weight: Literal["balanced"] | Mapping[int, float] | None,
        train_data, num_classes: int) -> dict[int, float] | None:
    """The `class_weight` dict for `model.fit`, checked.

    Args:
        class_weight: `"balanced"` (`balanced_class_weight` of the
            training labels, counted as `count_labels` does), a dict
            `{class index: weight >= 0}` (classes left out weigh 1; 0
            leaves a class out of the loss),
            or `None`.
        train_data: The training data: an `(x, y)` pair or a dataset of
            `(x, y)` batches. Only read for `"balanced"`.
        num_classes: The model's number of classes.

    Returns:
        `{class index: weight}`, or `None` for `None`.

    Raises:
        ValueError: weights for a `kft.data` dataset that balances its
            classes already (`sampling="balanced"`, or
            `with_class_weight`), an unknown string, a key outside
            `[0, num_classes)`,
            a weight that is not a finite number >= 0 (each named), or
            training data without any label.

    Example:
    >>> import numpy as np
    >>> data = (np.zeros((4, 2)), np.array([0, 0, 0, 1]))
    >>> resolve_class_weight("balanced", data, 2)
    {0: 0.6666666666666666, 1: 2.0}
    >>> resolve_class_weight({1: 3}, data, 2)
    {1: 3.0}
    """
    num_classes = check_int("num_classes", num_classes, min_value=1)
    if class_weight is None:
        return None
    # Weights on top of a dataset that balances already would count rare
    # classes twice (or drop the dataset's own weights).
    if getattr(train_data, "sampling", None) == "balanced":
        fail_argument("class_weight", "None for a dataset with "
                      "sampling='balanced' (it draws every class equally "
                      "often already: weights would count rare classes "
                      "twice); pass one of the two", class_weight)
    if getattr(train_data, "class_weight", None) is not None:
        fail_argument("class_weight", "None for a dataset whose batches "
                      "carry class weights already (with_class_weight: "
                      f"{train_data.class_weight}); pass one of the two",
                      class_weight)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            fail_argument("class_weight", "'balanced', a dict {class index: "
                          "weight} or None", class_weight)
        counts = count_labels(train_data, num_classes)
        if not counts.sum():
            fail_argument("train_data", "data with at least one label",
                          "no labels")
        labels = np.repeat(np.arange(num_classes), counts)
        return balanced_class_weight(labels, num_classes)
    if not isinstance(class_weight, Mapping):
        fail_argument("class_weight", "'balanced', a dict {class index: "
                      "weight} or None", class_weight, TypeError)
    result = {}
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(
                key, (int, np.integer)) or not 0 <= key < num_classes:
            fail_argument("class_weight", f"keyed by class indices in "
                          f"[0, {num_classes})", dict(class_weight))
        # 0 leaves a class out of the loss, as Keras' class_weight.
        result[int(key)] = check_number(f"class_weight[{key}]", value,
                                        low=0.0)
    return result
