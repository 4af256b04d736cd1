"""Target and source image data for the adaptation tools: forms, checks."""

import numpy as np

from kft._validation import check_finite_images
from kft.distributed.processes import every_example


def _describe(data):
    shape = getattr(data, "shape", None)
    return f"array of shape {shape}" if shape is not None else type(
        data).__name__


def image_array(data, name, *, allow_labels=False):
    """`data` as an `(n, h, w, c)` numpy array of its own dtype (users of
    it cast a batch at a time: a float32 copy of a uint8 array up front
    was 4x its memory), or `None` for a dataset.

    Args:
        data: An image array, or an `(x, y)` pair (allowed only with
            `allow_labels`; the labels are dropped), or a dataset.
        name: The argument's name, for errors.
        allow_labels: Whether an `(x, y)` pair is accepted.

    Raises:
        ValueError: labelled data where unlabelled images are needed, an
            array that is not a batch of images, or no images.
    """
    if isinstance(data, (tuple, list)):
        if len(data) == 2 and not allow_labels:
            raise ValueError(
                f"Argument `{name}` must be unlabelled target images, an "
                "array (n, height, width, channels): domain adaptation does "
                "not use target labels, and passing them risks training on "
                f"them by mistake. Received: an (x, y) pair; pass `{name}[0]`"
                " (keep the labels for evaluation).")
        if len(data) == 2:
            data = data[0]
        else:
            raise ValueError(
                f"Argument `{name}` must be an image array or an (x, y) pair."
                f" Received: a {type(data).__name__} of length {len(data)}")
    if data is None:
        raise ValueError(f"Argument `{name}` must hold images. Received: None")
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        # Read as a dataset, its characters were the batches ("could not
        # convert string to float: '/'").
        raise TypeError(
            f"Argument `{name}` must be images: an array (n, height, width, "
            "channels), an (x, y) pair or a dataset, e.g. "
            "`kft.data.from_directory(path, image_size)[0]` for a folder. "
            f"Received: {name}={data!r}")
    if not hasattr(data, "shape"):
        return None
    array = np.asarray(data)
    if array.dtype.kind not in "uifb":  # not pixels: named as before
        array = np.asarray(data, "float32")
    if array.ndim != 4:
        raise ValueError(
            f"Argument `{name}` must be images of shape (n, height, width, "
            f"channels). Received: {name}.shape={array.shape}")
    if len(array) == 0:
        raise ValueError(
            f"Argument `{name}` must hold at least one image. Received: an "
            f"empty array of shape {array.shape}")
    # As it is used, float32: a float64 pixel past float32's range (1e300)
    # is finite here and inf in the model.
    check_finite_images(array, name, as_float32=array.dtype.itemsize > 4)
    return array


def dataset_arrays(data, limit=None):
    """`(images, labels)` arrays of a `kft.data.ImageDataset` (its first
    `limit` examples when given), read once in stored order (`in_order()`:
    no shuffling or balanced resampling), or `None` when `data` is not
    one. Batches are copied into one array as they come (a list of them
    joined at the end held the images twice)."""
    from kft.data import ImageDataset

    if not isinstance(data, ImageDataset):
        return None
    total = data.num_examples if limit is None else min(
        limit, data.num_examples)
    images = labels = None
    count = 0
    for batch in data.in_order():
        if count >= total:
            break
        x = np.asarray(batch[0], "float32")[:total - count]
        y = np.asarray(batch[1])[:total - count]
        if images is None:
            images = np.empty((total,) + x.shape[1:], "float32")
            labels = np.empty((total,) + y.shape[1:], y.dtype)
        images[count:count + len(x)] = x
        labels[count:count + len(x)] = y
        count += len(x)
    if images is None:
        return (np.zeros((0,) + (0,) * 3, "float32"), np.zeros((0,)))
    return images[:count], labels[:count]


def check_same_images(shape_a, shape_b, name_a, name_b):
    """Raises unless two per-image shapes `(h, w, c)` agree."""
    a, b = tuple(shape_a), tuple(shape_b)
    if None in a or None in b:
        known = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        if all(x == y for x, y in known) and len(a) == len(b):
            return
    if a != b:
        raise ValueError(
            f"Images of `{name_a}` and `{name_b}` must have the same shape "
            f"(height, width, channels). Received: {name_a} images {a}, "
            f"{name_b} images {b}. Resize one domain to the other (e.g. "
            "kft.datasets.digits_m(image_size=...)).")


def image_batches(data, name, batch_size, *, expected_shape=None,
                  allow_labels=True):
    """Yields float32 image batches of arrays or of a dataset; raises if
    there are none or their shape is not `expected_shape` (h, w, c)."""
    array = image_array(data, name, allow_labels=allow_labels)
    if array is not None:
        if expected_shape is not None:
            check_same_images(expected_shape, array.shape[1:], "the model's "
                              "input", name)
        for start in range(0, len(array), batch_size):
            yield np.asarray(array[start:start + batch_size], "float32")
        return
    count = 0
    # Every example once, as stored: the dataset's host augmentation,
    # shuffling and balanced sampling would change what is measured.
    in_order = getattr(data, "in_order", None)
    for batch in every_example(in_order() if callable(in_order) else data):
        if isinstance(batch, dict):
            raise ValueError(
                f"Argument `{name}` must yield image batches or (images, "
                "labels) batches. Received a batch that is a dict.")
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        batch = np.asarray(batch, "float32")
        if batch.ndim != 4:
            raise ValueError(
                f"Argument `{name}` must yield images of shape (batch, "
                f"height, width, channels). Received a batch of shape "
                f"{batch.shape}")
        if expected_shape is not None:
            check_same_images(expected_shape, batch.shape[1:],
                              "the model's input", name)
        if len(batch):
            check_finite_images(batch, name, first=count)
            count += len(batch)
            yield batch
    if count == 0:
        raise ValueError(
            f"Argument `{name}` must hold at least one image. Received: "
            f"{_describe(data)} that yielded none")
