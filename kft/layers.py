"""The Keras layers kft puts into the models it builds, in one namespace.

`Preprocess` is defined here; `MixUp`, `CutMix` and `MixUpOrCutMix` come
from `kft.augmentation.mixing`.
"""

from typing import Literal
from typing import get_args

import keras

from kft._validation import check_choice
from kft.augmentation.mixing import CutMix
from kft.augmentation.mixing import MixUp
from kft.augmentation.mixing import MixUpOrCutMix

__all__ = ["PREPROCESS_MODES", "CutMix", "MixUp", "MixUpOrCutMix",
           "Preprocess"]

PreprocessMode = Literal["caffe", "tf", "torch", "none"]
PREPROCESS_MODES = get_args(PreprocessMode)


@keras.saving.register_keras_serializable(package="kft")
class Preprocess(keras.layers.Layer):
    """Maps pixels in [0, 255] to what a pretrained backbone expects.

    A serializable layer around
    `keras.applications.imagenet_utils.preprocess_input`, so the model takes
    raw images and saves with its preprocessing.

    Args:
        mode: `"caffe"` (RGB to BGR, ImageNet mean subtracted), `"tf"`
            (scaled to [-1, 1]), `"torch"` (scaled to [0, 1], ImageNet mean
            and std) or `"none"` (the backbone rescales by itself). Defaults
            to `"none"`.

    Example:
    >>> import numpy as np, kft
    >>> kft.layers.Preprocess("tf")(np.full((1, 2, 2, 3), 255.0))[0, 0, 0]
    Array([1., 1., 1.], dtype=float32)
    """

    def __init__(self, mode: PreprocessMode = "none", **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice("mode", mode, PREPROCESS_MODES)

    def call(self, inputs):
        inputs = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "none":
            return inputs
        return keras.applications.imagenet_utils.preprocess_input(
            inputs, mode=self.mode
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
