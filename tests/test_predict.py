"""kft.predict on files, folders, arrays; from a model, .keras and .onnx."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import kft
from kft.data import load_image


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return kft.build_classifier("simple_cnn", weights=None,
                                input_shape=(16, 16, 3),
                                class_names=[f"digit{i}" for i in range(5)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Real digits as PNG and JPEG files of 20x24 px (resized by predict)."""
    folder = tmp_path_factory.mktemp("images")
    data = kft.datasets.digits(image_size=24, target_per_class=2)
    for i, image in enumerate(data.target_train[0][:6]):
        pixels = np.clip(image, 0, 255).astype(np.uint8)[:, 2:22]
        ext = "png" if i % 2 else "jpg"
        Image.fromarray(pixels).save(folder / f"img{i}.{ext}")
    return folder


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _expected(model, folder):
    paths = sorted(str(p) for p in folder.iterdir())
    x = np.stack([load_image(p, 16, "center_crop") for p in paths])
    return paths, _softmax(model.predict(x.astype("float32"), verbose=0))


def test_folder_matches_model_predict(model, folder):
    paths, probs = _expected(model, folder)
    results = kft.predict(model, folder, top_k=3, batch_size=4)
    assert [r.source for r in results] == paths
    for r, p in zip(results, probs):
        assert r.indices[0] == int(np.argmax(p))
        assert r.label == f"digit{r.indices[0]}"
        np.testing.assert_allclose(r.probabilities, np.sort(p)[::-1][:3],
                                   rtol=1e-5)


def test_verbose_shows_a_progress_bar_over_the_images(model, folder,
                                                      capsys):
    quiet = kft.predict(model, folder, batch_size=4)
    assert capsys.readouterr().out == ""
    shown = kft.predict(model, folder, batch_size=4, verbose=1)
    assert "6/6" in capsys.readouterr().out
    assert [r.probabilities for r in shown] == [r.probabilities
                                                 for r in quiet]
    with pytest.raises(ValueError, match="verbose"):
        kft.predict(model, folder, verbose=-1)


def test_onnx_and_keras_files_give_the_same(model, folder, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    paths, probs = _expected(model, folder)
    for path in (kft.export(model, tmp_path / "m.onnx", batch=1),
                 kft.export(model, tmp_path / "m.keras", format="keras")):
        results = kft.predict(path, [str(p) for p in paths], top_k=5)
        for r, p in zip(results, probs):
            assert r.labels[0] == f"digit{int(np.argmax(p))}"
            np.testing.assert_allclose(r.probabilities, np.sort(p)[::-1],
                                       rtol=1e-4, atol=1e-6)


def test_onnx_file_without_kft_metadata_is_taken_as_logits(model, folder,
                                                            tmp_path):
    # An ONNX file from another tool says nothing of its output: predict
    # must read it as logits (the usual head) and apply the softmax, not
    # report raw logits as probabilities; no names, so labels are indices.
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    paths, probs = _expected(model, folder)
    path = kft.export(model, tmp_path / "m.onnx")
    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.save(proto, path)
    assert kft.deploy.read_metadata(path) == {}
    results = kft.predict(path, paths, top_k=5)
    for r, p in zip(results, probs):
        assert r.labels[0] == str(int(np.argmax(p)))
        assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(r.probabilities, np.sort(p)[::-1],
                                   rtol=1e-4, atol=1e-6)


def test_onnx_file_refuses_float_arrays_of_another_size(model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    path = kft.export(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"array\[0\].*32x32 pixels, but "
                       r"the model takes 16x16"):
        kft.predict(path, np.zeros((2, 32, 32, 3), np.float32))


def test_arrays_of_model_size_used_as_given(model):
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3))
    results = kft.predict(model, x.astype("float32"), top_k=1)
    probs = _softmax(model.predict(x, verbose=0))
    assert [r.indices[0] for r in results] == list(np.argmax(probs, -1))
    assert [r.source for r in results] == ["array[0]", "array[1]",
                                          "array[2]"]


