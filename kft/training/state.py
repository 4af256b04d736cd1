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
import math
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from kft import _compat
from kft._validation import user_stacklevel

# Optimizers already warned about their shared step counter.
_WARNED_SHARED_STEPS = weakref.WeakSet()


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
    # Inside `fit` the newest values live in the step's state; write them
    # back while the variable order still matches the state's.
    _compat.sync_fit_state(model)
    try:
        yield
    finally:
        # Also when the body raised: flags it changed before raising must
        # not leave the optimizer and compiled step on the old set.
        refresh_training_state(model)


def refresh_training_state(model):
    """Makes the next train/test/predict step use `model`'s current
    trainable set.

    Called by `changing_trainable`. Call it yourself after setting
    `layer.trainable` by hand on a compiled model: before `compile`,
    between `fit` calls, or in a callback, also between batches of a
    running `fit` (the step's state, compiled for the flags of the last
    compile or refresh, is written back first).

    Raises:
        RuntimeError: inside `fit` with step state pending and no record of
            the flags the step was compiled for.

    Example (without the refresh, Keras' second `fit` fails: its
    optimizer was built for 4 variables and now gets 2):
    >>> import keras, numpy as np, kft
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3),
    ...                           keras.layers.Dense(1)])
    >>> model.compile("adam", "mse")
    >>> x, y = np.ones((4, 2)), np.zeros((4, 1))
    >>> _ = model.fit(x, y, verbose=0)
    >>> first = model.layers[0]
    >>> first.trainable = False
    >>> kft.refresh_training_state(model)
    >>> before = first.get_weights()[0]
    >>> _ = model.fit(x, y, verbose=0)
    >>> bool((first.get_weights()[0] == before).all())
    True
    """
    if not _compat.sync_fit_state_as_compiled(model):
        raise RuntimeError(
            "refresh_training_state was called inside a running `fit` "
            "whose latest step has not been written back, and the flags it "
            "was compiled for are unknown. Change `trainable` inside "
            "`with kft.changing_trainable(model):` instead.")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        retarget_optimizer(optimizer, model.trainable_variables)
    if not getattr(model, "compiled", False):
        return
    _compat.record_trainable_state(model)
    model.test_function = None
    model.predict_function = None
    if optimizer is not None and not optimizer.built:
        # Not inside `fit` (which builds the optimizer first): let `fit`
        # make the step. Made now, under a `keras.distribution` it would
        # fix its output shardings to the unbuilt optimizer's variables.
        model.train_function = None
    else:
        # A running `fit` calls `model.train_function` on every step, so it
        # must stay callable: a fresh jit wrapper, traced on its first call.
        model.make_train_function(force=True)
    _compat.reread_fit_state(model)


def retarget_optimizer(optimizer, variables):
    """Points a built optimizer at `variables`, keeping the slot values
    (momenta, ...) of the variables it already tracked and creating fresh
    ones for new variables.

    kft optimizers implement `retarget(variables)` themselves; any Keras
    optimizer is rebuilt in place, its slots following their variables
    (not their paths, which two backbones in one model can share).
    A Keras Adam, AdamW, Adamax, Nadam, ScheduleFreeAdamW or Muon (for
    the variables of its Adam path) that has already stepped warns (once)
    when variables are added: their bias correction reads the
    shared step counter, so their first updates are mis-scaled (use
    `kft.BlockwiseOptimizer`, which counts steps per variable).

    Example (`a`'s momentum is kept, `b` starts from none):
    >>> import keras, numpy as np, kft
    >>> a, b = keras.Variable(1.0), keras.Variable(2.0)
    >>> optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    >>> optimizer.apply([np.float32(1)], [a])
    >>> kft.retarget_optimizer(optimizer, [a, b])
    >>> optimizer.apply([np.float32(1), np.float32(1)], [a, b])
    >>> round(float(a), 4), round(float(b), 4)
    (0.71, 1.9)
    """
    if hasattr(optimizer, "retarget"):
        optimizer.retarget(variables)
        return
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Built as Keras builds it, without automatic tracking: tracked,
        # the variables Adafactor and Nadam make bare were listed, and a
        # saved optimizer had more than a fresh one (its state skipped).
        with _compat.untracked():
            retarget_optimizer(optimizer.inner_optimizer, variables)
        _compat.set_tracked(optimizer, variables)
        return
    _warn_shared_step_count(optimizer, variables)
    _compat.rebuild_optimizer(optimizer, variables)


