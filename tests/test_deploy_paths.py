"""kft.predict / kft.export on the files a run leaves: probabilities files,
a run's model.keras, folders as training lists them, multi_crop views;
and `kft.runs.load_eval_folder`'s messages."""

import json
import os
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

import kft
from kft.data._files import list_images
from kft.deploy import read_metadata
from kft.deploy._views import make_views

NAMES = ["ant", "bee", "cow"]


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return kft.build_classifier("simple_cnn", weights=None,
                                input_shape=(16, 16, 3), class_names=NAMES)


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (3, 16, 16, 3)).astype("float32")


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def probabilities_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("probs") / "p.keras"
    return kft.export(model, path, format="keras", output="probabilities")


@pytest.mark.parametrize("output", [{}, {"output": "probabilities"}])
def test_export_of_a_probabilities_file_adds_no_second_softmax(
        model, pixels, probabilities_file, tmp_path, output):
    expected = _softmax(model.predict(pixels, verbose=0))
    loaded = kft.load_run(probabilities_file).model
    # Its last layer is the Softmax named "probabilities": a second one
    # would clash with it.
    path = kft.export(loaded, tmp_path / "again.keras", format="keras",
                      **output)
    assert read_metadata(path)["output"] == "probabilities"
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again.predict(pixels, verbose=0), expected,
                               atol=1e-6)
    got = kft.predict(path, pixels, top_k=3)
    np.testing.assert_allclose([r.probabilities for r in got],
                               np.sort(expected, -1)[:, ::-1], atol=1e-6)
    assert got[0].label in NAMES


def test_probabilities_file_to_onnx(model, pixels, probabilities_file,
                                    tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    loaded = kft.load_run(probabilities_file).model
    path = kft.export(loaded, tmp_path / "p.onnx")
    assert read_metadata(path)["output"] == "probabilities"
    session = kft.deploy._onnx_io.ort_session(path)
    np.testing.assert_allclose(session.run(None, {"image": pixels})[0],
                               _softmax(model.predict(pixels, verbose=0)),
                               atol=1e-6)


def test_logits_of_a_probabilities_model_are_refused(probabilities_file,
                                                     tmp_path):
    loaded = kft.load_run(probabilities_file).model
    message = (r'Argument `output` must be "probabilities" or None for model '
               r"'kft_simple_cnn': it already ends in a softmax, so its "
               r"logits cannot be recovered. Received: output='logits'")
    with pytest.raises(ValueError, match=message):
        kft.export(loaded, tmp_path / "l.keras", format="keras",
                   output="logits")
    with pytest.raises(ValueError, match=message):
        kft.deploy.inference_model(loaded, output="logits")
    assert not list(tmp_path.iterdir())


def test_keras_file_of_a_run_folder_names_its_classes(tmp_path, pixels):
    # `kft train` records the class names in run.json beside model.keras.
    plain = kft.build_classifier("simple_cnn", 3, weights=None,
                                 input_shape=(16, 16, 3))
    plain.save(tmp_path / "model.keras")
    (tmp_path / "run.json").write_text(json.dumps({"class_names": NAMES}))
    results = kft.predict(str(tmp_path / "model.keras"), pixels, top_k=3)
    assert all(sorted(r.labels) == NAMES for r in results)


@pytest.fixture
def mac_folder(tmp_path):
    """A folder with a macOS AppleDouble twin, a notebook checkpoint
    folder and a symbolic link to a folder of images."""
    folder = tmp_path / "photos"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    image = Image.new("RGB", (20, 24), (90, 140, 200))
    image.save(folder / "a.jpg")
    image.save(folder / ".ipynb_checkpoints" / "a-checkpoint.jpg")
    image.save(tmp_path / "elsewhere" / "b.png")
    (folder / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    os.symlink(tmp_path / "elsewhere", folder / "linked")
    return folder


def test_folder_is_listed_as_training_lists_it(model, mac_folder):
    expected = [str(mac_folder / "a.jpg"),
                str(mac_folder / "linked" / "b.png")]
    assert sorted(list_images(str(mac_folder))) == expected
    results = kft.predict(model, mac_folder, top_k=1)
    assert [r.source for r in results] == expected
    # A folder in a list is expanded the same way.
    results = kft.predict(model, [str(mac_folder), expected[0]], top_k=1)
    assert [r.source for r in results] == expected + expected[:1]


def _jpeg(tmp_path):
    rng = np.random.default_rng(3)
    path = str(tmp_path / "big.jpg")
    # At least twice the model's size: decoded at a reduced scale.
    Image.fromarray(rng.integers(0, 255, (90, 70, 3), np.uint8)).save(
        path, quality=90)
    return path


@pytest.mark.parametrize("kind", ["jpeg", "png", "uint8", "float32",
                                  "pil"])
def test_multi_crop_center_view_is_the_plain_view(kind, tmp_path):
    rng = np.random.default_rng(4)
    if kind == "jpeg":
        source = _jpeg(tmp_path)
    elif kind == "png":
        source = str(tmp_path / "a.png")
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(
            source)
    elif kind == "pil":
        source = Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8))
    else:  # of the model's size: used as it is
        source = rng.integers(0, 255, (16, 16, 3)).astype(kind)
    plain = make_views("x", source, (16, 16), None, 0.875, None)
    multi = make_views("x", source, (16, 16), "multi_crop", 0.875, None)
    assert plain.shape == (1, 16, 16, 3) and multi.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(multi[0], plain[0])
    if kind in ("uint8", "float32"):
        np.testing.assert_array_equal(plain[0], source)
    # The corners are other views.
    assert all(np.abs(multi[i] - multi[0]).max() > 0 for i in range(1, 5))


