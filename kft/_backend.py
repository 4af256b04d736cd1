"""Selects the JAX backend before Keras is imported."""

import os
import sys


def ensure_jax_backend():
    """Makes Keras use JAX, or explains why it cannot.

    Sets `KERAS_BACKEND=jax` when it is unset. Keras reads the variable once,
    on its first import, so a Keras already imported with another backend
    cannot be switched and we say so instead of running on the wrong engine.
    """
    requested = os.environ.setdefault("KERAS_BACKEND", "jax")
    if requested != "jax":
        raise ImportError(
            "kft runs on the JAX backend of Keras, but KERAS_BACKEND="
            f"{requested!r}. Unset it or set KERAS_BACKEND=jax before "
            "importing kft."
        )
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "jax":
            raise ImportError(
                "Keras was imported with the "
                f"{keras.backend.backend()!r} backend before kft. Import kft "
                "first, or set KERAS_BACKEND=jax before importing keras."
            )
