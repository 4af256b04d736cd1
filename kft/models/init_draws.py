"""Random initial weights compiled once per length bucket, not once per shape.

Keras draws every random initial weight through `jax.random` under `jit`,
the weight's shape static: each distinct kernel shape compiles its own XLA
program, eagerly, while the model is built. EfficientNetB0 makes 81 such
draws, about 30 s of compiling on CPU before anything trains, and each
program compiles too fast for JAX's persistent cache to keep, so every new
process pays again.

With JAX's partitionable threefry (its default) the i-th value of a draw
depends only on the key and i, so a draw of shape `s` is the first
`prod(s)` values of a flat draw of any greater length. `bucketed_draws`
makes Keras' draws flat, their lengths rounded up to a power of two: a
backbone then compiles one program per distribution and length bucket
(EfficientNetB0: 38 compiles in all, Keras' eager zeros/ones included,
instead of 163), shared by every model built in the process, and gets
bit-for-bit the weights Keras' own draws give (tested).
"""

import contextlib
import inspect
import math

import numpy as np

from kft import _compat

# Shorter draws share one program; drawing 1,024 numbers costs microseconds.
_MIN_LENGTH = 1024
_DRAWS = ("normal", "uniform", "truncated_normal")
_active = []


@contextlib.contextmanager
def bucketed_draws():
    """Within the block, Keras' eager random draws compile once per length
    bucket (see the module docstring).

    Draws inside a traced function (a compiled step, an initializer `jit`-ed
    for a sharded variable), of other dtypes than float32 or with tensor
    parameters take Keras' own path, as does everything when JAX's threefry
    is not partitionable or the backend is not JAX. Not thread-safe: it
    swaps functions of Keras' JAX random module for the block.

    Example:
    >>> import keras
    >>> from kft.models.init_draws import bucketed_draws
    >>> init = keras.initializers.GlorotUniform(seed=1)
    >>> with bucketed_draws():
    ...     kernel = init((3, 3, 8, 16))
    >>> bool((kernel == init((3, 3, 8, 16))).all())
    True
    """
    import jax
    import keras

    if (_active or keras.backend.backend() != "jax"
            or not jax.config.jax_threefry_partitionable):
        yield
        return
    module = _compat.keras_jax_random()
    originals = {name: getattr(module, name) for name in _DRAWS}
    _active.append(True)
    try:
        for name, original in originals.items():
            setattr(module, name, _bucketed(name, original, module))
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
        _active.pop()


def _bucketed(name, original, module):
    """`name` of Keras' JAX random module, drawing flat buckets when it
    can."""
    import jax
    import keras

    signature = inspect.signature(original)

    def draw(*args, **kwargs):
        params = signature.bind(*args, **kwargs)
        params.apply_defaults()
        params = dict(params.arguments)
        shape, seed = params.pop("shape"), params.pop("seed")
        dtype = params.pop("dtype") or keras.config.floatx()
        # Left: minval / maxval (uniform) or mean / stddev.
        size = int(math.prod(shape)) if _static_shape(shape) else 0
        if (size == 0 or dtype != "float32" or _tracing(jax)
                or not all(isinstance(v, (int, float))
                           for v in params.values())):
            return original(*args, **kwargs)
        key = module.jax_draw_seed(seed)
        length = max(_MIN_LENGTH, 1 << (size - 1).bit_length())
        if name == "uniform":
            flat = jax.random.uniform(key, (length,), dtype, **params)
            # A copy: on CPU `device_put` shares the view's memory, which
            # would keep the whole bucket (up to twice the weight) alive
            # with the weight (ConvNeXt-tiny: 190 MiB of buckets behind
            # 106 MiB of weights, through the first epoch of training).
            return jax.device_put(_first(flat, size, shape).copy())
        if name == "normal":
            flat = jax.random.normal(key, (length,), dtype)
        else:
            # Keras' bounds for its truncated normal.
            flat = jax.random.truncated_normal(key, -2.0, 2.0, (length,),
                                               dtype)
        # Keras scales the draw eagerly, one float32 multiply and one add,
        # as here; in JAX each would compile once more per shape.
        sample = (_first(flat, size, shape) * np.float32(params["stddev"])
                  + np.float32(params["mean"]))
        # `jnp.asarray` would compile an identity per shape.
        return jax.device_put(sample)

    draw.__name__ = name
    draw.__doc__ = original.__doc__
    return draw


def _first(flat, size, shape):
    """The first `size` values of a flat draw, in `shape` (a numpy view
    of `flat`'s memory)."""
    return np.asarray(flat)[:size].reshape(shape)


def _static_shape(shape):
    try:
        return all(int(d) == d and d >= 0 for d in shape)
    except TypeError:
        return False


def _tracing(jax):
    """Whether a JAX trace is open (ops return tracers)."""
    return isinstance(jax.numpy.zeros(()), jax.core.Tracer)
