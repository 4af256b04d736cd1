"""Keras layers kft puts into the models it builds."""

import keras

from kft.augmentation.mixing import CutMix  # noqa: F401  (re-exported, issue 6)
from kft.augmentation.mixing import MixUp  # noqa: F401
from kft.augmentation.mixing import MixUpOrCutMix  # noqa: F401

PREPROCESS_MODES = ("caffe", "tf", "torch", "none")


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

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(
                f"Argument `mode` must be one of {PREPROCESS_MODES}. "
                f"Received: mode={mode!r}"
            )
        self.mode = mode

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
