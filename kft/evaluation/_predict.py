"""A model's scores and the true labels, batch by batch.

Images are never gathered: each batch is predicted and dropped, so only
the labels and one row of scores per example are kept.
"""

import contextlib
import threading
import warnings
import weakref

import numpy as np

from kft._validation import check_finite_images
from kft._validation import check_labels
from kft._validation import labels_from_one_hot
from kft._validation import listed
from kft._validation import fail_argument
from kft._validation import unicode_form_note
from kft.distributed.data_parallel import batch_shards
from kft.distributed.data_parallel import predict_padded
from kft.distributed.processes import every_example
from kft.distributed.processes import process_count


def output_width(model):
    """The model's number of classes, known before predicting, or `None`.

    Raises for a model with several outputs: their scores would be
    stacked into one array and read as one (numpy's "inhomogeneous shape"
    or misleading shape errors much later)."""
    try:
        outputs = model.outputs
        width = outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(outputs) != 1:
        fail_argument("model", "a classifier with one output (its class "
                      "scores)", f"a model with {len(outputs)} outputs")
    return None if width is None else int(width)


def check_width(width, name="model"):
    """Refuses a single score per example (a one-unit sigmoid binary head):
    a softmax over one column is always 1, so every metric would read
    class 0 as certain and labels 1 as out of range."""
    if width is not None and width < 2:
        raise ValueError(
            f"Argument `{name}` must give one score per class, at least 2 "
            "columns: a single output unit (a sigmoid binary classifier) "
            "is not supported. Build the classifier with num_classes=2 "
            "(a softmax over the two classes). Received: "
            f"{width} score column per example")
    return width


def is_array(x):
    return hasattr(x, "shape") and hasattr(x, "dtype")


