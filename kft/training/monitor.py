"""Which way a monitored quantity improves, and tracking its best value.

The direction comes from the model's metric objects, as in Keras'
`MonitorCallback`: every Keras metric declares whether higher or lower is
better. Guessing from the name ("acc" in it) picks the worst epoch for a
metric named e.g. "top2".
"""

import math

from kft._validation import check_choice

MODES = ("auto", "min", "max")


def _model_metrics(model):
    found = []
    for metric in getattr(model, "metrics", None) or []:
        # `compile` wraps the user's metrics in containers.
        inner = getattr(metric, "metrics", None)
        found.extend(inner if isinstance(inner, list) else [metric])
    return found


def monitor_mode(model, monitor, mode="auto"):
    """Returns `"min"` or `"max"` for `monitor` of a compiled `model`.

    With `mode="auto"`, losses are minimised and a metric follows the
    direction its Keras object declares; a quantity without one (a custom
    metric, a value a callback logs) raises, asking for `mode`.
    """
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    for metric in _model_metrics(model):
        if metric.name == name and getattr(metric, "_direction", None):
            return "max" if metric._direction == "up" else "min"
    raise ValueError(
        f"Cannot tell whether monitor={monitor!r} should be maximised or "
        "minimised: no compiled metric of that name declares a direction. "
        "Pass `mode='max'` or `mode='min'`."
    )


def improves(value, best, mode, min_delta=0.0):
    """Whether `value` beats `best` by more than `min_delta` in `mode`.

    Anything beats `best=None`; NaN never improves.
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    if mode == "max":
        return value > best + abs(min_delta)
    return value < best - abs(min_delta)


def logged_value(logs, monitor, who):
    """`logs[monitor]` as a float, or an error listing what was logged."""
    value = (logs or {}).get(monitor)
    if value is None:
        raise ValueError(
            f"{who} monitors {monitor!r}, which is not in the epoch logs. "
            f"Available: {sorted(logs or {})}"
        )
    return float(value)
