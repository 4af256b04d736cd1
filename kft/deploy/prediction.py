"""`kft.predict`: top-k labels for images, from a model or a saved file.

The model can be a Keras model in memory, a `.keras` file, or an `.onnx`
file written by `kft.export` (run by onnxruntime; that path never calls
JAX). Images go through kft's eval transform (`kft.deploy._views`).
"""

import dataclasses
import os
from typing import Literal

import numpy as np

from kft._validation import check_bool
from kft._validation import check_class_names
from kft._validation import check_int
from kft._validation import check_number
from kft._validation import check_verbose
from kft._validation import fail_argument
from kft.data._images import DEFAULT_MAX_PIXELS
from kft.deploy._onnx_io import ort_session
from kft.deploy._views import TTA_MODES
from kft.deploy._views import list_sources
from kft.deploy._views import make_views
from kft.deploy.metadata import model_metadata
from kft.deploy.metadata import read_metadata
from kft.evaluation._predict import output_width
from kft.evaluation._predict import check_width
from kft.evaluation._predict import predict_numpy


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image.

    Attributes:
        source: The image's file path; else `"array[i]"` for the i-th
            image of an array (`"array[0]"` for a single one),
            `"image[0]"` for a single PIL image, `"images[i]"` for the
            i-th item of a list (`"images[i][j]"` for the j-th image of an
            `(n, height, width, 3)` array there).
        labels: The top-k class names (the class indices as strings when
            the model carries no names), most probable first.
        indices: Their class indices.
        probabilities: Their softmax probabilities (averaged over the
            test-time augmentation views).
    """

    source: str
    labels: list
    indices: list
    probabilities: list

    @property
    def label(self) -> str:
        """The most probable class's name."""
        return self.labels[0]


def _softmax(logits):
    logits = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def _check_rgb(input_shape):
    """Fails before the first model call: Keras and onnxruntime would fail
    inside it, and an interrupted `predict` leaves a Keras model broken."""
    channels = input_shape[-1]
    if channels not in (3, None):
        takes = "1 channel" if channels == 1 else f"{channels} channels"
        fail_argument(
            "model_or_path", "a model taking RGB images, shaped (height, "
            f"width, 3), as kft.predict feeds them (this one takes {takes}: "
            "convert the images and call its predict yourself)",
            tuple(input_shape))


class _OnnxRunner:
    def __init__(self, path):
        try:
            self.session = ort_session(path)
        except Exception as error:  # onnxruntime's own error classes
            if type(error).__module__.split(".")[0] != "onnxruntime":
                raise
            raise ValueError(
                f"{path!r} is not a readable ONNX model (corrupt, or not an "
                f"ONNX file): {error}") from error
        self.meta = read_metadata(path)
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        if len(spec.shape) != 4 or not all(isinstance(d, int)
                                           for d in spec.shape[1:]):
            fail_argument("model_or_path", "an ONNX image classifier with a "
                          "static (height, width, 3) input", spec.shape)
        _check_rgb(spec.shape)
        self.size = tuple(spec.shape[1:3])
        self.static_batch = spec.shape[0] if isinstance(spec.shape[0],
                                                        int) else None
        recorded = self.meta.get("input_shape")
        if recorded and tuple(recorded[:2]) != self.size:
            raise ValueError(
                f"ONNX file {path!r} takes {self.size[0]}x{self.size[1]} "
                f"images, but its kft metadata says {recorded[0]}x"
                f"{recorded[1]}: the file was changed after export.")

    def __call__(self, x):
        if self.static_batch == 1:
            return np.concatenate([self.session.run(
                None, {self.input_name: x[i:i + 1]})[0]
                for i in range(len(x))])
        return self.session.run(None, {self.input_name: x})[0]


