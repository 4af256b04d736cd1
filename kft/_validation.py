"""Argument checks with one message form.

Every check raises `ValueError` (or `TypeError` for a value of the wrong
kind) reading "Argument `name` must be <what>. Received: name=<value>", and
returns the value normalised (a numpy integer becomes an `int`, a number a
`float`).
"""

import math
import numbers

import numpy as np


def fail_argument(name, what, value, error=ValueError):
    """Raises `error` in the one message form, for checks the helpers below
    do not cover."""
    raise error(f"Argument `{name}` must be {what}. Received: {name}={value!r}")


def user_stacklevel():
    """The `stacklevel` for `warnings.warn` that names the first caller
    outside kft, Keras, grain and `contextlib` (a warning raised deep
    inside kft, reached by several paths, from a callback `fit` runs, from
    reading a dataset or as a `with` block ends, then points at the
    user's line)."""
    import contextlib
    import os
    import sys

    import grain
    import keras

    packages = tuple(os.path.dirname(os.path.abspath(module.__file__))
                     + os.sep for module in (sys.modules[__package__],
                                             keras, grain)) + (
        contextlib.__file__,)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(
            packages):
        frame, level = frame.f_back, level + 1
    return level


def listed(names, limit=20):
    """`names` as a message shows them: their list, cut after `limit` with
    how many more (1,000 class names made a message of 100 KB).

    >>> listed(["cat", "dog"]), listed("abcde", limit=3)
    ("['cat', 'dog']", "['a', 'b', 'c', ... and 2 more]")
    """
    names = list(names)
    if len(names) <= limit:
        return repr(names)
    return repr(names[:limit])[:-1] + f", ... and {len(names) - limit} more]"


def check_bool(name, value):
    """Returns `value` as a `bool`; numpy bools accepted, strings not ("False"
    would read as true).

    >>> check_bool("shuffle", np.bool_(False))
    False
    """
    if not isinstance(value, (bool, np.bool_)):
        fail_argument(name, "True or False", value, TypeError)
    return bool(value)


def check_int(name, value, *, min_value=None, max_value=None):
    """Returns `value` as an `int`; numpy integers accepted, bools not.

    >>> check_int("epochs", np.int64(3), min_value=0)
    3
    """
    if min_value is not None and max_value is not None:
        what = f"an integer in [{min_value}, {max_value}]"
    elif min_value is not None:
        what = f"an integer >= {min_value}"
    elif max_value is not None:
        what = f"an integer <= {max_value}"
    else:
        what = "an integer"
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Integral):
        fail_argument(name, what, value)
    value = int(value)
    if (min_value is not None and value < min_value) or (
            max_value is not None and value > max_value):
        fail_argument(name, what, value)
    return value


def plain_scalar(value):
    """A NumPy scalar as the Python `bool`, `int` or `float` it holds;
    other values as they are (Keras' optimizers take Python floats only, a
    TOML file Python values).

    >>> plain_scalar(np.float32(0.5)), plain_scalar(np.bool_(True))
    (0.5, True)
    """
    if isinstance(value, np.generic):
        # `.item()` of an np.longdouble is an np.longdouble again.
        convert = {"b": bool, "i": int, "u": int, "f": float}.get(
            value.dtype.kind)
        if convert is not None:
            return convert(value)
    return value


def check_verbose(value, name="verbose"):
    """Returns Keras' `verbose` values as an `int`: `0`, `1`, `2`,
    `"auto"` (`1`, as `fit` reads it) or a bool. Keras' `fit` takes any
    other value without a word (`5` as `2`, `-1` or `"yes"` as a bar).

    >>> check_verbose("auto"), check_verbose(False), check_verbose(2)
    (1, 0, 2)
    """
    if isinstance(value, str) and value == "auto":
        return 1
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral) and value in (0, 1, 2):
        return int(value)
    fail_argument(name, "0, 1, 2 or 'auto' (Keras' values)", value)


def check_number(name, value, *, low=None, high=None, low_open=False,
                 high_open=False):
    """Returns `value` as a finite `float` within the given bounds.

    `low_open` / `high_open` exclude the bound itself. NaN and infinities
    are always rejected.

    >>> check_number("alpha", 0.2, low=0.0)
    0.2
    """
    if low is not None and high is not None:
        what = (f"a finite number in {'(' if low_open else '['}{low}, "
                f"{high}{')' if high_open else ']'}")
    elif low is not None:
        what = f"a finite number {'>' if low_open else '>='} {low}"
    elif high is not None:
        what = f"a finite number {'<' if high_open else '<='} {high}"
    else:
        what = "a finite number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, numbers.Real):
        fail_argument(name, what, value)
    value = float(value)
    if not math.isfinite(value):
        fail_argument(name, what, value)
    if low is not None and (value < low or (low_open and value == low)):
        fail_argument(name, what, value)
    if high is not None and (value > high or (high_open and value == high)):
        fail_argument(name, what, value)
    return value


