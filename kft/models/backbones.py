"""Creating registered backbones, marked so kft finds them inside models.

A backbone kft creates is a `Backbone`: a functional model whose
`kft_backbone` attribute holds the registered name it was built as. That
attribute, never a layer name, is how kft finds the backbone inside a
classifier (`find_backbone`, `kft.get_blocks`); it is part of the model's
config, so it survives `model.save` and `keras.models.load_model`.

The registry itself (`register_backbone`, `list_backbones`, `get_backbone`,
name resolution) lives in `kft.models.registry`, the specs of the built-in
backbones in `kft.models.backbone_specs`; both are re-exported here.
"""

import numbers
import os
import re
import warnings
import weakref
from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np

from kft import _compat
from kft._validation import check_choice
from kft._validation import fail_argument
from kft.models import init_draws
from kft.models.backbone_specs import BackboneSpec  # noqa: F401 (re-export)
from kft.models.registry import close_backbone_names  # noqa: F401
from kft.models.registry import get_backbone
from kft.models.registry import list_backbones  # noqa: F401
from kft.models.registry import register_backbone  # noqa: F401
from kft.models.registry import resolve_backbone_name  # noqa: F401

# The attribute that marks a model as a kft backbone; its value is the
# registered name.
MARKER = "kft_backbone"
# The first key of the config of kft's saved model classes: Keras prints
# the config of a class it cannot find, so a user loading without kft
# reads what to do at the start of that message.
NEEDS_KFT = ("kft_requires", "import kft first: this model holds kft classes "
             "(pip install kft). kft.export(model, path, format='keras') "
             "writes a file plain Keras loads.")

# `"imagenet"`, `None` (random initialisation) or a local weights file.
Weights = Literal["imagenet"] | str | os.PathLike | None


# Layers of the backbones kft has marked -> registered name. A `Backbone`
# built without a name from such layers (a clone: `kft.fast_cpu_convs`
# keeps every layer it does not replace) is marked like its original.
_MARKED_LAYERS = weakref.WeakKeyDictionary()


@keras.saving.register_keras_serializable(package="kft")
class Backbone(keras.Model):
    """A functional backbone marked with the registered name it was built as.

    Built like a functional model; `kft.create_backbone` returns one.
    Saving and loading keep `kft_backbone` (it is in `get_config`).
    `keras.models.clone_model` rebuilds a model without it: the clone takes
    the name of the marked backbone whose layers it shares, as
    `kft.fast_cpu_convs` clones do (they keep every layer they do not
    replace). A clone with fresh copies of every layer, `clone_model`'s
    default, is unmarked: mark it with `as_backbone`.

    Args:
        *args: `inputs` and `outputs`, as for `keras.Model`.
        kft_backbone: The registered name (`kft.list_backbones()`) whose
            blocks the model's layers follow. Defaults to `None`: the name
            of the marked backbone whose layers the model shares, if any.
        **kwargs: `name`, `trainable`, as for `keras.Model`.

    Attributes:
        kft_backbone: The registered name, or `None`.

    Example:
    >>> import kft
    >>> backbone = kft.create_backbone("simple_cnn", weights=None,
    ...                                input_shape=(16, 16, 3))
    >>> isinstance(backbone, Backbone), backbone.kft_backbone
    (True, 'simple_cnn')
    """

    def __init__(self, *args, kft_backbone: str | None = None, **kwargs):
        kwargs.pop(NEEDS_KFT[0], None)
        super().__init__(*args, **kwargs)
        if kft_backbone is not None and not isinstance(kft_backbone, str):
            fail_argument("kft_backbone", "a registered backbone name or None",
                  kft_backbone, TypeError)
        if kft_backbone is None:
            inherited = {_MARKED_LAYERS.get(layer) for layer in self.layers}
            inherited.discard(None)
            if len(inherited) == 1:
                kft_backbone = inherited.pop()
        self.mark(kft_backbone)

    def mark(self, kft_backbone: str | None) -> None:
        """Sets `kft_backbone` (`None` unmarks); clones of the model's
        layers inherit it."""
        self.kft_backbone = kft_backbone
        for layer in self.layers:
            if kft_backbone is None:
                _MARKED_LAYERS.pop(layer, None)
            else:
                _MARKED_LAYERS[layer] = kft_backbone

    def get_config(self):
        return {NEEDS_KFT[0]: NEEDS_KFT[1], **super().get_config(),
                MARKER: self.kft_backbone}


