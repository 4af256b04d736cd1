"""Turning what `kft.predict` is given into model-sized views.

A file or a PIL image goes through kft's eval transform (turned upright as
its EXIF orientation tag says, the centered `crop_fraction` region, resized
bilinearly: `kft.data.load_image(..., geometry="center_crop")`); an array
already of the model's size is used as it is (it is taken to be
preprocessed like `model.predict`'s input). With test-time augmentation
each source gives several views, the first being the one without: `"flip"`
adds the mirror image, `"multi_crop"` the four corner crops of the same
size as the center crop (five views; an array used as it is is its own
center view, and its corner crops are `crop_fraction` of it, resized to the
model's size).
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from kft._validation import real_pixels
from kft.data import _images
from kft.data._files import list_images
from kft.data._files import warn_unread

TTA_MODES = ("flip", "multi_crop")


def list_sources(images):
    """`[(name, source)]`: a path, folder, PIL image, array or a list of
    them; a folder's image files in sorted order (recursively), listed as
    training lists a class folder (`kft.data._files.list_images`)."""
    if isinstance(images, (str, os.PathLike)):
        path = os.fspath(images)
        if os.path.isdir(path):
            others = []
            found = sorted(list_images(path, others))
            if not found:
                raise ValueError(f"Folder {path!r} holds no image files "
                                 f"({', '.join(_images.IMAGE_EXTENSIONS)}).")
            warn_unread(others, f"folder {path!r}", "predict on them")
            return [(p, p) for p in found]
        return [(path, path)]
    if isinstance(images, Image.Image):
        return [("image[0]", images)]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            return [("array[0]", images)]
        if images.ndim == 4:
            return [(f"array[{i}]", a) for i, a in enumerate(images)]
    if isinstance(images, (list, tuple)):
        sources = []
        for i, item in enumerate(images):
            if isinstance(item, (str, os.PathLike)):
                sources += list_sources(item)
            elif isinstance(item, np.ndarray) and item.ndim == 4:
                # A batch inside the list, as it is taken alone.
                sources += [(f"images[{i}][{j}]", a)
                            for j, a in enumerate(item)]
            elif isinstance(item, (Image.Image, np.ndarray)):
                sources.append((f"images[{i}]", item))
            else:
                raise TypeError(f"Argument `images` holds an item of type "
                                f"{type(item).__name__} at index {i}; "
                                "expected a path, PIL image or array.")
        return sources
    raise TypeError("Argument `images` must be an image file path, a folder, "
                    "a PIL image, an array (height, width, 3) or (n, height, "
                    f"width, 3), or a list of these. Received: {images!r:.80}")


def _open(path, size, max_pixels, exif_transpose=True):
    """An RGB PIL image of `path` (upright with `exif_transpose`), decoded
    as `kft.data.load_image` decodes it for `size`; errors name the
    file."""
    try:
        with _images.open_image(path, max_pixels) as image:
            orientation = (_images.exif_orientation(image) if exif_transpose
                           else 1)
            # As `resize_image` decodes: else the center view would differ
            # from the one prediction without TTA uses.
            _images.draft_for(image, size, orientation)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = _images.to_rgb(image)
            image.load()
            return image
    except (OSError, ValueError) as error:
        raise OSError(f"Cannot read image file {path!r}: "
                      f"{_images.describe_error(error)}") from error


def _upright(image):
    """A PIL image turned as its EXIF orientation says, as a file is (a new
    image: the caller's stays as it is; one already turned has no tag)."""
    if _images.exif_orientation(image) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _as_pil(name, array, size):
    """A uint8 array as an RGB image, a float one of the model's size as
    three float channels; a float array of another size is refused (its
    resizing would be a guess)."""
    if array.dtype == np.uint8:
        return Image.fromarray(array, "RGB")
    if tuple(array.shape[:2]) != tuple(size):
        raise ValueError(
            f"Image {name} is a {array.dtype} array of {array.shape[0]}x"
            f"{array.shape[1]} pixels, but the model takes {size[0]}x"
            f"{size[1]}. Pass float arrays at the model's size, or uint8 "
            "arrays, PIL images or files, which are resized and "
            "center-cropped as kft's eval transform does.")
    return [Image.fromarray(np.asarray(array[..., c], np.float32), "F")
            for c in range(3)]


def _resize(image, size, box):
    """`image` (RGB, or three float channels) cropped to `box`, resized."""
    height, width = size
    if isinstance(image, list):
        return np.stack([np.asarray(c.resize((width, height),
                                             Image.BILINEAR, box=box))
                         for c in image], axis=-1)
    return np.asarray(image.resize((width, height), Image.BILINEAR, box=box))


def _boxes(width, height, size, tta, crop_fraction):
    center = _images.crop_box(width, height, size, crop_fraction)
    if tta != "multi_crop":
        return [center]
    box_w, box_h = center[2] - center[0], center[3] - center[1]
    corners = [(0, 0), (width - box_w, 0), (0, height - box_h),
               (width - box_w, height - box_h)]
    return [center] + [(x, y, x + box_w, y + box_h) for x, y in corners]


def _check_pixels(name, array):
    """`array` as pixels: refuses a bool mask, integers out of [0, 255]
    (a 16-bit image read as 8-bit pixels), NaN or inf; other float types
    (bfloat16) and numeric object arrays become float32."""
    pixels = real_pixels(array)
    if pixels is None:
        raise ValueError(f"Image {name} has dtype {array.dtype}; expected "
                         "RGB pixels in [0, 255] (integers or floats).")
    array, kind = pixels, pixels.dtype.kind
    if kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"Image {name} holds NaN or infinite pixels.")
    if kind in "ui" and array.size and (array.min() < 0
                                        or array.max() > 255):
        hint = (" (for a 16-bit image pass `(image >> 8).astype('uint8')`)"
                if 0 <= array.min() and array.max() <= 65535 else "")
        raise ValueError(
            f"Image {name} holds integer pixels in [{array.min()}, "
            f"{array.max()}]; expected [0, 255]{hint}.")
    return array


