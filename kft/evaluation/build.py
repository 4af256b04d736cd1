"""Building an `EvaluationReport`: from a model and data (`evaluate`), or
from labels and scores (`report_from_predictions`)."""

from collections.abc import Sequence
from typing import Literal

import numpy as np

from kft._progress import finish
from kft._validation import check_choice
from kft._validation import check_class_names
from kft._validation import check_int
from kft._validation import check_labels
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft.evaluation import _predict
from kft.evaluation import metrics
from kft.evaluation.report import EvaluationReport
from kft.evaluation.report import Mistake

SCORE_KINDS = ("auto", "logits", "probabilities")


def _check_scores(y_true, scores, class_names):
    """`(labels, scores, class names)` checked; the scores keep their
    dtype (a 16-bit model's rows sum to 1 more loosely)."""
    scores = np.asarray(scores)
    values = None
    # bfloat16 (ml_dtypes, kind "V") is no numpy number, but converts
    # (numbers are read as they are: a float64 copy of 50,000 x 1,000
    # scores was 400 MB).
    if scores.dtype.kind in "iuf":
        values = scores
    elif scores.dtype.kind == "V":
        try:
            values = scores.astype(np.float32)
        except (TypeError, ValueError):
            pass
    if scores.ndim != 2 or scores.shape[1] < 1 or values is None:
        raise ValueError(
            "Argument `probabilities` must be a numeric array of shape "
            "(n, num_classes), one row of class scores per example. "
            f"Received: probabilities of shape {scores.shape} and dtype "
            f"{scores.dtype}")
    y_true = np.asarray(y_true)
    if y_true.ndim == 2 and y_true.shape[1] in (1, scores.shape[1]):
        # A column, or one-hot rows as `kft.evaluate` takes them.
        y_true = (y_true[:, 0] if y_true.shape[1] == 1
                  else _predict.integer_labels(y_true, scores.shape[1],
                                               "y_true"))
    if y_true.ndim != 1 or len(y_true) != len(scores) or not len(y_true):
        raise ValueError(
            "Arguments `y_true` and `probabilities` must be non-empty with "
            "one label per row of scores. Received: y_true of shape "
            f"{y_true.shape}, probabilities of shape {scores.shape}")
    if not np.all(np.isfinite(values)):
        rows = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
        raise ValueError(
            "Argument `probabilities` must be finite. Received: NaN or "
            f"infinite scores in rows {rows[:10].tolist()}")
    num_classes = _predict.check_width(scores.shape[1], "probabilities")
    class_names = check_class_names(class_names, num_classes)
    return (check_labels(y_true, num_classes, name="y_true"), scores,
            class_names or tuple(str(i) for i in range(num_classes)))


def _worst_mistakes(y_true, y_pred, confidence, indices, count):
    wrong = np.flatnonzero(y_true != y_pred)
    # Most confident first; a stable sort keeps data order among equals.
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return tuple(Mistake(int(indices[i]), int(y_true[i]), int(y_pred[i]),
                         float(confidence[i])) for i in wrong)


def _notes(names, scores, top_k, requested_k, low_support, min_support):
    def listed(mask):
        chosen = [names[i] for i in np.flatnonzero(mask)]
        more = f" and {len(chosen) - 10} more" if len(chosen) > 10 else ""
        return ", ".join(chosen[:10]) + more

    notes = []
    absent = scores["support"] == 0
    never = scores["predicted"] == 0
    if np.any(absent):
        notes.append(
            f"Classes absent from the labels (support 0; recall and F1 set "
            f"to 0, left out of balanced accuracy): {listed(absent)}.")
    if np.any(never & ~absent):
        notes.append(
            f"Classes never predicted (precision set to 0): "
            f"{listed(never & ~absent)}.")
    if np.any(absent & never):
        notes.append(
            "Classes neither in the labels nor predicted are left out of "
            f"the macro and weighted averages: {listed(absent & never)}.")
    if low_support:
        notes.append(
            f"Classes with fewer than {min_support} examples (their scores "
            f"are noisy): {', '.join(low_support[:10])}"
            + (f" and {len(low_support) - 10} more." if len(low_support) > 10
               else "."))
    if requested_k is not None and top_k < requested_k:
        notes.append(f"top_k={requested_k} is more than the {top_k} "
                     f"classes; top-{top_k} accuracy is 1 by definition.")
    return tuple(notes)


