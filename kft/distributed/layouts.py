"""Model-parallel layout maps: which kernels to shard over a model axis.

`keras.distribution.ModelParallel` places each variable by its path in a
`keras.distribution.LayoutMap`; a path that no key matches is replicated.
`layout_map` writes that map for a kft classifier or registered backbone:
every convolution or dense kernel of at least `min_size` elements is split
over the mesh's model axis along its output channels (depthwise kernels
along their channels), the head's kernels along their input features (the
backbone's width: a class count rarely divides the axis), and everything
else (biases, normalisation, small kernels) is replicated. Only kernels
are split because they hold nearly all the bytes; a split bias would save
little and add a collective per layer.

The map keys are exact variable paths. kft's backbones name every layer
that owns a kernel, so a map made from a template model (or from the
registry name) fits a model built later under the distribution.
"""

import math
import re
from collections.abc import Sequence

import keras
import numpy as np

from kft import _compat
from kft._validation import check_int
from kft._validation import fail_argument

__all__ = ["device_mesh", "layout_map"]

# Kernels smaller than this (elements) stay replicated: splitting them
# saves little memory and costs a collective each.
DEFAULT_MIN_SIZE = 1 << 14
_HEAD_PREFIX = "head_"
_SIMULATE = "XLA_FLAGS=--xla_force_host_platform_device_count={n}"


def device_mesh(shape: Sequence[int],
                axis_names: Sequence[str] = ("batch", "model"),
                devices=None) -> keras.distribution.DeviceMesh:
    """A `keras.distribution.DeviceMesh`, checked against the devices.

    Args:
        shape: Mesh shape, e.g. `(2, 4)`: its product must be the number
            of devices.
        axis_names: One name per mesh axis. Defaults to
            `("batch", "model")`.
        devices: The devices to arrange. Defaults to all of
            `keras.distribution.list_devices()`.

    Returns:
        The `DeviceMesh`.

    Raises:
        ValueError: When the mesh needs another number of devices than
            there are; the message names both, and how to simulate CPU
            devices.

    Example:
    >>> import kft
    >>> kft.device_mesh((1, 1)).shape
    (1, 1)
    >>> kft.device_mesh((2, 4), devices=["cpu:0"])
    Traceback (most recent call last):
    ...
    ValueError: Argument `shape` must be a mesh of as many devices as there are (1: cpu:0). Received: shape=(2, 4) (8 devices). For 8 simulated CPU devices, set XLA_FLAGS=--xla_force_host_platform_device_count=8 before JAX starts.
    """
    if isinstance(shape, np.ndarray):
        shape = shape.tolist()
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        fail_argument("shape", "a sequence of positive integers", shape,
                      TypeError)
    shape = tuple(check_int("shape", n, min_value=1) for n in shape)
    if not shape:  # it read as "0 distinct names" for `axis_names`
        fail_argument("shape", "a non-empty sequence of positive integers",
                      shape)
    axis_names = tuple(axis_names)
    if len(axis_names) != len(shape) or len(set(axis_names)) != len(shape):
        fail_argument("axis_names", f"{len(shape)} distinct names, one per "
                      f"axis of shape={shape}", axis_names)
    if devices is None:
        devices = keras.distribution.list_devices()
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        # A count: "'int' object is not iterable".
        fail_argument("devices", "a list of devices (e.g. "
                      "keras.distribution.list_devices()[:2]) or None",
                      devices, TypeError)
    devices = list(devices)
    needed = math.prod(shape)
    if needed != len(devices):
        listed = ", ".join(str(d) for d in devices[:8])
        more = ", ..." if len(devices) > 8 else ""
        raise ValueError(
            "Argument `shape` must be a mesh of as many devices as there "
            f"are ({len(devices)}: {listed}{more}). Received: shape={shape} "
            f"({needed} devices). For {needed} simulated CPU devices, set "
            f"{_SIMULATE.format(n=needed)} before JAX starts.")
    return keras.distribution.DeviceMesh(shape, list(axis_names), devices)