def make_views(name, source, size, tta, crop_fraction, max_pixels,
               exif_transpose=True):
    """float32 `(views, height, width, 3)` for one source; the first view
    is the one prediction without `tta` uses."""
    if isinstance(source, np.ndarray) and (source.ndim != 3
                                           or source.shape[-1] != 3):
        raise ValueError(f"Image {name} has shape {source.shape}; expected "
                         "(height, width, 3) RGB pixels in [0, 255].")
    if isinstance(source, np.ndarray):
        source = _check_pixels(name, source)
    as_is = (isinstance(source, np.ndarray)
             and tuple(source.shape[:2]) == tuple(size))
    if as_is and tta != "multi_crop":
        views = [np.asarray(source, np.float32)]
    elif isinstance(source, str) and tta != "multi_crop":
        try:
            views = [_images.load_image(source, size, "center_crop",
                                        crop_fraction, max_pixels,
                                        exif_transpose)]
        except (OSError, ValueError) as error:
            raise OSError(f"Cannot read image file {source!r}: "
                          f"{_images.describe_error(error)}") from error
    else:
        if isinstance(source, str):
            image = _open(source, size, max_pixels, exif_transpose)
        elif isinstance(source, Image.Image):
            image = _images.to_rgb(_upright(source) if exif_transpose
                                   else source)
        else:
            image = _as_pil(name, source, size)
        first = image[0] if isinstance(image, list) else image
        views = [_resize(image, size, box) for box in _boxes(
            first.width, first.height, size, tta, crop_fraction)]
        if as_is:
            # Used as it is, also as multi_crop's center view.
            views[0] = np.asarray(source, np.float32)
    views = np.stack([np.asarray(v, np.float32) for v in views])
    if tta == "flip":
        views = np.concatenate([views, views[:, :, ::-1]])
    return views