def _class_folder(root, classes, bad=None):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), (40 * i, 90, 200)).save(
                root / name / f"{i}.png")
    if bad:
        (root / classes[0] / bad).write_bytes(b"not an image")
    return root


def test_eval_folder_messages_name_the_users_paths(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (12, 10)).save(flat / "a.png")
    with pytest.raises(ValueError, match=(
            f"No class folders in {str(flat)!r}: expected {flat}/<class")):
        kft.runs.load_eval_folder(str(flat), ["a", "b"], 8)
    data = _class_folder(tmp_path / "data", ["a", "b"], bad="bad.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = kft.runs.load_eval_folder(str(data), ["a", "b"], 8)
    messages = [str(w.message) for w in caught
                if issubclass(w.category, kft.data.SkippedFilesWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(f"Skipped 1 of 5 image files in {data}:")
    assert messages[0].count("bad.jpg") == 1
    assert str(data / "a" / "bad.jpg") in messages[0]
    assert [s.path for s in dataset.skipped] == [str(data / "a" / "bad.jpg")]
    assert dataset.num_examples == 4
    assert dataset.class_counts == {"a": 2, "b": 2}
    empty = _class_folder(tmp_path / "empty", ["a", "b"])
    for path in (empty / "b").iterdir():
        path.unlink()
    # A class without a readable image has no examples (support 0 in a
    # report); a folder without any image is refused.
    dataset = kft.runs.load_eval_folder(str(empty), ["a", "b"], 8)
    assert dataset.class_counts == {"a": 2, "b": 0}
    for path in (empty / "a").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=(
            rf"{str(empty)!r} has no readable images")):
        kft.runs.load_eval_folder(str(empty), ["a", "b"], 8)


def test_eval_folder_reads_with_the_eval_transform(tmp_path):
    data = _class_folder(tmp_path / "data", ["a", "b"])
    dataset = kft.runs.load_eval_folder(str(data), ["a", "b"], 8,
                                        batch_size=4)
    images, labels = next(iter(dataset.in_order()))
    paths = sorted(str(p) for p in data.glob("*/*.png"))
    expected = np.stack([kft.data.load_image(p, 8, "center_crop")
                         for p in paths])
    np.testing.assert_array_equal(np.asarray(images), expected)
    assert list(np.asarray(labels)) == [0, 0, 1, 1]
    # Labels follow the model's classes, of which the folder holds some.
    dataset = kft.runs.load_eval_folder(str(data), ["c", "b", "a"], 8)
    assert dataset.class_counts == {"c": 0, "b": 2, "a": 2}
    _, labels = next(iter(dataset.in_order()))
    assert list(np.asarray(labels)) == [1, 1, 2, 2]  # b, then a
    with pytest.raises(ValueError, match=r"folders \['b'\] .* not among"):
        kft.runs.load_eval_folder(str(data), ["a", "c"], 8)
    # Of many classes, the first 20 (300 made a 2,211-character line).
    many = [f"class{i:03d}" for i in range(300)]
    with pytest.raises(ValueError, match=r"classes: \['class000', .*"
                       r"'class019', \.\.\. and 280 more\]\. Evaluate"):
        kft.runs.load_eval_folder(str(data), many, 8)



def test_probabilities_are_recognised_however_the_softmax_is_written():
    # keras.ops.softmax in the graph (an op, not a layer) and a softmax
    # model wrapped by attach were taken for logits: kft.predict applied
    # a second softmax, export(output="probabilities") a second one too.
    import keras

    from kft.deploy.inference import output_kind

    inputs = keras.Input((8, 8, 3))
    logits = keras.layers.Dense(3, name="head")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    as_op = keras.Model(inputs, keras.ops.softmax(logits))
    as_layer = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax", name="head")])
    attached = kft.augmentation.attach(as_layer, "none")
    assert [output_kind(m) for m in (as_op, as_layer, attached)] == [
        "probabilities"] * 3
    assert output_kind(keras.Model(inputs, logits)) == "logits"
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3))
    for model in (as_op, attached):
        result = kft.predict(model, x.astype("float32"), top_k=3)[0]
        want = model.predict(x[:1], verbose=0)[0]
        np.testing.assert_allclose(result.probabilities,
                                   want[result.indices], atol=1e-6)