@pytest.mark.parametrize("tta", ["flip", "multi_crop"])
def test_tta_changes_nothing_on_a_constant_image(model, tta):
    image = Image.new("RGB", (30, 20), (90, 140, 200))
    plain = kft.predict(model, image, top_k=5)[0]
    augmented = kft.predict(model, image, top_k=5, tta=tta)[0]
    assert augmented.indices == plain.indices
    np.testing.assert_allclose(augmented.probabilities, plain.probabilities,
                               rtol=1e-6)


def test_tta_flip_averages_the_mirror(model):
    x = np.random.default_rng(1).uniform(0, 255, (16, 16, 3))
    got = kft.predict(model, x.astype("float32"), tta="flip", top_k=5)[0]
    both = _softmax(model.predict(np.stack([x, x[:, ::-1]]), verbose=0))
    mean = both.mean(0)
    np.testing.assert_allclose(got.probabilities, np.sort(mean)[::-1],
                               rtol=1e-5)


def test_tta_multi_crop_averages_the_center_and_the_four_corners(model):
    # A 40x30 image for a 16x16 model, crop_fraction 0.8: 24x24 boxes,
    # the center one at (8, 3), the corners at x 0 or 16 and y 0 or 6.
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), np.uint8))
    got = kft.predict(model, image, tta="multi_crop", crop_fraction=0.8,
                      top_k=5)[0]
    views = np.stack([np.asarray(image.resize((16, 16), Image.BILINEAR,
                                              box=(x, y, x + 24, y + 24)),
                                 np.float32)
                      for x, y in ((8, 3), (0, 0), (16, 0), (0, 6),
                                   (16, 6))])
    mean = _softmax(model.predict(views, verbose=0)).mean(0)
    np.testing.assert_allclose(got.probabilities, np.sort(mean)[::-1],
                               rtol=1e-5)


def test_files_of_a_folder_not_named_as_images_are_reported(model, tmp_path):
    # A phone's .heic photo beside a PNG: one prediction, and a warning
    # that names what was left out (training and `kft eval` warn so too);
    # hidden and system files are not the user's images.
    Image.new("RGB", (16, 16), (90, 30, 200)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "b.heic", format="JPEG")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning) as record:
        results = kft.predict(model, tmp_path)
    assert [r.source for r in results] == [str(tmp_path / "a.png")]
    [warning] = [w for w in record if "Left out" in str(w.message)]
    message = str(warning.message)
    assert message.startswith(
        f"Left out 2 files of folder {str(tmp_path)!r} not named as images "
        "(.heic: 1, .txt: 1; e.g. ")
    assert "to predict on them." in message
    assert warning.filename == __file__


