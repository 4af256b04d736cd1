"""Keras' zoom, rotation, blur, erasing, equalization and RandAugment
layers, computed faster on JAX; its hue and grayscale layers drawing only
in training.

Subclasses that keep Keras' random draws and config and only compute the
resampling and the blur with `kft.ops.image_ops` (5-34x faster under XLA on
CPU, measured in `benchmarks/RESULTS.md`), the equalization's histogram
with one count, and RandAugment's drawn operations only. They fall back
to Keras' own computation outside the JAX backend (e.g. inside
`tf.data`) and for channels-first or unbatched images.
"""

import jax
import keras
from jax import lax
from jax import numpy as jnp

from kft import _compat
from kft.augmentation.torch_style import refuse_direct_trace
from kft.ops import image_ops

# Erased boxes take the ImageNet mean colour: torchvision's RandomErasing
# writes 0 after Normalize, which is this colour in [0, 255] pixels (and
# Keras' default, per-pixel Gaussian noise, costs a random draw per value).
IMAGENET_MEAN = (123.675, 116.28, 103.53)


def _fast(layer, images):
    """Whether `kft.ops.image_ops` computes `layer` on `images`.

    Only on the JAX backend (a layer runs on TensorFlow inside `tf.data`)
    and for channels-last image batches, the layout the ops take.
    """
    return (layer.backend.name == "jax"
            and layer.data_format == "channels_last"
            and len(images.shape) == 4)


