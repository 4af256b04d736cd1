"""`kft.export`: a trained classifier as a file that runs without kft.

Two formats:

- `"onnx"`: the inference graph (preprocessing included: the model takes
  [0, 255] pixels) converted by jax2onnx, with a static batch of 1 or a
  dynamic batch, kft's metadata in `metadata_props`; runs in onnxruntime.
- `"keras"`: the inference graph of stock Keras layers
  (`kft.deploy.inference_model`) saved as `.keras`, which
  `keras.saving.load_model(path)` loads in a process that never imported
  kft, with `safe_mode=True`; kft's metadata travels in the archive.

Both come from `inference_model`, which swaps kft's training-time layers
(CPU convolutions, augmentation, batch mixing) for stock ones; for ONNX
also the layers onnxruntime would reject (`kft.deploy.onnx_layers`).
"""

import json
import numbers
import os
import warnings
from typing import Literal

import keras
import numpy as np

from kft._validation import check_choice
from kft._validation import check_int
from kft._validation import fail_argument
from kft._writing import output_path
from kft._writing import written_beside
from kft.deploy._jax2onnx_speed import faster_jax2onnx
from kft.deploy._onnx_io import require
from kft.deploy.inference import OUTPUTS
from kft.deploy.inference import check_built
from kft.deploy.inference import inference_model
from kft.deploy.inference import resolve_output
from kft.deploy.metadata import add_to_keras_file
from kft.deploy.metadata import model_metadata
from kft.models.init_draws import bucketed_draws

FORMATS = ("onnx", "keras")
# Opset 18 (ONNX 1.13, onnxruntime >= 1.14): every op kft's backbones
# need. jax2onnx writes some ops (ReduceMean's axes) in their opset-18 form,
# so lower opsets are refused rather than written invalid.
DEFAULT_OPSET = 18
MIN_OPSET = 18
INPUT_NAME = "image"


def export(model: keras.Model, path: str | os.PathLike,
           format: Literal["onnx", "keras"] = "onnx", *,
           batch: Literal["dynamic"] | int = "dynamic",
           opset: int = DEFAULT_OPSET,
           output: Literal["logits", "probabilities"] | None = None,
           class_names=None) -> str:
    """Writes `model`'s inference graph as an ONNX or `.keras` file.

    The file takes float32 pixels in [0, 255], shaped `(batch, height,
    width, 3)` as the model's input (preprocessing is part of the graph),
    and returns logits, or softmax probabilities with
    `output="probabilities"` (a model that already ends in a softmax, such
    as a file exported with `output="probabilities"`, returns probabilities
    and gets no second one). Metadata (backbone, input shape,
    preprocessing, class names, output, opset, batch) is stored with it;
    `kft.deploy.read_metadata(path)` reads it, `kft.predict(path, ...)`
    uses it. An ONNX file computes in float32, also for a mixed-precision
    model (a float32 copy of its layers, with its weights).

    Args:
        model: A built single-input classifier, e.g. from
            `kft.build_classifier` (a `Sequential` without an `Input` must
            be built first; the error says how).
        path: The file to write, its name ending in the format's suffix:
            `.onnx` or `.keras`.
        format: `"onnx"` or `"keras"`. Defaults to `"onnx"`.
        batch: ONNX only (`format="keras"` accepts the default alone):
            `"dynamic"` (any batch size) or `1` (static batch of one, what
            some runtimes and accelerators want). Defaults to `"dynamic"`.
        opset: ONNX only (`format="keras"` accepts the default alone): the
            ONNX opset (18 or higher), recorded in the file. Defaults to
            `18`.
        output: `"logits"`, `"probabilities"` or `None` (what the model
            returns: probabilities for a model ending in a softmax, else
            logits), recorded in the metadata. Defaults to `None`.
        class_names: Names of the classes in index order; defaults to
            those given to `kft.build_classifier`. Without any the file
            names classes by index, and a `UserWarning` says so. Defaults
            to `None`.

    Returns:
        `path` as a string.

    Raises:
        ValueError: an unbuilt model (with how to build it), unknown
            `format`/`output`, `output="logits"` for a model that ends in
            a softmax (its logits cannot be recovered), a model with
            unknown height or width (ONNX), a `path` whose suffix is not
            the format's, `batch` or `opset` other than the default with
            `format="keras"`; `class_names` repeated or not one per
            class.
        TypeError: `class_names` that are not a sequence of strings (one
            string, or numbers).
        ImportError: ONNX export without `onnx`/`jax2onnx` installed; the
            message says `pip install "kft[export]"`.

    Example:
    >>> import os, tempfile, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...     weights=None, input_shape=(16, 16, 3),
    ...     class_names=["cat", "dog"])
    >>> path = kft.export(model, os.path.join(tempfile.mkdtemp(),
    ...                                       "m.keras"), format="keras")
    >>> path.endswith("m.keras")
    True
    """
    check_choice("format", format, FORMATS)
    if output is not None:
        check_choice("output", output, OUTPUTS)
    path = output_path(path)
    _check_suffix(path, format)
    if format == "onnx":
        if not (isinstance(batch, str) and batch == "dynamic"):
            if (isinstance(batch, (bool, np.bool_))
                    or not isinstance(batch, numbers.Integral) or batch != 1):
                fail_argument("batch", '"dynamic" (the default: any batch '
                              'size) or 1 (a fixed batch of one)', batch)
            batch = 1
        opset = check_int("opset", opset, min_value=MIN_OPSET)
    else:
        # Refused rather than ignored: the file would not be what was asked.
        if batch != "dynamic":
            fail_argument("batch", '"dynamic" (the default) for format='
                          '"keras": a .keras file takes any batch size '
                          '(batch applies to format="onnx" only)', batch)
        if opset != DEFAULT_OPSET:
            fail_argument("opset", f"{DEFAULT_OPSET} (the default) for "
                          'format="keras": a .keras file has no ONNX opset '
                          '(opset applies to format="onnx" only)', opset)
    check_built(model)
    if format == "onnx":
        _check_static_input(model)
    output = resolve_output(model, output)
    meta = model_metadata(model, class_names, output)
    if format == "keras":
        inference = inference_model(model, output=output)

        def write(target):
            inference.save(target)
            add_to_keras_file(target, meta)
    else:
        meta.update(opset=opset, batch=batch)
        proto = onnx_proto(model, batch=batch, opset=opset, output=output)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)

        def write(target):
            require("onnx").save(proto, target)
    # As kft's result files: written in place, a write cut off (a full
    # disk) left a truncated file over an earlier good export.
    with written_beside(path) as target:
        write(target)
    if meta["class_names"] is None:  # said of a file that was written
        warnings.warn(
            f"kft.export: model {model.name!r} carries no class names, so "
            f"predictions from {os.path.basename(path)!r} name classes "
            "by index ('0', '1', ...). Pass class_names=[...] (in class-"
            "index order) to store them in the file.", stacklevel=2)
    return path


