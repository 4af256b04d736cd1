"""kft.cpu_convs: same outputs and gradients as Keras' convolutions."""

import jax
import keras
import numpy as np
import pytest

import kft
from kft.ops import activations
from kft.ops.cpu_convs import Activation
from kft.ops.cpu_convs import Conv2D
from kft.ops.cpu_convs import Dense
from kft.ops.cpu_convs import DepthwiseConv2D
from kft.ops.cpu_convs import SeparableConv2D
from kft.ops.cpu_convs import fast_cpu_convs

CONFIGS = [
    # kernel, strides, padding, dilation, multiplier, height, width
    (3, 1, "same", 1, 1, 8, 8),
    (3, 2, "same", 1, 1, 9, 8),
    (5, 2, "same", 1, 1, 7, 10),
    (7, 1, "same", 1, 1, 2, 3),
    (3, 1, "valid", 1, 2, 6, 7),
    (3, 2, "valid", 1, 1, 9, 9),
    (3, 1, "same", 2, 1, 8, 8),
    ((3, 5), (1, 2), "same", 1, 3, 6, 9),
    (3, 2, "same", 2, 1, 9, 9),  # strides and dilation together
    (3, 2, "valid", 2, 2, 11, 10),
]


def _grads(layer, x):
    def loss(variables, x):
        outputs, _ = layer.stateless_call(variables, [], x)
        return (outputs ** 2).sum()

    variables = [v.value for v in layer.trainable_variables]
    return jax.grad(loss, argnums=(0, 1))(variables, x)


def _assert_same_as(stock, cls, x):
    """`cls` built from `stock`'s config and weights: same outputs, grads."""
    expected = np.asarray(stock(x))
    fast = cls.from_config(stock.get_config())
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_allclose(np.asarray(fast(x)), expected, rtol=1e-5,
                               atol=1e-5)
    for a, b in zip(jax.tree.leaves(_grads(fast, x)),
                    jax.tree.leaves(_grads(stock, x))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS)
def test_depthwise_layer_matches_keras(config):
    kernel, strides, padding, dilation, multiplier, h, w = config
    x = np.random.default_rng(0).normal(size=(2, h, w, 4)).astype("float32")
    args = dict(kernel_size=kernel, strides=strides, padding=padding,
                dilation_rate=dilation, depth_multiplier=multiplier,
                activation="relu")
    stock = keras.layers.DepthwiseConv2D(**args,
                                         bias_initializer="random_normal")
    _assert_same_as(stock, DepthwiseConv2D, x)


@pytest.mark.parametrize("grads", ["1", "0"])
@pytest.mark.parametrize("config", CONFIGS)
def test_separable_layer_matches_keras(monkeypatch, config, grads):
    # Both paths: kft's gradients, and autodiff of the shifted form.
    monkeypatch.setenv("KFT_CONV_GRADS", grads)
    kernel, strides, padding, dilation, multiplier, h, w = config
    x = np.random.default_rng(3).normal(size=(2, h, w, 4)).astype("float32")
    stock = keras.layers.SeparableConv2D(
        5, kernel, strides=strides, padding=padding, dilation_rate=dilation,
        depth_multiplier=multiplier, activation="relu",
        bias_initializer="random_normal")
    _assert_same_as(stock, SeparableConv2D, x)


def test_separable_layer_keeps_its_format_under_a_channels_first_default(
        monkeypatch):
    # A channels_last layer in a process whose keras.json says
    # channels_first: the 1x1 half of the autodiff path read Keras' global
    # format (NHWC maps as NCHW).
    monkeypatch.setenv("KFT_CONV_GRADS", "0")
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 4)).astype("float32")
    stock = keras.layers.SeparableConv2D(3, 3, padding="same",
                                         data_format="channels_last")
    keras.config.set_image_data_format("channels_first")
    try:
        _assert_same_as(stock, SeparableConv2D, x)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_separable_layer_without_bias_in_mixed_precision(dtype_policy):
    x = np.random.default_rng(3).normal(size=(2, 7, 7, 4)).astype("float32")
    with dtype_policy("mixed_bfloat16"):
        stock = keras.layers.SeparableConv2D(6, 3, padding="same",
                                             use_bias=False)
        expected = stock(x)
        fast = SeparableConv2D.from_config(stock.get_config())
        fast.build(x.shape)
        fast.set_weights(stock.get_weights())
        got = fast(x)
    assert got.dtype == expected.dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(got, "float32"),
                               np.asarray(expected, "float32"),
                               rtol=2e-2, atol=2e-2)


