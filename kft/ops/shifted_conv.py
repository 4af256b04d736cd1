"""Convolutions written as shifted slices of the input, for XLA on CPU.

`shifted_depthwise_conv` sums one multiply per kernel position and
`shifted_conv` one matrix product per kernel position; XLA fuses either
into a few loops, where its CPU backend would run a depthwise convolution,
or a convolution whose kernel covers more positions than its input has, as
a slow generic loop. Pure functions of `keras.ops`: `kft.ops.image_ops`
blurs with them and `kft.ops.cpu_convs` builds its layers on them. The
private helpers below them lay out the transposed (input-gradient) form
for the gradients of `kft.ops.conv_grads` and `kft.ops.depthwise_grads`.
"""

import math
import numbers
from typing import Literal

import jax.numpy as jnp
from jax import lax
from keras import ops

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import fail_argument

PADDINGS = ("valid", "same")


def _summed_dtype(dtype):
    """float32 for 16-bit floats: the k*k terms of a shifted convolution
    are summed in float32 and rounded once, as XLA's own convolution does
    (summed in bfloat16, a 7x7 depthwise sum was off by 2.4% relative vs
    Keras' 0.4%)."""
    return "float32" if str(dtype) in ("float16", "bfloat16") else dtype


def _pads(size, kernel, stride, rate, padding):
    """`(out, low, high)` of one axis: output size and the padding before
    and after it, split for "same" as XLA/TensorFlow split it (the odd
    pixel after)."""
    span = (kernel - 1) * rate + 1
    if padding == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + span - size, 0)
        return out, total // 2, total - total // 2
    return (size - span) // stride + 1, 0, 0


def check_float_inputs(inputs):
    """Raises unless `inputs` hold floats: the kernel is cast to their
    dtype, and an integer one truncates it (0.5 became 0; Keras' own ops
    compute such inputs in floats)."""
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
        raise ValueError("Argument `inputs` must hold floats; cast integer "
                         f"inputs first. Received: inputs of dtype "
                         f"{inputs.dtype}")


def conv_settings(input_shape, kernel_shape, strides, padding,
                  dilation_rate):
    """`(strides, padding, dilation_rate)` checked: strides and rates as
    pairs of ints (an int `n` is `(n, n)`) and padding lower-case, as
    `keras.ops.conv` takes them; raises for an unknown `padding` or a
    "valid" kernel span larger than the input (an empty output, refused
    as Keras refuses it)."""
    if isinstance(padding, str):
        padding = padding.lower()
    check_choice("padding", padding, PADDINGS)
    pairs = []
    for name, given in (("strides", strides),
                        ("dilation_rate", dilation_rate)):
        value = ((given, given) if isinstance(given, numbers.Integral)
                 else given)
        try:
            pair = tuple(check_int(name, v, min_value=1) for v in value)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2:
            fail_argument(name, "a positive integer or a (height, width) "
                          "pair of them", given)
        pairs.append(pair)
    (strides, dilation_rate), spans = pairs, [
        (k - 1) * r + 1 for k, r in zip(kernel_shape[:2], pairs[1])]
    if padding == "valid" and any(
            span > size for span, size in zip(spans, input_shape[1:3])):
        raise ValueError(
            f"A \"valid\" convolution of a {tuple(kernel_shape[:2])} kernel "
            f"(dilation {dilation_rate}: spans {tuple(spans)}) over "
            f"{tuple(input_shape[1:3])} inputs has an empty output. Use "
            "padding=\"same\", a smaller kernel or larger inputs.")
    return strides, padding, dilation_rate


def _same_padded(inputs, kernel_size, strides, dilation_rate):
    """`inputs` zero-padded for "same": a "valid" convolution of the
    result is the "same" convolution of `inputs`."""
    pads = [_pads(size, kernel, stride, rate, "same")[1:] for
            size, kernel, stride, rate in zip(inputs.shape[1:3], kernel_size,
                                              strides, dilation_rate)]
    return ops.pad(inputs, [(0, 0), *pads, (0, 0)])


def _shifted_patches(inputs, kernel_size, strides, padding, dilation_rate):
    """Yields `(i, j, patch)`: the input under kernel position `(i, j)`.

    Each patch is `(batch, out_h, out_w, channels)`, with the "same"
    padding split of XLA/TensorFlow.
    """
    check_choice("padding", padding, PADDINGS)
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, strides
    rate_h, rate_w = dilation_rate
    if padding == "same":
        inputs = _same_padded(inputs, kernel_size, strides, dilation_rate)
    span_h, span_w = (kernel_h - 1) * rate_h + 1, (kernel_w - 1) * rate_w + 1
    out_h = (inputs.shape[1] - span_h) // stride_h + 1
    out_w = (inputs.shape[2] - span_w) // stride_w + 1
    for i in range(kernel_h):
        for j in range(kernel_w):
            top, left = i * rate_h, j * rate_w
            yield i, j, inputs[
                :, top:top + (out_h - 1) * stride_h + 1:stride_h,
                left:left + (out_w - 1) * stride_w + 1:stride_w, :]