def test_probabilities_behind_a_cast_or_inside_a_lambda(tmp_path):
    # A softmax followed by a float32 Activation("linear") (the mixed
    # precision guides' output layer), by Identity, or inside a Lambda
    # was taken for logits: kft.predict and export(output=
    # "probabilities") applied a second softmax (top probability 0.475
    # for the model's 0.99999), onnx_parity said ok, and fine_tune's
    # default loss took the probabilities for logits.
    import keras

    from kft.deploy.inference import output_kind
    from kft.training.fine_tune import _default_loss

    inputs = keras.Input((8, 8, 3))
    features = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(
        3, kernel_initializer=keras.initializers.Constant(0.3))(features)
    cast = keras.Model(inputs, keras.layers.Activation(
        "linear", dtype="float32")(keras.layers.Softmax()(logits)))
    identity = keras.Model(inputs, keras.layers.Identity()(
        keras.layers.Dropout(0.2)(keras.ops.softmax(logits))))
    lam = keras.Model(inputs, keras.layers.Lambda(keras.ops.softmax)(logits))
    scaled = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(logits))
    assert [output_kind(m) for m in (cast, identity, lam, scaled)] == [
        "probabilities"] * 3 + ["logits"]
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(
        "float32")
    for model in (cast, lam):
        want = model.predict(x, verbose=0)
        got = kft.predict(model, x, top_k=3)
        for row, result in zip(want, got):
            np.testing.assert_allclose(result.probabilities,
                                       row[result.indices], atol=1e-6)
        path = kft.export(model, str(tmp_path / f"{model.name}.keras"),
                          format="keras", output="probabilities")
        np.testing.assert_allclose(
            keras.models.load_model(path).predict(x, verbose=0), want,
            atol=1e-6)
        assert not _default_loss(model, (x, np.zeros(2))).get_config()[
            "from_logits"]
    assert _default_loss(scaled, (x, np.zeros(2))).get_config()["from_logits"]

    # No graph to read (subclassed, or a Sequential not built): logits, as
    # before (reading their inputs raised AttributeError / ValueError).
    class Halve(keras.layers.Layer):
        def call(self, t):
            return t / 2.0

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense, self.halve = keras.layers.Dense(3), Halve()

        def call(self, t):
            return self.halve(self.dense(keras.ops.mean(t, axis=(1, 2))))

    sub = Sub()
    sub(x)
    unbuilt = keras.Sequential([keras.layers.Dense(3), Halve()])
    assert output_kind(sub) == output_kind(unbuilt) == "logits"


def test_a_two_output_model_is_refused_clearly():
    # numpy's "inhomogeneous shape" from inside kft (or, with outputs of
    # one width, misleading shape errors much later); fine_tune failed in
    # Keras' compile on the metrics.
    import keras

    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(3, name="head")(pooled),
                                 keras.layers.Dense(3, name="aux")(pooled)])
    x = np.zeros((4, 8, 8, 3), "float32")
    y = np.array([0, 1, 2, 0])
    for call in (lambda: kft.predict(model, x),
                 lambda: kft.evaluate(model, (x, y)),
                 lambda: kft.evaluate_classifier(model, x, y)):
        with pytest.raises(ValueError, match=r"one (image input and one )?"
                           r"output.*Received: model='(a model with 2 "
                           r"outputs|1 inputs, 2 outputs)'"):
            call()
    with pytest.raises(TypeError, match="one output"):
        kft.fine_tune(model, (x, y), verbose=0)


