"""Augmentation layers with torchvision's semantics, where Keras' differ.

The "standard" preset is the seeds' torchvision recipe; five of its
transforms have no Keras layer that draws the same way:

- `RandomResizedCrop`: a crop of random area, aspect ratio and position
  per image, resized back (Keras' `RandomZoom` zooms about the centre);
- `RandomBrightnessScale`: brightness as a factor (torchvision's
  `ColorJitter(brightness=b)`), where Keras' `RandomBrightness` adds;
- `RandomContrastScale`, `RandomSaturationScale`: blends with the
  grayscale image's mean and with the grayscale image (`ColorJitter`'s
  contrast and saturation), where Keras' layers blend each channel with
  its own mean and scale the HSV saturation;
- `GaussianBlur`: one isotropic sigma per image (Keras' layer draws one
  `(sigma_x, sigma_y)` pair per batch).

Each draws from its own `SeedGenerator` (its state is the layer's one
variable, so the host pipeline runs it statelessly) and is active only with
`training=True`. Like Keras' random layers they take a batch or one image.
"""

import math

import keras
from keras import ops

from kft import _compat
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft.ops import image_ops


def _range(name, value, low, high=None):
    """A `(min, max)` pair of numbers in [low, high], min <= max."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Argument `{name}` must be a (min, max) pair. "
                         f"Received: {name}={value!r}")
    first = check_number(f"{name}[0]", value[0], low=low, high=high)
    second = check_number(f"{name}[1]", value[1], low=low, high=high)
    if first > second:
        raise ValueError(f"Argument `{name}` must be a (min, max) pair with "
                         f"min <= max. Received: {name}={tuple(value)!r}")
    return first, second


TRACED_CALL_HINT = """\
A {name} layer called directly inside a traced JAX function (jax.jit, \
jax.grad, ...) would bake its seed state into the trace: every call would \
draw the same transform, and the layer would keep a leaked tracer as its \
state. Carry the seed state through the function instead:

    @jax.jit
    def augment(state, images):
        return layer.stateless_call([], state, images, training=True)

    state = [v.value for v in layer.non_trainable_variables]
    images, state = augment(state, images)  # a new draw per call

or put the layer in the model (kft.augmentation.attach), where `fit` \
carries the state."""


def refuse_direct_trace(layer):
    """Raises `TRACED_CALL_HINT` for `layer` when it is called inside a
    traced function outside a stateless scope; called before any draw (a
    draw would assign a tracer to the seed state)."""
    if _compat.is_traced() and not _compat.in_stateless_scope():
        raise RuntimeError(TRACED_CALL_HINT.format(name=type(layer).__name__))


class RandomLayer(keras.layers.Layer):
    """Base of the layers here: a seed generator, identity outside
    training, a batch or one image."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        # NumPy integers too (Keras' SeedGenerator takes Python ints only).
        self.seed = None if seed is None else check_seed(seed)
        self.generator = keras.random.SeedGenerator(self.seed)
        self.supports_masking = False
        # No weights to create: `stateless_call` works before any call.
        self.built = True

    def uniform(self, batch, low=0.0, high=1.0):
        return keras.random.uniform((batch,), low, high,
                                    seed=self.generator)

    def call(self, images, training=True):
        if not training:
            return images
        refuse_direct_trace(self)
        images = ops.cast(images, self.compute_dtype)
        if len(images.shape) == 3:  # one image
            return self.transform(images[None], 1)[0]
        if len(images.shape) != 4:
            raise ValueError(
                f"{type(self).__name__} takes images of shape (batch, "
                "height, width, channels) or (height, width, channels). "
                f"Received: images.shape={tuple(images.shape)}")
        return self.transform(images, ops.shape(images)[0])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="kft")
