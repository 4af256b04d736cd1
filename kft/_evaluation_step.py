"""A model's evaluation step without forgetting penalties.

A penalty (`kft.L2SP`, `kft.EWC`) is each penalised weight's
`variable.regularizer`, and Keras adds weight regularizers to the loss in
its evaluation step as in training. The penalty trains the weights towards
theta_0; it is no part of how well the model does its task. Counted, it
made `val_loss` jump when the backbone unfroze (a frozen weight adds
nothing) and grow as the weights moved: `fine_tune` kept a head-only
epoch, and early stopping fired while the task's loss still fell. Here,
outside `kft.regularizers` so that kft's model classes can use it without
an import cycle.
"""

import contextlib
import threading

# Set while a model's evaluation step runs (is traced): penalty terms
# then add nothing.
_EVALUATION = threading.local()


def penalty_is_left_out():
    """Whether a model's evaluation step is running here."""
    return getattr(_EVALUATION, "on", False)


@contextlib.contextmanager
def penalty_left_out():
    """Inside, penalty terms add nothing to a loss: around a model's
    evaluation step, which Python runs while `jit` traces it (or at every
    batch under `run_eagerly`), so the flag shapes the traced loss."""
    before, _EVALUATION.on = penalty_is_left_out(), True
    try:
        yield
    finally:
        _EVALUATION.on = before


class EvaluatesWithoutPenalty:
    """Mixin of kft's model classes (`kft.Classifier`,
    `kft.DomainAdaptationModel`): their evaluation step leaves penalty
    terms out, whichever model the penalty was bound to (a
    `DomainAdaptationModel` shares its classifier's penalised weights)."""

    def test_step(self, *args, **kwargs):
        with penalty_left_out():
            return super().test_step(*args, **kwargs)


def without_penalty_in_evaluation(model):
    """Makes `model`'s evaluation step (`evaluate`, `fit`'s validation)
    leave penalty terms out of the loss; a weight's own regularizer stays.
    Returns a function that undoes it. `kft.regularize` calls it on the
    model it binds to; the models kft builds on penalised weights
    (`kft.fit_head`'s head, `kft.source_classifier`,
    `kft.deploy.inference_model`) get it too, and kft's model classes
    leave the penalty out by themselves (`EvaluatesWithoutPenalty`).

    Example:
    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> undo = without_penalty_in_evaluation(model)
    >>> "test_step" in vars(model)
    True
    >>> undo()
    >>> "test_step" in vars(model)
    False
    """
    step = model.test_step
    # On kft's classes too: a subclass whose `test_step` does not call
    # `super()` (Keras' pattern for a custom step) skips the mixin's.
    if getattr(step, "kft_without_penalty", False):
        return lambda: None

    def test_step(*args, **kwargs):
        with penalty_left_out():
            return step(*args, **kwargs)

    test_step.kft_without_penalty = True
    own = vars(model).get("test_step")  # an instance's own, else None
    model.test_step = test_step

    def undo():
        if vars(model).get("test_step") is test_step:
            if own is None:
                del model.test_step
            else:
                model.test_step = own
    return undo
