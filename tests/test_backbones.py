import re
import warnings
import zipfile

import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state

import kft


def _skeleton(name, size):
    """Builds a backbone without initialising its weights (initialisers
    cost XLA compiles; block coverage only needs layers and shapes)."""
    with keras.StatelessScope(initialize_variables=False):
        model = kft.create_backbone(name, weights=None,
                                    input_shape=(size, size, 3))
    global_state.set_global_attribute("uninitialized_variables", [])
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", kft.list_backbones())
def test_every_weighted_layer_is_in_exactly_one_block(name):
    model = _skeleton(name, 32)
    spec = kft.get_backbone(name)
    blocks = kft.get_blocks(model)
    assert list(blocks) == spec.block_names
    assert all(blocks.values()), "every block has layers"
    placed = [layer for layers in blocks.values() for layer in layers]
    weighted = [layer for layer in model.layers if layer.weights]
    assert len(placed) == len(set(map(id, placed))) == len(weighted)
    assert {id(layer) for layer in placed} == {id(layer) for layer in weighted}
    for layer in weighted:
        hits = [n for n, rx in spec.blocks if re.search(rx, layer.name)]
        assert len(hits) == 1, (layer.name, hits)


def test_block_order_follows_the_network():
    model = _skeleton("resnet50", 32)
    assert list(kft.get_blocks(model)) == ["stem", "conv2", "conv3", "conv4",
                                           "conv5"]
    blocks = kft.get_blocks(model)
    position = {id(layer): i for i, layer in enumerate(model.layers)}
    starts = [position[id(layers[0])] for layers in blocks.values()]
    assert starts == sorted(starts)


def test_list_backbones_pattern():
    assert kft.list_backbones("resnet*") == [
        "resnet101", "resnet101v2", "resnet152", "resnet152v2", "resnet50",
        "resnet50v2"]
    assert "efficientnetb7" in kft.list_backbones("efficientnetb*")
    required = ["resnet50", "resnet101", "resnet50v2", "efficientnetv2b0",
                "efficientnetv2s", "convnext_tiny", "convnext_small",
                "convnext_base", "mobilenetv2", "mobilenetv3small",
                "mobilenetv3large", "densenet121", "vgg16",
                # Every keras.applications model whose layers have stable
                # names (Inception, Xception, NASNet name some by counter).
                "mobilenet", "resnet152v2", "densenet201", "efficientnetv2b2",
                "efficientnetv2b3", "efficientnetv2l", "convnext_large",
                "convnext_xlarge", "nasnetmobile", "nasnetlarge"]
    required += [f"efficientnetb{i}" for i in range(8)]
    assert set(required) <= set(kft.list_backbones())
    assert kft.list_backbones("nothing*") == []


def test_mobilenet_v1_by_its_other_names():
    for name in ("mobilenetv1", "MobileNet_V1", "mobilenet-v1", "MobileNet"):
        assert kft.get_backbone(name).name == "mobilenet"


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError, match="Unknown backbone: 'resnet9'.*resnet50"):
        kft.get_backbone("resnet9")


def test_every_keras_application_is_registered_or_said_why_not():
    # The README's claim: every keras.applications model but the three
    # whose layers carry counter names.
    import inspect

    from kft.models.registry import not_registered_reason

    registered = {kft.get_backbone(name).constructor
                  for name in kft.list_backbones()}
    left = sorted(name for name, f in vars(keras.applications).items()
                  if inspect.isfunction(f) and name[0].isupper()
                  and f not in registered)
    assert left == ["InceptionResNetV2", "InceptionV3", "Xception"]
    assert all(not_registered_reason(name) for name in left)


@pytest.mark.parametrize("name, keras_name", [
    ("Xception", "Xception"), ("inception_v3", "InceptionV3"),
    ("inceptionresnetv2", "InceptionResNetV2")])
def test_counter_named_keras_models_say_why_they_are_not_registered(
        name, keras_name):
    with pytest.raises(ValueError, match=(
            rf"Unknown backbone: '{name}'\. keras.applications' "
            rf"{keras_name} is "
            r"not registered: some of its layers are named by Keras' global "
            r"counter .* Known backbones: convnext_base")):
        kft.get_backbone(name)
    with pytest.raises(ValueError) as caught:
        kft.get_backbone("xceptionnet")
    assert "global counter" not in str(caught.value)


