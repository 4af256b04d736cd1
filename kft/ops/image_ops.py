"""Image operations of `keras.ops.image`, computed in a form XLA runs fast.

Keras' JAX `affine_transform` interpolates with
`jax.scipy.ndimage.map_coordinates` over (row, column, channel), so every
output value costs 8 scalar gathers; its `gaussian_blur` is a depthwise
convolution, which XLA's CPU backend runs as a generic loop. Here the same
results come from 4 gathers of whole pixels (or 2 row gathers when rows
map to rows) and from `kft.ops.shifted_conv`'s shifted multiply-adds.
`kft.augmentation`'s layers use them; `benchmarks/bench_augment_layers.py`
measures the difference.
"""

import numbers
from typing import Literal
from typing import get_args

from jax import lax
from jax import numpy as jnp
from keras import ops

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import fail_argument
from kft.ops.shifted_conv import shifted_depthwise_conv

FillMode = Literal["constant", "nearest", "wrap", "mirror", "reflect"]
Interpolation = Literal["nearest", "bilinear"]
FILL_MODES = get_args(FillMode)
INTERPOLATIONS = get_args(Interpolation)


def _float_batch(images):
    """`images` as a tensor, checked: a 4-D batch of floats (interpolation
    weights and Gaussian taps cast to integer pixels would be 0 or 1)."""
    images = ops.convert_to_tensor(images)
    if len(images.shape) != 4:
        raise ValueError(
            "Argument `images` must be a batch of shape (batch, height, "
            f"width, channels). Received: images.shape={images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            "Argument `images` must hold floats; cast integer images first, "
            "e.g. `keras.ops.cast(images, \"float32\")`. Received: images "
            f"of dtype {images.dtype}")
    return images


def _fix_index(index, size, fill_mode):
    """Maps indices outside `[0, size)` as `map_coordinates` does."""
    if fill_mode == "nearest":
        return ops.clip(index, 0, size - 1)
    if fill_mode == "wrap":
        return ops.mod(index, size)
    if fill_mode == "mirror":
        period = max(2 * (size - 1), 1)
        return ops.abs(ops.mod(index + size - 1, period) - (size - 1))
    if fill_mode == "reflect":
        doubled = 2 * index + 1
        period = 2 * size
        return (ops.abs(ops.mod(doubled + 2 * size, 2 * period)
                        - 2 * size) - 1) // 2
    return index  # constant: out-of-range indices are masked by the caller


def _coordinates(points, transform, axes):
    """Input coordinates of output pixels, computed once and stored.

    A pixel's index (`floor`) and its interpolation weight must come from
    one coordinate value. Written as multiply-adds, the coordinate is
    recomputed by XLA in each fusion that uses it and may round differently
    in each (contracted to an FMA in one and not in another): at an integer
    coordinate the index then came from `floor(4.0000005)` and the weight
    from `3.9999998 - 3`, a whole pixel off under `jit`. As in Keras, the
    linear part is a matrix product, which XLA computes once, and the shift
    a separate add (no multiply to contract); the barrier also keeps the
    sum whole where barriers reach code generation (kft's CPU flags).

    Args:
        points: `(..., 2)` output positions `(y, x)`.
        transform: `(batch, 8)` transforms.
        axes: Which input coordinates: `"rows"`, `"cols"` or both.

    Returns:
        `(batch, len(axes), ...)` float32 coordinates.
    """
    # (y, x) coefficients and shift of the input row and column.
    terms = {"rows": (4, 3, 5), "cols": (1, 0, 2)}
    linear = transform[:, [terms[axis][:2] for axis in axes]]
    shift = transform[:, [terms[axis][2] for axis in axes]]
    # HIGHEST: float32 products on GPUs too (not TF32).
    coordinates = jnp.einsum("...k,bak->ba...", points, linear,
                             precision=lax.Precision.HIGHEST)
    shift = ops.reshape(shift, shift.shape + (1,) * (points.ndim - 1))
    return lax.optimization_barrier(coordinates + shift)


