"""The Keras layers kft puts into the models it builds, in one namespace.

`preprocessing` builds a backbone's preprocessing from stock Keras layers
(what `kft.build_classifier` uses, so a saved classifier needs no kft class
for it); `Preprocess` is the same computation as one kft layer, kept for
models saved before. `MixUp`, `CutMix` and `MixUpOrCutMix` come from
`kft.augmentation.mixing`.
"""

from typing import Literal
from typing import get_args

import keras
import numpy as np

from kft._validation import check_choice
from kft._validation import fail_argument
from kft.augmentation.mixing import CutMix
from kft.augmentation.mixing import MixUp
from kft.augmentation.mixing import MixUpOrCutMix

__all__ = ["PREPROCESS_MODES", "CutMix", "MixUp", "MixUpOrCutMix",
           "Preprocess", "preprocessing"]

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


# `keras.applications.imagenet_utils.preprocess_input`'s constants.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _divide_by(value):
    """A `Normalization` computing `x / value` exactly: it divides by
    `sqrt(variance)`, and the square root of a float32 square rounds back
    to the float32 value."""
    value = np.float32(value)
    return keras.layers.Normalization(mean=0.0,
                                      variance=float(value * value))


def _subtract(mean):
    """A `Normalization` computing `x - mean` exactly (variance 1)."""
    return keras.layers.Normalization(mean=list(mean), variance=[1.0] * 3)


def _bgr_flip(height, width):
    """RGB -> BGR with weightless stock layers (exact: slices and a concat)."""
    if height is None or width is None:
        # Read as channels-first, a (batch, height, width, 3) tensor's last
        # two axes are cropped: one channel each, with no static size.
        channel = [keras.layers.Cropping2D(((0, 0), (i, 2 - i)),
                                           data_format="channels_first")
                   for i in (2, 1, 0)]
        return [channel, keras.layers.Concatenate(axis=3)]
    channel = [keras.layers.Cropping3D(((0, 0), (0, 0), (i, 2 - i)))
               for i in (2, 1, 0)]
    return [keras.layers.Reshape((height, width, 3, 1)), channel,
            keras.layers.Concatenate(axis=3),
            keras.layers.Reshape((height, width, 3))]


def preprocessing(mode: PreprocessMode = "none",
                  input_shape: tuple | None = None,
                  name: str = "preprocess") -> keras.layers.Layer:
    """A backbone's preprocessing built from stock Keras layers.

    Computes exactly what `Preprocess(mode)` computes (bit for bit, in
    float32) from `Normalization`, `Rescaling`, `Cropping3D` (or, with an
    unknown height or width, `Cropping2D`), `Reshape` and `Concatenate`
    layers with no weights, so a model holding it loads with plain Keras
    (`safe_mode=True`, no `import kft`), also for a dynamic input size:

    - `"tf"`: `x / 127.5 - 1`;
    - `"torch"`: `(x / 255 - mean) / std` with ImageNet's mean and std;
    - `"caffe"`: RGB to BGR, then ImageNet's BGR mean subtracted (as
      `x - mean_rgb`, then the channel flip);
    - `"none"`: an `Identity` layer.

    Args:
        mode: One of `PREPROCESS_MODES`. Defaults to `"none"`.
        input_shape: `(height, width, channels)`, height and width
            possibly `None`. Needed for `"tf"`, `"torch"` and `"caffe"`
            (the last two: 3 channels only). Defaults to `None`.
        name: The layer's name. Defaults to `"preprocess"`.

    Returns:
        A layer taking pixels in [0, 255]: an `Identity` for `"none"`,
        else a functional `keras.Model` named `name`.

    Raises:
        ValueError: an unknown `mode`, no `input_shape` where one is
            needed, or not 3 channels for `"torch"` / `"caffe"`.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.layers.preprocessing("caffe", (2, 2, 3))
    >>> x = np.random.default_rng(0).uniform(0, 255, (1, 2, 2, 3))
    >>> bool(np.array_equal(layer(x), kft.layers.Preprocess("caffe")(x)))
    True
    """
    check_choice("mode", mode, PREPROCESS_MODES)
    if mode == "none":
        return keras.layers.Identity(name=name)
    if input_shape is None:
        fail_argument("input_shape", f"(height, width, 3) for mode={mode!r}",
                      input_shape)
    height, width = input_shape[:2]
    if mode in ("torch", "caffe") and input_shape[-1] != 3:
        # ImageNet's per-channel statistics: broadcasting them would fail.
        fail_argument("input_shape", f"(height, width, 3) for mode={mode!r} "
                      "(it uses ImageNet's per-channel RGB statistics)",
                      input_shape)
    inputs = keras.Input(tuple(input_shape), name=f"{name}_input")
    if mode == "tf":
        steps = [_divide_by(127.5), keras.layers.Rescaling(1.0, offset=-1.0)]
    elif mode == "torch":
        steps = [_divide_by(255.0), keras.layers.Normalization(
            mean=list(_TORCH_MEAN),
            variance=[float(np.float32(s) * np.float32(s))
                      for s in _TORCH_STD])]
    else:
        steps = [_subtract(_CAFFE_MEAN_BGR[::-1]), *_bgr_flip(height, width)]
    x = inputs
    for step in steps:
        x = [s(x) for s in step] if isinstance(step, list) else step(x)
    return keras.Model(inputs, x, name=name)
