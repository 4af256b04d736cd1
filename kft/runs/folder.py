"""`load_run`: the model and what inference needs, from a run folder or a
`.keras` file."""

import dataclasses
import os
import zipfile

from kft._paths import not_a_folder
from kft._validation import check_class_names
from kft._validation import fail_argument
from kft._validation import listed
from kft._validation import unicode_form_note
from kft.deploy.metadata import read_metadata
from kft.models.init_draws import bucketed_draws
from kft.runs.report import read_json


@dataclasses.dataclass
class LoadedRun:
    """A trained model and what is known about it.

    Attributes:
        model: The Keras model.
        class_names: Class names in label order (`None` if unknown).
        image_size: Input side in pixels, or `(height, width)` for a
            model whose input is not square (as `kft.data` loaders take
            it); `None` for a model without a fixed-size image input
            (`image_size_for` says why).
        path: The run folder, or the model file.
        model_path: The `.keras` file.
    """

    model: object
    class_names: list | None
    image_size: int | tuple[int, int] | None
    path: str
    model_path: str


def load_run(path: str | os.PathLike) -> LoadedRun:
    """Loads `path`: a `kft train` run folder or a `.keras` model file.

    Class names come from the run folder's `run.json` (a `.keras` file
    inside a run folder finds it too), else from the metadata of a file
    `kft.export` wrote (`kft.deploy.read_metadata`), else from the model
    (a `kft.Classifier` keeps them in its config). The loaded model
    carries them in its `kft_metadata`, so `kft.export` and `kft.predict`
    of it name the classes.

    Raises:
        ValueError: `path` is neither, or the run has no model yet.

    Example:
    >>> import os, tempfile, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...                              weights=None, input_shape=(16, 16, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> model.save(path)
    >>> run = load_run(path)
    >>> run.image_size, run.class_names
    (16, None)
    """
    import keras

    path = os.fspath(path)
    if os.path.isdir(path):
        model_path = os.path.join(path, "model.keras")
        if not os.path.isfile(model_path):
            raise ValueError(
                f"{path!r} holds no model.keras: not a finished kft run "
                "folder (resume it with `kft train --resume --out ...`).")
        folder = path
    elif os.path.isfile(path) and path.endswith(".keras"):
        model_path, folder = path, os.path.dirname(path)
    else:
        raise ValueError(f"{path!r} is neither a kft run folder nor a "
                         ".keras model file.")
    if not zipfile.is_zipfile(model_path):
        # Keras calls an existing file it cannot open "not found".
        raise ValueError(f"{model_path!r} is not a readable .keras file (a "
                         "zip archive): corrupt, or not a Keras model.")
    with bucketed_draws():  # replaced by the saved weights
        model = keras.saving.load_model(model_path)
    class_names = None
    info_path = os.path.join(folder, "run.json")
    if os.path.isfile(info_path):
        class_names = read_json(info_path, (
            f"delete it, or load {model_path!r} itself (a kft classifier "
            "carries its class names)")).get("class_names")
    meta = read_metadata(model_path)  # a `kft.export`ed file carries some
    # A `kft.Classifier` carries its own (in its saved config).
    own = dict(getattr(model, "kft_metadata", None) or {})
    if class_names is None:
        class_names = meta.get("class_names") or own.get("class_names")
    if meta or own or class_names is not None:
        # `kft.export` / `kft.predict` of the loaded model read them there.
        model.kft_metadata = {**own, **meta, "class_names": class_names}
    image_size = None
    try:
        image_size = image_size_for(model, model_path)
    except ValueError:
        pass  # exporting it needs none; reading images for it raises
    return LoadedRun(model=model, class_names=class_names,
                     image_size=image_size, path=path, model_path=model_path)


def image_size_for(model, model_path):
    """The side of `model`'s square image input, else `(height, width)`
    (the height alone read a 24x40 model's images at 24x24); raises
    `ValueError` for an input of any size or not an image."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or None in shape[1:3]:
        raise ValueError(
            f"{model_path!r} takes no images of a fixed size (input shape "
            f"{shape}); reading images for it needs one: build the model "
            "with input_shape=(height, width, 3).")
    height, width = (int(v) for v in shape[1:3])
    return height if height == width else (height, width)


def layout_dir(train_dir, val_dir) -> str:
    """A temporary `train/` + `val/` layout of two folders (symbolic
    links), so that `kft.data.from_directory` reads `val_dir` with the
    eval transform and `train_dir`'s class order. The datasets record
    their files by the links' targets (the user's folders, named so in
    messages); the layout lives until the process exits.

    Example:
    >>> import os, tempfile
    >>> root = layout_dir(tempfile.mkdtemp(), tempfile.mkdtemp())
    >>> sorted(os.listdir(root))
    ['train', 'val']
    """
    return linked_dir({"train": train_dir, "val": val_dir})


def linked_dir(links) -> str:
    """A temporary folder of symbolic links, `{name: target folder}`,
    removed (the links, not their targets) when the process exits."""
    import atexit
    import shutil
    import tempfile

    root = os.path.realpath(tempfile.mkdtemp(prefix="kft_layout_"))
    atexit.register(shutil.rmtree, root, True)
    for name, target in links.items():
        os.symlink(os.path.abspath(target), os.path.join(root, name))
    return root


def load_eval_folder(path, class_names, image_size, batch_size=32,
                     exif_transpose=True):
    """A labelled folder (`<class>/<images>`) as a `kft.data` dataset with
    the eval transform (resize, center crop), labels in the order of
    `class_names`. Classes without a folder, or without a readable image,
    have no examples (`kft.evaluate` gives them recall 0 and says so).
    Bad files are skipped and reported once
    (`kft.data.SkippedFilesWarning`), named by their paths in `path`.
    `exif_transpose=False` reads the stored pixels, as for a model trained
    on data loaded so.

    Raises:
        ValueError: a missing folder, no class folder or no readable image,
            or class folders that are not among `class_names` (the message
            names them).

    Example (a class of the model with no folder counts no examples):
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from kft.runs import load_eval_folder
    >>> root = tempfile.mkdtemp()
    >>> for i, name in enumerate(["cat", "cat", "dog"]):
    ...     os.makedirs(os.path.join(root, name), exist_ok=True)
    ...     Image.new("RGB", (10, 12)).save(os.path.join(root, name, f"{i}.png"))
    >>> data = load_eval_folder(root, ["bird", "cat", "dog"], 8,
    ...                         batch_size=2)
    >>> data.class_counts
    {'bird': 0, 'cat': 2, 'dog': 1}
    """
    from kft.data._directory import eval_folder

    # As every other function taking them (a NumPy array of names raised
    # "truth value ... is ambiguous", a string was one class per letter).
    class_names = check_class_names(class_names)
    if class_names == ():
        fail_argument("class_names", "the model's classes (a non-empty "
                      "sequence of strings)", [])
    path = os.fspath(path)
    reason = not_a_folder(path)
    if reason:
        raise ValueError(f"Data folder {path!r} {reason}.")

    def check_classes(found):  # before any file is read
        extra = sorted(set(found) - set(class_names or found))
        if extra:
            raise ValueError(
                f"The class folders {listed(extra)} of {path!r} are not "
                f"among the model's classes: {listed(class_names)}."
                + (unicode_form_note(extra, class_names) or
                   " Evaluate folders of the model's classes (a subset is "
                   "fine)."))

    # Straight from `path` (no layout of links): messages name the user's
    # files, each checked once.
    return eval_folder(path, image_size, batch_size,
                       class_names=class_names, check_classes=check_classes,
                       exif_transpose=exif_transpose)
