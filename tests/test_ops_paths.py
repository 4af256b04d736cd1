"""User paths through `kft.ops` and `kft._config` that other tests miss:
16-bit policies, environment variable spellings."""

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from kft import _compat
from kft import _config
from kft.ops import conv_grads
from kft.ops import cpu_convs
from kft.ops.shifted_conv import shifted_conv


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_shifted_convs_sum_in_float32_like_keras(dtype):
    # Positive values: no cancellation, so the relative error measures the
    # sum's rounding. Summed in 16 bits, 7x7 taps were 6x Keras' error.
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.rand(2, 8, 8, 4), dtype)
    grads = jnp.asarray(rng.rand(2, 8, 8, 4), dtype)
    layer = cpu_convs.DepthwiseConv2D(7, padding="same", use_bias=False,
                                      dtype=dtype)
    layer.build(x.shape)
    layer.kernel.assign(rng.rand(7, 7, 4, 1))
    kernel = layer.kernel.value

    def errors(conv):
        y, vjp = jax.vjp(conv, x)
        truth = keras.ops.depthwise_conv(
            x.astype("float32"), kernel.astype("float32"), 1, "same")
        _, true_vjp = jax.vjp(lambda v: keras.ops.depthwise_conv(
            v, kernel.astype("float32"), 1, "same"), x.astype("float32"))
        g, true_g = vjp(grads)[0], true_vjp(grads.astype("float32"))[0]
        assert y.dtype == g.dtype == dtype
        return [float(jnp.max(jnp.abs(a.astype("float32") - b) / b))
                for a, b in ((y, truth), (g, true_g))]

    mine = errors(layer)
    ref = errors(lambda v: keras.ops.depthwise_conv(v, kernel, 1, "same"))
    assert mine[0] <= 1.5 * ref[0] and mine[1] <= 1.5 * ref[1], (mine, ref)
    # Dense form (a kernel covering the map): one rounding too.
    k = jnp.asarray(rng.rand(3, 3, 4, 5), dtype)
    small = x[:, :2, :2]
    truth = keras.ops.conv(small.astype("float32"), k.astype("float32"), 1,
                           "same")
    keras_y = keras.ops.conv(small, k, 1, "same").astype("float32")
    kft_y = shifted_conv(small, k, padding="same")
    assert kft_y.dtype == dtype
    err = float(jnp.max(jnp.abs(kft_y.astype("float32") - truth) / truth))
    assert err <= 1.5 * float(jnp.max(jnp.abs(keras_y - truth) / truth))
    # The dense form's input gradient, a sum over 7x7 shifted taps: summed
    # in 16 bits it was 2.4x (bfloat16) and 2.2x (float16) Keras' error;
    # summed in float32 it is Keras' (1.0x).
    k = jnp.asarray(rng.rand(7, 7, 4, 5), dtype)
    small, g = x[:, :3, :3], jnp.asarray(rng.rand(2, 3, 3, 5), dtype)

    def input_grad(conv, v, kernel, out_grads):
        _, vjp = jax.vjp(lambda v: conv(v, kernel, padding="same"), v)
        got = vjp(out_grads)[0]
        assert got.dtype == v.dtype
        return got.astype("float32")

    truth = input_grad(keras.ops.conv,
                       *(a.astype("float32") for a in (small, k, g)))
    errors = [float(jnp.max(jnp.abs(input_grad(conv, small, k, g) - truth)
                            / truth))
              for conv in (functools.partial(conv_grads.conv, shifted=True),
                           keras.ops.conv)]
    assert errors[0] <= 1.5 * errors[1], errors


@pytest.fixture
def fresh_switches(monkeypatch):
    """`reuse_freed_memory` / `release_heap_after_compiles` as on a first
    import on CPU, with recording glibc functions."""
    calls = []
    monkeypatch.setattr(_compat, "jax_backends_initialised", lambda: False)
    monkeypatch.setattr(_compat, "glibc_maps_huge_pages", lambda: False)
    monkeypatch.setattr(_config, "_cpu_only", lambda: True)
    monkeypatch.setattr(_compat, "mallopt_function",
                        lambda: lambda *a: calls.append(a) or 1)
    monkeypatch.setattr(_compat, "malloc_trim_function", lambda: calls.append)
    monkeypatch.setattr(jax.monitoring,
                        "register_event_duration_secs_listener",
                        lambda listener: None)

    def applied(name, value):
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(_config, "_reuse_state", {"applied": False})
        monkeypatch.setattr(_config, "_trim_state",
                            {"listener": None, "trims": 0})
        if name == "KFT_MALLOC_REUSE":
            return _config.reuse_freed_memory()
        return _config.release_heap_after_compiles()

    return applied


@pytest.mark.parametrize("name", ["KFT_MALLOC_REUSE", "KFT_MALLOC_TRIM"])
def test_malloc_switches_read_off_spellings_and_refuse_others(
        fresh_switches, name):
    # "false" used to leave the setting on.
    for value in ("0", "false", " OFF ", "no"):
        assert fresh_switches(name, value) is False, value
    for value in ("", "1", "true", "yes"):
        assert fresh_switches(name, value) is True, value
    with pytest.raises(ValueError, match=f"{name}='2'.*|{name}.*'2'"):
        fresh_switches(name, "2")


def test_compilation_cache_values(monkeypatch, tmp_path):
    names = ("jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs")
    saved = {n: getattr(jax.config, n) for n in names}
    for name in ("JAX_COMPILATION_CACHE_DIR",
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    default = str(tmp_path / "xdg" / "kft" / "jax")
    try:
        for value, expected in (
                ("1", default), ("true", default), ("", default),
                ("~/cache", str(tmp_path / "home" / "cache")),  # unexpanded
                ("rel", str(tmp_path / "rel")),  # not cwd-relative later
                ("0", None), ("off", None)):
            jax.config.update("jax_compilation_cache_dir", None)
            monkeypatch.setenv("KFT_COMPILATION_CACHE", value)
            assert _config.enable_compilation_cache() == expected, value
            if expected is not None:
                assert jax.config.jax_compilation_cache_dir == expected
        # An empty or relative XDG_CACHE_HOME is ignored, as the XDG spec
        # says (the cache went into the working directory).
        monkeypatch.setenv("KFT_COMPILATION_CACHE", "1")
        for xdg in ("", "rel"):
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
            jax.config.update("jax_compilation_cache_dir", None)
            assert _config.enable_compilation_cache() == str(
                tmp_path / "home" / ".cache" / "kft" / "jax"), xdg
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
