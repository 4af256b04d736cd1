"""One process, N devices: data parallel training with `keras.distribution`.

Keras does the work: under `keras.distribution.set_distribution(
DataParallel(...))` every variable (weights, optimizer slots, metrics) is
replicated on all devices, each batch is split along its first axis, and
the jitted train step all-reduces the gradients (XLA inserts the
collectives). kft adds what Keras leaves to the user: checking the device
list and mesh before anything is built, and naming the batch size and the
device count when a batch cannot be split evenly (JAX would report an
`IndivisibleError` about array shapes and tiling factors).

Everything kft does to a compiled model works unchanged under it: the
trainable set changes (`kft.changing_trainable`, `GradualUnfreezing`),
optimizer re-targeting, penalties and `BatchAugmentModel` run in the same
one SPMD program. A `MixUp`/`CutMix` layer in the step mixes the *global*
batch (sample `i` with sample `batch - 1 - i`, one draw per global
position), exactly as on one device: the same seed gives the same mixed
batch on 1 and on N devices (to float rounding). Training BatchNorm layers
normalise with the global batch's statistics (synchronized BatchNorm).
`kft.cache_features` computes features sharded and `kft.fit_head` trains
the head sharded, under the same distribution.
"""

import inspect
import math
from collections.abc import Sequence

import keras

from kft._validation import check_int
from kft._validation import fail_argument
from kft.data._sharding import local_batch_size


def data_parallel(devices: int | Sequence | None = None, *,
                  device_mesh: keras.distribution.DeviceMesh | None = None,
                  ) -> keras.distribution.DataParallel:
    """Sets and returns a `keras.distribution.DataParallel` over devices.

    Call it before building the model: Keras places each variable when it
    is created, and a step mixing variables made before (on one device)
    and after (on all) fails to compile (kft's `fit`, `evaluate`,
    `predict`, `fine_tune` and `lr_find` refuse such a model first:
    `check_placement`; `kft.evaluate` and `kft.predict` run it). Weights
    and optimizer state are replicated, batches split over the devices,
    gradients all-reduced; use global batch sizes divisible by the device
    count. To stop, call `keras.distribution.set_distribution(None)`
    (variables already made stay where they are).

    Args:
        devices: `None` (all devices of the default kind, as
            `keras.distribution.list_devices()`), a number `n` (the first
            `n` of them), or a list of devices (`"cpu:0"` strings, or JAX
            devices). Defaults to `None`.
        device_mesh: A 1-D `keras.distribution.DeviceMesh` instead of
            `devices`. Defaults to `None`.

    Returns:
        The `keras.distribution.DataParallel`, now Keras' global
        distribution.

    Raises:
        ValueError: more devices asked for than exist, an unknown or
            repeated device, a mesh that is not 1-D or names devices that
            do not exist, or both `devices` and `device_mesh`.
        TypeError: a `device_mesh` that is not a `DeviceMesh`.

    Example:
    >>> import keras, kft
    >>> dist = kft.data_parallel(1)
    >>> dist.device_mesh.shape, keras.distribution.distribution() is dist
    ((1,), True)
    >>> keras.distribution.set_distribution(None)
    """
    available = keras.distribution.list_devices()
    if device_mesh is not None:
        if devices is not None:
            raise ValueError(
                "Give `devices` or `device_mesh`, not both. Received: "
                f"devices={devices!r}, device_mesh={device_mesh!r}")
        dist = keras.distribution.DataParallel(
            device_mesh=_checked_mesh(device_mesh, available))
    else:
        dist = keras.distribution.DataParallel(
            devices=_checked_devices(devices, available))
    keras.distribution.set_distribution(dist)
    return dist


def _device_name(device):
    # Keras names devices "platform:id"; JAX devices are accepted too.
    if hasattr(device, "platform") and hasattr(device, "id"):
        return f"{device.platform}:{device.id}"
    name = str(device).lower()
    return name if ":" in name else f"{name}:0"