def test_bad_weights_argument():
    with pytest.raises(ValueError, match="weights.*existing weights file"):
        kft.create_backbone("simple_cnn", weights="/no/such/file.h5")
    with pytest.raises(ValueError, match="weights.*Received: weights=3"):
        kft.create_backbone("simple_cnn", weights=3)


def test_a_folder_given_as_weights_is_refused_as_not_a_file(tmp_path):
    # A run folder passed where its weights file belongs: refused by what
    # it is, before a backbone is built to fail loading it.
    with pytest.raises(ValueError, match=r"the path of an existing weights "
                       r"file\. Received: weights=PosixPath\("):
        kft.create_backbone("simple_cnn", weights=tmp_path,
                            input_shape=(16, 16, 3))


def test_local_weights_file_round_trip(tmp_path):
    first = kft.create_backbone("simple_cnn", weights=None,
                                input_shape=(16, 16, 3))
    path = str(tmp_path / "backbone.weights.h5")
    first.save_weights(path)
    keras.utils.set_random_seed(1)
    second = kft.create_backbone("simple_cnn", weights=path,
                                 input_shape=(16, 16, 3))
    x = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3))
    np.testing.assert_allclose(first.predict(x, verbose=0),
                               second.predict(x, verbose=0), atol=1e-6)
    keras.utils.set_random_seed(1)
    fresh = kft.create_backbone("simple_cnn", weights=None,
                                input_shape=(16, 16, 3))
    assert not np.allclose(fresh.predict(x, verbose=0),
                           second.predict(x, verbose=0))


def test_imagenet_weights_go_through_keras_download_path(tmp_path,
                                                         monkeypatch):
    """weights="imagenet" uses Keras' own loader; only the download is
    replaced by a local file (no network here)."""
    reference = keras.applications.VGG16(include_top=False, weights=None,
                                         input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.h5")
    reference.save_weights(path.replace(".h5", ".weights.h5"))
    requested = []

    def fake_get_file(fname=None, origin=None, **kwargs):
        requested.append(origin)
        return path.replace(".h5", ".weights.h5")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", fake_get_file)
    model = kft.create_backbone("vgg16", weights="imagenet",
                                input_shape=(32, 32, 3))
    assert requested and "vgg16" in requested[0]
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3))
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               reference.predict(x, verbose=0), rtol=1e-5)


def test_imagenet_weights_offline_say_what_to_pass(monkeypatch):
    # Keras' bare Exception("URL fetch failure ...") gave no advice.
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage/x.h5: None")

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
    with pytest.raises(ValueError, match=r"weights='imagenet' for "
                       r"'mobilenetv3small'.*URL fetch failure.*weights=None "
                       r"\(random initialisation; `--weights none` of the "
                       r"kft command\)"):
        kft.create_backbone("mobilenetv3small", weights="imagenet",
                            input_shape=(32, 32, 3))


def test_an_efficientnet_imagenet_file_normalises_as_keras_imagenet(
        tmp_path):
    # Keras adds `Rescaling(1 / sqrt(std))` to EfficientNet only for
    # weights="imagenet" (its files hold the std as the Normalization
    # variance, a known bug), so its ImageNet model computes
    # (x / 255 - mean) / std. The same file given as weights=<file> gave
    # (x / 255 - mean) / sqrt(std): stem features 1.2-2.9 apart, for
    # Keras' file and for one saved from kft's ImageNet backbone.
    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in source.layers
                if isinstance(layer, keras.layers.Normalization))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224,
                                                            0.225])
    norm.adapt_mean.assign(mean.astype("float32"))
    norm.adapt_variance.assign(std.astype("float32"))
    norm.finalize_state()
    path = str(tmp_path / "efficientnetb0_notop.weights.h5")
    source.save_weights(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3))

    def normalised(model):
        layer = next(layer for layer in model.layers
                     if isinstance(layer, keras.layers.Normalization))
        return np.asarray(keras.Model(model.inputs, layer.output)(x))

    from_file = kft.create_backbone("efficientnetb0", weights=path,
                                    input_shape=(32, 32, 3))
    want = (x / 255.0 - mean) / std
    np.testing.assert_allclose(normalised(from_file), want, atol=1e-4)
    # Saved again, it holds std ** 2, which loads as it is (not divided
    # twice): loaded into the plain Keras model it normalises the same.
    again_path = str(tmp_path / "again.weights.h5")
    from_file.save_weights(again_path)
    source.load_weights(again_path)
    np.testing.assert_allclose(normalised(source), want, atol=1e-4)