def layout_map(model: keras.Model | str,
               mesh: keras.distribution.DeviceMesh | Sequence[int], *,
               model_axis: str = "model",
               min_size: int = DEFAULT_MIN_SIZE,
               hidden_units: int = 512,
               ) -> keras.distribution.LayoutMap:
    """A `LayoutMap` that shards a model's widest kernels over `model_axis`.

    Each kernel of at least `min_size` elements gets one split dimension,
    which the model axis size must divide: the output channels of
    convolution and dense kernels, the channels of depthwise kernels, the
    input features of the head's (`head_*`) kernels; when that dimension
    is not divisible, the other channel (or feature) dimension; when
    neither is, the kernel is replicated (a convolution's window is never
    split). The rest of the model is replicated. Give the map to
    `keras.distribution.ModelParallel` and build the model in its scope.

    Args:
        model: A built model (a template: the variables are only read), or
            a registry name, for which the backbone is built once without
            weights and the head's kernels (`head_fc`, `head_dense`) are
            split along their input features when both the backbone's
            width and `hidden_units` allow it (the map then fits a linear
            head and an MLP head alike).
        mesh: A `keras.distribution.DeviceMesh`, or a shape for
            `kft.device_mesh` with axes `("batch", model_axis)`.
        model_axis: The mesh axis that kernels are split over. Defaults to
            `"model"`.
        min_size: Smallest kernel (in elements) that is split. Defaults to
            `16384`.
        hidden_units: With a registry name: the `hidden_units` of the
            MLP head the model will have (`head="mlp"`), whose width is the
            input of its `head_dense`. Defaults to `512`, as
            `kft.build_classifier`'s.

    Returns:
        A `keras.distribution.LayoutMap` on `mesh`, keyed by exact
        variable paths.

    Raises:
        ValueError: For a mesh without `model_axis`, or one that does not
            match the devices (see `kft.device_mesh`).

    Example:
    >>> import keras, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> layouts = kft.layout_map(model, (1, 1), min_size=10000)
    >>> for path in sorted(layouts):
    ...     print(path, layouts[path].axes)
    block3_conv/kernel (None, None, None, 'model')
    head_dense/kernel ('model', None)
    >>> distribution = keras.distribution.ModelParallel(
    ...     layout_map=layouts, batch_dim_name="batch")
    """
    if not isinstance(mesh, keras.distribution.DeviceMesh):
        mesh = device_mesh(mesh, ("batch", model_axis))
    if model_axis not in mesh.axis_names:
        fail_argument("model_axis", f"one of the mesh's axes "
                      f"{tuple(mesh.axis_names)}", model_axis)
    min_size = check_int("min_size", min_size, min_value=1)
    parts = mesh.shape[list(mesh.axis_names).index(model_axis)]
    result = keras.distribution.LayoutMap(mesh)
    if isinstance(model, str):
        model, head_width = _template(model)
    elif isinstance(model, keras.Model):
        if not model.built:
            # Its kernels do not exist yet: the map would be empty.
            fail_argument("model", "a built model (give it a keras.Input, "
                          "or call it on a batch)", model.name)
        head_width = None
    else:
        fail_argument("model", "a keras.Model or a registry name", model,
                      TypeError)
    for layer in _compat.flatten_layers(model):
        kernel = getattr(layer, "kernel", None)
        if not isinstance(kernel, keras.Variable):
            continue
        shape = tuple(kernel.shape)
        head = layer.name.startswith(_HEAD_PREFIX)
        if math.prod(shape) < min_size and not head:
            continue
        axis = _split_axis(layer, shape, parts, head)
        if axis is not None:
            axes = [None] * len(shape)
            axes[axis] = model_axis
            result[re.escape(kernel.path)] = tuple(axes)
    if head_width is not None and head_width % parts == 0:
        # `head_fc`'s input is the pooled backbone (with "flatten" pooling
        # a multiple of the width); `head_dense`'s is the same for a linear
        # head, `hidden_units` for an MLP head.
        result[re.escape("head_fc/kernel")] = (model_axis, None)
        if check_int("hidden_units", hidden_units, min_value=1) % parts == 0:
            result[re.escape("head_dense/kernel")] = (model_axis, None)
    return result


def _split_axis(layer, shape, parts, head):
    """The dimension of a kernel to split over `parts` devices, or None."""
    if head:
        preferred = 0
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        preferred = len(shape) - 2
    else:
        preferred = len(shape) - 1
    if shape[preferred] % parts == 0:
        return preferred
    # Channel or feature dimensions only (a kernel's last two): a split of
    # a convolution's spatial window gave wrong results under JAX's SPMD
    # partitioning on CPU (JAX 0.10.2, strided 3x3 kernels 3 ways).
    divisible = [i for i in range(max(0, len(shape) - 2), len(shape))
                 if shape[i] % parts == 0 and shape[i] > 1]
    return max(divisible, key=lambda i: shape[i]) if divisible else None


def _template(name):
    """The backbone `name` without weights, and its output width."""
    from kft.models import backbones

    backbone = backbones.create_backbone(name, weights=None,
                                         input_shape=(32, 32, 3))
    return backbone, backbone.output.shape[-1]
