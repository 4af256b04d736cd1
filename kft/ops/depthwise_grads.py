"""A depthwise convolution with hand-written gradients for XLA on CPU.

XLA's CPU backend computes a depthwise convolution's kernel gradient as
another convolution, one whose "kernel" is the whole output-gradient map:
a slow generic loop (47 vs 8.5 ms for PyTorch at 16x32x32x96,
benchmarks/RESULTS.md). Under plain autodiff, the shifted-slice forward of
`kft.ops.shifted_conv` also keeps every shifted patch alive until the
backward pass (k*k copies of the input per convolution).

`depthwise_conv` (a `jax.custom_vjp`, also `kft.conv_grads.depthwise_conv`)
keeps only the input and the kernel. Forward: `shifted_depthwise_conv`.
Kernel gradient: per kernel position, one per-channel multiply-add summed
over batch and space by a product with a vector of ones (a vectorised
GEMV), in a loop over positions and cache-sized blocks of examples or
rows. Input gradient: the transposed shifted form (the output gradient
dilated by the strides, padded, correlated with the flipped kernel).
Channels-last arrays of one float dtype (float32, bfloat16 or float16);
sums of the kernel gradient run in float32.
"""

import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from kft.ops.shifted_conv import _flipped_patches
from kft.ops.shifted_conv import _same_padded
from kft.ops.shifted_conv import _summed_dtype
from kft.ops.shifted_conv import _transposed_input
from kft.ops.shifted_conv import check_float_inputs
from kft.ops.shifted_conv import conv_settings
from kft.ops.shifted_conv import shifted_depthwise_conv

__all__ = ["depthwise_conv"]


def _computed_once(values):
    """`values`, a shifted-slice sum, computed into a buffer of its own.

    XLA fuses such a sum (one loop of k*k multiply-adds) into each of its
    consumers: a normalization that reads it three times (mean, variance,
    output) computed it three times. The barrier stops that, with kft's
    CPU flags (`kft._config.BARRIERS_KEPT`; without them XLA drops it
    before fusing). Measured, full training steps (benchmarks/RESULTS.md):
    ConvNeXt-tiny's 7x7 kernels 224 px ~1.2x faster; with XLA's older
    fusion emitters (kft's default) EfficientNetB0 / MobileNetV3Large's
    3x3 and 5x5 kernels too (224 px full steps 1.2-1.6x faster).
    """
    return lax.optimization_barrier(values)


def _forward(inputs, kernel, strides, padding, dilation_rate):
    return _computed_once(shifted_depthwise_conv(
        inputs, kernel, strides, padding, dilation_rate))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(inputs, kernel, strides, padding, dilation_rate):
    # Called without gradients (a frozen layer, inference). Its input is
    # then often an elementwise chain (frozen BatchNorm + activation) that
    # XLA would fuse into, and recompute for, each of the k*k slices: made
    # into a buffer first (EfficientNetB0's 224 px feature extraction 1.5x
    # faster with the older emitters). Under `jax.grad` the input is kept
    # for the backward pass anyway, and `_depthwise_fwd` does without.
    # Padded before the barrier: the padding then joins that chain's loop
    # instead of copying the buffer once more (EfficientNetB0's 224 px
    # feature extraction: 4 ms of 43 in copies of stride-1 inputs).
    if padding == "same":
        inputs = _same_padded(inputs, kernel.shape[:2], strides,
                              dilation_rate)
    return _forward(lax.optimization_barrier(inputs), kernel, strides,
                    "valid", dilation_rate)


def _depthwise_fwd(inputs, kernel, strides, padding, dilation_rate):
    return (_forward(inputs, kernel, strides, padding, dilation_rate),
            (inputs, kernel))


# The depthwise kernel gradient reads the input and the output gradient
# once per kernel position. Arrays larger than the CPU's caches are summed
# in blocks of about this many bytes (whole examples, else rows of all
# examples), so that each block stays in cache for all positions: 2-5x
# faster sums of EfficientNet's larger maps in isolation. 0.5 MiB was the
# fastest of 0.25-2 MiB in whole steps (benchmarks/RESULTS.md).
_BLOCK_BYTES = 2**19


