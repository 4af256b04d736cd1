"""Train-time augmentation presets and the eval transform, from `keras.layers`.

The presets use the fast rotation, erasing and RandAugment layers of
`kft.augmentation.layers`, and the layers of
`kft.augmentation.torch_style` where the seeds' torchvision transforms draw
otherwise than Keras' (crop, brightness, contrast, saturation, blur).
"""

import numbers
from typing import Literal
from typing import get_args

import keras

from kft._validation import check_choice
from kft._validation import fail_argument
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import mixed_seed
from kft.augmentation.layers import IMAGENET_MEAN
from kft.augmentation.layers import RandAugment
from kft.augmentation.layers import RandomErasing
from kft.augmentation.layers import RandomGrayscale
from kft.augmentation.layers import RandomHue
from kft.augmentation.layers import RandomRotation
from kft.augmentation.torch_style import GaussianBlur
from kft.augmentation.torch_style import RandomBrightnessScale
from kft.augmentation.torch_style import RandomContrastScale
from kft.augmentation.torch_style import RandomResizedCrop
from kft.augmentation.torch_style import RandomSaturationScale

Preset = Literal["none", "light", "standard", "strong"]
PRESETS = get_args(Preset)
# The presets whose colour layers take RGB images only.
RGB_PRESETS = ("standard", "strong")


def _layers(preset, seed):
    """The preset's layers; the first (the crop) is seeded `seed`, the
    i-th random layer after it `mixed_seed(seed, i)` (with `seed + i`,
    seed `s + 1` drew seed `s`'s next layer's draws).

    `"none"` is one `Identity` layer: a `Sequential` without layers cannot
    be built or called, and the preset must work wherever the others do.

    The crop is torchvision's `RandomResizedCrop(scale=(0.8, 1))` (area,
    aspect ratio 3/4-4/3 and position drawn per image), so no fill is
    seen; rotation fills with zeros like torchvision's `RandomRotation`
    (`"constant"` fill is also cheaper than `"reflect"` under XLA on CPU).
    """
    layers = keras.layers
    crop = RandomResizedCrop(scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3),
                             seed=seed)
    flip = layers.RandomFlip("horizontal", seed=mixed_seed(seed, 1))
    if preset == "none":
        return [layers.Identity(name="identity")]
    if preset == "light":
        return [crop, flip]
    if preset == "standard":
        # The seeds' torchvision recipe: RandomResizedCrop(scale=(0.8, 1)),
        # flip, rotation 15 degrees, ColorJitter(.2, .2, .2, .1),
        # RandomGrayscale(.1), GaussianBlur(3, (.1, 2)), RandomErasing(.2).
        return [
            crop,
            flip,
            RandomRotation(15 / 360, fill_mode="constant",
                           seed=mixed_seed(seed, 2)),
            # ColorJitter's four, in a fixed order (torchvision shuffles
            # them): brightness, contrast and saturation as torchvision's
            # factors in [0.8, 1.2]; Keras' hue shift is half its factor,
            # so 0.2 gives torchvision's +-0.1 of the colour circle.
            RandomBrightnessScale(0.2, value_range=(0, 255),
                                  seed=mixed_seed(seed, 3)),
            RandomContrastScale(0.2, value_range=(0, 255),
                                seed=mixed_seed(seed, 7)),
            RandomSaturationScale(0.2, value_range=(0, 255),
                                  seed=mixed_seed(seed, 8)),
            # Keras' hue and grayscale draw at inference too.
            RandomHue(0.2, value_range=(0, 255), seed=mixed_seed(seed, 9)),
            RandomGrayscale(factor=0.1, seed=mixed_seed(seed, 4)),
            # Every image, one sigma each, as torchvision's.
            GaussianBlur(3, sigma=(0.1, 2.0), seed=mixed_seed(seed, 5)),
            RandomErasing(factor=(0.2, 0.2), scale=(0.02, 0.15),
                          fill_value=IMAGENET_MEAN,
                          value_range=(0, 255), seed=mixed_seed(seed, 6)),
        ]
    return [
        crop,
        flip,
        RandAugment(value_range=(0, 255), num_ops=2, factor=0.5,
                    seed=mixed_seed(seed, 2)),
        RandomErasing(factor=(0.25, 0.25), scale=(0.02, 0.33),
                      fill_value=IMAGENET_MEAN,
                      value_range=(0, 255), seed=mixed_seed(seed, 3)),
    ]


def augmentation(preset: Preset = "standard", *,
                 image_size: int | tuple[int, int] | None = None,
                 seed: int = 0) -> keras.Sequential:
    """Builds a train-time augmentation preset from `keras.layers`.

    Presets: `"none"` (an `Identity` layer), `"light"` (random resized crop
    of 80-100% of the area, horizontal flip), `"standard"` (crop, flip, 15
    degree rotation, colour jitter 0.2/0.2/0.2/0.1, grayscale p=0.1,
    Gaussian blur, random erasing p=0.2: the seeds' torchvision recipe,
    drawn as torchvision draws, except the erased box: Keras'
    `RandomErasing` draws each side from the area scale on its own, so
    the box's width/height spans 1/3-3 (torchvision: 0.3-3.3, log-uniform)
    and boxes are a little smaller on average (8.0% of the image vs 8.5%
    at scale 0.02-0.33)) and `"strong"` (crop, flip,
    `RandAugment(num_ops=2)`, random erasing p=0.25). Inputs are pixels in
    [0, 255], `(batch, height, width, 3)` (`"none"` and `"light"` take
    any number of channels; the others raise on non-RGB images); the layers
    are active only with `training=True`.

    Args:
        preset: One of `kft.augmentation.PRESETS`. Defaults to
            `"standard"`.
        image_size: `(height, width)` or an int: builds the model for that
            size, or `None`. Defaults to `None`.
        seed: Seeds the random layers: the first gets `seed`, the others
            seeds mixed from `seed` and their place, so nearby seeds share
            no draws; numpy integers accepted. Defaults to `0`.

    Returns:
        A `keras.Sequential` named `augment_<preset>`.

    Raises:
        ValueError: unknown `preset` or non-integer `seed`.

    Example:
    >>> import numpy as np, kft
    >>> aug = kft.augmentation.augmentation("light", seed=1)
    >>> aug(np.zeros((2, 16, 16, 3)), training=True).shape
    (2, 16, 16, 3)
    >>> none = kft.augmentation.augmentation("none")
    >>> none(np.ones((2, 16, 16, 3)), training=True).shape
    (2, 16, 16, 3)
    """
    check_choice("preset", preset, PRESETS)
    seed = check_int("seed", seed)
    model = keras.Sequential(_layers(preset, seed), name=f"augment_{preset}")
    if image_size is not None:
        model.build((None, *_size_pair(image_size), 3))
    return model


