"""A momentum (or Adam `beta_1`) schedule applied inside the train step.

Keras optimizers hold `momentum` / `beta_1` as Python floats, read when
the train step is traced. kft's routing optimizers set the attribute to
the schedule's value at the global step for the duration of the wrapped
optimizer's `update_step`, so the value is computed in the compiled step.
"""

import contextlib

import keras



class _Scheduled:
    """A traced momentum value that Keras' `update_step` can use.

    SGD and RMSprop test `self.momentum != 0` / `> 0` in Python before
    using it; a traced value cannot answer that, this object answers for
    it (a validated schedule stays in (0, 1)) and converts to the traced
    value in `keras.ops` (`__jax_array__`).
    """

    def __init__(self, value):
        self.value = value

    def __jax_array__(self):
        return self.value

    def __ne__(self, other):
        return other != other or other <= 0

    def __gt__(self, other):
        return other <= 0



def momentum_attribute(name, inner):
    """`"beta_1"` or `"momentum"`: what a momentum schedule sets on
    `inner`; raises for an optimizer without either."""
    if hasattr(inner, "beta_1"):
        return "beta_1"
    kind = type(inner).__name__
    if isinstance(inner, (keras.optimizers.SGD, keras.optimizers.RMSprop)):
        if not inner.momentum:
            raise ValueError(
                "Argument `momentum_schedule` needs momentum slots to "
                f"schedule; got {name}: {kind}(momentum={inner.momentum!r})"
                ". Create it with momentum > 0, or drop "
                "`momentum_schedule`.")
        return "momentum"
    if isinstance(inner, keras.optimizers.Muon):
        raise TypeError(
            "Argument `momentum_schedule` cannot schedule Muon's momentum "
            "(its Adam path has `adam_beta_1`, its other path `momentum`): "
            f"drop `momentum_schedule`, or use another optimizer; got {name}:"
            f" {kind}.")
    raise TypeError(
        "Argument `momentum_schedule` needs optimizers with a `beta_1` or "
        "`momentum` (Adam, AdamW, Adamax, Lion, SGD, RMSprop with momentum "
        f"> 0); got {name}: {kind}.")


@contextlib.contextmanager
def scheduled_momentum(inner, attribute, value):
    """Sets `inner.<attribute>` to the traced `value` for the block."""
    if attribute is None:
        yield
        return
    saved = getattr(inner, attribute)
    # `beta_1` is only ever used in arithmetic: the traced value itself.
    setattr(inner, attribute,
            value if attribute == "beta_1" else _Scheduled(value))
    try:
        yield
    finally:
        setattr(inner, attribute, saved)