def _depthwise_taps(padded, grads, kernel_hw, strides, dilation_rate):
    """Kernel gradient `(kh, kw, channels, multiplier)` in float32 of an
    explicitly padded ("valid") input.

    The positions run in a `lax.map` loop rather than unrolled: XLA's CPU
    backend compiles each product (a GEMV) as a module of its own, and
    ConvNeXt-tiny's 18 layers x 49 positions took most of its compile
    (224 px full step 97 -> 28 s; steps within noise,
    benchmarks/RESULTS.md).
    """
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_hw, strides
    out_h, out_w = grads.shape[1:3]
    size = (padded.shape[0], (out_h - 1) * stride_h + 1,
            (out_w - 1) * stride_w + 1, padded.shape[3])

    def tap(position):
        i, j = position // kernel_w, position % kernel_w
        patch = lax.dynamic_slice(
            padded, (0, i * dilation_rate[0], j * dilation_rate[1], 0), size)
        return _sum_rows(patch[:, ::stride_h, ::stride_w, :, None] * grads)

    taps = lax.map(tap, jnp.arange(kernel_h * kernel_w))
    return jnp.reshape(taps, (kernel_h, kernel_w, *taps.shape[1:]))


def _sum_rows(values, leading=3):
    """Float32 sums over the first `leading` axes, as one matrix-vector
    product (also `kft.ops.layer_norm`'s scale and offset gradients).

    XLA's CPU loops do not vectorise a reduction whose kept axis is the
    innermost one (no reordering of float sums), and YNNPACK, which takes
    plain float32 sums, ran them slower still; a product with a vector of
    ones runs on Eigen's vectorised GEMV (benchmarks/RESULTS.md:
    EfficientNetB0's depthwise kernel gradients per 224 px step, 202 ms on
    XLA's loops vs 52 ms as products; whole step 414 -> 320 ms).
    """
    values = values.astype(jnp.float32)
    rows = math.prod(values.shape[:leading])
    ones = jnp.ones((rows,), jnp.float32)
    total = jnp.dot(ones, jnp.reshape(values, (rows, -1)),
                    preferred_element_type=jnp.float32)
    return jnp.reshape(total, values.shape[leading:])


def _largest_divisor(n, limit):
    return max(d for d in range(1, n + 1)
               if n % d == 0 and d <= max(limit, 1))


def _depthwise_kernel_grad(inputs, grads, kernel_hw, strides, padding,
                           dilation_rate):
    """Sums over batch and space of input patch x output gradient, per
    kernel position; `grads` is `(batch, out_h, out_w, channels, mult)`."""
    padded = (_same_padded(inputs, kernel_hw, strides, dilation_rate)
              if padding == "same" else inputs)
    batch, out_h = grads.shape[:2]
    per_example = (math.prod(padded.shape[1:]) * padded.dtype.itemsize
                   + math.prod(grads.shape[1:]) * grads.dtype.itemsize)
    args = (kernel_hw, strides, dilation_rate)
    zeros = jnp.zeros((*kernel_hw, *grads.shape[3:]), jnp.float32)
    if batch * per_example <= _BLOCK_BYTES:
        return _depthwise_taps(padded, grads, *args)
    if per_example <= _BLOCK_BYTES:
        size = _largest_divisor(batch, _BLOCK_BYTES // per_example)
        blocks = (jnp.reshape(padded, (-1, size, *padded.shape[1:])),
                  jnp.reshape(grads, (-1, size, *grads.shape[1:])))
        return lax.scan(
            lambda total, block: (total + _depthwise_taps(*block, *args),
                                  None), zeros, blocks)[0]
    # Rows of every example: output rows [r, r + rows) read input rows
    # [r * stride, (r + rows - 1) * stride + span).
    stride_h, span_h = strides[0], (kernel_hw[0] - 1) * dilation_rate[0] + 1
    rows = _largest_divisor(out_h, _BLOCK_BYTES * out_h // (
        batch * per_example))
    in_rows = (rows - 1) * stride_h + span_h

    def block(total, start):
        x = lax.dynamic_slice_in_dim(padded, start * stride_h, in_rows, 1)
        g = lax.dynamic_slice_in_dim(grads, start, rows, 1)
        return total + _depthwise_taps(x, g, *args), None

    return lax.scan(block, zeros, jnp.arange(0, out_h, rows))[0]


