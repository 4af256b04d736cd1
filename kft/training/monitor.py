"""Which way a monitored quantity improves, and tracking its best value.

The direction comes from the model's metric objects, as in Keras'
`MonitorCallback`: every Keras metric declares whether higher or lower is
better. Guessing from the name ("acc" in it) picks the worst epoch for a
metric named e.g. "top2".
"""

import math
from typing import Literal

from kft import _compat
from kft._validation import check_choice
from kft._validation import fail_argument

MODES = ("auto", "min", "max")


def _model_metrics(model):
    found = []
    for metric in getattr(model, "metrics", None) or []:
        # `compile` wraps the user's metrics in containers.
        inner = getattr(metric, "metrics", None)
        found.extend(inner if isinstance(inner, list) else [metric])
    return found


def check_monitor(monitor):
    """Returns `monitor`, the name of a logged quantity; raises for another
    value (`None` or a number failed later, deep in the callback).

    >>> check_monitor("val_loss")
    'val_loss'
    """
    if not isinstance(monitor, str) or not monitor:
        fail_argument("monitor", "the name of a logged quantity, e.g. "
                      "'val_loss'", monitor)
    return monitor


def monitor_mode(model, monitor: str,
                 mode: Literal["auto", "min", "max"] = "auto"
                 ) -> Literal["min", "max"]:
    """Returns `"min"` or `"max"` for `monitor` of a compiled `model`.

    With `mode="auto"`, losses are minimised and a metric follows the
    direction its Keras object declares; a quantity without one (a custom
    metric, a value a callback logs) raises, asking for `mode`.

    The compiled metrics exist once the model has trained or evaluated (as
    at the end of an epoch, where kft's callbacks call this).

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    >>> model.compile("sgd", "mse", metrics=[
    ...     keras.metrics.TopKCategoricalAccuracy(k=2, name="top2")])
    >>> _ = model.evaluate(np.ones((2, 2)), np.eye(3)[:2], verbose=0)
    >>> monitor_mode(model, "val_loss"), monitor_mode(model, "val_top2")
    ('min', 'max')
    """
    check_choice("mode", mode, MODES)
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    if name == "loss" or name.endswith("_loss"):
        return "min"
    for metric in _model_metrics(model):
        direction = _compat.metric_direction(metric)
        if metric.name == name and direction:
            return "max" if direction == "up" else "min"
    raise ValueError(
        f"Cannot tell whether monitor={monitor!r} should be maximised or "
        "minimised: no compiled metric of that name declares a direction. "
        "Pass `mode='max'` or `mode='min'`."
    )


def improves(value: float, best: float | None,
             mode: Literal["min", "max"], min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in `mode`.

    Anything beats `best=None`; NaN never improves.

    Example:
    >>> improves(0.5, None, "min"), improves(0.5, 0.6, "min", min_delta=0.2)
    (True, False)
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    if mode == "max":
        return value > best + abs(min_delta)
    return value < best - abs(min_delta)


def logged_value(logs: dict | None, monitor: str, who: str) -> float:
    """`logs[monitor]` as a float, or an error listing what was logged.

    Example:
    >>> logged_value({"loss": 0.25}, "loss", "fine_tune")
    0.25
    """
    value = (logs or {}).get(monitor)
    if value is None:
        raise ValueError(
            f"{who} monitors {monitor!r}, which is not in the epoch logs. "
            f"Available: {sorted(logs or {})}"
        )
    return float(value)