def report_from_predictions(
        y_true, probabilities, *, class_names: Sequence[str] | None = None,
        top_k: int | None = None, num_bins: int = 15, min_support: int = 10,
        num_mistakes: int = 16,
        scores: Literal["auto", "logits", "probabilities"] = "auto",
        indices=None) -> EvaluationReport:
    """An `EvaluationReport` from true labels and a model's class scores.

    Args:
        y_true: Integer labels `(n,)` in `[0, num_classes)`, or one-hot
            rows `(n, num_classes)`.
        probabilities: Scores `(n, num_classes)`: probabilities or logits
            (see `scores`).
        class_names: One name per class. Defaults to `"0"`, `"1"`, ...
        top_k: The `k` of top-k accuracy; capped at the number of classes
            (and noted). Defaults to `None`: 5, or the number of classes
            when fewer (without a note).
        num_bins: Equal-width confidence bins of the calibration error.
            Defaults to `15`.
        min_support: Classes with fewer true examples are flagged in
            `low_support` and the notes. Defaults to `10`.
        num_mistakes: How many of the most confident mistakes to keep.
            Defaults to `16`.
        scores: `"logits"` (softmax applied), `"probabilities"`, or
            `"auto"`: probabilities when every row is non-negative and
            sums to 1 within 1e-3, else logits. Defaults to `"auto"`.
        indices: The example index of each row, for `mistakes`. Defaults
            to `0..n-1`.

    Returns:
        An `EvaluationReport`.

    Raises:
        ValueError: empty input, labels outside `[0, num_classes)`
            (named), scores not of shape `(n, num_classes)` with at least
            2 classes (a one-column sigmoid output is not supported) or
            not finite, `scores="probabilities"` for rows that are not
            probabilities, `class_names` of the wrong length, or a bad
            count.

    Example:
    >>> import numpy as np
    >>> report = report_from_predictions(
    ...     [0, 1, 2, 2], np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0],
    ...                             [0, 0, 2.0]]), top_k=2, min_support=1)
    >>> report.scores, report.accuracy, report.precision.tolist()
    ('logits', 0.75, [1.0, 0.5, 1.0])
    """
    y_true, raw, class_names = _check_scores(y_true, probabilities,
                                             class_names)
    requested_k = (None if top_k is None
                   else check_int("top_k", top_k, min_value=1))
    num_bins = check_int("num_bins", num_bins, min_value=1)
    min_support = check_int("min_support", min_support, min_value=0)
    num_mistakes = check_int("num_mistakes", num_mistakes, min_value=0)
    check_choice("scores", scores, SCORE_KINDS)
    probs, kind = metrics.to_probabilities(raw, scores)
    indices = (np.arange(len(y_true)) if indices is None
               else np.asarray(indices))
    if indices.shape != (len(y_true),):
        fail_argument("indices", f"one index per example ({len(y_true)})",
                      f"an array of shape {indices.shape}")
    num_classes = probs.shape[1]
    # Ranked on the logits themselves: a softmax can round small
    # probabilities to the same value and tie classes that are not tied
    # (top-1 accuracy then differed from accuracy).
    ranked = probs if kind == "probabilities" else (
        raw if raw.dtype.kind in "iuf" else raw.astype(np.float32))
    y_pred = ranked.argmax(axis=1)
    confusion = metrics.confusion_matrix(y_true, y_pred, num_classes)
    per_class = metrics.per_class_scores(confusion)
    means = metrics.averages(per_class)
    bins = metrics.calibration_bins(y_true, probs, num_bins)
    k = min(5 if requested_k is None else requested_k, num_classes)
    low = tuple(name for name, s in zip(class_names, per_class["support"])
                if s < min_support)
    return EvaluationReport(
        class_names=tuple(class_names), num_examples=len(y_true),
        accuracy=float(np.mean(y_true == y_pred)),
        balanced_accuracy=metrics.balanced_accuracy(confusion),
        top_k=k, top_k_accuracy=metrics.top_k_accuracy(y_true, ranked, k),
        **per_class, macro=means["macro"], weighted=means["weighted"],
        confusion_matrix=confusion,
        expected_calibration_error=metrics.expected_calibration_error(bins),
        bin_count=bins["count"], bin_confidence=bins["confidence"],
        bin_accuracy=bins["accuracy"],
        mistakes=_worst_mistakes(y_true, y_pred, probs.max(axis=1), indices,
                                 num_mistakes),
        min_support=min_support, low_support=low, scores=kind,
        notes=_notes(class_names, per_class, k, requested_k, low,
                     min_support))


