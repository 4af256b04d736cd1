"""kft.ops.layer_norm and kft.cpu_convs.LayerNormalization: Keras' layer
normalization, same values and gradients."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import kft
from kft.ops.cpu_convs import LayerNormalization
from kft.ops.cpu_convs import fast_cpu_convs
from kft.ops.layer_norm import layer_norm


def _value_and_grads(norm, x, gamma, beta, weights):
    def loss(x, gamma, beta):
        return jnp.sum(norm(x, gamma, beta).astype(jnp.float32) * weights)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(
        x, gamma, beta)


@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (3, 9), (2, 3, 8),
                                   (2, 1, 1, 5), (1, 2)])
@pytest.mark.parametrize("scale,center", [(True, True), (False, True),
                                          (True, False), (False, False)])
def test_values_and_gradients_match_keras(shape, scale, center):
    rng = np.random.default_rng(sum(shape))
    x = jnp.asarray(rng.normal(3, 2, shape).astype("float32"))
    weights = jnp.asarray(rng.normal(size=shape).astype("float32"))
    gamma = (jnp.asarray(rng.normal(size=shape[-1:]).astype("float32"))
             if scale else None)
    beta = (jnp.asarray(rng.normal(size=shape[-1:]).astype("float32"))
            if center else None)

    def stock(x, g, b):
        return keras.ops.layer_normalization(x, g, b, -1, 1e-5)

    def ours(x, g, b):
        return layer_norm(x, g, b, 1e-5)

    (value, grads), (expected, expected_grads) = (
        _value_and_grads(ours, x, gamma, beta, weights),
        _value_and_grads(stock, x, gamma, beta, weights))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours(x, gamma, beta), stock(x, gamma, beta),
                               rtol=1e-5, atol=1e-5)
    # Relative to the largest gradient: some are rounding noise (x's
    # gradient with two channels is ~1e-8, mathematically ~0), or to the
    # loss's gradient `weights`.
    scale_ = max([float(jnp.abs(w).max()) for w in expected_grads
                  if w is not None] + [float(jnp.abs(weights).max())])
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None
            continue
        assert float(jnp.abs(got - want).max()) <= 1e-5 * scale_


def test_one_channel_normalizes_to_the_offset():
    # Keras' `x * inv - mean * inv` leaves rounding of ~1e-5 here.
    y = layer_norm(np.array([[7.3], [-2.0]]), None, np.array([0.25]), 1e-5)
    np.testing.assert_array_equal(y, [[0.25], [0.25]])


def test_half_precision_in_float32_statistics_and_dtype_kept():
    rng = np.random.default_rng(1)
    # A large mean: float16 statistics would lose the variance.
    x32 = rng.normal(300, 1, (4, 16)).astype("float32")
    for dtype in ("bfloat16", "float16"):
        x = jnp.asarray(x32).astype(dtype)
        y = layer_norm(x, jnp.ones(16), jnp.zeros(16), 1e-6)
        assert y.dtype == dtype
        expected = keras.ops.layer_normalization(x, None, None, -1, 1e-6)
        np.testing.assert_allclose(np.asarray(y, "float32"),
                                   np.asarray(expected, "float32"),
                                   atol=0.05)
        grad = jax.grad(lambda x: jnp.sum(
            layer_norm(x, None, None).astype(jnp.float32) ** 3))(x)
        assert grad.dtype == dtype and np.isfinite(
            np.asarray(grad, "float32")).all()


def test_integer_input_is_normalized_as_float():
    y = layer_norm(np.array([[1, 2, 3]]), epsilon=1e-6)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, [[-1.2247, 0.0, 1.2247]], atol=1e-4)


def test_wrong_scale_shape_names_the_shapes():
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*"
                                         r"got \(4,\)"):
        layer_norm(np.ones((2, 3)), np.ones(4))


def test_layer_matches_keras_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(1, 3, (2, 5, 5, 6)).astype("float32")
    stock = keras.layers.LayerNormalization(epsilon=1e-6,
                                            gamma_initializer="random_normal",
                                            beta_initializer="random_normal")
    stock.build(x.shape)
    fast = LayerNormalization.from_config(stock.get_config())
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_allclose(fast(x), stock(x), rtol=1e-5, atol=1e-5)

    def grads(layer):
        def loss(variables, x):
            outputs, _ = layer.stateless_call(variables, [], x)
            return (outputs ** 3).sum()

        return jax.grad(loss, argnums=(0, 1))(
            [v.value for v in layer.trainable_variables], x)

    for got, want in zip(jax.tree.leaves(grads(fast)),
                         jax.tree.leaves(grads(stock))):
        np.testing.assert_allclose(got, want, rtol=1e-4,
                                   atol=1e-5 * float(np.abs(want).max()))
    # Saved and loaded like any Keras layer.
    model = keras.Sequential([keras.Input(x.shape[1:]), fast])
    path = tmp_path / "ln.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.layers[0]) is LayerNormalization
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               stock(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_other_axes_and_rms_scaling_use_keras_op():
    x = np.random.default_rng(3).normal(size=(2, 4, 6)).astype("float32")
    for kwargs in ({"axis": 1}, {"axis": [1, 2]}, {"rms_scaling": True}):
        stock = keras.layers.LayerNormalization(**kwargs)
        fast = LayerNormalization.from_config(stock.get_config())
        np.testing.assert_allclose(fast(x), stock(x), rtol=1e-5, atol=1e-6)


def test_swapped_into_models_and_given_back_for_export():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(8, 1)(inputs)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="ln")(x)
    x = keras.layers.LayerNormalization(axis=[1, 2], name="ln_hw")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    fast = fast_cpu_convs(model)
    assert type(fast.get_layer("ln")) is LayerNormalization
    assert type(fast.get_layer("ln_hw")) is LayerNormalization
    data = np.random.default_rng(4).normal(size=(3, 4, 4, 3))
    np.testing.assert_allclose(fast.predict(data, verbose=0),
                               model.predict(data, verbose=0), atol=1e-5)
    plain = kft.deploy.inference_model(fast)
    assert type(plain.get_layer("ln")) is keras.layers.LayerNormalization
    assert not kft.deploy.kft_layers(plain)


def test_backward_pass_keeps_no_broadcast_maps(monkeypatch):
    # The backward pass is tied to the incoming gradient by an optimization
    # barrier; without it XLA hoists the broadcasts of the inverse
    # deviations and of the scale into the forward pass and keeps them
    # (ConvNeXt-tiny's 224 px step: 402 -> 334 MiB of XLA temp with this
    # and gelu_dense's tie to the kernel).
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(4, 28, 28, 96)), "float32")
    weights = [(jnp.asarray(rng.uniform(0.5, 1.5, (96,)), "float32"),
                jnp.asarray(rng.normal(size=(96,)), "float32"),
                jnp.asarray(rng.normal(0, 0.1, (96, 96)), "float32"))
               for _ in range(6)]

    def temp_bytes():
        def loss(weights, x):
            for gamma, beta, kernel in weights:
                x = x + layer_norm(x, gamma, beta, 1e-6) @ kernel
            return (x ** 2).sum()

        compiled = jax.jit(jax.grad(loss)).lower(weights, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    tied = temp_bytes()
    monkeypatch.setattr(jax.lax, "optimization_barrier", lambda v: v)
    untied = temp_bytes()
    # Six layers: 3.1 maps less measured; at least two.
    assert tied <= untied - 2 * x.nbytes, (tied, untied)