def test_separable_layers_swap_in_save_and_swap_back_for_export(tmp_path):
    from kft.deploy.inference import inference_model

    inputs = keras.Input((9, 9, 3))
    x = keras.layers.SeparableConv2D(4, 3, strides=2, padding="same",
                                     name="sep")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    fast = fast_cpu_convs(model)
    assert type(fast.get_layer("sep")) is SeparableConv2D
    data = np.random.default_rng(7).normal(size=(2, 9, 9, 3))
    np.testing.assert_allclose(fast.predict(data, verbose=0),
                               model.predict(data, verbose=0), rtol=1e-5,
                               atol=1e-6)
    fast.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("sep")) is SeparableConv2D
    stock = inference_model(loaded)
    layer = stock.get_layer("sep")
    assert type(layer) is keras.layers.SeparableConv2D
    for got, want in zip(layer.get_weights(),
                         model.get_layer("sep").get_weights()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("filters", [4, 8])
def test_channelwise_conv_matches_keras_grouped_conv(filters):
    x = np.random.default_rng(1).normal(size=(2, 6, 5, 4)).astype("float32")
    stock = keras.layers.Conv2D(filters, 7, padding="same", groups=4,
                                bias_initializer="random_normal")
    _assert_same_as(stock, Conv2D, x)


SMALL_MAP_CONFIGS = [
    # kernel, strides, padding, dilation, height, width
    (3, 1, "same", 1, 2, 2),
    (3, 1, "same", 1, 1, 1),
    (3, 2, "same", 1, 2, 2),
    (5, 1, "same", 1, 2, 3),
    ((1, 3), 1, "same", 1, 2, 1),
    (3, 1, "same", 2, 2, 2),
    (3, 1, "same", 1, 4, 4),  # 16 positions > 9: Keras' own op
]


@pytest.mark.parametrize("config", SMALL_MAP_CONFIGS)
def test_conv_on_small_maps_matches_keras(config):
    kernel, strides, padding, dilation, h, w = config
    x = np.random.default_rng(6).normal(size=(3, h, w, 5)).astype("float32")
    stock = keras.layers.Conv2D(6, kernel, strides=strides, padding=padding,
                                dilation_rate=dilation,
                                bias_initializer="random_normal")
    _assert_same_as(stock, Conv2D, x)


def test_other_grouping_matches_keras():
    x = np.random.default_rng(2).normal(size=(1, 5, 5, 4)).astype("float32")
    _assert_same_as(keras.layers.Conv2D(4, 3, groups=2), Conv2D,
                    x)


def _outputs_and_grads(model, x):
    def loss(values, x):
        outputs, _ = model.stateless_call(
            values, [v.value for v in model.non_trainable_variables], x)
        return (outputs ** 2).mean(), outputs

    grads, outputs = jax.jit(jax.grad(loss, has_aux=True))(
        [v.value for v in model.trainable_variables], x)
    return np.asarray(outputs), [np.asarray(g) for g in grads]


# Swapped layers counted by type (the others: at least one swapped).
SWAPPED = {
    "mobilenetv3small": {DepthwiseConv2D: 11},
    "efficientnetb0": {},
    "mobilenetv3large": {},
    # The 3x3 convolutions on 2x2 and 1x1 maps and the 36 1x1 ones; every
    # pointwise layer (on maps).
    "convnext_tiny": {Conv2D: 18, Dense: 36},
    "resnet50": {Conv2D: 45, Activation: 49},  # every ReLU
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWAPPED))
def test_backbone_outputs_and_gradients_match_keras(name):
    # One model per backbone for both checks (building and swapping
    # ConvNeXt-tiny costs ~6 s).
    base = kft.create_backbone(name, weights=None, input_shape=(32, 32, 3))
    # Non-trivial statistics and scales; ConvNeXt's layer scales start at
    # 1e-6, which would hide its depthwise branches from the outputs.
    rng = np.random.default_rng(0)
    for v in base.weights:
        if any(k in v.path for k in ("gamma", "moving_variance",
                                     "layer_scale")):
            v.assign(rng.uniform(0.5, 1.5, v.shape))
    fast = fast_cpu_convs(base)
    assert fast.name == base.name
    for cls, count in SWAPPED[name].items():
        assert sum(type(layer) is cls for layer in fast.layers) == count
    assert any(type(layer) in (Conv2D, DepthwiseConv2D)
               for layer in fast.layers)
    assert not any(type(layer) is keras.layers.DepthwiseConv2D
                   for layer in fast.layers)
    # Not a copy: every other layer is shared with the original model.
    assert fast.get_layer(base.layers[1].name) is base.layers[1]
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype(
        "float32")
    expected, expected_grads = _outputs_and_grads(base, x)
    got, grads = _outputs_and_grads(fast, x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
    worst = max(np.abs(a - b).max() for a, b in zip(grads, expected_grads))
    scale = max(np.abs(b).max() for b in expected_grads)
    # Float32 sums in another order through ~50-150 layers: rounding
    # differences of ~1e-7 relative per op grow with depth; 1e-4 of the
    # largest gradient is far below any real mistake (a wrong tap or
    # stride changes gradients by O(1) relative).
    assert worst <= 1e-4 * scale, (worst, scale)


def test_original_model_still_works_after_the_fast_one_trains():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 1)(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    before = [np.array(w) for w in model.get_weights()]
    fast = fast_cpu_convs(model)
    data = np.random.default_rng(5).normal(size=(4, 6, 6, 3))
    fast.compile("sgd", "mse")
    fast.fit(data, np.ones((4, 8)), epochs=1, verbose=0)
    fast.predict(data, verbose=0)
    # Keras donates variable buffers to its steps: the swapped layers'
    # weights must not share buffers with the original's.
    model.predict(data, verbose=0)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_fast_cpu_convs_leaves_other_models_alone():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 9 < 64 positions
    x = keras.layers.Conv2D(4, 2)(keras.layers.MaxPooling2D(4)(x))  # 4 = 4
    model = keras.Model(inputs, keras.layers.Flatten()(x))
    assert fast_cpu_convs(model) is model


def test_build_classifier_fast_cpu_convs_trains_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(7)
    model = kft.build_classifier("mobilenetv3small", 3, weights=None,
                                 input_shape=(32, 32, 3),
                                 fast_cpu_convs=True)
    keras.utils.set_random_seed(7)
    stock = kft.build_classifier("mobilenetv3small", 3, weights=None,
                                 input_shape=(32, 32, 3),
                                 fast_cpu_convs=False)
    # Swapping layers draws no random numbers: same initial weights.
    for a, b in zip(model.get_weights(), stock.get_weights()):
        np.testing.assert_array_equal(a, b)
    backbone = model.get_layer("mobilenetv3small")
    assert any(type(layer) is DepthwiseConv2D for layer in backbone.layers)
    assert not any(type(layer) is DepthwiseConv2D
                   for layer in stock.get_layer("mobilenetv3small").layers)
    # Blocks and freezing see the same layer names as the stock model.
    def names(blocks):
        return {block: [layer.name for layer in layers]
                for block, layers in blocks.items()}

    assert names(kft.get_blocks(model)) == names(kft.get_blocks(stock))
    kft.freeze(model, "partial", n_blocks=2)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.random.default_rng(4).uniform(0, 255, (4, 32, 32, 3))
    y = np.array([0, 1, 2, 0])
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "fast.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-5)


def test_build_classifier_rejects_bad_fast_cpu_convs():
    with pytest.raises(ValueError, match="fast_cpu_convs"):
        kft.build_classifier("simple_cnn", 2, weights=None,
                             input_shape=(16, 16, 3), fast_cpu_convs="yes")


def test_fast_cpu_convs_names_what_it_cannot_rebuild():
    # AttributeError on None; "has never been called" of a subclassed
    # model that had been.
    with pytest.raises(TypeError, match=r"`model` must be a keras.Model. "
                       r"Received: model=None"):
        kft.fast_cpu_convs(None)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.DepthwiseConv2D(3)

        def call(self, x):
            return self.conv(x)

    sub = Sub()
    sub(np.zeros((1, 8, 8, 3)))
    with pytest.raises(TypeError, match=r"a functional or Sequential "
                       r"model.*Received: model='Sub'"):
        kft.fast_cpu_convs(sub)
    # A plain graph came back, without the discriminator or DANN's step.
    dann = kft.DomainAdaptationModel(kft.build_classifier(
        "mobilenetv3small", 2, weights=None, input_shape=(32, 32, 3),
        fast_cpu_convs=False))
    with pytest.raises(TypeError, match=r"DomainAdaptationModel is not"):
        kft.fast_cpu_convs(dann)


def test_fast_cpu_convs_reaches_into_nested_backbone():
    stock = kft.build_classifier("mobilenetv3small", 3, weights=None,
                                 input_shape=(32, 32, 3),
                                 fast_cpu_convs=False)
    x = np.random.default_rng(5).uniform(0, 255, (2, 32, 32, 3))
    expected = stock.predict(x, verbose=0)
    fast = fast_cpu_convs(stock)
    backbone = fast.get_layer("mobilenetv3small")
    assert sum(type(layer) is DepthwiseConv2D
               for layer in backbone.layers) == 11
    assert list(kft.get_blocks(fast)) == list(kft.get_blocks(stock))
    np.testing.assert_allclose(fast.predict(x, verbose=0), expected,
                               rtol=1e-5, atol=1e-5)


def test_shifted_convs_live_in_shifted_conv_and_are_re_exported():
    import ast
    import inspect

    from kft.ops import image_ops
    from kft.ops import shifted_conv

    assert kft.cpu_convs.shifted_depthwise_conv is \
        shifted_conv.shifted_depthwise_conv
    assert kft.cpu_convs.shifted_conv is shifted_conv.shifted_conv
    # Image ops need the pure functions, not the CPU layer module.
    imported = {node.module for node in ast.walk(ast.parse(
        inspect.getsource(image_ops))) if isinstance(node, ast.ImportFrom)}
    assert "kft.ops.shifted_conv" in imported
    assert "kft.ops.cpu_convs" not in imported


def test_shifted_convs_check_the_padding():
    x, k = np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 1))
    with pytest.raises(ValueError, match="Argument `padding` must be one of "
                                         r"\('valid', 'same'\). Received: "
                                         "padding='full'"):
        kft.cpu_convs.shifted_depthwise_conv(x, k, padding="full")
    with pytest.raises(ValueError, match="Argument `padding` must be one of"):
        kft.cpu_convs.shifted_conv(x, np.ones((3, 3, 2, 4)), padding="causal")


