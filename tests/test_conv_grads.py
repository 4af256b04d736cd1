"""kft.ops.conv_grads: outputs and both gradients equal to Keras' layers."""

import functools
import os
import re

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import kft
from kft.ops import conv_grads
from kft.ops import depthwise_grads
from kft.ops.cpu_convs import Conv2D
from kft.ops.cpu_convs import DepthwiseConv2D


def test_custom_gradients_unless_kft_conv_grads_is_zero(monkeypatch):
    small, large = np.ones((1, 8, 8, 4), "float32"), np.ones((1, 40, 40, 4),
                                                          "float32")
    for mode, kernel, x, custom in [
            ("auto", 5, small, True), ("auto", 7, large, True),
            ("1", 3, large, True), ("0", 3, small, False),
            ("0", 7, large, False)]:
        monkeypatch.setenv("KFT_CONV_GRADS", mode)
        for layer in (DepthwiseConv2D(kernel, padding="same"),
                      Conv2D(4, kernel, padding="same", groups=4)):
            jaxpr = str(jax.make_jaxpr(layer)(x))
            assert ("custom_vjp_call" in jaxpr) == custom, (mode, kernel)
    monkeypatch.setenv("KFT_CONV_GRADS", "yes")
    with pytest.raises(ValueError, match="KFT_CONV_GRADS.*yes"):
        DepthwiseConv2D(3)(small)


def test_depthwise_conv_lives_in_depthwise_grads_and_in_the_public_module():
    assert kft.conv_grads.depthwise_conv is depthwise_grads.depthwise_conv
    assert kft.conv_grads.conv is conv_grads.conv
    assert set(conv_grads.__all__) == {"conv", "depthwise_conv"}


def _rel(got, expected):
    got, expected = np.asarray(got, "float64"), np.asarray(expected,
                                                           "float64")
    return np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30)


def _loss_and_grads(layer, x):
    """Jitted outputs and gradients (inputs, kernel) of a squared loss."""
    kernel = layer.kernel.value

    def loss(x, kernel):
        variables = [kernel if v is layer.kernel else v.value
                     for v in layer.trainable_variables]
        outputs, _ = layer.stateless_call(variables, [], x)
        return (outputs ** 2).sum() + outputs.sum(), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True))(x, kernel)
    return outputs, *grads


def _assert_matches(stock, cls, x):
    """`cls` from `stock`'s config and weights: same outputs and grads."""
    fast = cls.from_config(stock.get_config())
    if not stock.built:
        stock.build(x.shape)
    fast.build(x.shape)
    fast.set_weights(stock.get_weights())
    # The hand-written gradients are the ones taken.
    assert "custom_vjp_call" in str(jax.make_jaxpr(fast)(x))
    got = _loss_and_grads(fast, x)
    expected = _loss_and_grads(stock, x)
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        assert _rel(a, b) <= 1e-5, _rel(a, b)


DEPTHWISE = [
    # kernel, strides, padding, dilation, multiplier, height, width
    (3, 1, "same", 1, 1, 8, 8),
    (3, 2, "same", 1, 1, 9, 8),
    (5, 2, "same", 1, 1, 7, 10),
    (7, 1, "same", 1, 1, 1, 1),
    (3, 2, "same", 1, 1, 1, 1),
    (3, 1, "valid", 1, 2, 6, 7),
    (3, 2, "valid", 1, 3, 9, 9),
    (3, 1, "same", 2, 1, 8, 8),
    (3, 1, "valid", (2, 3), 2, 9, 11),
    ((3, 5), (1, 2), "same", 1, 3, 6, 9),
]


@pytest.mark.parametrize("config", DEPTHWISE)
def test_depthwise_grads_match_keras(config):
    kernel, strides, padding, dilation, multiplier, h, w = config
    x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype("float32")
    stock = keras.layers.DepthwiseConv2D(
        kernel, strides=strides, padding=padding, dilation_rate=dilation,
        depth_multiplier=multiplier, bias_initializer="random_normal")
    _assert_matches(stock, DepthwiseConv2D, x)


def _kernel_grad(op, kernel, grads):
    _, vjp = jax.vjp(op, kernel)
    return vjp(grads)[0]


# About the bytes of one example (input + output gradient, 16 x 13 x 3
# floats each): budgets for the direct sums, blocks of examples, blocks of
# several rows and of single rows.
_EXAMPLE_BYTES = 2 * 16 * 13 * 3 * 4


