"""Keras' zoom, rotation, blur and erasing layers, computed faster on JAX.

Subclasses that keep Keras' random draws and config and only compute the
resampling and the blur with `kft.ops.image_ops` (5-34x faster under XLA on
CPU, measured in `benchmarks/RESULTS.md`). They fall back to Keras' own
computation outside the JAX backend (e.g. inside `tf.data`) and for
channels-first or unbatched images.
"""

import keras

from kft.ops import image_ops

# Erased boxes take the ImageNet mean colour: torchvision's RandomErasing
# writes 0 after Normalize, which is this colour in [0, 255] pixels (and
# Keras' default, per-pixel Gaussian noise, costs a random draw per value).
IMAGENET_MEAN = (123.675, 116.28, 103.53)


def _fast(layer, images):
    return (layer.backend.name == "jax" and layer.data_format == "channels_last"
            and len(images.shape) == 4)


@keras.saving.register_keras_serializable(package="kft")
class RandomZoom(keras.layers.RandomZoom):
    """`keras.layers.RandomZoom` resampling with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomZoom((-0.2, 0.0), seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def _transform_images(self, images, transformation, interpolation):
        if transformation is None or not _fast(self, images):
            return super()._transform_images(images, transformation,
                                             interpolation)
        zooms = self.backend.cast(self.backend.numpy.concatenate(
            [transformation["width_zoom"], transformation["height_zoom"]],
            axis=1), "float32")
        height, width = images.shape[1], images.shape[2]
        return image_ops.affine_transform(
            images, self._get_zoom_matrix(zooms, height, width),
            interpolation=interpolation, fill_mode=self.fill_mode,
            fill_value=self.fill_value, axis_aligned=True)


@keras.saving.register_keras_serializable(package="kft")
class RandomRotation(keras.layers.RandomRotation):
    """`keras.layers.RandomRotation` resampling with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomRotation(0.1, seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def _transform_images(self, images, transformation, interpolation):
        if not _fast(self, images):
            return super()._transform_images(images, transformation,
                                             interpolation)
        return image_ops.affine_transform(
            images, transformation["rotation_matrix"],
            interpolation=interpolation, fill_mode=self.fill_mode,
            fill_value=self.fill_value)


@keras.saving.register_keras_serializable(package="kft")
class RandomGaussianBlur(keras.layers.RandomGaussianBlur):
    """`keras.layers.RandomGaussianBlur` blurring with `kft.image_ops`.

    Same arguments, random draws and results (up to float rounding).

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomGaussianBlur(1.0, seed=0)
    >>> layer(np.ones((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def transform_images(self, images, transformation=None, training=True):
        if not (training and transformation is not None
                and _fast(self, images)):
            return super().transform_images(images, transformation, training)
        ops = self.backend
        images = ops.cast(images, self.compute_dtype)
        blurred = image_ops.gaussian_blur(
            images, self.kernel_size, transformation["blur_factor"])
        images = ops.numpy.where(
            transformation["should_apply_blur"][:, None, None, None],
            blurred, images)
        images = ops.numpy.clip(images, *self.value_range)
        return ops.cast(images, self.compute_dtype)


@keras.saving.register_keras_serializable(package="kft")
class RandomErasing(keras.layers.RandomErasing):
    """`keras.layers.RandomErasing` that also takes a colour on JAX.

    Keras 3.15 documents `fill_value=(r, g, b)` but fails on it under JAX
    (`jnp.full_like` rejects a tuple); here the colour is broadcast.

    Example:
    >>> import numpy as np, kft
    >>> layer = kft.augmentation.RandomErasing(1.0, fill_value=(1, 2, 3),
    ...                                        seed=0)
    >>> layer(np.zeros((2, 8, 8, 3)), training=True).shape
    (2, 8, 8, 3)
    """

    def _get_fill_value(self, images, images_shape, seed):
        fill_value = self.fill_value
        if not isinstance(fill_value, (tuple, list)) or len(fill_value) != 3:
            return super()._get_fill_value(images, images_shape, seed)
        ops = self.backend
        shape = (3,) if self.data_format == "channels_last" else (3, 1, 1)
        fill_value = ops.numpy.reshape(
            ops.convert_to_tensor(fill_value, self.compute_dtype), shape)
        return ops.numpy.clip(fill_value, *self.value_range)