def _size_pair(image_size):
    """`image_size` (an int or a `(height, width)` pair) as two ints >= 1."""
    sides = image_size
    if isinstance(image_size, numbers.Integral):
        sides = (image_size, image_size)
    try:
        height, width = (check_int("image_size", side, min_value=1)
                         for side in sides)
    except (TypeError, ValueError):
        raise ValueError(
            "Argument `image_size` must be a positive integer or a (height, "
            f"width) pair of them. Received: image_size={image_size!r}"
        ) from None
    return height, width


def eval_transform(image_size: int | tuple[int, int],
                   crop_fraction: float = 0.875) -> keras.Sequential:
    """Resize + center crop, the eval-time transform, as Keras layers.

    Resizes (keeping the aspect ratio) to `image_size / crop_fraction`,
    then takes the center `image_size` crop: `Resize(256)` +
    `CenterCrop(224)` for the defaults. `kft.data` loaders apply the same
    geometry while decoding, per image, before batching.

    Args:
        image_size: `(height, width)` or an int.
        crop_fraction: Fraction kept by the center crop, in (0, 1].
            Defaults to `0.875`.

    Returns:
        A `keras.Sequential` named `eval_transform`.

    Raises:
        ValueError: `image_size` not positive integers, or
            `crop_fraction` outside (0, 1].

    Example:
    >>> import numpy as np, kft
    >>> t = kft.augmentation.eval_transform(16)
    >>> t(np.zeros((1, 40, 30, 3))).shape
    (1, 16, 16, 3)
    """
    height, width = _size_pair(image_size)
    crop_fraction = check_number("crop_fraction", crop_fraction, low=0,
                                 high=1, low_open=True)
    return keras.Sequential([
        keras.layers.Resizing(round(height / crop_fraction),
                              round(width / crop_fraction),
                              crop_to_aspect_ratio=True, antialias=True),
        keras.layers.CenterCrop(height, width),
    ], name="eval_transform")


def attach(model: keras.Model,
           augmentation_layer: keras.layers.Layer | Preset) -> keras.Model:
    """Puts augmentation in front of a model, so it runs on the device.

    The augmentation runs inside the jitted train step (`training=True`)
    and is the identity at inference.

    Args:
        model: A Keras model taking images in [0, 255].
        augmentation_layer: A layer or a preset name; `"standard"` and
            `"strong"` need RGB images (a model with 3 input channels).

    Raises:
        ValueError: an unknown preset, or an RGB-only preset for a model
            whose images do not have 3 channels.
        TypeError: `augmentation_layer` neither a layer nor a preset name.

    Returns:
        A functional model `augmented_<model name>` with the same input.

    Example:
    >>> import kft
    >>> m = kft.build_classifier("simple_cnn", 3, weights=None,
    ...                          input_shape=(16, 16, 3))
    >>> kft.augmentation.attach(m, "light").output.shape
    (None, 3)
    >>> kft.augmentation.attach(m, "none").output.shape
    (None, 3)
    """
    from kft.deploy.inference import check_built

    check_built(model)  # its input shape comes from the graph
    channels = model.input_shape[-1]
    if isinstance(augmentation_layer, str):
        check_choice("preset", augmentation_layer, PRESETS)
        if channels != 3 and augmentation_layer in RGB_PRESETS:
            # Colour jitter fails on them and RandomErasing's colour fill
            # would need three channels.
            fail_argument(
                "augmentation_layer", f"'none', 'light' or a layer of your "
                f"own for a model taking {channels}-channel images (the "
                f"{RGB_PRESETS} presets work on RGB images)",
                augmentation_layer)
        augmentation_layer = augmentation(augmentation_layer)
    elif not callable(augmentation_layer):
        fail_argument("augmentation_layer", "a Keras layer or one of "
                      f"{PRESETS}", augmentation_layer, TypeError)
    from kft.models.batch_augment import BatchAugmentModel  # imports this
    from kft.models.classifier import carry_over
    from kft.models.classifier_model import Classifier

    inputs = keras.Input(model.input_shape[1:], name="image")
    outputs = model(augmentation_layer(inputs))
    name = f"augmented_{model.name}"
    if isinstance(model, BatchAugmentModel):
        # Its Mixup/CutMix (and label smoothing) live in its train step.
        wrapper = BatchAugmentModel(inputs, outputs, name=name,
                                    batch_augment=model.batch_augment)
    else:
        # Its config keeps the class names through `model.save`.
        wrapper = Classifier(inputs, outputs, name=name)
    return carry_over(model, wrapper)