def test_gelu_matches_keras_and_pytorch_form():
    x = np.linspace(-10, 10, 2001).astype("float32")
    stock = keras.layers.Activation("gelu")
    fast = Activation.from_config(stock.get_config())

    def values_and_grads(layer):
        return jax.jit(jax.value_and_grad(
            lambda x: (layer(x) * jax.numpy.cos(x)).sum()))(x)

    (_, got), (_, expected) = values_and_grads(fast), values_and_grads(stock)
    np.testing.assert_allclose(fast(x), stock(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The erf form itself, as PyTorch and TensorFlow write it (float64).
    from math import erf, sqrt
    reference = np.array([0.5 * v * (1 + erf(v / sqrt(2))) for v in
                          x.astype("float64")])
    np.testing.assert_allclose(fast(x), reference, rtol=1e-5, atol=1e-6)


def test_gelu_and_relu_activations_are_swapped_and_export_gives_them_back():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.Activation("gelu", name="g")(x)
    x = keras.layers.Activation("relu", name="r")(x)
    x = keras.layers.Activation("tanh", name="t")(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    fast = fast_cpu_convs(model)
    assert type(fast.get_layer("g")) is Activation
    assert type(fast.get_layer("r")) is Activation
    assert fast.get_layer("t") is model.get_layer("t")
    # Dense layers on 2-D inputs that do not read a GELU keep Keras' op.
    assert fast.layers[1] is model.layers[1]
    assert fast.layers[-1] is model.layers[-1]
    data = np.random.default_rng(9).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(fast.predict(data, verbose=0),
                               model.predict(data, verbose=0), atol=1e-5)
    plain = kft.deploy.inference_model(fast)
    for name in "gr":
        assert type(plain.get_layer(name)) is keras.layers.Activation
    assert not kft.deploy.kft_layers(plain)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_relu_matches_keras_values_and_gradients(dtype):
    x = np.concatenate([np.linspace(-3, 3, 61), [0.0, -0.0, np.nan, np.inf,
                                                 -np.inf]])
    x = jax.numpy.asarray(x, dtype)
    stock = keras.layers.Activation("relu", dtype=dtype)
    fast = Activation.from_config(stock.get_config())

    def values_and_grads(layer):
        return jax.jit(jax.value_and_grad(
            lambda x: (layer(x) * jax.numpy.cos(x)).astype("float32").sum(
                where=jax.numpy.isfinite(x))))(x)

    np.testing.assert_array_equal(np.asarray(fast(x), "float32"),
                                  np.asarray(stock(x), "float32"))
    got, expected = values_and_grads(fast)[1], values_and_grads(stock)[1]
    assert got.dtype == expected.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(got, "float32"),
                                  np.asarray(expected, "float32"))


def test_relu_keeps_its_output_for_the_gradient_not_its_input():
    # The point of kft's ReLU: the backward mask reads the output (kept by
    # the next layer anyway), so XLA need not keep or recompute the input.
    from kft.ops.activations import relu
    x = jax.numpy.asarray(np.random.default_rng(2).normal(size=(3, 5)),
                          "float32")
    outputs, pullback = jax.vjp(relu, x)
    kept = jax.tree_util.tree_leaves(pullback)
    assert len(kept) == 1
    np.testing.assert_array_equal(kept[0], outputs)
    hlo = jax.jit(jax.grad(lambda x: relu(x * 2.0).sum())).lower(
        x).compile().as_text()
    assert hlo.count("opt-barrier") == 1


@pytest.mark.parametrize("name", ["silu", "swish"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_silu_matches_keras_values_and_gradients(name, dtype):
    x = jax.numpy.asarray(np.concatenate([np.linspace(-12, 12, 97),
                                          [0.0, -0.0]]), dtype)
    stock = keras.layers.Activation(name, dtype=dtype)
    fast = Activation.from_config(stock.get_config())

    def values_and_grads(layer):
        return jax.jit(jax.value_and_grad(
            lambda x: (layer(x) * jax.numpy.cos(x)).astype("float32").sum()
        ))(x)

    np.testing.assert_array_equal(np.asarray(fast(x), "float32"),
                                  np.asarray(stock(x), "float32"))
    got, expected = values_and_grads(fast)[1], values_and_grads(stock)[1]
    assert got.dtype == expected.dtype == x.dtype
    tolerance = 1e-6 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.asarray(got, "float32"),
                               np.asarray(expected, "float32"),
                               rtol=tolerance, atol=tolerance)


def test_silu_keeps_its_input_only(monkeypatch):
    # The point of kft's SiLU: behind a frozen BatchNorm (kft's default
    # for full fine-tuning) autodiff keeps the sigmoid as well as the
    # input, a second map of the layer's size (EfficientNet's expanded
    # maps); kft's keeps the input and computes the sigmoid again.
    from kft.ops import cpu_convs
    from kft.ops.activations import silu
    rng = np.random.default_rng(3)
    x = jax.numpy.asarray(rng.normal(size=(4, 5)), "float32")
    _, pullback = jax.vjp(silu, x)
    kept, = jax.tree_util.tree_leaves(pullback)
    np.testing.assert_array_equal(kept, x)

    def mbconv_temp():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16, 16, 8))
        x = inputs
        for _ in range(3):
            y = keras.layers.Conv2D(48, 1, use_bias=False)(x)
            y = keras.layers.BatchNormalization(trainable=False)(y)
            y = keras.layers.Activation("swish")(y)
            y = keras.layers.DepthwiseConv2D(3, padding="same",
                                             use_bias=False)(y)
            y = keras.layers.BatchNormalization(trainable=False)(y)
            y = keras.layers.Activation("swish")(y)
            y = keras.layers.Conv2D(8, 1, use_bias=False)(y)
            x = keras.layers.BatchNormalization(trainable=False)(y) + x
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = fast_cpu_convs(keras.Model(inputs, keras.layers.Dense(2)(x)))
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.optimizer.build(model.trainable_variables)
        state = tuple([v.value for v in variables] for variables in (
            model.trainable_variables, model.non_trainable_variables,
            model.optimizer.variables, model.metrics_variables))
        data = (rng.normal(size=(8, 16, 16, 8)).astype("float32"),
                np.arange(8) % 2, None)
        compiled = jax.jit(model.train_step).lower(state, data).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    fast = mbconv_temp()
    monkeypatch.setattr(cpu_convs, "silu", jax.nn.silu)
    stock = mbconv_temp()
    one_map = 8 * 16 * 16 * 48 * 4
    # Six SiLU layers; measured 5.3 maps fewer.
    assert fast <= stock - 4 * one_map, (fast, stock)


def test_silu_and_swish_layers_are_swapped_and_export_gives_them_back():
    inputs = keras.Input((6, 6, 4))
    y = keras.layers.Conv2D(8, 3, name="c")(inputs)
    y = keras.layers.Activation("swish", name="s")(y)
    y = keras.layers.Activation("silu", name="t")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(inputs, keras.layers.Dense(2)(y))
    fast = fast_cpu_convs(model)
    assert type(fast.get_layer("s")) is Activation
    assert type(fast.get_layer("t")) is Activation
    data = np.random.default_rng(4).normal(size=(3, 6, 6, 4)).astype(
        "float32")
    np.testing.assert_allclose(fast.predict(data, verbose=0),
                               model.predict(data, verbose=0), atol=1e-5)
    plain = kft.deploy.inference_model(fast)
    assert type(plain.get_layer("s")) is keras.layers.Activation
    assert not kft.deploy.kft_layers(plain)


@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 4, 8), (1, 1, 1, 8)])
def test_gelu_dense_matches_gelu_then_matmul(shape):
    from kft.ops.activations import gelu
    from kft.ops.activations import gelu_dense

    rng = np.random.default_rng(5)
    x = jax.numpy.asarray(rng.normal(0, 2, shape), "float32")
    kernel = jax.numpy.asarray(rng.normal(size=(8, 3)), "float32")
    weights = jax.numpy.asarray(rng.normal(size=shape[:-1] + (3,)),
                                "float32")

    def values_and_grads(f):
        return jax.jit(jax.value_and_grad(
            lambda x, k: (f(x, k) * weights).sum(), argnums=(0, 1)))(
                x, kernel)

    np.testing.assert_allclose(gelu_dense(x, kernel), gelu(x) @ kernel,
                               rtol=1e-5, atol=1e-6)
    (_, got), (_, expected) = (values_and_grads(gelu_dense),
                               values_and_grads(lambda x, k: gelu(x) @ k))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5,
                                   atol=1e-6 * np.abs(b).max())


