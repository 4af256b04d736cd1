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


def enable_compilation_cache(directory=None):
    """Turns on JAX's persistent compilation cache.

    kft compiles one train step per trainable set (per stage of gradual
    unfreezing); with the cache a second run of the same recipe loads those
    programs from disk instead of compiling them again. kft calls this on
    import unless `KFT_COMPILATION_CACHE=0`, or a cache directory is already
    configured for JAX (`JAX_COMPILATION_CACHE_DIR`), which is then kept.

    Args:
        directory: Cache location. Defaults to `$KFT_COMPILATION_CACHE` if it
            names a directory, else `$XDG_CACHE_HOME/kft/jax` (by default
            `~/.cache/kft/jax`).

    Returns:
        The directory used, or `None` when the cache was left off.

    Example:
    >>> import kft
    >>> kft.enable_compilation_cache("/tmp/kft-jax-cache")
    '/tmp/kft-jax-cache'
    """
    import jax

    setting = os.environ.get("KFT_COMPILATION_CACHE", "")
    if directory is None:
        if setting == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return None
        directory = setting or os.path.join(
            os.environ.get("XDG_CACHE_HOME",
                           os.path.join(os.path.expanduser("~"), ".cache")),
            "kft", "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache every program that took over half a second to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
