"""Real data that ships inside installed packages, for demos and tests."""

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np

from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument


@dataclasses.dataclass(frozen=True)
class TransferSplits:
    """Arrays of a source task and a small target task.

    Images are float32 in [0, 255], shape `(n, size, size, 3)`; labels are
    int32 from 0 within each task (`source_classes[i]` -> `i`).
    """

    source: tuple
    target_train: tuple
    target_val: tuple
    target_test: tuple
    source_classes: tuple
    target_classes: tuple


def digits(image_size: int = 32,
           source_classes: Sequence[int] = (0, 1, 2, 3, 4),
           target_classes: Sequence[int] = (5, 6, 7, 8, 9),
           target_per_class: int = 10, val_per_class: int = 10,
           test_fraction: float = 0.5, seed: int = 0) -> TransferSplits:
    """scikit-learn's handwritten digits (1,797 real 8x8 scans), as a
    transfer task: a source task on some digits, a small labelled target
    task on others, and a held-out target test split.

    Args:
        image_size: Side of the resized images. Defaults to `32`.
        source_classes: Distinct digits of the source task; may be empty
            (no source task). Defaults to 0-4.
        target_classes: At least two distinct digits of the target task,
            disjoint from the source ones. Defaults to 5-9.
        target_per_class: Labelled target training images per class.
            Defaults to `10`.
        val_per_class: Target validation images per class. Defaults to `10`.
        test_fraction: Fraction of each target class held out for testing,
            drawn first. Defaults to `0.5`.
        seed: Seed of the split. Defaults to `0`.

    Returns:
        A `TransferSplits`.

    Raises:
        ValueError: bad arguments: classes that are not distinct digits
            0-9, fewer than two target classes, classes in both tasks, or
            more train and val images per class than a digit has.

    Example:
    >>> import kft
    >>> data = kft.datasets.digits(image_size=16, target_per_class=5)
    >>> data.target_train[0].shape
    (25, 16, 16, 3)
    """
    return load_splits(image_size, source_classes, target_classes,
                       target_per_class, val_per_class, test_fraction, seed)


def load_splits(image_size, source_classes, target_classes,
                target_per_class, val_per_class, test_fraction, seed,
                transform=None):
    """`digits`' arguments checked, the scans loaded and resized, passed
    through `transform(images)` if given (`digits_m` blends them), and
    split: the same draws for `digits` and `digits_m`, so both put the same
    scan at the same index."""
    from sklearn.datasets import load_digits

    source_classes, target_classes = _check_classes(source_classes,
                                                    target_classes)
    image_size = check_int("image_size", image_size, min_value=8)
    target_per_class = check_int("target_per_class", target_per_class,
                                 min_value=1)
    val_per_class = check_int("val_per_class", val_per_class, min_value=0)
    test_fraction = check_number("test_fraction", test_fraction, low=0.0,
                                 high=1.0, low_open=True, high_open=True)
    seed = check_int("seed", seed, min_value=0)
    raw = load_digits()
    images = _resize(raw.images, image_size)
    if transform is not None:
        images = transform(images)
    return _transfer_splits(images, raw.target, source_classes,
                            target_classes, target_per_class, val_per_class,
                            test_fraction, seed)


def _transfer_splits(images, labels, source_classes, target_classes,
                     target_per_class, val_per_class, test_fraction, seed):
    """The `TransferSplits` of `images`, arguments already checked."""
    rng = np.random.default_rng(seed)

    def task(classes, idx):
        y = np.searchsorted(np.array(classes), labels[idx]).astype("int32")
        return images[idx], y

    src_idx = np.flatnonzero(np.isin(labels, source_classes))
    train, val, test = _target_split(labels, target_classes, rng,
                                     target_per_class, val_per_class,
                                     test_fraction)
    target_sorted = tuple(sorted(target_classes))
    source_sorted = tuple(sorted(source_classes))
    return TransferSplits(
        source=task(source_sorted, rng.permutation(src_idx)),
        target_train=task(target_sorted, rng.permutation(train)),
        target_val=task(target_sorted, val),
        target_test=task(target_sorted, test),
        source_classes=source_sorted,
        target_classes=target_sorted,
    )


def _digit_tuple(name, classes):
    """`classes` as a tuple of distinct digits 0-9."""
    what = "a sequence of distinct digits 0-9"
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        fail_argument(name, what, classes, TypeError)
    classes = tuple(classes)
    if any(isinstance(c, (bool, np.bool_)) or not isinstance(
            c, numbers.Integral) or not 0 <= c <= 9 for c in classes) or len(
            set(classes)) < len(classes):
        fail_argument(name, what, classes)
    return tuple(int(c) for c in classes)


def _check_classes(source_classes, target_classes):
    """Both as tuples of distinct digits 0-9, disjoint, and at least two
    target classes (the source task may be empty)."""
    source_classes = _digit_tuple("source_classes", source_classes)
    target_classes = _digit_tuple("target_classes", target_classes)
    if len(target_classes) < 2:
        fail_argument("target_classes", "at least 2 digits (a classifier "
                      "needs two classes)", target_classes)
    shared = sorted(set(source_classes) & set(target_classes))
    if shared:
        raise ValueError(
            "Arguments `source_classes` and `target_classes` must be "
            f"disjoint; both hold {shared}. Received: "
            f"source_classes={source_classes}, "
            f"target_classes={target_classes}"
        )
    return source_classes, target_classes


def _target_split(labels, target_classes, rng, per_class, val_per_class,
                  test_fraction):
    """Train, val and test indices of the target classes.

    The test images of each class are drawn first, so the test split does
    not depend on `per_class` and `val_per_class`.
    """
    train, val, test = [], [], []
    # In label order: the same classes in another order drew other splits.
    for c in sorted(target_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        if n_test == 0:
            # An empty test split failed later, in kft.data.
            raise ValueError(
                f"Argument `test_fraction` must leave at least one test "
                f"image per class: digit {c} has {len(idx)} images. "
                f"Received: test_fraction={test_fraction}")
        rest = idx[n_test:]
        if per_class + val_per_class > len(rest):
            raise ValueError(
                f"Digit {c} has {len(rest)} images left after the test "
                f"split; target_per_class + val_per_class = "
                f"{per_class + val_per_class} is too many."
            )
        test.append(idx[:n_test])
        train.append(rest[:per_class])
        val.append(rest[per_class:per_class + val_per_class])
    return np.concatenate(train), np.concatenate(val), np.concatenate(test)


def _resize(images, size):
    """(n, 8, 8) in [0, 16] -> (n, size, size, 3) float32 in [0, 255]."""
    from PIL import Image

    out = np.empty((len(images), size, size, 3), "float32")
    for i, image in enumerate(images):
        pil = Image.fromarray((image * (255.0 / 16.0)).astype("float32"), "F")
        resized = pil.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(resized)[..., None]
    return np.clip(out, 0.0, 255.0)
from kft.data.digits_m import digits_m  # noqa: E402,F401  (kft.datasets.digits_m)