def _nodes(coordinate, interpolation):
    """`(index, weight)` pairs along one axis, as `map_coordinates`.

    `coordinate` must be one stored value (see `_coordinates`).
    """
    if interpolation == "nearest":
        # `lax.round` rounds half away from zero, like map_coordinates.
        index = ops.cast(ops.sign(coordinate)
                         * ops.floor(ops.abs(coordinate) + 0.5), "int32")
        return [(index, None)]
    lower = ops.floor(coordinate)
    upper_weight = coordinate - lower
    index = ops.cast(lower, "int32")
    return [(index, 1 - upper_weight), (index + 1, upper_weight)]


def affine_transform(
        images, transform,
        interpolation: Interpolation = "bilinear",
        fill_mode: FillMode = "constant",
        fill_value: float = 0, axis_aligned: bool = False):
    """`keras.ops.image.affine_transform` for channels-last batches.

    Output pixel `(y, x)` takes the input at `(b0 x + b1 y + b2,
    a0 x + a1 y + a2)` (row, column) for each transform
    `[a0, a1, a2, b0, b1, b2, c0, c1]`, with `c0 = c1 = 0` (affine; Keras'
    JAX backend applies `c0, c1` to the channel index, not projectively).
    Same results as Keras up to float rounding; each output pixel is a
    gather of whole pixels (all channels at once).

    Args:
        images: `(batch, height, width, channels)` floats.
        transform: `(batch, 8)` or `(8,)` transforms.
        interpolation: `"bilinear"` or `"nearest"`.
        fill_mode: One of `FILL_MODES`.
        fill_value: Value outside the input for `"constant"`.
        axis_aligned: `True` promises `a1 = b0 = 0` (scale and shift only,
            as `RandomZoom` and `RandomTranslation` make): the resampling
            then runs along the rows, then the columns (2.5x faster).

    Returns:
        The transformed images, shape and dtype of `images`.

    Example:
    >>> import numpy as np, kft
    >>> shift = np.array([1, 0, 2, 0, 1, 0, 0, 0], "float32")  # x + 2
    >>> image = np.arange(16, dtype="float32").reshape(1, 4, 4, 1)
    >>> out = kft.image_ops.affine_transform(image, shift)
    >>> np.asarray(out)[0, 0, :, 0].tolist()
    [2.0, 3.0, 0.0, 0.0]
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    check_choice("fill_mode", fill_mode, FILL_MODES)
    images = _float_batch(images)
    batch, height, width, channels = images.shape
    transform = ops.cast(ops.convert_to_tensor(transform), "float32")
    if tuple(transform.shape) not in ((8,), (batch, 8)):
        fail_argument("transform", f"shaped (8,) or (batch, 8) = "
                      f"({batch}, 8)", f"a tensor of shape "
                      f"{tuple(transform.shape)}")
    if len(transform.shape) == 1:
        transform = ops.broadcast_to(transform[None], (batch, 8))
    fill = ops.cast(fill_value, images.dtype)
    if axis_aligned:
        return _axis_aligned_transform(images, transform, interpolation,
                                       fill_mode, fill)
    points = jnp.stack(jnp.meshgrid(jnp.arange(height, dtype="float32"),
                                    jnp.arange(width, dtype="float32"),
                                    indexing="ij"), axis=-1)
    rows, cols = ops.unstack(
        _coordinates(points, transform, ("rows", "cols")), axis=1)
    flat = ops.reshape(images, (-1, channels))
    base = ops.arange(batch, dtype="int32")[:, None, None] * (height * width)
    output = None
    for row, row_weight in _nodes(rows, interpolation):
        for col, col_weight in _nodes(cols, interpolation):
            index = (base + _fix_index(row, height, fill_mode) * width
                     + _fix_index(col, width, fill_mode))
            if fill_mode == "constant":
                valid = ((row >= 0) & (row < height)
                         & (col >= 0) & (col < width))
                index = ops.where(valid, index, 0)
            values = ops.reshape(ops.take(flat, ops.reshape(index, (-1,)),
                                          axis=0), images.shape)
            if fill_mode == "constant":
                values = ops.where(valid[..., None], values, fill)
            if row_weight is not None:
                values = values * ops.cast(row_weight * col_weight,
                                           images.dtype)[..., None]
            output = values if output is None else output + values
    return output


def _axis_aligned_transform(images, transform, interpolation, fill_mode,
                            fill):
    """`affine_transform` for `a1 = b0 = 0`, one axis after the other.

    Exact for every fill mode: bilinear weights sum to 1, so a fill value
    met in either pass contributes what it does in the 2-D sum.
    """
    batch, height, width, channels = images.shape
    ys = jnp.arange(height, dtype="float32")
    xs = jnp.arange(width, dtype="float32")
    # (y, 0) and (0, x): a contraction of one term would become a multiply.
    rows = _coordinates(jnp.stack([ys, 0 * ys], -1), transform, ("rows",))
    cols = _coordinates(jnp.stack([0 * xs, xs], -1), transform, ("cols",))
    rows, cols = rows[:, 0], cols[:, 0]
    flat = ops.reshape(images, (batch * height, width * channels))
    base = ops.arange(batch, dtype="int32")[:, None] * height
    output = None
    for row, weight in _nodes(rows, interpolation):  # whole-row gathers
        index = _fix_index(row, height, fill_mode)
        if fill_mode == "constant":
            valid = (row >= 0) & (row < height)
            index = ops.where(valid, index, 0)
        values = ops.reshape(ops.take(flat, ops.reshape(base + index, (-1,)),
                                      axis=0), images.shape)
        if fill_mode == "constant":
            values = ops.where(valid[:, :, None, None], values, fill)
        if weight is not None:
            values = values * ops.cast(weight, images.dtype)[:, :, None, None]
        output = values if output is None else output + values
    images, output = output, None
    for col, weight in _nodes(cols, interpolation):
        index = _fix_index(col, width, fill_mode)
        if fill_mode == "constant":
            valid = (col >= 0) & (col < width)
            index = ops.where(valid, index, 0)
        values = ops.take_along_axis(images, index[:, None, :, None], axis=2)
        if fill_mode == "constant":
            values = ops.where(valid[:, None, :, None], values, fill)
        if weight is not None:
            values = values * ops.cast(weight, images.dtype)[:, None, :, None]
        output = values if output is None else output + values
    return output


def gaussian_blur(images, kernel_size: tuple[int, int] = (3, 3),
                  sigma: tuple[float, float] = (1.0, 1.0)):
    """`keras.ops.image.gaussian_blur` for channels-last batches.

    The same Gaussian kernel per channel, applied by
    `kft.ops.shifted_conv.shifted_depthwise_conv` (shifted multiply-adds
    with the zero padding of a "same" convolution) instead of XLA's
    depthwise convolution. Same results as Keras up to float rounding.

    Args:
        images: `(batch, height, width, channels)` floats.
        kernel_size: `(kernel_width, kernel_height)`, as in Keras.
        sigma: `(sigma_x, sigma_y)`, floats or scalar tensors.

    Returns:
        The blurred images.

    Example:
    >>> import numpy as np, kft
    >>> image = np.zeros((1, 5, 5, 1), "float32"); image[0, 2, 2] = 1
    >>> out = kft.image_ops.gaussian_blur(image, (3, 3), (1.0, 1.0))
    >>> round(float(np.asarray(out).sum()), 5)
    1.0
    """
    images = _float_batch(images)
    dtype = images.dtype
    for name, pair in (("kernel_size", kernel_size), ("sigma", sigma)):
        if isinstance(pair, (str, numbers.Number)) or not hasattr(
                pair, "__len__") or len(pair) != 2:
            fail_argument(name, "a (width, height) pair", pair, TypeError)
    # 0-d arrays (NumPy's or JAX's) as the ints they hold.
    kernel_size = tuple(check_int("kernel_size", int(k) if getattr(
        k, "ndim", None) == 0 and not isinstance(k, bool) else k,
        min_value=1) for k in kernel_size)
    for value in sigma:
        if isinstance(value, numbers.Real):
            # A sigma of 0 divided by 0: NaN images without a word.
            check_number("sigma", value, low=0.0, low_open=True)

    def taps(size, sigma):
        x = ops.arange(size, dtype=dtype) - (size - 1) / 2
        kernel = ops.exp(-0.5 * (x / ops.cast(sigma, dtype)) ** 2)
        return kernel / ops.sum(kernel)

    (size_x, size_y), channels = kernel_size, images.shape[-1]
    kernel = (taps(size_y, sigma[1])[:, None]
              * taps(size_x, sigma[0])[None, :])
    kernel = ops.broadcast_to(kernel[:, :, None, None],
                              (size_y, size_x, channels, 1))
    return shifted_depthwise_conv(images, kernel, padding="same")
