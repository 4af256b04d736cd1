"""`from_arrays` and `from_tfds`: in-memory and TFDS data as `ImageDataset`s."""

from typing import Literal

import grain
import numpy as np
from PIL import Image

from kft import augmentation as augmentation_lib
from kft.data import _images
from kft.data._dataset import ImageDataset


def _class_names(class_names, num_classes):
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    return list(class_names)


def from_arrays(x, y, batch_size=32, *, class_names=None,
                augmentation: str = "none",
                augment_on: Literal["host", "model"] = "host",
                label_mode: Literal["int", "categorical"] = "int",
                shuffle=True, seed=0):
    """Wraps image and label arrays as an `ImageDataset`.

    Args:
        x: Images `(n, height, width, channels)`, pixels in [0, 255].
        y: Integer labels `(n,)` in `[0, len(class_names))`.
        batch_size: Examples per batch. Defaults to `32`.
        class_names: Names of the classes, or `None` for `"0"`, `"1"`, ...
            up to the largest label. Defaults to `None`.
        augmentation: Preset, see `kft.augmentation.PRESETS`. Defaults to
            `"none"`.
        augment_on: `"host"` or `"model"`. Defaults to `"host"`.
        label_mode: `"int"` or `"categorical"`. Defaults to `"int"`.
        shuffle: Reshuffle each epoch. Defaults to `True`.
        seed: Seed of shuffling and augmentation. Defaults to `0`.

    Returns:
        A `kft.data.ImageDataset`.

    Raises:
        ValueError: `x` not 4-D, `y` not 1-D integers of the same length,
            or labels outside the class range.

    Example:
    >>> import numpy as np, kft
    >>> ds = kft.data.from_arrays(np.zeros((10, 8, 8, 3)),
    ...                           np.arange(10) % 2, batch_size=4)
    >>> ds.class_counts
    {'0': 5, '1': 5}
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(
            "Argument `x` must be images of shape (n, height, width, "
            f"channels). Received: x.shape={x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype,
                                                            np.integer):
        raise ValueError(
            f"Argument `y` must be {len(x)} integer labels, shape (n,). "
            f"Received: y.shape={y.shape}, y.dtype={y.dtype}"
        )
    num_classes = int(y.max()) + 1 if len(y) else 0
    names = _class_names(class_names, num_classes)
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise ValueError(
            f"Argument `y` must hold labels in [0, {len(names)}) for "
            f"class_names={names}. Received: labels in [{y.min()}, {y.max()}]"
        )
    counts = np.bincount(y, minlength=len(names))
    source = grain.MapDataset.source(range(len(x))).map(
        lambda i: (x[i], y[i]))
    layer = augmentation_lib.augmentation(augmentation,
                                          image_size=x.shape[1:3], seed=seed)
    return ImageDataset(
        source, class_names=names,
        class_counts={n: int(c) for n, c in zip(names, counts)},
        batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=0,
        label_mode=label_mode, augmentation=layer, augment_on=augment_on)


class _TfdsLoader:
    def __init__(self, source, image_key, label_key, size, geometry,
                 crop_fraction):
        self.source = source
        self.image_key = image_key
        self.label_key = label_key
        self.size = size
        self.geometry = geometry
        self.crop_fraction = crop_fraction

    def __call__(self, index):
        example = self.source[index]
        pixels = np.asarray(example[self.image_key])
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        image = _images.resize_image(Image.fromarray(pixels), self.size,
                                     self.geometry, self.crop_fraction)
        return image, int(example[self.label_key])


def from_tfds(name, split, image_size, batch_size=32, *, data_dir=None,
              download=False, image_key="image", label_key="label",
              augmentation: str = "none",
              augment_on: Literal["host", "model"] = "host",
              label_mode: Literal["int", "categorical"] = "int",
              train=None, crop_fraction=0.875, shuffle=None, seed=0,
              num_workers=2):
    """Loads a TFDS image-classification split as an `ImageDataset`.

    Reads through `tfds.data_source` (random access to the prepared
    ArrayRecord files), so TensorFlow is not needed; install the `tfds`
    extra (`pip install kft[tfds]`).

    Args:
        name: TFDS name, e.g. `"tf_flowers"`.
        split: Split, e.g. `"train"` or `"train[:80%]"`.
        image_size: `(height, width)` or an int.
        batch_size: Examples per batch. Defaults to `32`.
        data_dir: TFDS data folder, or `None` for TFDS' default. Defaults to
            `None`.
        download: Download and prepare the dataset if missing. Defaults to
            `False`.
        image_key: Feature holding the image. Defaults to `"image"`.
        label_key: `ClassLabel` feature. Defaults to `"label"`.
        augmentation: Preset used when `train`. Defaults to `"none"`.
        augment_on: `"host"` or `"model"`. Defaults to `"host"`.
        label_mode: `"int"` or `"categorical"`. Defaults to `"int"`.
        train: Train transform (resize + augmentation, shuffled) or eval
            transform (resize + center crop). `None`: `split` starts with
            `"train"`. Defaults to `None`.
        crop_fraction: Eval center-crop fraction. Defaults to `0.875`.
        shuffle: Reshuffle each epoch; `None` means `train`. Defaults to
            `None`.
        seed: Seed of shuffling and augmentation. Defaults to `0`.
        num_workers: Decoding threads. Defaults to `2`.

    Returns:
        A `kft.data.ImageDataset`; `class_counts` is computed on first use
        (one pass over the labels).

    Raises:
        ImportError: tensorflow-datasets is not installed.
        ValueError: `label_key` is not a `ClassLabel` feature.

    Example:
    >>> import kft  # doctest: +SKIP
    >>> ds = kft.data.from_tfds("tf_flowers", "train[:80%]", 224,
    ...                         download=True)  # doctest: +SKIP
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "kft.data.from_tfds needs tensorflow-datasets: "
            "pip install 'kft[tfds]'"
        ) from error
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if train is None:
        train = split.startswith("train")
    builder = tfds.builder(name, data_dir=data_dir)
    feature = builder.info.features[label_key]
    if not hasattr(feature, "names"):
        raise ValueError(
            f"Argument `label_key` must name a ClassLabel feature of {name}. "
            f"Received: label_key={label_key!r} ({type(feature).__name__})"
        )
    names = list(feature.names)
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              download=download)
    loader = _TfdsLoader(source, image_key, label_key, image_size,
                         "squash" if train else "center_crop", crop_fraction)

    def count_labels():
        labels = [int(source[i][label_key]) for i in range(len(source))]
        counts = np.bincount(labels, minlength=len(names))
        return {n: int(c) for n, c in zip(names, counts)}

    layer = None
    if train:
        layer = augmentation_lib.augmentation(augmentation,
                                              image_size=image_size, seed=seed)
    return ImageDataset(
        grain.MapDataset.source(range(len(source))).map(loader),
        class_names=names, class_counts=count_labels,
        batch_size=batch_size, shuffle=train if shuffle is None else shuffle,
        seed=seed, num_workers=num_workers, label_mode=label_mode,
        augmentation=layer, augment_on=augment_on)
