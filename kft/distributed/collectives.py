"""What a training step sends between devices, read from its compiled HLO.

Under a `keras.distribution` XLA's SPMD partitioner inserts the collectives
(the gradients' all-reduce under `DataParallel`; all-gathers and
reduce-scatters of split kernels under `ModelParallel`). `train_step_hlo`
compiles a model's Keras train step as `fit` does and returns the program
text; `collective_bytes` adds up the buffers of its collective operations.
A frozen variable has no gradient, so it adds nothing to the all-reduce.
"""

import re

import jax
import keras
import numpy as np

__all__ = ["collective_bytes", "train_step_hlo"]

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16}
# `%name = <shape> <op>(` with the shape a tensor or a tuple of tensors
# (long tuples carry `/*index=5*/` comments); async collectives are
# counted at their `-start`, never at `-done`.
_OP = re.compile(r"=\s*(\([^()]*\)|\w+\[[\d,]*\](?:\{[^}]*\})?)\s+"
                 r"(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_TENSOR = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> dict:
    """Bytes and counts of the collective operations in an HLO program.

    Each operation counts the bytes of its result: the reduced buffers of
    an all-reduce, the gathered tensor of an all-gather, one device's part
    of a reduce-scatter. An operation that appears once in the program
    counts once (a step is one pass through it).

    Args:
        hlo_text: HLO text, e.g. `compiled.as_text()` or `train_step_hlo`.

    Returns:
        A dict: for each kind in `COLLECTIVES`, `{"bytes": int, "ops":
        int}`, and `"total_bytes"`.

    Example:
    >>> from kft.distributed import collective_bytes
    >>> text = "%ar = (f32[3,4]{1,0}, bf16[8]{0}) all-reduce(%a, %b)"
    >>> collective_bytes(text)["all-reduce"]
    {'bytes': 64, 'ops': 1}
    """
    counts = {kind: {"bytes": 0, "ops": 0} for kind in COLLECTIVES}
    for shape, kind in _OP.findall(hlo_text):
        counts[kind]["ops"] += 1
        counts[kind]["bytes"] += sum(
            _DTYPE_BYTES[dtype] * int(np.prod(
                [int(d) for d in dims.split(",") if d], dtype=np.int64))
            for dtype, dims in _TENSOR.findall(shape))
    counts["total_bytes"] = sum(counts[kind]["bytes"] for kind in COLLECTIVES)
    return counts


def train_step_hlo(model: keras.Model, x, y, sample_weight=None) -> str:
    """The compiled HLO text of `model`'s train step on one batch.

    Compiles the step as Keras' `fit` does under the current distribution
    (`keras.distribution.distribution()`): the batch laid out by the
    distribution, the state's shardings kept. Nothing runs and no weight
    changes. Call it after at least one step (`train_on_batch`), so that
    the optimizer and metrics are built; `kft.freeze` and the other kft
    functions that change the trainable set keep the optimizer matched to
    it (after setting `layer.trainable` by hand, call
    `kft.refresh_training_state`).

    Args:
        model: A compiled Keras model that has trained a step.
        x: One batch of inputs (numpy).
        y: Its targets.
        sample_weight: Optional per-sample weights. Defaults to `None`.

    Returns:
        The program text after SPMD partitioning (`compiled.as_text()`).

    Example:
    >>> import keras, numpy as np
    >>> from kft.distributed import collective_bytes, train_step_hlo
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("sgd", "mse")
    >>> x, y = np.zeros((2, 4)), np.zeros((2, 2))
    >>> _ = model.train_on_batch(x, y)
    >>> collective_bytes(train_step_hlo(model, x, y))["total_bytes"]  # 1 device
    0
    """
    distribution = keras.distribution.distribution()
    data = (x, y, sample_weight)

    def place(value):
        if value is None:
            return None
        value = np.asarray(value)
        if distribution is None:
            return jax.device_put(value)
        layout = distribution.get_data_layout(value.shape)
        return jax.device_put(value, layout.backend_layout)

    data = tuple(place(value) for value in data)
    groups = (model.trainable_variables, model.non_trainable_variables,
              model.optimizer.variables, model.metrics_variables)
    state = tuple([v.value for v in group] for group in groups)
    out_shardings = None
    if distribution is not None:
        out_shardings = (None, tuple([v.value.sharding for v in group]
                                     for group in groups))
    # As Keras jits it (donated state), so the program is the one `fit`
    # runs, and JAX's compilation cache may already hold it.
    step = jax.jit(model.train_step, donate_argnums=0,
                   out_shardings=out_shardings)
    return step.lower(state, data).compile().as_text()