@pytest.mark.parametrize("shape", [(3, 7, 16), (4, 14, 14, 16)])
def test_dense_on_maps_matches_matmul_without_a_transposed_copy(shape):
    from kft.ops.dense_grads import dense

    rng = np.random.default_rng(11)
    x = jax.numpy.asarray(rng.normal(size=shape), "float32")
    kernel = jax.numpy.asarray(rng.normal(size=(16, 64)), "float32")
    weights = jax.numpy.asarray(rng.normal(size=shape[:-1] + (64,)),
                                "float32")

    def grads(f):
        return jax.jit(jax.grad(lambda x, k: (f(x, k) * jax.numpy.tanh(
            weights)).sum(), argnums=(0, 1)))

    np.testing.assert_allclose(dense(x, kernel), x @ kernel, rtol=1e-5,
                               atol=1e-5)
    for a, b in zip(grads(dense)(x, kernel),
                    grads(jax.numpy.matmul)(x, kernel)):
        np.testing.assert_allclose(a, b, rtol=1e-5,
                                   atol=1e-5 * np.abs(b).max())
    # XLA's CPU backend copies the output gradient transposed for the
    # kernel gradient of autodiff's form, not for kft's.
    rows = int(np.prod(shape[:-1]))
    transposed = f"f32[64,{rows}]"
    assert transposed not in grads(dense).lower(
        x, kernel).compile().as_text()
    assert transposed in grads(jax.numpy.matmul).lower(
        x, kernel).compile().as_text()


