"""Evaluating with the averaged (EMA) weights and restoring the raw ones."""

import contextlib

import keras
import numpy as np

from kft import _compat


@contextlib.contextmanager
def averaged_weights(model):
    """Context in which `model`'s trainable weights are their moving
    averages; the trained values come back on exit (also on error).

    Needs an optimizer with `use_ema=True`: a `kft.BlockwiseOptimizer` or
    `kft.GroupOptimizer` (whose averages follow the trainable set through
    unfreezing: a block unfrozen later is averaged from then on, starting
    at its value) or a plain Keras optimizer. Use it between `fit` calls or
    in a callback (the running step's state is written back first).
    `fit` itself ends by writing the averages into the model (Keras'
    `use_ema` behaviour) unless the kft optimizer has
    `ema_overwrite_at_end=False`.

    Args:
        model: A compiled model whose optimizer averages its weights.

    Raises:
        ValueError: the optimizer does not average (`use_ema` off) or has
            not been built yet (no step taken).

    Example:
    >>> import keras, kft, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(kft.BlockwiseOptimizer(
    ...     keras.optimizers.SGD(0.1), use_ema=True,
    ...     ema_overwrite_at_end=False), "mse")
    >>> _ = model.fit(np.ones((4, 2)), np.ones(4), epochs=3, verbose=0)
    >>> raw = model.get_weights()[1]
    >>> with kft.optimizers.averaged_weights(model):
    ...     averaged = model.get_weights()[1]
    >>> bool(averaged[0] != raw[0]), bool(model.get_weights()[1][0] == raw[0])
    (True, True)
    """
    optimizer = getattr(model, "optimizer", None)
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Keras wraps it under "mixed_float16"; the averages are inside.
        optimizer = optimizer.inner_optimizer
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        raise ValueError(
            "averaged_weights needs a model compiled with an optimizer that "
            "averages its weights, e.g. kft.BlockwiseOptimizer(..., "
            "use_ema=True). Received: optimizer="
            f"{type(optimizer).__name__ if optimizer else None}")
    averages = _compat.moving_averages(optimizer)
    if not optimizer.built or averages is None:
        raise ValueError("averaged_weights: the optimizer has not been built "
                         "yet (train at least one step first).")
    _compat.sync_fit_state(model)
    tracked = _compat.tracked_variables(optimizer)
    saved = [np.array(v.value) for v in tracked]
    try:
        for variable, average in zip(tracked, averages):
            variable.assign(np.array(average.value))
        yield model
    finally:
        for variable, value in zip(tracked, saved):
            variable.assign(value)
