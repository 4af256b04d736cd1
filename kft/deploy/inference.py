"""A model's inference graph rebuilt from stock Keras layers.

What `kft.export` saves or converts: the same weights (shared, not
copied) in a plain functional model that needs no kft class to load,
with kft's training-only machinery left out:

- kft's CPU layers (`kft.cpu_convs.LAYER_CLASSES`: `Conv2D`,
  `DepthwiseConv2D`, `SeparableConv2D`, `Activation`, `Dense`,
  `LayerNormalization`) become the Keras layers they subclass (same
  config, same weights);
- kft's `Preprocess` layer becomes `kft.layers.preprocessing` (stock
  layers, bit-for-bit the same);
- kft's augmentation layers and Keras' `Random*` ones (identity at
  inference) are dropped (Keras' others, such as `RandAugment`, stay:
  stock layers, identity at inference), and
  so is the source head `kft.with_source_head` keeps for `kft.LwF` (its
  layer passes the features through);
- a `kft.BatchAugmentModel` (its mixing runs only in the train step) and
  the kft `Backbone` class become plain functional models;
- optionally a `Softmax` named `"probabilities"` is appended (never to a
  model that already ends in a softmax: `output_kind`).

For ONNX (`onnx_compatible=True`) `MaxPooling2D` also becomes
`SlicedMaxPooling2D`, which onnxruntime runs (see `kft.deploy.onnx_layers`).
"""

import random
from typing import Literal

import keras
import numpy as np

from kft import _compat
from kft._compat import base_image_preprocessing_layer
from kft._evaluation_step import without_penalty_in_evaluation
from kft._validation import check_choice
from kft._validation import fail_argument
from kft.deploy.onnx_layers import SlicedMaxPooling2D
from kft.layers import Preprocess
from kft.layers import preprocessing
from kft.models.init_draws import bucketed_draws
from kft.ops import cpu_convs
from kft.regularizers.source_head import KeptSourceHead

OUTPUTS = ("logits", "probabilities")
Output = Literal["logits", "probabilities"]


def check_built(model):
    """Raises with the fix when `model` cannot be traced yet."""
    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs and not _compat.is_graph_model(model):
        # A subclassed model has no graph, built or not.
        raise ValueError(
            f"Model {model.name!r} is a subclassed model ("
            f"{type(model).__name__}), which has no graph to read: wrap it "
            "in a functional model first, e.g. `inputs = keras.Input((h, "
            "w, 3)); model = keras.Model(inputs, subclassed(inputs))`.")
    if not inputs or not model.built:
        raise ValueError(
            f"Model {model.name!r} has no defined input yet, so its input "
            "size and output are unknown. Build it first: a functional "
            "model (or `kft.build_classifier`) has one; a `Sequential` needs "
            "`keras.Input(shape)` as its first layer, or call "
            "`model.build((None, height, width, 3))`, or run it once on a "
            "batch: `model(x[:1])`.")
    if len(inputs) != 1 or len(model.outputs) != 1:
        fail_argument("model", "a model with one image input and one output",
                      f"{len(inputs)} inputs, {len(model.outputs)} outputs")


# Layers that pass their input on unchanged at inference (a float32
# `Activation("linear")` after a softmax, as mixed-precision guides put it).
_PASS_THROUGH = (keras.layers.Identity, keras.layers.Dropout,
                 keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                 keras.layers.AlphaDropout, keras.layers.ActivityRegularization)


def _passes_through(operation):
    return isinstance(operation, _PASS_THROUGH) or (
        isinstance(operation, keras.layers.Activation)
        and operation.activation is keras.activations.linear)


def _is_softmax(operation):
    return (isinstance(operation, keras.layers.Softmax)
            or _compat.is_softmax_op(operation)
            or getattr(operation, "activation", None)
            is keras.activations.softmax)


def _is_opaque(operation):
    """Whether what `operation` computes is not known from its class: a
    `Lambda`, or a layer of neither Keras nor kft."""
    module = type(operation).__module__
    return isinstance(operation, keras.layers.Lambda) or not (
        module.startswith(("keras.", "kft.")))


def _probes_as_probabilities(model):
    """Whether `model`'s rows on two random images are probabilities
    (non-negative, summing to 1), as `kft.evaluate` tells them apart."""
    from kft.evaluation.metrics import to_probabilities

    spec = model.inputs[0]
    shape = [2] + [size or 32 for size in spec.shape[1:]]
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(
        keras.backend.standardize_dtype(spec.dtype))
    try:
        scores = keras.ops.convert_to_numpy(model(x, training=False))
    except Exception:  # noqa: BLE001 - a heuristic: the graph's answer holds
        return False
    return scores.ndim == 2 and to_probabilities(scores)[1] == (
        "probabilities")


def output_kind(model: keras.Model) -> str:
    """`"probabilities"` when `model` ends in a softmax (a `Softmax` layer,
    a layer with a softmax activation, such as a file `kft.export` wrote
    with `output="probabilities"`, `keras.ops.softmax` called in the
    graph, or a nested model that ends in one), also when layers that
    pass values through (`Activation("linear")`, `Dropout`, `Identity`)
    follow it, else `"logits"`. A model ending in a `Lambda` or a layer of
    your own is run on two random images: rows that are non-negative and
    sum to 1 are probabilities.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...     weights=None, input_shape=(16, 16, 3))
    >>> output_kind(model), output_kind(inference_model(
    ...     model, output="probabilities"))
    ('logits', 'probabilities')
    """
    last = _compat.output_operation(model)
    if last is None:  # no graph (a subclassed model): its last layer
        last = model.layers[-1] if model.layers else None
    else:
        operation, inputs = _compat.tensor_source(model.outputs[0])
        while _passes_through(operation) and len(inputs) == 1:
            operation, inputs = _compat.tensor_source(inputs[0])
        last = operation if operation is not None else last
    if isinstance(last, keras.Model):
        return output_kind(last)  # e.g. a model `attach` wrapped
    if _is_softmax(last):
        return "probabilities"
    try:
        ends = (len(model.inputs), len(model.outputs))
    except (AttributeError, ValueError):  # subclassed or not built
        ends = None
    if (last is not None and _is_opaque(last) and ends == (1, 1)
            and _probes_as_probabilities(model)):
        return "probabilities"
    return "logits"


