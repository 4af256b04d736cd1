"""digits-M: the MNIST-M recipe applied to scikit-learn's digits.

MNIST-M (Ganin et al., 2016) blends each MNIST digit with a random colour
patch of a real photograph, `|digit - patch|` per channel: the background
becomes the photo, the strokes its inverse. digits-M does the same to the
1,797 scans of `kft.datasets.digits`, with patches cut from photographs
that ship inside installed packages (no download): scikit-learn's two
sample images (`load_sample_images`: china, flower), always there, and
scikit-image's colour photos (`skimage.data`: astronaut, chelsea, coffee,
rocket) when scikit-image is installed (`photos="auto"`). Pass
`photos="sklearn"` for the same images on every machine.
"""

import functools
from collections.abc import Sequence

import numpy as np

from kft._validation import check_choice
from kft._validation import check_int
from kft.data.digits import TransferSplits
from kft.data.digits import load_splits

PHOTOS = ("auto", "sklearn", "skimage")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def digits_m(image_size: int = 32,
             source_classes: Sequence[int] = (0, 1, 2, 3, 4),
             target_classes: Sequence[int] = (5, 6, 7, 8, 9),
             target_per_class: int = 10, val_per_class: int = 10,
             test_fraction: float = 0.5, seed: int = 0,
             photos: str = "auto") -> TransferSplits:
    """scikit-learn's digits blended with photo patches (MNIST-M recipe),
    with the splits of `kft.datasets.digits`.

    Same arguments and the same splits as `kft.datasets.digits`: with the
    same arguments, image `i` of every split is the same scan in both, only
    blended here, so the two can be paired or split into disjoint domain
    halves by index. The patch of each scan (photo, position) is drawn from
    `seed` by scan, so it does not depend on the split sizes.

    Args:
        image_size: Side of the images. Defaults to `32`.
        source_classes: Distinct digits of the source task; may be empty
            (no source task). Defaults to 0-4.
        target_classes: At least two distinct digits of the target task,
            disjoint from the source ones. Defaults to 5-9.
        target_per_class: Labelled target training images per class.
            Defaults to `10`.
        val_per_class: Target validation images per class. Defaults to `10`.
        test_fraction: Fraction of each target class held out for testing.
            Defaults to `0.5`.
        seed: Seed of the split and of the patches. Defaults to `0`.
        photos: Where patches come from: `"auto"` (scikit-learn's sample
            images, plus scikit-image's colour photos when it is installed),
            `"sklearn"` (only scikit-learn's: the same data everywhere) or
            `"skimage"` (both; raises without scikit-image). Defaults to
            `"auto"`.

    Returns:
        A `TransferSplits`: float32 images in [0, 255], int32 labels.

    Raises:
        ValueError: bad arguments, as for `kft.datasets.digits`.
        ImportError: `photos="skimage"` without scikit-image installed.

    Example:
    >>> import kft, numpy as np
    >>> m = kft.datasets.digits_m(image_size=16, target_per_class=5)
    >>> m.target_train[0].shape
    (25, 16, 16, 3)
    >>> plain = kft.datasets.digits(image_size=16, target_per_class=5)
    >>> bool(np.all(plain.target_train[1] == m.target_train[1]))
    True
    """
    check_choice("photos", photos, PHOTOS)
    # `load_splits` checks `seed` before calling the blend.
    return load_splits(
        image_size, source_classes, target_classes, target_per_class,
        val_per_class, test_fraction, seed,
        transform=lambda images: blend_with_photos(images, seed=seed,
                                                   photos=photos))


def blend_with_photos(images, *, seed: int = 0,
                      photos: str = "auto") -> np.ndarray:
    """`|image - patch|` per channel, one random photo patch per image.

    A photo smaller than the images (scikit-image's chelsea is 300
    pixels high) is enlarged to cover them first.

    Args:
        images: `(n, h, w, 3)` (or `(n, h, w)` gray) values in [0, 255].
        seed: Seed of the patch draws: the same seed and number of images
            give the same patches (image `i` gets draw `i` of the `n`
            drawn; `digits_m` blends all scans at once, so its patches do
            not depend on the splits). Defaults to `0`.
        photos: `"auto"`, `"sklearn"` or `"skimage"`, as in `digits_m`.
            Defaults to `"auto"`.

    Returns:
        float32 `(n, h, w, 3)` in [0, 255].

    Example:
    >>> import numpy as np
    >>> out = blend_with_photos(np.zeros((2, 8, 8, 3)), seed=1)
    >>> out.shape, out.dtype, bool(out.max() <= 255)
    ((2, 8, 8, 3), dtype('float32'), True)
    """
    check_choice("photos", photos, PHOTOS)
    seed = check_int("seed", seed, min_value=0)
    images = np.asarray(images, "float32")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "Argument `images` must have shape (n, height, width[, 1 or 3]). "
            f"Received: images.shape={images.shape}")
    n, h, w = images.shape[:3]
    sources = [_covering(photo, h, w) for photo in _photos(photos)]
    # Drawn per image index from their own stream: independent of splits.
    rng = np.random.default_rng([seed, 0x4D])
    which = rng.integers(0, len(sources), size=n)
    fractions = rng.random((n, 2))
    out = np.empty((n, h, w, 3), "float32")
    for i in range(n):
        photo = sources[which[i]]
        top = int(fractions[i, 0] * (photo.shape[0] - h + 1))
        left = int(fractions[i, 1] * (photo.shape[1] - w + 1))
        patch = photo[top:top + h, left:left + w]
        out[i] = np.abs(images[i] - patch)
    return out


def _covering(photo, height, width):
    """`photo`, enlarged (aspect kept) where it is smaller than a
    `height` x `width` patch; else as it is."""
    scale = max(height / photo.shape[0], width / photo.shape[1])
    if scale <= 1:
        return photo
    from PIL import Image

    size = (max(width, round(photo.shape[1] * scale)),
            max(height, round(photo.shape[0] * scale)))
    channels = [Image.fromarray(photo[..., c], "F").resize(
        size, Image.BILINEAR) for c in range(3)]
    return np.stack([np.asarray(c) for c in channels], axis=-1)


def _photos(photos):
    """The colour photos patches are cut from, float32 (H, W, 3)."""
    found = list(_sklearn_photos())
    if photos in ("auto", "skimage"):
        found += _skimage_photos(required=photos == "skimage")
    return found


@functools.cache
def _sklearn_photos():
    from sklearn.datasets import load_sample_images

    return tuple(_read_only(im) for im in load_sample_images().images)


@functools.cache
def _skimage_photos(required):
    try:
        import skimage.data
    except ImportError as error:
        if required:
            raise ImportError(
                'digits_m(photos="skimage") needs scikit-image: pip install '
                'scikit-image (or use photos="sklearn")') from error
        return ()
    return tuple(_read_only(getattr(skimage.data, name)())
                 for name in SKIMAGE_PHOTOS)


def _read_only(image):
    image = np.asarray(image, "float32")[..., :3]
    image.setflags(write=False)
    return image