def integer_labels(y, num_classes, name):
    """Integer labels from integer labels or one-hot rows, range-checked.

    Rows of another width than the model's `num_classes` are an error:
    flattened, they would read as `width` labels per image.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        y = labels_from_one_hot(y, name)
    elif y.ndim == 2 and y.shape[1] != 1 or y.ndim > 2:
        raise ValueError(
            f"Argument `{name}` must hold integer labels or one-hot rows of "
            f"width {num_classes}, one column per class of the model. "
            f"Received: {name} of shape {y.shape} (rows of width "
            f"{y.shape[-1]}) for a model with {num_classes} classes")
    return check_labels(y.reshape(-1), num_classes, name=name)


def model_class_names(model, num_classes=None):
    """The class names `model` carries (`kft_metadata`, a kft
    classifier's), or `None` (also when they do not fit `num_classes`)."""
    known = (getattr(model, "kft_metadata", None) or {}).get("class_names")
    if known is None or (num_classes is not None
                         and len(known) != num_classes):
        return None
    return tuple(str(n) for n in known)


def data_class_names(data, num_classes, name="data", model=None):
    """The `class_names` of a dataset, checked against the model's
    classes: their number, and the names themselves when `model` carries
    them (`kft_metadata`, a kft classifier's). The dataset's own, so the
    error is about the data; without any (or only numbers a loader made
    up), the model's (or `None`)."""
    names = getattr(data, "class_names", None)
    if names is None:
        return model_class_names(model, num_classes)
    if num_classes is None or isinstance(names, str):
        return names
    names = tuple(names)
    numbered = getattr(data, "numbered_classes", False)
    if numbered and len(names) < num_classes:
        # Numbers a loader counted from labels that miss the last classes
        # (a small test split): the labels are the model's, as arrays are.
        return model_class_names(model, num_classes)
    if len(names) != num_classes:
        raise ValueError(
            f"Argument `{name}` has {len(names)} classes but the model has "
            f"{num_classes}: its labels would not name the model's classes. "
            f"Evaluate data of the model's classes (a folder of some of "
            f"them: kft.runs.load_eval_folder(path, class_names, "
            f"image_size) labels it in the model's order), or a model built "
            f"for these. Received: {name} with class_names {list(names)}")
    known = (getattr(model, "kft_metadata", None) or {}).get("class_names")
    if known is not None and numbered:
        return tuple(str(n) for n in known)  # no names of its own
    if known is not None and tuple(known) != names:
        # Label i names the dataset's class i, the model's column i its
        # own: scoring one against the other is wrong without an error.
        raise ValueError(
            f"Argument `{name}` has classes that are not the model's"
            + class_difference(known, names)
            + f". Model classes: {listed(known)}. Received: {name} with "
            f"class_names {listed(names)}. Evaluate data of the model's "
            "classes, labelled in its order (kft.data.from_directory "
            "sorts class folders by name, as it did for training).")
    return names


def class_difference(model_names, data_names):
    """"; missing: [...]; not in the model: [...]" (the parts that apply),
    or "; the same classes in another order"."""
    missing = sorted(set(model_names) - set(data_names))
    extra = sorted(set(data_names) - set(model_names))
    if not missing and not extra:
        return "; the same classes in another order"
    note = unicode_form_note(extra, missing).strip().rstrip(".")
    return ((f"; missing: {listed(missing)}" if missing else "")
            + (f"; not in the model: {listed(extra)}" if extra else "")
            + (f"; {note}" if note else ""))


def split_data(x, y):
    """`(images, labels, None)` for arrays, `(None, None, dataset)` else.

    Accepts images with `y`, an `(images, labels)` pair, or a dataset of
    `(images, labels)` batches with `y=None`.
    """
    if x is None:
        fail_argument("x", "images (with `y`), an (images, labels) pair or "
                      "a dataset of (images, labels) batches", x, TypeError)
    if y is None and isinstance(x, (tuple, list)) and len(x) == 2 and all(
            is_array(part) for part in x):
        x, y = x  # the `(x, y)` pair `kft.fine_tune` takes
    if y is None:
        if is_array(x):
            raise ValueError(
                "Argument `y` (the labels) is required when `x` holds "
                "images; leave it out only for a dataset of (images, labels) "
                f"batches. Received: x of shape {tuple(x.shape)}, y=None"
            )
        return None, None, x
    if not is_array(x) and not isinstance(x, (list, tuple)):
        raise ValueError(
            "Argument `y` must be left out when `x` is a dataset: its "
            "batches carry the labels. Received: x of type "
            f"{type(x).__name__} and y"
        )
    return x, y, None


def ordered(dataset):
    """A `kft.data.ImageDataset` in its stored order, each example once.

    Indices of a report then name the same examples in a second pass
    (`dataset.paths` order for image folders). Other data is returned as
    it is: its own iteration order defines the indices.
    """
    in_order = getattr(dataset, "in_order", None)
    return in_order() if callable(in_order) else dataset


def stored_indices(data, count):
    """Positions in `data.paths` of the `count` examples a pass of a
    `kft.data` dataset of files read, or `None` when they are `0..count-1`
    (or unknown). A file that fails to load while read is left out of the
    pass (and recorded in `data.skipped`): the rows after it are not their
    files' positions."""
    paths = getattr(data, "paths", None)
    if paths is None or len(paths) == count:
        return None
    failed = {s.path for s in getattr(data, "skipped", ())}
    kept = [i for i, path in enumerate(paths) if path not in failed]
    return np.asarray(kept) if len(kept) == count else None


def predict_arrays(model, x, y, batch_size, name="x"):
    """`(labels, scores)` of images and labels held in memory.

    `name` is the argument named in errors: labels are `y` for `x` and
    `data[1]` for a `data` pair.
    """
    label_name = "y" if name == "x" else f"{name}[1]"
    num_classes = check_width(output_width(model))
    if num_classes is not None:
        y = integer_labels(y, num_classes, label_name)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(
            f"Argument `{name}` must hold at least one image and one label "
            f"per image. Received: {len(x)} images and {len(y)} labels")
    # A NaN pixel gave NaN scores, refused as "`probabilities` must be
    # finite".
    check_finite_images(x, "x" if name == "x" else f"{name}[0]")
    scores = predict_numpy(model, x, batch_size)
    check_width(scores.shape[-1])
    return integer_labels(y, scores.shape[-1], label_name), scores


_TURNS = weakref.WeakKeyDictionary()
_TURNS_MADE = threading.Lock()


@contextlib.contextmanager
def model_turn(model):
    """Holds `model`'s lock: kft's calls on one model take turns. Keras'
    JAX predict and evaluate loops empty the model's variables while they
    run (the step is given them), so two threads predicting with one
    model broke it for good (`'NoneType' object is not callable`)."""
    with _TURNS_MADE:
        lock = _TURNS.setdefault(model, threading.RLock())
    with lock:
        yield


def predict_numpy(model, x, batch_size):
    """`model.predict(x)` as a numpy array, in every JAX process.

    With several processes Keras' `predict` returns arrays spread over
    them, which numpy cannot read; there each process runs every batch
    itself (`predict_on_batch` computes a process's own input on its own
    devices), so every process gets every row, as one process would (and
    no faster).
    """
    # Floats of another width (x / 255.0 is float64) are cast a batch at
    # a time: Keras casts the whole array, twice at once in `predict`
    # (float16: 4x its memory).
    cast = (isinstance(x, np.ndarray) and x.dtype.kind == "f"
            and x.dtype != np.float32 and len(x) > 0)
    with model_turn(model):
        if process_count() == 1 and batch_shards() == 1 and not cast:
            return np.asarray(model.predict(x, batch_size=batch_size,
                                            verbose=0))
        return np.concatenate([
            predict_padded(model, np.asarray(x[start:start + batch_size],
                                             "float32") if cast
                           else x[start:start + batch_size])
            for start in range(0, len(x), batch_size)])


def predict_batches(model, dataset, progress=None, name="x"):
    """`(labels, scores)` of a dataset yielding `(images, labels)` batches.

    `progress(done)` is called after each batch when given. A `kft.data`
    dataset is read whole in every JAX process (see `predict_numpy`), in
    its stored order without balanced sampling or host augmentation
    (`ordered`).
    """
    # A kft dataset's class weights are for training: evaluation counts
    # examples, so only weights of the user's own batches are worth a word.
    weights_named = getattr(dataset, "class_weight", None) is not None
    dataset = every_example(ordered(dataset))
    labels, scores = [], []
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError(
                f"Argument `{name}` must yield (images, labels) batches"
                + (" when `y` is left out" if name == "x" else "")
                + ". Received: a batch of type "
                f"{type(batch).__name__}"
                + (f" and length {len(batch)}"
                   if isinstance(batch, (tuple, list)) else "")
            )
        if len(batch) == 3 and not weights_named:
            weights_named = True
            warnings.warn(
                f"The batches of `{name}` carry sample weights (a third "
                "element); kft's reports count every example once and do "
                "not weight them.", stacklevel=3)
        if isinstance(batch[0], np.ndarray):  # not a device's arrays
            check_finite_images(batch[0], name, first=sum(map(len, labels)))
        with model_turn(model):
            batch_scores = predict_padded(model, batch[0])
        check_width(batch_scores.shape[-1])
        labels.append(integer_labels(batch[1], batch_scores.shape[-1],
                                     "y" if name == "x" else "labels"))
        scores.append(batch_scores)
        if progress is not None:
            progress(len(scores))
    if not labels:
        raise ValueError(
            f"Argument `{name}` must yield at least one (images, labels) "
            "batch. "
            "Received: an empty dataset"
        )
    return np.concatenate(labels), np.concatenate(scores)
