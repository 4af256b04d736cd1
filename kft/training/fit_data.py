"""The data forms `fine_tune` and `cache_features` take, and what they hold.

Training data is either an `(x, y)` pair of arrays (a tuple; a list pair is
turned into one by `as_pair`) or anything `model.fit` takes as `x`, such as
a `kft.data` dataset yielding `(x, y)` batches.
"""

import math
import warnings
import weakref

import numpy as np

from kft._validation import check_finite_images
from kft._validation import check_labels
from kft._validation import fail_argument
from kft._validation import user_stacklevel
from kft.data._dataset import ImageDataset
from kft.data._host_augment import has_effect


def as_pair(data, name, need_labels=False):
    """`(x, y)` arrays from a tuple or list pair; anything else unchanged.

    Args:
        data: A tuple or list `(x, y)`, or any other data (returned as is).
        name: The argument's name, for the error message.
        need_labels: Refuse an array (images without labels).

    Returns:
        A tuple of two numpy arrays, or `data`.

    Raises:
        ValueError: a tuple or list that is not a pair, or an array
            with `need_labels`.

    Example:
    >>> x, y = as_pair([[[0.0]], [1]], "train_data")
    >>> x.shape, y.tolist()
    ((1, 1), [1])
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                f"Argument `{name}` must be an `(x, y)` pair or a dataset of "
                f"(x, y) batches. Received: a {type(data).__name__} of "
                f"length {len(data)}")
        x = np.asarray(data[0])
        check_finite_images(x, name)
        return x, np.asarray(data[1])
    if need_labels and hasattr(data, "shape") and hasattr(data, "dtype"):
        # An array: images without their labels.
        raise ValueError(
            f"Argument `{name}` must be an `(x, y)` pair or a dataset of "
            f"(x, y) batches; an array has no labels. Received: an array "
            f"of shape {tuple(data.shape)}")
    return data


def integer_labels(y):
    """Whether label array `y` holds integer labels rather than one-hot
    rows: `(n,)`, or `(n, 1)` as `keras.datasets` return them (a one-hot
    row of width 1 would say nothing).

    Example:
    >>> import numpy as np
    >>> integer_labels(np.zeros((4, 1))), integer_labels(np.eye(3))
    (True, False)
    """
    return y.ndim < 2 or (y.ndim == 2 and y.shape[1] == 1)


# Losses of a classifier over `model.outputs[0].shape[-1]` classes, whose
# labels are checked: JAX gathers a label past the last class silently.
_CLASSIFIER_LOSSES = ("sparse_categorical_crossentropy",
                      "categorical_crossentropy")


def classifier_classes(model):
    """The number of classes of a model compiled with a classification
    loss, else `None` (its labels are then not checked)."""
    loss = model.loss
    name = loss if isinstance(loss, str) else getattr(
        loss, "name", getattr(loss, "__name__", None))
    outputs = getattr(model, "outputs", None)
    if name not in _CLASSIFIER_LOSSES or not outputs or len(outputs) != 1:
        return None
    return outputs[0].shape[-1]


def check_data_labels(data, num_classes, name, labels_name=None,
                      model=None):
    """Raises unless the labels of `data` fit a model with `num_classes`.

    Checks the labels of an `(x, y)` pair (integer labels in range, shaped
    `(n,)` or `(n, 1)`, or one-hot rows of the model's width) and the class
    count of a `kft.data` dataset; other data is not inspected. Labels
    out of range are named `labels_name` (default `name[1]`). Given a
    `model` that names its classes (`kft_metadata`), a dataset with class
    names of its own must name class `i` as the model does.

    Example:
    >>> import numpy as np
    >>> check_data_labels((np.zeros((2, 1)), np.eye(2)), 3, "data")
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Argument `data` has one-hot labels of width 2 for a model ...
    >>> check_data_labels((np.zeros((2, 1)), np.array([[0], [2]])), 3, "data")
    """
    if isinstance(data, tuple):
        _, y = data
        if not integer_labels(y) and (y.ndim != 2
                                      or y.shape[1] != num_classes):
            what = (f"one-hot labels of width {y.shape[1]}" if y.ndim == 2
                    else f"labels of shape {y.shape}")
            raise ValueError(
                f"Argument `{name}` has {what} for a model with "
                f"{num_classes} classes. Labels must be integers 0.."
                f"{num_classes - 1}, shaped (n,) or (n, 1), or one-hot rows "
                f"of width {num_classes}.")
        if integer_labels(y):
            check_labels(y.reshape(-1), num_classes,
                         name=labels_name or f"{name}[1]")
    elif isinstance(data, ImageDataset) and (
            len(data.class_names) > num_classes or (
                data.label_mode == "categorical"
                and len(data.class_names) != num_classes)):
        # Fewer integer classes fit; one-hot rows must be the model's width.
        raise ValueError(
            f"Argument `{name}` has {len(data.class_names)} classes "
            f"({data.class_names}"
            + (", one-hot rows" if data.label_mode == "categorical" else "")
            + f") but the model outputs {num_classes}.")
    if (isinstance(data, ImageDataset) and model is not None
            and not data.numbered_classes):
        check_class_names_fit(data.class_names, model, num_classes, name)


def check_class_names_fit(names, model, num_classes, name):
    """Raises unless data whose classes are `names` (label order) name
    class `i` as `model` names its column `i` (when it names them,
    `kft_metadata`): the first `len(names)` of the model's names."""
    # Label i trains the model's column i, which its class names (kept for
    # `kft.predict`, `kft.export`) call known[i]: a dataset naming its
    # classes otherwise trained a model that then named predictions wrong.
    from kft.evaluation._predict import class_difference
    from kft.evaluation._predict import model_class_names

    known = model_class_names(model, num_classes)
    names = tuple(str(n) for n in names)
    if known is None or names == known[:len(names)]:
        return
    raise ValueError(
        f"Argument `{name}` names its classes otherwise than the model: "
        "its label i would train the model's class i"
        + class_difference(known, names)
        + f". Model classes: {list(known)}. Received: {name} with "
        f"class_names {list(names)}. Build the model with the data's "
        "names (`class_names=train.class_names`), or load data of the "
        "model's classes (kft.data.from_directory sorts class folders by "
        "name).")


def one_hot_labels(data):
    """Whether `data` (a pair or a `kft.data` dataset) has one-hot labels
    (`(n, 1)` labels are integer labels, see `integer_labels`).

    Example:
    >>> import numpy as np
    >>> one_hot_labels((np.zeros((2, 1)), np.eye(2))), one_hot_labels(None)
    (True, False)
    """
    if isinstance(data, tuple):
        return not integer_labels(data[1])
    return isinstance(data, ImageDataset) and data.label_mode == "categorical"


def check_label_forms(train_data, val_data):
    """Raises if the training and validation labels differ in form.

    One loss serves both, so integer labels with one-hot validation rows
    (or the reverse) would fail only at the first validation. Data whose
    form is unknown (a dataset not from `kft.data`) is not checked.

    Example:
    >>> import numpy as np
    >>> check_label_forms((np.zeros((2, 1)), np.arange(2)),
    ...                   (np.zeros((2, 1)), np.eye(2)))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Arguments `train_data` and `val_data` must have labels ...
    """
    forms = [_label_form(data) for data in (train_data, val_data)]
    if None in forms or forms[0] == forms[1]:
        return
    raise ValueError(
        "Arguments `train_data` and `val_data` must have labels in the same "
        f"form: one loss serves both. Received: train_data with {forms[0]} "
        f"labels, val_data with {forms[1]} labels. Convert one, e.g. "
        "`y.argmax(axis=-1)` for integer labels or "
        "`keras.utils.to_categorical(y, num_classes)` for one-hot rows.")


def _label_form(data):
    """`"integer"` or `"one-hot"` for a pair or a `kft.data` dataset, else
    `None`."""
    if not isinstance(data, (tuple, ImageDataset)):
        return None
    return "one-hot" if one_hot_labels(data) else "integer"


def dataset_augments(data):
    """Whether `data` is a dataset that augments its images on the host.

    Example:
    >>> import numpy as np, kft
    >>> x, y = np.zeros((4, 16, 16, 3), "float32"), np.arange(4) % 2
    >>> dataset_augments(kft.data.from_arrays(x, y, augmentation="light"))
    True
    """
    return bool(getattr(data, "augments", False))


def random_image_layers(model):
    """The layers of `model` (nested ones too) that augment images at
    random in training: Keras' random image layers and kft's, each holding
    a seed generator.

    Example:
    >>> import kft
    >>> m = kft.build_classifier("simple_cnn", 2, weights=None,
    ...                          input_shape=(16, 16, 3))
    >>> random_image_layers(m), len(random_image_layers(
    ...     kft.augmentation.attach(m, "light")))
    ([], 2)
    """
    from kft import _compat

    return [layer for layer in _compat.flatten_layers(model)
            if is_random_image_layer(layer)]


def is_random_image_layer(layer):
    """Whether `layer` is one of Keras' random image layers or kft's
    and holds a seed generator (draws in training)."""
    import keras

    from kft import _compat
    from kft.augmentation.torch_style import RandomLayer

    return isinstance(layer, (_compat.base_image_preprocessing_layer(),
                              RandomLayer)) and any(
        isinstance(value, keras.random.SeedGenerator)
        for value in vars(layer).values())


_WARNED_UNAPPLIED = weakref.WeakSet()


def warn_if_augmentation_unapplied(model, data):
    """Warns (once per model) when `data` leaves its augmentation to the
    model (`augment_on="model"`) and `model` has no random image layer:
    it would train on images that are never augmented."""
    augmentation = getattr(data, "augmentation", None)
    if (getattr(data, "augment_on", None) != "model"
            or not has_effect(augmentation) or model in _WARNED_UNAPPLIED
            or random_image_layers(model)):
        return
    _WARNED_UNAPPLIED.add(model)
    warnings.warn(
        f"The training data leaves its augmentation ({augmentation.name!r}) "
        f"to the model (augment_on=\"model\"), but model {model.name!r} "
        "has no random augmentation layer: it trains on images that are "
        "never augmented. Put it in the model first: `model = "
        "kft.augmentation.attach(model, data.augmentation)` (or build the "
        "data with augment_on=\"host\").", UserWarning,
        stacklevel=user_stacklevel())


def fit_arguments(model_fit_args, fit_kwargs, num_classes, model=None):
    """`model.fit`'s arguments by name, a kft dataset given as `x` made
    what a kft model of `num_classes` classes trains on: its classes and
    a dataset given as `validation_data` checked (`check_data_labels`;
    Keras took 7 classes into 5 outputs, labels 5 and 6 adding a loss of
    0), `class_weight`
    (checked as `fine_tune` checks it) put into its batches (Keras
    ignores `fit`'s for a data adapter: the run was silently unweighted),
    `sample_weight` refused (same), and short passes filled
    (`ImageDataset.for_fit`).

    Example:
    >>> import numpy as np, kft
    >>> ds = kft.data.from_arrays(np.zeros((2, 4, 4, 3)), [0, 1])
    >>> fit_arguments((ds,), {"class_weight": {1: 2.0}}, 2)["x"].class_weight
    {1: 2.0}
    """
    from kft.training.class_weights import resolve_class_weight

    import inspect

    import keras

    try:
        arguments = inspect.signature(keras.Model.fit).bind(
            None, *model_fit_args, **fit_kwargs).arguments
    except TypeError as error:  # as Python names a call's bad arguments
        raise TypeError(f"fit() {error}") from None
    arguments.pop("self")
    arguments.update(arguments.pop("kwargs", {}))
    data = arguments.get("x")
    for key in ("x", "validation_data"):
        if isinstance(arguments.get(key), ImageDataset):
            check_data_labels(arguments[key], num_classes, key, model=model)
    if not isinstance(data, ImageDataset):
        if isinstance(data, np.ndarray):
            check_finite_images(data, "x")
        validation = arguments.get("validation_data")
        if isinstance(validation, (tuple, list)) and validation and (
                isinstance(validation[0], np.ndarray)):
            check_finite_images(validation[0], "validation_data[0]")
        if arguments.get("class_weight") is not None:
            # Keras would take any dict (negative weights, classes the
            # model lacks) and fail on "balanced" inside its adapter.
            arguments["class_weight"] = checked_class_weight(
                arguments["class_weight"], data, arguments.get("y"),
                num_classes, arguments.get("validation_split"))
        return arguments
    if arguments.get("sample_weight") is not None:
        raise ValueError(
            "Argument `sample_weight` does not apply to a kft.data "
            "dataset (Keras ignores it for a dataset, whose batches carry "
            "any weights): use `dataset.with_class_weight(...)` for class "
            "weights, or arrays `fit(x, y, sample_weight=...)`. Received: "
            f"sample_weight of type {type(arguments['sample_weight']).__name__}")
    class_weight = resolve_class_weight(arguments.pop("class_weight", None),
                                        data, num_classes)
    if class_weight is not None:
        data = data.with_class_weight(class_weight)
    arguments["x"] = data.for_fit()
    return arguments


def checked_class_weight(class_weight, x, y, num_classes,
                          validation_split=None):
    """`fit`'s `class_weight` for data other than a kft dataset, checked
    as `fine_tune` checks it: `"balanced"` counted from the labels Keras
    trains on (`y` before its `validation_split` tail), or from the
    batches of a finite `tf.data.Dataset` or `keras.utils.PyDataset`, read
    once more. Keras refuses class weights for the other kinds of data
    (generators, grain and torch loaders) in its own words."""
    from kft.training.class_weights import resolve_class_weight

    import keras

    if y is not None:
        if validation_split and isinstance(class_weight, str):
            # Keras validates on the last `validation_split` of the arrays.
            y = y[:int(math.floor(len(y) * (1.0 - validation_split)))]
        return resolve_class_weight(class_weight, (x, y), num_classes)
    py_dataset = isinstance(x, keras.utils.PyDataset)
    if not py_dataset and not (type(x).__module__.startswith("tensorflow")
                               and hasattr(x, "element_spec")):
        return class_weight
    if isinstance(class_weight, str):
        # tf.data's cardinality: -1 infinite, -2 unknown (which may be
        # infinite too: `repeat().filter(...)`).
        endless = (x.num_batches is None if py_dataset
                   else int(x.cardinality()) < 0)
        if endless:
            fail_argument(
                "class_weight", "a dict {class index: weight} for data "
                "not known to end (counting its labels might never finish), "
                "e.g. kft.balanced_class_weight(labels, num_classes)",
                class_weight)
    return resolve_class_weight(class_weight, x, num_classes)


def plain_data(data):
    """Whether `data` is known to yield the same examples every pass:
    arrays, or a kft dataset without augmentation or balanced sampling.

    `None` (no validation data) counts as plain. A dataset of another kind
    is not known to be plain, so this returns `False` for it.

    Example:
    >>> import numpy as np
    >>> plain_data((np.zeros((2, 1)), np.zeros(2))), plain_data([1, 2])
    (True, False)
    """
    if data is None:
        return True
    if isinstance(data, tuple):
        return all(isinstance(part, np.ndarray) for part in data)
    # A dataset carrying class weights (`with_class_weight`) is not: a
    # feature cache keeps features and labels only.
    return (isinstance(data, ImageDataset) and not dataset_augments(data)
            and data.sampling == "all" and data.class_weight is None)


def batches(data, batch_size):
    """Yields `(x, y or None)` batches of arrays or of a dataset.

    Args:
        data: `(x, y)` arrays (`y` may be `None`), an `x` array, or an
            iterable of `(x, y)` or `x` batches.
        batch_size: Batch size for arrays.

    Raises:
        ValueError: a dataset that augments its images (`dataset_augments`),
            resamples them every pass (`sampling="balanced"`) or carries
            class weights (`with_class_weight`).

    Example:
    >>> import numpy as np
    >>> [x.shape[0] for x, _ in batches(np.zeros((5, 2)), 2)]
    [2, 2, 1]
    """
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        for start in range(0, len(x), batch_size):
            yield (x[start:start + batch_size],
                   None if y is None else y[start:start + batch_size])
        return
    if isinstance(data, np.ndarray):
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size], None
        return
    if dataset_augments(data):
        raise ValueError(
            "The dataset augments its images (augmentation="
            f"{data.augmentation.name.removeprefix('augment_')!r}); cached "
            "features would freeze "
            "one draw. Load it with augmentation='none' to cache features."
        )
    if getattr(data, "class_weight", None) is not None:
        raise ValueError(
            "The dataset carries class weights in its batches (made with "
            "with_class_weight); a feature cache keeps features and labels "
            "only, so they would be dropped. Cache the dataset it was made "
            "from and pass the weights to fit_head(..., class_weight=...) "
            "(fine_tune(..., class_weight=...) does so).")
    if getattr(data, "sampling", "all") == "balanced":
        raise ValueError(
            "The dataset resamples its examples every pass (sampling="
            "'balanced'); cached features would freeze one draw. Cache "
            "dataset.in_order() and train with class_weight='balanced', "
            "or train with fit (fine_tune(..., cache_features=False)).")
    for batch in data:
        if isinstance(batch, (tuple, list)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def num_examples(data):
    """The number of examples of arrays, or `None` for a dataset."""
    if isinstance(data, tuple) and len(data) == 2:
        return len(data[0])
    if isinstance(data, np.ndarray):
        return len(data)
    return None