def _checked_devices(devices, available):
    """The device names to use, checked against `available`."""
    if devices is None:
        return list(available)
    if not isinstance(devices, (str, bytes)) and not isinstance(
            devices, Sequence):
        count = check_int("devices", devices, min_value=1)
        if count > len(available):
            raise ValueError(
                f"Argument `devices` asks for {count} devices but only "
                f"{len(available)} are available ({', '.join(available)}). "
                "On CPU, set XLA_FLAGS=--xla_force_host_platform_device_"
                f"count={count} before importing kft to simulate more.")
        return list(available[:count])
    if isinstance(devices, (str, bytes)) or not devices:
        fail_argument("devices", "None, a number of devices, or a non-empty "
                      "list of devices such as ['cpu:0', 'cpu:1']", devices)
    names = [_device_name(d) for d in devices]
    _check_known(names, available, "devices")
    return names


def _checked_mesh(mesh, available):
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        fail_argument("device_mesh", "a keras.distribution.DeviceMesh", mesh,
                      TypeError)
    if len(mesh.shape) != 1:
        raise ValueError(
            "Argument `device_mesh` must be 1-D for data parallel training "
            f"(one batch axis). Received: shape={tuple(mesh.shape)}, "
            f"axis_names={list(mesh.axis_names)}. For a model axis use "
            "keras.distribution.ModelParallel with a LayoutMap.")
    _check_known([_device_name(d) for d in mesh.devices.flat], available,
                 "device_mesh")
    return mesh


def _check_known(names, available, argument):
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(
            f"Argument `{argument}` names devices that do not exist here: "
            f"{unknown}. Available: {available}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(
            f"Argument `{argument}` lists devices more than once: "
            f"{repeated}. Each device can hold one shard of the batch.")