class RandomResizedCrop(RandomLayer):
    """torchvision's `RandomResizedCrop` at the images' own size.

    Per image: an area fraction from `scale`, an aspect ratio from `ratio`
    (uniform in its logarithm), redrawn up to 10 times until the crop fits
    in the image, at a uniformly random position (else, as torchvision,
    the largest centred crop whose aspect ratio is within `ratio`: the
    whole image when its own is), resized back to the image size with
    bilinear interpolation.

    Args:
        scale: `(min, max)` fraction of the image area. Defaults to
            `(0.08, 1.0)`, as torchvision's.
        ratio: `(min, max)` width / height. Defaults to `(3/4, 4/3)`.
        seed: Seed of the draws.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomResizedCrop((0.8, 1.0), seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def __init__(self, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.scale = _range("scale", scale, 0.0, 1.0)
        if self.scale[1] <= 0:
            raise ValueError("Argument `scale` must allow an area above 0. "
                             f"Received: scale={tuple(scale)!r}")
        self.ratio = _range("ratio", ratio, 1e-6)

    def transform(self, images, batch):
        height, width = images.shape[1], images.shape[2]
        # torchvision's 10 tries: the first area and ratio whose crop fits
        # in the image, else the centred crop of the whole image's
        # ratio clipped to `ratio`.
        tries = (batch, 10)
        area = keras.random.uniform(tries, *self.scale, seed=self.generator)
        ratio = ops.exp(keras.random.uniform(
            tries, math.log(self.ratio[0]), math.log(self.ratio[1]),
            seed=self.generator))
        # Crop sides as fractions of the image's (in pixels, so a
        # non-square image's ratio is the crop's width / height in pixels);
        # the crop spans [x0, x0 + w] of the image's [0, 1].
        w = ops.sqrt(area * ratio * height / width)
        h = ops.sqrt(area / ratio * width / height)
        fits = ops.logical_and(w <= 1.0, h <= 1.0)
        first = ops.expand_dims(ops.argmax(ops.cast(fits, "int32"), axis=1),
                                1)
        found = ops.any(fits, axis=1)
        own = width / height
        low, high = self.ratio
        fallback_w = min(1.0, high / own)  # a wider image: cut its sides
        fallback_h = min(1.0, own / low)  # a taller one: its top and bottom
        w = ops.where(found, ops.take_along_axis(w, first, axis=1)[:, 0],
                      fallback_w)
        h = ops.where(found, ops.take_along_axis(h, first, axis=1)[:, 0],
                      fallback_h)
        x0 = ops.where(found, self.uniform(batch) * (1.0 - w),
                       (1.0 - w) / 2)
        y0 = ops.where(found, self.uniform(batch) * (1.0 - h),
                       (1.0 - h) / 2)
        zeros = ops.zeros_like(w)
        # Output pixel centre (x + 0.5) reads the image at x0 W + (x +
        # 0.5) w, pixel centre coordinates: column = w x + (x0 W + w/2 -
        # 1/2).
        transform = ops.stack(
            [w, zeros, x0 * width + 0.5 * w - 0.5,
             zeros, h, y0 * height + 0.5 * h - 0.5, zeros, zeros], axis=-1)
        if keras.backend.backend() == "jax":
            return image_ops.affine_transform(
                images, transform, interpolation="bilinear",
                fill_mode="nearest", axis_aligned=True)
        return ops.image.affine_transform(
            images, transform, interpolation="bilinear", fill_mode="nearest")

    def get_config(self):
        return {**super().get_config(), "scale": self.scale,
                "ratio": self.ratio}


# torchvision's `rgb_to_grayscale` weights (ITU-R 601-2 luma).
_LUMA = (0.2989, 0.587, 0.114)


def _check_rgb(images):
    if images.shape[-1] != 3:
        raise ValueError(
            "Contrast and saturation take RGB images (3 channels). "
            f"Received: images.shape={tuple(images.shape)}")


def _gray(images):
    """`(batch, height, width, 1)` luma of RGB `images`."""
    _check_rgb(images)
    # Three multiply-adds, not a sum over the last axis: XLA's CPU code for
    # that reduction took 8x the time of the whole blend.
    red, green, blue = (images[..., i:i + 1] for i in range(3))
    return _LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue


class _Blend(RandomLayer):
    """Each image blended with `gray(images)` by one factor drawn in
    `[max(0, 1 - factor), 1 + factor]` (torchvision's `ColorJitter`),
    clipped to `value_range`; `factor` at most `max_factor`."""

    max_factor = None

    def __init__(self, factor=0.2, value_range=(0, 255), seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.factor = check_number("factor", factor, low=0.0,
                                   high=self.max_factor)
        self.value_range = _range("value_range", value_range, -math.inf)

    def transform(self, images, batch):
        scale = self.uniform(batch, max(0.0, 1.0 - self.factor),
                             1.0 + self.factor)
        scale = ops.cast(ops.reshape(scale, (-1, 1, 1, 1)), images.dtype)
        gray = self.gray(images)
        return ops.clip(scale * images + (1 - scale) * gray,
                        *self.value_range)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor,
                "value_range": self.value_range}


@keras.saving.register_keras_serializable(package="kft")
class RandomBrightnessScale(_Blend):
    """Brightness as torchvision's `ColorJitter(brightness=factor)`:
    every pixel times one factor per image, drawn in
    `[1 - factor, 1 + factor]`, clipped to `value_range` (torchvision's
    blend with a black image).

    Args:
        factor: The factor's spread, in [0, 1]. Defaults to `0.2`.
        value_range: The pixels' `(min, max)`. Defaults to `(0, 255)`.
        seed: Seed of the draws.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomBrightnessScale(0.2, seed=0)
    >>> out = np.asarray(layer(np.full((4, 2, 2, 3), 100.0), training=True))
    >>> bool(((out >= 80) & (out <= 120)).all())
    True
    """

    max_factor = 1.0

    def gray(self, images):
        return 0.0  # any number of channels


@keras.saving.register_keras_serializable(package="kft")
class RandomContrastScale(_Blend):
    """Contrast as torchvision's `ColorJitter(contrast=factor)`: each RGB
    image blended with the mean of its grayscale version, by a factor drawn
    per image in `[max(0, 1 - factor), 1 + factor]`, then clipped to
    `value_range` (Keras' `RandomContrast` blends each channel with its
    own mean).

    Args:
        factor: The factor's spread, >= 0. Defaults to `0.2`.
        value_range: The pixels' `(min, max)`. Defaults to `(0, 255)`.
        seed: Seed of the draws.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomContrastScale(0.2, seed=0)
    >>> pair = np.zeros((4, 1, 2, 3), "float32"); pair[:, 0, 1] = 40.0
    >>> out = np.asarray(layer(pair, training=True))
    >>> spread = out[:, 0, 1, 0] - out[:, 0, 0, 0]
    >>> bool(((spread >= 32) & (spread <= 48)).all())
    True
    """

    def gray(self, images):
        # The luma of the channels' means is the mean of the luma. Rows,
        # then columns, as Keras' contrast: XLA's CPU code for one
        # reduction over both took 3x as long.
        _check_rgb(images)  # the images' shape in the error, not the means'
        means = ops.mean(ops.mean(images, axis=1, keepdims=True), axis=2,
                         keepdims=True)
        return _gray(means)


@keras.saving.register_keras_serializable(package="kft")
class RandomSaturationScale(_Blend):
    """Saturation as torchvision's `ColorJitter(saturation=factor)`: each
    RGB image blended with its grayscale version, pixel by pixel, by a
    factor drawn per image in `[max(0, 1 - factor), 1 + factor]`, then
    clipped to `value_range` (Keras' `RandomSaturation` scales the HSV
    saturation and clips it, not the pixels: an oversaturated orange
    turned red, with negative pixels).

    Args:
        factor: The factor's spread, >= 0. Defaults to `0.2`.
        value_range: The pixels' `(min, max)`. Defaults to `(0, 255)`.
        seed: Seed of the draws.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomSaturationScale(0.2, seed=0)
    >>> gray = np.full((2, 3, 3, 3), 90.0, "float32")  # gray stays gray
    >>> bool(np.allclose(layer(gray, training=True), 90.0, atol=1e-3))
    True
    """

    def gray(self, images):
        return _gray(images)


@keras.saving.register_keras_serializable(package="kft")
class GaussianBlur(RandomLayer):
    """torchvision's `GaussianBlur`: every image blurred by a Gaussian of
    `kernel_size` taps whose sigma is drawn per image from `sigma`, the
    same in both directions, with reflected borders.

    Args:
        kernel_size: Taps, an odd integer. Defaults to `3`.
        sigma: `(min, max)` of the sigma, > 0. Defaults to `(0.1, 2.0)`.
        seed: Seed of the draws.

    Example:
    >>> import numpy as np, kft
    >>> image = np.zeros((1, 5, 5, 1), "float32"); image[0, 2, 2] = 1
    >>> out = kft.augmentation.GaussianBlur(3, seed=0)(image, training=True)
    >>> round(float(np.asarray(out).sum()), 5)
    1.0
    """

    def __init__(self, kernel_size=3, sigma=(0.1, 2.0), seed=None,
                 **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.kernel_size = check_int("kernel_size", kernel_size, min_value=1)
        if self.kernel_size % 2 == 0:
            raise ValueError("Argument `kernel_size` must be odd. Received: "
                             f"kernel_size={kernel_size!r}")
        self.sigma = _range("sigma", sigma, 1e-6)

    def transform(self, images, batch):
        radius = self.kernel_size // 2
        if radius == 0:
            return images
        sigma = self.uniform(batch, *self.sigma)
        offsets = ops.arange(-radius, radius + 1, dtype="float32")
        taps = ops.exp(-(offsets[None, :] ** 2)
                       / (2.0 * sigma[:, None] ** 2))
        taps = ops.cast(taps / ops.sum(taps, axis=1, keepdims=True),
                        images.dtype)
        for axis in (1, 2):  # rows, then columns: separable
            pad = [[0, 0]] * 4
            pad[axis] = [radius, radius]
            padded = ops.pad(images, pad, mode="reflect")
            size = images.shape[axis]
            blurred = 0.0
            for i in range(self.kernel_size):
                part = (padded[:, i:i + size] if axis == 1
                        else padded[:, :, i:i + size])
                blurred = blurred + taps[:, i, None, None, None] * part
            images = blurred
        return images

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "sigma": self.sigma}
