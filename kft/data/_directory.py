"""`from_directory`: an image-folder layout into `ImageDataset`s."""

import concurrent.futures
import os
from typing import Literal, NamedTuple

import grain
import numpy as np

from kft import augmentation as augmentation_lib
from kft.data import _images
from kft.data._dataset import ImageDataset
from kft.data._dataset import warn_skipped

VAL_FOLDERS = ("val", "validation", "valid")
ON_BAD_FILE = ("skip", "raise")
CHECKS = ("full", "header")


class ImageSplits(NamedTuple):
    """`(train, val)` datasets; `val` is `None` when there is none."""

    train: ImageDataset
    val: ImageDataset | None


class FileLoader:
    """Loads `(path, label)` records; a failure is reported, not raised."""

    def __init__(self, size, geometry, crop_fraction, max_pixels):
        self.size = size
        self.geometry = geometry
        self.crop_fraction = crop_fraction
        self.max_pixels = max_pixels
        self.on_failure = None

    def __call__(self, record):
        path, label = record
        try:
            image = _images.load_image(path, self.size, self.geometry,
                                       self.crop_fraction, self.max_pixels)
        except Exception as error:  # noqa: BLE001: reported, never raised.
            reason = (str(error) if isinstance(error, ValueError)
                      else _images.describe_error(error))
            if self.on_failure is not None:
                self.on_failure(path, reason)
            return None
        return image, label


def _list_classes(folder):
    return sorted(
        entry.name for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _list_images(folder):
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            os.path.join(root, name) for name in sorted(files)
            if name.lower().endswith(_images.IMAGE_EXTENSIONS)
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
                   max_pixels=_images.DEFAULT_MAX_PIXELS):
    """Loads an image-folder layout into train and val `ImageDataset`s.

    Layouts: `path/train/<class>/*.jpg` with `path/val/<class>/...` (also
    `validation/` or `valid/`), or `path/<class>/*.jpg` with
    `validation_split`. Classes are the sorted train folder names.
    Train images are resized to `image_size` and augmented; val images
    get the eval transform (resize, then center crop of `crop_fraction`).

    Bad files are handled before training starts: zero-byte, non-image,
    truncated or corrupt, unreadable and oversized files are skipped,
    counted and listed (a `kft.data.SkippedFilesWarning` and
    `dataset.skipped`); grayscale, RGBA, palette, CMYK and 16-bit images
    are converted to 8-bit RGB. An empty train class folder (or one whose
    files are all bad) and a class folder only in val raise `ValueError`.

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
        check: `"full"` decodes every file up front (catches truncated
            files), `"header"` only reads headers (faster; a file failing
            later is skipped and reported while training). Defaults to
            `"full"`.
        max_pixels: Images with more pixels are skipped. Defaults to
            Pillow's decompression-bomb limit (178,956,970).

    Returns:
        `ImageSplits(train, val)`; `val` is `None` without val data.

    Raises:
        ValueError: bad arguments, missing folder, no class folders, an
            empty class, a val-only class, or bad files with
            `on_bad_file="raise"`.

    Example:
    >>> import kft  # doctest: +SKIP
    >>> train, val = kft.data.from_directory("data", 224)  # doctest: +SKIP
    >>> model.fit(train, validation_data=val)  # doctest: +SKIP
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(s, int) and s > 0 for s in image_size)):
        raise ValueError(
            "Argument `image_size` must be a positive int or a (height, "
            f"width) pair of them. Received: image_size={image_size!r}"
        )
    for name, value, allowed in (("on_bad_file", on_bad_file, ON_BAD_FILE),
                                 ("check", check, CHECKS)):
        if value not in allowed:
            raise ValueError(f"Argument `{name}` must be one of {allowed}. "
                             f"Received: {name}={value!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(
            "Argument `validation_split` must be a float in (0, 1) or None. "
            f"Received: validation_split={validation_split!r}"
        )
    if not 0 < crop_fraction <= 1:
        raise ValueError(
            "Argument `crop_fraction` must be in (0, 1]. "
            f"Received: crop_fraction={crop_fraction!r}"
        )
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
            max_pixels)
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
