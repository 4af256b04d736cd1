"""What inference needs to know about a model, kept with its files.

A `.keras` file is a zip archive; Keras reads its `config.json`,
`metadata.json` and weights and ignores other members, so kft adds
`kft_metadata.json` there (plain Keras still loads the file). An ONNX file
keeps the same entries as `metadata_props` (string values, lists and
numbers as JSON). `read_metadata` reads either kind of file.
"""

import json
import os
import zipfile

import keras

from kft._validation import check_class_names
from kft._validation import fail_argument
from kft.models.backbones import backbone_name
from kft.models.backbones import find_backbone

KERAS_MEMBER = "kft_metadata.json"
# `metadata_props` keys; values are JSON text.
KEYS = ("backbone", "input_shape", "preprocessing", "num_classes",
        "class_names", "output", "opset", "batch", "kft_version")


def model_metadata(model: keras.Model, class_names=None,
                   output: str | None = None) -> dict:
    """The metadata of `model`: what `kft.build_classifier` recorded in its
    `kft_metadata` attribute, completed from the model itself.

    Args:
        model: A built Keras model.
        class_names: Names of the classes in index order, overriding the
            recorded ones. Defaults to `None`.
        output: What the model's inference graph returns: `"logits"`,
            `"probabilities"`, or `None` for what the model returns
            (`"probabilities"` when it ends in a softmax; see
            `kft.deploy.inference.resolve_output`). Defaults to `None`.

    Returns:
        A dict with `backbone`, `input_shape`, `preprocessing`,
        `num_classes`, `class_names` (or `None`), `output`, `kft_version`.

    Example:
    >>> import kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...     weights=None, input_shape=(16, 16, 3), class_names=["a", "b"])
    >>> meta = model_metadata(model)
    >>> meta["backbone"], meta["input_shape"], meta["class_names"]
    ('simple_cnn', [16, 16, 3], ['a', 'b'])
    """
    import kft
    from kft.deploy.inference import resolve_output

    meta = dict(getattr(model, "kft_metadata", None) or {})
    backbone = find_backbone(model)
    if backbone is not None:
        meta.setdefault("backbone", backbone_name(backbone))
    if meta.get("backbone") is not None and "preprocessing" not in meta:
        meta["preprocessing"] = kft.get_backbone(meta["backbone"]).preprocess
    meta["input_shape"] = list(model.inputs[0].shape[1:])
    meta["num_classes"] = int(model.outputs[0].shape[-1])
    if class_names is not None:
        meta["class_names"] = list(check_class_names(class_names,
                                                     meta["num_classes"]))
    meta.setdefault("class_names", None)
    meta.setdefault("backbone", None)
    meta.setdefault("preprocessing", None)
    # From the graph, never from a recorded value alone: a model loaded
    # from a probabilities file carries that file's metadata.
    meta["output"] = resolve_output(model, output)
    meta["kft_version"] = kft.__version__
    return meta


def add_to_keras_file(path, meta: dict) -> None:
    """Adds `meta` to a saved `.keras` archive as `kft_metadata.json`."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(KERAS_MEMBER, json.dumps(meta, indent=1))


def read_metadata(path: str | os.PathLike) -> dict:
    """The kft metadata of a `.keras` or `.onnx` file written by
    `kft.export` (empty for a file without any).

    Needs neither JAX nor Keras for an ONNX file (only the `onnx` package).

    Example:
    >>> import os, tempfile, kft
    >>> model = kft.build_classifier("simple_cnn", num_classes=2,
    ...     weights=None, input_shape=(16, 16, 3), class_names=["a", "b"])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> _ = kft.export(model, path, format="keras")
    >>> read_metadata(path)["class_names"]
    ['a', 'b']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        fail_argument("path", "an existing .keras or .onnx file", path)
    if path.endswith(".onnx"):
        from kft.deploy._onnx_io import load_onnx_proto

        try:
            proto = load_onnx_proto(path, load_weights=False)
        except Exception as error:  # onnx's and protobuf's own errors
            if type(error).__module__.split(".")[0] not in ("onnx",
                                                            "google"):
                raise
            proto = error
        # Protobuf parses some other bytes as an empty model (no IR
        # version, which every ONNX file states): `{}` would say "an ONNX
        # file without kft metadata".
        if isinstance(proto, Exception) or not proto.ir_version:
            reason = f": {proto}" if isinstance(proto, Exception) else ""
            raise ValueError(f"{path!r} is not a readable ONNX model "
                             f"(corrupt, or not an ONNX file){reason}")
        return {p.key: json.loads(p.value) for p in proto.metadata_props
                if p.key in KEYS}
    if not zipfile.is_zipfile(path):
        fail_argument("path", "a .keras (zip) or .onnx file", path)
    with zipfile.ZipFile(path) as archive:
        if KERAS_MEMBER not in archive.namelist():
            return {}
        return json.loads(archive.read(KERAS_MEMBER))
