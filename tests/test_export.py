"""kft.export: ONNX parity with onnxruntime, .keras files plain Keras loads."""

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import keras
import numpy as np
import pytest

import kft
from kft.deploy import inference_model
from kft.deploy import kft_layers
from kft.deploy import read_metadata
from kft.deploy._onnx_io import require
from kft.models.registry import unregister_backbone
from kft.models.simple_cnn import BLOCKS
from kft.models.simple_cnn import SimpleCNN

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")


def _inputs(size):
    """Random pixels and real digits, float32 in [0, 255]."""
    random = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3))
    digits = kft.datasets.digits(image_size=size, target_per_class=2)
    return [random.astype("float32"),
            digits.target_train[0][:4].astype("float32")]


def _check_parity(model, path, size):
    for x in _inputs(size):
        parity = kft.onnx_parity(model, path, x)
        assert parity.ok, parity
        assert parity.max_abs_output > 0


@pytest.fixture(scope="module")
def simple(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = kft.build_classifier("simple_cnn", weights=None,
                                 input_shape=(16, 16, 3), head="mlp",
                                 class_names=["a", "b", "c"])
    folder = tmp_path_factory.mktemp("export")
    return model, folder


def test_simple_cnn_dynamic_and_static_batch(simple):
    model, folder = simple
    dynamic = kft.export(model, folder / "dynamic.onnx")
    static = kft.export(model, folder / "static.onnx", batch=1, opset=21)
    for path, batch, opset in ((dynamic, "batch", 18), (static, 1, 21)):
        proto = onnx.load(path)
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        first = dims[0].dim_param or dims[0].dim_value
        assert first == batch
        assert [d.dim_value for d in dims[1:]] == [16, 16, 3]
        assert {o.domain: o.version for o in proto.opset_import}[""] == opset
        meta = read_metadata(path)
        assert meta["opset"] == opset
        assert meta["batch"] == ("dynamic" if batch == "batch" else 1)
        assert meta["class_names"] == ["a", "b", "c"]
        assert meta["backbone"] == "simple_cnn"
        assert meta["preprocessing"] == "tf"
        assert meta["input_shape"] == [16, 16, 3]
        assert meta["output"] == "logits"
        _check_parity(model, path, 16)


def test_probabilities_output(simple):
    model, folder = simple
    path = kft.export(model, folder / "probs.onnx", output="probabilities")
    x = _inputs(16)[0]
    session = kft.deploy._onnx_io.ort_session(path)
    probs = session.run(None, {"image": x})[0]
    logits = model.predict(x, verbose=0)
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert session.get_outputs()[0].name == "probabilities"


@pytest.mark.parametrize("backbone", [
    "mobilenetv3small",
    pytest.param("efficientnetb0", marks=pytest.mark.slow),
    pytest.param("resnet50", marks=pytest.mark.slow)])
def test_backbone_parity(backbone, tmp_path):
    # Built with kft's CPU convolutions (the default on CPU): the export
    # must turn them back into Keras' layers. ResNet50 has the MaxPool
    # onnxruntime rejects as jax2onnx writes it.
    model = kft.build_classifier(backbone, num_classes=5, weights=None,
                                 input_shape=(32, 32, 3), fast_cpu_convs=True)
    start = time.perf_counter()
    path = kft.export(model, tmp_path / f"{backbone}.onnx")
    print(f"{backbone}: export {time.perf_counter() - start:.1f} s")
    _check_parity(model, path, 32)


def test_inference_model_is_stock_keras():
    # Its outputs are checked by the parity tests (the export runs it).
    model = kft.build_classifier("mobilenetv3small", num_classes=3,
                                 weights=None, input_shape=(32, 32, 3),
                                 fast_cpu_convs=True)
    assert any(name.endswith("depthwise") for name in kft_layers(model))
    stock = inference_model(model)
    assert kft_layers(stock) == []
    assert len(stock.weights) == len(model.weights)
    replaced = stock.get_layer("mobilenetv3small").get_layer(
        "expanded_conv_depthwise")
    original = kft.models.backbones.find_backbone(model).get_layer(
        "expanded_conv_depthwise")
    assert type(replaced) is keras.layers.DepthwiseConv2D
    np.testing.assert_array_equal(replaced.kernel, original.kernel)


def test_batch_augment_and_old_preprocess_layer_stripped():
    inputs = keras.Input((16, 16, 3))
    x = kft.layers.Preprocess("caffe")(inputs)
    x = keras.layers.RandomFlip()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(x)
    model = kft.BatchAugmentModel(inputs, outputs,
                                  batch_augment=kft.layers.MixUp(seed=0))
    stock = inference_model(model, output="probabilities")
    assert kft_layers(model) and kft_layers(stock) == []
    assert type(stock) is keras.Model or type(stock).__name__ == "Functional"
    x = _inputs(16)[0]
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(stock.predict(x, verbose=0),
                               keras.ops.softmax(logits), atol=1e-6)


def test_stock_resizing_and_pooling_stay_and_onnx_pooling_computes_the_same():
    # Keras' deterministic preprocessing layers (Resizing, CenterCrop) share
    # a base class with its Random* ones: dropped with them, the exported
    # model saw the unresized image (a pooled head runs on any size, so
    # nothing failed). MaxPooling2D becomes the ONNX stand-in only for ONNX;
    # a "same" pool of an even size pads one side more, as Keras does.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.RandomFlip(seed=0)(inputs)
    x = keras.layers.Resizing(16, 16)(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    x = _inputs(24)[0]
    want = model.predict(x, verbose=0)
    stock = inference_model(model)
    onnx_graph = inference_model(model, onnx_compatible=True)
    kinds = [type(layer).__name__ for layer in stock.layers]
    assert kinds[1:4] == ["Identity", "Resizing", "Conv2D"]
    assert "MaxPooling2D" in kinds and kft_layers(stock) == []
    assert kft_layers(onnx_graph) == [model.layers[4].name]
    for graph in (stock, onnx_graph):
        np.testing.assert_allclose(graph.predict(x, verbose=0), want,
                                   rtol=1e-6, atol=1e-6)


def test_unbuilt_model_says_how(tmp_path):
    model = keras.Sequential([keras.layers.Conv2D(2, 3),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"model.build\(\(None, height"):
        kft.export(model, tmp_path / "m.onnx")


def test_bad_arguments(simple, tmp_path):
    model, _ = simple
    with pytest.raises(ValueError, match="Argument `format` must be one of"):
        kft.export(model, tmp_path / "m.pt", format="torchscript")
    with pytest.raises(ValueError, match="Argument `batch`"):
        kft.export(model, tmp_path / "m.onnx", batch=8)
    with pytest.raises(ValueError, match="Argument `opset`.*>= 18"):
        kft.export(model, tmp_path / "m.onnx", opset=17)
    with pytest.raises(ValueError, match="Argument `path`.*.keras"):
        kft.export(model, tmp_path / "m.h5", format="keras")
    # The default format is ONNX: ONNX bytes under a .keras name would be
    # misread later ("File not found" from kft.predict).
    with pytest.raises(ValueError, match=r'ending in "\.onnx" for format='
                                         r'"onnx" \(for a \.keras file pass '
                                         r'format="keras"\)'):
        kft.export(model, tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r'ending in "\.keras"'):
        kft.export(model, tmp_path / "m.onnx", format="keras")
    assert not list(tmp_path.iterdir())



def test_read_metadata_of_a_file_that_is_not_onnx_says_so(tmp_path):
    pytest.importorskip("onnx")
    # Protobuf's DecodeError without the path, or {} (what an ONNX file
    # without kft metadata gives) when the bytes happened to parse.
    for text in ("hi", "hi, not a model"):
        path = tmp_path / "bad.onnx"
        path.write_text(text)
        with pytest.raises(ValueError, match=r"bad.onnx' is not a readable "
                           r"ONNX model"):
            read_metadata(path)


def test_parity_names_bad_images_and_a_file_of_another_model(simple,
                                                             tmp_path):
    pytest.importorskip("onnxruntime")
    model, _ = simple
    path = kft.export(model, tmp_path / "m.onnx")
    x = np.zeros((2, 16, 16, 3), "float32")
    # These raised NumPy's broadcast error, an UnboundLocalError inside
    # Keras' predict, or shape errors of Keras or onnxruntime.
    other = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"returns outputs of shape \(3,\) "
                       r"per image and the model \(2,\).*not an export of"):
        kft.onnx_parity(other, path, x)
    for images, shape in ((x[:0], r"\(0, 16, 16, 3\)"),
                          (x[0], r"\(16, 16, 3\)"),
                          (np.zeros((2, 8, 8, 3)), r"\(2, 8, 8, 3\)")):
        with pytest.raises(ValueError, match=rf"`images` must be .*"
                           rf"Received: images of shape {shape}"):
            kft.onnx_parity(model, path, images)
    with pytest.raises(TypeError, match=r"`model` must be a keras.Model"):
        kft.onnx_parity(None, path, x)


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install "kft\[export\]"'):
        require("kft_no_such_module")


@pytest.fixture
def caffe_backbone():
    # SimpleCNN behind "caffe" preprocessing: the BGR flip of ResNet and
    # VGG, on a backbone small enough for a subprocess.
    kft.register_backbone(kft.BackboneSpec("test_caffe_cnn", SimpleCNN,
                                           "caffe", 16, BLOCKS))
    yield "test_caffe_cnn"
    unregister_backbone("test_caffe_cnn")


def test_keras_file_loads_in_plain_keras_with_safe_mode(caffe_backbone,
                                                        tmp_path):
    model = kft.build_classifier(caffe_backbone, num_classes=3,
                                 weights=None, input_shape=(16, 16, 3),
                                 class_names=["x", "y", "z"])
    x = np.concatenate(_inputs(16))
    path = kft.export(model, tmp_path / "model.keras", format="keras")
    # A plain `model.save` file holds kft classes: loading it without kft
    # must say what to do.
    saved = str(tmp_path / "saved.keras")
    model.save(saved)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "logits.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(f"""
        import json, sys, zipfile
        import keras, numpy as np
        model = keras.saving.load_model({path!r}, safe_mode=True)
        x = np.load({str(tmp_path / 'x.npy')!r})
        diff = np.abs(model.predict(x, verbose=0)
                      - np.load({str(tmp_path / 'logits.npy')!r})).max()
        meta = json.loads(zipfile.ZipFile({path!r}).read(
            "kft_metadata.json"))
        try:
            keras.saving.load_model({saved!r}, safe_mode=True)
            error = ""
        except Exception as e:
            error = str(e)
        print(json.dumps({{"diff": float(diff), "meta": meta,
                          "kft": "kft" in sys.modules, "error": error}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kft"] is False
    assert result["diff"] == 0.0
    assert result["meta"]["class_names"] == ["x", "y", "z"]
    assert result["meta"]["backbone"] == caffe_backbone
    assert "import kft first" in result["error"]
    assert result["meta"]["preprocessing"] == "caffe"
    assert result["meta"]["input_shape"] == [16, 16, 3]


def test_models_attach_wrapped_export_stock_keras(tmp_path):
    # `attach` nests the classifier a level down: the Backbone inside it
    # stayed a kft class in the .keras file (plain Keras could not load
    # it) and a kept source head stayed in the graph.
    model = kft.build_classifier("simple_cnn", weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=["a", "b", "c"])
    lwf = kft.with_source_head(model, model.get_layer("head_dense"))
    mixing = kft.build_classifier(
        "simple_cnn", 3, weights=None, input_shape=(16, 16, 3),
        batch_augment=kft.layers.MixUp(num_classes=3, seed=0))
    x = _inputs(16)[0]
    for inner in (model, lwf, mixing):
        wrapped = kft.augmentation.attach(inner, "light")
        stock = inference_model(wrapped)
        assert kft_layers(stock) == [], inner.name
        np.testing.assert_allclose(stock.predict(x, verbose=0),
                                   model.predict(x, verbose=0)
                                   if inner is not mixing
                                   else mixing.predict(x, verbose=0),
                                   atol=1e-6)
    path = kft.export(kft.augmentation.attach(model, "light"),
                      tmp_path / "attached.keras", format="keras")
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert '"module": "kft' not in config and '"kft>' not in config


def test_source_head_dropped_and_class_names_kept(tmp_path):
    # An LwF model's kept source head serves training only: the .keras file
    # must hold stock Keras layers alone, and the class names.
    model = kft.build_classifier("simple_cnn", weights=None,
                                 input_shape=(16, 16, 3),
                                 class_names=["a", "b", "c"])
    lwf = kft.with_source_head(model, model.get_layer("head_dense"))
    kft.regularize(lwf, kft.LwF())
    assert kft_layers(lwf)[-1:] == ["kept_source_head"]
    assert kft_layers(inference_model(lwf)) == []
    path = kft.export(lwf, tmp_path / "lwf.keras", format="keras")
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert '"module": "kft' not in config and '"kft>' not in config
    assert read_metadata(path)["class_names"] == ["a", "b", "c"]
    x = _inputs(16)[0]
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    run = kft.load_run(path)
    assert run.class_names == ["a", "b", "c"]
    assert run.model.kft_metadata["class_names"] == ["a", "b", "c"]


def test_missing_class_names_warn_once_naming_the_argument(tmp_path):
    model = kft.build_classifier("simple_cnn", 2, weights=None,
                                 input_shape=(16, 16, 3))
    with pytest.warns(UserWarning, match=r"no class names.*class_names="):
        kft.export(model, tmp_path / "a.keras", format="keras")
    assert kft.load_run(tmp_path / "a.keras").class_names is None
    # Of a file that was written: not before an export that fails.
    (tmp_path / "afile").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(OSError):
            kft.export(model, tmp_path / "afile" / "d.keras",
                       format="keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kft.export(model, tmp_path / "b.keras", format="keras",
                   class_names=["x", "y"])
    assert not [w for w in caught if "class names" in str(w.message)]
    assert kft.load_run(tmp_path / "b.keras").class_names == ["x", "y"]
    # A string was stored as one name per character; a repeated name
    # hides a class in reports keyed by name.
    with pytest.raises(TypeError, match=r"`class_names` must be a sequence "
                       r"of strings\. Received: class_names='xy'"):
        kft.export(model, tmp_path / "c.keras", format="keras",
                   class_names="xy")
    with pytest.raises(TypeError, match=r"sequence of strings\. Received: "
                       r"class_names=\[0, 1\]$"):
        kft.export(model, tmp_path / "c.keras", format="keras",
                   class_names=[0, 1])
    with pytest.raises(ValueError, match=r"repeated: \['x'\]"):
        kft.export(model, tmp_path / "c.keras", format="keras",
                   class_names=["x", "x"])
    assert not (tmp_path / "c.keras").exists()


def test_mixed_precision_model_exports_in_float32(tmp_path):
    rng = np.random.default_rng(0)
    reference = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3))
    # Random weights and BatchNorm statistics, so a misplaced weight shows.
    reference.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                           for w in reference.get_weights()])
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    mixed.set_weights(reference.get_weights())
    assert mixed.dtype_policy.name == "mixed_float16"
    # onnxruntime refused the float16/float32 mix the layers traced to.
    path = kft.export(mixed, tmp_path / "mixed.onnx",
                      class_names=list("abc"))
    x = _inputs(16)[0] / 255.0
    session = kft.deploy._onnx_io.ort_session(path)
    logits = session.run(None, {"image": x})[0]
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    assert [w.dtype for w in mixed.weights] == [
        w.dtype for w in reference.weights]


def test_mixed_precision_mobilenetv3_exports_in_float32(tmp_path):
    # MobileNetV3's hard sigmoid puts raw Keras ops (Add, Multiply) into
    # the graph, which the float32 copy must keep as they are.
    reference = kft.build_classifier("mobilenetv3small", 3, weights=None,
                                     input_shape=(32, 32, 3))
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = kft.build_classifier("mobilenetv3small", 3, weights=None,
                                     input_shape=(32, 32, 3))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    mixed.set_weights(reference.get_weights())
    path = kft.export(mixed, tmp_path / "mixed.onnx",
                      class_names=list("abc"))
    x = _inputs(32)[0]
    logits = kft.deploy._onnx_io.ort_session(path).run(None, {"image": x})[0]
    expected = reference.predict(x, verbose=0)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_caffe_keras_file_of_dynamic_size_loads_in_plain_keras(
        caffe_backbone, tmp_path):
    # Caffe's RGB->BGR flip with no static height or width: still stock
    # layers, equal to Keras' own caffe preprocessing.
    x = _inputs(16)[0][:2, :12]
    layer = kft.layers.preprocessing("caffe", (None, None, 3))
    np.testing.assert_array_equal(
        layer(x), keras.applications.imagenet_utils.preprocess_input(
            x.copy(), mode="caffe"))
    model = kft.build_classifier(caffe_backbone, num_classes=3,
                                 weights=None, input_shape=(None, None, 3),
                                 class_names=["x", "y", "z"])
    assert kft_layers(inference_model(model)) == []
    path = kft.export(model, tmp_path / "dynamic.keras", format="keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "logits.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(f"""
        import json, sys
        import keras, numpy as np
        model = keras.saving.load_model({path!r}, safe_mode=True)
        diff = np.abs(model.predict(np.load({str(tmp_path / 'x.npy')!r}),
                                    verbose=0)
                      - np.load({str(tmp_path / 'logits.npy')!r})).max()
        print(json.dumps({{"diff": float(diff),
                          "kft": "kft" in sys.modules}}))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"diff": 0.0, "kft": False}


def test_parity_of_a_probabilities_file(simple):
    # The file returns probabilities, the model logits: the parity compares
    # the file with their softmax, also for the file's bytes.
    model, folder = simple
    path = kft.export(model, folder / "parity_probs.onnx",
                      output="probabilities")
    x = _inputs(16)[0]
    with open(path, "rb") as f:
        serialized = f.read()
    for onnx_file in (path, serialized):
        parity = kft.onnx_parity(model, onnx_file, x)
        assert parity.ok, parity
        assert 0 < parity.max_abs_output <= 1
    # Outputs below 1 are held to 1e-4, as `Parity.tolerance` says (it was
    # 1e-4 times the largest probability).
    assert parity.max_abs_output < 1 and parity.tolerance == 1e-4
    # A model that ends in a softmax computes what this file does (as its
    # own export would): its probabilities were put through a second
    # softmax and the parity failed.
    ends_in_softmax = keras.Model(
        model.inputs, keras.layers.Softmax()(model.outputs[0]))
    parity = kft.onnx_parity(ends_in_softmax, path, x)
    assert parity.ok and parity.max_abs_diff < 1e-5, parity


def test_onnx_only_arguments_refused_for_keras_files(simple, tmp_path):
    model, _ = simple
    # The message named only 1 ("an integer in [1, 1]"), not the default.
    for batch in ("static", 2, True):
        with pytest.raises(ValueError, match=r'`batch` must be "dynamic" '
                           r"\(the default.*or 1 .*Received: batch="):
            kft.export(model, tmp_path / "m.onnx", batch=batch)
    with pytest.raises(ValueError, match=r'Argument `batch` must be '
                       r'"dynamic".*format="keras".*Received: batch=1'):
        kft.export(model, tmp_path / "m.keras", format="keras", batch=1)
    with pytest.raises(ValueError, match=r"Argument `opset` must be 18.*"
                       r'format="keras".*Received: opset=21'):
        kft.export(model, tmp_path / "m.keras", format="keras", opset=21)
    assert not list(tmp_path.iterdir())
    kft.export(model, tmp_path / "m.keras", format="keras",
               batch="dynamic", opset=18)


def test_parity_of_a_mixed_precision_model_compares_float32_with_float32(
        tmp_path, dtype_policy):
    # The file computes in float32 (export converts the model); parity
    # compared it with the 16-bit model's outputs and failed (6.6e-4).
    with dtype_policy("mixed_bfloat16"):
        model = kft.build_classifier("simple_cnn", 3, weights=None,
                                     input_shape=(16, 16, 3))
    path = kft.export(model, str(tmp_path / "m.onnx"))
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3))
    assert kft.onnx_parity(model, path, x.astype("float32")).ok


@pytest.mark.parametrize("format", ["keras", "onnx"])
def test_export_makes_its_folder(simple, format):
    # Keras and onnx raised FileNotFoundError (the ONNX export after its
    # whole conversion), where kft's other writers make the folder.
    model, folder = simple
    path = folder / f"new_{format}" / "deeper" / f"m.{format}"
    assert kft.export(model, path, format=format) == str(path)
    assert kft.deploy.read_metadata(path)["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize("format", ["keras", "onnx"])
def test_a_failed_export_keeps_the_earlier_file(simple, tmp_path,
                                                monkeypatch, format):
    # A write cut off (a full disk) left a truncated file in place of a
    # good export of the same name.
    model, _ = simple
    path = tmp_path / f"m.{format}"
    kft.export(model, path, format=format)
    good = path.read_bytes()

    def half_then_fail(target, *args, **kwargs):
        with open(target, "wb") as file:
            file.write(good[:len(good) // 2])
        raise OSError(28, "No space left on device")

    if format == "keras":
        monkeypatch.setattr("kft.deploy.exporting.add_to_keras_file",
                            half_then_fail)
    else:
        monkeypatch.setattr(onnx, "save", lambda proto, target, *a, **k:
                            half_then_fail(target))
    with pytest.raises(OSError, match="No space left"):
        kft.export(model, path, format=format)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == [f"m.{format}"]