def test_unreadable_file_is_named(model, folder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="broken.png"):
        kft.predict(model, [str(next(folder.iterdir())), str(bad)])


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="Argument `tta`"):
        kft.predict(model, np.zeros((16, 16, 3)), tta="rotate")
    # max_pixels was checked inside the reader ("Cannot read image file
    # ...: corrupt image"), and not at all for arrays or multi_crop.
    for bad in (0, -5, 1.5):
        with pytest.raises(ValueError, match=r"^Argument `max_pixels`"):
            kft.predict(model, np.zeros((16, 16, 3)), max_pixels=bad)
    # Arrays that are not [0, 255] pixels were read as if they were.
    for array, match in ((np.full((16, 16, 3), 4000, np.uint16),
                          r"integer pixels in \[4000, 4000\].*16-bit"),
                         (np.ones((16, 16, 3), bool), r"dtype bool"),
                         (np.full((16, 16, 3), "128"), r"dtype <U3"),
                         (np.ones((16, 16, 3), complex), r"dtype complex"),
                         (np.full((16, 16, 3), np.nan), r"NaN")):
        with pytest.raises(ValueError, match=match):
            kft.predict(model, array)
    assert kft.predict(model, np.full((16, 16, 3), 255, np.uint16))
    # Other float types are pixels too.
    import ml_dtypes

    half = np.full((16, 16, 3), 128, ml_dtypes.bfloat16)
    assert kft.predict(model, half)[0].probabilities == kft.predict(
        model, np.full((16, 16, 3), 128.0))[0].probabilities
    with pytest.raises(ValueError, match="Argument `top_k`"):
        kft.predict(model, np.zeros((16, 16, 3)), top_k=0)
    with pytest.raises(ValueError, match="holds no image files"):
        kft.predict(model, tmp_path)
    with pytest.raises(TypeError, match="Argument `images`"):
        kft.predict(model, 3)
    with pytest.raises(TypeError, match=r"`class_names` must be a sequence "
                       r"of strings\. Received: class_names='ab'"):
        kft.predict(model, np.zeros((16, 16, 3)), class_names="ab")
    # Said "no graph to export" to a user predicting.
    unbuilt = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"no defined input yet, so its "
                       r"input size and output are unknown\. Build it"):
        kft.predict(unbuilt, np.zeros((16, 16, 3)))
    # A model path that is not there, or neither a model nor a path.
    missing = str(tmp_path / "missing.keras")
    with pytest.raises(ValueError, match=r"`model_or_path` must be a Keras "
                       r"model or an existing \.keras / \.onnx file\. "
                       r"Received: model_or_path='.*missing\.keras'"):
        kft.predict(missing, np.zeros((16, 16, 3)))
    with pytest.raises(TypeError, match=r"`model_or_path` must be a "
                       r"keras\.Model or the path of a \.keras / \.onnx "
                       r"file\. Received: model_or_path=3"):
        kft.predict(3, np.zeros((16, 16, 3)))
    # Names of another count would label the wrong classes.
    with pytest.raises(ValueError, match=r"`class_names` must be 5 names, one "
                       r"per model output\. Received: "
                       r"class_names=\('a', 'b', 'c'\)"):
        kft.predict(model, np.zeros((16, 16, 3)), class_names=["a", "b", "c"])
    # An image file that is not there, without a '~' to blame.
    with pytest.raises(OSError, match=r"Cannot read image file '.*gone\.png'"
                       r": file not found$"):
        kft.predict(model, [str(tmp_path / "gone.png")])


def test_sources_are_named_as_documented_and_bad_files_say_so(model,
                                                               tmp_path):
    image = np.full((16, 16, 3), 128, np.uint8)
    named = {"array[0]": image, "array[1]": np.stack([image, image]),
             "image[0]": Image.fromarray(image),
             "images[1]": [image, Image.fromarray(image)]}
    for source, images in named.items():
        assert kft.predict(model, images, top_k=1)[-1].source == source
        assert f'`"{source[:-2]}' in kft.Prediction.__doc__
    # A batch inside a list was refused ("has shape (2, 16, 16, 3)").
    batch = np.stack([image, image * 0])
    listed = kft.predict(model, [image, batch], top_k=1)
    assert [r.source for r in listed] == ["images[0]", "images[1][0]",
                                          "images[1][1]"]
    assert '`"images[i][j]"`' in kft.Prediction.__doc__
    # Batches of 3 and 2 images: XLA may sum in another order per size.
    np.testing.assert_allclose(
        [r.probabilities for r in listed[1:]],
        [r.probabilities for r in kft.predict(model, batch, top_k=1)],
        rtol=1e-6)
    # ONNX bytes (or anything else) under a .keras name.
    fake = tmp_path / "m.keras"
    fake.write_bytes(b"not a zip archive")
    # Keras called it "File not found" (kft eval printed that).
    for load in (lambda: kft.predict(str(fake), image),
                 lambda: kft.load_run(str(fake))):
        with pytest.raises(ValueError, match=r"m\.keras' is not a readable "
                           r"\.keras file \(a zip archive\): corrupt"):
            load()
    fake = tmp_path / "m.onnx"  # was onnxruntime's InvalidProtobuf
    fake.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"m\.onnx' is not a readable ONNX "
                       r"model \(corrupt, or not an ONNX file\)"):
        kft.predict(str(fake), image)
    # Class names travel through kft.with_source_head.
    kept = kft.with_source_head(model, model.get_layer("head_dense"))
    assert kft.predict(kept, image, top_k=1)[0].label.startswith("digit")


