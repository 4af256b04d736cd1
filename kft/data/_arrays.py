"""`from_arrays` and `from_tfds`: arrays and TFDS splits as `ImageDataset`s."""

import numbers
import warnings
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from kft import augmentation as augmentation_lib
from kft._validation import check_choice
from kft._validation import check_class_names
from kft._validation import check_int
from kft._validation import check_seed
from kft._validation import check_labels
from kft._validation import check_number
from kft._validation import fail_argument
from kft._validation import labels_from_one_hot
from kft._validation import real_pixels
from kft.augmentation.presets import Preset
from kft.data import _images
from kft.data._dataset import AUGMENT_ON
from kft.data._dataset import LABEL_MODES
from kft.data._dataset import SAMPLINGS
from kft.data._dataset import AugmentOn
from kft.data._dataset import ImageDataset
from kft.data._dataset import LabelMode
from kft.data._dataset import Sampling


def to_rgb_array(pixels):
    """One image array `(height, width, channels)` as 3 channels.

    Gray (1 channel) is repeated, alpha (4 channels) dropped, as
    `kft.data._images.to_rgb` does for files.
    """
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] == 4:
        return pixels[..., :3]
    return pixels


def _integral(y):
    """Whether `y` holds whole numbers: integers, or integer-valued floats
    (as `kft.evaluate` accepts them)."""
    if np.issubdtype(y.dtype, np.integer):
        return True
    return bool(np.issubdtype(y.dtype, np.floating) and np.all(
        np.isfinite(y)) and np.all(y == np.round(y)))


def _labels_and_classes(y, n, class_names, num_classes):
    """Integer labels from `(n,)`, `(n, 1)` or one-hot `y`, and the number
    of classes."""
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min_value=1)
    if class_names is not None:
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"Argument `num_classes` must match the {len(class_names)} "
                f"class_names. Received: num_classes={num_classes}")
        num_classes = len(class_names)
    if y.ndim == 2 and y.shape[1] == 1:
        # A column of integer labels, as keras.datasets return them: a
        # one-hot row of width 1 would say nothing.
        y = y[:, 0]
    if y.ndim == 2 and len(y) == n:
        width = y.shape[1]
        if num_classes is not None and width != num_classes:
            raise ValueError(
                f"Argument `y` must be one-hot rows of width {num_classes} "
                f"(the number of classes). Received: y.shape={y.shape}")
        return labels_from_one_hot(y, "y").astype(np.int64), width
    if y.ndim != 1 or len(y) != n or not _integral(y):
        raise ValueError(
            f"Argument `y` must be {n} integer labels, shape (n,) or (n, 1), "
            "or one-hot rows, shape (n, classes). Received: "
            f"y.shape={y.shape}, y.dtype={y.dtype}"
        )
    if class_names is not None:
        classes_of = f"the {num_classes} class_names"
    elif num_classes is not None:
        classes_of = f"num_classes={num_classes}"
    else:
        num_classes = max(int(y.max()) + 1, 1) if len(y) else 0
        classes_of = f"the {num_classes} classes its labels count"
    return check_labels(y, num_classes, classes_of=classes_of), num_classes


def _check_pixels(x):
    """`x` as numbers (`real_pixels`); refuses what is no pixels (a bool
    mask, strings) and NaN or infinite pixels; warns when pixels are not
    in [0, 255], the range kft's models preprocess from (images scaled to
    [0, 1], normalised or 16-bit would train on wrong inputs without an
    error)."""
    pixels = real_pixels(x)
    if pixels is None:
        raise ValueError(
            "Argument `x` must be images of integer or float pixels in "
            f"[0, 255]. Received: x.dtype={x.dtype}")
    # An object array of Python ints arrives as float32: integers still.
    objects = x if x.dtype.kind == "O" else None
    x = pixels
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(x)
        raise ValueError(
            f"Argument `x` holds {int(bad.sum())} NaN or infinite pixel "
            "values (first in image "
            f"{int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))}); "
            "images must be finite pixels in [0, 255].")
    if low >= 0 and 1 < high <= 255 or high == low == 0:
        return x
    integer = np.issubdtype(x.dtype, np.integer) or (
        objects is not None and all(isinstance(value, numbers.Integral)
                                    for value in objects.flat))
    hint = ""
    if low >= 0 and high <= 1:
        hint = " (scaled to [0, 1]? multiply by 255)"
    elif integer and low >= 0 and 4095 < high <= 65535:
        hint = (" (16-bit images? `x >> 8` maps them to 8 bits, as "
                "`from_directory` reads 16-bit files)")
    elif integer and low >= 0:
        hint = (" (another bit depth? scale them to [0, 255] by their "
                "full range, e.g. 4095 for 12-bit images)")
    warnings.warn(
        f"Images `x` hold pixel values in [{low:g}, {high:g}]{hint}; kft's "
        "models take pixels in [0, 255] and preprocess them as their "
        "backbone needs.", stacklevel=3)
    return x


