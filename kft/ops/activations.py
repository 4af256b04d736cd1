"""Activations computed faster, or kept smaller for the backward pass, on
XLA's CPU backend.

`gelu`: JAX computes the exact GELU through `erfc`, which XLA expands into
selects and exponentials (forward + gradient 24 ms for one of
ConvNeXt-tiny's 4x56x56x384 maps); `0.5 x (1 + erf(x / sqrt 2))`, what
PyTorch and TensorFlow compute, takes 5-6 ms.

`relu`: JAX's ReLU takes its gradient from the input (`x > 0`). In a
residual network the input of a block's ReLU is `BatchNorm(conv) +
shortcut`, and XLA on CPU does not keep it: each backward mask recomputed
the whole stage's chain of BatchNorms, additions and ReLUs from the
convolution outputs (ResNet50's 224 px full step: 68 ms of masks, each a
loop over 4-6 maps). The gradient taken from the output (`y > 0`, the same
mask: `y = max(x, 0)` is positive exactly where `x` is) reads one map the
next layer keeps anyway, as PyTorch's in-place ReLU does.

`silu`: `x * sigmoid(x)` (Keras' "swish"/"silu", EfficientNet's
activation) keeping only `x` for the backward pass. Behind a frozen
BatchNorm (kft's default for full fine-tuning) autodiff keeps the sigmoid
too, a second map of the layer's size: EfficientNetB0's 224 px full step
(batch 4) takes 242 instead of 335 MiB of XLA temp.

`gelu_dense`: `gelu(h) @ kernel` that keeps only `h` for the backward pass
and recomputes the GELU there. A dense layer after a GELU (ConvNeXt's
pointwise MLP) otherwise keeps both `h` (for the GELU's gradient) and
`gelu(h)` (for the kernel gradient), two maps of four times the block's
channels, from the forward pass to the backward pass.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from keras import ops

from kft.ops import dense_grads

__all__ = ["gelu", "gelu_dense", "relu", "silu"]


@jax.custom_vjp
def relu(x):
    """`max(x, 0)`, computed into a buffer of its own, with the gradient
    taken from the output.

    Same values and gradient as `jax.nn.relu` (0 at 0 and for NaN).

    Example:
    >>> import jax, jax.numpy as jnp
    >>> from kft.ops.activations import relu
    >>> jax.grad(lambda x: relu(x).sum())(jnp.array([-1.0, 0.0, 2.0]))
    Array([0., 0., 1.], dtype=float32)
    """
    # The barrier keeps XLA from fusing the max (and the chain before it)
    # into every consumer: the backward mask is to read this buffer.
    return lax.optimization_barrier(jnp.maximum(x, jnp.zeros((), x.dtype)))


def _relu_fwd(x):
    outputs = relu(x)
    return outputs, outputs


def _relu_bwd(outputs, grads):
    return (jnp.where(outputs > 0, grads, jnp.zeros((), grads.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


@jax.custom_vjp
def silu(x):
    """`x * sigmoid(x)` (Keras' "silu"/"swish"), keeping only `x` for the
    gradient: the sigmoid is computed again in the backward pass.

    Same values as `jax.nn.silu`, gradients equal to float rounding.

    Example:
    >>> import jax, jax.numpy as jnp
    >>> from kft.ops.activations import silu
    >>> x = jnp.array([-1.0, 0.0, 2.0])
    >>> bool(jnp.allclose(jax.grad(lambda x: silu(x).sum())(x),
    ...                   jax.grad(lambda x: jax.nn.silu(x).sum())(x)))
    True
    """
    return jax.nn.silu(x)


def _silu_fwd(x):
    return silu(x), x


def _silu_bwd(x, grads):
    # Tied to the incoming gradient, as in `gelu_dense`: otherwise XLA may
    # share the forward pass's sigmoid and keep it after all.
    x, grads = lax.optimization_barrier((x, grads))
    s = jax.nn.sigmoid(x)
    return (grads * (s * (1 + x * (1 - s))),)


silu.defvjp(_silu_fwd, _silu_bwd)


def gelu(x):
    """Exact GELU as `0.5 x (1 + erf(x / sqrt 2))`.

    What PyTorch's and TensorFlow's exact GELU compute; JAX's `erfc` form
    (Keras' `gelu` on JAX) differs by at most ~1e-6 absolute, more
    accurate only in relative terms for x below about -4, where GELU is
    below 1e-4 in size.

    Example:
    >>> import numpy as np
    >>> from kft.ops.activations import gelu
    >>> np.round(np.asarray(gelu(np.array([-1.0, 0.0, 2.0]))), 4)
    array([-0.1587,  0.    ,  1.9545], dtype=float32)
    """
    x = ops.convert_to_tensor(x)
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_grad(x):
    # d/dx x Phi(x) = Phi(x) + x phi(x)
    cdf = 0.5 * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + x * pdf


@jax.custom_vjp
def gelu_dense(x, kernel):
    """`gelu(x) @ kernel` over the last axis of `x`, keeping only `x` and
    `kernel` for the gradient (the GELU is computed again there).

    Same values as `gelu(x) @ kernel`, gradients equal to float rounding.

    Example:
    >>> import jax, jax.numpy as jnp
    >>> from kft.ops.activations import gelu, gelu_dense
    >>> x, k = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    >>> bool(jnp.allclose(gelu_dense(x, k), gelu(x) @ k))
    True
    """
    return jnp.matmul(gelu(x), kernel)


def _gelu_dense_fwd(x, kernel):
    return gelu_dense(x, kernel), (x, kernel)


def _gelu_dense_bwd(residuals, grads):
    # The barrier ties the recomputation to the incoming gradient: without
    # it XLA merges this GELU with the forward pass's (common
    # subexpressions), or schedules it right after the forward pass, and
    # keeps its output after all (and the kernel's transpose).
    (x, kernel), grads = lax.optimization_barrier((residuals, grads))
    x_grad = jnp.matmul(grads, kernel.T) * _gelu_grad(x)
    return (x_grad.astype(x.dtype),
            dense_grads.kernel_grad(gelu(x), grads).astype(kernel.dtype))


gelu_dense.defvjp(_gelu_dense_fwd, _gelu_dense_bwd)