def test_preprocess_modes_match_keras():
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for mode in ("caffe", "tf", "torch"):
        expected = keras.applications.imagenet_utils.preprocess_input(
            x.copy(), mode=mode)
        np.testing.assert_allclose(kft.layers.Preprocess(mode)(x), expected,
                                   rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(kft.layers.Preprocess("none")(x), x)
    with pytest.raises(ValueError, match="mode.*Received: mode='bgr'"):
        kft.layers.Preprocess("bgr")
    layer = kft.layers.Preprocess("torch")
    clone = kft.layers.Preprocess.from_config(layer.get_config())
    assert clone.mode == "torch"


@pytest.mark.parametrize("alias,name", [
    ("ResNet50", "resnet50"), ("efficientnet_b0", "efficientnetb0"),
    ("EfficientNet-B0", "efficientnetb0"), ("ConvNeXt_Tiny", "convnext_tiny"),
    ("mobilenet_v3_small", "mobilenetv3small"), ("SimpleCNN", "simple_cnn")])
def test_backbone_names_forgive_case_and_separators(alias, name):
    assert kft.get_backbone(alias).name == name


def test_alias_builds_the_registered_backbone():
    model = kft.create_backbone("Simple-CNN", weights=None,
                                input_shape=(16, 16, 3))
    assert model.name == "simple_cnn"
    assert list(kft.get_blocks(model)) == ["stem", "block1", "block2",
                                           "block3"]


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ValueError, match=r"Unknown backbone: 'resnt50'\. "
                       r"Did you mean 'resnet50'.*Known backbones: .*vgg19"):
        kft.get_backbone("resnt50")
    with pytest.raises(ValueError, match=r"Did you mean 'efficientnetv2s'"):
        kft.get_backbone("efficientnet_v2_s2")
    with pytest.raises(ValueError) as info:
        kft.get_backbone("vit_base_patch16")
    assert "Did you mean" not in str(info.value)


def test_list_backbones_ignores_case():
    assert kft.list_backbones("ResNet5*") == ["resnet50", "resnet50v2"]
    assert kft.list_backbones("VGG*") == ["vgg16", "vgg19"]


def test_numpy_sizes_are_accepted():
    model = kft.create_backbone(
        "simple_cnn", weights=None,
        input_shape=(np.int64(16), np.int32(16), np.int64(3)))
    assert model.input_shape == (None, 16, 16, 3)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(16, 16\)"):
        kft.create_backbone("simple_cnn", weights=None, input_shape=(16, 16))


def test_registry_arguments_are_checked_in_one_form():
    with pytest.raises(TypeError, match=r"Argument `spec` must be a "
                       r"kft\.BackboneSpec\. Received: spec='resnet50'"):
        kft.register_backbone("resnet50")
    with pytest.raises(TypeError, match=r"Argument `pattern` must be a "
                       r"string.*Received: pattern=3"):
        kft.list_backbones(3)
    from kft.models.simple_cnn import BLOCKS, SimpleCNN
    with pytest.raises(ValueError, match=r"Argument `preprocess` must be one "
                       r"of .*Received: preprocess='bgr'"):
        kft.BackboneSpec("tiny", SimpleCNN, "bgr", 32, BLOCKS)


def test_registered_spec_builds_marked_backbones():
    from kft.models.registry import unregister_backbone
    from kft.models.simple_cnn import BLOCKS, SimpleCNN

    spec = kft.register_backbone(kft.BackboneSpec("tiny_cnn", SimpleCNN, "tf",
                                                  16, BLOCKS))
    try:
        assert kft.get_backbone("Tiny-CNN") is spec
        model = kft.create_backbone("tiny_cnn", weights=None)
        assert (model.name, model.kft_backbone) == ("tiny_cnn", "tiny_cnn")
        assert model.input_shape == (None, 16, 16, 3)
        assert list(kft.get_blocks(model)) == spec.block_names
    finally:
        unregister_backbone("tiny_cnn")
    assert kft.list_backbones("tiny*") == []