def check_choice(name, value, choices):
    """Returns `value` if it is one of `choices`.

    >>> check_choice("mode", "min", ("auto", "min", "max"))
    'min'
    """
    if not isinstance(value, str) or value not in choices:
        fail_argument(name, f"one of {tuple(choices)}", value)
    return value


def integer_values(values, name, accepted="integer class labels"):
    """`values` as an int64 array; raises naming `name` and what is
    `accepted` unless every value is an integer (integer-valued floats
    pass: non-finite or fractional values are named)."""
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"Argument `{name}` must hold {accepted}. Received: {name} "
                f"of dtype {array.dtype}")
        bad = array[~np.isfinite(array) | (array != np.round(array))]
        if bad.size:
            # Integer-valued floats pass: the value is what is wrong.
            shown = ", ".join(f"{v:g}" for v in np.unique(bad)[:10])
            raise ValueError(
                f"Argument `{name}` must hold {accepted}. Received: {name} "
                f"holding non-integer values {shown}")
    return array.astype(np.int64)


def check_labels(labels, num_classes, *, name="y", classes_of=None):
    """Checks integer class labels against a model's `num_classes`.

    JAX does not bounds-check gathers, so a label >= `num_classes` would
    train silently on garbage; this names the offending values instead.
    `classes_of` says where the number of classes came from (default: "a
    model with N classes"). Returns the labels as an integer numpy array.

    >>> check_labels([0, 2, 1], 3).tolist()
    [0, 2, 1]
    """
    array = integer_values(labels, name,
                           f"integer class labels in [0, {num_classes})")
    bad = np.unique(array[(array < 0) | (array >= num_classes)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10])
        more = f" and {bad.size - 10} more" if bad.size > 10 else ""
        classes_of = classes_of or f"a model with {num_classes} classes"
        raise ValueError(
            f"Argument `{name}` holds labels outside [0, {num_classes}) for "
            f"{classes_of}: {shown}{more}. Labels must "
            f"be integers 0..{num_classes - 1} (or one-hot rows of width "
            f"{num_classes}).")
    return array


def _is_iterator(value):
    return iter(value) is value


def check_class_names(class_names, num_classes=None):
    """Class names in index order: distinct strings, one per class when
    `num_classes` is given. Returns them as a tuple (`None` stays `None`).

    A string is refused, not read as one name per character; names are
    strings because reports key and print classes by name.

    >>> check_class_names(["cat", "dog"], 2)
    ('cat', 'dog')
    """
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not hasattr(
            class_names, "__iter__"):
        fail_argument("class_names", "a sequence of strings", class_names,
                      TypeError)
    given = class_names
    class_names = tuple(class_names)  # a generator is read once
    shown = class_names if _is_iterator(given) else given
    if not all(isinstance(name, str) for name in class_names):
        fail_argument("class_names", "a sequence of strings", shown,
                      TypeError)
    class_names = tuple(str(name) for name in class_names)  # numpy's str_
    repeated = sorted({n for n in class_names if class_names.count(n) > 1})
    if repeated:
        # One class would hide the other in reports keyed by name.
        fail_argument("class_names", f"distinct names (repeated: "
                      f"{repeated})", shown)
    if num_classes is not None and len(class_names) != num_classes:
        fail_argument("class_names", f"one name per class ({num_classes} "
                      f"names for {num_classes} classes)", shown)
    return class_names


def unicode_form_note(names, others):
    r"""A sentence for the names of `names` that equal one of `others` once
    both are in the same Unicode form (an accent as its own character or
    not: archives made on macOS name files the first way), else `""`.

    Example:
    >>> note = unicode_form_note(["cafe\u0301"], ["caf\u00e9", "tea"])
    >>> "differ only in Unicode form ('cafe\\u0301' vs 'caf\\xe9')" in note
    True
    """
    import unicodedata

    def form(name):
        return unicodedata.normalize("NFC", name)

    by_form = {form(other): other for other in others}
    pairs = [(name, by_form[form(name)]) for name in names
             if form(name) in by_form and by_form[form(name)] != name]
    if not pairs:
        return ""
    shown = ", ".join(f"{a!r} and {b!r}" for a, b in pairs)
    codes = ", ".join(f"{ascii(a)} vs {ascii(b)}" for a, b in pairs)
    return (f" {shown} differ only in Unicode form ({codes}), as names from "
            "an archive made on macOS do: rename one to match.")