def test_pil_image_is_turned_as_its_exif_orientation_says(model, tmp_path):
    # A photo taken sideways: stored rotated, with an orientation tag.
    from kft.deploy._views import make_views

    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    path = str(tmp_path / "sideways.png")
    image.save(path, exif=exif)
    upright = load_image(path, 16, "center_crop")
    assert not np.array_equal(upright, load_image(path, 16, "center_crop",
                                                  exif_transpose=False))
    for tta in (None, "multi_crop"):
        with Image.open(path) as opened:
            views = make_views("image[0]", opened, (16, 16), tta, 0.875,
                               None)
        np.testing.assert_array_equal(views, make_views(
            path, path, (16, 16), tta, 0.875, None))
        np.testing.assert_array_equal(views[0], upright)
    with Image.open(path) as opened:
        from_pil = kft.predict(model, opened, top_k=5)[0]
    assert from_pil.probabilities == kft.predict(model, path,
                                                 top_k=5)[0].probabilities
    # A model trained on stored pixels (`exif_transpose=False`) is fed
    # them: predict and the eval folder turned every photo upright.
    stored = load_image(path, 16, "center_crop", exif_transpose=False)
    for tta in (None, "multi_crop"):
        with Image.open(path) as opened:
            views = make_views("image[0]", opened, (16, 16), tta, 0.875,
                               None, exif_transpose=False)
        np.testing.assert_array_equal(views, make_views(
            path, path, (16, 16), tta, 0.875, None, exif_transpose=False))
        np.testing.assert_array_equal(views[0], stored)
    as_stored = kft.predict(model, path, top_k=5, exif_transpose=False)[0]
    assert as_stored.probabilities == kft.predict(
        model, stored, top_k=5)[0].probabilities
    os.makedirs(tmp_path / "folder" / "a")
    os.replace(path, tmp_path / "folder" / "a" / "sideways.png")
    for flag, expected in ((True, upright), (False, stored)):
        folder = kft.runs.load_eval_folder(tmp_path / "folder", ["a", "b"],
                                           16, exif_transpose=flag)
        np.testing.assert_array_equal(
            np.asarray(next(iter(folder))[0][0], np.uint8), expected)


def test_model_not_taking_rgb_is_refused_before_any_call(tmp_path):
    # kft.predict feeds RGB views: a 1-channel model must fail with a clear
    # message, and without a call that leaves the model broken.
    from importlib.util import find_spec

    keras.utils.set_random_seed(0)
    gray = kft.build_classifier("simple_cnn", 3, weights=None,
                                input_shape=(16, 16, 1),
                                class_names=list("abc"))
    image = np.full((20, 20, 3), 100, np.uint8)
    sources = [gray]
    if find_spec("jax2onnx") and find_spec("onnxruntime"):
        sources.append(kft.export(gray, tmp_path / "gray.onnx"))
    for source in sources:
        with pytest.raises(ValueError, match=r"Argument `model_or_path` must "
                           r"be a model taking RGB images.*takes 1 channel"):
            kft.predict(source, image)
    x = np.zeros((1, 16, 16, 1), np.float32)
    assert gray.predict(x, verbose=0).shape == (1, 3)


@pytest.mark.parametrize("tta", [None, "flip", "multi_crop"])
def test_unreadable_files_are_named_with_their_reason(model, tmp_path, tta):
    # "~/x.png" said "file not found (removed after the folder was
    # listed?)", and an image above max_pixels "corrupt image".
    with pytest.raises(OSError, match=r"'~/kft_missing\.png': file not "
                       r"found \(kft does not expand '~'"):
        kft.predict(model, ["~/kft_missing.png"], tta=tta)
    path = str(tmp_path / "big.png")
    Image.new("RGB", (40, 40)).save(path)
    with pytest.raises(OSError, match=r"too large: 40x40 pixels is above "
                       r"max_pixels=100$"):
        kft.predict(model, [path], tta=tta, max_pixels=100)


def test_threads_predicting_with_one_model_take_turns(model):
    # Keras' JAX predict and evaluate loops empty the model's variables
    # while they run: 11 of 12 calls from 4 threads raised "'NoneType'
    # object is not callable" and the model was broken for good.
    from concurrent.futures import ThreadPoolExecutor

    images = np.random.default_rng(1).integers(0, 256, (6, 16, 16, 3),
                                               np.uint8)
    want = [p.probabilities for p in kft.predict(model, images, top_k=3)]
    x = images.astype("float32")
    y = np.arange(6) % 3
    want_report = kft.evaluate(model, (x, y), verbose=0).accuracy
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: [p.probabilities for p in kft.predict(
            model, images, top_k=3)], range(8)))
        reports = list(pool.map(lambda _: kft.evaluate(
            model, (x, y), verbose=0).accuracy, range(4)))
    assert all(g == want for g in got)
    assert reports == [want_report] * 4
    assert [p.probabilities for p in kft.predict(model, images,
                                                 top_k=3)] == want