def test_backbone_specs_are_checked_and_sequential_constructors_build():
    from kft.models.registry import unregister_backbone
    from kft.models.simple_cnn import BLOCKS, SimpleCNN

    # A "head" block was replaced by kft's head (its layers in no block,
    # trained by feature extraction); a dict or default_size="32" failed
    # later without naming the argument.
    for blocks, message in [
            ((("stem", "^stem_"), ("head", "^block")), "other than 'head'"),
            ({"stem": "^stem_"}, "sequence of \\(block name, regex\\)"),
            ((("stem", "^s"), ("stem", "^b")), "distinct block names")]:
        with pytest.raises((TypeError, ValueError), match=message):
            kft.BackboneSpec("bad", SimpleCNN, "tf", 16, blocks)
    with pytest.raises((TypeError, ValueError), match="default_size"):
        kft.BackboneSpec("bad", SimpleCNN, "tf", "32", BLOCKS)

    # A constructor returning a keras.Sequential failed inside Keras ("has
    # never been called").
    def sequential(include_top=False, weights=None, input_shape=None):
        return keras.Sequential([
            keras.Input(input_shape),
            keras.layers.Conv2D(4, 3, name="s_conv"),
            keras.layers.Conv2D(4, 3, name="b1_conv")])

    kft.register_backbone(kft.BackboneSpec(
        "seq_net", sequential, "tf", 16, (("stem", "^s_"), ("b1", "^b1_"))))
    try:
        model = kft.build_classifier("seq_net", 3, weights=None)
        assert list(kft.get_blocks(model)) == ["stem", "b1", "head"]
        assert model.predict(np.zeros((1, 16, 16, 3)), verbose=0).shape == (
            1, 3)
    finally:
        unregister_backbone("seq_net")


