"""Splitting a model's head off, to train it alone on cached features.

The head is the one `kft.get_blocks` defines (`kft.models.blocks.
head_layers`): the layers with weights after the model's kft backbone.
"""

import keras

from kft import _compat
from kft.models.blocks import head_layers
from kft.models.blocks import wrapped_model


def _first_head_layer(model):
    """The head's first layer with weights; raises for a model without."""
    layers = head_layers(model)
    if not layers:
        raise ValueError(
            "The model has no head layer with weights to train on cached "
            "features: kft's head is the layers with weights after the "
            "model's kft backbone (`kft.get_blocks(model)['head']`, as in "
            "a `kft.build_classifier` model), and this model has no "
            f"\"head\" block. Top-level layers: "
            f"{[layer.name for layer in model.layers]}"
        )
    return layers[0]


def wrapper_features(model, inner, features_model):
    """`features_model` (of `inner`, the model `model` wraps: see
    `kft.models.blocks.wrapped_model`) fed from `model`'s input, through
    the wrapper's weightless layers: the head is the wrapped classifier's.
    """
    called_on = _compat.call_inputs(inner)[0][0]
    return keras.Model(model.inputs, features_model(called_on),
                       name=f"{model.name}_features")


def split_head(model):
    """Splits a model into a feature model and a head model sharing layers.

    The split is before the head's first layer with weights: weightless
    layers in front of it (the pooling) go into the feature model, so the
    cached features are as small as possible. From there to the output
    the model must be a chain of single-input layers (as
    `kft.build_classifier` builds it).

    Args:
        model: A functional model with a head (see the module docstring),
            such as a `kft.build_classifier` model, or a wrapper of one
            (`kft.models.blocks.wrapped_model`).

    Returns:
        `(features_model, head_model)`. `head_model` uses the model's own
        head layer objects and variables.

    Raises:
        ValueError: no head layer with weights, or a head that is not a
            chain.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                              input_shape=(16, 16, 3))
    >>> features, head = kft.feature_cache.split_head(model)
    >>> features.output.shape, head.output.shape
    ((None, 64), (None, 3))
    """
    inner = wrapped_model(model)
    if inner is not None:
        features, head = split_head(inner)
        return wrapper_features(model, inner, features), head
    first = _first_head_layer(model)
    layers = list(model.layers)
    chain = layers[[id(layer) for layer in layers].index(id(first)):]
    for previous, layer in zip(chain, chain[1:]):
        if layer.input is not previous.output:
            raise ValueError(
                "kft can train only a head that is a chain of layers on "
                f"cached features; layer {layer.name!r} does not take the "
                f"output of {previous.name!r}."
            )
    if len(model.outputs) != 1:
        raise ValueError(
            "kft can train only a single-output head on cached features; "
            f"the model has {len(model.outputs)} outputs.")
    if chain[-1].output is not model.outputs[0]:
        raise ValueError(
            "kft can train only a single-output head on cached features; "
            f"the model's output is not the output of {chain[-1].name!r}."
        )
    feature_output = first.input
    features_model = keras.Model(model.inputs, feature_output,
                                 name=f"{model.name}_features")
    inputs = keras.Input(feature_output.shape[1:], name="features")
    x = inputs
    for layer in chain:
        x = layer(x)
    head_model = keras.Model(inputs, x, name=f"{model.name}_head")
    return features_model, head_model