@pytest.mark.parametrize("budget", [2**30, 2 * _EXAMPLE_BYTES,
                                    _EXAMPLE_BYTES * 7 // 10, 1])
@pytest.mark.parametrize("config", [
    # kernel, strides, padding, dilation, multiplier
    ((3, 3), (1, 1), "same", (1, 1), 1),
    ((3, 3), (2, 2), "valid", (1, 1), 2),
    ((5, 5), (2, 2), "same", (1, 1), 1),
    ((3, 5), (1, 2), "same", (1, 1), 3),
    ((3, 3), (1, 1), "same", (2, 2), 1),
    ((7, 7), (1, 1), "same", (1, 1), 1),
])
def test_blocked_kernel_gradient_matches_keras(monkeypatch, budget, config):
    # The sums run in blocks of whole examples, or of rows of all examples,
    # when the arrays pass the budget (0.5 MiB; set small here).
    monkeypatch.setattr(depthwise_grads, "_BLOCK_BYTES", budget)
    kernel_size, strides, padding, dilation, multiplier = config
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 16, 13, 3)).astype("float32")
    kernel = rng.normal(size=(*kernel_size, 3, multiplier)).astype("float32")

    def stock(k):
        return keras.ops.depthwise_conv(x, k, strides, padding,
                                        dilation_rate=dilation)

    grads = rng.normal(size=stock(kernel).shape).astype("float32")
    got = _kernel_grad(lambda k: conv_grads.depthwise_conv(
        x, k, strides, padding, dilation), kernel, grads)
    expected = _kernel_grad(stock, kernel, grads)
    assert _rel(got, expected) <= 1e-5, _rel(got, expected)


def test_depthwise_kernel_gradient_sums_are_matrix_vector_products():
    # XLA's CPU loops (no vectorised column sums) ran these sums 2-4x
    # slower than Eigen's GEMV, YNNPACK's reduce slower still: if XLA ever
    # rewrites the product with ones into a reduction, this fails. The 9
    # positions are one loop (one compiled product), not 9 unrolled ones:
    # unrolled, ConvNeXt-tiny's 882 products took most of its compile.
    x, k = jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 1))
    grad = jax.jit(jax.grad(
        lambda k: conv_grads.depthwise_conv(x, k, padding="same").sum()))
    hlo = grad.lower(k).compile().as_text()
    assert hlo.count(" dot(") == 1
    assert hlo.count(" while(") == 1
    assert " reduce(" not in hlo
    assert "ynn_fusion" not in hlo


@pytest.mark.parametrize("filters,kernel,strides", [
    (4, 7, 1), (8, 7, 1), (4, 3, 2)])
def test_channelwise_grouped_grads_match_keras(filters, kernel, strides):
    x = np.random.default_rng(1).normal(size=(2, 7, 6, 4)).astype("float32")
    stock = keras.layers.Conv2D(filters, kernel, strides=strides,
                                padding="same", groups=4,
                                bias_initializer="random_normal")
    _assert_matches(stock, Conv2D, x)


