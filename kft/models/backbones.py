"""Registry of pretrained backbones, each split into ordered named blocks.

A block is a run of a backbone's layers that strategies treat as one unit
("unfreeze the last 2 blocks"). Blocks are given as regular expressions over
the names of the backbone's own layers, ordered from the stem to the top.
"""

import dataclasses
import difflib
import fnmatch
import numbers
import os
from typing import Callable

import keras
import numpy as np

from kft.models import simple_cnn

A = keras.applications


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What kft knows of one backbone.

    Attributes:
        name: Registry key, e.g. `"resnet50"`.
        constructor: The `keras.applications` function (or kft's own) that
            builds the backbone; called with `include_top=False`.
        preprocess: How raw pixels in [0, 255] are mapped to the backbone's
            input: `"caffe"`, `"tf"`, `"torch"` (the modes of
            `keras.applications.imagenet_utils.preprocess_input`) or `"none"`
            when the backbone rescales its inputs itself.
        default_size: Input side length the weights were trained at.
        blocks: Ordered `(block_name, regex)` pairs, stem first. Every layer
            of the backbone that has weights matches exactly one regex.
    """

    name: str
    constructor: Callable
    preprocess: str
    default_size: int
    blocks: tuple

    @property
    def block_names(self):
        return [name for name, _ in self.blocks]

    def preprocess_input(self, x):
        """Applies the backbone's preprocessing to pixels in [0, 255]."""
        from kft.layers import Preprocess

        return Preprocess(self.preprocess)(x)


_REGISTRY = {}


def register_backbone(spec):
    """Adds a `BackboneSpec` to the registry (replacing one of the same name)."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(
            "Argument `spec` must be a kft.BackboneSpec. "
            f"Received: spec={spec!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(pattern="*"):
    """Names of the registered backbones that match a shell-style pattern.

    Args:
        pattern: `fnmatch` pattern, matched case-insensitively, e.g.
            `"efficientnet*"`. Defaults to `"*"`.

    Returns:
        Sorted list of names.

    Example:
    >>> import kft
    >>> kft.list_backbones("ResNet5*")
    ['resnet50', 'resnet50v2']
    """
    if not isinstance(pattern, str):
        raise TypeError(
            "Argument `pattern` must be a string such as 'resnet*'. "
            f"Received: pattern={pattern!r}"
        )
    pattern = pattern.lower()
    return sorted(n for n in _REGISTRY
                  if fnmatch.fnmatchcase(n.lower(), pattern))


def _canonical(name):
    # "EfficientNet-B0", "efficientnet_b0" and "efficientnetb0" compare equal.
    return name.lower().replace("_", "").replace("-", "")


def resolve_backbone_name(name):
    """The registered name `name` refers to, or `None`.

    An exact name wins; otherwise the match ignores case, then `_` and `-`,
    as long as exactly one registered name is left.

    Example:
    >>> from kft.models.backbones import resolve_backbone_name
    >>> resolve_backbone_name("EfficientNet_B0")
    'efficientnetb0'
    """
    if not isinstance(name, str):
        return None
    if name in _REGISTRY:
        return name
    for key in (str.lower, _canonical):
        hits = [n for n in _REGISTRY if key(n) == key(name)]
        if len(hits) == 1:
            return hits[0]
    return None


def close_backbone_names(name, n=3):
    """Registered names that look like `name` (`difflib`, case, `_` and `-`
    ignored); the suggestions of the unknown-backbone error.

    Example:
    >>> from kft.models.backbones import close_backbone_names
    >>> close_backbone_names("resnet5")
    ['resnet50', 'resnet152', 'resnet50v2']
    """
    text = _canonical(str(name).strip("*?[]"))
    by_key = {}
    for registered in sorted(_REGISTRY):
        by_key.setdefault(_canonical(registered), []).append(registered)
    matches = difflib.get_close_matches(text, list(by_key), n=n, cutoff=0.6)
    return [registered for key in matches for registered in by_key[key]][:n]


def _one_of(names):
    quoted = [repr(n) for n in names]
    return (", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1
            else quoted[0])


def get_backbone(name):
    """The `BackboneSpec` registered under `name`.

    `name` may differ from the registered one in case, `_` and `-` when
    that leaves one candidate: `"ResNet50"` and timm's `"efficientnet_b0"`
    find `"resnet50"` and `"efficientnetb0"`.

    Raises:
        ValueError: if `name` is not registered; the message suggests close
            names and lists all of them.

    Example:
    >>> import kft
    >>> kft.get_backbone("ResNet50").name
    'resnet50'
    """
    resolved = resolve_backbone_name(name)
    if resolved is None:
        close = close_backbone_names(name)
        hint = f" Did you mean {_one_of(close)}?" if close else ""
        raise ValueError(
            f"Unknown backbone: {name!r}.{hint} Known backbones: "
            f"{', '.join(list_backbones())}."
        )
    return _REGISTRY[resolved]


def check_input_shape(input_shape):
    """`input_shape` as a tuple of Python ints (or `None` sizes).

    Sizes may come from numpy (`x.shape[1:]`, `np.int64(224)`).

    >>> check_input_shape((np.int64(16), 16, 3))
    (16, 16, 3)
    """
    if isinstance(input_shape, np.ndarray):
        input_shape = input_shape.tolist()
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3
            or not all(d is None or (isinstance(d, numbers.Integral)
                                     and not isinstance(d, bool) and d > 0)
                       for d in input_shape)):
        raise ValueError(
            "Argument `input_shape` must be (height, width, channels) with "
            f"positive integer sizes. Received: input_shape={input_shape!r}"
        )
    return tuple(None if d is None else int(d) for d in input_shape)


def create_backbone(name, weights="imagenet", input_shape=None):
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

    Returns:
        A `keras.Model` named after the registered backbone.

    Example:
    >>> import kft
    >>> backbone = kft.create_backbone("simple_cnn", weights=None,
    ...                                input_shape=(32, 32, 3))
    >>> backbone.name
    'simple_cnn'
    """
    spec = get_backbone(name)
    if input_shape is None:
        input_shape = (spec.default_size, spec.default_size, 3)
    input_shape = check_input_shape(input_shape)
    pretrained = weights is not None
    local_file = None
    if weights is not None and weights != "imagenet":
        if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(
            weights
        ):
            raise ValueError(
                'Argument `weights` must be "imagenet", None or the path of '
                f"an existing weights file. Received: weights={weights!r}"
            )
        local_file, weights = os.fspath(weights), None
    model = spec.constructor(
        include_top=False, weights=weights, input_shape=input_shape
    )
    # The registered name, not an alias: `kft.get_blocks` finds the
    # backbone by it.
    model.name = spec.name
    if local_file is not None:
        model.load_weights(local_file)
    # Read by `kft.freeze`: frozen BatchNorm of a randomly initialised
    # backbone keeps random-init statistics.
    model._kft_pretrained = pretrained
    return model


def _blocks(*pairs):
    return tuple((name, "^(?:" + regex + ")") for name, regex in pairs)


_RESNET = _blocks(
    ("stem", r"conv1_"),
    ("conv2", r"conv2_"),
    ("conv3", r"conv3_"),
    ("conv4", r"conv4_"),
    # ResNetV2 ends in a final batch norm on conv5's output.
    ("conv5", r"conv5_|post_"),
)


def _efficientnet(n_stages, normalization=False):
    stem = r"stem_|normalization(?:_\d+)?$" if normalization else r"stem_"
    pairs = [("stem", stem)]
    pairs += [(f"block{i}", rf"block{i}[a-z]_") for i in range(1, n_stages + 1)]
    pairs += [("top", r"top_")]
    return _blocks(*pairs)


def _convnext(size):
    prefix = f"convnext_{size}_"
    pairs = [("stem", prefix + "stem")]
    for i in range(4):
        regex = prefix + f"stage_{i}_"
        if i > 0:
            # The downsampling layer in front of stage i belongs to it.
            regex += "|" + prefix + f"downsampling_block_{i - 1}$"
        pairs.append((f"stage{i}", regex))
    pairs.append(("head_norm", r"layer_normalization(?:_\d+)?$"))
    return _blocks(*pairs)


def _mobilenetv3(stages):
    pairs = [("stem", r"conv$|conv_bn$")]
    for k, stage in enumerate(stages, 1):
        # Block 0 carries no number: expanded_conv_depthwise, ...
        regex = "|".join(
            r"expanded_conv_(?!\d)" if i == 0 else rf"expanded_conv_{i}_"
            for i in stage
        )
        pairs.append((f"stage{k}", regex))
    pairs.append(("top", r"conv_1$|conv_1_bn$"))
    return _blocks(*pairs)


def _mobilenetv2(stages):
    pairs = [("stem", r"Conv1$|bn_Conv1$"), ("stage1", r"expanded_conv_")]
    for k, stage in enumerate(stages, 2):
        pairs.append((f"stage{k}", "|".join(rf"block_{i}_" for i in stage)))
    pairs.append(("top", r"Conv_1$|Conv_1_bn$"))
    return _blocks(*pairs)


_DENSENET = _blocks(
    ("stem", r"conv1_"),
    ("dense1", r"conv2_|pool2_"),
    ("dense2", r"conv3_|pool3_"),
    ("dense3", r"conv4_|pool4_"),
    ("dense4", r"conv5_|bn$"),
)

_VGG = _blocks(*[(f"block{i}", rf"block{i}_") for i in range(1, 6)])

_EFFICIENTNET_SIZES = [224, 240, 260, 300, 380, 456, 528, 600]

for _spec in [
    BackboneSpec("resnet50", A.ResNet50, "caffe", 224, _RESNET),
    BackboneSpec("resnet101", A.ResNet101, "caffe", 224, _RESNET),
    BackboneSpec("resnet152", A.ResNet152, "caffe", 224, _RESNET),
    BackboneSpec("resnet50v2", A.ResNet50V2, "tf", 224, _RESNET),
    BackboneSpec("resnet101v2", A.ResNet101V2, "tf", 224, _RESNET),
    *[
        BackboneSpec(
            f"efficientnetb{i}",
            getattr(A, f"EfficientNetB{i}"),
            "none",
            size,
            _efficientnet(7, normalization=True),
        )
        for i, size in enumerate(_EFFICIENTNET_SIZES)
    ],
    BackboneSpec("efficientnetv2b0", A.EfficientNetV2B0, "none", 224,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2b1", A.EfficientNetV2B1, "none", 240,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2s", A.EfficientNetV2S, "none", 384,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2m", A.EfficientNetV2M, "none", 480,
                 _efficientnet(7)),
    BackboneSpec("convnext_tiny", A.ConvNeXtTiny, "none", 224,
                 _convnext("tiny")),
    BackboneSpec("convnext_small", A.ConvNeXtSmall, "none", 224,
                 _convnext("small")),
    BackboneSpec("convnext_base", A.ConvNeXtBase, "none", 224,
                 _convnext("base")),
    BackboneSpec("mobilenetv2", A.MobileNetV2, "tf", 224,
                 _mobilenetv2([[1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12],
                               [13, 14, 15], [16]])),
    BackboneSpec("mobilenetv3small", A.MobileNetV3Small, "none", 224,
                 _mobilenetv3([[0], [1, 2], [3, 4, 5, 6, 7], [8, 9, 10]])),
    BackboneSpec("mobilenetv3large", A.MobileNetV3Large, "none", 224,
                 _mobilenetv3([[0], [1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11],
                               [12, 13, 14]])),
    BackboneSpec("densenet121", A.DenseNet121, "torch", 224, _DENSENET),
    BackboneSpec("densenet169", A.DenseNet169, "torch", 224, _DENSENET),
    BackboneSpec("vgg16", A.VGG16, "caffe", 224, _VGG),
    BackboneSpec("vgg19", A.VGG19, "caffe", 224, _VGG),
    BackboneSpec("simple_cnn", simple_cnn.SimpleCNN, "tf", 32,
                 simple_cnn.BLOCKS),
]:
    register_backbone(_spec)