def batch_shards() -> int:
    """How many parts this process splits each batch into.

    The size of the current `keras.distribution` mesh's batch axis,
    divided by the number of JAX processes (each feeds its own part of the
    global batch); `1` without a distribution.

    Example:
    >>> import kft
    >>> kft.distributed.batch_shards()
    1
    """
    dist = keras.distribution.distribution()
    if dist is None:
        return 1
    mesh = dist.device_mesh
    axis = getattr(dist, "batch_dim_name", None) or mesh.axis_names[0]
    size = mesh.shape[list(mesh.axis_names).index(axis)]
    import jax

    return max(1, size // jax.process_count())


def predict_padded(model, x):
    """`model.predict_on_batch(x)` as a numpy array, for any batch size:
    under data parallel `x` is padded with copies of its last row to split
    over the devices, and their outputs dropped (inference computes each
    row alone, so this is exact).

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> predict_padded(model, np.ones((3, 2))).shape
    (3, 1)
    """
    import numpy as np

    pad = -len(x) % batch_shards()
    if pad:
        x = np.asarray(x)
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    out = np.asarray(model.predict_on_batch(x))
    return out[:len(out) - pad]


def check_placement(model) -> None:
    """Raises when the current distribution spans other devices than the
    model's variables: the model was built before `kft.data_parallel` (or
    another `keras.distribution`) was set, or under another one.

    Keras' train step then fails inside JAX ("incompatible devices for
    jitted computation") and leaves variables it had taken out of the
    model without values. No-op without a distribution.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> check_placement(model)  # no distribution: nothing to check
    """
    distribution = keras.distribution.distribution()
    if distribution is None:
        return
    mesh = sorted(_device_name(d)
                  for d in distribution.device_mesh.devices.flat)
    for variable in model.variables:
        sharding = getattr(variable.value, "sharding", None)
        if sharding is None:  # traced, or not a JAX array
            continue
        placed = sorted(_device_name(d) for d in sharding.device_set)
        if placed != mesh:
            raise ValueError(
                f"Model {model.name!r} was built on {_listed(placed)} but "
                f"the current distribution spans {_listed(mesh)}: build the "
                "model after kft.data_parallel(...) (or "
                "keras.distribution.set_distribution), e.g. build a new "
                "one and `new.set_weights(model.get_weights())`.")


def _listed(names):
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{len(names)} device{'s' * (len(names) != 1)} ({shown})"


def check_batch_size(batch_size: int, num_examples: int | None = None, *,
                     name: str = "batch_size",
                     data_name: str = "the data") -> int:
    """Raises unless every batch splits evenly over the current devices.

    Without a distribution (or on one device) any batch size passes. With
    `num_examples`, the last, smaller batch (`num_examples % batch_size`
    examples) must split evenly too.

    Args:
        batch_size: The batch size this process feeds.
        num_examples: Examples per epoch, or `None` to check only
            `batch_size`. Defaults to `None`.
        name: The batch size's argument name, for the message. Defaults
            to `"batch_size"`.
        data_name: What holds the examples, for the message. Defaults to
            `"the data"`.

    Returns:
        `batch_size`, as an `int`.

    Raises:
        ValueError: a batch that is not a multiple of the device count.

    Example:
    >>> import kft
    >>> kft.distributed.check_batch_size(12, num_examples=100)
    12
    """
    batch_size = check_int(name, batch_size, min_value=1)
    if num_examples is not None:
        num_examples = check_int("num_examples", num_examples, min_value=0)
    rest = None if num_examples is None else num_examples % batch_size
    _check_split(batch_size, rest, batch_name=f"{name}={batch_size}",
                 name=name,
                 last_name=f"{data_name} ({num_examples} examples at "
                           f"{name}={batch_size})")
    return batch_size


def _first_array(x):
    """One input's array of `x` (a dict or list holds one per input), or
    `None` when `x` is not arrays."""
    first = x
    if isinstance(x, dict) and x:
        first = next(iter(x.values()))
    elif isinstance(x, (list, tuple)) and x:
        first = x[0]
    return first if hasattr(first, "shape") and len(first.shape) else None


def check_eval_data(method: str, call_args, call_kwargs) -> None:
    """`check_fit_data` for `model.evaluate` / `model.predict` on arrays
    (`method`): JAX's `IndivisibleError` instead named the last batch.
    No-op without a distribution, for datasets (they check themselves)
    and with `steps`."""
    if batch_shards() == 1:
        return
    arguments = inspect.signature(getattr(keras.Model, method)).bind(
        None, *call_args, **call_kwargs).arguments
    first = _first_array(arguments.get("x"))
    if first is None or arguments.get("steps") is not None:
        return
    try:
        check_batch_size(arguments.get("batch_size") or 32, len(first),
                         data_name="`x`")
    except ValueError as error:
        raise ValueError(
            f"{error} kft.{'evaluate' if method == 'evaluate' else 'predict'}"
            " pads the last batch and takes any number of examples."
        ) from None


class ChecksEvalBatches:
    """Mixin for a `keras.Model`: `evaluate` and `predict` on arrays
    refuse, before running, a batch that does not split over the devices
    (`check_eval_data`)."""

    def evaluate(self, *args, **kwargs):
        check_eval_data("evaluate", args, kwargs)
        check_placement(self)
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        check_eval_data("predict", args, kwargs)
        check_placement(self)
        return super().predict(*args, **kwargs)


def check_fit_data(fit_args, fit_kwargs) -> None:
    """`check_data_batches` for the training and validation data of a
    `model.fit(*fit_args, **fit_kwargs)` call, before it trains: a batch
    that does not split over the devices (or processes) failed only where
    Keras reached it, the last training batch at the end of the first
    epoch and the validation data after it. No-op without a distribution.

    Example:
    >>> import numpy as np
    >>> check_fit_data((np.zeros((4, 2)), np.zeros(4)), {
    ...     "validation_data": (np.zeros((3, 2)), np.zeros(3))})
    """
    if batch_shards() == 1:
        return
    bound = inspect.signature(keras.Model.fit).bind(None, *fit_args,
                                                    **fit_kwargs)
    arguments = bound.arguments
    size = arguments.get("batch_size") or 32  # Keras' default
    split = arguments.get("validation_split") or 0.0
    x = arguments.get("x")
    data = arguments.get("validation_data")
    first = _first_array(x)
    arrays = first is not None
    train = len(first) if arrays else 0
    if arrays and data is None and split:
        # Keras' split (`train_validation_split`): the arrays' last part
        # validates, the first `floor(n * (1 - split))` train.
        train = int(math.floor(train * (1.0 - split)))
    # With `steps_per_epoch` Keras may never reach the last batch: left to
    # it.
    if arrays and arguments.get("steps_per_epoch") is None:
        check_batch_size(size, train, name="batch_size",
                         data_name="`x`" if train == len(first) else
                         f"the training part of `x` (validation_split="
                         f"{split})")
    # A kft.data dataset checks itself as `fit` starts reading it.
    size = arguments.get("validation_batch_size") or size
    if data is None and split and arrays:
        check_batch_size(size, len(first) - train, name="batch_size",
                         data_name=f"the validation_split={split} part")
        return
    if isinstance(data, list):
        data = tuple(data)  # Keras takes a list as the tuple
    if isinstance(data, tuple) and len(data) == 3:
        data = data[:2]  # sample weights split with the images
    check_data_batches(data, size, name="validation_data")


def _check_split(batch, last, *, batch_name, name, last_name,
                 processes=1):
    """Raises unless `batch` and the last batch (`last` examples, `None`
    or 0 for none; this process' part of it among `processes`) split over
    `batch_shards()`."""
    shards = batch_shards()
    if batch % shards:
        raise ValueError(
            f"Argument `{name}` must be a multiple of the {shards} devices "
            "each batch is split over (keras.distribution data parallel). "
            f"Received: {batch_name}, not divisible by {shards}; use "
            f"e.g. {name}={max(shards, batch // shards * shards)}.")
    if last and last % shards:
        whole = shards * processes
        where = ("" if processes == 1 else
                 f" in each of the {processes} processes")
        raise ValueError(
            f"The last batch of {last_name} holds {last} examples{where}, "
            f"not divisible by the {shards} devices each process splits "
            f"a batch over. Use a number of examples that leaves a "
            f"multiple of {whole} (or none) in the last batch, or a "
            "batch size that divides the number of examples.")


def check_data_batches(data, batch_size: int | None, *, name: str) -> None:
    """`check_batch_size` for the data forms kft takes.

    `(x, y)` arrays are checked at `batch_size`; a dataset with
    `batch_size` and `num_examples` attributes (a `kft.data` dataset)
    at its own batch size; other data is not inspected (Keras raises on a
    batch that does not split). No-op without a distribution.

    Args:
        data: `(x, y)` arrays, a dataset, or `None`.
        batch_size: The batch size used for arrays.
        name: The data's argument name, for the message.

    Raises:
        ValueError: a batch that is not a multiple of the device count.

    Example:
    >>> import numpy as np
    >>> from kft.distributed.data_parallel import check_data_batches
    >>> check_data_batches((np.zeros((10, 2)), np.zeros(10)), 4, name="x")
    """
    if data is None or batch_shards() == 1:
        return
    if isinstance(data, tuple) and len(data) == 2:
        check_batch_size(batch_size, len(data[0]),
                         data_name=f"`{name}`")
        return
    size = getattr(data, "batch_size", None)
    if not isinstance(size, int):
        return
    # A kft.data dataset in one of several processes yields its part of
    # each global batch: that part is what this process' devices split.
    _, processes = getattr(data, "shard", (0, 1))
    local = local_batch_size(size, processes, name=f"{name}.batch_size")
    last = (data.partial_batch_size
            if getattr(data, "has_partial_batch", False) else None)
    part = (f"{name}.batch_size={size}" if processes == 1 else
            f"{name}.batch_size={size} ({local} examples in each of "
            f"{processes} processes)")
    count = getattr(data, "num_examples", None)
    _check_split(local, last, batch_name=part, name=f"{name}.batch_size",
                 last_name=f"`{name}` ({count} examples at batch_size="
                           f"{size})", processes=processes)