DENSE = [
    # kernel, strides, padding, dilation, height, width: XLA's forward
    (3, 1, "same", 1, 8, 8),
    (3, 2, "same", 1, 9, 8),
    (7, 2, "same", 1, 11, 10),
    (3, 2, "valid", 1, 9, 9),
    (3, 1, "same", 2, 8, 8),
    ((2, 3), 2, "valid", 1, 8, 7),
    # the kernel covers the map: what `fast_cpu_convs` swaps
    (3, 1, "same", 1, 2, 2),
    (3, 1, "same", 1, 1, 1),
    (3, 2, "same", 1, 2, 3),
    (3, 1, "same", 2, 2, 2),
    # 1x1 kernels: also swapped (the kernel gradient as one matrix product)
    (1, 1, "valid", 1, 8, 8),
    (1, 2, "valid", 1, 9, 8),
    (1, 2, "same", 1, 7, 7),
    (1, 1, "same", 1, 1, 1),
    (1, (2, 1), "valid", 1, 6, 5),
    (1, 1, "same", 2, 4, 4),
]


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("config", DENSE)
def test_dense_grads_match_keras(config, shifted):
    kernel, strides, padding, dilation, h, w = config
    x = np.random.default_rng(2).normal(size=(2, h, w, 5)).astype("float32")
    stock = keras.layers.Conv2D(6, kernel, strides=strides, padding=padding,
                                dilation_rate=dilation,
                                bias_initializer="random_normal")
    stock.build(x.shape)
    expected = _loss_and_grads(stock, x)

    def loss(x, kernel):
        outputs = conv_grads.conv(x, kernel, stock.strides, stock.padding,
                                  stock.dilation_rate, shifted=shifted)
        outputs = outputs + stock.bias.value
        return (outputs ** 2).sum() + outputs.sum(), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True))(x, stock.kernel.value)
    for a, b in zip((outputs, *grads), expected):
        assert a.shape == b.shape
        assert _rel(a, b) <= 1e-5, _rel(a, b)
    # The layer swaps these in.
    if np.prod(stock.kernel_size) > h * w or stock.kernel_size == (1, 1):
        _assert_matches(stock, Conv2D, x)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_1x1_input_gradient_reads_the_kernel_without_a_transposed_copy(
        strides):
    # XLA's transposed convolution copied the kernel transposed every step
    # (8 ms for one of ResNet50's 2048x1024 kernels); kft's is one dot.
    import re
    x, k = jnp.ones((4, 7, 7, 48)), jnp.ones((1, 1, 48, 40))
    grad = jax.jit(jax.grad(
        lambda x, k: (conv_grads.conv(x, k, strides) ** 2).sum(),
        argnums=(0, 1)))
    hlo = grad.lower(x, k).compile().as_text()
    made = re.findall(r"= f32\[([\d,]+)\]\{[\d,]*\} ([\w-]+)\(", hlo)
    assert ("48,40", "dot") in made  # the kernel gradient: the pattern works
    transposed = [(shape, op) for shape, op in made
                  if shape in ("40,48", "1,1,40,48") and op != "bitcast"]
    assert not transposed


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_grads_close_to_float32(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 9, 9, 4)).astype("float32")
    dw = rng.normal(size=(3, 3, 4, 2)).astype("float32")
    dense = rng.normal(size=(3, 3, 8, 5)).astype("float32")

    def loss(x, dw, dense, cast):
        y = conv_grads.depthwise_conv(x.astype(cast), dw, (2, 2), "same")
        y = conv_grads.conv(y, dense.astype(cast), padding="same")
        return (y.astype("float32") ** 2).sum()

    grad = jax.jit(jax.grad(loss, (0, 1, 2)), static_argnums=3)
    low, high = grad(x, dw, dense, dtype), grad(x, dw, dense, "float32")
    for a, b in zip(low, high):
        assert a.dtype == jnp.float32  # cotangents of the float32 inputs
        assert _rel(a, b) <= 3e-2, _rel(a, b)


def test_residuals_are_input_and_kernel_only():
    x = jnp.ones((2, 8, 8, 4))
    k = jnp.ones((5, 5, 4, 1))
    _, residuals = jax.vjp(
        lambda x, k: conv_grads.depthwise_conv(x, k, padding="same"), x, k)
    kept = jax.tree.leaves(residuals)
    # Plain autodiff of the shifted form would keep 25 shifted patches.
    assert sum(a.size for a in kept) <= x.size + k.size


def test_bad_padding_is_rejected():
    with pytest.raises(ValueError, match="Argument `padding` must be one of"):
        conv_grads.conv(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 2)),
                        padding="full")
    # Integer inputs truncated the kernel cast to them (0.5 became 0).
    with pytest.raises(ValueError, match=r"`inputs` must hold floats.*"
                       r"dtype int32"):
        conv_grads.conv(np.ones((1, 4, 4, 2), "int32"),
                        np.full((3, 3, 2, 2), 0.5))