def _gelu_mlp(blocks=2, second_reader=False):
    """ConvNeXt's pointwise MLP: Dense(4C), GELU, Dense(C), residual."""
    inputs = keras.Input((5, 5, 8))
    x = inputs
    for i in range(blocks):
        h = keras.layers.Dense(32, name=f"pw1_{i}")(x)
        g = keras.layers.Activation("gelu", name=f"gelu_{i}")(h)
        y = keras.layers.Dense(8, name=f"pw2_{i}")(g)
        if second_reader:  # the GELU's output read by another layer too
            y = y + keras.layers.Dense(8, name=f"other_{i}")(
                keras.layers.Activation("tanh")(g))
        x = keras.layers.Add()([x, y])
    x = keras.layers.Activation("relu")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


def _model_grads(model, x):
    def loss(values, x):
        outputs, _ = model.stateless_call(values, [], x)
        return (outputs * np.arange(1.0, 4.0)).sum()

    return jax.jit(jax.value_and_grad(loss))(
        [v.value for v in model.trainable_variables], x)


def _count_fused(monkeypatch):
    """The dtypes `kft.cpu_convs.Dense` calls `gelu_dense` with."""
    from kft.ops import cpu_convs

    fused = []
    monkeypatch.setattr(cpu_convs, "gelu_dense", lambda *args: fused.append(
        str(args[0].dtype)) or activations.gelu_dense(*args))
    return fused


