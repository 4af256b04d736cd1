"""Keras convolution layers computed as shifted slices on XLA's CPU backend.

Two kinds of convolution are slow under XLA on CPU:

- Depthwise (channel-grouped) convolutions go through a generic loop, an
  order of magnitude slower than the same sums written as shifted
  multiply-adds, which XLA fuses into one loop. EfficientNet, MobileNet
  and ConvNeXt are built from them.
- A convolution whose kernel covers more positions than its input has
  (ResNet50's 3x3 convolutions on the 2x2 maps of a 64x64 image) has its
  operands swapped by XLA's algebraic simplifier into a slow loop. As one
  matrix product per kernel position it stays on the fast matmul path.

And one gradient is slow: XLA takes the kernel gradient of a 1x1
convolution as a convolution over a features-first copy of its input and
output gradient (two transposed copies per layer, 500 ms of ResNet50's
1.1 s 224 px full step); as one matrix product of the input and the output
gradient it needs no copy.

And three activations (`Activation`, computed by `kft.ops.activations`):
JAX's exact GELU through `erfc` is slow on CPU, its ReLU takes the
gradient from the input, which XLA recomputes in residual networks, and
its SiLU ("swish") keeps the sigmoid for the gradient as well as the
input. A `Dense` layer on feature maps takes its kernel gradient as one
matrix product of 2-D views (`kft.ops.dense_grads`), and after a GELU
computes both from the GELU's input, so the backward pass keeps one map,
not two (`kft.ops.activations.gelu_dense`). And layer normalization
(`LayerNormalization`): a hand-written gradient (`kft.ops.layer_norm`)
keeps less for the backward pass and sums faster.

This module holds the layers (`DepthwiseConv2D`, `SeparableConv2D`,
`Conv2D`) computed by `kft.ops.shifted_conv`, and `fast_cpu_convs`, which
swaps them into a model: same weights, same config, same results up to
float rounding (the sums run in another order); only the computation
differs, and only where it helps. `shifted_depthwise_conv` and
`shifted_conv` are re-exported here. Their gradients come from
`kft.ops.depthwise_grads` and `kft.ops.conv_grads` (kernel gradients as
blocked reductions / one GEMM, only input and kernel kept for the
backward pass); `KFT_CONV_GRADS=0`, read when a layer is traced, takes
autodiff of the shifted forms instead, for before/after measurements
(`benchmarks/bench_step.py`, `benchmarks/RESULTS.md`).
"""

import functools
import math
import os
import random
import threading

import keras
from keras import ops

from kft import _compat
from kft._validation import check_choice
from kft._validation import fail_argument
from kft.models.init_draws import bucketed_draws
from kft.ops import conv_grads
from kft.ops import dense_grads
from kft.ops import depthwise_grads
from kft.ops.activations import gelu
from kft.ops.activations import gelu_dense
from kft.ops.activations import relu
from kft.ops.activations import silu
from kft.ops.layer_norm import layer_norm
from kft.ops.shifted_conv import shifted_conv
from kft.ops.shifted_conv import shifted_depthwise_conv

__all__ = ["Activation", "Conv2D", "Dense", "DepthwiseConv2D",
           "LAYER_CLASSES", "LayerNormalization", "SeparableConv2D",
           "fast_cpu_convs",
           "shifted_conv", "shifted_depthwise_conv"]

# The output and input of the GELU `Activation` called last (in this
# thread), for the `Dense` layer that reads that output next.
_last_gelu = threading.local()


def _static_channels_last(layer, inputs):
    """Whether the shifted forms compute `layer` on `inputs` (a tensor or
    a symbolic one).

    Floats only: they cast the kernel to the inputs' dtype, which for
    integer inputs (uint8 pixels) truncated it, where Keras' own ops
    compute in floats. Not with JAX's 64-bit mode on: MobileNetV2's
    whole-model gradient then came out 8e-2 off Keras' (each layer alone
    matched; the cause was not found), so Keras' own ops run there.
    """
    import jax

    shape = inputs.shape
    return (layer.data_format == "channels_last" and len(shape) == 4
            and None not in shape[1:3]
            and keras.backend.is_float_dtype(inputs.dtype)
            and not jax.config.jax_enable_x64)