def check_finite_images(images, name, first=None, as_float32=False):
    """Raises if `images` are not numbers (a bool mask, strings, objects)
    or an image of a float array holds NaN or inf: training on NaN made
    the weights NaN behind a finite loss, and statistics of it were NaN
    (a shift score, BatchNorm moving averages after adapt_batchnorm, a
    DANN loss). `first`: for a batch, the index of
    `images[0]` among all of `name`'s. `as_float32`: checked as the
    float32 the images will be cast to (1e300 is finite in float64 only).

    Example:
    >>> import numpy as np
    >>> check_finite_images(np.array([[0.0], [np.nan]]), "x")
    Traceback (most recent call last):
    ...
    ValueError: Argument `x` must hold finite pixels. Images with NaN or inf: 1 of 2 (the first: image 1).
    """
    images = np.asarray(images)
    if not images.size or not images.ndim:
        return  # a scalar is named elsewhere
    kind = images.dtype.kind
    if kind not in "uifV":  # "V": other float types, such as bfloat16
        # A bool mask trained as 0/1 pixels, an object array failed in JAX.
        hint = (" (an object array: convert the images with "
                "np.asarray(images, 'float32'))" if kind == "O" else "")
        raise ValueError(
            f"Argument `{name}` must hold integer or float pixels{hint}. "
            f"Received: {name}.dtype={images.dtype}")
    if kind in "ui":
        return  # integer pixels are finite
    # In slices: one mask of a whole dataset is a quarter of its size.
    step = max(1, 2**24 // max(images[0].size, 1))
    try:
        with np.errstate(over="ignore"):  # the cast's inf is the finding
            finite = np.concatenate([
                np.isfinite(np.asarray(images[i:i + step], "float32")
                            if as_float32 else images[i:i + step]).reshape(
                    len(images[i:i + step]), -1).all(axis=1)
                for i in range(0, len(images), step)])
    except TypeError:  # not numbers: other checks name that
        return
    if not finite.all():
        bad = int((~finite).sum())
        counted = (f"{bad} of {len(images)}" if first is None
                   else f"{bad} in a batch of {len(images)}")
        raise ValueError(
            f"Argument `{name}` must hold finite pixels. Images with NaN or "
            f"inf: {counted} (the first: image "
            f"{(first or 0) + int(np.argmin(finite))}).")


def real_pixels(array):
    """`array` as pixel values: other float types (bfloat16) and object
    arrays of real numbers become float32; `None` for what is not pixels
    (bool masks, strings, complex or time values).

    Example:
    >>> real_pixels(np.array([1, 2.5], object)).dtype
    dtype('float32')
    >>> real_pixels(np.array([True])) is None
    True
    """
    kind = array.dtype.kind
    if kind == "V" or kind == "O" and all(
            isinstance(value, numbers.Real) and not isinstance(value, bool)
            for value in array.flat):
        try:
            array = array.astype(np.float32)
        except (TypeError, ValueError):
            return None
    return array if array.dtype.kind in "uif" else None


def labels_from_one_hot(rows, name):
    """Integer labels from one-hot rows `(n, k)`.

    Raises naming the rows that are not one-hot (soft, smoothed or mixed
    labels, all-zero padding rows, NaN): their argmax would be counted as
    a label.

    >>> labels_from_one_hot(np.eye(3)[[2, 0]], "y").tolist()
    [2, 0]
    """
    rows = np.asarray(rows)
    one_hot = ((rows == 0) | (rows == 1)).all(axis=1) & (
        rows.sum(axis=1) == 1)
    if not one_hot.all():
        bad = np.flatnonzero(~one_hot)
        raise ValueError(
            f"Argument `{name}` must be integer labels or one-hot rows (a "
            "single 1 per row, 0 elsewhere). Received: rows "
            f"{bad[:10].tolist()} of {name} are not one-hot, e.g. "
            f"{rows[bad[0]].tolist()}")
    return rows.argmax(axis=1)


def check_seed(value, name="seed"):
    """A seed for kft's data pipelines: an integer in [0, 2**32 - 1]
    (Keras' `SeedGenerator` and NumPy's shuffles take 32-bit seeds; out of
    range, JAX failed deep inside with an OverflowError).

    >>> check_seed(7)
    7
    """
    return check_int(name, value, min_value=0, max_value=2**32 - 1)


def mixed_seed(seed, stream):
    """A 32-bit seed mixed from `seed` and `stream` (NumPy's
    `SeedSequence`): with `seed + stream`, seed `s + 1` drew what seed `s`
    drew one stream later (a preset's next layer, a dataset's next pass),
    so runs compared over seeds 0, 1, 2 shared their draws.

    >>> mixed_seed(0, 1) != mixed_seed(1, 0)
    True
    """
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def offset_seed(seed, offset):
    """`seed + offset` wrapped into the 32-bit seeds `check_seed` takes:
    the seeds derived from one (a discriminator's layers) stay valid for a
    seed near 2**32 - 1 (they overflowed there). Seeds below 2**32 stay as
    they were.

    >>> offset_seed(2**32 - 1, 2)
    1
    """
    total = seed + offset
    return total % 2**32 if total >= 2**32 else total
