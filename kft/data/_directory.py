"""`from_directory`: an image-folder layout into `ImageDataset`s.

The steps, in order: check the arguments, find the train and val folders
and the classes, scan (and check) the files, split off val, then build one
`ImageDataset` per split.
"""

import dataclasses
import os
import warnings
from typing import Literal
from typing import NamedTuple

import grain

from kft import augmentation as augmentation_lib
from kft._validation import check_bool
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_seed
from kft._validation import listed
from kft.augmentation.presets import Preset
from kft.data import _images
from kft.data._dataset import AUGMENT_ON
from kft.data._dataset import LABEL_MODES
from kft.data._dataset import AugmentOn
from kft.data._dataset import ImageDataset
from kft.data._dataset import LabelMode
from kft.data._dataset import SAMPLINGS
from kft.data._dataset import Sampling
from kft.data._dataset import warn_skipped
from kft.data._files import FileLoader
from kft.data._files import class_counts
from kft.data._files import class_folders
from kft.data._files import scan_splits
from kft.data._files import shown
from kft.data._files import shown_root
from kft.data._files import split_folders
from kft.data._files import stratified_split

ON_BAD_FILE = ("skip", "raise")
CHECKS = ("full", "header")


class ImageSplits(NamedTuple):
    """`(train, val)` datasets; `val` is `None` when there is none."""

    train: ImageDataset
    val: ImageDataset | None


@dataclasses.dataclass(frozen=True)
class _Settings:
    """`from_directory`'s arguments, checked, as the steps use them."""

    image_size: tuple[int, int]
    batch_size: int
    augmentation: str
    augment_on: str
    label_mode: str
    crop_fraction: float
    shuffle: bool
    seed: int
    num_workers: int
    check: str
    max_pixels: int | None
    exif_transpose: bool
    sampling: str = "all"

    @classmethod
    def checked(cls, *, image_size, batch_size, augmentation, augment_on,
                label_mode, crop_fraction, shuffle, seed, num_workers,
                check, max_pixels, exif_transpose, sampling="all"):
        """Checks every argument, before the (slow) scan of the folders."""
        if max_pixels is not None:
            max_pixels = check_int("max_pixels", max_pixels, min_value=1)
        return cls(
            image_size=_images.image_size_pair(image_size),
            batch_size=check_int("batch_size", batch_size, min_value=1),
            augmentation=check_choice("augmentation", augmentation,
                                      augmentation_lib.PRESETS),
            augment_on=check_choice("augment_on", augment_on, AUGMENT_ON),
            label_mode=check_choice("label_mode", label_mode, LABEL_MODES),
            crop_fraction=check_number("crop_fraction", crop_fraction, low=0,
                                       high=1, low_open=True),
            shuffle=check_bool("shuffle", shuffle),
            seed=check_seed(seed),
            num_workers=check_int("num_workers", num_workers, min_value=0),
            check=check_choice("check", check, CHECKS),
            max_pixels=max_pixels,
            exif_transpose=check_bool("exif_transpose", exif_transpose),
            sampling=check_choice("sampling", sampling, SAMPLINGS),
        )


def _make_dataset(records, skipped, class_names, settings, *, train):
    """One split's `ImageDataset`; train images are augmented, val cropped."""
    loader = FileLoader(
        settings.image_size,
        _images.TRAIN_GEOMETRY if train else "center_crop",
        settings.crop_fraction, settings.max_pixels, settings.exif_transpose)
    layer = None
    if train:
        layer = augmentation_lib.augmentation(
            settings.augmentation, image_size=settings.image_size,
            seed=settings.seed)
    dataset = ImageDataset(
        grain.MapDataset.source(records).map(loader),
        class_names=class_names,
        class_counts=class_counts(records, class_names),
        batch_size=settings.batch_size, shuffle=settings.shuffle and train,
        seed=settings.seed, num_workers=settings.num_workers,
        label_mode=settings.label_mode, augmentation=layer,
        augment_on=settings.augment_on, skipped=skipped,
        paths=[p for p, _ in records], labels=[label for _, label in records],
        sampling=settings.sampling if train else "all")
    loader.on_failure = dataset._record_failure
    return dataset


def _warn_val_gaps(val_records, class_names, validation_split, val_dir):
    """Warns of classes without val images: left out by `stratified_split`
    (one image each), or absent from the val folder."""
    missing = [name for name, count in class_counts(
        val_records, class_names).items() if count == 0]
    if not missing:
        return
    if validation_split is not None:
        message = (f"validation_split={validation_split} left classes "
                   f"{listed(missing)} without val images: each has a "
                   "single image, kept for training, so val metrics do not "
                   "cover them. Add images to them for a val set that "
                   "does.")
    else:
        message = (f"The val folder {shown(val_dir)!r} holds no readable "
                   f"image of {len(missing)} of the {len(class_names)} "
                   f"classes ({listed(missing, 10)}): val metrics, and an "
                   "epoch kept by them, do not cover those classes. Add "
                   "images of them to val.")
    warnings.warn(message, UserWarning, stacklevel=3)


