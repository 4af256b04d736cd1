"""Keeps a compiled Keras/JAX model consistent when its trainable set changes.

Keras 3 on JAX compiles the train step over `model.trainable_variables` *by
position*, and builds the optimizer once for a fixed variable list. Changing
`layer.trainable` after that leaves the jitted step mapping new values onto
old variables (silently, when the shapes agree) and the optimizer pairing
gradients with the wrong slots. `changing_trainable` is the one way kft
changes trainable flags: it writes the running step's state back to the
variables, lets the change happen, then re-targets the optimizer (keeping
the slots of variables that stay trainable) and drops the compiled
functions, so the next step traces once for the new set.
"""

import contextlib

import keras


@contextlib.contextmanager
def changing_trainable(model):
    """Context in which `layer.trainable` flags of `model` may change.

    Safe before `compile`, between `fit` calls and inside a callback of a
    running `fit` (at batch or epoch boundaries).

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(32, 32, 3))
    >>> with kft.changing_trainable(model):
    ...     model.get_layer("head_dense").trainable = False
    """
    # Inside `fit` the newest values live in `model._jax_state`; write them
    # back while the variable order still matches the state's.
    if getattr(model, "_jax_state", None) is not None:
        model.jax_state_sync()
    yield
    refresh_training_state(model)


def refresh_training_state(model):
    """Makes the next train/test/predict step use `model`'s current trainable
    set. Called by `changing_trainable`; call it yourself after setting
    `layer.trainable` by hand on a compiled model."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        retarget_optimizer(optimizer, model.trainable_variables)
    if not getattr(model, "compiled", False):
        return
    model.test_function = None
    model.predict_function = None
    # A running `fit` calls `model.train_function` on every step, so it must
    # stay callable: a fresh jit wrapper, traced on its first call.
    model.make_train_function(force=True)
    # Makes a running `fit` re-read the state lists before its next step.
    model._jax_state_synced = True


def retarget_optimizer(optimizer, variables):
    """Points a built optimizer at `variables`, keeping the slot values
    (momenta, ...) of the variables it already tracked and creating fresh
    ones for new variables.

    kft optimizers implement `retarget(variables)` themselves; any Keras
    optimizer is rebuilt in place, with its slots matched by variable path.
    """
    if hasattr(optimizer, "retarget"):
        optimizer.retarget(variables)
        return
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        retarget_optimizer(optimizer.inner_optimizer, variables)
        _set_tracked(optimizer, variables)
        return
    if [id(v) for v in optimizer._trainable_variables] == [
        id(v) for v in variables
    ]:
        return
    own = [optimizer._iterations]
    if isinstance(optimizer._learning_rate, keras.Variable):
        own.append(optimizer._learning_rate)
    old_slots = {
        v.path: v.value
        for v in optimizer._variables
        if not any(v is o for o in own)
    }
    optimizer._variables[:] = own
    optimizer._trainable_variables_indices = {}
    optimizer.built = False
    optimizer.build(list(variables))
    optimizer.built = True
    for v in optimizer._variables:
        old = old_slots.get(v.path)
        if old is not None and tuple(old.shape) == tuple(v.shape):
            v.assign(old)


def _set_tracked(optimizer, variables):
    # Plain assignment would make Keras' tracker list the model's variables
    # among the optimizer's own (and `fit` donate their buffers twice).
    object.__setattr__(optimizer, "_trainable_variables", list(variables))
    optimizer._trainable_variables_indices = {
        optimizer._var_key(v): i for i, v in enumerate(variables)
    }