def test_simple_cnn_arguments():
    from kft.models.simple_cnn import SimpleCNN

    with pytest.raises(ValueError, match=r"Argument `include_top` must be "
                       r"False.*Received: include_top=True"):
        SimpleCNN(include_top=True)
    with pytest.raises(ValueError, match=r"Argument `weights` must be None.*"
                       r"Received: weights='imagenet'"):
        kft.create_backbone("simple_cnn", weights="imagenet",
                            input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match=r"Argument `widths` must be three "
                       r"positive integers.*Received: widths=\(8, 16\)"):
        SimpleCNN(widths=(8, 16))
    with pytest.raises(ValueError, match=r"Received: input_shape=\(16, 16, "
                       r"True\)"):
        kft.create_backbone("simple_cnn", weights=None,
                            input_shape=(16, 16, True))
    # `pooling` as in keras.applications: "max" built average pooling
    # without any test noticing (mutation round 10).
    maps_model = SimpleCNN(input_shape=(16, 16, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    maps = np.asarray(maps_model(x))
    for pooling, pool in (("avg", np.mean), ("max", np.max)):
        pooled = SimpleCNN(input_shape=(16, 16, 3), pooling=pooling)
        pooled.set_weights(maps_model.get_weights())
        np.testing.assert_allclose(np.asarray(pooled(x)),
                                   pool(maps, axis=(1, 2)), rtol=1e-5,
                                   atol=1e-6)


def test_a_weights_file_of_another_model_names_the_file(tmp_path):
    # A whole classifier's weights (what `kft train` leaves) or a broken
    # file: Keras' "Layer 'stem_conv' expected 1 variables" or h5py's
    # OSError, naming neither the argument nor the file.
    classifier = kft.build_classifier("simple_cnn", 3, weights=None,
                                      input_shape=(16, 16, 3))
    whole = str(tmp_path / "model.weights.h5")
    classifier.save_weights(whole)
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    for path in (whole, str(broken)):
        # Without Keras' warnings for every nested container it skipped on
        # the way (8 here, 120 for a ResNet50V2 file given to ResNet101V2).
        with warnings.catch_warnings(record=True) as caught, \
                pytest.raises(ValueError, match=r"`weights` must be a "
                              r"weights file of the simple_cnn backbone "
                              r"alone.*" + path.split("/")[-1]):
            warnings.simplefilter("always")
            kft.create_backbone("simple_cnn", weights=path,
                                input_shape=(16, 16, 3))
        assert not [w for w in caught if "container" in str(w.message)]
    # A .keras archive without its weights inside (a raw KeyError).
    junk = tmp_path / "junk.keras"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ValueError, match=r"`weights` must be a weights "
                       r"file.*junk.keras.*KeyError"):
        kft.create_backbone("simple_cnn", weights=str(junk),
                            input_shape=(16, 16, 3))
    backbone = kft.create_backbone("simple_cnn", weights=None,
                                   input_shape=(16, 16, 3))
    own = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(own)
    kft.create_backbone("simple_cnn", weights=own, input_shape=(16, 16, 3))
    # This backbone's file for 3 channels into a 1-channel build: blamed
    # on the kind of file, Keras' shapes cut off at 200 characters.
    with pytest.raises(ValueError, match=r"weights file of the simple_cnn "
                       r"backbone built for input_shape=\(16, 16, 1\): "
                       r"variable .*kernel has shape \(3, 3, 3, \d+\) in the "
                       r"file but \(3, 3, 1, \d+\) here: a file of another "
                       r"backbone, or of this one built for another number "
                       r"of input channels\. Received: weights=.*backbone"):
        kft.create_backbone("simple_cnn", weights=own, input_shape=(16, 16, 1))


def test_warnings_of_a_weights_file_that_loads_are_shown(tmp_path,
                                                         monkeypatch):
    # Held back while the file loads (a file that fails drops them), then
    # shown as the user's filters say: once per place under "default",
    # never under "ignore".
    from kft.models import backbones

    backbone = kft.create_backbone("simple_cnn", weights=None,
                                   input_shape=(16, 16, 3))
    own = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(own)
    load = backbones._load_weights

    def warning_load(model, path):
        warnings.warn("a warning of the load", UserWarning)
        return load(model, path)

    monkeypatch.setattr(backbones, "_load_weights", warning_load)
    for action, shown in (("default", 1), ("ignore", 0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(action)
            for _ in range(3):
                kft.create_backbone("simple_cnn", weights=own,
                                    input_shape=(16, 16, 3))
        assert len([w for w in caught if "of the load" in str(w.message)]
                   ) == shown


@pytest.mark.slow
def test_convnext_normalises_pooled_features_as_keras_pooling_does():
    # kft pooled after Keras' final LayerNorm (applied per position, as
    # Keras builds it with pooling=None): with trained LayerNorm weights
    # the head's features were 0.46 (relative) off Keras' pooling="avg"
    # model and the original ConvNeXt (LN of the pooled vector). At 32 px
    # the map is 1x1 and the two agree: 64 px gives a 2x2 map.
    model = kft.build_classifier("convnext_tiny", 3, weights=None,
                                 input_shape=(64, 64, 3),
                                 fast_cpu_convs=False)
    base = model.get_layer("convnext_tiny")
    norm = base.layers[-1]
    assert isinstance(norm, keras.layers.LayerNormalization)
    rng = np.random.default_rng(0)
    norm.gamma.assign(rng.uniform(0.5, 2.0, norm.gamma.shape))
    norm.beta.assign(rng.normal(size=norm.beta.shape))
    keras_model = keras.applications.ConvNeXtTiny(
        include_top=False, weights=None, input_shape=(64, 64, 3),
        pooling="avg")
    keras_model.set_weights(base.get_weights())
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    features, _ = kft.feature_cache.split_head(model)
    np.testing.assert_allclose(features.predict(x, verbose=0),
                               keras_model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    assert "head_pool" not in [layer.name for layer in model.layers]


def test_create_backbone_pools_when_asked():
    for pooling in ("avg", "max"):
        base = kft.create_backbone("simple_cnn", weights=None,
                                   input_shape=(16, 16, 3), pooling=pooling)
        assert base.output.shape == (None, 64)
    with pytest.raises(ValueError, match="Received: pooling='flatten'"):
        kft.create_backbone("simple_cnn", weights=None,
                            input_shape=(16, 16, 3), pooling="flatten")


def _keras_backbones():
    from kft.models.registry import get_backbone

    specs = [get_backbone(name) for name in kft.list_backbones()]
    return [s for s in specs
            if s.constructor.__module__.startswith("keras.src.applications")]


def test_each_backbone_normalises_pixels_as_its_keras_module_does():
    # A pretrained backbone given another family's normalisation (DenseNet's
    # "torch" as "caffe") trains and predicts on the wrong inputs, silently.
    import importlib

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3))
    x = x.astype("float32")
    for spec in _keras_backbones():
        module = importlib.import_module(spec.constructor.__module__)
        expected = np.asarray(module.preprocess_input(x.copy()))
        got = kft.layers.preprocessing(spec.preprocess, (5, 7, 3))(x)
        np.testing.assert_allclose(got, expected, atol=1e-5,
                                   err_msg=spec.name)


def test_each_backbone_default_size_is_its_keras_constructors():
    # The size its ImageNet weights were trained at (what `kft train` and
    # `build_classifier` use without `input_shape`). Keras' constructors
    # name it to `obtain_input_shape`, caught here before any layer.
    from unittest import mock

    from keras.src.applications import imagenet_utils

    class Named(Exception):
        pass

    def named(*args, **kwargs):
        raise Named(kwargs["default_size"])

    checked = 0
    for spec in _keras_backbones():
        if spec.constructor.__module__.endswith("mobilenet_v3"):
            # Takes no default size (224 fixed): building it is slow.
            assert spec.default_size == 224, spec.name
            continue
        with mock.patch.object(imagenet_utils, "obtain_input_shape", named):
            try:
                spec.constructor(weights=None)
            except Named as size:
                assert spec.default_size == size.args[0], spec.name
                checked += 1
            else:
                raise AssertionError(f"{spec.name}: no default size named")
    assert checked >= 20


def test_a_name_two_registered_backbones_match_is_refused_naming_both():
    # Names match case, `_` and `-` aside only while one registered name
    # is left: "My-Net" for "my_net" and "mynet" picked the first.
    import dataclasses

    from kft.models.registry import get_backbone
    from kft.models.registry import unregister_backbone

    spec = get_backbone("simple_cnn")
    for name in ("my_net", "mynet"):
        kft.register_backbone(dataclasses.replace(spec, name=name))
    try:
        assert get_backbone("MY_NET").name == "my_net"  # case alone: one
        with pytest.raises(ValueError, match="Did you mean 'my_net' or "
                           "'mynet'"):
            get_backbone("My-Net")
    finally:
        for name in ("my_net", "mynet"):
            unregister_backbone(name)


def test_a_spec_and_its_constructor_are_checked_where_the_user_made_them():
    from kft.models.registry import unregister_backbone
    from kft.models.simple_cnn import BLOCKS, SimpleCNN

    # A class name for the class: failed at create_backbone, unnamed.
    with pytest.raises(TypeError, match=r"`constructor` must be a callable "
                       r"\(a keras\.applications function or one with its "
                       r"arguments\)\. Received: constructor='SimpleCNN'"):
        kft.BackboneSpec("bad", "SimpleCNN", "tf", 16, BLOCKS)
    spec = kft.BackboneSpec("tiny", SimpleCNN, "torch", 16, BLOCKS)
    # Its documented preprocessing is the mode's, not another's.
    pixels = np.full((1, 2, 2, 3), 255.0, "float32")
    np.testing.assert_allclose(
        np.asarray(spec.preprocess_input(pixels)),
        np.asarray(kft.layers.Preprocess("torch")(pixels)))
    assert not np.allclose(np.asarray(spec.preprocess_input(pixels)), 1.0)
    with pytest.raises(ValueError, match=r"`input_shape` must be \(height, "
                       r"width, 3\) for mode='torch'\. Received: "
                       r"input_shape=None"):
        kft.layers.preprocessing("torch", None)

    # A constructor returning a model of two outputs: which one holds the
    # features?
    def two_outputs(include_top=False, weights=None, input_shape=None):
        inputs = keras.Input(input_shape)
        features = keras.layers.Conv2D(4, 3, name="s_conv")(inputs)
        return keras.Model(inputs, [features, features], name="two")

    kft.register_backbone(kft.BackboneSpec(
        "two_net", two_outputs, "tf", 16, (("stem", "^s_"),)))
    try:
        with pytest.raises(ValueError, match=r"`model` must be a backbone "
                           r"with one image input and one feature-map "
                           r"output\. Received: model=\"'two' with 1 inputs,"
                           r" 2 outputs\""):
            kft.create_backbone("two_net", weights=None)
    finally:
        unregister_backbone("two_net")


def test_unmarking_a_backbone_unmarks_models_built_over_its_layers():
    # `mark(None)` unmarks; a Backbone built later over the same layers (a
    # clone keeping them, as fast_cpu_convs makes) must not take the old
    # name back, or kft would treat it as that registered backbone again.
    from kft.models.backbones import Backbone

    backbone = _skeleton("simple_cnn", 16)
    backbone.mark(None)
    assert kft.models.backbones.find_backbone(backbone) is None
    again = Backbone(backbone.inputs, backbone.outputs)
    assert again.kft_backbone is None
    backbone.mark("simple_cnn")
    assert Backbone(backbone.inputs, backbone.outputs).kft_backbone == (
        "simple_cnn")
    # A bare backbone is its own backbone (a feature extractor exported
    # alone records which backbone it is).
    assert kft.models.backbones.find_backbone(backbone) is backbone
    from kft.deploy.metadata import model_metadata

    assert model_metadata(backbone)["backbone"] == "simple_cnn"
