"""`from_directory`: an image-folder layout into `ImageDataset`s."""

import concurrent.futures
import os
import threading
from typing import Literal, NamedTuple

import grain
import numpy as np

from kft import augmentation as augmentation_lib
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft.data import _images
from kft.data._dataset import AUGMENT_ON
from kft.data._dataset import LABEL_MODES
from kft.data._dataset import ImageDataset
from kft.data._dataset import positive_int
from kft.data._dataset import warn_skipped

VAL_FOLDERS = ("val", "validation", "valid")
ON_BAD_FILE = ("skip", "raise")
CHECKS = ("full", "header")
# Folders of operating-system metadata, never classes or images: macOS
# zip archives add `__MACOSX/` (full of `._*` AppleDouble files).
METADATA_FOLDERS = ("__MACOSX",)


class ImageSplits(NamedTuple):
    """`(train, val)` datasets; `val` is `None` when there is none."""

    train: ImageDataset
    val: ImageDataset | None


class FileLoader:
    """Loads `(path, label)` records; a failure is reported, not raised.

    A file that failed is reported once (`on_failure(path, label,
    reason)`) and not decoded again in later passes.
    """

    def __init__(self, size, geometry, crop_fraction, max_pixels,
                 exif_transpose):
        self.size = size
        self.geometry = geometry
        self.crop_fraction = crop_fraction
        self.max_pixels = max_pixels
        self.exif_transpose = exif_transpose
        self.on_failure = None
        self._failed = set()
        self._lock = threading.Lock()

    def __call__(self, record):
        path, label = record
        if path in self._failed:
            return None
        try:
            with _images.open_image(path, self.max_pixels) as image:
                pixels = _images.resize_image(
                    image, self.size, self.geometry, self.crop_fraction,
                    self.exif_transpose)
        except Exception as error:  # noqa: BLE001: reported, never raised.
            reason = (str(error) if isinstance(error, ValueError)
                      else _images.describe_error(error))
            with self._lock:
                first = path not in self._failed
                self._failed.add(path)
            if first and self.on_failure is not None:
                self.on_failure(path, label, reason)
            return None
        return pixels, label


def _hidden(name):
    # Dot-files include macOS' `._*` AppleDouble twins of real images and
    # `.DS_Store`; Windows' `Thumbs.db` has no image extension.
    return name.startswith(".") or name in METADATA_FOLDERS


def _list_classes(folder):
    return sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not _hidden(entry.name)
    )


def _list_images(folder):
    found = []
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symbolic link back up the tree: walk it once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        found.extend(
            os.path.join(root, name) for name in sorted(files)
            if not _hidden(name)
            and name.lower().endswith(_images.IMAGE_EXTENSIONS)
        )
    return found


def scan_folder(folder, class_names, *, check, max_pixels, num_workers):
    """Lists `(path, label)` records of good files and the skipped ones."""
    candidates = [
        (path, label) for label, name in enumerate(class_names)
        for path in _list_images(os.path.join(folder, name))
    ]
    full = check == "full"
    with concurrent.futures.ThreadPoolExecutor(max(num_workers, 1)) as pool:
        reasons = list(pool.map(
            lambda record: _images.check_file(record[0], max_pixels, full),
            candidates,
        ))
    records = [rec for rec, why in zip(candidates, reasons) if why is None]
    skipped = [_images.SkippedFile(rec[0], why)
               for rec, why in zip(candidates, reasons) if why is not None]
    return records, skipped, len(candidates)


def _split(records, fraction, seed):
    """Stratified split: `fraction` of each class, at least one, goes to val."""
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in records])
    val_index = []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        val_index.extend(index[:max(1, round(fraction * len(index)))])
    val_set = set(int(i) for i in val_index)
    train = [r for i, r in enumerate(records) if i not in val_set]
    val = [r for i, r in enumerate(records) if i in val_set]
    return train, val


def _counts(records, class_names):
    counts = np.bincount([label for _, label in records],
                         minlength=len(class_names))
    return {name: int(c) for name, c in zip(class_names, counts)}


