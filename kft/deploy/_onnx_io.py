"""The optional ONNX packages, imported only when used."""

import importlib

INSTALL_HINT = 'pip install "kft[export]"'


def require(module: str):
    """Imports an optional package (`onnx`, `onnxruntime`, `jax2onnx`), or
    raises an `ImportError` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"ONNX export and inference need the optional package "
            f"`{module}`: {INSTALL_HINT} (installs onnx, onnxruntime and "
            f"jax2onnx). Import failed with: {error}") from error


def load_onnx_proto(path, load_weights=True):
    """The `onnx.ModelProto` in `path` (without weights if not needed)."""
    onnx = require("onnx")
    return onnx.load(str(path), load_external_data=load_weights)


def ort_session(path_or_bytes, threads=None):
    """An onnxruntime CPU session."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not isinstance(path_or_bytes, bytes):
        path_or_bytes = str(path_or_bytes)
    return ort.InferenceSession(path_or_bytes, options,
                                providers=["CPUExecutionProvider"])