@pytest.mark.parametrize("second_reader", [False, True])
def test_dense_after_gelu_is_swapped_and_matches_keras(second_reader,
                                                       monkeypatch):
    model = _gelu_mlp(second_reader=second_reader)
    fast = fast_cpu_convs(model)
    swapped = {layer.name for layer in fast.layers if type(layer) is Dense}
    # Every Dense here runs on feature maps; only pw2_* read a GELU.
    assert swapped == {layer.name for layer in model.layers
                       if type(layer) is keras.layers.Dense}
    fused = _count_fused(monkeypatch)
    x = np.random.default_rng(6).normal(0, 2, (4, 5, 5, 8)).astype(
        "float32")
    np.testing.assert_allclose(fast.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-5)
    (loss, got), (expected_loss, expected) = (_model_grads(fast, x),
                                              _model_grads(model, x))
    # pw2_0 and pw2_1 took the GELU's input, in the forward passes of
    # `predict` and of the gradient.
    assert len(fused) >= 4 and len(fused) % 2 == 0
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5,
                                   atol=1e-5 * np.abs(b).max())
    plain = kft.deploy.inference_model(fast)
    assert type(plain.get_layer("pw2_0")) is keras.layers.Dense
    assert not kft.deploy.kft_layers(plain)


def test_fused_dense_trains_in_fit_and_round_trips(tmp_path, monkeypatch):
    # The path a user takes: `fit` (Keras' jitted train step), save, load;
    # the loaded model still hands the GELU's input to its Dense layers.
    keras.utils.set_random_seed(3)
    fast = fast_cpu_convs(_gelu_mlp())
    stock = _gelu_mlp()
    stock.set_weights(fast.get_weights())
    x = np.random.default_rng(8).normal(0, 2, (8, 5, 5, 8)).astype(
        "float32")
    y = np.random.default_rng(9).integers(0, 3, (8, 5, 5))
    for model in (fast, stock):
        model.compile(keras.optimizers.SGD(0.05),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    fused = _count_fused(monkeypatch)
    fast.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert fused  # traced into the train step
    stock.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(fast.get_weights(), stock.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    path = str(tmp_path / "mlp.keras")
    fast.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("pw2_1")) is Dense
    fused.clear()
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               fast.predict(x, verbose=0), rtol=1e-5,
                               atol=1e-5)
    assert fused


def test_dense_after_gelu_in_mixed_precision_adds_no_error(monkeypatch):
    # bfloat16 sums round differently in every order: the fused layers are
    # compared with the float32 model, next to the same fast model with
    # the fusion off (kft's GELU, Keras' Dense).
    from kft.ops import cpu_convs

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _gelu_mlp()
    finally:
        keras.config.set_dtype_policy(previous)
    exact = _gelu_mlp()
    exact.set_weights(model.get_weights())
    fast = fast_cpu_convs(model)
    x = np.random.default_rng(6).normal(0, 2, (4, 5, 5, 8)).astype(
        "float32")
    _, reference = _model_grads(exact, x)
    fused = _count_fused(monkeypatch)
    _, got = _model_grads(fast, x)
    assert len(fused) == 2 and set(fused) == {"bfloat16"}
    monkeypatch.setattr(cpu_convs.Dense, "call", keras.layers.Dense.call)
    _, unfused = _model_grads(fast, x)
    assert len(fused) == 2
    for want, ours, plain in zip(reference, got, unfused):
        want, ours, plain = (np.asarray(v, "float32")
                             for v in (want, ours, plain))
        scale = np.linalg.norm(want)
        error = np.linalg.norm(ours - want)
        # Measured (3 seeds): 0.2-3.6% of the gradient, at most 1.15x the
        # error without the fusion.
        assert error <= 0.05 * scale
        assert error <= 1.5 * np.linalg.norm(plain - want) + 2e-3 * scale