def _check_suffix(path, format):
    """A file named for the other format would be misread later (kft.predict
    and kft.deploy.read_metadata go by the suffix)."""
    suffix = f".{format}"
    if not path.endswith(suffix):
        other = "keras" if format == "onnx" else "onnx"
        fail_argument("path", f'a file name ending in "{suffix}" for '
                      f'format="{format}" (for a .{other} file pass '
                      f'format="{other}")', path)


def _check_static_input(model):
    """The input's `(height, width, channels)`, which must be known."""
    shape = tuple(model.inputs[0].shape[1:])
    if None in shape:
        fail_argument("model", "a model with a static input height, width "
                      "and channels for ONNX export (build it with "
                      "input_shape=(height, width, 3))", shape)
    return shape


def onnx_proto(model, *, batch="dynamic", opset=DEFAULT_OPSET, output=None):
    """The `onnx.ModelProto` of `model`'s inference graph (no metadata);
    `output` as `inference_model` takes it."""
    jax2onnx = require("jax2onnx")
    require("onnx")
    import jax

    shape = _check_static_input(model)
    output = resolve_output(model, output)
    stock = inference_model(model, output=output, onnx_compatible=True)
    if _compute_dtypes(stock) != {"float32"}:
        stock = _float32_copy(stock)
    trainable = [v.value for v in stock.trainable_variables]
    fixed = [v.value for v in stock.non_trainable_variables]

    def forward(image):
        return stock.stateless_call(trainable, fixed, image,
                                    training=False)[0]

    dims = ("batch" if batch == "dynamic" else batch, *shape)
    with faster_jax2onnx():
        return jax2onnx.to_onnx(
            forward, inputs=[jax.ShapeDtypeStruct(dims, np.float32)],
            opset=opset, input_names=[INPUT_NAME], output_names=[output],
            model_name=model.name, return_mode="proto")


def _compute_dtypes(model):
    """The compute dtypes of `model` and its layers, nested ones too (a
    mixed-precision model's wrapper can be float32 while they are not)."""
    dtypes, stack = set(), [model]
    while stack:
        layer = stack.pop()
        dtypes.add(layer.compute_dtype)
        if isinstance(layer, keras.Model):
            stack += layer.layers
    return dtypes


def _float32_copy(model):
    """`model` with float32 layers and its weights: onnxruntime refuses the
    float16/float32 mix a mixed-precision graph traces to."""
    def clone(layer):
        if not isinstance(layer, keras.layers.Layer):
            # A Keras op in the graph (MobileNetV3's hard sigmoid adds and
            # multiplies): weightless, it computes in its inputs' dtype,
            # and its config takes no `dtype`.
            return layer
        return type(layer).from_config({**layer.get_config(),
                                        "dtype": "float32"})

    with bucketed_draws():  # replaced by the model's weights
        copy = keras.models.clone_model(model, clone_function=clone,
                                        recursive=True)
    copy.set_weights([np.asarray(v.value, "float32") for v in model.weights])
    return copy
