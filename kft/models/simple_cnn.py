"""A small convolutional backbone for CPU demos and tests.

It has the shape of the big ones (stem, stages of conv + BatchNorm, each
halving the resolution) so that every strategy means the same thing, while
compiling and training in seconds on two CPU cores. No pretrained weights
exist for it: pretrain it on a source task (see `kft demo`).
"""

import numbers

import keras

from kft._validation import check_choice
from kft._validation import fail_argument

BLOCKS = (
    ("stem", r"^stem_"),
    ("block1", r"^block1_"),
    ("block2", r"^block2_"),
    ("block3", r"^block3_"),
)


def SimpleCNN(include_top: bool = False, weights: None = None,
              input_shape: tuple | None = None,
              widths: tuple = (16, 32, 64),
              pooling: str | None = None) -> keras.Model:
    """Builds the backbone: a stem and three conv-BN-ReLU stages.

    Args:
        include_top: Must be `False`; kft adds its own head. Defaults to
            `False`.
        weights: Must be `None` (no published weights). Defaults to `None`.
        input_shape: `(height, width, channels)`. Defaults to `(32, 32, 3)`.
        widths: Filters of the three stages, positive integers. Defaults
            to `(16, 32, 64)`.
        pooling: `None`, `"avg"` or `"max"`, as in `keras.applications`.
            Defaults to `None`.

    Returns:
        A functional `keras.Model` mapping images to a feature map (or,
        with `pooling`, to pooled features).

    Example:
    >>> from kft.models.simple_cnn import SimpleCNN
    >>> SimpleCNN(input_shape=(32, 32, 3)).output.shape
    (None, 4, 4, 64)
    """
    if include_top:
        fail_argument("include_top", "False: SimpleCNN has no classification top "
              "(kft.build_classifier adds one)", include_top)
    if weights is not None:
        fail_argument("weights", "None: SimpleCNN has no published weights (pretrain "
              "it, or load a local weights file)", weights)
    if (not isinstance(widths, (tuple, list)) or len(widths) != len(BLOCKS) - 1
            or not all(isinstance(w, numbers.Integral) and w > 0
                       for w in widths)):
        fail_argument("widths", "three positive integers, one per stage", widths)
    inputs = keras.Input(input_shape or (32, 32, 3))
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False,
                            name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(widths, 1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same",
                                use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
    if pooling is not None:
        check_choice("pooling", pooling, ("avg", "max"))
        x = (keras.layers.GlobalAveragePooling2D() if pooling == "avg"
             else keras.layers.GlobalMaxPooling2D())(x)
    return keras.Model(inputs, x, name="simple_cnn")
