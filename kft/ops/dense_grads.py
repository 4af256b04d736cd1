"""Dense layers over feature maps with the kernel gradient as one matrix
product of 2-D views.

A `Dense` layer called on a feature map (ConvNeXt's pointwise layers,
`(batch, height, width, channels)`) gets from autodiff a kernel gradient
that contracts the batch and both spatial axes at once; XLA's CPU backend
computes it over a transposed copy of the output gradient (11-12 ms per
ConvNeXt-tiny stage-0 layer at 224 px, batch 4: 27.9 vs 14.0 ms for one
such layer's two gradients in isolation). Contracting the rows of the 2-D
views, `inputs.reshape(-1, in)^T @ grads.reshape(-1, out)`, needs no copy.
"""

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["dense", "kernel_grad"]


def kernel_grad(inputs, grads):
    """`sum over rows of inputs^T @ grads`, for every leading axis of both:
    the kernel gradient of `inputs @ kernel`, as one matrix product of the
    2-D views (no transposed copy on XLA's CPU backend).

    Example:
    >>> import jax.numpy as jnp
    >>> from kft.ops.dense_grads import kernel_grad
    >>> kernel_grad(jnp.ones((2, 3, 3, 4)), jnp.ones((2, 3, 3, 5))).shape
    (4, 5)
    """
    return lax.dot_general(
        inputs.reshape(-1, inputs.shape[-1]),
        grads.reshape(-1, grads.shape[-1]), (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32)


@jax.custom_vjp
def dense(inputs, kernel):
    """`inputs @ kernel` over the last axis, with the kernel gradient from
    `kernel_grad`; only `inputs` and `kernel` are kept for it.

    Example:
    >>> import jax.numpy as jnp
    >>> from kft.ops.dense_grads import dense
    >>> dense(jnp.ones((2, 3, 3, 4)), jnp.ones((4, 5))).shape
    (2, 3, 3, 5)
    """
    return jnp.matmul(inputs, kernel)


def _dense_fwd(inputs, kernel):
    return dense(inputs, kernel), (inputs, kernel)


def _dense_bwd(residuals, grads):
    # Tied to the incoming gradient, as in `kft.ops.layer_norm`: XLA may
    # not move the backward pass's work into the forward pass.
    (inputs, kernel), grads = lax.optimization_barrier((residuals, grads))
    inputs_grad = jnp.matmul(grads, kernel.T).astype(inputs.dtype)
    return inputs_grad, kernel_grad(inputs, grads).astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)