def shifted_depthwise_conv(inputs, kernel, strides: tuple[int, int] = (1, 1),
                           padding: Literal["valid", "same"] = "valid",
                           dilation_rate: tuple[int, int] = (1, 1)):
    """A channels-last depthwise 2D convolution as shifted multiply-adds.

    Computes what `keras.ops.depthwise_conv` computes for `channels_last`
    inputs. Also importable as `kft.cpu_convs.shifted_depthwise_conv`.

    Args:
        inputs: `(batch, height, width, channels)`, static height and width.
        kernel: `(kernel_h, kernel_w, channels, depth_multiplier)`.
        strides: `(stride_h, stride_w)`.
        padding: `"valid"` or `"same"`.
        dilation_rate: `(rate_h, rate_w)`.

    Returns:
        `(batch, out_h, out_w, channels * depth_multiplier)`.

    Example:
    >>> import numpy as np
    >>> from kft.ops.shifted_conv import shifted_depthwise_conv
    >>> x, k = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1))
    >>> shifted_depthwise_conv(x, k, padding="same")[0, :, :, 0]
    Array([[4., 6., 6., 4.],
           [6., 9., 9., 6.],
           [6., 9., 9., 6.],
           [4., 6., 6., 4.]], dtype=float32)
    """
    inputs = ops.convert_to_tensor(inputs)
    check_float_inputs(inputs)
    dtype = inputs.dtype
    inputs = ops.cast(inputs, _summed_dtype(dtype))
    kernel = ops.cast(ops.cast(kernel, dtype), inputs.dtype)
    strides, padding, dilation_rate = conv_settings(
        inputs.shape, kernel.shape, strides, padding, dilation_rate)
    channels, multiplier = kernel.shape[2:]
    outputs = None
    for i, j, patch in _shifted_patches(inputs, kernel.shape[:2], strides,
                                        padding, dilation_rate):
        if multiplier == 1:
            term = patch * kernel[i, j, :, 0]
        else:
            term = ops.reshape(ops.expand_dims(patch, -1) * kernel[i, j],
                               (-1, *patch.shape[1:3], channels * multiplier))
        outputs = term if outputs is None else outputs + term
    return ops.cast(outputs, dtype)


def shifted_conv(inputs, kernel, strides: tuple[int, int] = (1, 1),
                 padding: Literal["valid", "same"] = "valid",
                 dilation_rate: tuple[int, int] = (1, 1)):
    """A channels-last 2D convolution as one matrix product per position.

    Computes what `keras.ops.conv` computes for `channels_last` inputs.
    Also importable as `kft.cpu_convs.shifted_conv`.

    Args:
        inputs: `(batch, height, width, in_channels)`, static height and
            width.
        kernel: `(kernel_h, kernel_w, in_channels, out_channels)`.
        strides: `(stride_h, stride_w)`.
        padding: `"valid"` or `"same"`.
        dilation_rate: `(rate_h, rate_w)`.

    Returns:
        `(batch, out_h, out_w, out_channels)`.

    Example:
    >>> import numpy as np
    >>> from kft.ops.shifted_conv import shifted_conv
    >>> x, k = np.ones((1, 2, 2, 3)), np.ones((3, 3, 3, 4))
    >>> shifted_conv(x, k, padding="same")[0, :, :, 0]
    Array([[12., 12.],
           [12., 12.]], dtype=float32)
    """
    inputs = ops.convert_to_tensor(inputs)
    check_float_inputs(inputs)
    kernel = ops.cast(kernel, inputs.dtype)
    strides, padding, dilation_rate = conv_settings(
        inputs.shape, kernel.shape, strides, padding, dilation_rate)
    summed = _summed_dtype(inputs.dtype)
    outputs = None
    for i, j, patch in _shifted_patches(inputs, kernel.shape[:2], strides,
                                        padding, dilation_rate):
        term = lax.dot_general(patch, kernel[i, j], (((3,), (0,)), ((), ())),
                               preferred_element_type=summed)
        outputs = term if outputs is None else outputs + term
    return ops.cast(outputs, inputs.dtype)


def _transposed_input(grads, input_hw, kernel_hw, strides, padding,
                      dilation_rate):
    """The output gradient laid out for the input gradient.

    Dilated by the strides and padded (or cropped) so that a stride-1
    "valid" correlation with the flipped kernel gives one value per input
    position: `dx[p] = sum_i g_dilated[p + lo - i * rate] * k[i]`.
    """
    config = [(0, 0, 0)]
    for size, kernel, stride, rate in zip(input_hw, kernel_hw, strides,
                                          dilation_rate):
        out, low, _ = _pads(size, kernel, stride, rate, padding)
        before = (kernel - 1) * rate - low
        after = size + low - (out - 1) * stride - 1
        config.append((before, after, stride - 1))
    config += [(0, 0, 0)] * (grads.ndim - 3)
    return lax.pad(grads, jnp.zeros((), grads.dtype), config)


def _flipped_patches(grads, kernel_hw, dilation_rate):
    """Yields `(i, j, patch)` with `i, j` indices of the flipped kernel."""
    kernel_h, kernel_w = kernel_hw
    for i, j, patch in _shifted_patches(grads, kernel_hw, (1, 1), "valid",
                                        dilation_rate):
        yield kernel_h - 1 - i, kernel_w - 1 - j, patch
