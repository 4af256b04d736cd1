"""Reading one image file into an RGB uint8 array, and saying why not."""

import dataclasses
import os
import warnings

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp",
                    ".tif", ".tiff")
GEOMETRIES = ("squash", "center_crop")
# Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` as
# decompression bombs; we use the same limit unless told otherwise.
DEFAULT_MAX_PIXELS = 2 * 89_478_485


@dataclasses.dataclass(frozen=True)
class SkippedFile:
    """A file a loader left out, and why.

    Attributes:
        path: The file's path.
        reason: Short explanation, e.g. `"zero-byte file"`.
    """

    path: str
    reason: str


def describe_error(error):
    """Turns an exception raised while reading an image into a reason."""
    if isinstance(error, PermissionError):
        return "unreadable: permission denied"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large: {error}"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image (Pillow cannot identify it)"
    message = str(error) or type(error).__name__
    if "truncated" in message:
        return f"truncated or corrupt image: {message}"
    return f"corrupt image: {type(error).__name__}: {message}"


def open_image(path, max_pixels=DEFAULT_MAX_PIXELS):
    """Opens an image file, rejecting empty files and oversized images.

    Raises:
        OSError and subclasses (`PermissionError`, `FileNotFoundError`,
        `PIL.UnidentifiedImageError`) or `ValueError` for a zero-byte file
        or an image above `max_pixels`.
    """
    if os.path.getsize(path) == 0:
        raise ValueError("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise ValueError(
            f"too large: {width}x{height} pixels is above "
            f"max_pixels={max_pixels}"
        )
    return image


def check_file(path, max_pixels=DEFAULT_MAX_PIXELS, full=True):
    """Returns `None` when `path` decodes as an image, else the reason.

    With `full=True` the whole file is decoded (JPEGs at reduced scale,
    which still reads every byte), so truncated files are caught here
    rather than in a worker during training.
    """
    try:
        image = open_image(path, max_pixels)
        with image:
            if full:
                if image.format == "JPEG":
                    image.draft("RGB", (64, 64))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore",
                                          Image.DecompressionBombWarning)
                    image.load()
            else:
                image.verify()
    except ValueError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001: every failure is reported.
        return describe_error(error)
    return None


def to_rgb(image):
    """Converts any Pillow mode to RGB.

    Grayscale, palette (with or without transparency), CMYK and RGBA are
    converted by Pillow (alpha is dropped, as torchvision's loader does);
    16-bit (`I;16*`, `I`) and float (`F`) images are scaled to 8 bits
    first instead of being clipped at 255.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        values = np.clip(values, 0, 65535) >> 8
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    elif image.mode == "F":
        values = np.clip(np.asarray(image), 0, 255)
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def crop_box(width, height, size, crop_fraction):
    """The centered box with the aspect of `size`, shrunk by `crop_fraction`."""
    target_height, target_width = size
    scale = min(width / target_width, height / target_height) * crop_fraction
    box_width, box_height = target_width * scale, target_height * scale
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return (left, top, left + box_width, top + box_height)


def resize_image(image, size, geometry="squash", crop_fraction=0.875):
    """Resizes a Pillow image to `size` = (height, width) as uint8 RGB.

    `"squash"` resizes the whole image to `size` (what Keras'
    `image_dataset_from_directory` does; used before train-time
    augmentation). `"center_crop"` is the eval transform: the centered
    region of `crop_fraction` of the shorter side, resized to `size` (the
    same geometry as `kft.augmentation.eval_transform`).
    """
    height, width = size
    if image.format == "JPEG" and image.mode in ("RGB", "L", "YCbCr"):
        # Decode at the smallest 1/2^k scale still larger than needed.
        image.draft("RGB", (width, height))
    image = to_rgb(image)
    box = None
    if geometry == "center_crop":
        box = crop_box(image.width, image.height, size, crop_fraction)
    image = image.resize((width, height), Image.BILINEAR, box=box)
    return np.asarray(image, dtype=np.uint8)


def load_image(path, size, geometry="squash", crop_fraction=0.875,
               max_pixels=DEFAULT_MAX_PIXELS):
    """Reads an image file into a `(height, width, 3)` uint8 array.

    Args:
        path: Image file.
        size: `(height, width)` of the result.
        geometry: `"squash"` or `"center_crop"`, see `resize_image`.
            Defaults to `"squash"`.
        crop_fraction: Center-crop fraction for `"center_crop"`. Defaults
            to `0.875`.
        max_pixels: Larger images raise `ValueError`. Defaults to Pillow's
            decompression-bomb limit.

    Returns:
        A uint8 array of shape `(height, width, 3)`.

    Raises:
        ValueError: zero-byte or oversized file. `OSError`: unreadable,
            not an image, truncated or corrupt.
    """
    with open_image(path, max_pixels) as image:
        return resize_image(image, size, geometry, crop_fraction)