def resolve_output(model, output):
    """What `model`'s inference graph returns for `output` (`None`: what
    the model returns). A softmax is never applied twice, and logits
    cannot be recovered from a model that ends in one."""
    if output is not None:
        check_choice("output", output, OUTPUTS)
    kind = output_kind(model)
    if output is None:
        return kind
    if output == "logits" and kind == "probabilities":
        raise ValueError(
            f"Argument `output` must be \"probabilities\" or None for model "
            f"{model.name!r}: it already ends in a softmax, so its logits "
            "cannot be recovered. Received: output='logits'")
    return output


def _is_random_augmentation(layer):
    base = base_image_preprocessing_layer()
    return (type(layer).__module__.startswith("kft.augmentation")
            or isinstance(layer, base)
            and type(layer).__name__.startswith("Random"))


def _stock_leaf(layer, replaced, onnx_compatible):
    """The stock (or ONNX-safe) layer standing in for `layer`, or itself."""
    if type(layer) in cpu_convs.LAYER_CLASSES:
        new = type(layer).__mro__[1].from_config(layer.get_config())
        replaced.append((layer, new))
        return new
    if onnx_compatible and type(layer) is keras.layers.MaxPooling2D:
        return SlicedMaxPooling2D.from_config(layer.get_config())
    if type(layer) is Preprocess:
        return preprocessing(layer.mode, layer.input.shape[1:],
                             name=layer.name)
    if _is_random_augmentation(layer):
        return keras.layers.Identity(name=layer.name)
    return layer


def _skip_training_only(layer, *args, **kwargs):
    """Calls `layer`, except a kept source head: its features go on as
    they are (it returns them unchanged; its head serves training only)."""
    if isinstance(layer, KeptSourceHead):
        _, features = args[0]
        return features
    return layer(*args, **kwargs)


def kft_layers(model: keras.Model) -> list:
    """Names of the layers of `model` (nested ones too, the model itself
    included) whose class comes from kft: what plain Keras cannot load.

    Example:
    >>> import kft
    >>> kft_layers(kft.build_classifier("simple_cnn", num_classes=3,
    ...     weights=None, input_shape=(16, 16, 3)))
    ['kft_simple_cnn', 'simple_cnn']
    """
    found = []
    stack = [model]
    while stack:
        layer = stack.pop(0)
        if type(layer).__module__.split(".")[0] == "kft":
            found.append(layer.name)
        if isinstance(layer, keras.Model):
            stack[:0] = list(layer.layers)
    return found


def _plain(model):
    """`model`'s graph as a plain functional model over the same layers."""
    return keras.Model(model.inputs, model.outputs, name=model.name)


def inference_model(model: keras.Model, *, output: Output | None = None,
                    onnx_compatible: bool = False) -> keras.Model:
    """Returns `model`'s inference graph built from stock Keras layers.

    Args:
        model: A built functional model with one image input, e.g. from
            `kft.build_classifier` (also after `kft.fast_cpu_convs`,
            `kft.with_source_head`, or a `kft.BatchAugmentModel`).
        output: `"logits"`, `"probabilities"` (a `Softmax` named
            `"probabilities"` appended, unless the model already ends in a
            softmax) or `None` (what the model returns, see
            `output_kind`). `"logits"` from a model that ends in a softmax
            raises `ValueError`. Defaults to `None`.
        onnx_compatible: Also swap the layers whose ONNX conversion
            onnxruntime rejects (`MaxPooling2D`); the result then holds a
            kft layer, fine for conversion, not for saving. Defaults to
            `False`.

    Returns:
        A functional `keras.Model` named like `model`, sharing its weights.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...     weights=None, input_shape=(16, 16, 3))
    >>> kft_layers(model), kft_layers(inference_model(model))
    (['kft_simple_cnn', 'simple_cnn'], [])
    """
    check_built(model)
    append_softmax = (resolve_output(model, output) == "probabilities"
                      and output_kind(model) == "logits")
    replaced = []

    def clone(layer):
        if isinstance(layer, keras.Model):
            # Recursing here, not with `clone_model(recursive=True)`:
            # Keras rebuilds a nested model with its own class, so a kft
            # Backbone two levels down (a model `attach` wrapped) stayed.
            return _plain(keras.models.clone_model(
                _plain(layer), clone_function=clone,
                call_function=_skip_training_only))
        return _stock_leaf(layer, replaced, onnx_compatible)

    # New layers draw initializer seeds from Python's RNG; leave it as it
    # was (see `kft.fast_cpu_convs`).
    state = random.getstate()
    try:
        with bucketed_draws():  # replaced by the model's weights
            stock = keras.models.clone_model(
                _plain(model), clone_function=clone,
                call_function=_skip_training_only)
        if append_softmax:
            probabilities = keras.layers.Softmax(name="probabilities")(
                stock.outputs[0])
            stock = keras.Model(stock.inputs, probabilities, name=model.name)
    finally:
        random.setstate(state)
    for old, new in replaced:
        # Copies: `predict` donates variable buffers, so two variables must
        # never hold the same array.
        new.set_weights([np.array(v.value) for v in old.weights])
    # Its shared weights may carry a forgetting penalty's terms.
    without_penalty_in_evaluation(stock)
    return stock