def test_dense_after_gelu_backward_keeps_only_the_gelu_input():
    # The point of `gelu_dense`: per block the backward pass keeps the
    # GELU's input, not also its output (ConvNeXt-tiny's 224 px step: 657
    # -> 402 MiB of XLA temp). Without the optimization barrier on the
    # incoming gradient, XLA merges or hoists the recomputed GELU into the
    # forward pass and the temp stays as large as without the fusion.
    from kft.ops.activations import gelu
    from kft.ops.activations import gelu_dense

    rng = np.random.default_rng(7)
    x = jax.numpy.asarray(rng.normal(size=(8, 16, 16, 16)), "float32")
    kernels = [(jax.numpy.asarray(rng.normal(0, 0.1, (16, 64)), "float32"),
                jax.numpy.asarray(rng.normal(0, 0.1, (64, 16)), "float32"))
               for _ in range(4)]

    def temp_bytes(mlp):
        def loss(kernels, x):
            for k1, k2 in kernels:
                x = x + mlp(x @ k1, k2)
            return (x ** 2).sum()

        compiled = jax.jit(jax.grad(loss)).lower(kernels, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    fused = temp_bytes(gelu_dense)
    separate = temp_bytes(lambda h, k: gelu(h) @ k)
    hidden_map = 8 * 16 * 16 * 64 * 4
    # Four blocks: three hidden maps fewer at least (one is recomputed
    # at a time).
    assert fused <= separate - 3 * hidden_map, (fused, separate)


def test_dense_layer_on_integer_maps_matches_keras():
    stock = keras.layers.Dense(3)
    x = jax.numpy.arange(2 * 4 * 4 * 8, dtype="int32").reshape(2, 4, 4, 8)
    expected = np.asarray(stock(x))
    fast = Dense.from_config(stock.get_config())
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_allclose(np.asarray(jax.jit(fast)(x)), expected,
                               rtol=1e-5)


def _every_swap(sequential=False):
    """A small model with a layer of each class fast_cpu_convs swaps."""
    layers = [keras.layers.DepthwiseConv2D(3, padding="same"),
              keras.layers.Conv2D(6, 1), keras.layers.Activation("silu"),
              keras.layers.LayerNormalization(),
              keras.layers.Dense(8), keras.layers.Activation("gelu"),
              keras.layers.Dense(4), keras.layers.GlobalAveragePooling2D(),
              keras.layers.Dense(3)]
    if sequential:
        return keras.Sequential([keras.Input((6, 6, 4)), *layers])
    x = inputs = keras.Input((6, 6, 4))
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def test_forward_mode_says_what_works(monkeypatch):
    # JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp
    # function" named neither kft nor a way out.
    stock = _every_swap()
    fast = fast_cpu_convs(stock)
    assert sum(type(layer).__module__ == "kft.ops.cpu_convs"
               for layer in fast.layers) == 7
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 4)).astype("float32")
    tangent = np.ones_like(x)

    def jvp(model):
        values = ([v.value for v in model.trainable_variables],
                  [v.value for v in model.non_trainable_variables])
        return jax.jvp(lambda x: model.stateless_call(*values, x)[0],
                       (x,), (tangent,))[1]

    with pytest.raises(TypeError, match=r"forward mode \(jax.jvp.*"
                       r"KFT_CONV_GRADS'\] = '0'.*fast_cpu_convs=False"):
        jvp(fast)
    # The way out it names: autodiff of the same computation.
    monkeypatch.setenv("KFT_CONV_GRADS", "0")
    np.testing.assert_allclose(jvp(fast), jvp(stock), rtol=1e-5, atol=1e-6)


def _my_loss(y_true, y_pred):  # not registered with Keras
    return keras.ops.mean(keras.ops.square(y_pred), axis=-1)


def _my_metric(y_true, y_pred):
    return keras.ops.max(y_pred, axis=-1)


@pytest.mark.parametrize("sequential", [False, True])
def test_a_model_compiled_with_unregistered_functions_keeps_them(
        sequential):
    # The swap recompiled from the serialized compile config: "Could not
    # locate function '_my_loss'", before anything was swapped.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _every_swap(sequential)
        model.compile(keras.optimizers.Adam(0.01), _my_loss,
                      metrics=[_my_metric])
    finally:
        keras.config.set_dtype_policy("float32")
    fast = fast_cpu_convs(model)
    assert type(fast) is type(model)
    # The Sequential lost its policy and with it the loss scaling.
    assert fast.dtype_policy.name == "mixed_float16"
    assert isinstance(fast.optimizer, keras.optimizers.LossScaleOptimizer)
    assert fast.optimizer.inner_optimizer is not model.optimizer
    assert fast.loss is _my_loss
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 4))
    history = fast.fit(x, np.zeros((4, 3)), epochs=1, verbose=0)
    assert set(history.history) == {"loss", "_my_metric"}
    assert np.isfinite(history.history["loss"][0])


