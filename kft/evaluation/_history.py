"""Training histories for plotting: phases merged, boundaries found."""

import warnings

import numpy as np

from kft._validation import fail_argument

# Logged values that are not curves of a metric.
_BOOKKEEPING = ("unfrozen_blocks", "trainable_params")


def _is_rate(key):
    return key.startswith("learning_rate") or key.startswith("lr")


def _phases(history):
    """The list of `history` dicts in `history`."""
    if hasattr(history, "histories"):  # a kft.FineTuneResult
        return list(history.histories)
    if hasattr(history, "history") and isinstance(history.history, dict):
        return [history.history]  # a keras History
    if isinstance(history, dict):
        return [history]
    if isinstance(history, (list, tuple)) and all(
            isinstance(h, dict) for h in history):
        if history and all(np.ndim(v) == 0 for h in history
                           for v in h.values()):
            return phase_histories(history)  # a run's history.json rows
        return list(history)
    fail_argument("history", "a keras History, its `history` dict, a "
                  "kft.FineTuneResult or a list of `history` dicts",
                  type(history).__name__, TypeError)


def phase_histories(rows):
    """A run folder's `history.json` rows (one dict of numbers per epoch,
    with its `phase`) as one `History.history` dict per phase.

    >>> phase_histories([{"epoch": 0, "phase": 1, "loss": 2.0},
    ...                  {"epoch": 1, "phase": 2, "loss": 1.0}])
    [{'loss': [2.0]}, {'loss': [1.0]}]
    """
    phases = {}
    for row in rows:
        logs = phases.setdefault(row.get("phase", 1), {})
        for key, value in row.items():
            if key not in ("epoch", "phase"):
                logs.setdefault(key, []).append(value)
    return [phases[k] for k in sorted(phases)]


def merge(history):
    """`(curves, phase_starts)`: each key's values over all epochs (NaN
    where a phase did not log it) and the 0-based first epoch of each
    phase after the first.

    >>> curves, starts = merge([{"loss": [2, 1]}, {"loss": [0.5],
    ...                                           "learning_rate": [0.1]}])
    >>> curves["learning_rate"].tolist(), starts
    ([nan, nan, 0.1], [2])
    """
    phases = [h for h in _phases(history)]
    lengths = [max((len(v) for v in h.values()), default=0) for h in phases]
    if not sum(lengths):
        fail_argument("history", "a history of at least one epoch",
                      "an empty history")
    keys = list(dict.fromkeys(k for h in phases for k in h))
    curves = {}
    for key in keys:
        curves[key] = np.concatenate([
            _at_epochs(_per_epoch(h.get(key, []), key), length, key)
            for h, length in zip(phases, lengths)])
    starts = list(np.cumsum(lengths)[:-1])
    return curves, [int(s) for s in starts if 0 < s]


def _per_epoch(values, key):
    """One float per epoch: a metric logging several values an epoch (one
    per class: `keras.metrics.F1Score()`'s default `average=None`) is
    plotted as their mean (for F1 per class, the macro F1), warned."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim <= 1:
        return values
    values = values.reshape(len(values), -1)
    warnings.warn(
        f"{key!r} logs {values.shape[1]} values per epoch (one per class?): "
        "plotted as their mean (for F1 per class, the macro F1).",
        UserWarning, stacklevel=4)
    return values.mean(axis=1)


def _at_epochs(values, length, key):
    """`values` of one phase of `length` epochs, NaN where not logged.

    A key logged in fewer epochs than its phase (validation with `fit`'s
    `validation_freq=k` logs after epochs k, 2k, ...) is placed at every
    k-th epoch when one `k` fits its count, with a warning saying so;
    otherwise its epochs are unknown and it is left out (warned).
    """
    if not len(values) or len(values) == length:
        return np.concatenate([values, np.full(length - len(values), np.nan)])
    out = np.full(length, np.nan)
    fits = [k for k in range(2, length + 1) if length // k == len(values)]
    if len(fits) == 1:
        out[fits[0] - 1::fits[0]] = values
        warnings.warn(
            f"{key!r} was logged in {len(values)} of {length} epochs: "
            f"plotted after every {fits[0]} epochs, as fit's "
            f"validation_freq={fits[0]} logs it.", UserWarning,
            stacklevel=4)
    else:
        warnings.warn(
            f"{key!r} was logged in {len(values)} of {length} epochs, at "
            "epochs the history does not record (fit's validation_freq?): "
            "not plotted.", UserWarning, stacklevel=4)
    return out


def stage_starts(curves, phase_starts):
    """0-based epochs where `unfrozen_blocks` grew within a phase.

    >>> stage_starts({"unfrozen_blocks": np.array([np.nan, 1, 2, 2, 3])},
    ...              [1])
    [2, 4]
    """
    blocks = curves.get("unfrozen_blocks")
    if blocks is None:
        return []
    starts = []
    for epoch in range(1, len(blocks)):
        before, now = blocks[epoch - 1], blocks[epoch]
        if (np.isfinite(before) and np.isfinite(now) and now > before
                and epoch not in phase_starts):
            starts.append(epoch)
    return starts


def panels(curves, metrics=None):
    """`[(title, keys, log_scale)]`: loss, each metric, learning rates."""
    trained = [k for k in curves if not k.startswith("val_")
               and not _is_rate(k) and k not in _BOOKKEEPING]
    if metrics is None:
        metrics = [k for k in trained if k != "loss"]
    elif isinstance(metrics, str):
        metrics = [metrics]  # one name, not its letters
    for name in metrics:
        if name not in curves and f"val_{name}" not in curves:
            fail_argument("metrics", f"names of logged metrics {trained}",
                          list(metrics))
    result = []
    for name in (["loss"] if "loss" in curves or "val_loss" in curves
                 else []) + list(metrics):
        keys = [k for k in (name, f"val_{name}") if k in curves]
        result.append((name, keys, False))
    rates = [k for k in curves if _is_rate(k)]
    if rates:
        result.append(("learning rate", rates, True))
    if not result:
        fail_argument("history", "a history with a loss or metrics",
                      sorted(curves))
    return result