class _NotTracedDirectly:
    """Refuses a training call traced outside a stateless scope, before
    any draw: Keras' random layers bake their seed state into the trace
    there (every call drew the same transform) and keep a leaked tracer as
    their state (the next eager call failed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No weights to create: `stateless_call` (the recipe the refusal
        # gives) works before any call, as on kft's own random layers.
        self.built = True

    def call(self, data, training=True):
        if training:
            refuse_direct_trace(self)
        return super().call(data, training=training)


@keras.saving.register_keras_serializable(package="kft")
class RandomZoom(_NotTracedDirectly, _compat.zoom_layer_base()):
    """`keras.layers.RandomZoom` resampling with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomZoom((-0.2, 0.0), seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def use_fast(self, images):
        return _fast(self, images)

    def resample(self, images, matrix, interpolation):
        return image_ops.affine_transform(
            images, matrix, interpolation=interpolation,
            fill_mode=self.fill_mode, fill_value=self.fill_value,
            axis_aligned=True)


@keras.saving.register_keras_serializable(package="kft")
class RandomRotation(_NotTracedDirectly, _compat.rotation_layer_base()):
    """`keras.layers.RandomRotation` resampling with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomRotation(0.1, seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def use_fast(self, images):
        return _fast(self, images)

    def resample(self, images, matrix, interpolation):
        return image_ops.affine_transform(
            images, matrix, interpolation=interpolation,
            fill_mode=self.fill_mode, fill_value=self.fill_value)


@keras.saving.register_keras_serializable(package="kft")
class RandomGaussianBlur(_NotTracedDirectly, _compat.blur_layer_base()):
    """`keras.layers.RandomGaussianBlur` blurring with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomGaussianBlur(1.0, seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def use_fast(self, images):
        return _fast(self, images)

    def blur(self, images, sigma, apply):
        ops = self.backend
        images = ops.cast(images, self.compute_dtype)
        blurred = image_ops.gaussian_blur(images, self.kernel_size, sigma)
        images = ops.numpy.where(apply[:, None, None, None], blurred, images)
        images = ops.numpy.clip(images, *self.value_range)
        return ops.cast(images, self.compute_dtype)


@keras.saving.register_keras_serializable(package="kft")
class RandomErasing(_NotTracedDirectly, _compat.erasing_layer_base()):
    """`keras.layers.RandomErasing` that also takes a colour on JAX.

    Keras 3.15 documents `fill_value=(r, g, b)` but fails on it under JAX
    (`jnp.full_like` rejects a tuple); here the colour is broadcast. A
    colour fills RGB images only: on images with another number of
    channels it raises (use a single number there).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomErasing(1.0, fill_value=(1, 2, 3),
    ...                                        seed=0)
    >>> layer(np.zeros((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def get_random_transformation(self, data, training=True, seed=None):
        images = data["images"] if isinstance(data, dict) else data
        channels = images.shape[
            -1 if self.data_format == "channels_last" else -3]
        if training and self.fill_colour() is not None and channels != 3:
            # Broadcasting would turn the images into RGB ones silently.
            raise ValueError(
                "Argument `fill_value` must be a single number for images "
                f"with {channels} channel(s); an (r, g, b) colour fills RGB "
                f"images only. Received: fill_value={self.fill_value!r}, "
                f"images.shape={tuple(images.shape)}")
        return super().get_random_transformation(data, training, seed)

    def fill_colour(self):
        fill_value = self.fill_value
        if not isinstance(fill_value, (tuple, list)) or len(fill_value) != 3:
            return None
        ops = self.backend
        shape = (3,) if self.data_format == "channels_last" else (3, 1, 1)
        fill_value = ops.numpy.reshape(
            ops.convert_to_tensor(fill_value, self.compute_dtype), shape)
        return ops.numpy.clip(fill_value, *self.value_range)


class _DrawsOnlyInTraining:
    """No draw at inference. Keras' `RandomHue` and `RandomGrayscale` draw
    their transform whatever `training` says (then return the images
    unchanged): each `predict`/`evaluate` moved the next training draws,
    and an inference call under `jax.jit` left a leaked tracer as their
    seed state (every later call failed)."""

    def get_random_transformation(self, data, training=True, seed=None):
        if not training:
            return None  # their `transform_images` returns the images
        return super().get_random_transformation(data, training, seed)


@keras.saving.register_keras_serializable(package="kft")
class RandomHue(_NotTracedDirectly, _DrawsOnlyInTraining,
                keras.layers.RandomHue):
    """`keras.layers.RandomHue` that draws nothing with `training=False`.

    Same arguments, random draws and results in training; at inference
    the images pass unchanged without moving the seed state.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomHue(0.2, value_range=(0, 255), seed=0)
    >>> images = np.full((2, 4, 4, 3), 100.0, "float32")
    >>> bool((np.asarray(layer(images, training=False)) == images).all())
    True
    """


@keras.saving.register_keras_serializable(package="kft")
class RandomGrayscale(_NotTracedDirectly, _DrawsOnlyInTraining,
                      keras.layers.RandomGrayscale):
    """`keras.layers.RandomGrayscale` that draws nothing with
    `training=False`.

    Same arguments, random draws and results in training; at inference
    the images pass unchanged without moving the seed state.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomGrayscale(1.0, seed=0)
    >>> out = np.asarray(layer(np.ones((2, 4, 4, 3)), training=True))
    >>> out.shape
    (2, 4, 4, 3)
    """

    def get_config(self):
        # Keras' leaves the seed out: a saved preset drew unseeded after
        # loading.
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="kft")
class Equalization(_compat.equalization_layer_base()):
    """`keras.layers.Equalization` whose histogram is one count on JAX.

    Keras counts each of the 256 bins with a reduction of its own on JAX
    (768 per RGB image batch): one such layer took 22-28 s to compile under
    `jax.jit` on CPU. Same arguments and results.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.Equalization()
    >>> images = np.arange(48, dtype="float32").reshape(1, 4, 4, 3)
    >>> out = np.asarray(layer(images))  # 0..47 spread over 0..255
    >>> float(out.min()), float(out.max())
    (0.0, 255.0)
    """

    def use_fast(self, values):
        return self.backend.name == "jax"

    def count(self, indices, bins):
        return jnp.bincount(indices, length=bins).astype("int32")


@keras.saving.register_keras_serializable(package="kft")
class RandAugment(_NotTracedDirectly, _compat.rand_augment_layer_base()):
    """`keras.layers.RandAugment` that runs only the operations it draws.

    Keras' layer computes all 11 operations `num_ops` times and keeps the
    drawn one with `where`; this one branches (`lax.switch`) on the same
    draws, and its equalization is `kft.augmentation.Equalization`. Same
    arguments, random draws and results (up to float rounding). In the
    "strong" preset on the host, 224 px batches of 32: Keras' layer 306 s
    to compile and 63 s per batch, this one 3.3 s and 0.18 s
    (benchmarks/RESULTS.md).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandAugment(num_ops=2, seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def use_fast(self, images):
        return _fast(self, images)

    def switch(self, index, branches, images):
        if isinstance(index, jax.core.Tracer):
            return lax.switch(index, branches, images)
        # Called eagerly: `lax.switch` would compile its new branches on
        # every call (1 s each); the drawn one alone runs op by op.
        return branches[int(index)](images)

    def equalization_class(self):
        return Equalization
