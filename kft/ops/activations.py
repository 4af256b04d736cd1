"""Activations whose gradient keeps less for the backward pass.

`relu`: JAX's ReLU takes its gradient from the input (`x > 0`). In a
residual network the input of a block's ReLU is `BatchNorm(conv) +
shortcut`, and XLA on CPU does not keep it: each backward mask recomputed
the whole stage's chain of BatchNorms, additions and ReLUs from the
convolution outputs (ResNet50's 224 px full step: 68 ms of masks, each a
loop over 4-6 maps). The gradient taken from the output (`y > 0`, the same
mask: `y = max(x, 0)` is positive exactly where `x` is) reads one map the
next layer keeps anyway, as PyTorch's in-place ReLU does.
"""

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["relu"]


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