def from_directory(path: str | os.PathLike,
                   image_size: int | tuple[int, int],
                   batch_size: int = 32, *,
                   validation_split: float | None = None,
                   augmentation: Preset = "standard",
                   augment_on: AugmentOn = "host",
                   label_mode: LabelMode = "int",
                   crop_fraction: float = 0.875, shuffle: bool = True,
                   seed: int = 0, num_workers: int = 2,
                   on_bad_file: Literal["skip", "raise"] = "skip",
                   check: Literal["full", "header"] = "full",
                   max_pixels: int | None = _images.DEFAULT_MAX_PIXELS,
                   exif_transpose: bool = True,
                   sampling: Sampling = "all") -> ImageSplits:
    """Loads an image-folder layout into train and val `ImageDataset`s.

    Layouts: `path/train/<class>/*.jpg` with `path/val/<class>/...` (also
    `validation/` or `valid/`), or `path/<class>/*.jpg` with
    `validation_split`. Classes are the sorted train folder names; there
    must be at least two. Hidden files and folders (names starting with
    `.`, such as macOS' `._*` AppleDouble files and `.DS_Store`) and
    `__MACOSX` folders are ignored, as are files without an image
    extension (`Thumbs.db`). Train images are resized to `image_size` (a
    photo of another aspect ratio cropped to its largest centered region
    of that ratio, not stretched) and augmented; val images get the eval
    transform (resize, then center crop of `crop_fraction`).

    Bad files are handled before training starts: zero-byte, non-image,
    truncated or corrupt, unreadable, missing (a symbolic link whose
    target is gone) and oversized files are skipped, counted and listed (a
    `kft.data.SkippedFilesWarning` and `dataset.skipped`), so
    `class_counts` and `len(dataset)` count only files that load. With
    `check="header"`, see below, truncated or corrupt pixel data is found
    only during training. Grayscale, RGBA, palette, CMYK and 16-bit images
    are converted to 8-bit RGB, and with `exif_transpose` photos are
    turned upright as their EXIF orientation tag says; float images are
    scaled to 8 bits (as `kft.data.load_image` says). An empty train class
    folder (or one whose files are all bad), a val folder without a
    readable image, a single class folder, a class folder only in val, and
    a `val/` (or `test/`) folder of class folders beside the class folders
    without `train/` (it would be read as a class) raise `ValueError`.

    Args:
        path: Root folder.
        image_size: `(height, width)` or an int for square images.
        batch_size: Examples per batch. Defaults to `32`.
        validation_split: Fraction of each class held out for val when
            there is no val folder, or `None`. Each class holds out the
            rounded fraction of its images, at least one and at most all
            but one, so every class keeps a train image; a class of a
            single image is kept for training only, with a warning that
            val does not cover it. Defaults to `None`.
        augmentation: Train preset, see `kft.augmentation.PRESETS`.
            Defaults to `"standard"`.
        augment_on: `"host"` (in the input pipeline) or `"model"` (put
            `dataset.augmentation` in the model with
            `kft.augmentation.attach`; a kft model's `fit` and
            `kft.fine_tune` warn when the model has no random augmentation
            layer). Defaults to `"host"`.
        label_mode: `"int"` or `"categorical"` (one-hot). Defaults to
            `"int"`.
        crop_fraction: Eval center-crop fraction in (0, 1]. Defaults to
            `0.875`.
        shuffle: Reshuffle train each epoch. Defaults to `True`.
        seed: Seed of shuffling, the split and augmentation. Defaults to `0`.
        num_workers: Threads decoding images. Defaults to `2`.
        on_bad_file: `"skip"` (report and go on) or `"raise"`. Defaults to
            `"skip"`.
        check: `"full"` decodes every file up front, so every bad file is
            skipped before training. `"header"` (faster) only opens each
            file and reads its header: zero-byte, non-image, unreadable,
            missing and oversized files are still skipped up front, but a
            file whose pixel data is truncated or corrupt may only be found
            when it is decoded during training. Such a file is then left
            out of its pass (one example fewer; as the training data of a
            kft model's `fit` its place is taken by the next example of
            the pass that decodes, keeping every batch's size and
            `len(dataset)` steps: `ImageDataset.for_fit`), named once in a
            `SkippedFilesWarning`, added to `dataset.skipped`, removed
            from `class_counts` and `num_examples`, and not read again;
            `on_bad_file="raise"` does not apply to it. Evaluation data
            read by several devices or processes cannot lose an example
            (each needs its share of every batch): that read raises,
            asking for `"full"`. Defaults to `"full"`.
        max_pixels: Images with more pixels are skipped. Defaults to
            Pillow's decompression-bomb limit (178,956,970); Pillow itself
            warns (once per process) of an image above half of it.
        exif_transpose: Rotate or flip each image as its EXIF orientation
            tag says (`PIL.ImageOps.exif_transpose`), so photos taken
            sideways train upright, as viewers show them. `False` reads
            the stored pixels as they are, like Keras'
            `image_dataset_from_directory` and torchvision's
            `ImageFolder`. Defaults to `True`.
        sampling: Train sampling: `"all"` (every image once per epoch) or
            `"balanced"` (each epoch draws as many images with
            replacement, every class equally likely; see
            `kft.data.ImageDataset`). Val is always read whole. Defaults
            to `"all"`.

    Returns:
        `ImageSplits(train, val)`; `val` is `None` without val data.

    Raises:
        ValueError: bad arguments, missing folder, fewer than two class
            folders, an empty train class, an empty val folder, a
            val-only class, or bad files with `on_bad_file="raise"`.

    Example:
    >>> import os, tempfile, kft
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> for name, value in (("cat", 40), ("dog", 200)):
    ...     os.makedirs(os.path.join(root, name))
    ...     for i in range(3):
    ...         Image.new("RGB", (10, 12), (value,) * 3).save(
    ...             os.path.join(root, name, f"{i}.png"))
    >>> train, val = kft.data.from_directory(
    ...     root, 8, batch_size=2, validation_split=0.3, augmentation="none")
    >>> train.class_names, train.num_examples, val.num_examples
    (['cat', 'dog'], 4, 2)
    >>> train.peek()[0].shape  # next(iter(train)) would begin a pass
    (2, 8, 8, 3)
    >>> model.fit(train, validation_data=val)  # doctest: +SKIP
    """
    settings = _Settings.checked(
        image_size=image_size, batch_size=batch_size,
        augmentation=augmentation, augment_on=augment_on,
        label_mode=label_mode, crop_fraction=crop_fraction, shuffle=shuffle,
        seed=seed, num_workers=num_workers, check=check,
        max_pixels=max_pixels, exif_transpose=exif_transpose,
        sampling=sampling)
    check_choice("on_bad_file", on_bad_file, ON_BAD_FILE)
    if validation_split is not None:
        validation_split = check_number(
            "validation_split", validation_split, low=0, high=1,
            low_open=True, high_open=True)
    train_dir, val_dir = split_folders(path, validation_split)
    class_names = class_folders(train_dir, val_dir)
    (records, skipped), (val_records, val_skipped), total = scan_splits(
        train_dir, val_dir, class_names, check=settings.check,
        max_pixels=settings.max_pixels, num_workers=settings.num_workers,
        on_bad_file=on_bad_file)
    if validation_split is not None:
        records, val_records = stratified_split(records, validation_split,
                                                settings.seed)
        if not val_records:
            # Every class has one image: nothing to hold out. An empty val
            # set would fail only after training (no val_loss to monitor).
            raise ValueError(
                f"`validation_split` ({validation_split}) leaves no val "
                f"images: each of the {len(class_names)} classes in "
                f"{shown(train_dir)!r} has a single readable image, kept "
                "for training. Add images (at least 2 per class), or give "
                "val images in their own folder (layout train/<class>/ + "
                "val/<class>/).")
    if val_dir is not None or validation_split is not None:
        _warn_val_gaps(val_records, class_names, validation_split, val_dir)
    warn_skipped(skipped + val_skipped, total,
                 shown_root(path, train_dir, val_dir, class_names))
    train = _make_dataset(records, skipped, class_names, settings,
                          train=True)
    val = None
    if val_dir is not None or validation_split is not None:
        val = _make_dataset(val_records, val_skipped, class_names, settings,
                            train=False)
    return ImageSplits(train, val)


