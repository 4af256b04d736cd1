"""Reading one image file into an RGB uint8 array, and saying why not."""

import dataclasses
import numbers
import os
from typing import Literal
from typing import get_args

import numpy as np
from PIL import ExifTags
from PIL import Image
from PIL import ImageOps

from kft._validation import check_bool
from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp",
                    ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".pbm", ".pnm")
Geometry = Literal["squash", "aspect_crop", "center_crop"]
# The train transform's geometry, before augmentation: never stretched,
# as the eval transform (`"center_crop"`) is not.
TRAIN_GEOMETRY = "aspect_crop"
GEOMETRIES = get_args(Geometry)
# Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` as
# decompression bombs; we use the same limit unless told otherwise.
DEFAULT_MAX_PIXELS = 2 * 89_478_485


def image_size_pair(value, name="image_size"):
    """Returns `value` (an int or a `(height, width)` pair) as two ints.

    Numpy integers are accepted; bools, floats and non-positive sides are
    not.
    """
    sides = (value, value) if isinstance(value, numbers.Integral) else value
    if (not isinstance(sides, (tuple, list)) or len(sides) != 2
            or not all(isinstance(s, numbers.Integral)
                       and not isinstance(s, (bool, np.bool_)) and s > 0
                       for s in sides)):
        raise ValueError(
            f"Argument `{name}` must be a positive int or a (height, width) "
            f"pair of them. Received: {name}={value!r}"
        )
    return int(sides[0]), int(sides[1])


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
    if isinstance(error, ValueError):  # `open_image`'s own reasons
        return str(error)
    if isinstance(error, FileNotFoundError):
        path = error.filename
        if path is not None and os.path.islink(path):
            return f"broken symbolic link to {os.readlink(path)!r}"
        if path is not None and os.fspath(path).startswith("~"):
            # Python's file functions take "~" as a folder's name.
            return ("file not found (kft does not expand '~': pass "
                    "os.path.expanduser(path))")
        return "file not found"
    # The warning too: raised as an error under `-W error`.
    if isinstance(error, (Image.DecompressionBombError,
                          Image.DecompressionBombWarning)):
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
        also for a symbolic link whose target is missing,
        `PIL.UnidentifiedImageError`) or `ValueError` for a zero-byte file
        or an image above `max_pixels`.
    """
    if os.path.getsize(path) == 0:
        raise ValueError("zero-byte file")
    # Pillow warns of images above `Image.MAX_IMAGE_PIXELS` (half the
    # default `max_pixels`), once per process by default. Not silenced
    # here: `warnings.catch_warnings` per image reset every warning's
    # once-only memory (a user's warning came back at every epoch) and is
    # not thread-safe (images are read in threads).
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
                image.load()
            else:
                image.verify()
    except ValueError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001: every failure is reported.
        return describe_error(error)
    return None


def float_to_8bit(values):
    """8-bit gray values of a float (`F` mode) image, whose range no file
    format fixes.

    All values in [0, 1] (the usual float convention) are scaled by 255;
    all in [0, 255] are kept; any other range (negative values, or 16-bit
    or raw sensor counts above 255) is stretched linearly from its minimum
    and maximum onto [0, 255], where clipping at 255 would saturate it.
    Values are rounded; NaN and infinite values become 0 first.

    >>> float_to_8bit(np.array([[0.0, 0.5, 1.0]])).tolist()
    [[0, 128, 255]]
    >>> float_to_8bit(np.array([[0.0, 80.0, 200.0]])).tolist()
    [[0, 80, 200]]
    >>> float_to_8bit(np.array([[0.0, 1000.0, 4000.0]])).tolist()
    [[0, 64, 255]]
    """
    values = np.asarray(values, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    if values.size:
        low, high = values.min(), values.max()
        if low >= 0 and high <= 1:
            values = values * 255.0
        elif (low < 0 or high > 255) and high > low:
            values = (values - low) * (255.0 / (high - low))
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def to_rgb(image):
    """Converts any Pillow mode to RGB.

    Grayscale, palette (with or without transparency), CMYK and RGBA are
    converted by Pillow (alpha is dropped, as torchvision's loader does);
    16-bit (`I;16*`) images are scaled to 8 bits first instead of being
    clipped at 255, and float (`F`) ones as `float_to_8bit` says. 32-bit
    integer (`I`) images are 16-bit ones from PNG and PNM files (older
    Pillow opens 16-bit PNGs so); from elsewhere (TIFF, arrays) their
    range is not fixed: kept when all values are in [0, 255], scaled as
    16-bit when in [0, 65535], stretched from their minimum and maximum
    otherwise.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        low, high = (values.min(), values.max()) if values.size else (0, 0)
        sixteen = image.mode.startswith("I;16") or image.format in (
            "PNG", "PPM")
        if not sixteen and (low < 0 or high > 65535):
            values = float_to_8bit(values)
        elif sixteen or high > 255:
            values = np.clip(values, 0, 65535) >> 8
        # ...else 8-bit values in 32-bit integers (`Image.fromarray` of an
        # int32 array), which the shift made black.
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(float_to_8bit(np.asarray(image)), mode="L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def crop_box(width, height, size, crop_fraction):
    """The centered box of `size`'s aspect, shrunk by `crop_fraction`."""
    target_height, target_width = size
    scale = min(width / target_width, height / target_height) * crop_fraction
    box_width, box_height = target_width * scale, target_height * scale
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return (left, top, left + box_width, top + box_height)


def exif_orientation(image):
    """The EXIF orientation tag of a Pillow image, 1 (upright) if absent."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001: a malformed EXIF block means upright.
        return 1
    return orientation if orientation in range(1, 9) else 1


def draft_for(image, size, orientation):
    """Makes an unloaded JPEG decode at the smallest 1/2^k scale still
    larger than `size` = (height, width) (orientations 5-8 swap the
    stored width and height); other images are left as they are. Every
    path that should see the same pixels as `resize_image` calls it."""
    if image.format == "JPEG" and image.mode in ("RGB", "L", "YCbCr"):
        height, width = size
        image.draft("RGB", (height, width) if orientation >= 5
                    else (width, height))


def resize_image(image, size, geometry="squash", crop_fraction=0.875,
                 exif_transpose=True):
    """Resizes a Pillow image to `size` = (height, width) as uint8 RGB.

    `"squash"` resizes the whole image to `size` (what Keras'
    `image_dataset_from_directory` does), stretching a photo of another
    aspect ratio. `"aspect_crop"` resizes the largest centered region of
    `size`'s aspect ratio (Keras' `crop_to_aspect_ratio=True`; the whole
    image when the ratios match): the train transform before
    augmentation, never stretched, as the eval transform is not.
    `"center_crop"` is the eval transform: the centered region of
    `crop_fraction` of the shorter side, resized to `size` (the same
    geometry as `kft.augmentation.eval_transform`).

    With `exif_transpose`, an EXIF orientation tag (how cameras and
    phones mark a photo taken sideways) is applied first with
    `PIL.ImageOps.exif_transpose`, so the pixels are upright as an image
    viewer shows them.
    """
    height, width = size
    orientation = exif_orientation(image) if exif_transpose else 1
    # The upright ratio before a reduced JPEG decode, whose rounding
    # (405x243 -> 51x31) broke an exact ratio: a sliver was cropped.
    upright = image.size[::-1] if orientation >= 5 else image.size
    same_ratio = upright[0] * height == upright[1] * width
    draft_for(image, size, orientation)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = to_rgb(image)
    box = None
    if geometry == "center_crop":
        box = crop_box(image.width, image.height, size, crop_fraction)
    elif geometry == "aspect_crop" and not same_ratio:
        box = crop_box(image.width, image.height, size, 1.0)
    image = image.resize((width, height), Image.BILINEAR, box=box)
    return np.asarray(image, dtype=np.uint8)


def load_image(path: str | os.PathLike, size: int | tuple[int, int],
               geometry: Geometry = "squash", crop_fraction: float = 0.875,
               max_pixels: int | None = DEFAULT_MAX_PIXELS,
               exif_transpose: bool = True) -> np.ndarray:
    """Reads an image file into a `(height, width, 3)` uint8 array.

    Any Pillow mode becomes 8-bit RGB (see `from_directory`). Float
    images (`F` mode, such as float TIFFs) have no fixed range: values
    all in [0, 1] are scaled by 255, all in [0, 255] kept, and any other
    range stretched from its minimum and maximum onto [0, 255].

    Args:
        path: Image file.
        size: `(height, width)` of the result, or an int for a square.
        geometry: `"squash"`, `"aspect_crop"` (the train transform's)
            or `"center_crop"` (the eval transform's), see
            `resize_image`. Defaults to `"squash"`.
        crop_fraction: Center-crop fraction for `"center_crop"`. Defaults
            to `0.875`.
        max_pixels: Larger images raise `ValueError`; `None` for no limit.
            Defaults to Pillow's decompression-bomb limit.
        exif_transpose: Rotate or flip the image as its EXIF orientation
            tag says, so it is upright as viewers show it. Defaults to
            `True`.

    Returns:
        A uint8 array of shape `(height, width, 3)`.

    Raises:
        ValueError: bad arguments, zero-byte or oversized file. `OSError`:
            unreadable, missing (or a broken link), not an image, truncated
            or corrupt.

    Example:
    >>> import os, tempfile, numpy as np, kft
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> Image.new("L", (12, 9), 80).save(path)
    >>> image = kft.data.load_image(path, 8)
    >>> image.shape, image.dtype, int(image[0, 0, 2])
    ((8, 8, 3), dtype('uint8'), 80)
    """
    size = image_size_pair(size, "size")
    check_choice("geometry", geometry, GEOMETRIES)
    crop_fraction = check_number("crop_fraction", crop_fraction, low=0,
                                 high=1, low_open=True)
    if max_pixels is not None:
        max_pixels = check_int("max_pixels", max_pixels, min_value=1)
    exif_transpose = check_bool("exif_transpose", exif_transpose)
    with open_image(path, max_pixels) as image:
        return resize_image(image, size, geometry, crop_fraction,
                            exif_transpose)