def backbone_name(layer: keras.layers.Layer) -> str | None:
    """The registered name `layer` is marked with, or `None`.

    Only a `keras.Model` whose `kft_backbone` attribute is set counts: a
    model named like a registered backbone but not created by kft (a plain
    `keras.applications.ResNet50`) is not one.

    Example:
    >>> import kft
    >>> from kft.models.simple_cnn import SimpleCNN
    >>> backbone_name(SimpleCNN(input_shape=(16, 16, 3))) is None
    True
    >>> backbone_name(kft.create_backbone("simple_cnn", weights=None,
    ...                                   input_shape=(16, 16, 3)))
    'simple_cnn'
    """
    if not isinstance(layer, keras.Model):
        return None
    return getattr(layer, MARKER, None)


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The kft backbone of `model`: `model` itself when it is one, else its
    first top-level layer that is one; `None` when there is none.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> find_backbone(model).kft_backbone
    'simple_cnn'
    """
    if backbone_name(model) is not None:
        return model
    for layer in getattr(model, "layers", ()):
        if backbone_name(layer) is not None:
            return layer
    return None


def as_backbone(model: keras.Model, name: str) -> Backbone:
    """Marks a functional model as the registered backbone `name`.

    A `Backbone` is marked in place and returned; any other functional
    model is wrapped in a new `Backbone` over the same layers (weights
    shared, not copied), named after the registered backbone. Use it for a
    `keras.applications` model built by hand, or for a clone.

    Args:
        model: A functional model whose layer names follow the registered
            backbone's blocks.
        name: Registry name (case, `_` and `-` forgiven).

    Returns:
        The marked `Backbone`.

    Example:
    >>> from kft.models.simple_cnn import SimpleCNN
    >>> marked = as_backbone(SimpleCNN(input_shape=(16, 16, 3)), "SimpleCNN")
    >>> marked.kft_backbone, marked.name
    ('simple_cnn', 'simple_cnn')
    """
    spec = get_backbone(name)
    if isinstance(model, Backbone):
        model.mark(spec.name)
        return model
    if not isinstance(model, keras.Model) or not hasattr(model, "outputs"):
        fail_argument("model", "a functional keras.Model", model, TypeError)
    # `inputs` / `outputs`: a built `keras.Sequential` has them too (its
    # `input` raised "never been called").
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        fail_argument("model", "a backbone with one image input and one "
                      "feature-map output", f"{model.name!r} with "
                      f"{len(model.inputs)} inputs, {len(model.outputs)} "
                      "outputs")
    return Backbone(model.inputs[0], model.outputs[0], name=spec.name,
                    kft_backbone=spec.name)


def check_input_shape(input_shape: Sequence | np.ndarray) -> tuple:
    """`input_shape` as a tuple of Python ints (or `None` sizes).

    Sizes may come from numpy (`x.shape[1:]`, `np.int64(224)`).

    Example:
    >>> check_input_shape((np.int64(16), 16, 3))
    (16, 16, 3)
    """
    if isinstance(input_shape, np.ndarray):
        input_shape = input_shape.tolist()
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(d is None or _positive_int(d) for d in input_shape)):
        fail_argument("input_shape", "(height, width, channels) with positive "
              "integer sizes", input_shape)
    return tuple(None if d is None else int(d) for d in input_shape)


def _positive_int(value):
    return (isinstance(value, numbers.Integral)
            and not isinstance(value, (bool, np.bool_)) and value > 0)


def _local_weights_file(weights):
    """`(file or None, weights for the constructor)` of a `weights` value."""
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return None, weights
    if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(
            weights):
        fail_argument("weights", '"imagenet", None or the path of an existing '
              "weights file", weights)
    return os.fspath(weights), None


def create_backbone(name: str, weights: Weights = "imagenet",
                    input_shape: Sequence | None = None,
                    pooling: str | None = None) -> Backbone:
    """Builds a registered backbone without its classification top.

    Args:
        name: Registry name, see `list_backbones()` (case, `_` and `-`
            forgiven, see `get_backbone`).
        weights: `"imagenet"` (Keras' own download and cache), `None` (random
            initialisation) or the path of a local weights file saved from
            the same backbone (`.weights.h5`, or Keras' legacy `.h5`).
            Defaults to `"imagenet"`.
        input_shape: `(height, width, 3)`. Defaults to the backbone's
            default size.
        pooling: `None` (the feature map), `"avg"` or `"max"`: the
            constructor's own pooling (Keras' `pooling=`; ConvNeXt's final
            LayerNorm then normalises the pooled vector, as the original
            model does, not each position). Defaults to `None`.

    Returns:
        A `Backbone` named after the registered backbone, its
        `kft_backbone` set to that name.

    Example:
    >>> import kft
    >>> backbone = kft.create_backbone("simple_cnn", weights=None,
    ...                                input_shape=(32, 32, 3))
    >>> backbone.name, backbone.kft_backbone
    ('simple_cnn', 'simple_cnn')
    """
    spec = get_backbone(name)
    if input_shape is None:
        input_shape = (spec.default_size, spec.default_size, 3)
    input_shape = check_input_shape(input_shape)
    local_file, constructor_weights = _local_weights_file(weights)
    extra = {}
    if pooling is not None:
        extra["pooling"] = check_choice("pooling", pooling, ("avg", "max"))
    try:
        with init_draws.bucketed_draws():
            built = spec.constructor(include_top=False,
                                     weights=constructor_weights,
                                     input_shape=input_shape, **extra)
    except Exception as error:
        # Keras' download raises a bare `Exception` ("URL fetch failure").
        if constructor_weights != "imagenet" or "fetch" not in str(error):
            raise
        raise ValueError(
            f"weights='imagenet' for {spec.name!r}: Keras could not "
            f"download the weights ({str(error)[:200]}). Without network, "
            "pass weights=None (random initialisation; `--weights none` of "
            "the kft command) or the path of a weights file of this "
            "backbone (saved with backbone.save_weights, or Keras' "
            "*_notop.h5).") from error
    model = as_backbone(built, spec.name)
    if local_file is not None:
        # Keras warns once per nested container it skips (8 for simple_cnn,
        # 120 for a ResNet50V2 file given to ResNet101V2) before a wrong
        # file fails: kept for a load that succeeds, dropped for the error
        # below, which says what is wrong.
        # Held back after the user's filters (and once-per-location
        # registries, which `catch_warnings` would reset) chose to show
        # them; shown as they would have been.
        caught, show = [], warnings.showwarning
        warnings.showwarning = lambda *shown: caught.append(shown)
        try:
            error = _load_weights(model, local_file)
        finally:
            warnings.showwarning = show
        if error is not None:
            raise ValueError(_file_error(spec.name, weights, input_shape,
                                         error)) from error
        for shown in caught:
            warnings.showwarning(*shown)
        _match_imagenet_normalization(model)
    # Read by `kft.freeze`: frozen BatchNorm of a randomly initialised
    # backbone keeps random-init statistics.
    model._kft_pretrained = weights is not None
    return model


def _file_error(name, weights, input_shape, error):
    """Why weights file `weights` does not load into backbone `name`.

    Keras names its own objects ("Layer 'stem_conv' expected 1
    variables"); the user needs to know which file is wrong, or, for a
    file of this backbone whose variables have other shapes, which."""
    received = f"Received: weights={os.fspath(weights)!r}"
    shapes = re.search(r"variable\.shape=(\(.*?\)), Received: "
                       r"value\.shape=(\(.*?\))\. Target variable: "
                       r"<Variable path=([^,]+),", str(error))
    if shapes:
        here, saved, path = shapes.groups()
        return (f"Argument `weights` must be a weights file of the {name} "
                f"backbone built for input_shape={tuple(input_shape)}: "
                f"variable {path} has shape {saved} in the file but {here} "
                "here: a file of another backbone, or of this one built "
                f"for another number of input channels. {received}")
    return (f"Argument `weights` must be a weights file of the {name} "
            "backbone alone (saved with backbone.save_weights(...), not a "
            "whole classifier's model.keras or model.save_weights). "
            f"{received}, which does not load ({type(error).__name__}: "
            f"{str(error)[:200]})")


def _load_weights(model, path):
    """`model.load_weights(path)`; the error it raises for a file that
    does not fit (`None` when it loads)."""
    try:
        model.load_weights(path)
    # KeyError: a .keras archive without its weights file inside.
    except (OSError, ValueError, KeyError) as error:
        return error
    return None


# Keras' EfficientNet (B0-B7) ImageNet files store these standard
# deviations as the variance of its `Normalization` layer (a known bug),
# and Keras, for `weights="imagenet"` only, divides by their square root
# once more in an extra `Rescaling` layer.
_EFFICIENTNET_FILE_VARIANCE = (0.229, 0.224, 0.225)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)


def _match_imagenet_normalization(model):
    """Gives a backbone built for a weights file what Keras builds for
    `weights="imagenet"`: an EfficientNet whose file holds ImageNet's
    statistics (Keras' file, or one saved from such a backbone) is
    normalised as Keras' ImageNet model is, `(x - mean) / std`; built
    without the extra `Rescaling` its features were `(x - mean) /
    sqrt(std)` (2.9 apart at the stem). The variance becomes `std ** 2`,
    the same division, so a file saved from this backbone loads as is."""
    for layer in _compat.flatten_layers(model, include_self=False):
        # Layers adapted (or loaded), not given constants: ConvNeXt's.
        if not (isinstance(layer, keras.layers.Normalization)
                and hasattr(layer, "adapt_variance")):
            continue
        mean = np.ravel(np.asarray(layer.adapt_mean))
        variance = np.ravel(np.asarray(layer.adapt_variance))
        if (variance.shape == (3,) and mean.shape == (3,)
                and np.allclose(variance, _EFFICIENTNET_FILE_VARIANCE,
                                atol=1e-6)
                and np.allclose(mean, _IMAGENET_MEAN, atol=1e-6)):
            layer.adapt_variance.assign(np.reshape(
                variance ** 2, layer.adapt_variance.shape))
            layer.finalize_state()