class _KerasRunner:
    def __init__(self, model, meta, batch_size):
        self.model, self.meta, self.batch_size = model, meta, batch_size
        output_width(model)  # one output, or a clear error
        self.size = tuple(model.inputs[0].shape[1:3])
        if None in self.size:
            fail_argument("model_or_path", "a model with a static input "
                          "height and width", model.inputs[0].shape)
        _check_rgb(model.inputs[0].shape)

    def __call__(self, x):
        # Keras compiles a program per batch size: the last, partial batch
        # is padded to a power of two (with copies of its last image, whose
        # outputs are dropped; inference computes each image alone), so
        # calls of any number of images share log2(batch_size) + 2
        # programs instead of compiling one per new count (seconds each
        # for a backbone: a service's requests vary). Under data parallel
        # each batch is padded again to split over the devices
        # (`predict_numpy`).
        n = len(x)
        last = n % self.batch_size
        pad = min(1 << (last - 1).bit_length(), self.batch_size) - last \
            if last else 0
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        return predict_numpy(self.model, x, self.batch_size)[:n]


def _runner(model_or_path, batch_size):
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isfile(path):
            fail_argument("model_or_path", "a Keras model or an existing "
                          ".keras / .onnx file", path)
        if path.endswith(".onnx"):
            return _OnnxRunner(path)
        from kft.runs.folder import load_run

        # The class names of a run folder's model.keras are in the run.json
        # beside it, as `kft eval` finds them; the output kind comes from
        # the graph, which a file's recorded metadata cannot contradict.
        model = load_run(path).model
        return _KerasRunner(model, model_metadata(model), batch_size)
    import keras

    if not isinstance(model_or_path, keras.Model):
        fail_argument("model_or_path", "a keras.Model or the path of a "
                      ".keras / .onnx file", model_or_path, TypeError)
    from kft.deploy.inference import check_built

    check_built(model_or_path)  # its input size is read from the graph
    return _KerasRunner(model_or_path, model_metadata(model_or_path),
                        batch_size)