def evaluate(model, data, *, class_names: Sequence[str] | None = None,
             batch_size: int = 32, top_k: int | None = None,
             num_bins: int = 15,
             min_support: int = 10, num_mistakes: int = 16,
             scores: Literal["auto", "logits", "probabilities"] = "auto",
             verbose: int = 0) -> EvaluationReport:
    """Predicts with `model` on labelled data and reports every metric.

    Streams the data: each batch is predicted and its images dropped;
    only the labels and one row of class probabilities per example are
    kept. kft classifiers return logits, turned into probabilities by a
    softmax (`scores`).

    Args:
        model: A classifier returning one score per class.
        data: An `(images, labels)` pair of arrays, a `kft.data` dataset,
            or any iterable of `(images, labels)` batches (a
            `tf.data.Dataset`, a generator, a list). Labels are integers
            or one-hot rows. A `kft.data` dataset is read in its stored
            order, each example once (no shuffling, no balanced
            sampling), so `report.mistakes` indices name the same
            examples in `data` again. Batches may carry weights as a
            third element (`(images, labels, weights)`, e.g. a dataset
            `with_class_weight`); the report counts every example once
            (a warning says so for weights that are not a `kft.data`
            dataset's class weights).
        class_names: One name per class. Defaults to the dataset's
            `class_names`, else the model's (a kft classifier built with
            `class_names`), else `"0"`, `"1"`, ...
        batch_size: Prediction batch size for arrays. Defaults to `32`.
        top_k, num_bins, min_support, num_mistakes, scores: See
            `kft.evaluation.report_from_predictions`. Defaults to `None`
            (5, or the number of classes when fewer), `15`, `10`, `16`
            and `"auto"`.
        verbose: `1` shows a progress bar over a dataset's batches, `2`
            one line when done. Defaults to `0`.

    Returns:
        A `kft.EvaluationReport`.

    Raises:
        ValueError: empty data, labels outside the model's classes
            (named), one-hot rows of another width, a model with a single
            output column (a sigmoid binary head: build it with
            `num_classes=2`), scores that are not probabilities with
            `scores="probabilities"`, a dataset whose
            `class_names` are not one per class of the model (or, for a
            model that carries its class names, not those names in the
            model's order), batches
            that are not `(images, labels)`, or a bad argument.

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> x, y = np.zeros((6, 16, 16, 3)), np.array([0, 1, 2, 0, 1, 2])
    >>> report = kft.evaluate(model, (x, y), top_k=2)
    >>> report.confusion_matrix.sum(), report.scores, report.top_k
    (np.int64(6), 'logits', 2)
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    verbose = check_verbose(verbose)
    if data is None:  # Python's "'NoneType' object is not iterable"
        fail_argument("data", "an (images, labels) pair of arrays or a "
                      "dataset of (images, labels) batches", data, TypeError)
    _predict.check_width(_predict.output_width(model))
    # Under data parallel each batch is padded to split over the devices
    # (`kft.distributed.data_parallel.predict_padded`): any number of examples is evaluated.
    indices = None
    if isinstance(data, (tuple, list)) and len(data) == 2 and \
            _predict.is_array(data[0]):
        labels, raw = _predict.predict_arrays(
            model, data[0], data[1], batch_size, name="data")
        if class_names is None:
            class_names = _predict.model_class_names(model, raw.shape[-1])
    elif _predict.is_array(data):
        raise ValueError(
            "Argument `data` must be an (images, labels) pair or a dataset "
            "of (images, labels) batches; the labels are missing. "
            f"Received: data of shape {tuple(data.shape)}")
    elif isinstance(data, (tuple, list)) and len(data) == 3 and all(
            _predict.is_array(part) for part in data):
        # Read as three batches, it failed on "a batch of type ndarray".
        raise ValueError(
            "Argument `data` must be an (images, labels) pair: a report "
            "counts every example once, so sample weights (the third "
            f"array) are not used. Received: a {type(data).__name__} of 3 "
            "arrays")
    else:
        from_data = class_names is None
        if from_data:  # checked before predicting when the width is known
            class_names = _predict.data_class_names(
                data, _predict.output_width(model), model=model)
        dataset = _predict.ordered(data)
        progress = _Progress(dataset, verbose) if verbose else None
        labels, raw = _predict.predict_batches(model, dataset, progress,
                                               name="data")
        if progress is not None:
            progress.finish()
        if from_data:
            class_names = _predict.data_class_names(data, raw.shape[-1],
                                                    model=model)
        # Mistakes name positions in `data.paths`, files that failed to
        # load during the pass left out.
        indices = _predict.stored_indices(data, len(labels))
    return report_from_predictions(
        labels, raw, class_names=class_names, top_k=top_k,
        num_bins=num_bins, min_support=min_support,
        num_mistakes=num_mistakes, scores=scores, indices=indices)


class _Progress:
    """A bar over a dataset's batches: called with the batches done, then
    `finish()`."""

    def __init__(self, dataset, verbose):
        import keras

        # A kft dataset's `num_batches` leaves out files found bad while
        # read (`check="header"`); its len() counts the training steps.
        total = getattr(dataset, "num_batches", None)
        if total is None:
            try:
                total = len(dataset)
            except TypeError:
                total = None
        self.bar = keras.utils.Progbar(total, unit_name="batch",
                                       verbose=verbose)
        self.done = 0

    def __call__(self, done):
        self.done = done
        self.bar.update(done)

    def finish(self):
        finish(self.bar, self.done)
