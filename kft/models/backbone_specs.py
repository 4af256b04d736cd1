"""`BackboneSpec` and the specs of the backbones kft registers.

A block is a run of a backbone's layers that strategies treat as one unit
("unfreeze the last 2 blocks"). Blocks are given as regular expressions over
the names of the backbone's own layers, ordered from the stem to the top.
Layer names inside a backbone are fixed by `keras.applications` (or by
`simple_cnn`), so matching them is how a layer is placed in its block.
"""

import dataclasses
from typing import Callable
from typing import Literal

import keras

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import fail_argument
from kft.layers import PREPROCESS_MODES
from kft.layers import Preprocess
from kft.models import simple_cnn

A = keras.applications

PreprocessMode = Literal["caffe", "tf", "torch", "none"]


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What kft knows of one backbone.

    Attributes:
        name: Registry key, e.g. `"resnet50"`.
        constructor: The `keras.applications` function (or kft's own) that
            builds the backbone; called with `include_top=False`,
            `weights` and `input_shape`.
        preprocess: How raw pixels in [0, 255] are mapped to the backbone's
            input: `"caffe"`, `"tf"`, `"torch"` (the modes of
            `keras.applications.imagenet_utils.preprocess_input`) or `"none"`
            when the backbone rescales its inputs itself.
        default_size: Input side length the weights were trained at.
        blocks: Ordered `(block_name, regex)` pairs, stem first. Every layer
            of the backbone that has weights matches exactly one regex.
        norm_after_pooling: The backbone ends in a normalization the
            original model applies to pooled features (ConvNeXt's
            LayerNorm): `kft.build_classifier` has the constructor pool
            (Keras' `pooling=`) instead of pooling its output. Defaults to
            `False`.

    Example:
    >>> from kft.models.backbone_specs import BackboneSpec
    >>> from kft.models.simple_cnn import BLOCKS, SimpleCNN
    >>> spec = BackboneSpec("tiny_cnn", SimpleCNN, "tf", 32, BLOCKS)
    >>> spec.block_names
    ['stem', 'block1', 'block2', 'block3']
    """

    name: str
    constructor: Callable
    preprocess: PreprocessMode
    default_size: int
    blocks: tuple
    norm_after_pooling: bool = False

    def __post_init__(self):
        check_choice("preprocess", self.preprocess, PREPROCESS_MODES)
        if not callable(self.constructor):
            fail_argument("constructor", "a callable (a keras.applications "
                          "function or one with its arguments)",
                          self.constructor, TypeError)
        check_int("default_size", self.default_size, min_value=1)
        pairs = self.blocks
        if (isinstance(pairs, (str, dict)) or not isinstance(
                pairs, (tuple, list)) or not pairs or not all(
                isinstance(p, (tuple, list)) and len(p) == 2
                and all(isinstance(part, str) for part in p)
                for p in pairs)):
            fail_argument("blocks", "a non-empty sequence of (block name, "
                          "regex) pairs, stem first", pairs, TypeError)
        names = [name for name, _ in pairs]
        if "head" in names:
            # kft's own head block (the classifier's new layers).
            fail_argument("blocks", "block names other than 'head' (kft's "
                          "name for the classifier's new head)", names)
        if len(set(names)) != len(names):
            fail_argument("blocks", "distinct block names", names)

    @property
    def block_names(self) -> list:
        """The block names, stem first."""
        return [name for name, _ in self.blocks]

    def preprocess_input(self, x):
        """Applies the backbone's preprocessing to pixels in [0, 255]."""
        return Preprocess(self.preprocess)(x)


def _blocks(*pairs):
    # Anchored at the start of the layer name: "conv2_" must not match
    # "block_conv2_...".
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
    # EfficientNet (V1) starts with a Normalization layer that has weights
    # (mean and variance); it belongs to the stem.
    stem = r"stem_|normalization(?:_\d+)?$" if normalization else r"stem_"
    pairs = [("stem", stem)]
    pairs += [(f"block{i}", rf"block{i}[a-z]_")
              for i in range(1, n_stages + 1)]
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


def _mobilenet(stages):
    # MobileNet (V1): a stride-2 stem convolution, then 13 depthwise
    # (conv_dw_i) + pointwise (conv_pw_i) pairs, grouped by resolution.
    pairs = [("stem", r"conv1$|conv1_bn$")]
    for k, stage in enumerate(stages, 1):
        numbers = "|".join(str(i) for i in stage)
        pairs.append((f"stage{k}", rf"conv_(?:dw|pw)_(?:{numbers})(?:_bn)?$"))
    return _blocks(*pairs)


def _nasnet(n):
    # NASNet-A: cells named by a suffix, `_<i>` for normal cells and
    # `_reduce_<i>` for the reductions in front of stages 2 and 3; the stem
    # ends in two reduction cells `_stem_1`, `_stem_2`.
    def cells(ids):
        return r".*(?<!stem)(?<!reduce)_(?:" + "|".join(map(str, ids)) + ")$"

    return _blocks(
        ("stem", r"stem_|.*_stem_[12]$"),
        ("stage1", cells(range(n))),
        ("stage2", rf".*_reduce_{n}$|" + cells(range(n + 1, 2 * n + 1))),
        ("stage3", rf".*_reduce_{2 * n}$|"
         + cells(range(2 * n + 1, 3 * n + 1))))


_DENSENET = _blocks(
    ("stem", r"conv1_"),
    ("dense1", r"conv2_|pool2_"),
    ("dense2", r"conv3_|pool3_"),
    ("dense3", r"conv4_|pool4_"),
    ("dense4", r"conv5_|bn$"),
)

_VGG = _blocks(*[(f"block{i}", rf"block{i}_") for i in range(1, 6)])

_EFFICIENTNET_SIZES = [224, 240, 260, 300, 380, 456, 528, 600]


def _efficientnet_v1_specs():
    return [
        BackboneSpec(f"efficientnetb{i}", getattr(A, f"EfficientNetB{i}"),
                     "none", size, _efficientnet(7, normalization=True))
        for i, size in enumerate(_EFFICIENTNET_SIZES)
    ]


# The backbones registered when kft is imported.
BUILTIN_SPECS = (
    BackboneSpec("resnet50", A.ResNet50, "caffe", 224, _RESNET),
    BackboneSpec("resnet101", A.ResNet101, "caffe", 224, _RESNET),
    BackboneSpec("resnet152", A.ResNet152, "caffe", 224, _RESNET),
    BackboneSpec("resnet50v2", A.ResNet50V2, "tf", 224, _RESNET),
    BackboneSpec("resnet101v2", A.ResNet101V2, "tf", 224, _RESNET),
    BackboneSpec("resnet152v2", A.ResNet152V2, "tf", 224, _RESNET),
    *_efficientnet_v1_specs(),
    BackboneSpec("efficientnetv2b0", A.EfficientNetV2B0, "none", 224,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2b1", A.EfficientNetV2B1, "none", 240,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2b2", A.EfficientNetV2B2, "none", 260,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2b3", A.EfficientNetV2B3, "none", 300,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2s", A.EfficientNetV2S, "none", 384,
                 _efficientnet(6)),
    BackboneSpec("efficientnetv2m", A.EfficientNetV2M, "none", 480,
                 _efficientnet(7)),
    BackboneSpec("efficientnetv2l", A.EfficientNetV2L, "none", 480,
                 _efficientnet(7)),
    BackboneSpec("convnext_tiny", A.ConvNeXtTiny, "none", 224,
                 _convnext("tiny"), norm_after_pooling=True),
    BackboneSpec("convnext_small", A.ConvNeXtSmall, "none", 224,
                 _convnext("small"), norm_after_pooling=True),
    BackboneSpec("convnext_base", A.ConvNeXtBase, "none", 224,
                 _convnext("base"), norm_after_pooling=True),
    BackboneSpec("convnext_large", A.ConvNeXtLarge, "none", 224,
                 _convnext("large"), norm_after_pooling=True),
    BackboneSpec("convnext_xlarge", A.ConvNeXtXLarge, "none", 224,
                 _convnext("xlarge"), norm_after_pooling=True),
    BackboneSpec("mobilenet", A.MobileNet, "tf", 224,
                 _mobilenet([[1], [2, 3], [4, 5], range(6, 12), [12, 13]])),
    BackboneSpec("mobilenetv2", A.MobileNetV2, "tf", 224,
                 _mobilenetv2([[1, 2], [3, 4, 5], [6, 7, 8, 9], [10, 11, 12],
                               [13, 14, 15], [16]])),
    BackboneSpec("mobilenetv3small", A.MobileNetV3Small, "none", 224,
                 _mobilenetv3([[0], [1, 2], [3, 4, 5, 6, 7], [8, 9, 10]])),
    BackboneSpec("mobilenetv3large", A.MobileNetV3Large, "none", 224,
                 _mobilenetv3([[0], [1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11],
                               [12, 13, 14]])),
    BackboneSpec("nasnetmobile", A.NASNetMobile, "tf", 224, _nasnet(4)),
    BackboneSpec("nasnetlarge", A.NASNetLarge, "tf", 331, _nasnet(6)),
    BackboneSpec("densenet121", A.DenseNet121, "torch", 224, _DENSENET),
    BackboneSpec("densenet169", A.DenseNet169, "torch", 224, _DENSENET),
    BackboneSpec("densenet201", A.DenseNet201, "torch", 224, _DENSENET),
    BackboneSpec("vgg16", A.VGG16, "caffe", 224, _VGG),
    BackboneSpec("vgg19", A.VGG19, "caffe", 224, _VGG),
    BackboneSpec("simple_cnn", simple_cnn.SimpleCNN, "tf", 32,
                 simple_cnn.BLOCKS),
)