def test_calls_of_any_image_count_share_a_few_compiled_sizes(model,
                                                             monkeypatch):
    # Keras compiles a program per batch size: a service predicting 1..n
    # images per request compiled one per new count (seconds each for a
    # backbone). The last batch is padded to a power of two; the padding's
    # outputs are dropped.
    from kft.deploy import prediction

    sizes = []
    run = prediction.predict_numpy
    monkeypatch.setattr(prediction, "predict_numpy", lambda m, x, b: (
        sizes.append(len(x)) or run(m, x, b)))
    x = np.random.default_rng(1).uniform(0, 255, (21, 16, 16, 3)).astype(
        "float32")
    probs = _softmax(model.predict(x, verbose=0))
    for n in range(1, 22):
        results = kft.predict(model, x[:n], top_k=5, batch_size=8)
        assert len(results) == n
        for r, p in zip(results, probs[:n]):
            np.testing.assert_allclose(r.probabilities, np.sort(p)[::-1],
                                       rtol=1e-5, atol=1e-7)
            assert r.indices == list(np.argsort(-p, kind="stable"))
    assert sorted(set(sizes)) == [1, 2, 4, 8]


def test_tta_averages_each_image_over_its_own_views(model):
    # Several images share one model call, each image's views one after the
    # other: an offset off by a view would average neighbours' views (a
    # single image, as the tests above use, cannot show it).
    images = np.random.default_rng(3).uniform(0, 255, (3, 16, 16, 3)).astype(
        "float32")
    together = kft.predict(model, images, tta="flip", top_k=5)
    both = _softmax(model.predict(np.concatenate([images, images[:, :, ::-1]]),
                                  verbose=0))
    means = (both[:3] + both[3:]) / 2
    assert len({tuple(r.probabilities) for r in together}) == 3
    for r, mean in zip(together, means):
        assert r.indices == list(np.argsort(-mean, kind="stable"))
        np.testing.assert_allclose(r.probabilities, np.sort(mean)[::-1],
                                   rtol=1e-5)


def test_class_names_of_another_count_and_ties_in_class_order():
    # More names than outputs were refused only as fewer were; and equal
    # probabilities (a model that cannot tell the classes apart) list the
    # classes in index order, the same top-k on every call.
    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4, kernel_initializer="zeros")])
    result = kft.predict(model, np.zeros((16, 16, 3)), top_k=3)[0]
    assert result.indices == [0, 1, 2]
    assert result.labels == ["0", "1", "2"]
    assert result.probabilities == [0.25] * 3
    with pytest.raises(ValueError, match=r"`class_names` must be 4 names, one "
                       r"per model output\. Received: class_names=\('a', 'b', "
                       r"'c', 'd', 'e'\)"):
        kft.predict(model, np.zeros((16, 16, 3)), class_names=list("abcde"))


class _OwnSoftmax(keras.layers.Layer):
    """A layer of the user's own (neither Keras' nor kft's) ending in a
    softmax: what it computes is not known from its class."""

    def call(self, x):
        return keras.ops.softmax(x)


def test_a_model_ending_in_a_layer_of_your_own_is_probed_for_probabilities():
    # Its rows are probabilities: taken for logits, kft.predict applied a
    # second softmax (flattening the model's 0.9 towards 1/num_classes).
    from kft.deploy.inference import output_kind

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    logits = keras.layers.Dense(3)(
        keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, _OwnSoftmax()(logits))
    assert output_kind(model) == "probabilities"
    x = np.random.default_rng(4).uniform(0, 255, (2, 16, 16, 3)).astype(
        "float32")
    want = model.predict(x, verbose=0)
    for row, result in zip(want, kft.predict(model, x, top_k=3)):
        np.testing.assert_allclose(result.probabilities, row[result.indices],
                                   atol=1e-6)