def _depthwise_bwd(strides, padding, dilation_rate, residuals, grads):
    # Tied to the incoming gradient: else XLA moves the backward pass's
    # padding and copies of the residuals into the forward pass and
    # keeps them until here (ConvNeXt-tiny's 224 px step: 20 MiB).
    (inputs, kernel), grads = lax.optimization_barrier((residuals, grads))
    channels, multiplier = kernel.shape[2:]
    grads = jnp.reshape(grads, (*grads.shape[:3], channels, multiplier))
    # The name scope lets profiles (benchmarks/profile_step.py) tell the
    # kernel gradient's ops from the input gradient's.
    with jax.named_scope("kernel_gradient"):
        kernel_grad = _depthwise_kernel_grad(
            inputs, grads, kernel.shape[:2], strides, padding, dilation_rate)
    padded = _transposed_input(grads, inputs.shape[1:3], kernel.shape[:2],
                               strides, padding, dilation_rate)
    summed = _summed_dtype(grads.dtype)  # 16-bit terms summed in float32
    padded, summed_kernel = padded.astype(summed), kernel.astype(summed)
    input_grad = None
    for i, j, patch in _flipped_patches(padded, kernel.shape[:2],
                                        dilation_rate):
        term = patch * summed_kernel[i, j]
        term = term[..., 0] if multiplier == 1 else jnp.sum(term, axis=-1)
        input_grad = term if input_grad is None else input_grad + term
    return (_computed_once(input_grad.astype(inputs.dtype)),
            kernel_grad.astype(kernel.dtype))


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(inputs, kernel, strides: tuple[int, int] = (1, 1),
                   padding: Literal["valid", "same"] = "valid",
                   dilation_rate: tuple[int, int] = (1, 1)):
    """`shifted_depthwise_conv` with gradients that are fast on XLA's CPU.

    Same arguments and result as
    `kft.ops.shifted_conv.shifted_depthwise_conv`; under `jax.grad` it
    keeps only `inputs` and `kernel` for the backward pass.

    Args:
        inputs: `(batch, height, width, channels)`, static height and width.
        kernel: `(kernel_h, kernel_w, channels, depth_multiplier)`, cast to
            the dtype of `inputs`.
        strides: `(stride_h, stride_w)`. Defaults to `(1, 1)`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        dilation_rate: `(rate_h, rate_w)`. Defaults to `(1, 1)`.

    Returns:
        `(batch, out_h, out_w, channels * depth_multiplier)`.

    Example:
    >>> import jax, numpy as np
    >>> from kft.ops.depthwise_grads import depthwise_conv
    >>> x, k = np.ones((1, 4, 4, 2), "float32"), np.ones((3, 3, 2, 1))
    >>> jax.grad(lambda k: depthwise_conv(x, k, padding="same").sum())(
    ...     k)[:, :, 0, 0]
    Array([[ 9., 12.,  9.],
           [12., 16., 12.],
           [ 9., 12.,  9.]], dtype=float32)
    """
    inputs = jnp.asarray(inputs)
    check_float_inputs(inputs)
    kernel = jnp.asarray(kernel).astype(inputs.dtype)
    strides, padding, dilation_rate = conv_settings(
        inputs.shape, kernel.shape, strides, padding, dilation_rate)
    return _depthwise(inputs, kernel, strides, padding,
                      dilation_rate)
