"""Checking an exported ONNX file against the Keras model it came from."""

import dataclasses
import json
import os

import keras
import numpy as np

from kft._validation import check_int
from kft._validation import fail_argument
from kft.deploy._onnx_io import ort_session
from kft.deploy.inference import output_kind

# The tolerance: max |onnx - keras| <= RELATIVE * max(1, max |keras|).
RELATIVE = 1e-4


@dataclasses.dataclass(frozen=True)
class Parity:
    """How far onnxruntime's outputs are from `model.predict`'s.

    Attributes:
        max_abs_diff: max |onnxruntime - Keras| over all outputs.
        max_abs_output: max |Keras output| (the scale).
        relative_diff: `max_abs_diff / max_abs_output` (0 if both are 0).
        tolerance: `RELATIVE * max(1, max_abs_output)`.
        ok: `max_abs_diff <= tolerance`.
    """

    max_abs_diff: float
    max_abs_output: float
    relative_diff: float
    tolerance: float
    ok: bool


def onnx_parity(model: keras.Model, onnx_file: str | os.PathLike | bytes,
                images, batch_size: int = 32) -> Parity:
    """Runs `images` through `model.predict` and the ONNX file on
    onnxruntime's CPU provider and compares the outputs.

    A file that returns probabilities (its metadata says
    `output="probabilities"`, as `kft.export` records it) is compared with
    the softmax of a model that returns logits.

    Args:
        model: The Keras model the file was exported from.
        onnx_file: Its path, or the serialized bytes.
        images: float32 `(n, height, width, 3)` pixels in [0, 255].
        batch_size: For `model.predict`. Defaults to `32`.

    Returns:
        A `Parity`.

    Example:
    >>> import os, tempfile, numpy as np, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=3,
    ...     weights=None, input_shape=(16, 16, 3))
    >>> path = kft.export(model, os.path.join(tempfile.mkdtemp(), "m.onnx"))
    >>> x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3))
    >>> onnx_parity(model, path, x.astype("float32")).ok
    True
    """
    if not isinstance(model, keras.Model):
        fail_argument("model", "a keras.Model", model, TypeError)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError("Argument `images` must be a non-empty batch (n, "
                         "height, width, channels) of pixels. Received: "
                         f"images of shape {images.shape}")
    expected_shape = tuple(model.inputs[0].shape[1:]) if getattr(
        model, "inputs", None) else None
    if expected_shape and any(want is not None and want != got for want, got
                              in zip(expected_shape, images.shape[1:])):
        raise ValueError(f"Argument `images` must be images shaped like "
                         f"the model's input {expected_shape}. Received: "
                         f"images of shape {images.shape}")
    # The file computes in float32, also for a mixed-precision model
    # (`kft.export` converts it): compare with the same float32 model,
    # not with 16-bit outputs 1e-3 away.
    reference = _float32_model(model)
    expected = np.asarray(reference.predict(images, batch_size=batch_size,
                                            verbose=0), np.float64)
    session = ort_session(onnx_file)
    # The metadata as `read_metadata` reads it, also for serialized bytes.
    recorded = session.get_modelmeta().custom_metadata_map.get("output")
    if (recorded and json.loads(recorded) == "probabilities"
            and output_kind(model) == "logits"):
        # A file exported with output="probabilities" from a model
        # returning logits.
        expected = np.exp(expected - expected.max(axis=-1, keepdims=True))
        expected /= expected.sum(axis=-1, keepdims=True)
    name = session.get_inputs()[0].name
    if session.get_inputs()[0].shape[0] == 1:
        got = np.concatenate([session.run(None, {name: images[i:i + 1]})[0]
                              for i in range(len(images))])
    else:
        got = session.run(None, {name: images})[0]
    if got.shape != expected.shape:
        raise ValueError(
            f"The ONNX file returns outputs of shape {got.shape[1:]} per "
            f"image and the model {expected.shape[1:]}: `onnx_file` is not "
            f"an export of model {model.name!r}.")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    tolerance = RELATIVE * max(1.0, scale)
    return Parity(diff, scale, diff / scale if scale else 0.0, tolerance,
                  diff <= tolerance)


def _float32_model(model):
    """`model` itself, or for a mixed-precision one the float32 copy of
    its inference graph that `kft.export` converts."""
    from kft.deploy.exporting import _compute_dtypes
    from kft.deploy.exporting import _float32_copy
    from kft.deploy.inference import inference_model

    if _compute_dtypes(model) == {"float32"}:
        return model
    return _float32_copy(inference_model(model))