def from_directory(path, image_size, batch_size=32, *,
                   validation_split=None,
                   augmentation: str = "standard",
                   augment_on: Literal["host", "model"] = "host",
                   label_mode: Literal["int", "categorical"] = "int",
                   crop_fraction=0.875, shuffle=True, seed=0, num_workers=2,
                   on_bad_file: Literal["skip", "raise"] = "skip",
                   check: Literal["full", "header"] = "full",
                   max_pixels=_images.DEFAULT_MAX_PIXELS,
                   exif_transpose=True):
    """Loads an image-folder layout into train and val `ImageDataset`s.

    Layouts: `path/train/<class>/*.jpg` with `path/val/<class>/...` (also
    `validation/` or `valid/`), or `path/<class>/*.jpg` with
    `validation_split`. Classes are the sorted train folder names; there
    must be at least two. Hidden files and folders (names starting with
    `.`, such as macOS' `._*` AppleDouble files and `.DS_Store`) and
    `__MACOSX` folders are ignored, as are files without an image
    extension (`Thumbs.db`). Train images are resized to `image_size` and
    augmented; val images get the eval transform (resize, then center
    crop of `crop_fraction`).

    Bad files are handled before training starts: zero-byte, non-image,
    truncated or corrupt, unreadable, missing (a symbolic link whose
    target is gone) and oversized files are skipped, counted and listed (a
    `kft.data.SkippedFilesWarning` and `dataset.skipped`), so
    `class_counts` and `len(dataset)` count only files that load. With
    `check="header"`, see below, truncated or corrupt pixel data is found
    only during training. Grayscale, RGBA, palette, CMYK and 16-bit images
    are converted to 8-bit RGB, and with `exif_transpose` photos are
    turned upright as their EXIF orientation tag says. An empty train
    class folder (or one whose files are all bad), a single class folder
    and a class folder only in val raise `ValueError`.

    Args:
        path: Root folder.
        image_size: `(height, width)` or an int for square images.
        batch_size: Examples per batch. Defaults to `32`.
        validation_split: Fraction of each class held out for val when
            there is no val folder, or `None`. Defaults to `None`.
        augmentation: Train preset, see `kft.augmentation.PRESETS`.
            Defaults to `"standard"`.
        augment_on: `"host"` (in the input pipeline) or `"model"` (put
            `dataset.augmentation` in the model with
            `kft.augmentation.attach`). Defaults to `"host"`.
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
            out of its batch (one example smaller: a pass keeps
            `len(dataset)` batches unless every file of a batch fails),
            named once in a `SkippedFilesWarning`, added to
            `dataset.skipped`, removed from `class_counts` and
            `num_examples`, and not read again; `on_bad_file="raise"` does
            not apply to it. Defaults to `"full"`.
        max_pixels: Images with more pixels are skipped. Defaults to
            Pillow's decompression-bomb limit (178,956,970).
        exif_transpose: Rotate or flip each image as its EXIF orientation
            tag says (`PIL.ImageOps.exif_transpose`), so photos taken
            sideways train upright, as viewers show them. `False` reads
            the stored pixels as they are, like Keras'
            `image_dataset_from_directory` and torchvision's
            `ImageFolder`. Defaults to `True`.

    Returns:
        `ImageSplits(train, val)`; `val` is `None` without val data.

    Raises:
        ValueError: bad arguments, missing folder, fewer than two class
            folders, an empty class, a val-only class, or bad files with
            `on_bad_file="raise"`.

    Example:
    >>> import kft  # doctest: +SKIP
    >>> train, val = kft.data.from_directory("data", 224)  # doctest: +SKIP
    >>> model.fit(train, validation_data=val)  # doctest: +SKIP
    """
    image_size = _images.image_size_pair(image_size)
    # Checked before the (slow) scan of the folders.
    batch_size = positive_int("batch_size", batch_size)
    check_choice("label_mode", label_mode, LABEL_MODES)
    check_choice("augment_on", augment_on, AUGMENT_ON)
    check_choice("on_bad_file", on_bad_file, ON_BAD_FILE)
    check_choice("check", check, CHECKS)
    if validation_split is not None:
        validation_split = check_number(
            "validation_split", validation_split, low=0, high=1,
            low_open=True, high_open=True)
    if not 0 < crop_fraction <= 1:
        raise ValueError(
            "Argument `crop_fraction` must be in (0, 1]. "
            f"Received: crop_fraction={crop_fraction!r}"
        )
    seed = check_int("seed", seed)
    num_workers = check_int("num_workers", num_workers, min_value=0)
    if max_pixels is not None:
        max_pixels = check_int("max_pixels", max_pixels, min_value=1)
    if not os.path.isdir(path):
        raise ValueError(f"Argument `path` must be an existing folder. "
                         f"Received: path={path!r}")
    path = os.fspath(path)
    train_dir, val_dir = path, None
    if os.path.isdir(os.path.join(path, "train")):
        train_dir = os.path.join(path, "train")
        val_dir = next((os.path.join(path, v) for v in VAL_FOLDERS
                        if os.path.isdir(os.path.join(path, v))), None)
    if val_dir is not None and validation_split is not None:
        raise ValueError(
            f"Found a val folder {val_dir!r}, so `validation_split` must be "
            f"None. Received: validation_split={validation_split!r}"
        )
    class_names = _list_classes(train_dir)
    if not class_names:
        raise ValueError(f"No class folders in {train_dir!r}: expected "
                         f"{train_dir}/<class name>/<image files>.")
    if len(class_names) == 1:
        raise ValueError(
            f"Found one class folder, {class_names[0]!r}, in {train_dir!r}; "
            "a classifier needs at least 2 classes. Put each class's images "
            f"in its own folder: {train_dir}/<class name>/<image files>."
        )
    if val_dir is not None:
        only_val = sorted(set(_list_classes(val_dir)) - set(class_names))
        if only_val:
            raise ValueError(
                f"Class folders {only_val} are in {val_dir!r} but not in "
                f"{train_dir!r}; train classes: {class_names}. Add train "
                "images for them or remove them from val."
            )
    options = dict(check=check, max_pixels=max_pixels,
                   num_workers=num_workers)
    records, skipped, total = scan_folder(train_dir, class_names, **options)
    val_records, val_skipped, val_total = [], [], 0
    if val_dir is not None:
        val_records, val_skipped, val_total = scan_folder(
            val_dir, class_names, **options)
    all_skipped = skipped + val_skipped
    if all_skipped and on_bad_file == "raise":
        listed = "\n".join(f"  {s.path}: {s.reason}" for s in all_skipped)
        raise ValueError(
            f"Found {len(all_skipped)} bad image files (pass "
            f"on_bad_file='skip' to leave them out):\n{listed}"
        )
    counts = _counts(records, class_names)
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise ValueError(
            f"Class folders {empty} in {train_dir!r} have no readable "
            f"images ({len(skipped)} files skipped). Add images or remove "
            "the folders."
        )
    if validation_split is not None:
        records, val_records = _split(records, validation_split, seed)
    warn_skipped(all_skipped, total + val_total, path)

    def make(records, skipped, *, train):
        loader = FileLoader(
            image_size, "squash" if train else "center_crop", crop_fraction,
            max_pixels, exif_transpose)
        layer = None
        if train:
            layer = augmentation_lib.augmentation(
                augmentation, image_size=image_size, seed=seed)
        dataset = ImageDataset(
            grain.MapDataset.source(records).map(loader),
            class_names=class_names,
            class_counts=_counts(records, class_names),
            batch_size=batch_size, shuffle=shuffle and train, seed=seed,
            num_workers=num_workers, label_mode=label_mode,
            augmentation=layer, augment_on=augment_on, skipped=skipped,
            paths=[p for p, _ in records])
        loader.on_failure = dataset._record_failure
        return dataset

    train = make(records, skipped, train=True)
    val = None
    if val_dir is not None or validation_split is not None:
        val = make(val_records, val_skipped, train=False)
    return ImageSplits(train, val)