def eval_folder(path, image_size, batch_size=32, *, class_names=None,
                check_classes=None, exif_transpose=True):
    """A folder of class folders read whole with the eval transform (as
    `from_directory`'s validation half), bad files skipped and named once
    by their paths in `path`; `check_classes(class names found)` runs
    before any image is read. For evaluating a trained model
    (`kft eval`, `kft.runs.load_eval_folder`): given the model's
    `class_names`, labels follow their order, and a class without a
    folder or without a readable image has no examples (a test set need
    not hold every class)."""
    settings = _Settings.checked(
        image_size=image_size, batch_size=batch_size, augmentation="none",
        augment_on="host", label_mode="int", crop_fraction=0.875,
        shuffle=False, seed=0, num_workers=2, check="full",
        max_pixels=_images.DEFAULT_MAX_PIXELS,
        exif_transpose=exif_transpose)
    found = class_folders(path, None,
                          minimum=2 if class_names is None else 1)
    if check_classes is not None:
        check_classes(found)
    class_names = found if class_names is None else list(class_names)
    (records, skipped), _, total = scan_splits(
        path, None, class_names, check=settings.check,
        max_pixels=settings.max_pixels, num_workers=settings.num_workers,
        on_bad_file="skip", empty_classes=True)
    warn_skipped(skipped, total, os.fspath(path))
    return _make_dataset(records, skipped, class_names, settings,
                         train=False)