def _kernel_covers_map(kernel_size, shape):
    """Where XLA swaps a convolution's operands: more taps than positions."""
    return math.prod(kernel_size) > shape[1] * shape[2]


FORWARD_MODE_HINT = (
    "kft's CPU layers (kft.fast_cpu_convs; kft.build_classifier swaps them "
    "in on CPU by default) have hand-written reverse-mode gradients: "
    "jax.grad and jax.vjp work, forward mode (jax.jvp, jax.jacfwd, "
    "jax.hessian, jvp of grad) does not. Set os.environ['KFT_CONV_GRADS'] "
    "= '0' before tracing (autodiff of the same computation), or build the "
    "model with fast_cpu_convs=False")


def _reverse_mode_only(cls):
    """Class decorator: JAX's error for forward-mode autodiff through a
    `jax.custom_vjp` names neither kft nor a way out; this one does."""
    call = cls.call

    @functools.wraps(call)
    def wrapped(self, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        except TypeError as error:
            if "forward-mode autodiff" not in str(error):
                raise
            raise TypeError(FORWARD_MODE_HINT) from error

    cls.call = wrapped
    return cls


def _custom_gradients():
    """Whether to take the gradients of `kft.ops.conv_grads`,
    `kft.ops.depthwise_grads`, `kft.ops.activations` and
    `kft.ops.layer_norm` (and `gelu`'s `erf` form).

    `KFT_CONV_GRADS` (read when a layer is traced): unset, `"auto"` or
    `"1"`, yes (measured faster for every kernel and map size of the four
    benchmark backbones, benchmarks/RESULTS.md); `"0"`, autodiff of the
    shifted forms and Keras' own ops elsewhere (for before/after
    measurements).
    """
    mode = os.environ.get("KFT_CONV_GRADS", "auto")
    check_choice("KFT_CONV_GRADS", mode, ("auto", "0", "1"))
    return mode != "0"


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` computed by `shifted_depthwise_conv`.

    Same arguments, weights and config as the Keras layer; channels-first
    inputs or unknown spatial sizes use Keras' own op.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.DepthwiseConv2D(3, padding="same")
    >>> layer(np.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    def call(self, inputs):
        if not _static_channels_last(self, inputs):
            return super().call(inputs)
        depthwise = (depthwise_grads.depthwise_conv
                     if _custom_gradients()
                     else shifted_depthwise_conv)
        outputs = depthwise(inputs, ops.cast(self.kernel, inputs.dtype),
                            self.strides, self.padding, self.dilation_rate)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class SeparableConv2D(keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` with its depthwise half computed by
    `shifted_depthwise_conv` (NASNet's layers).

    Same arguments, weights and config as the Keras layer; the pointwise
    half is a 1x1 convolution whose kernel gradient is one matrix product
    (`kft.ops.conv_grads.conv`). Channels-first inputs or unknown spatial
    sizes use Keras' own op.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.SeparableConv2D(6, 3, padding="same")
    >>> layer(np.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 6)
    """

    def call(self, inputs):
        if not _static_channels_last(self, inputs):
            return super().call(inputs)
        custom = _custom_gradients()
        depthwise = (depthwise_grads.depthwise_conv if custom
                     else shifted_depthwise_conv)
        outputs = depthwise(inputs,
                            ops.cast(self.depthwise_kernel, inputs.dtype),
                            self.strides, self.padding, self.dilation_rate)
        pointwise = ops.cast(self.pointwise_kernel, inputs.dtype)
        if custom:
            outputs = conv_grads.conv(outputs, pointwise, shifted=False)
        else:
            # The layer's format, not Keras' global one (channels_first
            # in keras.json would read these NHWC maps as NCHW).
            outputs = ops.conv(outputs, pointwise,
                               data_format="channels_last")
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            return self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` that avoids XLA's slow CPU paths.

    Same arguments, weights and config as the Keras layer. With one input
    channel per group (ConvNeXt's 7x7 convolutions) it computes
    `shifted_depthwise_conv`; ungrouped, with a kernel that covers more
    positions than the input map has (where XLA would swap the operands),
    `shifted_conv`; otherwise Keras' own op, for a 1x1 kernel with the
    kernel gradient as one matrix product (`kft.ops.conv_grads.conv`). For
    channels-first inputs or unknown spatial sizes, Keras' own op.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.Conv2D(4, 7, padding="same", groups=4)
    >>> layer(np.ones((1, 8, 8, 4))).shape
    (1, 8, 8, 4)
    """

    def convolution_op(self, inputs, kernel):
        shape = inputs.shape
        if not _static_channels_last(self, inputs):
            return super().convolution_op(inputs, kernel)
        kernel = ops.cast(kernel, inputs.dtype)
        args = (self.strides, self.padding, self.dilation_rate)
        kernel_h, kernel_w, group_channels = kernel.shape[:3]
        custom = _custom_gradients()
        if self.groups == shape[-1] and group_channels == 1:
            kernel = ops.reshape(kernel, (kernel_h, kernel_w, shape[-1],
                                          self.filters // shape[-1]))
            if custom:
                return depthwise_grads.depthwise_conv(inputs, kernel, *args)
            return shifted_depthwise_conv(inputs, kernel, *args)
        if self.groups != 1:
            return super().convolution_op(inputs, kernel)
        if _kernel_covers_map((kernel_h, kernel_w), shape):
            if custom:
                return conv_grads.conv(inputs, kernel, *args, shifted=True)
            return shifted_conv(inputs, kernel, *args)
        if custom and (kernel_h, kernel_w) == (1, 1):
            return conv_grads.conv(inputs, kernel, *args, shifted=False)
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class Activation(keras.layers.Activation):
    """`keras.layers.Activation("gelu")` computed by
    `kft.ops.activations.gelu` (the `erf` form) instead of JAX's slower
    `erfc` form, `Activation("relu")` by `kft.ops.activations.relu`
    (its gradient from the output: ResNet50's 224 px full step keeps 220
    MiB less, partial 1.3x faster), and `Activation("silu")` /
    `Activation("swish")` by `kft.ops.activations.silu` (only its input
    kept for the gradient: EfficientNetB0's 224 px full step keeps 93 MiB
    less).

    Same config as the Keras layer; `KFT_CONV_GRADS=0` uses Keras' own.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.Activation("gelu")
    >>> layer(np.zeros((1, 3))).shape
    (1, 3)
    """

    def call(self, inputs):
        if self.activation is keras.activations.gelu and \
                _custom_gradients():
            outputs = gelu(inputs)
            _last_gelu.pair = (outputs, inputs)
            return outputs
        if self.activation is keras.activations.relu and \
                _custom_gradients():
            return relu(inputs)
        if self.activation is keras.activations.silu and \
                _custom_gradients():
            return silu(inputs)
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` on feature maps, its kernel gradient as one
    matrix product (`kft.ops.dense_grads.dense`: XLA's own takes a
    transposed copy of the output gradient first); reading the output of
    kft's GELU `Activation` (ConvNeXt's pointwise MLP), it computes
    `kft.ops.activations.gelu_dense` from the GELU's input, so the
    backward pass keeps the GELU's input only, not its output too.

    Same arguments, weights and config as the Keras layer; other 2-D or
    non-float inputs, LoRA, quantized kernels or `KFT_CONV_GRADS=0` use
    Keras' own op. The
    GELU layer's output is still computed for any other layer reading it.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.Dense(3)
    >>> layer(np.ones((2, 4, 4, 8))).shape
    (2, 4, 4, 3)
    """

    def call(self, inputs, training=None):
        pair = getattr(_last_gelu, "pair", None)
        if (self.lora_enabled or self.quantization_mode is not None
                or not keras.backend.is_float_dtype(inputs.dtype)
                or not _custom_gradients()):
            return super().call(inputs, training=training)
        kernel = ops.cast(self.kernel, inputs.dtype)
        if pair is not None and pair[0] is inputs:
            _last_gelu.pair = None  # one reader; no map kept past the call
            outputs = gelu_dense(pair[1], kernel)
        elif len(inputs.shape) > 2:
            outputs = dense_grads.dense(inputs, kernel)
        else:
            return super().call(inputs, training=training)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="kft")
@_reverse_mode_only
class LayerNormalization(keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` over the last axis computed by
    `kft.ops.layer_norm.layer_norm` (a hand-written gradient that keeps
    less and sums faster on CPU).

    Same arguments, weights and config as the Keras layer; other axes,
    `rms_scaling` or `KFT_CONV_GRADS=0` use Keras' own op.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.cpu_convs.LayerNormalization(epsilon=1e-6)
    >>> layer(np.ones((1, 4, 4, 8))).shape
    (1, 4, 4, 8)
    """

    def call(self, inputs):
        last = len(inputs.shape) - 1
        if (self.axis not in ([-1], [last]) or self.rms_scaling
                or not _custom_gradients()):
            return super().call(inputs)
        gamma, beta = (None if v is None else ops.convert_to_tensor(v)
                       for v in (self.gamma, self.beta))
        outputs = layer_norm(inputs, gamma, beta, self.epsilon)
        return ops.cast(outputs, self.compute_dtype)


# Every layer class `fast_cpu_convs` swaps in; each subclasses the Keras
# layer it stands for (`kft.deploy.inference_model` swaps them back).
LAYER_CLASSES = (Activation, Conv2D, Dense, DepthwiseConv2D,
                 LayerNormalization, SeparableConv2D)


def _covers_input(layer):
    """Whether the kernel covers more positions than the input map has.

    Only there, and for 1x1 kernels, is a dense convolution swapped: for
    larger kernels kft's im2col kernel gradient (`conv_grads.conv`) made
    ResNet50's 224 px full step slower (986 vs 895 ms with 1x1 only,
    benchmarks/RESULTS.md).
    """
    try:
        inputs = layer.input
    except (AttributeError, ValueError):  # not called exactly once
        return False
    return (_static_channels_last(layer, inputs)
            and _kernel_covers_map(layer.kernel_size, inputs.shape))


def _reads_gelu(layer):
    """Whether `layer` is called once, on a GELU `Activation`'s output."""
    try:
        source = layer.input._keras_history.operation
    except (AttributeError, ValueError):  # not called exactly once
        return False
    return (type(source) in (keras.layers.Activation, Activation)
            and source.activation is keras.activations.gelu)


def _on_feature_maps(layer):
    """Whether `layer` is called once, on inputs of more than two axes."""
    try:
        return len(layer.input.shape) > 2
    except (AttributeError, ValueError):  # not called exactly once
        return False


def _replacement(layer):
    """kft's class for `layer`, or `None` to keep it.

    Exact classes only: a subclass (kft's own layers, or a user's with its
    own `call`) may compute something else, so it is never swapped.
    """
    if type(layer) is keras.layers.DepthwiseConv2D:
        return DepthwiseConv2D
    if type(layer) is keras.layers.SeparableConv2D:
        return SeparableConv2D
    if type(layer) is keras.layers.Activation and (
            layer.activation in (keras.activations.gelu,
                                 keras.activations.relu,
                                 keras.activations.silu)):
        return Activation
    if type(layer) is keras.layers.LayerNormalization:
        return LayerNormalization
    if type(layer) is keras.layers.Dense and (
            _reads_gelu(layer) or _on_feature_maps(layer)):
        return Dense
    if type(layer) is keras.layers.Conv2D and (
            layer.groups > 1 and layer.kernel.shape[2] == 1
            or layer.groups == 1 and (
                tuple(layer.kernel_size) == (1, 1)
                and layer.data_format == "channels_last"
                or _covers_input(layer))):
        return Conv2D
    return None


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _clone_graph(model, clone_layer):
    """`model` (functional or Sequential) with `clone_layer` applied to its
    layers: of its class, with what kft reads from it, compiled as it was.

    Keras clones a functional model by calling its class with inputs and
    outputs alone (a `kft.BatchAugmentModel` then has no mixing layer, at
    any depth) and compiles the clone before anything can give it the
    model's dtype policy (a `mixed_float16` model's clone compiled without
    loss scaling). Here the graph is cloned as a plain one and wrapped in
    the model's class (with a copy of its mixing layer), then given the
    model's metadata and policy (`carry_over`), then compiled.
    """
    from kft.models.batch_augment import BatchAugmentModel
    from kft.models.classifier import carry_over

    if isinstance(model, keras.Sequential):
        new = _compat.clone_uncompiled(model, clone_layer)
        carry_over(model, new)
        _compile_like(model, new)
        return new
    # `input` / `output`: the structures the model was built with (a
    # tensor, not a list of one, which nested calls would pass on).
    graph = keras.models.clone_model(
        keras.Model(model.input, model.output, name=model.name),
        clone_function=clone_layer)
    if not model.trainable:  # its layers are frozen already
        graph.trainable = False
    if isinstance(model, BatchAugmentModel):
        layer = model.batch_augment
        new = BatchAugmentModel(graph.input, graph.output, name=model.name,
                                batch_augment=layer.__class__.from_config(
                                    layer.get_config()))
    elif (type(model) is not type(graph)
          and getattr(type(model), "rebuilt_from_graph", True)
          and _compat.functional_like_constructor(type(model))):
        new = type(model)(graph.input, graph.output, name=model.name)
    elif type(model) is not type(graph):
        # A plain graph would drop what the class adds (a
        # DomainAdaptationModel's discriminator and training step).
        fail_argument(
            "model", "a model whose class is rebuilt from its inputs and "
            f"outputs ({type(model).__name__} is not): apply fast_cpu_convs "
            "to the models it is built from (a DomainAdaptationModel's "
            "classifier) before building it", model.name, TypeError)
    else:
        new = graph
    carry_over(model, new)  # class names, pretrained flag, dtype policy
    _compile_like(model, new)
    return new


def _copy(optimizer):
    return type(optimizer).from_config(optimizer.get_config())


def _compile_like(model, new):
    """Compiles `new` as `model` was compiled, if it was: with the same
    loss and metric objects (a round trip through the compile config, as
    Keras' `clone_model` makes, fails for a user's unregistered function
    or class) and a new optimizer of the same config (the old one is
    built for `model`'s variables)."""
    if not model.compiled:
        return
    arguments = dict(_compat.compile_config(model))
    # The optimizer the model trains with (a `LossScaleOptimizer` wherever
    # the user's compile scaled the loss), so nothing is wrapped anew:
    # Keras does not record `auto_scale_loss=False`.
    optimizer = model.optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Not its `from_config`: that looks the inner optimizer up among
        # Keras' registered classes (a user's own subclass is not).
        optimizer = keras.optimizers.LossScaleOptimizer(
            _copy(optimizer.inner_optimizer), name=optimizer.name,
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps)
    elif isinstance(optimizer, keras.optimizers.Optimizer):
        optimizer = _copy(optimizer)
    # Set on the model after compile too (`model.run_eagerly = True`).
    new.compile(**{**arguments, "optimizer": optimizer,
                   "run_eagerly": model.run_eagerly,
                   "jit_compile": model.jit_compile and not model.run_eagerly,
                   "steps_per_execution": model.steps_per_execution},
                auto_scale_loss=False)
    if new.built:  # as `compile_from_config` does
        new.optimizer.build(new.trainable_variables)


def fast_cpu_convs(model: keras.Model) -> keras.Model:
    """Returns `model` with its convolutions in kft's CPU form.

    Every `keras.layers.DepthwiseConv2D` and `SeparableConv2D`, every
    `Activation("gelu")`, `Activation("relu")` and `Activation("silu")`
    (`"swish"`), every `LayerNormalization`, every channels-last
    `keras.layers.Conv2D` with one input channel per group, a 1x1 kernel,
    or a kernel that covers more positions than its input map has, and
    every `keras.layers.Dense` called on a GELU's output or on feature
    maps (more than two axes), also inside nested models (a backbone
    inside a classifier), is replaced by `kft.cpu_convs.DepthwiseConv2D`
    / `SeparableConv2D` / `Activation` / `LayerNormalization` / `Conv2D` /
    `Dense` holding copies of the same weights; all other layers are
    shared with `model`, not copied. The results are the same up to float
    rounding (about 1e-6 relative); on CPU the training steps of
    EfficientNet, MobileNet, NASNet, ConvNeXt and, at small input sizes,
    ResNet get several times faster, ResNet's full training at 224 px
    about 1.2x (measured in `benchmarks/RESULTS.md`).
    `kft.build_classifier` does this by itself when JAX runs on CPU
    (`fast_cpu_convs="auto"`). Use the returned model, not `model`.

    Args:
        model: A functional or `Sequential` Keras model, built. A compiled
            model comes back compiled with the same loss and metrics and
            a new optimizer of the same config.

    Returns:
        The new model, named like `model`, or `model` itself when it has
        nothing to replace.

    Raises:
        ValueError: a model with a penalty bound by `kft.regularize` (or
            holding one): call `kft.fast_cpu_convs` first.

    Example:
    >>> import kft
    >>> base = kft.create_backbone("mobilenetv3small", weights=None,
    ...                            input_shape=(32, 32, 3))
    >>> fast = kft.fast_cpu_convs(base)
    >>> sum(isinstance(layer, kft.cpu_convs.DepthwiseConv2D)
    ...     for layer in fast.layers)
    11
    """
    # Here, not at the top: kft.regularizers imports kft.models.
    from kft.regularizers.attach import PENALTY_ATTRIBUTE

    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)

    # The swapped layers' new variables would have no term, and the clone
    # no anchors as state: the penalty would silently cover part.
    if any(getattr(m, PENALTY_ATTRIBUTE, None) is not None
           for m in (model, *_all_layers(model))):
        fail_argument(
            "model", "a model without a bound penalty: fast_cpu_convs "
            "returns a new model, with new variables for the layers it "
            "swaps, which the penalty does not cover. Call "
            "kft.fast_cpu_convs(model) before kft.regularize(model, "
            "penalty)", model)
    replaced = []

    def clone(layer):
        if _compat.is_graph_model(layer):  # a nested model, by these rules
            return _clone_graph(layer, clone)
        cls = _replacement(layer)
        if cls is None:
            return layer
        new = cls.from_config(layer.get_config())
        replaced.append((layer, new))
        return new

    if not any(_replacement(layer) for layer in _all_layers(model)):
        return model
    if not _compat.is_graph_model(model):
        # Keras said "has never been called", of a model that had been.
        fail_argument("model", "a functional or Sequential model: "
                      "fast_cpu_convs rebuilds its graph, which a "
                      "subclassed model does not have", type(model).__name__,
                      TypeError)
    # New layers draw initializer seeds from Python's RNG; restore it, so
    # the layers built afterwards (a new head) get the same initial weights
    # with and without this call.
    rng_state = random.getstate()
    try:
        with bucketed_draws():  # the draws are replaced by the weights below
            fast = _clone_graph(model, clone)
    finally:
        random.setstate(rng_state)
    for old, new in replaced:
        # Copies: Keras' JAX steps donate variable buffers, so a buffer
        # shared by two variables would be deleted under the other model.
        new.set_weights([ops.copy(v.value) for v in old.weights])
    fast.name = model.name
    return fast
