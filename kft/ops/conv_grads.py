"""Convolutions with hand-written gradients for XLA on CPU.

XLA's CPU backend computes a convolution's kernel gradient as another
convolution, one whose "kernel" is the whole output-gradient map: slow for
dense convolutions on large maps, and a generic loop for depthwise ones.
Written as one matrix product (dense) or one reduction per kernel position
(depthwise), the same sums run on XLA's GEMM and its fused loops. The
`jax.custom_vjp` functions keep only the input and the kernel for the
backward pass (plain autodiff of a shifted-slice forward keeps every
shifted patch).

- `conv`: forward XLA's convolution or `shifted_conv`; kernel gradient one
  GEMM over all positions at once (im2col of the shifted patches); input
  gradient XLA's transposed convolution, one product with the kernel as
  it is (1x1), or the transposed shifted form.
- `depthwise_conv`: defined in `kft.ops.depthwise_grads`.

Both take and return channels-last arrays of one float dtype (float32,
bfloat16 or float16); sums of the kernel gradient run in float32.
"""

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from kft.ops.depthwise_grads import depthwise_conv
from kft.ops.shifted_conv import _flipped_patches
from kft.ops.shifted_conv import _shifted_patches
from kft.ops.shifted_conv import _summed_dtype
from kft.ops.shifted_conv import _transposed_input
from kft.ops.shifted_conv import check_float_inputs
from kft.ops.shifted_conv import conv_settings
from kft.ops.shifted_conv import shifted_conv

__all__ = ["conv", "depthwise_conv"]

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(inputs, kernel, strides, padding, dilation_rate):
    return lax.conv_general_dilated(
        inputs, kernel, strides, padding.upper(),
        rhs_dilation=dilation_rate, dimension_numbers=_DIMENSIONS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(inputs, kernel, strides, padding, dilation_rate, shifted):
    if shifted:
        return shifted_conv(inputs, kernel, strides, padding, dilation_rate)
    return _xla_conv(inputs, kernel, strides, padding, dilation_rate)


def _conv_fwd(inputs, kernel, strides, padding, dilation_rate, shifted):
    return (_conv(inputs, kernel, strides, padding, dilation_rate, shifted),
            (inputs, kernel))


def _conv_bwd(strides, padding, dilation_rate, shifted, residuals, grads):
    # Tied to the incoming gradient: else XLA moves the backward pass's
    # padding and copies of the residuals into the forward pass and
    # keeps them until here (ConvNeXt-tiny's 224 px step: 20 MiB).
    (inputs, kernel), grads = lax.optimization_barrier((residuals, grads))
    kernel_h, kernel_w, in_channels, out_channels = kernel.shape
    # im2col: one GEMM over all positions, (k*k*in, rows) x (rows, out).
    with jax.named_scope("kernel_gradient"):
        patches = [patch for _, _, patch in _shifted_patches(
            inputs, (kernel_h, kernel_w), strides, padding, dilation_rate)]
        columns = patches[0] if len(patches) == 1 else jnp.concatenate(
            patches, axis=-1)
        columns = jnp.reshape(columns, (-1, columns.shape[-1]))
        kernel_grad = lax.dot_general(
            columns, jnp.reshape(grads, (-1, out_channels)),
            (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        kernel_grad = jnp.reshape(kernel_grad,
                                  kernel.shape).astype(kernel.dtype)
    if (kernel_h, kernel_w) == (1, 1):
        # `grads @ kernel^T`, spread back over the strided positions: XLA's
        # transposed convolution first copied the kernel transposed (8 ms
        # for one of ResNet50's 2048x1024 kernels); a dot reads it as is.
        term = lax.dot_general(grads, kernel[0, 0], (((3,), (1,)), ((), ())))
        return (_transposed_input(term, inputs.shape[1:3], (1, 1), strides,
                                  padding, dilation_rate), kernel_grad)
    if not shifted:
        # XLA's own input gradient (a transposed convolution) is fast.
        _, transpose = jax.vjp(
            lambda x: _xla_conv(x, kernel, strides, padding, dilation_rate),
            inputs)
        return transpose(grads)[0], kernel_grad
    padded = _transposed_input(grads, inputs.shape[1:3], (kernel_h, kernel_w),
                               strides, padding, dilation_rate)
    input_grad = None
    for i, j, patch in _flipped_patches(padded, (kernel_h, kernel_w),
                                        dilation_rate):
        term = lax.dot_general(patch, kernel[i, j], (((3,), (1,)), ((), ())),
                               preferred_element_type=_summed_dtype(
                                   grads.dtype))  # 16-bit: float32 sums
        input_grad = term if input_grad is None else input_grad + term
    return input_grad.astype(inputs.dtype), kernel_grad


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(inputs, kernel, strides: tuple[int, int] = (1, 1),
         padding: Literal["valid", "same"] = "valid",
         dilation_rate: tuple[int, int] = (1, 1), *, shifted: bool = False):
    """A dense 2D convolution whose kernel gradient is one GEMM (im2col).

    Computes what `keras.ops.conv` computes for `channels_last` inputs;
    under `jax.grad` it keeps only `inputs` and `kernel` for the backward
    pass.

    Args:
        inputs: `(batch, height, width, in_channels)`, static height and
            width.
        kernel: `(kernel_h, kernel_w, in_channels, out_channels)`, cast to
            the dtype of `inputs`.
        strides: `(stride_h, stride_w)`. Defaults to `(1, 1)`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        dilation_rate: `(rate_h, rate_w)`. Defaults to `(1, 1)`.
        shifted: Forward and input gradient as one matrix product per
            kernel position (`shifted_conv`) instead of XLA's convolution:
            faster where the kernel covers more positions than the map
            has. Defaults to `False`.

    Returns:
        `(batch, out_h, out_w, out_channels)`.

    Example:
    >>> import jax, numpy as np
    >>> from kft.ops.conv_grads import conv
    >>> x, k = np.ones((1, 2, 2, 3), "float32"), np.ones((3, 3, 3, 4))
    >>> jax.grad(lambda x: conv(x, k, padding="same").sum())(x)[0, :, :, 0]
    Array([[16., 16.],
           [16., 16.]], dtype=float32)
    """
    inputs = jnp.asarray(inputs)
    check_float_inputs(inputs)
    kernel = jnp.asarray(kernel).astype(inputs.dtype)
    strides, padding, dilation_rate = conv_settings(
        inputs.shape, kernel.shape, strides, padding, dilation_rate)
    return _conv(inputs, kernel, strides, padding,
                 dilation_rate, bool(shifted))