def test_the_swap_keeps_how_the_model_was_compiled():
    # `auto_scale_loss=False` is not in Keras' compile config: the swapped
    # model's compile wrapped the optimizer in a LossScaleOptimizer anyway.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _every_swap()
        model.compile(keras.optimizers.Adam(0.01), "mse",
                      auto_scale_loss=False, steps_per_execution=3,
                      run_eagerly=True)
    finally:
        keras.config.set_dtype_policy("float32")
    fast = fast_cpu_convs(model)
    assert type(fast.optimizer) is keras.optimizers.Adam
    assert fast.optimizer is not model.optimizer
    assert fast.steps_per_execution == 3 and fast.run_eagerly
    # A user's own optimizer class, not registered with Keras, inside the
    # LossScaleOptimizer Keras wrapped it in: its from_config failed.

    class MyAdam(keras.optimizers.Adam):
        pass

    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _every_swap()
        model.compile(MyAdam(0.01), "mse")
    finally:
        keras.config.set_dtype_policy("float32")
    model.run_eagerly = True  # after compile
    fast = fast_cpu_convs(model)
    assert isinstance(fast.optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(fast.optimizer.inner_optimizer) is MyAdam
    assert fast.optimizer.inner_optimizer is not model.optimizer.inner_optimizer
    assert fast.run_eagerly


def test_a_frozen_nested_model_stays_frozen():
    inner = _every_swap()
    inner.trainable = False
    outer = keras.Sequential([keras.Input((6, 6, 4)), inner,
                              keras.layers.Dense(2)])
    fast = fast_cpu_convs(outer)
    assert fast.layers[0] is not inner and not fast.layers[0].trainable
    assert len(fast.trainable_weights) == len(outer.trainable_weights) == 2


def test_64_bit_mode_computes_convolutions_as_keras_does():
    # With jax_enable_x64 on, MobileNetV2's whole-model gradient through
    # the shifted convolutions was 8e-2 to 1.7e-1 (relative) off Keras'
    # own (each layer alone matched; /tmp/audit4/backbones/diag4.py, 15 s
    # for the two models, too slow for the suite): in 64-bit mode the
    # swapped convolutions run Keras' ops.
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    layers = [DepthwiseConv2D(3, strides=2, padding="same"),
              Conv2D(4, 7, padding="same", groups=4), Conv2D(6, 1)]

    for layer in layers:
        layer(x)  # built outside the traces

    def convolutions(layer):
        jaxpr = jax.make_jaxpr(lambda x: layer(x))(x)
        return str(jaxpr).count("conv_general_dilated")

    assert [convolutions(layer) for layer in layers] == [0, 0, 1]
    jax.config.update("jax_enable_x64", True)
    try:
        assert [convolutions(layer) for layer in layers] == [1, 1, 1]
    finally:
        jax.config.update("jax_enable_x64", False)


def test_integer_inputs_take_keras_ops_and_the_shifted_forms_refuse_them():
    # The shifted forms cast the kernel to the inputs' dtype: uint8 pixels
    # straight into a grouped or 1x1 convolution truncated it (off by 891
    # on outputs up to 890), where Keras computes in floats.
    from kft.ops import conv_grads
    from kft.ops import depthwise_grads
    from kft.ops import shifted_conv

    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(
        "uint8")
    for make in (lambda: keras.layers.Conv2D(6, 3, groups=3, padding="same"),
                 lambda: keras.layers.Conv2D(4, 1),
                 lambda: keras.layers.Conv2D(4, 9, padding="same")):
        inputs = keras.Input((8, 8, 3), dtype="uint8")
        layer = make()
        model = keras.Model(inputs, layer(inputs))
        for v in model.weights:
            v.assign(np.random.default_rng(1).uniform(-1, 1, v.shape))
        fast = fast_cpu_convs(model)
        np.testing.assert_allclose(np.asarray(fast(x)), np.asarray(model(x)),
                                   rtol=1e-6, atol=1e-4)
    kernel = np.ones((3, 3, 3, 1), "float32") / 2
    for op in (shifted_conv.shifted_depthwise_conv,
               depthwise_grads.depthwise_conv):
        with pytest.raises(ValueError, match="must hold floats"):
            op(x, kernel)
    for op in (shifted_conv.shifted_conv, conv_grads.conv):
        with pytest.raises(ValueError, match="must hold floats"):
            op(x, np.ones((3, 3, 3, 4), "float32"))


def test_dense_on_maps_gives_each_argument_a_gradient_of_its_dtype():
    # bfloat16 maps times a float32 kernel (a direct call, or a kernel kept
    # in float32): the product is float32, so the input gradient must be
    # cast back to the inputs' dtype (JAX refuses a float32 cotangent for
    # a bfloat16 argument).
    from kft.ops.dense_grads import dense

    rng = np.random.default_rng(12)
    x = jax.numpy.asarray(rng.normal(size=(2, 3, 3, 8)), "bfloat16")
    kernel = jax.numpy.asarray(rng.normal(size=(8, 4)), "float32")
    grads = jax.grad(lambda x, k: dense(x, k).sum(), argnums=(0, 1))(
        x, kernel)
    expected = jax.grad(lambda x, k: jax.numpy.matmul(x, k).sum(),
                        argnums=(0, 1))(x, kernel)
    for a, b in zip(grads, expected):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, "float32"),
                                   np.asarray(b, "float32"), rtol=1e-2,
                                   atol=1e-2)