def test_a_subclassed_model_is_told_to_wrap_itself():
    # AttributeError 'inputs' / 'input_shape' from inside kft, and
    # export's advice to call the model once (which gives it no graph).
    import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.pool(x))

    net = Net()
    x = np.zeros((2, 8, 8, 3), "float32")
    net(x)
    for call in (lambda: kft.predict(net, x),
                 lambda: kft.augmentation.attach(net, "light"),
                 lambda: kft.export(net, "unused.onnx")):
        with pytest.raises(ValueError, match="subclassed model .*wrap it in "
                           "a functional model"):
            call()
    inputs = keras.Input((8, 8, 3))
    wrapped = keras.Model(inputs, net(inputs))
    assert len(kft.predict(wrapped, x)) == 2


def test_export_and_read_metadata_name_what_they_cannot_take(tmp_path):
    # A path (or anything else) where the model goes: "'str' object has
    # no attribute 'inputs'".
    for path, options in ((tmp_path / "m.onnx", {}),
                          (tmp_path / "m.keras", {"format": "keras"})):
        with pytest.raises(TypeError, match=r"^Argument `model` must be a "
                           r"keras\.Model\. Received: model='m\.keras'$"):
            kft.export("m.keras", path, **options)
    with pytest.raises(ValueError, match=r"`path` must be an existing "
                       r"\.keras or \.onnx file\. Received: path='.*"
                       r"missing\.keras'"):
        read_metadata(tmp_path / "missing.keras")
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"`path` must be a \.keras \(zip\) "
                       r"or \.onnx file\. Received: path='.*junk\.keras'"):
        read_metadata(junk)
    assert not (tmp_path / "m.onnx").exists()
    pytest.importorskip("jax2onnx")
    # An ONNX graph is traced at one size: a model built for any size
    # is told how to build it, before any warning about the file (its
    # missing class names) that is then not written.
    dynamic = kft.build_classifier("simple_cnn", 2, weights=None,
                                   input_shape=(None, None, 3))
    with pytest.raises(ValueError, match=r"`model` must be a model with a "
                       r"static input height, width and channels for ONNX "
                       r"export \(build it with input_shape=\(height, width, "
                       r"3\)\)\. Received: model=\(None, None, 3\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kft.export(dynamic, tmp_path / "m.onnx")
    assert not list(tmp_path.glob("m.*"))


def test_items_of_an_image_list_that_are_not_images_are_named(model):
    # A list mixes paths, PIL images and arrays; an item of another type or
    # an array that is not one RGB image is named by its index before any
    # prediction (not a failure inside PIL or the model).
    image = np.zeros((16, 16, 3), "float32")
    with pytest.raises(TypeError, match=r"`images` holds an item of type "
                       r"int at index 1; expected a path, PIL image or "
                       r"array\."):
        kft.predict(model, [image, 3])
    with pytest.raises(ValueError, match=r"Image images\[1\] has shape "
                       r"\(16, 16\); expected \(height, width, 3\) RGB"):
        kft.predict(model, [image, image[..., 0]])
    # A record array (two fields per pixel) is no pixels: named by dtype.
    fields = np.zeros((16, 16, 3), dtype=[("a", "f4"), ("b", "f4")])
    with pytest.raises(ValueError, match=r"Image images\[0\] has dtype "
                       r"\[\('a', '<f4'\), \('b', '<f4'\)\]; expected RGB"):
        kft.predict(model, [fields])


def test_fast_producer_lookup_answers_as_jax2onnx_does(monkeypatch):
    # kft's linear-time stand-in for jax2onnx's producer lookup (its id set
    # built once per node list) must return what the original returns, on
    # every call of a real conversion (convolutions give transposes).
    pytest.importorskip("jax2onnx")
    from kft.deploy import _jax2onnx_speed as speed
    from kft.deploy.exporting import onnx_proto

    real, answers = speed._patches, []

    def checked():
        patches = []
        for module, name, new in real():
            if name == "_producer_node":
                original = getattr(module, name)

                def new(nodes, value, fast=new, original=original):
                    got = fast(nodes, value)
                    answers.append(got is original(nodes, value))
                    return got
            patches.append((module, name, new))
        return patches

    monkeypatch.setattr(speed, "_patches", checked)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Add()([x, keras.layers.Conv2D(4, 1)(inputs)])
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    assert onnx_proto(model).graph.node
    assert len(answers) > 10 and all(answers)
