"""Gradient reversal (Ganin et al., 2016) and its lambda schedule."""

import math
import numbers

import keras
from keras import ops

from kft._validation import check_number


def reversal_lambda(progress, gamma: float = 10.0, max_value: float = 1.0):
    """DANN's schedule: `max_value * (2 / (1 + exp(-gamma * p)) - 1)`.

    Rises from 0 at `p = 0` to almost `max_value` at `p = 1`, so the
    domain gradient stays out while the discriminator is still noise.
    Works on floats and on tensors (inside a compiled step).

    Args:
        progress: Training progress `p` in [0, 1] (a number within
            1e-6 of it is clipped into it; a tensor is used as it is).
        gamma: Steepness, > 0. Defaults to `10.0` (the paper's).
        max_value: The limit, >= 0. Defaults to `1.0`.

    Raises:
        ValueError: `gamma` <= 0 or `max_value` < 0 (a negative lambda
            would turn the reversal around), or a number `progress`
            outside [0, 1].

    Example:
    >>> round(reversal_lambda(0.0), 6), round(reversal_lambda(0.5), 4)
    (0.0, 0.9866)
    """
    if isinstance(gamma, numbers.Real):
        gamma = check_number("gamma", gamma, low=0.0, low_open=True)
    if isinstance(max_value, numbers.Real):
        max_value = check_number("max_value", max_value, low=0.0)
    if isinstance(progress, numbers.Real):
        # Rounding just past an end (`step / total`) is that end; further
        # out is a mistake (an epoch count passed as the progress).
        progress = min(max(check_number("progress", progress, low=-1e-6,
                                        high=1.0 + 1e-6), 0.0), 1.0)
        return max_value * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)
    return max_value * (2.0 / (1.0 + ops.exp(-gamma * progress)) - 1.0)


def reverse_gradient(x, lambda_):
    """Identity forward; the gradient is multiplied by `-lambda_` backward.

    `stop_gradient(x) + (-lambda_) * (x - stop_gradient(x))`: the second
    term is exactly 0 forward (for finite `x`; an infinite `x` is passed
    as it is, where `inf - inf` would give NaN), so the output equals `x`
    bit for bit, and its derivative is `-lambda_` (0 at an infinite `x`).
    No gradient flows into `lambda_`.

    Example:
    >>> import jax, jax.numpy as jnp
    >>> float(jax.grad(lambda v: reverse_gradient(v, 0.5).sum())(
    ...     jnp.ones(3))[0])
    -0.5
    """
    x = ops.convert_to_tensor(x)
    lambda_ = ops.stop_gradient(ops.cast(lambda_, x.dtype))
    frozen = ops.stop_gradient(x)
    return ops.where(ops.isinf(frozen), frozen,
                     frozen + (-lambda_) * (x - frozen))


@keras.saving.register_keras_serializable(package="kft")
class GradientReversal(keras.layers.Layer):
    """Identity forward, `-lambda * gradient` backward (DANN's GRL).

    Put it between a feature extractor and a domain discriminator: the
    discriminator learns to tell the domains apart while the features
    learn to make that impossible. `lambda` is a non-trainable variable
    (`layer.lambda_`): `kft.DomainAdaptationModel` sets it inside its
    compiled step from the schedule `reversal_lambda`; set it yourself
    with `layer.lambda_.assign(v)` outside `fit` (inside a running JAX
    `fit` an assignment reaches the step only at the next epoch).

    Args:
        lambda_: Initial value. Defaults to `1.0`.
        **kwargs: `name`, `dtype`, as for `keras.layers.Layer`.

    Example:
    >>> import jax, jax.numpy as jnp, kft
    >>> layer = kft.GradientReversal(lambda_=2.0)
    >>> x = jnp.arange(3.0)
    >>> bool((layer(x) == x).all())
    True
    >>> jax.grad(lambda v: (layer(v) * v).sum())(x).tolist()  # d(x*x)/dx with
    ... # the first factor reversed: -2x + x
    [0.0, -1.0, -2.0]
    """

    def __init__(self, lambda_: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_lambda = check_number("lambda_", lambda_, low=0.0)
        self.lambda_ = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(
                self.initial_lambda), trainable=False, name="lambda")
        self.built = True

    def call(self, inputs):
        return reverse_gradient(inputs, self.lambda_)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "lambda_": self.initial_lambda}