# Optimizers whose updates read the shared step counter (bias correction):
# a variable added late starts at the global step, not its own first.
_STEP_CORRECTED = (keras.optimizers.Adam, keras.optimizers.Adamax,
                   keras.optimizers.Nadam, keras.optimizers.Muon,
                   keras.optimizers.ScheduleFreeAdamW)


def _first_update_factor(optimizer, step):
    """(|first update| / learning rate, formula or None) of an Adam, Adamax,
    Nadam or Muon's Adam path (`(None, None)` for ScheduleFreeAdamW) for a
    variable whose slots start at zero and whose first
    update comes at global step `step` (1-based), epsilon neglected: the
    same for any gradient, about 1 at step 1."""
    if isinstance(optimizer, keras.optimizers.Muon):  # its Adam path
        b1, b2 = optimizer.adam_beta_1, optimizer.adam_beta_2
    else:
        b1, b2 = optimizer.beta_1, getattr(optimizer, "beta_2", None)
    if isinstance(optimizer, (keras.optimizers.Adam,  # AdamW included
                              keras.optimizers.Muon)):
        return ((1 - b1) * math.sqrt(1 - b2**step)
                / ((1 - b1**step) * math.sqrt(1 - b2)),
                "(1 - beta_1) * sqrt(1 - beta_2**t) / ((1 - beta_1**t) * "
                "sqrt(1 - beta_2))")
    if isinstance(optimizer, keras.optimizers.Adamax):
        return (1 - b1) / (1 - b1**step), "(1 - beta_1) / (1 - beta_1**t)"
    if isinstance(optimizer, keras.optimizers.Nadam):
        u_t = b1 * (1 - 0.5 * 0.96**step)
        u_next = b1 * (1 - 0.5 * 0.96 ** (step + 1))
        product = u_t * float(
            ops.convert_to_numpy(_compat.nadam_u_product(optimizer).value))
        m_hat = (u_next * (1 - b1) / (1 - product * u_next)
                 + (1 - u_t) / (1 - product))
        return m_hat * math.sqrt((1 - b2**step) / (1 - b2)), None
    return None, None  # ScheduleFreeAdamW: depends on the gradients too


def _warn_shared_step_count(optimizer, variables):
    """Warns once per optimizer that variables added after its first step
    get the bias correction of the global step instead of their own."""
    if not optimizer.built or optimizer in _WARNED_SHARED_STEPS:
        return
    if not isinstance(optimizer, _STEP_CORRECTED):
        return
    # A plain array under gradient accumulation (the Variable's count
    # over the steps per update).
    iterations = optimizer.iterations
    iterations = int(np.asarray(getattr(iterations, "value", iterations)))
    tracked = {id(v) for v in _compat.tracked_variables(optimizer)}
    added = [v for v in variables if id(v) not in tracked
             and _compat.steps_corrected(optimizer, v)]
    if iterations == 0 or not added:
        return
    _WARNED_SHARED_STEPS.add(optimizer)
    step = iterations + 1
    factor, formula = _first_update_factor(optimizer, step)
    formula = f" = {formula} at t={step}" if formula else ""
    size = ("their first updates will be mis-scaled" if factor is None
            else f"every entry of their first update will be {factor:.2f}x "
            f"the learning rate{formula}, instead of about 1x (too "
            f"{'large' if factor > 1 else 'small'})")
    name = type(optimizer).__name__
    # Nadam keeps shared per-step state, which BlockwiseOptimizer rejects.
    inner = "Adam" if isinstance(optimizer, keras.optimizers.Nadam) else name
    warnings.warn(
        f"{name} keeps one step counter for all its variables, so the "
        f"{len(added)} variable(s) it starts updating now (e.g. "
        f"{added[0].path!r}), after {iterations} steps, get the bias "
        f"correction of step {step} instead of step 1: {size}. "
        f"kft.BlockwiseOptimizer counts steps per variable; compile with "
        f"e.g. kft.BlockwiseOptimizer(keras.optimizers.{inner}(1e-3), "
        f"kft.layerwise_lr(model, 1e-3, 0.7), model=model).",
        UserWarning, stacklevel=user_stacklevel())