def from_arrays(x, y, batch_size: int = 32, *,
                class_names: Sequence[str] | None = None,
                num_classes: int | None = None,
                augmentation: Preset = "none",
                augment_on: AugmentOn = "host",
                label_mode: LabelMode | None = None,
                shuffle: bool = True, seed: int = 0,
                sampling: Sampling = "all", shard="auto") -> ImageDataset:
    """Wraps image and label arrays as an `ImageDataset`.

    Images with 1 channel (grayscale) are repeated to 3 and 4-channel
    images lose their alpha channel, as `from_directory` and `from_tfds`
    do, so every loader yields `(batch, height, width, 3)` images.

    Args:
        x: Images `(n, height, width, channels)`, pixels in [0, 255];
            `channels` is 1, 3 or 4.
        y: Integer labels, shaped `(n,)` or `(n, 1)` (as
            `keras.datasets` return them; integer-valued floats count), or
            one-hot rows `(n, num_classes)`.
        batch_size: Examples per batch. Defaults to `32`.
        class_names: Names of the classes, or `None` for `"0"`, `"1"`, ...
            Defaults to `None`.
        num_classes: Number of classes, or `None` for `len(class_names)`,
            the width of one-hot `y`, or else the largest label + 1. Give
            it when some classes may be missing from `y` (a small split).
            Defaults to `None`.
        augmentation: Preset, see `kft.augmentation.PRESETS`. Defaults to
            `"none"`.
        augment_on: `"host"` (in the input pipeline) or `"model"` (put
            `dataset.augmentation` in the model with
            `kft.augmentation.attach`; a kft model's `fit` and
            `kft.fine_tune` warn when the model has no random augmentation
            layer). Defaults to `"host"`.
        label_mode: `"int"`, `"categorical"` (one-hot), or `None` for the
            form of `y`. Defaults to `None`.
        shuffle: Reshuffle each epoch. Defaults to `True`.
        seed: Seed of shuffling, sampling and augmentation. Defaults to
            `0`.
        sampling: `"all"` (every example once per epoch) or `"balanced"`
            (each epoch draws as many examples with replacement, every
            class present equally likely; see `kft.data.ImageDataset`).
            Defaults to `"all"`.
        shard: Which slice of each global batch this process loads:
            `"auto"` (its JAX process' slice when several processes train
            together, see `kft.distributed`), `None` (all) or
            `(index, count)`. Defaults to `"auto"`.

    Returns:
        A `kft.data.ImageDataset`.

    Raises:
        ValueError: `x` not 4-D with 1, 3 or 4 channels, not numbers (a
            bool mask, strings) or holding NaN or inf, `y` not integer
            labels or one-hot rows of the same length, or labels outside
            `[0, num_classes)`.

    Example:
    >>> import numpy as np, kft
    >>> ds = kft.data.from_arrays(np.zeros((10, 8, 8, 3)),
    ...                           np.arange(10) % 2, batch_size=4)
    >>> ds.class_counts
    {'0': 5, '1': 5}
    >>> one_hot = kft.data.from_arrays(np.zeros((4, 8, 8, 1)),
    ...                                np.eye(3)[[0, 2, 2, 0]])
    >>> images, labels = next(iter(one_hot))
    >>> images.shape, labels.shape, one_hot.class_counts
    ((4, 8, 8, 3), (4, 3), {'0': 2, '1': 0, '2': 2})
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(
            "Argument `x` must be images of shape (n, height, width, "
            f"channels) with 1, 3 or 4 channels. Received: x.shape={x.shape}"
        )
    if not len(x):
        # Keras' fit over it died with a bare StopIteration.
        raise ValueError("Argument `x` must hold at least one image. "
                         f"Received: x.shape={x.shape}")
    x = _check_pixels(x)
    seed = check_seed(seed)
    check_choice("augmentation", augmentation, augmentation_lib.PRESETS)
    if label_mode is None:
        label_mode = ("categorical" if y.ndim == 2 and y.shape[1] != 1
                      else "int")
    else:  # named with None, which follows the form of `y`
        check_choice("label_mode", label_mode, (*LABEL_MODES, None))
    # Checked once, where they are read (a generator is read once).
    class_names = check_class_names(class_names)
    labels, num_classes = _labels_and_classes(y, len(x), class_names,
                                              num_classes)
    names = (list(class_names) if class_names is not None
             else [str(i) for i in range(num_classes)])
    counts = np.bincount(labels, minlength=len(names))
    source = grain.MapDataset.source(range(len(x))).map(
        lambda i: (to_rgb_array(x[i]), labels[i]))
    layer = augmentation_lib.augmentation(
        augmentation, image_size=x.shape[1:3], seed=seed)
    return ImageDataset(
        source, class_names=names,
        class_counts={n: int(c) for n, c in zip(names, counts)},
        batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=0,
        label_mode=label_mode, augmentation=layer, augment_on=augment_on,
        labels=labels, sampling=sampling, shard=shard,
        numbered_classes=class_names is None)


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


def _prepare_once(tfds, name, data_dir, builder_kwargs):
    """Downloads and prepares `name` in process 0 while the others wait:
    several processes preparing one folder at once broke each other's
    files."""
    from kft.distributed.processes import barrier
    from kft.distributed.processes import is_primary
    from kft.distributed.processes import process_count

    if process_count() == 1:
        return  # `tfds.data_source` prepares it
    if is_primary():
        tfds.data_source(name, data_dir=data_dir, download=True,
                         builder_kwargs=builder_kwargs)
    barrier(f"kft-from-tfds-{name}")


def from_tfds(name: str, split: str, image_size: int | tuple[int, int],
              batch_size: int = 32, *, data_dir: str | None = None,
              download: bool = False, image_key: str = "image",
              label_key: str = "label", augmentation: Preset = "none",
              augment_on: AugmentOn = "host", label_mode: LabelMode = "int",
              train: bool | None = None, crop_fraction: float = 0.875,
              shuffle: bool | None = None, seed: int = 0,
              num_workers: int = 2, sampling: Sampling = "all"
              ) -> ImageDataset:
    """Loads a TFDS image-classification split as an `ImageDataset`.

    Reads through `tfds.data_source` (random access to the prepared
    ArrayRecord files), so TensorFlow is not needed; install the `tfds`
    extra (`pip install kft[tfds]`).

    Images of any channel count (grayscale MNIST, RGBA) become 8-bit RGB,
    as in `from_directory` and `from_arrays`.

    Args:
        name: TFDS name, e.g. `"tf_flowers"`.
        split: Split, e.g. `"train"` or `"train[:80%]"`.
        image_size: `(height, width)` or an int.
        batch_size: Examples per batch. Defaults to `32`.
        data_dir: TFDS data folder, or `None` for TFDS' default. Defaults to
            `None`. Trust a prepared folder from elsewhere as you would
            code: for a dataset TFDS has no builder for, it imports the
            feature modules the folder's `features.json` names.
        download: Download and prepare the dataset if missing (as
            ArrayRecord files; with several processes, process 0 prepares
            it while the others wait). Defaults to `False`.
        image_key: Feature holding the image. Defaults to `"image"`.
        label_key: `ClassLabel` feature. Defaults to `"label"`.
        augmentation: Preset used when `train`. Defaults to `"none"`.
        augment_on: `"host"` (in the input pipeline) or `"model"` (put
            `dataset.augmentation` in the model with
            `kft.augmentation.attach`; a kft model's `fit` and
            `kft.fine_tune` warn when the model has no random augmentation
            layer). Defaults to `"host"`.
        label_mode: `"int"` or `"categorical"`. Defaults to `"int"`.
        train: Train transform (resize + augmentation, shuffled) or eval
            transform (resize + center crop). `None`: `split` starts with
            `"train"`; pass `train=False` for a slice of the train split
            held out for validation (`"train[80%:]"`). Defaults to
            `None`.
        crop_fraction: Eval center-crop fraction in (0, 1]. Defaults to
            `0.875`.
        shuffle: Reshuffle each epoch; `None` means `train`. Defaults to
            `None`.
        seed: Seed of shuffling, sampling and augmentation. Defaults to
            `0`.
        num_workers: Decoding threads. Defaults to `2`.
        sampling: `"all"` or `"balanced"` (see `from_arrays`); balanced
            sampling reads every example's label once, at the first epoch.
            Defaults to `"all"`.

    Returns:
        A `kft.data.ImageDataset`; `class_counts` is computed on first use
        (one pass over the labels).

    Raises:
        ImportError: tensorflow-datasets is not installed.
        FileNotFoundError: the dataset is not prepared and `download` is
            `False`.
        ValueError: bad arguments, or `label_key` is not a `ClassLabel`
            feature.

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
    # Every argument is checked before TFDS reads (or downloads) anything.
    image_size = _images.image_size_pair(image_size)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seed = check_seed(seed)
    num_workers = check_int("num_workers", num_workers, min_value=0)
    check_choice("augmentation", augmentation, augmentation_lib.PRESETS)
    check_choice("augment_on", augment_on, AUGMENT_ON)
    check_choice("label_mode", label_mode, LABEL_MODES)
    check_choice("sampling", sampling, SAMPLINGS)
    crop_fraction = check_number("crop_fraction", crop_fraction, low=0,
                                 high=1, low_open=True)
    if not isinstance(split, str) or not split.strip():
        fail_argument("split", "one split as a string, e.g. 'train', "
                      "'train[:80%]' or 'train+test'", split, TypeError)
    if train is None:
        train = split.startswith("train")
    # TFDS picks ArrayRecord (random access, no TensorFlow) itself only
    # without a `data_dir`; with one it prepared TFRecord files, which need
    # TensorFlow to write and cannot be read by index.
    file_format = {"file_format": "array_record"}
    builder = tfds.builder(name, data_dir=data_dir, **file_format)
    features = builder.info.features
    for argument, key in (("image_key", image_key), ("label_key", label_key)):
        if key not in features:
            # Else a bare KeyError here, or for the image only at the
            # first batch, inside the input pipeline.
            fail_argument(argument, f"a feature of {name} (one of "
                          f"{sorted(features.keys())})", key)
    if not isinstance(features[image_key], tfds.features.Image):
        # It failed at the first batch, inside the input pipeline.
        raise ValueError(
            f"Argument `image_key` must name an Image feature of {name}. "
            f"Received: image_key={image_key!r} "
            f"({type(features[image_key]).__name__})")
    feature = features[label_key]
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ValueError(
            f"Argument `label_key` must name a ClassLabel feature of {name}. "
            f"Received: label_key={label_key!r} ({type(feature).__name__})"
        )
    names = list(feature.names)
    if download:
        _prepare_once(tfds, name, data_dir, file_format)
    try:
        selected = builder.info.splits[split].num_examples
    except Exception:  # noqa: BLE001: not prepared, or TFDS' own error next
        selected = None
    if selected is not None and selected <= 0:
        # TFDS failed reading it ("Paths sequence can not be of 0 length",
        # "__len__() should return >= 0").
        fail_argument("split", f"a split of {name} with examples", split)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir,
                                  download=download,
                                  builder_kwargs=file_format)
    except Exception as error:
        if download or builder.is_prepared():
            raise
        # TFDS' own: a KeyError ("`splits` is empty").
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. "
            "Pass download=True to download and prepare it there, or "
            "data_dir= the folder that holds it.") from error
    loader = _TfdsLoader(source, image_key, label_key, image_size,
                         _images.TRAIN_GEOMETRY if train else "center_crop",
                         crop_fraction)

    read = []

    def all_labels():
        if not read:
            read.append([int(source[i][label_key])
                         for i in range(len(source))])
        return read[0]

    def count_labels():
        counts = np.bincount(all_labels(), minlength=len(names))
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
        augmentation=layer, augment_on=augment_on, labels=all_labels,
        sampling=sampling)