def test_int_strides_case_and_empty_outputs_as_keras():
    # An int stride or rate is (n, n), as keras.ops.conv takes it (it
    # raised "'int' object is not iterable"); a "valid" kernel wider than
    # the input is refused (depthwise raised a broadcasting error, conv
    # returned an empty array).
    from kft.ops.shifted_conv import shifted_conv
    from kft.ops.shifted_conv import shifted_depthwise_conv

    x = np.random.default_rng(0).normal(size=(1, 7, 7, 3)).astype("f4")
    kernel, depthwise = np.ones((3, 3, 3, 2), "f4"), np.ones((3, 3, 3, 1),
                                                             "f4")
    for ours, theirs, k in (
            (conv_grads.conv, keras.ops.conv, kernel),
            (shifted_conv, keras.ops.conv, kernel),
            (conv_grads.depthwise_conv, keras.ops.depthwise_conv, depthwise),
            (shifted_depthwise_conv, keras.ops.depthwise_conv, depthwise)):
        # Upper-case padding too (it was refused: "must be one of").
        for kwargs in ({"strides": 2}, {"dilation_rate": 2},
                       {"padding": "SAME"}, {"padding": "Valid"}):
            np.testing.assert_allclose(ours(x, k, **kwargs),
                                       theirs(x, k, **kwargs), atol=1e-5)
        with pytest.raises(ValueError, match=r"A \"valid\" convolution of a "
                           r"\(3, 3\) kernel \(dilation \(4, 4\): spans "
                           r"\(9, 9\)\) over \(7, 7\) inputs has an empty "
                           r"output"):
            ours(x, k, dilation_rate=4)
        for bad in ((2, 0), (1, 2, 3), "2", 0):  # named as given
            with pytest.raises(ValueError, match=r"`strides` must be a "
                               r"positive integer or a \(height, width\) "
                               r"pair of them\. Received: strides="
                               + re.escape(repr(bad))):
                ours(x, k, strides=bad)


def test_shifted_sums_are_computed_once_not_fused_into_consumers():
    # kft's default CPU flags keep `optimization_barrier` until code
    # generation (`kft._config.BARRIERS_KEPT`), so the barriers around the
    # forward and the input gradient keep XLA from recomputing those
    # k*k-term sums inside every consumer (a normalization reads its
    # input three times; ConvNeXt-tiny's 7x7: step ~1.2x slower without).
    from kft import _config

    assert _config.BARRIERS_KEPT in os.environ.get("XLA_FLAGS", "")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 4)).astype("float32")
    k = np.random.default_rng(1).normal(size=(7, 7, 4, 1)).astype("float32")

    def loss(depthwise, x, k):
        y = depthwise(x, k)
        y = (y - y.mean(-1, keepdims=True)) / (y.std(-1, keepdims=True) + 1)
        return (y ** 2).sum()

    ours = jax.jit(jax.grad(functools.partial(
        loss, lambda x, k: conv_grads.depthwise_conv(x, k, padding="same")),
        argnums=(0, 1)))
    # One around the forward, one around the input gradient, for every
    # kernel size (3x3 and 5x5 measured faster so with the older emitters),
    # and the one tying the backward pass to the incoming gradient.
    for kernel in (k, k[2:5, 2:5]):
        text = ours.lower(x, kernel).compile().as_text()
        assert text.count("opt-barrier") == 3
    stock = jax.grad(functools.partial(
        loss, lambda x, k: keras.ops.depthwise_conv(x, k, 1, "same")),
        argnums=(0, 1))
    for got, want in zip(ours(x, k), stock(x, k)):
        np.testing.assert_allclose(got, want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("strides,multiplier", [(2, 2), (1, 1)])
def test_a_frozen_depthwise_makes_its_padded_input_a_buffer_first(
        strides, multiplier):
    # Without gradients (a frozen layer, inference) the input of the k*k
    # slices goes through a barrier too: else XLA fuses an elementwise
    # producer (frozen BatchNorm + activation) into, and recomputes it in,
    # every slice. Under `jax.grad` only the output has one (the input is
    # kept for the backward pass anyway). The "same" padding comes before
    # that barrier, so the loop computing the input writes the padded
    # buffer: no pad of its own copying it again (EfficientNetB0's stride-1
    # depthwise inputs, 4 ms of a 43 ms 224 px feature-extraction step).
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    k = np.random.default_rng(1).normal(
        size=(3, 3, 4, multiplier)).astype("float32")

    def frozen(x, k):
        h = jax.nn.swish(x * 1.5 + 0.25)
        return conv_grads.depthwise_conv(h, k, (strides, strides), "same")

    forward = jax.jit(frozen)
    text = forward.lower(x, k).compile().as_text()
    assert text.count("opt-barrier") == 2
    assert " pad(" not in text[text.index("ENTRY"):]
    assert "pad(" in text  # inside the producer's fusion
    # Trained: around the output and the input gradient only (and the
    # backward pass's tie to the incoming gradient).
    trained = jax.jit(jax.grad(lambda x, k: (frozen(x, k) ** 2).sum(),
                               argnums=(0, 1)))
    assert trained.lower(x, k).compile().as_text().count("opt-barrier") == 3
    want = keras.ops.depthwise_conv(jax.nn.swish(x * 1.5 + 0.25), k,
                                    strides, "same")
    np.testing.assert_allclose(forward(x, k), want, rtol=1e-5, atol=1e-5)