def predict(model_or_path, images, *, top_k: int = 5,
            tta: Literal["flip", "multi_crop"] | None = None,
            batch_size: int = 32, class_names=None,
            crop_fraction: float = 0.875,
            max_pixels: int | None = DEFAULT_MAX_PIXELS,
            exif_transpose: bool = True,
            verbose: int = 0) -> list:
    """The top-k classes of each image, with their probabilities.

    Files and PIL images go through kft's eval transform (turned upright as
    their EXIF orientation tag says, the centered `crop_fraction` region
    resized bilinearly to the model's input size, as `kft.data` does for
    validation data; a JPEG file much larger than the input is decoded at
    a reduced scale, as `kft.data` reads it, which a PIL image already
    opened is not, so the two may differ by a pixel level or so); an array
    already of the model's size is used as it is,
    a uint8 array of another size is resized like a file. The model's
    outputs (logits, or probabilities for a model that ends in a softmax,
    such as a file exported with `output="probabilities"`) become softmax
    probabilities; with `tta` they are averaged over the views, the first of
    which is the one prediction without `tta` uses: `"flip"` (the image and
    its mirror), `"multi_crop"` (the center crop and the four corner crops
    of the same size; an array used as it is is its own center view, its
    corner crops `crop_fraction` of it).

    Threads may share a model: kft's calls on one model take turns (Keras'
    `model.predict` from two threads at once empties its weights; a path
    loads a model per call).

    Args:
        model_or_path: A Keras model taking RGB [0, 255] pixels (e.g. from
            `kft.build_classifier`), or a `.keras` / `.onnx` file from
            `kft.export` (an ONNX file runs in onnxruntime, without JAX),
            or a run folder's `model.keras` (class names from the
            `run.json` beside it, as `kft.runs.load_run` reads them).
        images: An image file path, a folder (its image files, recursively,
            in sorted order; hidden files and folders left out and
            symbolic links followed, as `kft.data.from_directory` lists
            them; other files are left out with a warning naming them), a
            PIL image, an array `(height, width, 3)` or `(n,
            height, width, 3)` of pixels in [0, 255], or a list of paths
            (files or folders), PIL images and arrays.
        top_k: How many classes per image (all of them for a model with
            fewer classes). Defaults to `5`.
        tta: `None`, `"flip"` or `"multi_crop"`. Defaults to `None`.
        batch_size: Images per model call; a Keras model's last, partial
            call is padded to a power of two (copies of its last image,
            their outputs dropped: exact for a model that computes each
            image alone, as inference does), so calls of any number of
            images compile at most log2(batch_size) + 2 programs, for up
            to twice the work on that last call. Defaults to `32`.
        class_names: Class names in index order; defaults to the ones the
            model or file carries. Defaults to `None`.
        crop_fraction: The eval center crop, in (0, 1]. Defaults to
            `0.875`.
        max_pixels: Larger image files raise. Defaults to Pillow's
            decompression-bomb limit.
        exif_transpose: Turn files and PIL images upright as their EXIF
            orientation says; `False` for a model trained on the stored
            pixels (`kft.data` loaders' `exif_transpose=False`). Defaults
            to `True`.
        verbose: `1` shows a progress bar over the images (read, predicted)
            as `kft.evaluate` does over batches, `2` one line when done.
            Defaults to `0`.

    Returns:
        A list of `Prediction`, one per image, in input order.

    Raises:
        OSError: an image file that cannot be read (the message names the
            file; nothing is skipped).
        ValueError: bad arguments, a float array of another size than the
            model's input, an array that is not [0, 255] pixels (bool,
            integers out of range, NaN or inf), an empty folder, a model
            with a single output column (a sigmoid binary head: build it
            with `num_classes=2`), a model that does not take 3-channel
            (RGB) images.
        TypeError: `class_names` that are not a sequence of strings (one
            string, or numbers).
        ImportError: an `.onnx` file without onnxruntime installed (the
            message says `pip install "kft[export]"`).

    Example:
    >>> import numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...     weights=None, input_shape=(16, 16, 3),
    ...     class_names=["cat", "dog", "fox"])
    >>> image = np.full((40, 30, 3), 128, np.uint8)
    >>> result = kft.predict(model, image, top_k=2, tta="flip")
    >>> len(result), len(result[0].labels), result[0].label in model.kft_metadata["class_names"]
    (1, 2, True)
    """
    batch_size = check_int("batch_size", batch_size, min_value=1)
    top_k = check_int("top_k", top_k, min_value=1)
    verbose = check_verbose(verbose)
    if max_pixels is not None:
        # Checked here: inside the reader it read as a broken file.
        max_pixels = check_int("max_pixels", max_pixels, min_value=1)
    crop_fraction = check_number("crop_fraction", crop_fraction, low=0,
                                 high=1, low_open=True)
    exif_transpose = check_bool("exif_transpose", exif_transpose)
    if tta is not None and tta not in TTA_MODES:
        fail_argument("tta", f"None or one of {TTA_MODES}", tta)
    class_names = check_class_names(class_names)
    sources = list_sources(images)
    runner = _runner(model_or_path, batch_size)
    names = class_names if class_names is not None else runner.meta.get(
        "class_names")
    results = []
    progress = _progress(len(sources), verbose) if verbose else None
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        views = [make_views(name, source, runner.size, tta, crop_fraction,
                            max_pixels, exif_transpose)
                 for name, source in chunk]
        outputs = np.concatenate([runner(v) for v in _batches(
            np.concatenate(views), batch_size)])
        check_width(outputs.shape[-1], "model_or_path")
        if runner.meta.get("output", "logits") == "logits":
            outputs = _softmax(outputs.astype(np.float64))
        if names is not None and len(names) != outputs.shape[-1]:
            fail_argument("class_names", f"{outputs.shape[-1]} names, one "
                          "per model output", names)
        offset = 0
        for (name, _), v in zip(chunk, views):
            mean = outputs[offset:offset + len(v)].mean(axis=0)
            offset += len(v)
            results.append(_prediction(name, mean, top_k, names))
        if progress is not None:
            progress(len(results))
    return results


def _progress(total, verbose):
    import keras

    return keras.utils.Progbar(total, unit_name="image",
                               verbose=verbose).update


def _batches(x, batch_size):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def _prediction(source, probabilities, top_k, names):
    order = np.argsort(-probabilities, kind="stable")[:top_k]
    labels = [names[i] if names is not None else str(i) for i in order]
    return Prediction(source, labels, [int(i) for i in order],
                      [float(probabilities[i]) for i in order])
